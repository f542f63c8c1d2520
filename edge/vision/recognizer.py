"""Detector + reader: a frame in, typed plate results out."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.vision.detector import PlateDetector
from edge.vision.geometry import expand_box
from edge.vision.reader import PlateReader
from edge.vision.refiner import BoxRefiner

DETECTOR_FILE = "plate_detector.onnx"
READER_FILE = "plate_reader.onnx"
REFINER_FILE = "plate_refiner.onnx"  # optional: without it boxes are read as the detector gives them
INT8_CHOICES = ("none", "reader", "detector", "both")
REREAD_SHIFT = 0.12  # share of a box's width its misfit re-reads move it left and right (reread_misfits)
# The least read confidence worth reporting. A video frame's read is one vote in a track (the tracker
# publishes a pass only when its vote reaches [tracking] min_confidence), so frames keep reads from
# 0.5. A still image's read is final: reads under 0.7 were wrong in every labelled set measured
# (models/README.md), and a wrong registration recorded at a place is worse than none.
FRAME_MIN_CONFIDENCE = 0.5
STILL_MIN_CONFIDENCE = 0.7


def model_files(int8: str = "none") -> tuple[str, str]:
    """The (detector, reader) file names for a choice of int8-quantized models: "none" (float32
    pair), "reader", "detector" or "both". The int8 files sit beside the float32 ones
    (`plate_reader.int8.onnx`); models/README.md gives what each choice reads and costs."""
    if int8 not in INT8_CHOICES:
        raise ValueError(f"int8: expected one of {', '.join(INT8_CHOICES)}, got {int8!r}")
    det = DETECTOR_FILE.replace(".onnx", ".int8.onnx") if int8 in ("detector", "both") else DETECTOR_FILE
    rd = READER_FILE.replace(".onnx", ".int8.onnx") if int8 in ("reader", "both") else READER_FILE
    return det, rd


def default_model_dir() -> Path:
    """$EDGE_MODELS, else the `models/` folder beside the `edge` package (a source checkout)."""
    env = os.environ.get("EDGE_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class PlateResult:
    text: str
    confidence: float  # the reader's confidence in the whole text
    char_confidences: tuple[float, ...]
    box: tuple[float, float, float, float]  # x1 y1 x2 y2, frame pixels
    corners: tuple[tuple[float, float], ...]  # TL, TR, BR, BL, frame pixels
    detection_score: float
    read_confidence: float


@dataclass
class RecognizerConfig:
    model_dir: Path = field(default_factory=default_model_dir)
    threads: int = 1
    detection_threshold: float | None = None  # None: the model's own default
    min_confidence: float = FRAME_MIN_CONFIDENCE  # a still image is read with STILL_MIN_CONFIDENCE (edge eval)
    min_length: int = 4  # like OpenALPR's postprocess_min_characters: shorter reads are mostly signs
    max_length: int = 10
    min_plate_width: int = 0  # boxes narrower than this (frame pixels) are not read: background vehicles' plates
    verify: bool = True  # also take boxes the detector scored low when the reader reads them confidently (model metadata)
    regions: tuple[str, ...] = ()  # e.g. ("br",): plate formats/glyphs of the site's region (reader.REGION_FORMATS, REGION_GLYPHS, REGION_DIGIT_BARS)
    reread_misfits: bool = True  # with plate formats: re-read a misfit from shifted cuts (PlateRecognizer.reread_misfits)
    refine: bool = True  # move each box's edges onto the plate before reading it (when the model folder has a refiner)
    detector_file: str = DETECTOR_FILE
    reader_file: str = READER_FILE
    refiner_file: str = REFINER_FILE


class PlateRecognizer:
    def __init__(self, config: RecognizerConfig | None = None):
        self.config = config or RecognizerConfig()
        c = self.config
        self.detector = PlateDetector(Path(c.model_dir) / c.detector_file, threads=c.threads, threshold=c.detection_threshold)
        self.reader = PlateReader(Path(c.model_dir) / c.reader_file, threads=c.threads)
        self.reader.set_regions(c.regions)
        rf = Path(c.model_dir) / c.refiner_file
        self.refiner = BoxRefiner(rf, threads=c.threads) if c.refine and rf.is_file() else None

    def refine(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The boxes with their edges moved onto the plates (as they are without a refiner)."""
        return self.refiner.refine(frame, boxes) if self.refiner is not None and len(boxes) else boxes

    @property
    def detect_threshold(self) -> float:
        """The lowest detector score worth reading: the model's threshold, or its verify threshold."""
        return min(self.detector.threshold, self.detector.verify_threshold) if self._verifying else self.detector.threshold

    @property
    def _verifying(self) -> bool:
        # a threshold set by hand is not the one the verify band was calibrated under: no band then
        d = self.detector
        return (self.config.verify and self.config.detection_threshold is None and d.verify_threshold is not None
                and d.verify_confidence is not None)

    def accepts(self, score: float, read) -> bool:
        """Whether a box with this detector score and this read is a plate worth reporting: a
        plausible length (within what the site's regions issue: reader.REGION_MAX_CHARS, REGION_MIN_CHARS) and confident
        enough; a box the detector scored below its threshold (but above the verify threshold) must
        be read with the model's verify confidence."""
        c, d = self.config, self.detector
        longest = min(c.max_length, self.reader.max_chars or c.max_length)
        shortest = max(c.min_length, self.reader.min_chars or c.min_length)
        if not (shortest <= len(read.text) <= longest) or read.confidence < c.min_confidence:
            return False
        if score >= d.threshold:
            return True
        return self._verifying and score >= d.verify_threshold and read.confidence >= d.verify_confidence

    def band_kept(self, scores: np.ndarray, candidates) -> list[int]:
        """Of the candidate box indices (boxes that would be read), all that the detector calls
        plates and, of the verify band's, only the detector's `verify_max_boxes` highest scored
        (each costs a read: the reader's cost per frame stays bounded on a busy scene)."""
        candidates = list(candidates)
        if not self._verifying or self.detector.verify_max_boxes is None:
            return candidates
        band = sorted((i for i in candidates if scores[i] < self.detector.threshold), key=lambda i: -float(scores[i]))
        drop = set(band[self.detector.verify_max_boxes:])
        return [i for i in candidates if i not in drop]

    def wide_enough(self, boxes: np.ndarray) -> np.ndarray:
        """Which boxes (frame pixels) are at least the configured minimum plate width."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        return boxes[:, 2] - boxes[:, 0] >= self.config.min_plate_width

    def crops(self, frame: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        h, w = frame.shape[:2]
        out = []
        for b in boxes:
            x1, y1, x2, y2 = expand_box(b, w, h, self.reader.margin_x, self.reader.margin_y)
            out.append(frame[y1:y2, x1:x2])
        return out

    def reread_misfits(self, frame: np.ndarray, boxes: np.ndarray, reads: list) -> list:
        """A read that fits none of the site's plate formats (a character lost at an end of the
        plate, most often) is read again from cuts of the box moved by REREAD_SHIFT of its width to
        the left and to the right; the first of those readings that fits a format replaces it. Costs
        two reads per misfit, none when every read fits."""
        todo = [i for i, r in enumerate(reads) if r.text and not self.reader.fits_format(r.text)]
        if not todo:
            return reads
        shifted = []
        for i in todo:
            x1, y1, x2, y2 = (float(v) for v in boxes[i])
            d = REREAD_SHIFT * (x2 - x1)
            shifted += [(x1 - d, y1, x2 - d, y2), (x1 + d, y1, x2 + d, y2)]
        again = self.reader.read(self.crops(frame, np.array(shifted, np.float32)))
        out = list(reads)
        for k, i in enumerate(todo):
            for r in again[2 * k : 2 * k + 2]:
                if self.reader.fits_format(r.text):
                    out[i] = r
                    break
        return out

    def recognize(self, frame_bgr: np.ndarray) -> list[PlateResult]:
        dets = self.detector.detect(frame_bgr, self.detect_threshold)
        if self.config.min_plate_width:
            keep = self.wide_enough(dets.boxes)
            dets = type(dets)(dets.boxes[keep], dets.scores[keep])
        keep = self.band_kept(dets.scores, range(len(dets)))
        dets = type(dets)(dets.boxes[keep], dets.scores[keep])
        if not len(dets):
            return []
        boxes = self.refine(frame_bgr, dets.boxes)
        reads = self.reader.read(self.crops(frame_bgr, boxes))
        if self.reader.formats and self.config.reread_misfits:
            reads = self.reread_misfits(frame_bgr, boxes, reads)
        out = []
        for box, score, r in zip(boxes, dets.scores, reads):
            if not self.accepts(float(score), r):
                continue
            conf = float(r.confidence)
            x1, y1, x2, y2 = (float(v) for v in box)
            out.append(
                PlateResult(
                    text=r.text,
                    confidence=round(conf, 4),
                    char_confidences=r.char_confidences,
                    box=(round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)),
                    corners=((x1, y1), (x2, y1), (x2, y2), (x1, y2)),
                    detection_score=round(float(score), 4),
                    read_confidence=round(r.confidence, 4),
                )
            )
        out.sort(key=lambda p: -p.confidence)
        return out
