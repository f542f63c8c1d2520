"""Synthetic street scenes: roads, vehicles seen from behind or in front, plates from render.py.

Shared by the committed test set (tests/data) and the fixture videos, so both use the same
plates as the reader's synthetic training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.train.render import Plate, render_plate

CAR_COLOURS = [(200, 200, 205), (30, 30, 35), (150, 20, 25), (20, 50, 120), (230, 230, 230), (90, 95, 100),
               (160, 150, 120), (40, 90, 60), (200, 170, 40), (110, 110, 120)]


@dataclass
class PlacedPlate:
    text: str
    style: str
    corners: np.ndarray  # (4, 2) TL TR BR BL in image pixels
    box: tuple[float, float, float, float]


def background(rng: np.random.Generator, w: int, h: int, night: bool = False) -> np.ndarray:
    """Sky, buildings/trees band, asphalt with lane marks (RGB)."""
    img = np.zeros((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(0.25, 0.45))
    sky = np.array(rng.choice([(170, 200, 230), (200, 205, 210), (120, 150, 190)]), np.float32)
    img[:horizon] = sky * np.linspace(1.0, 0.85, horizon)[:, None, None]
    # buildings / trees
    x = 0
    while x < w:
        bw = int(rng.uniform(0.05, 0.2) * w)
        bh = int(rng.uniform(0.1, 0.3) * h)
        col = rng.uniform(60, 200, 3)
        img[max(0, horizon - bh) : horizon + 2, x : x + bw] = col
        for _ in range(int(rng.integers(0, 6))):  # windows
            wx, wy = x + int(rng.uniform(0.1, 0.8) * bw), horizon - int(rng.uniform(0.2, 0.9) * bh)
            img[max(0, wy) : max(0, wy + 8), wx : wx + 10] = col * 0.5
        x += bw
    road = np.array(rng.uniform(70, 120, 1).repeat(3), np.float32)
    img[horizon:] = road * np.linspace(0.9, 1.1, h - horizon)[:, None, None]
    # lane markings converging to the horizon
    vx = w * rng.uniform(0.3, 0.7)
    for lx in (-0.6, 0.0, 0.6):
        p0 = (int(vx), horizon)
        p1 = (int(w / 2 + lx * w * 1.2), h)
        cv2.line(img, p0, p1, (220, 220, 210), max(1, int(w / 250)))
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    if night:
        img *= 0.25
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_vehicle(img: np.ndarray, cx: float, bottom: float, width: float, rng: np.random.Generator,
                 plate: Plate, colour=None, yaw: float = 0.0, night: bool = False) -> PlacedPlate:
    """Draw the back (or front) of a vehicle whose bumper bottom is at (cx, bottom); return its plate."""
    colour = tuple(int(c) for c in (colour if colour is not None else CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))]))
    w = width
    h = w * 0.78
    x1, x2 = cx - w / 2, cx + w / 2
    y_top = bottom - h
    dark = tuple(int(c * 0.45) for c in colour)
    body = np.array([[x1 + 0.02 * w, bottom - 0.08 * h], [x2 - 0.02 * w, bottom - 0.08 * h], [x2, y_top + 0.45 * h],
                     [x2 - 0.12 * w, y_top + 0.05 * h], [x1 + 0.12 * w, y_top + 0.05 * h], [x1, y_top + 0.45 * h]], np.int32)
    cv2.fillPoly(img, [body], colour, lineType=cv2.LINE_AA)
    glass = np.array([[x1 + 0.15 * w, y_top + 0.1 * h], [x2 - 0.15 * w, y_top + 0.1 * h], [x2 - 0.07 * w, y_top + 0.42 * h],
                      [x1 + 0.07 * w, y_top + 0.42 * h]], np.int32)
    cv2.fillPoly(img, [glass], (40, 50, 60) if not night else (10, 10, 15), lineType=cv2.LINE_AA)
    # wheels, bumper, lights
    for wx in (x1 + 0.08 * w, x2 - 0.2 * w):
        cv2.rectangle(img, (int(wx), int(bottom - 0.1 * h)), (int(wx + 0.12 * w), int(bottom)), (15, 15, 15), -1)
    cv2.rectangle(img, (int(x1 + 0.01 * w), int(bottom - 0.25 * h)), (int(x2 - 0.01 * w), int(bottom - 0.08 * h)), dark, -1)
    light = (255, 240, 200) if night else (200, 30, 30)
    for lx in (x1 + 0.04 * w, x2 - 0.2 * w):
        cv2.rectangle(img, (int(lx), int(y_top + 0.5 * h)), (int(lx + 0.16 * w), int(y_top + 0.6 * h)), light, -1)
    # plate in the middle of the bumper
    ph, pw_ = plate.image.shape[:2]
    plate_w = w * (0.3 if pw_ / ph < 3 else 0.42)
    plate_h = plate_w * ph / pw_
    pcx, pcy = cx, bottom - 0.28 * h
    skew = yaw * plate_h
    corners = np.array([[pcx - plate_w / 2, pcy - plate_h / 2 + skew], [pcx + plate_w / 2, pcy - plate_h / 2 - skew],
                        [pcx + plate_w / 2, pcy + plate_h / 2 - skew], [pcx - plate_w / 2, pcy + plate_h / 2 + skew]], np.float32)
    src = np.array([[0, 0], [pw_, 0], [pw_, ph], [0, ph]], np.float32)
    m = cv2.getPerspectiveTransform(src, corners)
    H, W = img.shape[:2]
    warped = cv2.warpPerspective(plate.image, m, (W, H), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full((ph, pw_), 255, np.uint8), m, (W, H), flags=cv2.INTER_LINEAR)
    a = (mask.astype(np.float32) / 255.0)[..., None]
    src_img = warped.astype(np.float32)
    if night:
        src_img = src_img * 0.9  # retro-reflective plate stays bright under IR
    img[:] = (img * (1 - a) + src_img * a).astype(np.uint8)
    xs, ys = corners[:, 0], corners[:, 1]
    return PlacedPlate(plate.text, plate.style, corners, (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))


def render_still(rng: np.random.Generator, w: int = 960, h: int = 540, style: str | None = None) -> tuple[np.ndarray, list[PlacedPlate]]:
    """One still scene with one vehicle, for detector+reader tests (RGB)."""
    img = background(rng, w, h)
    plate = render_plate(rng, style)
    width = w * rng.uniform(0.3, 0.6)
    cx = w * rng.uniform(0.3, 0.7)
    bottom = h * rng.uniform(0.8, 0.97)
    placed = draw_vehicle(img, cx, bottom, width, rng, plate, yaw=rng.uniform(-0.08, 0.08))
    out = cv2.GaussianBlur(img, (0, 0), 0.6)
    out = np.clip(out.astype(np.float32) + rng.normal(0, 3, out.shape), 0, 255).astype(np.uint8)
    return out, [placed]
