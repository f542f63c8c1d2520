"""Render the fixture clips in fixtures/videos/ (deterministic, seeded) with ground-truth sidecars.

    python -m models.train.fixtures --out fixtures/videos

Uses the same plate renderer and scene drawing as the reader's synthetic data (render.py,
scene.py). Encodes H.264 MP4 with Debian's ffmpeg (libx264); falls back to OpenCV's MPEG-4
encoder, with a warning, where ffmpeg is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from models.train.render import Plate, fonts, render_plate, text_image
from models.train.scene import background, draw_vehicle

W, H, FPS = 1280, 720, 25
MIN_READABLE_W = 70  # plate width in pixels below which the truth is "too small to read"


@dataclass
class Vehicle:
    plate: Plate
    path: Callable[[float], tuple[float, float, float] | None]  # t -> (cx, bottom, width) or None (not in view)
    colour: tuple[int, int, int] | None = None
    yaw: float = 0.0
    readable: bool = True
    boxes: list = field(default_factory=list)
    visible_frames: list = field(default_factory=list)


def ease(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return 1 - (1 - x) ** 2


def approach(t0: float, dur: float, x0: float, x1: float, b0: float, b1: float, w0: float, w1: float, stop: bool = False,
             exit_after: float | None = None):
    def f(t):
        if t < t0:
            return None
        u = (t - t0) / dur
        if exit_after is not None and t > t0 + exit_after:
            return None
        if u > 1 and not stop:
            return None
        k = ease(u) if stop else min(u, 1.0) ** 1.6
        return (x0 + (x1 - x0) * k, b0 + (b1 - b0) * k, w0 + (w1 - w0) * k)

    return f


def lateral(t0: float, dur: float, x0: float, x1: float, bottom: float, width: float):
    def f(t):
        if t < t0 or t > t0 + dur:
            return None
        u = (t - t0) / dur
        return (x0 + (x1 - x0) * u, bottom, width)

    return f


@dataclass
class Clip:
    name: str
    description: str
    seconds: float
    vehicles: list[Vehicle]
    night: bool = False
    fog: float = 0.0
    rain: bool = False
    motion_blur: int = 0
    scroll: float = 0.0  # background pixels per second (vehicle-mounted camera)
    extras: Callable[[np.ndarray, float, np.random.Generator], None] | None = None
    direction: dict = field(default_factory=dict)


def plate(rng, style, text=None):
    return render_plate(rng, style, text)


def clips(rng: np.random.Generator) -> list[Clip]:
    out = []
    # 1. gate camera: a car approaches and stops, daytime
    out.append(Clip("01_gate_day", "Fixed gate camera, daytime: one car approaches and stops at the barrier.", 8.0,
                    [Vehicle(plate(rng, "us"), approach(0.5, 5.0, 640, 600, 430, 690, 170, 520, stop=True))]))
    # 2. lane at speed: three vehicles in a row, motion blur
    vs = [Vehicle(plate(rng, s), approach(0.3 + 2.4 * i, 2.2, 620 + 30 * i, 560 + 60 * i, 420, 760, 120, 600)) for i, s in
          enumerate(["eu", "eu", "uk"])]
    out.append(Clip("02_lane_speed", "Fixed camera over a lane: three vehicles in a row at speed, with motion blur.", 8.0, vs,
                    motion_blur=5))
    # 3. vehicle-mounted: passing parked cars that enter and leave the frame on the right
    vs = [Vehicle(plate(rng, s), lateral(0.4 + 2.6 * i, 3.0, 700, 1500, 640, 330)) for i, s in enumerate(["us", "eu", "us"])]
    out.append(Clip("03_vehicle_mounted", "Camera on a moving vehicle passing three parked cars; plates enter from the middle "
                    "and leave on the right while the background scrolls.", 9.0, vs, scroll=-220))
    # 4. night, infrared-style greyscale, headlight glare
    out.append(Clip("04_night_ir", "Night, infrared-style greyscale with headlight glare: two cars approach.", 8.0,
                    [Vehicle(plate(rng, "us"), approach(0.3, 3.4, 560, 620, 440, 700, 150, 480)),
                     Vehicle(plate(rng, "eu"), approach(4.0, 3.4, 700, 640, 440, 700, 150, 480))], night=True))
    # 5. rain and fog, low contrast
    out.append(Clip("05_rain_fog", "Rain and fog, low contrast: two cars approach.", 8.0,
                    [Vehicle(plate(rng, "eu"), approach(0.3, 3.4, 640, 600, 440, 700, 150, 500)),
                     Vehicle(plate(rng, "br"), approach(4.0, 3.4, 600, 660, 440, 700, 150, 500))], fog=0.35, rain=True))
    # 6. two plates in view at once, crossing paths
    out.append(Clip("06_crossing", "Two cars in view at once crossing paths: a far one going right, a near one going left.", 8.0,
                    [Vehicle(plate(rng, "us"), lateral(0.2, 7.0, 150, 1130, 470, 300)),
                     Vehicle(plate(rng, "mercosur"), lateral(0.6, 7.0, 1180, 120, 700, 420))]))
    # 7. several plate styles in one clip
    vs = [Vehicle(plate(rng, s), approach(0.3 + 2.5 * i, 2.3, 640, 620, 440, 700, 150, 480)) for i, s in
          enumerate(["us", "uk", "br", "mercosur"])]
    out.append(Clip("07_mixed_styles", "Plates of several styles in one clip: US, UK, Brazil (old grey), Brazil Mercosur.",
                    10.5, vs))
    # 8. no plate at all: signs, text on a truck, stickers
    out.append(Clip("08_no_plate", "No plate at all: road signs and lettering with numbers on a truck. The right answer is "
                    "no read.", 6.0, [], extras=_no_plate_extras))
    # 9. a plate too small and too blurred to read
    out.append(Clip("09_unreadable", "One car far away whose plate is too small and blurred to read. The right answer is no "
                    "read.", 6.0, [Vehicle(plate(rng, "us"), approach(0.0, 6.0, 900, 880, 380, 400, 60, 75, stop=True),
                                           readable=False)], motion_blur=3))
    return out


def _no_plate_extras(img: np.ndarray, t: float, rng: np.random.Generator) -> None:
    f = fonts()[0]
    # a truck side with lettering, driving across
    x = int(-600 + 260 * t)
    cv2.rectangle(img, (x, 300), (x + 600, 560), (235, 235, 235), -1)
    lab = np.array(text_image("ACME LOGISTICS 24", f, (200, 30, 30), 520, 70))
    _paste_rgba(img, lab, x + 40, 340)
    lab2 = np.array(text_image("CALL 0800 555 123", f, (20, 20, 120), 400, 40))
    _paste_rgba(img, lab2, x + 100, 440)
    for wx in (x + 60, x + 460):
        cv2.circle(img, (wx, 570), 40, (20, 20, 20), -1)
    # a speed sign and a direction sign
    cv2.circle(img, (1100, 220), 60, (220, 20, 20), -1)
    cv2.circle(img, (1100, 220), 46, (250, 250, 250), -1)
    _paste_rgba(img, np.array(text_image("50", f, (10, 10, 10), 56, 50)), 1072, 195)
    cv2.rectangle(img, (80, 120), (420, 210), (20, 110, 40), -1)
    _paste_rgba(img, np.array(text_image("EXIT 12 CENTRE", f, (250, 250, 250), 300, 50)), 100, 140)
    cv2.line(img, (1100, 280), (1100, 520), (90, 90, 90), 8)


def _paste_rgba(img: np.ndarray, rgba: np.ndarray, x: int, y: int) -> None:
    h, w = rgba.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(img.shape[1], x + w), min(img.shape[0], y + h)
    if x1 <= x0 or y1 <= y0:
        return
    src = rgba[y0 - y : y1 - y, x0 - x : x1 - x]
    a = src[..., 3:4].astype(np.float32) / 255
    img[y0:y1, x0:x1] = (img[y0:y1, x0:x1] * (1 - a) + src[..., :3] * a).astype(np.uint8)


def render_clip(c: Clip, rng: np.random.Generator, out_dir: Path) -> dict:
    n = int(round(c.seconds * FPS))
    base = background(rng, W * 2 if c.scroll else W, H, night=False)
    frames = []
    for i in range(n):
        t = i / FPS
        if c.scroll:
            off = int((-c.scroll * t) % W)
            img = np.ascontiguousarray(base[:, off : off + W])
        else:
            img = base.copy()
        if c.extras:
            c.extras(img, t, rng)
        # far vehicles first (smaller width)
        states = []
        for v in c.vehicles:
            s = v.path(t)
            if s is not None:
                states.append((s[2], v, s))
        states.sort(key=lambda z: z[0])
        placed = []
        for _, v, (cx, bottom, width) in states:
            pp = draw_vehicle(img, cx, bottom, width, np.random.default_rng(zlib.crc32(v.plate.text.encode())), v.plate,
                              colour=v.colour, yaw=v.yaw, night=c.night)
            placed.append((v, pp, (cx - width / 2, bottom - width * 0.78, cx + width / 2, bottom)))
        # a plate is hidden where a nearer vehicle's body covers it
        for k, (v, pp, _) in enumerate(placed):
            x1, y1, x2, y2 = pp.box
            hidden = any(_overlap(pp.box, body) > 0.3 for _, _, body in placed[k + 1 :])
            inside = x1 >= 0 and y1 >= 0 and x2 <= W and y2 <= H
            wpx = x2 - x1
            v.boxes.append([i, round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)])
            if v.readable and inside and not hidden and wpx >= MIN_READABLE_W:
                v.visible_frames.append(i)
        img = _camera(img, c, rng, placed)
        frames.append(img)
    path = out_dir / f"{c.name}.mp4"
    encode(frames, path)
    plates = []
    for v in c.vehicles:
        d, lat = _motion(v)
        readable = bool(v.visible_frames)
        plates.append({
            "text": v.plate.text,
            "style": v.plate.style,
            "readable": readable,
            "readable_frames": [v.visible_frames[0], v.visible_frames[-1]] if readable else None,
            "direction": d,
            "lateral": lat,
            "boxes": v.boxes,
        })
    truth = {
        "clip": path.name,
        "description": c.description,
        "width": W,
        "height": H,
        "fps": FPS,
        "frames": n,
        "expected_reads": sorted(p["text"] for p in plates if p["readable"]),
        "plates": plates,
    }
    (out_dir / f"{c.name}.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def _overlap(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = max(1e-6, (a[2] - a[0]) * (a[3] - a[1]))
    return ix * iy / area


def _motion(v: Vehicle) -> tuple[str, str]:
    fr = v.visible_frames or [b[0] for b in v.boxes]
    boxes = {b[0]: b[1:] for b in v.boxes}
    if len(fr) < 2:
        return "unknown", "none"
    a, b = boxes[fr[0]], boxes[fr[-1]]
    ha, hb = a[3] - a[1], b[3] - b[1]
    d = "towards" if hb / ha >= 1.12 else "away" if ha / hb >= 1.12 else "unknown"
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    lat = "right" if dx > 0.05 * W else "left" if dx < -0.05 * W else "none"
    return d, lat


def _camera(img: np.ndarray, c: Clip, rng: np.random.Generator, placed) -> np.ndarray:
    im = img.astype(np.float32)
    if c.motion_blur:
        k = c.motion_blur
        ker = np.zeros((k, k), np.float32)
        ker[:, k // 2] = 1.0 / k
        im = cv2.filter2D(im, -1, ker)
    if c.night:
        g = im @ np.array([0.3, 0.5, 0.2], np.float32)
        g = g * 0.35
        for _, pp, body in placed:  # IR-lit plate stays bright; headlight glare beside it
            x1, y1, x2, y2 = (int(v) for v in pp.box)
            g[max(0, y1) : y2, max(0, x1) : x2] = np.clip(g[max(0, y1) : y2, max(0, x1) : x2] / 0.35 * 0.95, 0, 255)
            bw = body[2] - body[0]
            for hx in (body[0] + 0.12 * bw, body[2] - 0.12 * bw):
                yy, xx = np.ogrid[:H, :W]
                r = 0.09 * bw
                g += 255 * np.exp(-((xx - hx) ** 2 + (yy - (body[1] + 0.55 * (body[3] - body[1]))) ** 2) / (2 * r * r))
        im = np.repeat(np.clip(g, 0, 255)[..., None], 3, 2)
    if c.fog:
        im = im * (1 - c.fog) + 170 * c.fog
    if c.rain:
        streaks = np.zeros((H, W), np.float32)
        for _ in range(400):
            x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
            cv2.line(streaks, (x, y), (x + 4, y + 22), 60, 1)
        im = im + streaks[..., None]
    im = im + rng.normal(0, 3.0, im.shape).astype(np.float32)
    return np.clip(im, 0, 255).astype(np.uint8)


def encode(frames_rgb: list[np.ndarray], path: Path) -> None:
    if shutil.which("ffmpeg"):
        cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(FPS),
               "-i", "-", "-c:v", "libx264", "-preset", "medium", "-crf", "25", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
               str(path)]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        for f in frames_rgb:
            p.stdin.write(np.ascontiguousarray(f).tobytes())
        p.stdin.close()
        if p.wait() != 0:
            raise RuntimeError(f"ffmpeg failed for {path}")
        return
    print("warning: ffmpeg not found; writing MPEG-4 Part 2 instead of H.264 (apt-get install ffmpeg)", file=sys.stderr)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    for f in frames_rgb:
        w.write(f[..., ::-1])
    w.release()


def write_readme(out: Path) -> None:
    rows = []
    for side in sorted(out.glob("*.json")):
        t = json.loads(side.read_text())
        plates = ", ".join(f"{p['text']} ({p['style']}, {p['direction']}/{p['lateral']}{'' if p['readable'] else ', unreadable'})"
                           for p in t["plates"]) or "none"
        rows.append(f"| `{t['clip']}` | {t['frames'] / t['fps']:.1f} s | {t['description']} | {plates} |")
    (out / "README.md").write_text(
        "# Fixture clips\n\n"
        "Rendered by the project (`make fixtures`, i.e. `python -m models.train.fixtures`): deterministic, seeded, "
        f"{W}x{H} at {FPS} fps, H.264 MP4. The plates come from the same renderer as the reader's synthetic training "
        "data (`models/train/render.py`), the streets from `models/train/scene.py`.\n\n"
        "Beside each clip, `<clip>.json` is its ground truth: `expected_reads` (the plates a correct reader reports, each "
        "once), and per plate its text, style, whether it is readable, the frame range in which it is readable "
        f"(in view, unoccluded, at least {MIN_READABLE_W} px wide), its box per frame `[frame, x1, y1, x2, y2]`, and its "
        "direction of travel (towards/away from the camera; left/right in the image).\n\n"
        "| clip | length | what it shows | plates |\n| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("fixtures/videos"))
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--only", help="render only clips whose name contains this")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    for c in clips(rng):
        if a.only and a.only not in c.name:
            continue
        crng = np.random.default_rng([a.seed, int.from_bytes(c.name.encode()[:8], "little")])
        t = render_clip(c, crng, a.out)
        size = (a.out / t["clip"]).stat().st_size / 1e6
        print(f"{t['clip']}: {t['frames']} frames, {size:.1f} MB, expected reads {t['expected_reads']}")
    write_readme(a.out)


if __name__ == "__main__":
    main()
