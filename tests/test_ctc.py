import numpy as np
import pytest

from edge.vision.reader import ctc_greedy

CS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def probs(seq, p=0.9, n=len(CS) + 1):
    """One-hot-ish rows: '-' is blank, others are charset symbols."""
    m = np.full((len(seq), n), (1 - p) / (n - 1), np.float32)
    for t, s in enumerate(seq):
        m[t, 0 if s == "-" else CS.index(s) + 1] = p
    return m


def test_repeats_collapse_and_blank_separates():
    r = ctc_greedy(probs("AA-B--BB-11-1"), CS)
    assert r.text == "ABB11"


def test_empty_sequence_reads_nothing():
    r = ctc_greedy(probs("-----"), CS)
    assert r.text == "" and r.confidence == 0.0 and r.char_confidences == ()


def test_char_confidence_is_best_over_the_run():
    m = probs("AA-7")
    m[0, CS.index("A") + 1] = 0.6
    m[1, CS.index("A") + 1] = 0.95
    m[3, CS.index("7") + 1] = 0.5
    r = ctc_greedy(m, CS)
    assert r.text == "A7"
    assert r.char_confidences == pytest.approx((0.95, 0.5))
    assert r.confidence == pytest.approx(np.sqrt(0.95 * 0.5), rel=1e-4)


def test_two_row_sequence_reads_top_then_bottom():
    row0 = "-AB-C" + "-" * 5
    row1 = "--12-3" + "-" * 4
    assert ctc_greedy(probs(row0 + row1), CS).text == "ABC123"


def test_format_prior_settles_look_alikes_only_when_close():
    from edge.vision.reader import ctc_greedy

    m = probs("LS-I5EBC")  # UK LLDDLLL, read with I where 1 belongs
    i = CS.index("I") + 1
    m[3, CS.index("1") + 1] = 0.3  # the 1 was a close second
    assert ctc_greedy(m, CS).text == "LSI5EBC"
    assert ctc_greedy(m, CS, formats=("LLDDLLL",)).text == "LS15EBC"
    m[3, CS.index("1") + 1] = 0.001  # a confident I in a digit's place
    m[3, i] = 0.99
    assert ctc_greedy(m, CS, formats=("LLDDLLL",)).text == "LS15EBC"  # the glyph: I and 1 look alike
    assert ctc_greedy(probs("LSX5EBC"), CS, formats=("LLDDLLL",)).text == "LSX5EBC"  # no look-alike: unchanged
    ok = probs("ABC1234")  # fits a format already: untouched even if another format is close
    assert ctc_greedy(ok, CS, formats=("LLLDDDD", "LLLDMDD")).text == "ABC1234"


def test_region_glyph_rule_rewrites_only_that_regions_look_alike():
    from edge.plates import rules_for
    from edge.vision.reader import apply_glyphs

    def glyphs_for(regions):
        return dict(rules_for(regions).glyphs)

    assert glyphs_for(("us",)) == {"O": "0"} and rules_for(("us",)).formats == ()
    assert glyphs_for(("br",)) == {} and rules_for(("br", "us")).formats == rules_for(("br",)).formats
    with pytest.raises(ValueError, match="unknown region 'zz'"):
        glyphs_for(("zz",))
    r = ctc_greedy(probs("B-O-B-7-O-0"), CS)
    assert r.text == "BOB7O0"
    us = apply_glyphs(r, glyphs_for(("us",)))
    assert us.text == "B0B700" and us.char_confidences == r.char_confidences and us.confidence == r.confidence
    assert apply_glyphs(r, glyphs_for(("uk",))).text == "BOB7O0"


def test_us_digit_bar_rule_writes_a_bar_after_a_digit_as_1():
    from edge.plates import rules_for
    from edge.vision.reader import apply_glyphs

    assert rules_for(("us",)).digit_bars and not rules_for(("uk", "br")).digit_bars and not rules_for(()).digit_bars
    for read, want in [("KWV39I", "KWV391"), ("27578I4", "2757814"), ("24704I0", "2470410"),
                       ("I404MY", "I404MY"),  # a leading I is a letter (vanity plates start with one)
                       ("4303HI", "4303HI"), ("RFI947", "RFI947"),  # after a letter: a letter
                       ("0I90T2", "0190T2"), ("12II", "12II"), ("7IA", "7IA"),  # a bar before a letter stays
                       # a leading bar before letters, in a serial with three digits or more: California's 1ABC234
                       ("IAA4679", "1AA4679"), ("IADL132", "1ADL132"), ("INU656", "1NU656"),
                       ("IM4REAL", "IM4REAL"), ("IR0NY", "IR0NY"), ("IMJSAYN", "IMJSAYN"), ("IAB12", "IAB12")]:
        r = ctc_greedy(probs("-".join(read)), CS)
        assert r.text == read
        out = apply_glyphs(r, {}, digit_bars=True)
        assert out.text == want, read
        assert out.char_confidences == r.char_confidences and len(out.text) == len(r.text)
    assert apply_glyphs(ctc_greedy(probs("3-9-I"), CS), {}, digit_bars=False).text == "39I"  # other regions: as read


