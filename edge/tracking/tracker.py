"""Observations across frames -> one Pass per vehicle.

A pure object: `Tracker.update(observations, now)` takes the plates read in one frame and returns
the passes that ended. It needs no video: tests drive it with plain lists. The association cost is
injectable (`distance=`); the default mixes box overlap (after a constant-velocity prediction),
centre distance in plate widths, and text similarity. The frame loop asks it three questions:
which box continues a settled read (`settled`), where tracked plates should be now (`look_around`),
and the first frame an open track still needs (`first_open_frame`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from edge.config import TrackingSection
from edge.plates import PLATE_MIN_CHARS
from edge.record import Direction, Lateral
from edge.tracking.vote import Candidate, direction, length_share, text_similarity, vote

Box = tuple[float, float, float, float]
KEEP_AFTER_EMIT = 32  # observations kept for a track that has already been emitted (memory stays bounded)
SETTLED_IOU = 0.3  # a box continues a settled track when it overlaps the track's last box this much


@dataclass
class Observation:
    text: str
    confidence: float
    char_confidences: tuple[float, ...]
    box: Box
    t: float  # monotonic seconds of the frame
    utc: datetime | None = None
    frame_seq: int = 0
    frame_size: tuple[int, int] = (0, 0)  # w, h
    payload: Any = None  # e.g. the crop, carried to the Pass untouched


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
    direction: Direction
    lateral: Lateral
    reason: Literal["ended", "max_duration", "flush", "open"]
    track: int = 0  # the track's id ("open": a track still in view, as it stands now)
    history: tuple[tuple[str, datetime | None], ...] = ()  # "open" passes: each read of the track so far (text, UTC)


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
        return (b[0] + (b[0] - p.box[0]) * k, b[1] + (b[1] - p.box[1]) * k, b[2] + (b[2] - p.box[2]) * k, b[3] + (b[3] - p.box[3]) * k)


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


class Tracker:
    def __init__(self, config: TrackingSection | None = None,
                 distance: Callable[[Track, Observation], float | None] = default_distance):
        self.c = config or TrackingSection()
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
        if tr.emitted and len(tr.obs) > KEEP_AFTER_EMIT:
            del tr.obs[1 : len(tr.obs) - KEEP_AFTER_EMIT + 1]

    def flush(self) -> list[Pass]:
        """End every open track (end of stream, shutdown)."""
        out = [p for tr in self.tracks if not tr.emitted for p in [self._finish(tr, "flush")] if p]
        self.tracks = []
        return out

    def _confident(self, tr: Track) -> tuple[str, float, tuple[float, ...], list[Candidate]] | None:
        """The track's vote when it is sure enough to publish."""
        if len(tr.obs) < self.c.min_frames:
            return None
        text, conf, cc, cands = vote(tr.obs)
        if conf < self.c.min_confidence or len(text) < PLATE_MIN_CHARS or length_share(tr.obs, len(text)) < self.c.min_length_share:
            return None
        return text, conf, cc, cands

    def _pass(self, tr: Track, voted, reason) -> Pass:
        text, conf, cc, cands = voted
        with_image = [o for o in tr.obs if o.payload is not None]
        agreeing = [o for o in with_image if o.text == text] or with_image or [o for o in tr.obs if o.text == text] or tr.obs
        best = max(agreeing, key=lambda o: (o.confidence, o.box[2] - o.box[0]))
        towards, lateral = direction(tr.obs, tr.obs[0].frame_size[0], self.c.towards_ratio, self.c.lateral_frac)
        return Pass(text, conf, cc, cands, best, tr.obs[0], tr.last, len(tr.obs), towards, lateral, reason, tr.id)

    def confident_now(self, t: float) -> list[Pass]:
        """What a hotlist is checked against before the vehicle has left: for each open track seen at
        time t, its vote when that is already sure enough to publish, and its read in this frame when
        that alone is (a vote of a few frames lags a plate coming into focus)."""
        out = []
        for tr in self.tracks:
            if tr.emitted or tr.last.t != t:
                continue
            history = tuple((o.text, o.utc) for o in tr.obs)
            voted = self._confident(tr)
            if voted:
                out.append(replace(self._pass(tr, voted, "open"), history=history))
            o = tr.last
            if (o.confidence >= self.c.min_confidence and len(o.text) >= PLATE_MIN_CHARS
                    and (voted is None or voted[0] != o.text)):
                one = (o.text, o.confidence, o.char_confidences, [Candidate(o.text, o.confidence, 1)])
                out.append(replace(self._pass(tr, one, "open"), history=history))
        return out

    def _finish(self, tr: Track, reason: Literal["ended", "max_duration", "flush"]) -> Pass | None:
        voted = self._confident(tr)
        if voted is None:
            return None
        text = voted[0]
        t0 = tr.obs[0].t
        self.recent = [(x, t) for x, t in self.recent if t0 - t <= self.c.repeat_window_s]
        if any(text_similarity(text, x) >= 0.8 for x, _ in self.recent):
            self.repeats += 1  # a plate hidden for a moment and seen again: not a second vehicle
            self.recent.append((text, tr.last.t))
            return None
        self.recent.append((text, tr.last.t))
        return self._pass(tr, voted, reason)

    # ---------------------------------------------------------- what the frame loop asks

    @property
    def busy(self) -> bool:
        """Whether any plate is being tracked."""
        return bool(self.tracks)

    def settled(self, box: Box, frames: int, min_char_confidence: float) -> Observation | None:
        """The last read of a track that this box continues and whose text is settled: the same text
        `frames` frames running, each of its characters read with at least `min_char_confidence`.
        Reading it again would only cost time. One unsure character keeps the track being read: a
        closer, sharper view may settle it (a whole read's confidence can be high while one
        look-alike is a guess)."""
        if frames <= 0:
            return None
        for tr in self.tracks:
            recent = tr.obs[-frames:]
            if (len(recent) == frames and iou(tr.last.box, box) >= SETTLED_IOU
                    and all(o.text == tr.last.text and min(o.char_confidences, default=o.confidence) >= min_char_confidence
                            for o in recent)):
                return tr.last
        return None

    def look_around(self, t: float) -> list[Box]:
        """Where the plates of tracks seen within max_gap_s should be at time t."""
        return [tr.predicted_box(t) for tr in self.tracks if t - tr.last.t <= self.c.max_gap_s]

    def first_open_frame(self) -> int | None:
        """The first frame a track still open holds (None: none open), emitted or not: frames before it
        are finished with. A replay resumed from there sees each open track again from its first
        frame, so a pass already emitted comes out again under the same read id (harmless), never as a
        second pass of the same vehicle starting later."""
        return min((tr.obs[0].frame_seq for tr in self.tracks), default=None)
