"""Plate rules in one place: the regions a site can name, their formats and lengths, and the glyphs
readers confuse (edge.plates.regions, edge.plates.lookalikes)."""

from edge.plates.lookalikes import LOOKALIKES, TO_DIGIT, TO_LETTER, fold
from edge.plates.regions import (
    PLATE_MAX_CHARS,
    PLATE_MIN_CHARS,
    PLATE_TEXT,
    REGION_CODES,
    REGIONS,
    Region,
    Rules,
    check_regions,
    fits,
    region_guess,
    region_of,
    rules_for,
    slot_ok,
)

__all__ = ["LOOKALIKES", "PLATE_MAX_CHARS", "PLATE_MIN_CHARS", "PLATE_TEXT", "REGIONS", "REGION_CODES", "TO_DIGIT", "TO_LETTER", "Region", "Rules",
           "check_regions", "fits", "fold", "region_guess", "region_of", "rules_for", "slot_ok"]