def test_reader_set_regions_switches_formats_and_glyphs():
    from edge.vision.reader import PlateReader
    from tests.conftest import MODELS

    reader = PlateReader(MODELS / "plate_reader.onnx")
    reader.set_regions(("us",))
    r = reader.rules
    assert r.formats == () and r.glyphs == {"O": "0"} and r.digit_bars
    reader.set_regions(("br", "uk"))
    r = reader.rules
    assert len(r.formats) == 3 and r.glyphs == {} and not r.digit_bars and r.max_len == 7
    with pytest.raises(ValueError):
        reader.set_regions(("mars",))


def test_br_formats_mercosur_letters_and_the_bare_bar():
    from edge.plates import REGIONS

    br = REGIONS["br"].formats
    assert ctc_greedy(probs("ABC1C23"), CS, formats=br).text == "ABC1C23"  # Mercosur: fifth is A-J
    assert ctc_greedy(probs("ABC1B23"), CS, formats=br).text == "ABC1B23"  # B/8 are drawn apart: kept
    # a bar in the fifth place fits Mercosur's I and the old plates' 1: the old format is the common one
    assert ctc_greedy(probs("MYX3I52"), CS, formats=br).text == "MYX3152"
    assert ctc_greedy(probs("MYX3I52"), CS).text == "MYX3I52"  # no region: as read
    # Mercosur has no fifth letter past J: a Z there is the old format's 2 (the look-alike)
    assert ctc_greedy(probs("ABC1Z23"), CS, formats=br).text == "ABC1223"


def test_glyph_rule_leaves_a_read_that_fits_the_sites_format():
    from edge.vision.reader import PlateReader
    from tests.conftest import MODELS

    reader = PlateReader(MODELS / "plate_reader.onnx")
    reader.set_regions(("uk", "us"))  # a site near both: a UK-format read keeps its letter O
    assert reader.fits_format("LO12ABC") and not reader.fits_format("LO12AB")


def test_eu_formats_fit_look_alikes_only_when_one_text_needs_the_fewest_swaps():
    from edge.plates import REGIONS, rules_for
    from edge.vision.reader import MAX_SWAPS

    eu = REGIONS["eu"].formats
    assert not rules_for(("eu",)).ranked and rules_for(("br", "uk")).ranked

    def read(s):
        return ctc_greedy(probs("-".join(s)), CS, formats=eu, ranked=False).text

    assert read("RK896A0") == "RK896AO"  # Croatian ZG 123-AB: a 0 among the closing letters is O
    assert read("4821875") == "4B21875"  # Czech 1A2 3456: the second character is a letter
    assert read("SI819AK") == "SI819AK"  # fits (Croatian): the bar stays a letter, unlike br's ranked rule
    assert ctc_greedy(probs("-".join("SI819AK")), CS, formats=eu, ranked=True).text != "SI819AK"
    assert read("AB12C34") == "AB12C34"  # AB1ZC34 and ABI2C34 need one swap each: no way to tell, kept
    assert read("GWAGEN") == "GWAGEN"  # no format within MAX_SWAPS: a personalised plate, kept
    assert MAX_SWAPS == 2 and read("A1B2C3D") == "AIB2C30"  # two swaps still settle it; the GWAGEN case needs more


def test_reader_set_regions_eu_reads_unranked():
    from edge.plates import REGIONS
    from edge.vision.reader import PlateReader
    from tests.conftest import MODELS

    reader = PlateReader(MODELS / "plate_reader.onnx")
    reader.set_regions(("eu",))
    r = reader.rules
    assert r.formats == REGIONS["eu"].formats and not r.ranked and r.max_len is None
    assert reader.fits_format("RK896AO") and reader.fits_format("4B21875") and not reader.fits_format("RK896A0")
    reader.set_regions(("br",))
    assert reader.rules.ranked


def test_br_bare_bar_is_settled_after_a_format_reread_too():
    from edge.plates import REGIONS

    m = probs("OUH9I9I")  # fits no format: the last bar is uncertain between I and 1
    m[6, CS.index("I") + 1], m[6, CS.index("1") + 1] = 0.5, 0.4
    m[4, CS.index("1") + 1] = 0.05
    # the likeliest format reading is Mercosur's (the fifth bar as I, the last as 1), but a fifth bar
    # is an old plate's 1 as often as not, as for a read that fits as it stands
    assert ctc_greedy(m, CS, formats=REGIONS["br"].formats).text == "OUH9191"
    assert ctc_greedy(probs("OUH9I91"), CS, formats=REGIONS["br"].formats).text == "OUH9191"
