"""Letterbox, non-maximum suppression and crop rectification (numpy + OpenCV only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """How a frame of (src_w, src_h) was scaled and padded into a (pad_w, pad_h) network input.

    The image is scaled by `scale` to (new_w, new_h) and placed at the top-left corner.
    """

    src_w: int
    src_h: int
    scale: float
    new_w: int
    new_h: int
    pad_w: int
    pad_h: int

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) x1 y1 x2 y2 boxes from network pixels back to source pixels, clipped."""
        b = np.asarray(boxes, np.float32).reshape(-1, 4) / self.scale
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, self.src_w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, self.src_h)
        return b


def letterbox_params(src_w: int, src_h: int, long_side: int, multiple: int = 32) -> Letterbox:
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"image has no pixels ({src_w}x{src_h})")
    scale = long_side / max(src_w, src_h)
    new_w = max(1, round(src_w * scale))
    new_h = max(1, round(src_h * scale))
    pad_w = int(math.ceil(new_w / multiple) * multiple)
    pad_h = int(math.ceil(new_h / multiple) * multiple)
    return Letterbox(src_w, src_h, scale, new_w, new_h, pad_w, pad_h)


def letterbox(image: np.ndarray, long_side: int, multiple: int = 32, fill: int = 0) -> tuple[np.ndarray, Letterbox]:
    """Scale `image` so its long side is `long_side`, pad right/bottom to a multiple of `multiple`."""
    h, w = image.shape[:2]
    lb = letterbox_params(w, h, long_side, multiple)
    interp = cv2.INTER_AREA if lb.scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (lb.new_w, lb.new_h), interpolation=interp)
    shape = (lb.pad_h, lb.pad_w) + image.shape[2:]
    canvas = np.full(shape, fill, dtype=image.dtype)
    canvas[: lb.new_h, : lb.new_w] = resized
    return canvas, lb


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x1 y1 x2 y2 boxes."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.4, cover_threshold: float | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, highest score first. With `cover_threshold`, a box
    is also dropped when the overlap with a kept box is more than that share of the smaller of
    the two (a shifted, partial or enclosing box on the same object, whose IoU can be low)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    areas = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        ious = iou_matrix(boxes[i : i + 1], boxes[rest])[0]
        ok = ious <= iou_threshold
        if cover_threshold is not None:
            ix = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
            iy = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
            ok &= ix * iy / np.minimum(areas[rest], areas[i]) <= cover_threshold
        order = rest[ok]
    return np.array(keep, dtype=np.int64)


def expand_box(box, src_w: int, src_h: int, fx: float, fy: float) -> tuple[int, int, int, int]:
    """Grow a box by fractions of its width/height on each side, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    return (
        max(0, int(math.floor(x1 - fx * w))),
        max(0, int(math.floor(y1 - fy * h))),
        min(src_w, int(math.ceil(x2 + fx * w))),
        min(src_h, int(math.ceil(y2 + fy * h))),
    )


def order_corners(pts: np.ndarray) -> np.ndarray:
    """Order 4 points as top-left, top-right, bottom-right, bottom-left."""
    pts = np.asarray(pts, np.float32).reshape(4, 2)
    s = pts.sum(1)
    d = pts[:, 1] - pts[:, 0]
    return np.array([pts[np.argmin(s)], pts[np.argmin(d)], pts[np.argmax(s)], pts[np.argmax(d)]], np.float32)


def warp_quad(image: np.ndarray, corners: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Perspective-rectify the quadrilateral `corners` (TL, TR, BR, BL) into an out_w x out_h image."""
    src = order_corners(corners)
    dst = np.array([[0, 0], [out_w - 1, 0], [out_w - 1, out_h - 1], [0, out_h - 1]], np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
