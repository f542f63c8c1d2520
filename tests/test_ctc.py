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
