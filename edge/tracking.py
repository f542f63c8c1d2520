"""Observations across frames -> one Pass per vehicle.

A pure object: `Tracker.update(observations, now)` takes the plates read in one frame and returns
the passes that ended. It needs no video: tests drive it with plain lists. The association cost is
injectable (`distance=`); the default mixes box overlap (after a constant-velocity prediction),
centre distance in plate widths, and text similarity.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from statistics import median
from typing import Any


@dataclass
class Observation:
    text: str
    confidence: float
    char_confidences: tuple[float, ...]
    box: tuple[float, float, float, float]
    t: float  # monotonic seconds of the frame
    utc: datetime | None = None
    frame_seq: int = 0
    frame_size: tuple[int, int] = (0, 0)  # w, h
    payload: Any = None  # e.g. the crop, carried to the Pass untouched


@dataclass
class Candidate:
    text: str
    confidence: float
    votes: int


@dataclass
class Pass:
    text: str
    confidence: float
    char_confidences: tuple[float, ...]
    candidates: list[Candidate]
    best: Observation
    first: Observation
    last: Observation
    frames: int
    direction: str  # towards | away | unknown
    lateral: str  # left | right | none
    reason: str  # ended | max_duration | flush


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


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


@dataclass
class Track:
    id: int
    obs: list[Observation] = field(default_factory=list)
    emitted: bool = False

    @property
    def last(self) -> Observation:
        return self.obs[-1]

    def predicted_box(self, t: float) -> tuple[float, float, float, float]:
        b = self.last.box
        if len(self.obs) < 2:
            return b
        p = self.obs[-2]
        dt = self.last.t - p.t
        if dt <= 0:
            return b
        k = (t - self.last.t) / dt
        return tuple(b[i] + (b[i] - p.box[i]) * k for i in range(4))  # type: ignore[return-value]


def default_distance(track: Track, o: Observation) -> float | None:
    """Association cost in [0, 1+) or None when the observation cannot belong to the track."""
    pb = track.predicted_box(o.t)
    ov = max(iou(pb, o.box), iou(track.last.box, o.box))
    w = max(1.0, (o.box[2] - o.box[0] + pb[2] - pb[0]) / 2)
    cx, cy = (o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2
    px, py = (pb[0] + pb[2]) / 2, (pb[1] + pb[3]) / 2
    dist = ((cx - px) ** 2 + (cy - py) ** 2) ** 0.5 / w
    sim = max(text_similarity(o.text, x.text) for x in track.obs[-5:])
    if ov < 0.05 and not (dist < 2.0 and sim >= 0.5) and not (dist < 4.0 and sim >= 0.8):
        return None
    return (1 - ov) * 0.5 + min(dist, 4.0) / 8 + (1 - sim) * 0.5


def vote(obs: list[Observation]) -> tuple[str, float, tuple[float, ...], list[Candidate]]:
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


def length_share(obs: list[Observation], n: int) -> float:
    """The share of a track's read confidence carried by its reads of n characters."""
    total = sum(o.confidence for o in obs)
    return sum(o.confidence for o in obs if len(o.text) == n) / total if total > 0 else 0.0


@dataclass
class TrackerConfig:
    max_gap_s: float = 1.0  # a track ends when unseen this long
    max_duration_s: float = 60.0  # a pass is emitted at the latest after this long
    min_frames: int = 2  # fewer reads than this: not a pass (a one-frame misread)
    min_confidence: float = 0.8  # voted confidence below this: not a pass (reads that disagree, or unsure ones)
    # the reads of the voted length must carry at least this share of the track's read confidence: a
    # plate is read at one length in most frames; a sign's lettering or a plate too small to read
    # comes out a different length from frame to frame (the vote alone looks only at the reads of
    # the most supported length)
    min_length_share: float = 0.6
    # plate height (median over the track's last third against its first) grew by this factor: towards
    # the camera. The detector's boxes of a plate of constant size swing by up to 15% between the two
    # ends of a track (fixture clips 03 and 06); an approaching car's plate grows 1.7-2.7x there.
    towards_ratio: float = 1.25
    lateral_frac: float = 0.05  # centre moved this fraction of the frame width: left/right
    keep_after_emit: int = 32  # observations kept for a track that has already been emitted
    repeat_window_s: float = 10.0  # the same plate again this soon (e.g. after an occlusion) is the same pass


