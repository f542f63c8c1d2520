"""The project's synthetic plate renderer.

Draws plates of many styles (US states, EU countries including the UK, Brazil old grey and
Mercosur) with fonts from Debian packages (fonts-dejavu-core, fonts-liberation,
fonts-freefont-ttf, fonts-urw-base35, fonts-croscore), and degrades them as a camera would.
Used both for the reader's training data and for the fixture videos, so both see the same plates.
"""

from __future__ import annotations

import glob
import os
import string
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

LETTERS = string.ascii_uppercase
DIGITS = string.digits

FONT_GLOBS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
    "/usr/share/fonts/truetype/liberation*/LiberationSansNarrow-Bold.ttf",
    "/usr/share/fonts/truetype/liberation*/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation*/LiberationMono-Bold.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSansBold.ttf",
    "/usr/share/fonts/truetype/freefont/FreeMonoBold.ttf",
    "/usr/share/fonts/opentype/urw-base35/NimbusSansNarrow-Bold.otf",
    "/usr/share/fonts/opentype/urw-base35/NimbusSans-Bold.otf",
    "/usr/share/fonts/opentype/urw-base35/NimbusMonoPS-Bold.otf",
    "/usr/share/fonts/truetype/croscore/Arimo-Bold.ttf",
    "/usr/share/fonts/truetype/croscore/Cousine-Bold.ttf",
]

# Plate-like faces (Debian packages fonts-opendin, fonts-routed-gothic, fonts-roboto-unhinted,
# fonts-bebas-neue, fonts-b612, fonts-open-sans): a DIN, a routed stroke font (its 1 a bare bar),
# condensed grotesques. Off unless use_more_fonts() is called (reader.py --more-fonts), so the
# plates every seed draws, the fixtures' and the tests' included, stay as they were.
MORE_FONT_GLOBS = [
    "/usr/share/fonts/truetype/opendin/OSP-DIN.ttf",
    "/usr/share/fonts/truetype/routed-gothic/routed-gothic.ttf",
    "/usr/share/fonts/truetype/routed-gothic/routed-gothic-narrow.ttf",
    "/usr/share/fonts/truetype/roboto/unhinted/RobotoCondensed-Bold.ttf",
    "/usr/share/fonts/opentype/bebas-neue/BebasNeue-Bold.otf",
    "/usr/share/fonts/opentype/b612/B612-Bold.otf",
    "/usr/share/fonts/opentype/b612/B612Mono-Bold.otf",
    "/usr/share/fonts/truetype/open-sans/OpenSans-CondBold.ttf",
]
_MORE_FONTS = False

US_STATES = [
    "CALIFORNIA", "TEXAS", "FLORIDA", "NEW YORK", "ILLINOIS", "OHIO", "GEORGIA", "MICHIGAN", "ARIZONA",
    "NEVADA", "OREGON", "WASHINGTON", "COLORADO", "UTAH", "ALASKA", "MAINE", "VERMONT", "IOWA", "KANSAS",
    "MONTANA", "IDAHO", "INDIANA", "VIRGINIA", "NEW JERSEY", "MARYLAND", "MISSOURI", "OKLAHOMA", "ALABAMA",
    "KENTUCKY", "MINNESOTA", "WISCONSIN", "TENNESSEE", "DELAWARE", "NEBRASKA", "PENNSYLVANIA", "HAWAII",
]
SLOGANS = [
    "Sunshine State", "Land of Lincoln", "Live Free or Die", "The Great Lakes State", "Grand Canyon State",
    "Silver State", "Empire State", "Garden State", "Famous Potatoes", "dmv.ca.gov", "Big Sky Country",
    "America's Dairyland", "The Heart of Dixie", "Peach State", "Lone Star State", "Centennial State",
    "Don't Tread on Me", "Explore Minnesota", "Wild Wonderful", "Virginia is for Lovers", "First in Flight",
]
EU_CODES = ["D", "F", "I", "NL", "B", "PL", "RO", "CZ", "E", "P", "A", "S", "GB", "UK", "IRL", "H", "SK", "BG", "LT"]
BR_CITIES = ["SAO PAULO", "RIO DE JANEIRO", "CURITIBA", "BELO HORIZONTE", "PORTO ALEGRE", "SALVADOR", "RECIFE"]


