"""The frame loop: capture -> plate stage -> tracker -> record builder -> outbox.

Capture runs in its own thread and never waits for inference: frames go through a bounded queue
that drops the oldest frame when full (counted). The loop gates on motion and frame skipping so an
idle scene costs little CPU, hands each frame to the plate stage (edge.vision.stage) with the
tracker's hints (where to look, which boxes are settled), feeds the accepted plates to the tracker
(edge.tracking), and turns each finished vehicle pass into a `Read` (edge.runtime.records) that is
committed to the outbox before it counts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from edge.capture.base import Frame, FrameSource
from edge.config import PipelineSection
from edge.outbox import Outbox
from edge.record import Read
from edge.runtime.health import Health
from edge.runtime.records import RecordBuilder
from edge.tracking import Observation, Pass, Tracker
from edge.vision.stage import Box, KnownRead, PlateCandidates, PlateStage

log = logging.getLogger("edge.service")

SETTLE_CONFIDENCE = 0.9  # a settled track's characters were each read at least this sure
CHECKPOINT_EVERY_S = 0.5  # replays: how often the first frame still needed is saved
MOTION_SIZE = (160, 90)  # the motion gate compares frames this small
MOTION_PIXEL_DELTA = 18  # grey levels a pixel must change by to count as changed


class DropOldestQueue:
    def __init__(self, maxsize: int):
        self.q: queue.Queue[Frame] = queue.Queue(maxsize)
        self.dropped = 0

    def put(self, item: Frame) -> None:
        while True:
            try:
                self.q.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.q.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def get(self, timeout: float) -> Frame:
        return self.q.get(timeout=timeout)

    def qsize(self) -> int:
        return self.q.qsize()


class BlockingQueue(DropOldestQueue):
    """For files (replays, benchmarks): capture waits for inference, so every frame is looked at."""

    def put(self, item: Frame) -> None:
        self.q.put(item)


class MotionGate:
    """Fraction of changed pixels on a small greyscale copy of the frame."""

    def __init__(self, threshold: float, size: tuple[int, int] = MOTION_SIZE):
        self.threshold, self.size = threshold, size
        self.prev: np.ndarray | None = None

    def moving(self, img: np.ndarray) -> bool:
        small = cv2.cvtColor(cv2.resize(img, self.size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        small = cv2.GaussianBlur(small, (3, 3), 0)
        prev, self.prev = self.prev, small
        if prev is None:
            return True
        changed = np.count_nonzero(cv2.absdiff(small, prev) > MOTION_PIXEL_DELTA) / small.size
        return bool(changed >= self.threshold)


class FrameLoop:
    def __init__(
        self,
        source: FrameSource,
        stage: PlateStage,
        tracker: Tracker,
        records: RecordBuilder,
        outbox: Outbox,
        settings: PipelineSection,
        topic: str,
        health: Health | None = None,
        on_read: Callable[[Read], None] | None = None,
        notify: Callable[[], None] | None = None,
        checkpoint: Callable[[int], None] | None = None,
        keep_reads: bool = False,
        blocking: bool = False,
    ):
        self.source, self.stage, self.tracker, self.records, self.outbox = source, stage, tracker, records, outbox
        self.p, self.topic = settings, topic
        self.health = health or Health(records.identity.device_id)
        self.on_read, self.notify, self.checkpoint = on_read, notify, checkpoint
        self.blocking = blocking  # files: every frame is looked at, in video time
        self.frames: DropOldestQueue = BlockingQueue(settings.queue_size) if blocking else DropOldestQueue(settings.queue_size)
        self.gate = MotionGate(settings.motion_threshold)
        self.stop_event = threading.Event()
        self._capture_done = threading.Event()
        self.capture_error: Exception | None = None
        self.reads: list[Read] = []  # only filled with keep_reads (tests, benchmarks): a service runs for months
        self.keep_reads = keep_reads
        self._since_full = 0
        self._last_checkpoint = 0.0
        self.preview: Any = None  # edge.preview.PreviewFeed when the preview is on
        self.watch: Any = None  # edge.runtime.alerts.AlertWatch when a hotlist is matched
        self._last_c: PlateCandidates | None = None
        h = self.health
        h.provide("frames_dropped", lambda: self.frames.dropped)
        h.provide("queue_depth", self.frames.qsize)
        h.provide("outbox_backlog", outbox.backlog)
        h.provide("receipts_pending", outbox.awaiting_receipt)
        h.provide("outbox", outbox.counters)
        h.provide("gps", records.gps.state)
        h.provide("gps_fix_age_s", records.gps.fix_age)
        h.provide("source", source.stats)

    # ---------------------------------------------------------- threads

    def _capture(self) -> None:
        try:
            for f in self.source.frames():
                self.health.count("captured")
                self.frames.put(f)
                if self.stop_event.is_set():
                    break
        except Exception as e:  # a source failing for good ends the run, reported by run()
            self.capture_error = e
            log.error("capture failed: %s", e)
        finally:
            self._capture_done.set()

    def run(self) -> None:
        """Process frames until the source ends or stop() is called; then flush open tracks."""
        th = threading.Thread(target=self._capture, name="capture", daemon=True)
        th.start()
        last_detect = -1e9
        h = self.health
        while True:
            try:
                frame = self.frames.get(timeout=0.2)
            except queue.Empty:
                if self._capture_done.is_set() or self.stop_event.is_set():
                    break
                if not self.blocking:  # live sources: end tracks on time (files keep video time)
                    self._emit(self.tracker.update([], time.monotonic()))
                continue
            h.count("processed")
            t0 = time.perf_counter()
            if frame.seq % self.p.detect_every != 0:
                h.count("skipped")
                continue
            if self.p.motion_gate and not self.tracker.busy:
                moving = self.gate.moving(frame.image)
                h.time("motion_ms", (time.perf_counter() - t0) * 1000)
                if not moving and frame.t - last_detect < self.p.idle_detect_every_s:
                    h.count("idle")
                    self._emit(self.tracker.update([], frame.t))
                    if self.preview is not None and self.preview.watching():
                        self.preview.frame(frame, None, "idle")
                    continue
            elif self.p.motion_gate:
                self.gate.moving(frame.image)  # keep the reference frame current
            last_detect = frame.t
            obs = self.observe(frame)
            h.time("pipeline_ms", (time.perf_counter() - t0) * 1000)
            if self.preview is not None and self.preview.watching():
                self.preview.frame(frame, self._last_c, "moving" if self.p.motion_gate else "off")
            self._emit(self.tracker.update(obs, frame.t))
            if self.watch is not None and obs:
                self.watch.frame(self.tracker.confident_now(frame.t))
            if self.checkpoint and time.monotonic() - self._last_checkpoint > CHECKPOINT_EVERY_S:
                # frames before this one are finished with: every pass they hold is in the outbox
                first = self.tracker.first_open_frame()
                self.checkpoint(frame.seq + 1 if first is None else first)
                self._last_checkpoint = time.monotonic()
        self.stop_event.set()
        th.join(5)
        self._emit(self.tracker.flush())
        if not th.is_alive():  # never free a capture another thread may still be reading from
            self.source.close()

    def stop(self) -> None:
        self.stop_event.set()
        stop = getattr(self.source, "stop_event", None)
        if stop is not None:
            stop.set()

    # ---------------------------------------------------------- one frame

    def where_to_look(self, frame: Frame) -> list[Box] | None:
        """None: the whole frame. Between whole-frame looks (every full_detect_every-th frame),
        only around the plates being tracked."""
        around = self.tracker.look_around(frame.t)
        if self.p.full_detect_every <= 1 or not around or self._since_full + 1 >= self.p.full_detect_every:
            self._since_full = 0
            self.health.count("full_detections")
            return None
        self._since_full += 1
        self.health.count("region_detections")
        return around

    def settled(self, box: Box) -> KnownRead | None:
        return self.tracker.settled(box, self.p.settle_frames, SETTLE_CONFIDENCE)

    def observe(self, frame: Frame) -> list[Observation]:
        full = frame.full_image
        c = self.stage.process(frame.image, full, frame.scale, look=self.where_to_look(frame),
                               settled=self.settled if self.p.settle_frames else None)
        self._count(c)
        self._last_c = c
        out = []
        for i in np.flatnonzero(c.accepted):
            r = c.text(int(i))
            assert r is not None
            box = (float(c.boxes[i, 0]), float(c.boxes[i, 1]), float(c.boxes[i, 2]), float(c.boxes[i, 3]))
            # the track follows the detector's boxes, whose size changes with distance the same way
            # from frame to frame; the read came from the refined cut
            out.append(Observation(r.text, r.confidence, tuple(r.char_confidences), box, frame.t, frame.utc, frame.seq,
                                   (full.shape[1], full.shape[0]), payload=self.records.patch(full, box)))
        return out

    def _count(self, c: PlateCandidates) -> None:
        h = self.health
        h.time("detect_ms", c.detect_ms)
        h.count("detections", len(c))
        if c.read.any():
            h.time("read_ms", c.read_ms)
        h.count("reads_skipped", sum(k is not None for k in c.settled))
        h.count("too_small", int(c.small.sum()))  # [pipeline] min_plate_width: not read, not tracked
        # counted only for boxes the detector calls plates (a verify-band box needed a read)
        h.count("cut_by_edge", int((c.cut & ~c.band).sum()))
        h.count("rereads", c.rereads)

    def _emit(self, passes: list[Pass]) -> None:
        for p in passes:
            t0 = time.perf_counter()
            rec = self.records.build(p, read_id=self.watch.passed(p) if self.watch is not None else None)
            self.outbox.put(rec.read_id, self.topic, rec.to_json())
            self.health.time("record_ms", (time.perf_counter() - t0) * 1000)
            self.health.count("reads")
            if self.keep_reads:
                self.reads.append(rec)
            if self.notify:
                self.notify()
            if self.on_read:
                self.on_read(rec)