class Tracker:
    def __init__(self, config: TrackerConfig | None = None, distance: Callable[[Track, Observation], float | None] = default_distance):
        self.c = config or TrackerConfig()
        self.distance = distance
        self.tracks: list[Track] = []
        self._next = 1
        self.recent: list[tuple[str, float]] = []  # (text, last seen) of passes emitted lately
        self.repeats = 0

    def update(self, observations: list[Observation], now: float) -> list[Pass]:
        out: list[Pass] = []
        alive: list[Track] = []
        for tr in self.tracks:  # tracks unseen for too long end before anything new can join them
            if now - tr.last.t > self.c.max_gap_s:
                if not tr.emitted:
                    p = self._finish(tr, "ended")
                    if p:
                        out.append(p)
            else:
                alive.append(tr)
        self.tracks = alive
        pairs = []
        for oi, o in enumerate(observations):
            for ti, tr in enumerate(self.tracks):
                d = self.distance(tr, o)
                if d is not None:
                    pairs.append((d, oi, ti))
        pairs.sort()
        used_o, used_t = set(), set()
        for _d, oi, ti in pairs:
            if oi in used_o or ti in used_t:
                continue
            used_o.add(oi)
            used_t.add(ti)
            self._append(self.tracks[ti], observations[oi])
        for oi, o in enumerate(observations):
            if oi not in used_o:
                self.tracks.append(Track(self._next, [o]))
                self._next += 1
        for tr in self.tracks:
            if not tr.emitted and tr.last.t - tr.obs[0].t >= self.c.max_duration_s:
                p = self._finish(tr, "max_duration")
                if p:
                    out.append(p)
                    tr.emitted = True
        return out

    def _append(self, tr: Track, o: Observation) -> None:
        """Add an observation; keep memory bounded: a payload (image patch) only on the best
        observation so far, and for a track already emitted only its recent observations."""
        best = max((x for x in tr.obs if x.payload is not None), key=lambda x: (x.confidence, x.box[2] - x.box[0]), default=None)
        if best is not None and o.payload is not None:
            if (o.confidence, o.box[2] - o.box[0]) > (best.confidence, best.box[2] - best.box[0]):
                best.payload = None
            else:
                o.payload = None
        tr.obs.append(o)
        if tr.emitted and len(tr.obs) > self.c.keep_after_emit:
            del tr.obs[1 : len(tr.obs) - self.c.keep_after_emit + 1]

    def flush(self) -> list[Pass]:
        """End every open track (end of stream, shutdown)."""
        out = [p for tr in self.tracks if not tr.emitted for p in [self._finish(tr, "flush")] if p]
        self.tracks = []
        return out

    def _finish(self, tr: Track, reason: str) -> Pass | None:
        if len(tr.obs) < self.c.min_frames:
            return None
        text, conf, cc, cands = vote(tr.obs)
        if conf < self.c.min_confidence or len(text) < 2 or length_share(tr.obs, len(text)) < self.c.min_length_share:
            return None
        t0 = tr.obs[0].t
        self.recent = [(x, t) for x, t in self.recent if t0 - t <= self.c.repeat_window_s]
        if any(text_similarity(text, x) >= 0.8 for x, _ in self.recent):
            self.repeats += 1  # a plate hidden for a moment and seen again: not a second vehicle
            self.recent.append((text, tr.last.t))
            return None
        self.recent.append((text, tr.last.t))
        with_image = [o for o in tr.obs if o.payload is not None]
        agreeing = [o for o in with_image if o.text == text] or with_image or [o for o in tr.obs if o.text == text] or tr.obs
        best = max(agreeing, key=lambda o: (o.confidence, o.box[2] - o.box[0]))
        return Pass(text, conf, cc, cands, best, tr.obs[0], tr.last, len(tr.obs), *self._direction(tr), reason)

    def _direction(self, tr: Track) -> tuple[str, str]:
        # Medians over the first and last thirds of the track: a detector's box height swings by a
        # fifth from frame to frame, and a plate half hidden by a passing car for its last few frames
        # shrinks; means over quarters called a crossing car (constant size) "away" on that.
        k = max(1, len(tr.obs) // 3)
        head, tail = tr.obs[:k], tr.obs[-k:]
        h0 = median([o.box[3] - o.box[1] for o in head])
        h1 = median([o.box[3] - o.box[1] for o in tail])
        x0 = median([(o.box[0] + o.box[2]) / 2 for o in head])
        x1 = median([(o.box[0] + o.box[2]) / 2 for o in tail])
        direction = "unknown"
        if h0 > 0 and h1 / h0 >= self.c.towards_ratio:
            direction = "towards"
        elif h1 > 0 and h0 / h1 >= self.c.towards_ratio:
            direction = "away"
        fw = tr.obs[0].frame_size[0] or max(o.box[2] for o in tr.obs)
        lateral = "none"
        if x1 - x0 > self.c.lateral_frac * fw:
            lateral = "right"
        elif x0 - x1 > self.c.lateral_frac * fw:
            lateral = "left"
        return direction, lateral
