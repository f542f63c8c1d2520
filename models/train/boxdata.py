"""Readers for the box-labelled real photo sets that allow training.

Only `ro-dashcam-voc`, `openimages-plates` and `us-plates-roboflow` are read here: the
openalpr sets are evaluation-only and must never reach training code.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRAINABLE = ("ro-dashcam-voc", "openimages-plates", "us-plates-roboflow")


@dataclass
class BoxImage:
    path: Path
    boxes: np.ndarray  # (N, 4) float32 x1 y1 x2 y2 in pixels of the original image
    source: str


def _voc(annot: Path, images: Path, source: str) -> BoxImage | None:
    root = ET.parse(annot).getroot()
    name = root.findtext("filename") or annot.stem + ".jpg"
    img = images / name
    if not img.exists():
        cands = list(images.glob(annot.stem + ".*"))
        if not cands:
            return None
        img = cands[0]
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        b = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        if b[2] - b[0] >= 2 and b[3] - b[1] >= 2:
            boxes.append(b)
    return BoxImage(img, np.array(boxes, np.float32).reshape(-1, 4), source)


def _yolo(label: Path, images: Path, source: str, size: tuple[int, int]) -> BoxImage | None:
    cands = list(images.glob(label.stem + ".*"))
    if not cands:
        return None
    w, h = size
    boxes = []
    for line in label.read_text().split("\n"):
        v = line.split()
        if len(v) < 5:
            continue
        nums = [float(x) for x in v[1:]]
        if len(nums) == 4:
            cx, cy, bw, bh = nums
            b = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        else:
            xs, ys = nums[0::2], nums[1::2]
            b = [min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h]
        if b[2] - b[0] >= 2 and b[3] - b[1] >= 2:
            boxes.append(b)
    return BoxImage(cands[0], np.array(boxes, np.float32).reshape(-1, 4), source)


def load_box_sets(root: Path) -> list[BoxImage]:
    """Every labelled image of the trainable sets under `root` (../shared/datasets)."""
    import cv2

    out: list[BoxImage] = []
    ro = root / "ro-dashcam-voc"
    for split in ("train", "valid"):
        d = ro / split
        for a in sorted((d / "annots").glob("*.xml")):
            r = _voc(a, d / "images", "ro-dashcam-voc")
            if r is not None:
                out.append(r)
    oi = root / "openimages-plates"
    for a in sorted((oi / "annots").glob("*.xml")):
        r = _voc(a, oi / "images", "openimages-plates")
        if r is not None:
            out.append(r)
    us = root / "us-plates-roboflow"
    for lab in sorted((us / "labels").glob("*.txt")):
        cands = list((us / "images").glob(lab.stem + ".*"))
        if not cands:
            continue
        im = cv2.imread(str(cands[0]))
        if im is None:
            continue
        r = _yolo(lab, us / "images", "us-plates-roboflow", (im.shape[1], im.shape[0]))
        if r is not None:
            out.append(r)
    return out
