"""Plate text reader: CTC over a two-row sequence, read with onnxruntime."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.plates import TO_DIGIT, TO_LETTER, Rules, fits, rules_for, slot_ok
from edge.vision.metadata import ReaderMeta, parse_meta
from edge.vision.session import OnnxModel


@dataclass(frozen=True)
class TextRead:
    text: str
    confidence: float  # geometric mean of the character confidences (0 when empty)
    char_confidences: tuple[float, ...]


# Glyph conventions a region's reads are written with (edge.plates.Region.glyphs, digit_bars): most
# US states use one glyph for the letter O and the digit 0, recorded as 0. In regions whose serials
# put no letter I right after a digit, a bare bar that follows a digit and ends the plate or precedes
# another digit is the digit 1 (a 1 without its flag reads as I): in the openalpr US crops no
# registration has such an I, and the reader wrote one for a 1 seven times. Also a bare bar that
# opens a serial of letters then digits, where the plate holds three digits or more: the leading
# digit of California's 1ABC234 series and Maryland's 1AB2345 is drawn as a plain bar, and the reader
# wrote it as I for five of the openalpr US crops; the US vanity plates that open with the letter I
# there (IM4REAL, IMJSAYN, IR0NY) carry fewer digits and are left alone.
_DIGIT_BAR = re.compile(r"(?<=[0-9])I(?=[0-9]|$)")
_LEADING_BAR = re.compile(r"^I(?=[A-Z])")
LEADING_BAR_MIN_DIGITS = 3
MAX_SWAPS = 2  # a read that needs more look-alike swaps to fit a format is not one of its plates
FORMAT_RATIO = 0.15  # adopt a format when its reading keeps at least this share of the best path's probability


def apply_glyphs(read: TextRead, glyphs: Mapping[str, str], digit_bars: bool = False) -> TextRead:
    """Write each character as its region records it (edge.plates.Region.glyphs, digit_bars);
    confidences are unchanged."""
    table: dict[str, str | int | None] = dict(glyphs)
    text = read.text.translate(str.maketrans(table)) if glyphs else read.text
    if digit_bars:
        text = _DIGIT_BAR.sub("1", text)
        if sum(ch.isdigit() for ch in text) >= LEADING_BAR_MIN_DIGITS:
            text = _LEADING_BAR.sub("1", text)
    return read if text == read.text else TextRead(text, read.confidence, read.char_confidences)


def ctc_greedy(probs: np.ndarray, charset: str, blank: int = 0, formats: tuple[str, ...] = (), ranked: bool = True) -> TextRead:
    """Best-path CTC decoding of a (T, C) probability matrix.

    Repeated symbols collapse unless separated by a blank; each emitted character's confidence is
    the highest probability it had over the run of steps that produced it. With `formats`, a read
    of a format's length may be re-read under that format (edge.plates.Region.formats); `ranked`: the formats
    are listed most common first (one region's), not a union of many countries' (edge.plates.Region.ranked).
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
        maybe = [ch if slot_ok(ch, k) else (TO_DIGIT if k == "D" else TO_LETTER).get(ch) for ch, k in zip(text, f)]
        swapped = [s for s in maybe if s is not None]
        if len(swapped) == len(maybe) and all(slot_ok(s, k) for s, k in zip(swapped, f)):
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
    """Load a reader ONNX file; `read(crops)` returns one TextRead per crop (BGR images), read with
    the plate rules of the site's regions (`rules`, edge.plates)."""

    def __init__(self, path: str | Path, threads: int = 1, rules: Rules | None = None):
        self.model = OnnxModel(path, threads=threads)
        self.meta = parse_meta(ReaderMeta, self.model.meta, path)
        self.h, self.w = self.meta.height, self.meta.width
        self.charset, self.blank, self.max_len = self.meta.charset, self.meta.blank, self.meta.max_len
        self.margin_x, self.margin_y = self.meta.crop_margin_x, self.meta.crop_margin_y
        self.rules = rules or Rules()

    def set_regions(self, regions) -> None:
        """Read with the plate rules of these regions (empty: region-blind)."""
        self.rules = rules_for(regions)

    def prepare(self, crop_bgr: np.ndarray) -> np.ndarray:
        im = cv2.resize(crop_bgr, (self.w, self.h), interpolation=cv2.INTER_AREA if crop_bgr.shape[1] > self.w else cv2.INTER_LINEAR)
        return im[..., ::-1].transpose(2, 0, 1).astype(np.float32) * (1 / 255.0)

    def read(self, crops_bgr: list[np.ndarray]) -> list[TextRead]:
        if not crops_bgr:
            return []
        r = self.rules
        x = np.stack([self.prepare(c) for c in crops_bgr])
        probs = self.model.run(x)[0]
        reads = [ctc_greedy(p, self.charset, self.blank, r.formats, r.ranked) for p in probs]
        if r.glyphs or r.digit_bars:
            reads = [t if r.fits_format(t.text) else apply_glyphs(t, r.glyphs, r.digit_bars) for t in reads]
        return reads

    def fits_format(self, text: str) -> bool:
        """Whether text fits one of the site's plate formats (False when it names none)."""
        return self.rules.fits_format(text)
