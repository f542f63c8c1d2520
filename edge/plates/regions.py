"""The regions a site can name (`[pipeline] regions`, `edge eval --region`) and what their
registrations look like: formats, glyph conventions, lengths, the shapes that tell a region apart.

Format slots: L a letter, D a digit, M a letter A-J (Mercosur's fifth character: the old plate's
digit 0-9 written as A-J). A region's formats are listed most common first, unless `ranked` is off.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Any plate text, anywhere: A-Z and 0-9, separators dropped, 2 to 10 characters (the wire record's
# bounds, lpr.read/1). A site's regions narrow the length (Region.min_len, max_len).
PLATE_MIN_CHARS = 2
PLATE_MAX_CHARS = 10
PLATE_TEXT = re.compile(r"^[A-Z0-9]+$")
MERCOSUR_LETTERS = "ABCDEFGHIJ"


def _letters_then_digits(letters: range, digits: range, longest: int) -> tuple[str, ...]:
    return tuple("L" * a + "D" * b for a in letters for b in digits if a + b <= longest)


UK_FORMATS = ("LLDDLLL",)  # current series: AB12 CDE
# The current national series of European countries (separators, district seals and the country band
# dropped), as a site anywhere in Europe reads them: OpenALPR's `-c eu`. Countries whose serials are
# free-form (Austria, Ireland, Slovenia, personalised plates anywhere) have no entry, and a read that
# fits no format is kept as read unless one look-alike swap, or the reader's own close second
# choices, make it fit. Formats most common first where it matters.
EUROPE_FORMATS: dict[str, tuple[str, ...]] = {
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
    "uk": UK_FORMATS,
}


@dataclass(frozen=True)
class Region:
    code: str
    name: str
    # position by position, whether a character is a letter or a digit; a read that fits none is
    # re-read under them (the reader's own probabilities, then look-alike swaps)
    formats: tuple[str, ...] = ()
    # formats listed most common first (one country's); False: a union of many countries' series in
    # no order, where a read that fits one is left as read and no format is preferred to another
    ranked: bool = True
    # glyphs the region draws alike and records as one character (read -> recorded)
    glyphs: Mapping[str, str] = field(default_factory=dict)
    # serials put no letter I right after a digit: a bare bar there is the digit 1 (edge.vision.reader)
    digit_bars: bool = False
    min_len: int | None = None  # the fewest characters its registrations have (None: not known)
    max_len: int | None = None  # the most (OpenALPR's postprocess_max_characters per country)
    # shapes only this region issues: a read of that shape is from here (the record's plate.region)
    identifying: tuple[str, ...] = ()
    # the codes of its parts that issue plates (US states): a label naming one names this region
    parts: frozenset[str] = frozenset()


REGIONS: dict[str, Region] = {r.code: r for r in (
    # Brazil: the old grey series and Mercosur; every plate has exactly 7 characters, and a shorter read
    # there is a badge, a sticker or part of a plate. Mercosur's shape is Brazil's alone.
    Region("br", "Brazil", formats=("LLLDDDD", "LLLDMDD"), min_len=7, max_len=7, identifying=("LLLDMDD",)),
    Region("eu", "Europe (national series)", formats=tuple(dict.fromkeys(f for fs in EUROPE_FORMATS.values() for f in fs)),
           ranked=False),
    # the UK's current series; Romania's has the same shape, so with eu named too it identifies neither
    Region("uk", "United Kingdom", formats=UK_FORMATS, max_len=7, identifying=UK_FORMATS),
    # Most US states draw the letter O and the digit 0 with one glyph (standard serials leave O out)
    # and registrations are mostly written with 0 (7 of the 369 openalpr US crops keep a letter O,
    # vanity plates: those are lost). No state issues more than 8 characters.
    Region("us", "United States", glyphs={"O": "0"}, digit_bars=True, max_len=8, parts=frozenset(
        "al ak az ar ca co ct de dc fl ga hi id il in ia ks ky la me md ma mi mn ms mo mt ne nv nh nj nm ny nc nd oh ok or pa "
        "pr ri sc sd tn tx ut vt va wa wv wi wy".split())),
)}
REGION_CODES: tuple[str, ...] = tuple(sorted(REGIONS))


def region_of(code: str) -> str | None:
    """The region a label names: a region's code (us, br, uk, eu) or one of its parts (a US state)."""
    c = code.strip().lower()
    if c in REGIONS:
        return c
    return next((r.code for r in REGIONS.values() if c in r.parts), None)


