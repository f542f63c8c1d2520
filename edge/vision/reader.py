"""Plate text reader: CTC over a two-row sequence, read with onnxruntime."""

from __future__ import annotations

import re
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


# Formats that fix, position by position, whether a character is a letter (L) or a digit (D). A site
# that knows its region names it (like OpenALPR's -c); a read that does not fit is re-read under the
# format: first by the reader's own probabilities, then by swapping glyphs that look alike.
# Slots: L a letter, D a digit, M a letter A-J (Mercosur's fifth character: the old plate's digit
# 0-9 written as A-J). A region's formats are listed most common first.
REGION_FORMATS = {"br": ("LLLDDDD", "LLLDMDD"), "uk": ("LLDDLLL",)}


def _letters_then_digits(letters: range, digits: range, longest: int) -> tuple[str, ...]:
    return tuple("L" * a + "D" * b for a in letters for b in digits if a + b <= longest)


# The current national series of European countries (separators, district seals and the country band
# dropped), as a site anywhere in Europe reads them: OpenALPR's `-c eu`. Countries whose serials are
# free-form (Austria, Ireland, Slovenia, personalised plates anywhere) have no entry, and a read that
# fits no format is kept as read unless one look-alike swap, or the reader's own close second
# choices, make it fit (see _format_prior). Formats most common first where it matters.
EUROPE_FORMATS = {
    "be": ("DLLLDDD",),  # 1-ABC-123
    "bg": ("LLDDDDLL", "LDDDDLL"),  # CA 1234 AB
    "ch": tuple("LL" + "D" * n for n in range(1, 7)),  # ZH 123456
    "cz": ("DLDDDDD", "DLLDDDD"),  # 1A2 3456
    "de": _letters_then_digits(range(2, 6), range(1, 5), 8),  # district 1-3 letters, 1-2 letters, 1-4 digits
    "dk": ("LLDDDDD",),  # AB 12 345 (Norway alike)
    "ee": ("DDDLLL",),  # 123 ABC
    "es": ("DDDDLLL",),  # 1234 BCD
    "fi": ("LLLDDD",),  # ABC-123
    "fr": ("LLDDDLL",),  # AB-123-CD (Italy, Slovakia alike)
    "gr": ("LLLDDDD",),  # ABC-1234
    "hr": ("LLDDDLL", "LLDDDDLL", "LLDDDL", "LLDDDDL"),  # ZG 123-AB, ZG 1234-A
    "hu": ("LLLDDD", "LLLLDDD"),  # ABC-123, AA BC-123
    "lv": ("LLDDDD",),  # AB-1234
    "nl": ("DDLLLD", "DLLLDD", "LLDDDL", "LDDDLL", "LLLDDL", "DLLDDD", "DDDLLD", "LDDLLL"),  # side codes 7-14
    "pl": ("LLDDDDD", "LLDDDDL", "LLDDDLL", "LLDLDDD", "LLDLLDD", "LLLDDDD", "LLLDDLL", "LLLDLDD"),  # WA 12345, KRA 1234
    "pt": ("LLDDLL", "DDLLDD", "DDDDLL", "LLDDDD"),  # AA-00-AA and the older series
    "ro": ("LLDDLLL", "LDDLLL", "LDDDLLL"),  # CJ 12 ABC, B 123 ABC
    "se": ("LLLDDD", "LLLDDL"),  # ABC 123, ABC 12A
    "uk": REGION_FORMATS["uk"],
}
REGION_FORMATS["eu"] = tuple(dict.fromkeys(f for fs in EUROPE_FORMATS.values() for f in fs))
# Regions whose formats are a union of many countries' series, in no order of frequency: a read that
# fits one is left as read, and no format is preferred to another (see _format_prior)
UNRANKED_REGIONS = ("eu",)
MERCOSUR_LETTERS = "ABCDEFGHIJ"
# Regions whose plates draw two characters with one glyph, and whose records mostly write one of them:
# most US states use one glyph for the letter O and the digit 0 (standard serials leave O out) and
# registrations are mostly written with 0 (7 of the 369 openalpr US crops keep a letter O, vanity
# plates: those are lost). A site in such a region reads that glyph as its recorded character. A read
# that fits one of the site's plate formats is left as the format settled it.
REGION_GLYPHS = {"us": {"O": "0"}}
# Regions whose serials put no letter I right after a digit: there a bare bar that follows a digit
# and ends the plate or precedes another digit is the digit 1 (a 1 without its flag reads as I). In
# the openalpr US crops no registration has such an I, and the reader wrote one for a 1 seven times.
# Also a bare bar that opens a serial of letters then digits, where the plate holds three digits or
# more: the leading digit of California's 1ABC234 series and Maryland's 1AB2345 is drawn as a plain
# bar, and the reader wrote it as I for five of the openalpr US crops; the US vanity plates that open
# with the letter I there (IM4REAL, IMJSAYN, IR0NY) carry fewer digits and are left alone.
REGION_DIGIT_BARS = ("us",)
_DIGIT_BAR = re.compile(r"(?<=[0-9])I(?=[0-9]|$)")
_LEADING_BAR = re.compile(r"^I(?=[A-Z])")
LEADING_BAR_MIN_DIGITS = 3
# The most characters a region's registrations have (OpenALPR's postprocess_max_characters per
# country): no US state issues more than 8, Brazil's plates have 7 and the UK's current ones 7. A
# longer read in such a region is a sign, a dealer frame or a misread, not a registration. A site
# that names several regions allows the longest of theirs; a site that names none allows 10.
REGION_MAX_CHARS = {"us": 8, "br": 7, "uk": 7}
# The fewest characters a region's registrations have (OpenALPR's postprocess_min_characters): every
# Brazilian plate, the old grey series and Mercosur alike, has exactly 7. A shorter read there is a
# badge, a sticker or part of a plate, not a registration. A site that names several regions allows
# the shortest of theirs; a region not listed here leaves RecognizerConfig.min_length (4) in force.
REGION_MIN_CHARS = {"br": 7}
KNOWN_REGIONS = tuple(sorted(set(REGION_FORMATS) | set(REGION_GLYPHS) | set(REGION_DIGIT_BARS) | set(REGION_MAX_CHARS)
                             | set(REGION_MIN_CHARS)))
