"""Plate text reader: CTC over a two-row sequence, read with onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.vision.session import ModelError, OnnxModel


@dataclass(frozen=True)
class TextRead:
    text: str
    confidence: float  # geometric mean of the character confidences (0 when empty)
    char_confidences: tuple[float, ...]


def ctc_greedy(probs: np.ndarray, charset: str, blank: int = 0) -> TextRead:
    """Best-path CTC decoding of a (T, C) probability matrix.

    Repeated symbols collapse unless separated by a blank; each emitted character's confidence is
    the highest probability it had over the run of steps that produced it.
    """
    probs = np.asarray(probs, np.float32)
    idx = probs.argmax(-1)
    chars: list[str] = []
    confs: list[float] = []
    prev = blank
    for t, i in enumerate(idx):
        i = int(i)
        if i != blank:
            p = float(probs[t, i])
            if i != prev:
                chars.append(charset[i - 1 if blank == 0 else i])
                confs.append(p)
            else:
                confs[-1] = max(confs[-1], p)
        prev = i
    if not confs:
        return TextRead("", 0.0, ())
    conf = float(np.exp(np.mean(np.log(np.maximum(confs, 1e-9)))))
    return TextRead("".join(chars), conf, tuple(round(c, 4) for c in confs))


class PlateReader:
    """Load a reader ONNX file; `read(crops)` returns one TextRead per crop (BGR images)."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.model = OnnxModel(path, threads=threads)
        meta = self.model.meta
        if meta.get("kind") != "plate-reader":
            raise ModelError(f"{path}: not a plate-reader model (metadata kind={meta.get('kind')!r})")
        self.h = int(meta["height"])
        self.w = int(meta["width"])
        self.charset = str(meta["charset"])
        self.blank = int(meta.get("blank", 0))
        self.max_len = int(meta.get("max_len", 10))
        # where the detector box sits inside the crop the reader was trained on
        self.margin_x = float(meta.get("crop_margin_x", 0.03))
        self.margin_y = float(meta.get("crop_margin_y", 0.06))

    def prepare(self, crop_bgr: np.ndarray) -> np.ndarray:
        im = cv2.resize(crop_bgr, (self.w, self.h), interpolation=cv2.INTER_AREA if crop_bgr.shape[1] > self.w else cv2.INTER_LINEAR)
        return im[..., ::-1].transpose(2, 0, 1).astype(np.float32) * (1 / 255.0)

    def read(self, crops_bgr: list[np.ndarray]) -> list[TextRead]:
        if not crops_bgr:
            return []
        x = np.stack([self.prepare(c) for c in crops_bgr])
        probs = self.model.run(x)[0]
        return [ctc_greedy(p, self.charset, self.blank) for p in probs]
