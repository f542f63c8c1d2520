"""Plate detector: runs the project's ONNX detector on a whole (downscaled) frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.vision.geometry import Letterbox, letterbox, nms
from edge.vision.metadata import DetectorMeta, parse_meta
from edge.vision.session import OnnxModel


@dataclass
class Detections:
    """Boxes found in one frame, in source-frame pixels."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # x1 y1 x2 y2
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return len(self.scores)


def decode_heads(
    heads: np.ndarray, stride: int, threshold: float, lb: Letterbox, iou: float = 0.3, max_det: int = 50,
    cover: float | None = 0.4,
) -> np.ndarray:
    """Turn the (5, gh, gw) head map into (N, 5) [x1 y1 x2 y2 score] rows in source pixels.

    Channel 0 is the centre heat (0..1), 1-2 are log(width/stride), log(height/stride), 3-4 the
    sub-cell offset of the centre. Peaks are local maxima of the heat (3x3) above `threshold`.
    Plates on different vehicles do not overlap, so besides IoU a box whose overlap with a
    higher-scored box is more than `cover` of the smaller one is taken for the same plate and dropped.
    """
    heat = np.ascontiguousarray(heads[0], dtype=np.float32)
    peak = cv2.dilate(heat, np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero((heat >= peak) & (heat >= threshold))
    if len(ys) == 0:
        return np.zeros((0, 5), np.float32)
    scores = heat[ys, xs]
    if len(scores) > max_det * 4:
        top = np.argsort(-scores)[: max_det * 4]
        ys, xs, scores = ys[top], xs[top], scores[top]
    w = np.exp(np.clip(heads[1, ys, xs], -4, 8)) * stride
    h = np.exp(np.clip(heads[2, ys, xs], -4, 8)) * stride
    cx = (xs + heads[3, ys, xs]) * stride
    cy = (ys + heads[4, ys, xs]) * stride
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    keep = nms(boxes, scores, iou, cover)[:max_det]
    src = lb.to_source(boxes[keep])
    out = np.concatenate([src, scores[keep, None]], 1).astype(np.float32)
    ok = (out[:, 2] - out[:, 0] >= 2) & (out[:, 3] - out[:, 1] >= 2)
    return out[ok]


class PlateDetector:
    """Load a detector ONNX file; `detect(bgr_frame)` returns Detections in frame pixels."""

    def __init__(self, path: str | Path, threads: int = 1, threshold: float | None = None, long_side: int | None = None):
        self.model = OnnxModel(path, threads=threads)
        self.meta = m = parse_meta(DetectorMeta, self.model.meta, path)
        self.stride, self.multiple = m.stride, m.pad_multiple
        self.long_side = int(long_side or m.long_side)
        self.threshold = float(threshold if threshold is not None else m.threshold)
        # the verify band (edge.vision.metadata.DetectorMeta): None when the model has none
        self.verify_threshold, self.verify_confidence, self.verify_max_boxes = m.verify_threshold, m.verify_confidence, m.verify_max_boxes

    def detect(self, frame_bgr: np.ndarray, threshold: float | None = None) -> Detections:
        """Boxes scored at least `threshold` (default: the model's own)."""
        canvas, lb = letterbox(frame_bgr, self.long_side, self.multiple)
        return self._run(canvas, lb, 0, 0, threshold)

    def detect_region(self, frame_bgr: np.ndarray, region: tuple[int, int, int, int], threshold: float | None = None) -> Detections:
        """Look only inside region (x1, y1, x2, y2) of the frame, at the same scale as a whole-frame
        detection, so plates look to the network as they always do; far fewer pixels to process."""
        h, w = frame_bgr.shape[:2]
        x1, y1, x2, y2 = max(0, region[0]), max(0, region[1]), min(w, region[2]), min(h, region[3])
        if x2 - x1 < 8 or y2 - y1 < 8:
            return Detections()
        scale = self.long_side / max(w, h)
        crop = frame_bgr[y1:y2, x1:x2]
        nw, nh = max(1, round((x2 - x1) * scale)), max(1, round((y2 - y1) * scale))
        pw, ph = -(-nw // self.multiple) * self.multiple, -(-nh // self.multiple) * self.multiple
        canvas = np.zeros((ph, pw, 3), np.uint8)
        canvas[:nh, :nw] = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        lb = Letterbox(x2 - x1, y2 - y1, scale, nw, nh, pw, ph)
        return self._run(canvas, lb, x1, y1, threshold)

    def _run(self, canvas: np.ndarray, lb: Letterbox, ox: int, oy: int, threshold: float | None = None) -> Detections:
        x = canvas[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) * (1 / 255.0)
        heads = self.model.run(x)[0][0]
        rows = decode_heads(heads, self.stride, self.threshold if threshold is None else threshold, lb)
        boxes = rows[:, :4].copy()
        boxes[:, [0, 2]] += ox
        boxes[:, [1, 3]] += oy
        return Detections(boxes, rows[:, 4].copy())