MAX_SWAPS = 2  # a read that needs more look-alike swaps to fit a format is not one of its plates
FORMAT_RATIO = 0.15  # adopt a format when its reading keeps at least this share of the best path's probability
TO_DIGIT = {"O": "0", "Q": "0", "D": "0", "I": "1", "L": "1", "J": "1", "Z": "2", "S": "5", "B": "8", "G": "6", "T": "7"}
TO_LETTER = {"0": "O", "1": "I", "2": "Z", "5": "S", "8": "B", "6": "G", "7": "T", "4": "A"}


def _check_regions(regions) -> tuple[str, ...]:
    for r in regions or ():
        if r not in KNOWN_REGIONS:
            raise ValueError(f"unknown region {r!r} (known: {', '.join(KNOWN_REGIONS)})")
    return tuple(regions or ())


def formats_for(regions) -> tuple[str, ...]:
    out: list[str] = []
    for r in _check_regions(regions):
        out += REGION_FORMATS.get(r, ())
    return tuple(out)


def ranked_for(regions) -> bool:
    """Whether the named regions' formats are ranked, most common first (see UNRANKED_REGIONS)."""
    return not any(r in UNRANKED_REGIONS for r in _check_regions(regions))


def glyphs_for(regions) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in _check_regions(regions):
        out.update(REGION_GLYPHS.get(r, {}))
    return out


def max_chars_for(regions) -> int | None:
    """The longest registration the named regions issue (None: no limit known)."""
    regions = _check_regions(regions)
    if not regions or any(r not in REGION_MAX_CHARS for r in regions):
        return None
    return max(REGION_MAX_CHARS[r] for r in regions)


def min_chars_for(regions) -> int | None:
    """The shortest registration the named regions issue (None: not known for every one of them)."""
    regions = _check_regions(regions)
    if not regions or any(r not in REGION_MIN_CHARS for r in regions):
        return None
    return min(REGION_MIN_CHARS[r] for r in regions)


def digit_bars_for(regions) -> bool:
    return any(r in REGION_DIGIT_BARS for r in _check_regions(regions))


