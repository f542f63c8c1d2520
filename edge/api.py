"""The Python API: read the plates of a still image in three lines.

    from edge import Reader
    for plate in Reader().read("car.jpg"):
        print(plate.text, plate.confidence)

`Reader` runs the same plate stage as `edge eval` and `edge read` (edge/vision/stage.py, built by
edge.runtime.assembly with the still-image settings: reads under 0.7 confidence are not reported).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edge.config import PipelineSection
from edge.runtime.assembly import build_stage
from edge.vision.stage import PlateResult

__all__ = ["ImageError", "PlateResult", "Reader", "as_bgr"]


class ImageError(ValueError):
    """An image the reader cannot take (a missing or undecodable file, an array of the wrong shape or type)."""


def as_bgr(image: str | Path | np.ndarray) -> np.ndarray:
    """A BGR uint8 image from a file path or an array: BGR (H, W, 3), greyscale (H, W) or (H, W, 1),
    BGRA (H, W, 4)."""
    import cv2

    if isinstance(image, (str, Path)):
        p = Path(image)
        if not p.is_file():
            raise ImageError(f"image not found: {p}")
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ImageError(f"cannot decode image: {p} (not a JPEG, PNG, BMP or WebP file?)")
        return img
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected an image path or a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise ImageError(f"empty image array (shape {image.shape})")
    if image.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image array, got dtype {image.dtype} (scale 0..1 floats by 255 first)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise ImageError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image array, got shape {image.shape}")


class Reader:
    """Reads still images. `regions`: the plate conventions to read with (edge.plates: br, eu, uk, us);
    `models`: a folder with the ONNX models (default: the shipped ones); `int8`: "reader" for the
    quantized reader; `min_confidence`: the floor (default 0.7, the still-image floor)."""

    def __init__(self, regions: Iterable[str] = (), models: str | Path | None = None, threads: int = 1, int8: str = "none",
                 min_confidence: float | None = None, refine: bool = True):
        data: dict = {"regions": list(regions), "threads": threads, "int8": int8, "refine": refine}
        if models is not None:
            data["model_dir"] = Path(models)
        if min_confidence is not None:
            data["min_confidence"] = min_confidence
        self.stage = build_stage(PipelineSection.model_validate(data), still=True)

    def read(self, image: str | Path | np.ndarray) -> list[PlateResult]:
        """The plates in one image, most confident first."""
        return self.stage.recognize(as_bgr(image))
