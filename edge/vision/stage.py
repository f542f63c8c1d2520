"""The plate stage: a frame in, plate candidates with their reads out, for stills and video alike.

One policy, in this order, for every box the detector finds:

1. detect on the whole frame, or only around the given boxes (`look`: where tracked plates should be);
2. too small (`[pipeline] min_plate_width`): neither read nor reported;
3. settled: the box continues a tracked plate already read the same way several frames running
   (`settled`), so it is reported with that read and not read again;
4. cut: the reader's crop (the box grown by the margins it was trained with) runs past the frame's
   edge, so the text may go on unseen. Video drops such a box (the vehicle is read in other frames);
   a still image has no other frame and reads it (`read_cut`);
5. over budget: of the detector's verify band (scored just under its threshold), only its
   `verify_max_boxes` highest scored are read;
6. read: each box is cut with its edges moved onto the plate (the refiner) and read; with plate
   formats named, a read that fits none is read again from cuts shifted left and right
   (`reread_misfits`), the first that fits replacing it;
7. accepted: a plausible length for the site's regions (edge.plates) and confident enough; a box of
   the verify band needs the detector's verify confidence.

The result is one `PlateCandidates` value, N rows with a mask per step, so a caller sees why each box
was or was not reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.plates import Rules, region_guess
from edge.vision.detector import Detections, PlateDetector
from edge.vision.geometry import expand_box, nms
from edge.vision.reader import PlateReader, TextRead
from edge.vision.refiner import BoxRefiner

Box = tuple[float, float, float, float]
REREAD_SHIFT = 0.12  # share of a box's width its misfit re-reads move it left and right
LOOK_MARGIN_X = 1.0  # looking around a tracked plate: this many plate widths left and right of where it should be
LOOK_MARGIN_Y = 2.0  # and this many plate heights above and below
LOOK_NMS_IOU, LOOK_NMS_COVER = 0.3, 0.4  # boxes found in overlapping looks are merged as the detector merges its own


class KnownRead(Protocol):
    """A read: this frame's (TextRead) or one the tracker already holds for a box (Observation)."""

    @property
    def text(self) -> str: ...

    @property
    def confidence(self) -> float: ...

    @property
    def char_confidences(self) -> tuple[float, ...]: ...


@dataclass(frozen=True)
class PlateResult:
    text: str
    confidence: float  # the reader's confidence in the whole text
    char_confidences: tuple[float, ...]
    box: Box  # x1 y1 x2 y2, frame pixels: the box the text was read from (refined)
    corners: tuple[tuple[float, float], ...]  # TL, TR, BR, BL, frame pixels
    detection_score: float
    read_confidence: float
    region: str | None = None  # where the plate is registered, when its shape tells (edge.plates.region_guess)


def _box(row: np.ndarray) -> Box:
    return float(row[0]), float(row[1]), float(row[2]), float(row[3])


def _false(n: int) -> np.ndarray:
    return np.zeros(n, bool)


@dataclass
class PlateCandidates:
    """Every box the detector found in one frame, with what the stage made of it."""

    boxes: np.ndarray  # (N, 4) detector boxes, full-frame pixels
    scores: np.ndarray  # (N,) detector scores
    band: np.ndarray  # (N,) scored under the detector's threshold (the verify band)
    small: np.ndarray  # (N,) narrower than min_plate_width
    settled: list[KnownRead | None]  # (N,) the tracked read a box continues (not read again)
    cut: np.ndarray  # (N,) the reader's crop runs past the frame's edge
    over_budget: np.ndarray  # (N,) verify-band boxes past the detector's verify_max_boxes
    read: np.ndarray  # (N,) read in this frame
    refined: np.ndarray  # (N, 4) the cut each box was read from (its own box where not read)
    reads: list[TextRead | None]  # (N,) this frame's reads
    accepted: np.ndarray  # (N,) a plate worth reporting: read and accepted, or settled
    detect_ms: float = 0.0
    read_ms: float = 0.0
    rereads: int = 0  # misfits read again from shifted cuts

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> PlateCandidates:
        z = np.zeros((0, 4), np.float32)
        return cls(z, np.zeros(0, np.float32), _false(0), _false(0), [], _false(0), _false(0), _false(0), z.copy(), [],
                   _false(0))

    def text(self, i: int) -> KnownRead | None:
        """Row i's read: this frame's, or the settled one it continues."""
        return self.settled[i] if self.settled[i] is not None else self.reads[i]

    def plates(self, regions: Sequence[str] = ()) -> list[PlateResult]:
        """The accepted rows as results, most confident first (boxes: the cuts read); `regions`: the
        site's, asked first for the region of registration."""
        out = []
        for i in np.flatnonzero(self.accepted):
            r = self.text(int(i))
            assert r is not None
            x1, y1, x2, y2 = (float(v) for v in self.refined[i])
            out.append(PlateResult(
                text=r.text, confidence=round(float(r.confidence), 4), char_confidences=tuple(r.char_confidences),
                box=(round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)), corners=((x1, y1), (x2, y1), (x2, y2), (x1, y2)),
                detection_score=round(float(self.scores[i]), 4), read_confidence=round(float(r.confidence), 4),
                region=region_guess(r.text, regions)))
        out.sort(key=lambda p: -p.confidence)
        return out


