"""Glyphs a plate reader confuses: the one table behind the reader's format repair, the collector's
fuzzy search key and the evaluation's lenient score."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lookalike:
    letter: str
    digit: str
    to_digit: bool = True  # a letter in a digit slot may be this digit (format repair)
    to_letter: bool = True  # this digit in a letter slot may be this letter (the first such letter listed wins)
    fold: bool = False  # so alike on plates that search and lenient scoring take them for one character


LOOKALIKES: tuple[Lookalike, ...] = (
    Lookalike("O", "0", fold=True),
    Lookalike("Q", "0", to_letter=False),
    Lookalike("D", "0", to_letter=False),
    Lookalike("I", "1", fold=True),
    Lookalike("L", "1", to_letter=False),
    Lookalike("J", "1", to_letter=False),
    Lookalike("Z", "2", fold=True),
    Lookalike("S", "5", fold=True),
    Lookalike("B", "8", fold=True),
    Lookalike("G", "6"),
    Lookalike("T", "7"),
    Lookalike("A", "4", to_digit=False),
)

TO_DIGIT: dict[str, str] = {x.letter: x.digit for x in LOOKALIKES if x.to_digit}
TO_LETTER: dict[str, str] = {}
for _x in LOOKALIKES:
    if _x.to_letter:
        TO_LETTER.setdefault(_x.digit, _x.letter)
_FOLD = str.maketrans({x.letter: x.digit for x in LOOKALIKES if x.fold})


def fold(text: str) -> str:
    """The text with each folded look-alike letter written as its digit (O/0, I/1, Z/2, S/5, B/8
    read alike): the collector's fuzzy key and the lenient score."""
    return text.upper().translate(_FOLD)