def apply_glyphs(read: TextRead, glyphs: dict[str, str], digit_bars: bool = False) -> TextRead:
    """Write each character as its region records it (see REGION_GLYPHS, REGION_DIGIT_BARS);
    confidences are unchanged."""
    text = read.text.translate(str.maketrans(glyphs)) if glyphs else read.text
    if digit_bars:
        text = _DIGIT_BAR.sub("1", text)
        if sum(ch.isdigit() for ch in text) >= LEADING_BAR_MIN_DIGITS:
            text = _LEADING_BAR.sub("1", text)
    return read if text == read.text else TextRead(text, read.confidence, read.char_confidences)


def ctc_greedy(probs: np.ndarray, charset: str, blank: int = 0, formats: tuple[str, ...] = (), ranked: bool = True) -> TextRead:
    """Best-path CTC decoding of a (T, C) probability matrix.

    Repeated symbols collapse unless separated by a blank; each emitted character's confidence is
    the highest probability it had over the run of steps that produced it. With `formats`, a read
    of a format's length may be re-read under that format (see REGION_FORMATS); `ranked`: the formats
    are listed most common first (one region's), not a union of many countries' (see UNRANKED_REGIONS).
    """
    probs = np.asarray(probs, np.float32)
    idx = probs.argmax(-1)
    steps: list[int] = []
    prev = blank
    for t, i in enumerate(idx):
        i = int(i)
        if i != blank:
            if i != prev:
                steps.append(t)
            elif probs[t, i] > probs[steps[-1], i]:
                steps[-1] = t
        prev = i
    if not steps:
        return TextRead("", 0.0, ())
    off = 1 if blank == 0 else 0
    cls = [int(idx[t]) for t in steps]
    confs = [float(probs[t, c]) for t, c in zip(steps, cls)]
    if formats:
        cls, confs = _format_prior(probs, steps, cls, confs, charset, off, formats, ranked)
    conf = float(np.exp(np.mean(np.log(np.maximum(confs, 1e-9)))))
    return TextRead("".join(charset[c - off] for c in cls), conf, tuple(round(c, 4) for c in confs))


def slot_ok(ch: str, k: str) -> bool:
    """Whether character ch may stand in a format slot k (L, D or M)."""
    if k == "D":
        return ch.isdigit()
    return ch in MERCOSUR_LETTERS if k == "M" else ch.isalpha()


def fits(text, f: str) -> bool:
    """Whether text (a string or a list of characters) fits format f slot by slot."""
    return len(f) == len(text) and all(slot_ok(ch, k) for ch, k in zip(text, f))


def _common_bar(cls, charset, off, formats):
    """A read that fits one of the ranked formats, with each bare bar (I) written as the digit 1 where
    a more common format wants a digit there and then fits; None when the read fits no format.

    A bare bar is the letter I in one format and the digit 1 in another: take the more common format
    (br: an old plate's 1 is drawn as a bar; a Mercosur fifth I, the old digit 8, is one Mercosur
    plate in ten, and Mercosur plates are still the smaller part of the fleet; those are lost)."""
    text = [charset[c - off] for c in cls]
    fitting = [i for i, f in enumerate(formats) if fits(text, f)]
    if not fitting:
        return None
    for f in formats[: fitting[0]]:
        if len(f) == len(text) and all(slot_ok(ch, k) or (ch == "I" and k == "D") for ch, k in zip(text, f)):
            return [charset.index("1" if ch == "I" and k == "D" else ch) + off for ch, k in zip(text, f)]
    return cls