def use_more_fonts() -> None:
    """Draw plates in MORE_FONT_GLOBS' faces too (fails when none of them is installed)."""
    global _MORE_FONTS
    if not _fonts_from(MORE_FONT_GLOBS):
        raise RuntimeError("none of the plate-like fonts is installed (make setup-train installs them: " + " ".join(MORE_FONT_PACKAGES) + ")")
    _MORE_FONTS = True
    fonts.cache_clear()


MORE_FONT_PACKAGES = ("fonts-opendin", "fonts-routed-gothic", "fonts-roboto-unhinted", "fonts-bebas-neue", "fonts-b612", "fonts-open-sans")


def _fonts_from(globs) -> list[str]:
    out: list[str] = []
    here = os.environ.get("PLATE_FONTS")  # a folder holding copies of these fonts (a machine without the packages)
    for g in globs:
        out.extend(sorted(glob.glob(os.path.join(here, os.path.basename(g)) if here else g)))
    return out


@lru_cache(maxsize=1)
def fonts() -> list[str]:
    out = _fonts_from(FONT_GLOBS)
    if not out:
        raise RuntimeError("no plate fonts found: install fonts-dejavu-core (apt-get install fonts-dejavu-core)")
    if _MORE_FONTS:
        out += _fonts_from(MORE_FONT_GLOBS)
    return out


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _chars(rng, pattern: str) -> str:
    """Pattern letters: L letter, D digit, M letter A-J, X either, anything else literal."""
    out = []
    for p in pattern:
        if p == "L":
            out.append(_pick(rng, LETTERS))
        elif p == "D":
            out.append(_pick(rng, DIGITS))
        elif p == "M":
            out.append(_pick(rng, "ABCDEFGHIJ"))
        elif p == "X":
            out.append(_pick(rng, LETTERS + DIGITS))
        else:
            out.append(p)
    return "".join(out)


def text_image(text: str, font: str, color, w: int, h: int, size_px: int = 96) -> Image.Image:
    """Render `text` and stretch it to exactly w x h (an RGBA image), like a plate's condensed type."""
    f = _font(font, size_px)
    left, t, r, b = f.getbbox(text)
    im = Image.new("L", (max(1, r - left + 4), max(1, b - t + 4)), 0)
    ImageDraw.Draw(im).text((2 - left, 2 - t), text, font=f, fill=255)
    im = im.resize((max(1, w), max(1, h)), Image.BILINEAR)
    rgba = Image.new("RGBA", im.size, tuple(color) + (255,))
    rgba.putalpha(im)
    return rgba


@dataclass
class Plate:
    image: np.ndarray  # RGB uint8
    text: str  # the registration: A-Z0-9 only
    style: str
    lines: int


def _plate_format(rng, style: str) -> tuple[str, list[str]]:
    """Return (display text with spaces/dashes, lines) for a style."""
    if style == "us":
        pat = _pick(rng, ["DLLLDDD", "LLL DDDD", "LLL DDD", "DDD LLL", "LLL-DDDD", "DLLDDD", "LL DDDDD",
                          "DDDDDD", "LLLDDDD", "DDLLLD", "XXXXXXX", "XXXXXX", "XXXXX", "LLL DLD", "DDD DDD"])
    elif style == "eu":
        pat = _pick(rng, ["L LL DDDD", "LL LL DDD", "LL-DDD-LL", "LL DDD LL", "LL DD LLL", "L DD LLL",
                          "DD LLL D", "LLL DDDD", "LL DDDD L", "L DDD LLL", "LLL DDL", "DDDD LLL", "LL DDDDD"])
    elif style == "uk":
        pat = _pick(rng, ["LLDD LLL", "LLDD LLL", "LDDD LLL", "LLL DDDL"])
    elif style == "br":
        pat = "LLL-DDDD" if rng.random() < 0.7 else "LLL DDDD"
    elif style == "mercosur":
        pat = "LLLDMDD"  # the fifth: the old plate's digit written A-J
    else:  # two-line (motorcycle / square plates)
        top = _pick(rng, ["LLL", "LL", "DDD", "LLD", "XX", "LLLL"])
        bot = _pick(rng, ["DDDD", "DDD", "LLDD", "DDDDD", "DDLL", "XXXX"])
        return "", [_chars(rng, top), _chars(rng, bot)]
    disp = _chars(rng, pat)
    if style == "us" and "O" in disp and rng.random() < 0.5:
        disp = disp.replace("O", "0")  # US plates draw O and 0 alike; half the time with the 0 glyph
    return disp, []


