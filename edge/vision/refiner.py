"""Box refiner: moves a detector box's edges onto the plate's own, read with onnxruntime.

The detector finds plates on a downscaled frame; its box edges can lie a fifth of the plate outside
it or cut its last character. The reader was trained on crops cut around labelled plate boxes, and
its reading swings with the cut. The refiner looks at the box with context around it, at full
resolution, and predicts where the plate's edges are (a shift of each edge, in box widths and
heights), so the reader gets the cut it was trained on.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.vision.metadata import RefinerMeta, parse_meta
from edge.vision.session import OnnxModel


def context_matrix(box, context_x: float, context_y: float, out_w: int, out_h: int) -> np.ndarray:
    """The affine map from frame pixels to the refiner's input: the box grown by context_x of its
    width left and right and context_y of its height above and below, stretched to out_w x out_h."""
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    cx1, cy1 = x1 - context_x * bw, y1 - context_y * bh
    sx, sy = out_w / (bw * (1 + 2 * context_x)), out_h / (bh * (1 + 2 * context_y))
    return np.array([[sx, 0.0, -cx1 * sx], [0.0, sy, -cy1 * sy]], np.float64)


def context_crop(img: np.ndarray, box, context_x: float, context_y: float, out_w: int, out_h: int) -> np.ndarray:
    """The refiner's view of a box (BGR or RGB as given); outside the image the edge pixels repeat."""
    m = context_matrix(box, context_x, context_y, out_w, out_h)
    return cv2.warpAffine(img, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def apply_shifts(boxes: np.ndarray, shifts: np.ndarray, limit: float) -> np.ndarray:
    """Boxes (N, 4) moved by shifts (N, 4: x1, y1, x2, y2 in box widths/heights), each shift within
    +-limit; a box the shifts would turn inside out keeps its edges."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    s = np.clip(np.asarray(shifts, np.float32).reshape(-1, 4), -limit, limit)
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
    out = boxes + s * np.concatenate([wh, wh], 1)
    bad = (out[:, 2] - out[:, 0] < 0.3 * wh[:, 0]) | (out[:, 3] - out[:, 1] < 0.3 * wh[:, 1])
    out[bad] = boxes[bad]
    return out


class BoxRefiner:
    """Load a refiner ONNX file; `refine(frame, boxes)` returns the boxes moved onto the plates."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.model = OnnxModel(path, threads=threads)
        self.meta = m = parse_meta(RefinerMeta, self.model.meta, path)
        self.h, self.w, self.context_x, self.context_y, self.limit = m.height, m.width, m.context_x, m.context_y, m.max_shift

    def refine(self, frame_bgr: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if not len(boxes):
            return boxes
        x = np.stack([context_crop(frame_bgr, b, self.context_x, self.context_y, self.w, self.h) for b in boxes])
        x = x[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) * (1 / 255.0)
        shifts = self.model.run(np.ascontiguousarray(x))[0]
        out = apply_shifts(boxes, shifts, self.limit)
        h, w = frame_bgr.shape[:2]
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
        return out