def _format_prior(probs, steps, cls, confs, charset, off, formats, ranked=True):
    text = [charset[c - off] for c in cls]
    if not ranked:
        if any(fits(text, f) for f in formats):
            return cls, confs  # already a known format: leave it alone
    else:
        settled = _common_bar(cls, charset, off, formats)
        if settled is not None:
            return settled, confs  # already a known format: left alone but for its bare bars
    best = (float(np.prod(confs)) * FORMAT_RATIO, cls, confs)
    masks = {k: np.array([slot_ok(c, k) for c in charset]) for k in "LDM"}
    for f in formats:
        if len(f) != len(steps):
            continue
        new_cls, new_conf = [], []
        for t, k in zip(steps, f):
            p = probs[t, off : off + len(charset)]
            allowed = np.where(masks[k], p, -1.0)
            j = int(allowed.argmax())
            new_cls.append(j + off)
            new_conf.append(float(p[j]))
        score = float(np.prod(new_conf))
        if score > best[0]:
            best = (score, new_cls, new_conf)
    if best[1] is not cls:
        # the reading under the likeliest format, its bare bars settled like those of a fitting read
        return (_common_bar(best[1], charset, off, formats) or best[1]) if ranked else best[1], best[2]
    # the glyphs themselves: a Brazilian 1 is drawn like an I, a 0 like an O. Ranked formats: the first
    # that fits. Unranked (many countries' formats): those that need the fewest swaps (at most
    # MAX_SWAPS) settle it; when they give different texts, the read stays as it is
    by_swaps: dict[int, list[str]] = {}
    for f in formats:
        if len(f) != len(text):
            continue
        swapped = [ch if slot_ok(ch, k) else (TO_DIGIT if k == "D" else TO_LETTER).get(ch) for ch, k in zip(text, f)]
        if all(s is not None and slot_ok(s, k) for s, k in zip(swapped, f)):
            if ranked:
                return [charset.index(ch) + off for ch in swapped], confs  # same glyphs, same confidences
            n = sum(a != b for a, b in zip(swapped, text))
            if n <= MAX_SWAPS:
                by_swaps.setdefault(n, []).append("".join(swapped))
    if by_swaps:
        texts = set(by_swaps[min(by_swaps)])
        if len(texts) == 1:
            return [charset.index(ch) + off for ch in texts.pop()], confs  # same glyphs, same confidences
    return cls, confs


class PlateReader:
    """Load a reader ONNX file; `read(crops)` returns one TextRead per crop (BGR images)."""

    def __init__(self, path: str | Path, threads: int = 1, formats: tuple[str, ...] = (), glyphs: dict[str, str] | None = None,
                 digit_bars: bool = False, max_chars: int | None = None, min_chars: int | None = None):
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
        self.formats = tuple(formats)
        self.ranked = True  # see UNRANKED_REGIONS
        self.glyphs = dict(glyphs or {})  # see REGION_GLYPHS
        self.digit_bars = digit_bars  # see REGION_DIGIT_BARS
        self.max_chars = max_chars  # see REGION_MAX_CHARS; None: no region limit
        self.min_chars = min_chars  # see REGION_MIN_CHARS; None: no region limit

    def set_regions(self, regions) -> None:
        """Read with the plate formats and glyph conventions of these regions (empty: region-blind)."""
        self.formats, self.glyphs, self.digit_bars = formats_for(regions), glyphs_for(regions), digit_bars_for(regions)
        self.ranked = ranked_for(regions)
        self.max_chars = max_chars_for(regions)
        self.min_chars = min_chars_for(regions)

    @property
    def conventions(self) -> tuple:
        """What set_regions set, to put back later."""
        return self.formats, self.glyphs, self.digit_bars, self.max_chars, self.min_chars, self.ranked

    @conventions.setter
    def conventions(self, value) -> None:
        self.formats, self.glyphs, self.digit_bars, self.max_chars, self.min_chars, self.ranked = value

    def prepare(self, crop_bgr: np.ndarray) -> np.ndarray:
        im = cv2.resize(crop_bgr, (self.w, self.h), interpolation=cv2.INTER_AREA if crop_bgr.shape[1] > self.w else cv2.INTER_LINEAR)
        return im[..., ::-1].transpose(2, 0, 1).astype(np.float32) * (1 / 255.0)

    def read(self, crops_bgr: list[np.ndarray]) -> list[TextRead]:
        if not crops_bgr:
            return []
        x = np.stack([self.prepare(c) for c in crops_bgr])
        probs = self.model.run(x)[0]
        reads = [ctc_greedy(p, self.charset, self.blank, self.formats, self.ranked) for p in probs]
        if self.glyphs or self.digit_bars:
            reads = [r if self.fits_format(r.text) else apply_glyphs(r, self.glyphs, self.digit_bars) for r in reads]
        return reads

    def fits_format(self, text: str) -> bool:
        """Whether text fits one of the site's plate formats (False when it names none)."""
        return any(fits(text, f) for f in self.formats)