def render_plate(rng: np.random.Generator, style: str | None = None, text: str | None = None, extras: bool = False) -> Plate:
    """Draw one plate. `text` (spaces allowed) overrides the random registration. `extras` adds the
    US plates' graphics that are not part of the registration (see _us_extras); without it the
    random stream, and so every plate drawn from a seed, is as before."""
    if style is None:
        style = _pick(rng, ["us", "us", "us", "eu", "eu", "uk", "br", "mercosur", "two"])
    disp, lines = _plate_format(rng, style)
    if text is not None:
        disp, lines = text, text.split("\n") if "\n" in text else []
    if style == "two" and not lines:
        lines = disp.split()[:2] if len(disp.split()) >= 2 else [disp[: len(disp) // 2], disp[len(disp) // 2 :]]
    font = _pick(rng, fonts())
    ink = (20, 20, 25)
    if style == "us":
        W, H = 300, 150
        bg = _pick(rng, [(245, 245, 240), (250, 250, 250), (235, 240, 250), (250, 245, 220), (255, 250, 200),
                         (225, 235, 245), (240, 240, 240)])
        ink = _pick(rng, [(20, 20, 25), (20, 30, 110), (130, 20, 20), (20, 70, 30), (25, 25, 90)])
    elif style in ("eu", "uk"):
        W, H = 520, 112
        bg = (250, 250, 250) if style == "eu" or rng.random() < 0.5 else (250, 205, 20)
        if style == "eu" and rng.random() < 0.1:
            bg = (250, 210, 30)
    elif style == "br":
        W, H = 400, 130
        bg = _pick(rng, [(190, 192, 195), (175, 178, 180), (205, 205, 205)])
    elif style == "mercosur":
        W, H = 400, 130
        bg = (248, 248, 248)
    else:
        W, H = 200, 160
        bg = _pick(rng, [(245, 245, 240), (250, 205, 20), (240, 240, 250)])
    # grain in the background paint
    img = Image.new("RGB", (W, H), tuple(int(c) for c in bg))
    d = ImageDraw.Draw(img)
    if rng.random() < 0.5 and style == "us":  # graphic gradient / sky band
        top = np.array(bg, np.float32)
        tint = np.array(_pick(rng, [(150, 190, 240), (240, 200, 150), (200, 230, 200), (230, 230, 230)]), np.float32)
        arr = np.array(img, np.float32)
        grad = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
        arr = arr * (1 - grad * 0.6) + tint * grad * 0.6 if rng.random() < 0.5 else arr * (grad * 0.5 + 0.5) + tint * (0.5 - grad * 0.5)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        del top
    border = tuple(int(c) for c in (ink if rng.random() < 0.6 else (60, 60, 60)))
    bw = int(rng.integers(1, 6))
    d.rounded_rectangle([1, 1, W - 2, H - 2], radius=int(rng.integers(2, 14)), outline=border, width=bw)
    x0, x1 = 0.05 * W, 0.95 * W
    if style == "us" and rng.random() < 0.4:
        x0, x1 = 0.02 * W, 0.98 * W  # the registration often runs almost edge to edge
    if style == "us" and rng.random() < 0.3:
        # small stacked letters or a badge beside the registration (plate type, county, "FIRE FIGHTER")
        sx0, sx1 = W * rng.uniform(0.03, 0.06), W * rng.uniform(0.11, 0.2)
        col = _pick(rng, [ink, (150, 20, 20), (20, 40, 140)])
        if rng.random() < 0.6:
            for k, ch in enumerate(_chars(rng, _pick(rng, ["LL", "LLL", "DD"]))):
                ci = text_image(ch, _pick(rng, fonts()), col, int(sx1 - sx0), int(H * 0.17))
                img.paste(ci, (int(sx0), int(H * (0.27 + 0.2 * k))), ci)
        else:
            d.rounded_rectangle([sx0, H * 0.3, sx1, H * 0.7], radius=4, fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        x0 = sx1 + 0.02 * W
    if rng.random() < 0.5:  # mounting bolts
        r = max(2, int(H * rng.uniform(0.025, 0.05)))
        col = tuple(int(c) for c in rng.integers(60, 200, 3))
        for bx, by in ((0.2 * W, 0.1 * H), (0.8 * W, 0.1 * H), (0.2 * W, 0.9 * H), (0.8 * W, 0.9 * H))[: int(rng.choice([2, 4]))]:
            d.ellipse([bx - r, by - r, bx + r, by + r], fill=col, outline=(40, 40, 40))
    emblem_gap = False
    if extras and style == "us":
        img, x0, x1, emblem_gap = _us_extras(img, rng, W, H, x0, x1, ink)
        d = ImageDraw.Draw(img)
    if style in ("eu", "uk") and (style == "eu" or rng.random() < 0.7):
        sw = int(W * 0.085)
        d.rectangle([3, 3, sw, H - 4], fill=(0, 51, 153))
        cx = sw / 2 + 2
        for k in range(12):  # ring of stars
            a = 2 * np.pi * k / 12
            sx, sy = cx + 0.28 * sw * np.cos(a), H * 0.3 + 0.28 * sw * np.sin(a)
            d.ellipse([sx - 2, sy - 2, sx + 2, sy + 2], fill=(255, 204, 0))
        code = _pick(rng, EU_CODES) if style == "eu" else _pick(rng, ["GB", "UK"])
        ci = text_image(code, font, (255, 255, 255), int(sw * 0.7), int(H * 0.28))
        img.paste(ci, (int(cx - ci.width / 2), int(H * 0.58)), ci)
        x0 = sw + 0.03 * W
    if style == "mercosur":
        band = int(H * 0.22)
        d.rectangle([3, 3, W - 4, band], fill=(0, 60, 160))
        ti = text_image("BRASIL", font, (255, 255, 255), int(W * 0.25), int(band * 0.6))
        img.paste(ti, (int(W / 2 - ti.width / 2), int(band * 0.2) + 3), ti)
    # main characters
    if lines:
        n = len(lines)
        top = 0.12 * H
        avail = 0.8 * H
        for i, ln in enumerate(lines):
            lh = int(avail / n * rng.uniform(0.75, 0.92))
            lw = int((x1 - x0) * min(1.0, len(ln) / 4.5) * rng.uniform(0.8, 1.0))
            ti = text_image(ln, font, ink, lw, lh)
            img.paste(ti, (int((x0 + x1) / 2 - lw / 2), int(top + i * avail / n)), ti)
        text_out = "".join(lines)
        nlines = n
    else:
        if style == "us":
            cap_h = rng.uniform(0.42, 0.55) * H
            cy = rng.uniform(0.47, 0.55) * H
        elif style == "mercosur":
            cap_h = rng.uniform(0.5, 0.6) * H
            cy = 0.62 * H
        elif style == "br":
            cap_h = rng.uniform(0.48, 0.58) * H
            cy = 0.6 * H
        else:
            cap_h = rng.uniform(0.62, 0.75) * H
            cy = 0.5 * H
        n = max(1, len(disp))
        width = min(x1 - x0, cap_h * n * rng.uniform(0.42, 0.62 if style != "us" else 0.75))
        parts = disp.replace("-", " ").split(" ", 1)
        if len(parts) == 2 and (emblem_gap or (style == "eu" and rng.random() < 0.35)):
            # a coat of arms or round inspection seals between the district code and the rest
            # (Germany, Austria, Slovakia, Croatia): not a character
            gap = cap_h * (rng.uniform(0.45, 0.7) if style == "eu" else rng.uniform(0.25, 0.7))
            left, right = parts[0], parts[1].replace(" ", "")
            unit = (width - gap) / max(1, len(left) + len(right))
            lx = (x0 + x1) / 2 - width / 2
            for k, part in enumerate((left, right)):
                pw = max(1, int(unit * len(part)))
                ti = text_image(part, font, ink, pw, int(cap_h))
                img.paste(ti, (int(lx), int(cy - cap_h / 2)), ti)
                if k == 0:
                    ex0, ex1 = lx + pw + gap * 0.12, lx + pw + gap * 0.88
                    lx += pw + gap
            col = tuple(int(c) for c in rng.integers(0, 255, 3))
            if style == "us":  # a state emblem or a dot between the groups
                r_ = (ex1 - ex0) / 2 * rng.uniform(0.4, 1.3)
                if rng.random() < 0.4:
                    d.ellipse([(ex0 + ex1) / 2 - r_ / 2, cy - r_ / 2, (ex0 + ex1) / 2 + r_ / 2, cy + r_ / 2], fill=col)
                else:
                    _silhouette(d, rng, (ex0 + ex1) / 2, cy, r_, col)
            elif rng.random() < 0.5:  # two stacked round seals
                r_ = (ex1 - ex0) / 2
                for sy in (cy - r_ * 1.05, cy + r_ * 1.05):
                    d.ellipse([ex0, sy - r_, ex1, sy + r_], fill=col, outline=(40, 40, 40))
                    col = tuple(int(c) for c in rng.integers(0, 255, 3))
            else:  # a shield
                top_, bot_ = cy - cap_h * 0.4, cy + cap_h * 0.4
                d.polygon([(ex0, top_), (ex1, top_), (ex1, cy + cap_h * 0.1), ((ex0 + ex1) / 2, bot_), (ex0, cy + cap_h * 0.1)],
                          fill=col, outline=tuple(int(c) for c in rng.integers(0, 255, 3)))
        else:
            ti = text_image(disp, font, ink, int(width), int(cap_h))
            img.paste(ti, (int((x0 + x1) / 2 - width / 2), int(cy - cap_h / 2)), ti)
        text_out = "".join(c for c in disp if c.isalnum())
        if style == "us":
            text_out = text_out.replace("O", "0")  # most US states use one glyph for O and 0; records write 0
        nlines = 1
    # small print: state names, slogans, city names, stickers
    if style == "us":
        name = _pick(rng, US_STATES)
        ni = text_image(name, _pick(rng, fonts()), _pick(rng, [ink, (150, 20, 20), (20, 40, 140)]),
                        int(W * rng.uniform(0.35, 0.7)), int(H * rng.uniform(0.11, 0.17)))
        img.paste(ni, (int(W / 2 - ni.width / 2), int(H * 0.05)), ni)
        if rng.random() < 0.7:
            sl = _pick(rng, SLOGANS)
            si = text_image(sl, _pick(rng, fonts()), _pick(rng, [ink, (120, 20, 20), (20, 40, 140)]),
                            int(W * rng.uniform(0.35, 0.65)), int(H * rng.uniform(0.07, 0.11)))
            img.paste(si, (int(W / 2 - si.width / 2), int(H * 0.84)), si)
        if rng.random() < 0.5:  # registration sticker
            sx = int(rng.choice([0.06, 0.78]) * W)
            col = tuple(int(c) for c in rng.integers(0, 255, 3))
            d.rectangle([sx, int(0.06 * H), sx + int(0.15 * W), int(0.22 * H)], fill=col)
    elif style == "br":
        ci = text_image(_pick(rng, BR_CITIES), font, ink, int(W * 0.5), int(H * 0.14))
        img.paste(ci, (int(W / 2 - ci.width / 2), int(H * 0.08)), ci)
    arr = np.array(img)
    if rng.random() < 0.4:  # dealer frame at the bottom/top
        fh = int(H * rng.uniform(0.08, 0.16))
        col = int(rng.integers(0, 60))
        arr[-fh:] = col
        if rng.random() < 0.5:
            fi = text_image(_pick(rng, ["DEALER", "AUTO SALES", "MOTORS", "TOYOTA", "FORD"]), font, (220, 220, 220),
                            int(W * 0.4), int(fh * 0.7))
            pim = Image.fromarray(arr)
            pim.paste(fi, (int(W / 2 - fi.width / 2), H - fh + int(fh * 0.15)), fi)
            arr = np.array(pim)
    return Plate(arr, text_out, style, nlines)


# ------------------------------------------------------------------ camera degradations


def _silhouette(d: ImageDraw.ImageDraw, rng, cx: float, cy: float, r: float, fill) -> None:
    """A pictogram or emblem that is not a character: a star/sun, a tree, a blob, an arch."""
    kind = int(rng.integers(4))
    if kind == 0:  # sun with rays (New Mexico's Zia), or a star
        n = int(rng.integers(4, 9))
        pts = []
        for k in range(2 * n):
            a = np.pi * k / n
            rr = r if k % 2 == 0 else r * rng.uniform(0.3, 0.6)
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        d.polygon(pts, fill=fill)
        if rng.random() < 0.5:
            d.ellipse([cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    elif kind == 1:  # a tree / mountain
        for k in range(int(rng.integers(1, 4))):
            ty = cy - r + k * r * 0.5
            d.polygon([(cx, ty), (cx + r * 0.5 * (k + 1) / 2, ty + r * 0.8), (cx - r * 0.5 * (k + 1) / 2, ty + r * 0.8)], fill=fill)
        d.rectangle([cx - r * 0.08, cy + r * 0.5, cx + r * 0.08, cy + r], fill=fill)
    elif kind == 2:  # an irregular blob (a horse and rider, a cactus, a bird)
        n = int(rng.integers(6, 12))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.35, 1.0, n)
        d.polygon([(cx + a_ * np.cos(b_), cy + a_ * np.sin(b_)) for a_, b_ in zip(rad, ang)], fill=fill)
    else:  # an arch / wheelchair-like ring with a stroke
        w_ = max(2, int(r * rng.uniform(0.15, 0.3)))
        d.arc([cx - r, cy - r, cx + r, cy + r], int(rng.integers(0, 90)), int(rng.integers(200, 360)), fill=fill, width=w_)
        if rng.random() < 0.5:
            d.ellipse([cx - r * 0.2, cy - r * 1.1, cx + r * 0.2, cy - r * 0.7], fill=fill)


def _us_extras(img: Image.Image, rng, W: int, H: int, x0: float, x1: float, ink):
    """What real US plates carry beside the registration and that records leave out: a pair of
    large stacked letters (plate type: "RT", "VF", "HC"), a pictogram (wheelchair, a college or
    team logo), a silhouette behind the text (a bucking horse, an arch, mountains) and an emblem in
    the gap between the two groups (New Mexico's Zia, a tree). Returns (image, x0, x1, emblem_gap)."""
    d = ImageDraw.Draw(img)
    dark = lambda: tuple(int(c) for c in rng.integers(0, 140, 3))  # noqa: E731
    if rng.random() < 0.3:  # silhouette behind the registration
        _silhouette(d, rng, rng.uniform(0.1, 0.9) * W, rng.uniform(0.35, 0.7) * H, rng.uniform(0.2, 0.4) * H,
                    tuple(int(c) for c in rng.integers(60, 230, 3)))
    r = rng.random()
    if r < 0.3:  # large stacked letters, left or right of the registration
        left = rng.random() < 0.6
        cw = W * rng.uniform(0.05, 0.08)
        ch = H * rng.uniform(0.2, 0.3)
        sx = (x0 + W * 0.01) if left else (x1 - cw - W * 0.01)
        col = _pick(rng, [ink, (170, 20, 20), (20, 40, 140)])
        top = H * rng.uniform(0.2, 0.3)
        for k, c in enumerate(_chars(rng, _pick(rng, ["LL", "LL", "DL", "LLL"]))):
            ci = text_image(c, _pick(rng, fonts()), col, int(cw), int(ch))
            img.paste(ci, (int(sx), int(top + k * ch * 1.05)), ci)
        x0, x1 = (sx + cw + 0.02 * W, x1) if left else (x0, sx - 0.02 * W)
    elif r < 0.55:  # a pictogram or logo at one side
        left = rng.random() < 0.7
        pw = W * rng.uniform(0.12, 0.22)
        cx = x0 + pw / 2 if left else x1 - pw / 2
        if rng.random() < 0.5:
            d.rectangle([cx - pw / 2, H * 0.28, cx + pw / 2, H * 0.75], fill=_pick(rng, [(20, 60, 160), (250, 250, 250), (20, 20, 20)]))
        _silhouette(d, rng, cx, H * 0.5, pw * 0.4, dark())
        x0, x1 = (x0 + pw + 0.02 * W, x1) if left else (x0, x1 - pw - 0.02 * W)
    return img, x0, x1, rng.random() < 0.3


def degrade(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Blur, noise, glare, night/IR, JPEG on an RGB uint8 image."""
    im = img.astype(np.float32)
    if rng.random() < 0.2 * strength:  # infrared greyscale, often bright plate
        g = im @ np.array([0.3, 0.5, 0.2], np.float32)
        g = np.clip((g - g.mean()) * rng.uniform(1.0, 1.8) + g.mean() * rng.uniform(0.6, 1.3), 0, 255)
        im = np.repeat(g[..., None], 3, 2)
    if rng.random() < 0.5 * strength:  # exposure/contrast
        im = im * rng.uniform(0.35, 1.3) + rng.uniform(-40, 40)
    if rng.random() < 0.3 * strength:  # uneven light / shadow band
        h, w = im.shape[:2]
        gx = np.linspace(rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.2), w, dtype=np.float32)[None, :, None]
        im = im * gx
    if rng.random() < 0.15 * strength:  # glare spot
        h, w = im.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.5) * w
        im = im + 255 * rng.uniform(0.3, 1.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
    if rng.random() < 0.25 * strength:  # motion blur
        k = int(rng.integers(3, 6))
        ker = np.zeros((k, k), np.float32)
        if rng.random() < 0.7:
            ker[k // 2, :] = 1.0 / k
        else:
            ker[:, k // 2] = 1.0 / k
        im = cv2.filter2D(im, -1, ker)
    elif rng.random() < 0.4 * strength:
        s = rng.uniform(0.4, 1.2)
        im = cv2.GaussianBlur(im, (0, 0), s)
    if rng.random() < 0.5 * strength:
        im = im + rng.normal(0, rng.uniform(2, 14), im.shape).astype(np.float32)
    im = np.clip(im, 0, 255).astype(np.uint8)
    if rng.random() < 0.5 * strength:
        q = int(rng.integers(20, 90))
        im = cv2.imdecode(cv2.imencode(".jpg", im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(im)


def perspective_corners(w: int, h: int, rng: np.random.Generator, amount: float = 0.12) -> np.ndarray:
    """Random destination corners (TL, TR, BR, BL) for a w x h plate: yaw/pitch/roll-like distortion."""
    pts = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    jitter = rng.uniform(-amount, amount, (4, 2)).astype(np.float32) * np.array([w * 0.5, h], np.float32)
    ang = rng.normal(0, 4) * np.pi / 180
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]], np.float32)
    c = pts.mean(0)
    return ((pts - c) @ rot.T + c + jitter).astype(np.float32)


def loose_edges(rng: np.random.Generator, loose: float, lo: float, hi: float) -> np.ndarray:
    """How far each edge of a detector-like box (left, top, right, bottom) lies outside the plate, as
    shares of its size: uniform in [lo, hi); with probability `loose` an edge is instead drawn from
    [hi, LOOSE_MAX). On real US photos the shipped detector's edges lie 5% outside the labelled box at
    the median and 21-31% at the 95th percentile (release 14), past what [lo, hi) covers."""
    j = rng.uniform(lo, hi, 4)
    if loose:
        far = rng.random(4) < loose
        j[far] = rng.uniform(hi, LOOSE_MAX, int(far.sum()))
    return j


LOOSE_MAX = 0.35


def plate_crop_sample(
    rng: np.random.Generator, out_w: int, out_h: int, background: np.ndarray | None = None, plate: Plate | None = None,
    strength: float = 1.0, extras: bool = False, crisp: float = 0.0, loose: float = 0.0,
) -> tuple[np.ndarray, str]:
    """One reader training sample: a plate warped onto a background, cut as a detector would, resized.
    `extras`: see render_plate. `crisp`: the share of samples seen large and sharp (a near camera,
    a cropped photo), which the default mix of small, degraded plates leaves rare."""
    if plate is None:
        plate = render_plate(rng, extras=extras)
    p = plate.image
    h, w = p.shape[:2]
    dst = perspective_corners(w, h, rng, amount=rng.uniform(0.0, 0.14) * strength)
    mnx, mny = dst.min(0)
    mxx, mxy = dst.max(0)
    mx, my = w * 0.35, h * 0.6
    cw, ch = int(mxx - mnx + 2 * mx), int(mxy - mny + 2 * my)
    off = np.array([mx - mnx, my - mny], np.float32)
    if background is not None and background.shape[0] > 10:
        bh, bw = background.shape[:2]
        sx, sy = int(rng.integers(0, max(1, bw - 64))), int(rng.integers(0, max(1, bh - 32)))
        bgc = background[sy : sy + max(32, bh // 3), sx : sx + max(64, bw // 3)]
        canvas = cv2.resize(bgc, (cw, ch))
    else:
        canvas = np.full((ch, cw, 3), rng.integers(0, 255, 3), np.uint8)
    m = cv2.getPerspectiveTransform(np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32), dst + off)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), m, (cw, ch))
    warped = cv2.warpPerspective(p, m, (cw, ch))
    canvas = np.where(mask[..., None] > 127, warped, canvas)
    # the detector's box: the warped plate's bounding box, with jitter like a real detector's error
    bx1, by1 = mnx + off[0], mny + off[1]
    bx2, by2 = mxx + off[0], mxy + off[1]
    pw, ph = bx2 - bx1, by2 - by1
    j = loose_edges(rng, loose, -0.09, 0.12) * np.array([pw, ph, pw, ph])
    x1, y1 = int(max(0, bx1 - j[0] - 0.03 * pw)), int(max(0, by1 - j[1] - 0.06 * ph))
    x2, y2 = int(min(cw, bx2 + j[2] + 0.03 * pw)), int(min(ch, by2 + j[3] + 0.06 * ph))
    crop = canvas[y1:y2, x1:x2]
    # resolution: small plates are seen with few pixels
    sharp = bool(crisp) and rng.random() < crisp
    if sharp:
        target_w, strength = float(rng.uniform(170, 420)), strength * 0.3
    else:
        target_w = float(np.exp(rng.uniform(np.log(40 + (1 - strength) * 80), np.log(260))))
    s = target_w / max(crop.shape[1], 1)
    if s < 1:
        crop = cv2.resize(crop, (max(8, int(crop.shape[1] * s)), max(4, int(crop.shape[0] * s))), interpolation=cv2.INTER_AREA)
    crop = degrade(crop, rng, strength)
    out = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return out, plate.text
