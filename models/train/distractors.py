"""Text that is not a plate, painted into detector training crops as hard negatives.

Road signs (direction boards, round speed signs), shop signs and vehicle lettering (a company name
over a phone number) all hold letters and digits; a detector that has only learned "text" boxes
them and the reader then reads them. Pasted where no plate is, unlabelled, they teach the detector
that a plate is text on a plate, not text. Words are made up from random letters, so no particular
sign is learned, and nothing pasted looks like a plate (no dark registration on a light,
bordered, plate-shaped panel).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from models.train.render import _pick, fonts, text_image

VOWELS = "AEIOU"
CONSONANTS = "BCDFGHJKLMNPRSTVWXYZ"
SIGN_COLOURS = [(0, 110, 60), (20, 60, 150), (110, 60, 30), (200, 30, 30), (30, 30, 30), (240, 190, 0)]
INKS = [(200, 20, 30), (20, 40, 140), (20, 20, 20), (0, 110, 60), (240, 240, 240), (230, 120, 0)]


def word(rng: np.random.Generator, n: int | None = None) -> str:
    n = n or int(rng.integers(3, 10))
    return "".join(_pick(rng, CONSONANTS) if k % 2 == 0 else _pick(rng, VOWELS) for k in range(n))


def phrase(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.3:
        return f"{_pick(rng, ['CALL', 'TEL', 'PHONE', 'FREE'])} {rng.integers(100, 9999)} {rng.integers(100, 999)} {rng.integers(100, 9999)}"
    if kind < 0.5:
        return f"{word(rng)} {rng.integers(1, 99)}"
    if kind < 0.65:
        return f"{rng.integers(1, 999)} {word(rng)}"
    return " ".join(word(rng) for _ in range(int(rng.integers(1, 4))))


def _paste(canvas: Image.Image, im: Image.Image, x: int, y: int) -> None:
    canvas.paste(im, (x, y), im if im.mode == "RGBA" else None)


def sign(rng: np.random.Generator, scale: float) -> Image.Image:
    """An RGBA patch: a direction/shop board, a round speed sign, or bare vehicle lettering."""
    font = _pick(rng, fonts())
    kind = rng.random()
    if kind < 0.2:  # round sign with a number
        d = max(12, int(60 * scale))
        im = Image.new("RGBA", (d, d), (0, 0, 0, 0))
        dr = ImageDraw.Draw(im)
        dr.ellipse([0, 0, d - 1, d - 1], fill=(200, 20, 20, 255))
        r = int(d * 0.14)
        dr.ellipse([r, r, d - 1 - r, d - 1 - r], fill=(245, 245, 245, 255))
        t = text_image(str(_pick(rng, [20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120])), font, (20, 20, 20), int(d * 0.55), int(d * 0.4))
        _paste(im, t, (d - t.width) // 2, (d - t.height) // 2)
        return im
    lines = [phrase(rng) for _ in range(int(rng.integers(1, 3)))]
    h_line = max(8, int(rng.uniform(18, 40) * scale))
    rendered = []
    for ln in lines:
        w = int(h_line * len(ln) * rng.uniform(0.45, 0.7))
        rendered.append(text_image(ln, _pick(rng, fonts()), _pick(rng, INKS), max(8, w), h_line))
    pad = int(h_line * 0.35)
    W = max(r.width for r in rendered) + 2 * pad
    H = sum(r.height for r in rendered) + pad * (len(rendered) + 1)
    if kind < 0.6:  # a board: coloured panel, light text
        bg = _pick(rng, SIGN_COLOURS) + (255,)
        rendered = [text_image(ln, _pick(rng, fonts()), (245, 245, 245) if bg[:3] != (240, 190, 0) else (20, 20, 20), r.width, r.height)
                    for ln, r in zip(lines, rendered)]
    else:  # lettering painted straight on a vehicle or a wall
        bg = (0, 0, 0, 0)
    im = Image.new("RGBA", (W, H), bg)
    y = pad
    for r in rendered:
        _paste(im, r, (W - r.width) // 2, y)
        y += r.height + pad
    return im


def paint(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Paste 1-3 distractors (BGR image) where they overlap no plate box; returns a new image."""
    h, w = img.shape[:2]
    canvas = Image.fromarray(img[..., ::-1].copy())
    for _ in range(n or int(rng.integers(1, 4))):
        s = sign(rng, float(np.exp(rng.uniform(np.log(0.4), np.log(2.0)))))
        if s.width >= w or s.height >= h:
            continue
        for _try in range(8):
            x, y = int(rng.integers(0, w - s.width)), int(rng.integers(0, h - s.height))
            if not len(boxes) or not np.any((boxes[:, 0] < x + s.width) & (boxes[:, 2] > x) & (boxes[:, 1] < y + s.height) & (boxes[:, 3] > y)):
                _paste(canvas, s, x, y)
                break
    return np.asarray(canvas)[..., ::-1].copy()
