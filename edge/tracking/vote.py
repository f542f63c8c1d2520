"""What a track's reads add up to: the voted text, how much of the track agrees on its length, and
which way the vehicle went. Pure functions over observations."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Protocol

from edge.record import Direction, Lateral


class Seen(Protocol):
    text: str
    confidence: float
    char_confidences: tuple[float, ...]
    box: tuple[float, float, float, float]


@dataclass
class Candidate:
    text: str
    confidence: float
    votes: int


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def text_similarity(a: str, b: str) -> float:
    if not a or not b:
        return 0.0
    return 1.0 - edit_distance(a, b) / max(len(a), len(b))


def vote(obs: Sequence[Seen]) -> tuple[str, float, tuple[float, ...], list[Candidate]]:
    """Per-character vote weighted by confidence among reads of the most supported length."""
    by_len: dict[int, float] = defaultdict(float)
    for o in obs:
        by_len[len(o.text)] += o.confidence
    n = max(by_len, key=lambda k: (by_len[k], k))
    same = [o for o in obs if len(o.text) == n]
    chars, confs = [], []
    for i in range(n):
        score: dict[str, float] = defaultdict(float)
        for o in same:
            c = o.char_confidences[i] if i < len(o.char_confidences) else o.confidence
            score[o.text[i]] += c
        ch = max(score, key=lambda k: score[k])
        chars.append(ch)
        confs.append(min(1.0, score[ch] / len(same)))  # agreement weighted by confidence
    text = "".join(chars)
    totals: dict[str, list[float]] = defaultdict(list)
    for o in obs:
        totals[o.text].append(o.confidence)
    cands = sorted(
        (Candidate(t, round(max(v), 4), len(v)) for t, v in totals.items() if t != text),
        key=lambda c: (-c.votes * c.confidence, c.text),
    )[:5]
    conf = 1.0
    for c in confs:
        conf *= c
    conf = conf ** (1 / max(1, len(confs)))
    return text, round(conf, 4), tuple(round(c, 4) for c in confs), cands


def length_share(obs: Sequence[Seen], n: int) -> float:
    """The share of a track's read confidence carried by its reads of n characters."""
    total = sum(o.confidence for o in obs)
    return sum(o.confidence for o in obs if len(o.text) == n) / total if total > 0 else 0.0


def direction(obs: Sequence[Seen], frame_width: float, towards_ratio: float, lateral_frac: float) -> tuple[Direction, Lateral]:
    """Towards/away from the plate's height growing or shrinking, left/right from its centre moving.

    Medians over the first and last thirds of the track: a detector's box height swings by a fifth
    from frame to frame, and a plate half hidden by a passing car for its last few frames shrinks;
    means over quarters called a crossing car (constant size) "away" on that."""
    k = max(1, len(obs) // 3)
    head, tail = obs[:k], obs[-k:]
    h0 = median([o.box[3] - o.box[1] for o in head])
    h1 = median([o.box[3] - o.box[1] for o in tail])
    x0 = median([(o.box[0] + o.box[2]) / 2 for o in head])
    x1 = median([(o.box[0] + o.box[2]) / 2 for o in tail])
    towards: Direction = "unknown"
    if h0 > 0 and h1 / h0 >= towards_ratio:
        towards = "towards"
    elif h1 > 0 and h0 / h1 >= towards_ratio:
        towards = "away"
    fw = frame_width or max(o.box[2] for o in obs)
    lateral: Lateral = "none"
    if x1 - x0 > lateral_frac * fw:
        lateral = "right"
    elif x0 - x1 > lateral_frac * fw:
        lateral = "left"
    return towards, lateral
