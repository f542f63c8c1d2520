"""One assembly: a `Config` into the running parts, the same for `edge run`, `edge replay`,
`edge bench` and `edge eval` (which reads still images: `still=True`).

    stage = build_stage(cfg.pipeline)                  # models + plate rules + policy
    loop = build_loop(cfg, source, outbox, gps, stage)  # stage -> tracker -> records -> outbox

Each part takes its own config section: the stage `[pipeline]`, the tracker `[tracking]`, the
record builder `[record]`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge.capture.base import FrameSource
from edge.config import Config, PipelineSection
from edge.gps import GpsSource
from edge.mqtt import topics
from edge.outbox import Outbox
from edge.plates import rules_for
from edge.record import Camera, Read
from edge.runtime.health import Health
from edge.runtime.loop import FrameLoop
from edge.runtime.records import Identity, RecordBuilder
from edge.tracking import Pass, Tracker
from edge.vision.detector import PlateDetector
from edge.vision.model_files import REFINER_FILE, default_model_dir, model_files, model_label
from edge.vision.reader import PlateReader
from edge.vision.refiner import BoxRefiner
from edge.vision.stage import PlateStage, StageSettings

# The least read confidence worth reporting. A video frame's read is one vote in a track (the tracker
# publishes a pass only when its vote reaches [tracking] min_confidence), so frames keep reads from
# 0.5 ([pipeline] min_confidence). A still image's read is final: reads under 0.7 were wrong in every
# labelled set measured (CHANGELOG.md, release 12), and a wrong registration recorded at a place is worse
# than none; a [pipeline] min_confidence set explicitly holds for stills too.
FRAME_MIN_CONFIDENCE = 0.5
STILL_MIN_CONFIDENCE = 0.7


def model_dir(p: PipelineSection) -> Path:
    return Path(p.model_dir) if p.model_dir else default_model_dir()


def stage_settings(p: PipelineSection, still: bool = False) -> StageSettings:
    """The stage's policy from `[pipeline]`. A still image has no other frame: it keeps the stricter
    confidence floor and reads a plate cut by the image's edge; video drops those (read in other
    frames). Misfits are read again in both."""
    explicit = "min_confidence" in p.model_fields_set
    return StageSettings(
        min_confidence=STILL_MIN_CONFIDENCE if still and not explicit else p.min_confidence,
        min_length=p.min_length,
        min_plate_width=p.min_plate_width,
        verify=p.verify,
        read_cut=still,
        reread_misfits=p.reread_misfits,
        rules=rules_for(p.regions),
    )


def build_reader(p: PipelineSection) -> PlateReader:
    """The reader model alone (`edge eval --crops`), with the plate rules of `[pipeline] regions`."""
    reader = PlateReader(model_dir(p) / model_files(p.int8)[1], threads=p.threads)
    reader.rules = rules_for(p.regions)
    return reader


def build_stage(p: PipelineSection, still: bool = False) -> PlateStage:
    """The models of `[pipeline]` (model_dir, int8, refine, threads) loaded into a plate stage.
    Raises edge.vision.session.ModelError for a missing or malformed model."""
    folder = model_dir(p)
    det_file = model_files(p.int8)[0]
    detector = PlateDetector(folder / det_file, threads=p.threads)
    reader = build_reader(p)
    rf = folder / REFINER_FILE
    refiner = BoxRefiner(rf, threads=p.threads) if p.refine and rf.is_file() else None
    return PlateStage(detector, reader, refiner, stage_settings(p, still))


def describe(stage: PlateStage, p: PipelineSection) -> list[str]:
    """What a stage runs, for `edge bench` and the service's start-up line."""
    s = stage.settings
    models = " + ".join(str(x.name) for x in stage.model_paths())
    band = (f"verify band {stage.detector.verify_threshold}-{stage.threshold} at >= {stage.detector.verify_confidence}"
            if stage.verifying else "no verify band")
    lo, hi = stage.length_range()
    return [
        f"models           {models} (from {model_dir(p)}, {p.threads} thread(s))",
        f"regions          {', '.join(s.rules.regions) or 'none (region-blind)'}",
        f"stage            threshold {stage.threshold}, {band}, lengths {lo}-{hi}, min confidence {s.min_confidence}, "
        f"min plate width {s.min_plate_width}, refine {'on' if stage.refiner else 'off'}, "
        f"reread misfits {'on' if s.reread_misfits and s.rules.formats else 'off'}",
        f"frame loop       motion gate {'on' if p.motion_gate else 'off'}, detect every {p.detect_every}, "
        f"whole frame every {p.full_detect_every}, settle after {p.settle_frames}",
    ]


def identity(cfg: Config, stage: PlateStage) -> Identity:
    c = cfg.camera
    return Identity(
        device_id=cfg.device.id,
        camera=Camera(id=c.id, owner=c.owner, operator=c.operator, site=c.site, mounting=c.mounting, bearing_deg=c.bearing_deg),
        detector_model=model_label(stage.detector.meta.kind, stage.detector.meta.version, stage.detector.model.path),
        reader_model=model_label(stage.reader.meta.kind, stage.reader.meta.version, stage.reader.model.path),
    )


def build_loop(cfg: Config, source: FrameSource, outbox: Outbox, gps: GpsSource, stage: PlateStage | None = None, *,
               blocking: bool = False, on_read: Callable[[Read], None] | None = None, notify: Callable[[], None] | None = None,
               read_id: Callable[[Pass], str] | None = None, checkpoint: Callable[[int], None] | None = None,
               keep_reads: bool = False) -> FrameLoop:
    """The device's frame loop for this config: `blocking` for files (every frame looked at)."""
    stage = stage or build_stage(cfg.pipeline)
    records = RecordBuilder(cfg.record, identity(cfg, stage), gps, tuple(cfg.pipeline.regions), read_id=read_id)
    return FrameLoop(source, stage, Tracker(cfg.tracking), records, outbox, cfg.pipeline,
                     topics(cfg.mqtt.topic_prefix, cfg.device.id)["reads"], health=Health(cfg.device.id), on_read=on_read,
                     notify=notify, checkpoint=checkpoint, keep_reads=keep_reads, blocking=blocking)