def slot_ok(ch: str, k: str) -> bool:
    """Whether character ch may stand in a format slot k (L, D or M)."""
    if k == "D":
        return ch.isdigit()
    return ch in MERCOSUR_LETTERS if k == "M" else ch.isalpha()


def fits(text, f: str) -> bool:
    """Whether text (a string or a list of characters) fits format f slot by slot."""
    return len(f) == len(text) and all(slot_ok(ch, k) for ch, k in zip(text, f, strict=False))


def check_regions(regions: Iterable[str] | None) -> tuple[str, ...]:
    """The region codes as a tuple; an unknown one is a ValueError naming the known ones."""
    out = tuple(regions or ())
    for r in out:
        if r not in REGIONS:
            raise ValueError(f"unknown region {r!r} (known: {', '.join(REGION_CODES)})")
    return out


@dataclass(frozen=True)
class Rules:
    """The conventions of a site's regions together (none named: region-blind)."""

    regions: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    ranked: bool = True
    glyphs: Mapping[str, str] = field(default_factory=dict)
    digit_bars: bool = False
    min_len: int | None = None  # the shortest registration every named region states (None: no region limit)
    max_len: int | None = None  # the longest of theirs, when every one of them states one

    def fits_format(self, text: str) -> bool:
        """Whether text fits one of the site's plate formats (False when it names none)."""
        return any(fits(text, f) for f in self.formats)

    def length_range(self, min_length: int = PLATE_MIN_CHARS, max_length: int = PLATE_MAX_CHARS,
                     model_max: int | None = None) -> tuple[int, int]:
        """The plate lengths worth reporting: the configured bounds, narrowed to what the site's regions
        issue and to what the reader model can write."""
        lo = max(PLATE_MIN_CHARS, min_length, self.min_len or 0)
        hi = min(PLATE_MAX_CHARS, max_length, self.max_len or PLATE_MAX_CHARS, model_max or PLATE_MAX_CHARS)
        return lo, hi


def rules_for(regions: Iterable[str] | None) -> Rules:
    codes = check_regions(regions)
    rs = [REGIONS[c] for c in codes]
    glyphs: dict[str, str] = {}
    for r in rs:
        glyphs.update(r.glyphs)
    mins = [r.min_len for r in rs if r.min_len is not None]
    maxs = [r.max_len for r in rs if r.max_len is not None]
    return Rules(
        regions=codes,
        formats=tuple(f for r in rs for f in r.formats),
        ranked=all(r.ranked for r in rs),
        glyphs=glyphs,
        digit_bars=any(r.digit_bars for r in rs),
        min_len=min(mins) if rs and len(mins) == len(rs) else None,
        max_len=max(maxs) if rs and len(maxs) == len(rs) else None,
    )


def region_guess(text: str, site_regions: Iterable[str] = ()) -> str | None:
    """Where a plate text is registered, when its shape tells; None where it could be from many
    places. The site's own regions (`[pipeline] regions`) are asked first: the one of them whose
    formats the text fits. Else a region whose identifying shape it has, unless another of the
    site's regions issues that shape too (the UK's current series at a site in Europe: only `eu`)."""
    site = check_regions(site_regions)
    fitting = [r for r in site if any(fits(text, f) for f in REGIONS[r].formats)]
    if len(fitting) == 1:
        return fitting[0]
    for r in REGIONS.values():
        if any(fits(text, f) for f in r.identifying):
            if any(o != r.code and any(fits(text, f) for f in REGIONS[o].formats) for o in site):
                continue
            return r.code
    return None