@dataclass
class StageSettings:
    """What the stage decides with. Built from `[pipeline]` by edge.runtime.assembly.stage_settings."""

    min_confidence: float = 0.5  # reads less sure than this are not plates
    min_length: int = 4  # like OpenALPR's postprocess_min_characters: shorter reads are mostly signs
    max_length: int = 10
    min_plate_width: int = 0  # frame pixels; 0: every box
    verify: bool = True  # the detector's verify band (its metadata), when it has one
    read_cut: bool = False  # read boxes whose crop runs past the frame's edge (stills: no other frame)
    reread_misfits: bool = True  # with plate formats: misfits read again from shifted cuts
    detection_threshold: float | None = None  # None: the model's own (a threshold set by hand has no verify band)
    rules: Rules = field(default_factory=Rules)


class PlateStage:
    def __init__(self, detector: PlateDetector, reader: PlateReader, refiner: BoxRefiner | None = None,
                 settings: StageSettings | None = None):
        self.detector, self.reader, self.refiner = detector, reader, refiner
        self.settings = settings or StageSettings()
        self.reader.rules = self.settings.rules

    # ---------------------------------------------------------- rules

    @property
    def rules(self) -> Rules:
        return self.reader.rules

    @rules.setter
    def rules(self, rules: Rules) -> None:
        self.settings.rules = self.reader.rules = rules

    @property
    def verifying(self) -> bool:
        d, s = self.detector, self.settings
        return (s.verify and s.detection_threshold is None and d.verify_threshold is not None
                and d.verify_confidence is not None)

    @property
    def threshold(self) -> float:
        s = self.settings
        return self.detector.threshold if s.detection_threshold is None else s.detection_threshold

    @property
    def detect_threshold(self) -> float:
        """The lowest detector score worth reading: the threshold, or the verify band's floor."""
        vt = self.detector.verify_threshold
        return min(self.threshold, vt) if self.verifying and vt is not None else self.threshold

    def length_range(self) -> tuple[int, int]:
        s = self.settings
        return self.rules.length_range(s.min_length, s.max_length, self.reader.max_len)

    def accepts(self, score: float, read: KnownRead) -> bool:
        """Whether a box with this detector score and this read is a plate worth reporting."""
        lo, hi = self.length_range()
        if not (lo <= len(read.text) <= hi) or read.confidence < self.settings.min_confidence:
            return False
        if score >= self.threshold:
            return True
        vt, vc = self.detector.verify_threshold, self.detector.verify_confidence
        return self.verifying and vt is not None and vc is not None and score >= vt and read.confidence >= vc

    def band_budget(self, scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Of the candidate rows (a mask of boxes that would be read), the verify band's rows past its
        `verify_max_boxes` highest scored (each costs a read: a busy scene's cost stays bounded)."""
        out = _false(len(scores))
        cap = self.detector.verify_max_boxes
        if not self.verifying or cap is None:
            return out
        band = [int(i) for i in np.flatnonzero(candidates & (scores < self.threshold))]
        band.sort(key=lambda i: -float(scores[i]))
        out[band[cap:]] = True
        return out

    # ---------------------------------------------------------- the steps

    def detect(self, image: np.ndarray, scale: float = 1.0, look: Sequence[Box] | None = None) -> Detections:
        """Boxes in full-frame pixels (image pixels times scale): the whole image, or only around
        the `look` boxes (full-frame pixels), at the scale a whole-image look has."""
        det, th = self.detector, self.detect_threshold
        if look is None:
            d = det.detect(image, th)
        else:
            parts = []
            for x1, y1, x2, y2 in ((v / scale for v in b) for b in look):
                bw, bh = max(x2 - x1, 8.0), max(y2 - y1, 4.0)
                region = (int(x1 - LOOK_MARGIN_X * bw), int(y1 - LOOK_MARGIN_Y * bh), int(x2 + LOOK_MARGIN_X * bw),
                          int(y2 + LOOK_MARGIN_Y * bh))
                parts.append(det.detect_region(image, region, th))
            b = np.concatenate([p.boxes for p in parts]) if parts else np.zeros((0, 4), np.float32)
            sc = np.concatenate([p.scores for p in parts]) if parts else np.zeros((0,), np.float32)
            keep = nms(b, sc, LOOK_NMS_IOU, LOOK_NMS_COVER) if len(sc) else np.zeros(0, np.int64)
            d = Detections(b[keep], sc[keep])
        return Detections(d.boxes * scale, d.scores) if scale != 1.0 else d

    def crops(self, frame: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        h, w = frame.shape[:2]
        out = []
        for b in boxes:
            x1, y1, x2, y2 = expand_box(b, w, h, self.reader.margin_x, self.reader.margin_y)
            out.append(frame[y1:y2, x1:x2])
        return out

    def cut_by_edge(self, boxes: np.ndarray, w: int, h: int) -> np.ndarray:
        """Which boxes' reader crops (grown by the margins the reader was trained with) run past a
        w x h frame's edge."""
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        mx, my = self.reader.margin_x * (b[:, 2] - b[:, 0]), self.reader.margin_y * (b[:, 3] - b[:, 1])
        return (b[:, 0] - mx < 0) | (b[:, 1] - my < 0) | (b[:, 2] + mx > w) | (b[:, 3] + my > h)

    def refine(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The boxes with their edges moved onto the plates (as they are without a refiner)."""
        return self.refiner.refine(frame, boxes) if self.refiner is not None and len(boxes) else boxes

    def read_boxes(self, frame: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, list[TextRead], int]:
        """Refine, read, and read misfits again: (cuts read, reads, misfits read again)."""
        cuts = self.refine(frame, boxes)
        reads = self.reader.read(self.crops(frame, cuts))
        if not (self.rules.formats and self.settings.reread_misfits):
            return cuts, reads, 0
        todo = [i for i, r in enumerate(reads) if r.text and not self.rules.fits_format(r.text)]
        if not todo:
            return cuts, reads, 0
        shifted = []
        for i in todo:
            x1, y1, x2, y2 = (float(v) for v in cuts[i])
            d = REREAD_SHIFT * (x2 - x1)
            shifted += [(x1 - d, y1, x2 - d, y2), (x1 + d, y1, x2 + d, y2)]
        again = self.reader.read(self.crops(frame, np.array(shifted, np.float32)))
        for k, i in enumerate(todo):
            for r in again[2 * k : 2 * k + 2]:
                if self.rules.fits_format(r.text):
                    reads[i] = r
                    break
        return cuts, reads, len(todo)

    # ---------------------------------------------------------- one frame

    def process(self, image: np.ndarray, full: np.ndarray | None = None, scale: float = 1.0,
                look: Sequence[Box] | None = None, settled: Callable[[Box], KnownRead | None] | None = None) -> PlateCandidates:
        """One frame through the whole policy. `image` is what the detector looks at, `full` the
        frame read from (default: image) and `scale` full's size over image's; `look`: detect only
        around these boxes (full-frame pixels); `settled(box)`: the tracked read a box continues."""
        full = image if full is None else full
        t0 = time.perf_counter()
        dets = self.detect(image, scale, look)
        t1 = time.perf_counter()
        n = len(dets)
        if not n:
            c = PlateCandidates.empty()
            c.detect_ms = (t1 - t0) * 1000
            return c
        boxes, scores, s = dets.boxes, dets.scores, self.settings
        h, w = full.shape[:2]
        band = scores < self.threshold
        small = boxes[:, 2] - boxes[:, 0] < s.min_plate_width
        known: list[KnownRead | None] = [None] * n
        if settled is not None:
            known = [None if small[i] else settled(_box(boxes[i])) for i in range(n)]
        is_known = np.array([k is not None for k in known], bool)
        cut = self.cut_by_edge(boxes, w, h) & ~small & ~is_known
        candidates = ~small & ~is_known & (~cut | s.read_cut)
        over = self.band_budget(scores, candidates)
        to_read = candidates & ~over
        refined = boxes.copy()
        reads: list[TextRead | None] = [None] * n
        rereads = 0
        idx = np.flatnonzero(to_read)
        if len(idx):
            cuts, got, rereads = self.read_boxes(full, boxes[idx])
            refined[idx] = cuts
            for i, r in zip(idx, got, strict=True):
                reads[int(i)] = r
        accepted = is_known.copy()
        for i in idx:
            got_i = reads[int(i)]
            accepted[i] = got_i is not None and self.accepts(float(scores[i]), got_i)
        return PlateCandidates(boxes, scores, band, small, known, cut, over, to_read, refined, reads, accepted,
                          detect_ms=(t1 - t0) * 1000, read_ms=(time.perf_counter() - t1) * 1000 if len(idx) else 0.0,
                          rereads=rereads)

    def recognize(self, frame_bgr: np.ndarray) -> list[PlateResult]:
        """A still image's plates, most confident first."""
        return self.process(frame_bgr).plates(self.rules.regions)

    def model_paths(self) -> list[Path]:
        return [Path(m.model.path) for m in (self.detector, self.reader, self.refiner) if m is not None]
