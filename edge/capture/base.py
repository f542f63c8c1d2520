from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np


class CaptureError(Exception):
    """The source cannot be opened or read (a missing camera, an unreadable video)."""


@dataclass
class Frame:
    seq: int  # 0, 1, 2, ... per source
    t: float  # monotonic seconds (video time for files, so replays at any speed track alike)
    utc: datetime  # wall-clock time of the frame (UTC)
    image: np.ndarray  # BGR frame the detector sees (may be a low-resolution stream)
    full: np.ndarray | None = None  # full-resolution BGR of the same capture, when there is one

    @property
    def full_image(self) -> np.ndarray:
        return self.image if self.full is None else self.full

    @property
    def scale(self) -> float:
        """full-resolution pixels per detection-image pixel."""
        return 1.0 if self.full is None else self.full.shape[1] / self.image.shape[1]


class FrameSource:
    name = "source"
    fps: float = 0.0

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def stats(self) -> dict:
        return {}
