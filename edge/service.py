"""The device service: capture -> detect/read -> track -> enrich -> outbox -> MQTT.

Capture runs in its own thread and never waits for inference: frames go through a bounded queue
that drops the oldest frame when full (counted). The inference loop gates on motion and frame
skipping so an idle scene costs little CPU, tracks plates across frames, and turns each finished
vehicle pass into a `Read` that is committed to the outbox before it counts.
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import queue
import re
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import cv2
import numpy as np

from edge import __version__
from edge.capture.base import Frame, FrameSource
from edge.gps import GpsSource
from edge.outbox import Outbox
from edge.record import Box, Camera, Device, Gps, Images, Plate, Read, Track, uuid7
from edge.record import Candidate as RecCandidate
from edge.tracking import Observation, Pass, Tracker, TrackerConfig, iou
from edge.vision.detector import Detections
from edge.vision.geometry import nms
from edge.vision.reader import REGION_FORMATS, fits

log = logging.getLogger("edge.service")


# ---------------------------------------------------------------- systemd


class SdNotify:
    """sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET."""

    def __init__(self, env: dict[str, str] | None = None):
        env = dict(os.environ) if env is None else env
        self.addr = env.get("NOTIFY_SOCKET")
        usec = env.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None
        self.sock = None
        if self.addr:
            if self.addr.startswith("@"):
                self.addr = "\0" + self.addr[1:]
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, msg: str) -> None:
        if self.sock is not None:
            try:
                self.sock.sendto(msg.encode(), self.addr)
            except OSError as e:
                log.debug("sd_notify failed: %s", e)


# ---------------------------------------------------------------- helpers


def cpu_temperature() -> float | None:
    try:
        with open("/sys/class/thermal/thermal_zone0/temp") as f:
            return round(int(f.read().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


REGION_PATTERNS = [
    ("br", re.compile(r"^[A-Z]{3}[0-9][A-J][0-9]{2}$")),  # Mercosur (fifth: the old digit written A-J)
    ("uk", re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z]{3}$")),  # current UK format
]


def region_guess(text: str, site_regions: tuple[str, ...] = ()) -> str | None:
    """Only formats that identify their region; None where a text could be from many places. A site
    that names its regions (`[pipeline] regions`) is asked first: the one of them whose plate formats
    the text fits. The UK's current series has the shape of Romania's, so at a site in Europe (`eu`)
    that shape alone says only `eu`."""
    fitting = [r for r in site_regions if any(fits(text, f) for f in REGION_FORMATS.get(r, ()))]
    if len(fitting) == 1:
        return fitting[0]
    for region, pat in REGION_PATTERNS:
        if pat.match(text) and not (region == "uk" and "eu" in site_regions):
            return region
    return None


def encode_jpeg(img: np.ndarray, quality: int, limit: int) -> bytes:
    q = quality
    im = img
    while True:
        ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q])
        data = buf.tobytes() if ok else b""
        if len(data) <= limit:
            return data
        if q > 40:
            q -= 15
        else:
            im = cv2.resize(im, (max(16, im.shape[1] // 2), max(8, im.shape[0] // 2)), interpolation=cv2.INTER_AREA)


class DropOldestQueue:
    def __init__(self, maxsize: int):
        self.q: queue.Queue = queue.Queue(maxsize)
        self.dropped = 0

    def put(self, item) -> None:
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

    def get(self, timeout: float):
        return self.q.get(timeout=timeout)

    def qsize(self) -> int:
        return self.q.qsize()


class MotionGate:
    """Fraction of changed pixels on a small greyscale copy of the frame."""

    def __init__(self, threshold: float, size=(160, 90)):
        self.threshold, self.size = threshold, size
        self.prev: np.ndarray | None = None

    def moving(self, img: np.ndarray) -> bool:
        small = cv2.cvtColor(cv2.resize(img, self.size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        small = cv2.GaussianBlur(small, (3, 3), 0)
        prev, self.prev = self.prev, small
        if prev is None:
            return True
        changed = np.count_nonzero(cv2.absdiff(small, prev) > 18) / small.size
        return changed >= self.threshold


@dataclass
class StageTimes:
    keep: int = 200
    data: dict[str, collections.deque] = field(default_factory=dict)

    def add(self, name: str, ms: float) -> None:
        self.data.setdefault(name, collections.deque(maxlen=self.keep)).append(ms)

    def medians(self) -> dict[str, float]:
        return {k: round(statistics.median(v), 2) for k, v in self.data.items() if v}


@dataclass
class Identity:
    device_id: str
    camera: Camera
    detector_model: str = "unknown"
    reader_model: str = "unknown"


@dataclass
class PipelineOptions:
    queue_size: int = 4
    detect_every: int = 1
    motion_gate: bool = True
    motion_threshold: float = 0.004
    idle_detect_every_s: float = 1.0
    plate_jpeg_quality: int = 85
    vehicle_image: bool = False
    vehicle_max_px: int = 640
    topic: str = "lpr/v1/unknown/reads"
    settle_frames: int = 4  # a track read the same way this many frames running is not read again (0: always read)
    settle_confidence: float = 0.9
    full_detect_every: int = 3  # with plates being tracked, look at the whole frame every Nth frame and
    # only around the tracked plates in between (1: always the whole frame)


class Pipeline:
    def __init__(
        self,
        source: FrameSource,
        recognizer,
        outbox: Outbox,
        identity: Identity,
        gps: GpsSource,
        options: PipelineOptions | None = None,
        tracker: Tracker | None = None,
        on_read: Callable[[Read], None] | None = None,
        notify: Callable[[], None] | None = None,
        read_id: Callable[[Pass], str] | None = None,
        checkpoint: Callable[[int], None] | None = None,
        keep_reads: bool = False,
    ):
        self.source = source
        self.recognizer = recognizer
        self.outbox = outbox
        self.identity = identity
        self.gps = gps
        self.o = options or PipelineOptions()
        self.tracker = tracker or Tracker(TrackerConfig())
        self.on_read = on_read
        self.notify = notify
        self.frames = DropOldestQueue(self.o.queue_size)
        self.stop_event = threading.Event()
        self.times = StageTimes()
        self.gate = MotionGate(self.o.motion_threshold)
        self.counts = collections.Counter()
        self.started = time.monotonic()
        self._capture_done = threading.Event()
        self.capture_error: Exception | None = None
        self.reads: list[Read] = []  # only filled with keep_reads (tests, benchmarks): a service runs for months
        self.keep_reads = keep_reads
        self._since_full = 0
        self.read_id = read_id or (lambda p: uuid7(int((p.best.utc or datetime.now(UTC)).timestamp() * 1000)))
        self.checkpoint = checkpoint
        self._last_checkpoint = 0.0

    # ---------------------------------------------------------- threads

    def _capture(self) -> None:
        try:
            for f in self.source.frames():
                self.counts["captured"] += 1
                self.frames.put(f)
                if self.stop_event.is_set():
                    break
        except Exception as e:  # a source failing for good ends the run, reported by run()
            self.capture_error = e
            log.error("capture failed: %s", e)
        finally:
            self._capture_done.set()

    def run(self, blocking_queue: bool = False) -> None:
        """Process frames until the source ends or stop() is called; then flush open tracks.

        `blocking_queue` (fast replays, benchmarks): capture waits for inference instead of
        dropping frames, so every frame of a file is looked at.
        """
        if blocking_queue:
            self.frames = _BlockingQueue(self.o.queue_size)
        th = threading.Thread(target=self._capture, name="capture", daemon=True)
        th.start()
        last_detect = -1e9
        while True:
            try:
                frame: Frame = self.frames.get(timeout=0.2)
            except queue.Empty:
                if self._capture_done.is_set() or self.stop_event.is_set():
                    break
                if not blocking_queue:  # live sources: end tracks on time (files keep video time)
                    self._emit(self.tracker.update([], time.monotonic()))
                continue
            self.counts["processed"] += 1
            t0 = time.perf_counter()
            if frame.seq % self.o.detect_every != 0:
                self.counts["skipped"] += 1
                continue
            if self.o.motion_gate and not self.tracker.tracks:
                moving = self.gate.moving(frame.image)
                self.times.add("motion_ms", (time.perf_counter() - t0) * 1000)
                if not moving and frame.t - last_detect < self.o.idle_detect_every_s:
                    self.counts["idle"] += 1
                    self._emit(self.tracker.update([], frame.t))
                    continue
            elif self.o.motion_gate:
                self.gate.moving(frame.image)  # keep the reference frame current
            last_detect = frame.t
            obs = self._observe(frame)
            self.times.add("pipeline_ms", (time.perf_counter() - t0) * 1000)
            self._emit(self.tracker.update(obs, frame.t))
            if self.checkpoint and time.monotonic() - self._last_checkpoint > 0.5:
                # frames before this one are finished with: every pass they hold is in the outbox
                open_first = [tr.obs[0].frame_seq for tr in self.tracker.tracks if not tr.emitted]
                self.checkpoint(min(open_first, default=frame.seq + 1))
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

    # ---------------------------------------------------------- stages

    def _settled(self, box) -> Observation | None:
        """The last read of a track whose text is settled (the same text several frames running, each
        of its characters read with at least settle_confidence) that this box continues; reading it
        again would only cost time. One unsure character keeps the track being read: a closer, sharper
        view may settle it (a whole read's confidence can be high while one look-alike is a guess)."""
        for tr in self.tracker.tracks:
            recent = tr.obs[-self.o.settle_frames :]
            if (len(recent) == self.o.settle_frames and iou(tr.last.box, box) >= 0.3
                    and all(o.text == tr.last.text and min(o.char_confidences, default=o.confidence) >= self.o.settle_confidence
                            for o in recent)):
                return tr.last
        return None

    def _detect(self, frame: Frame):
        """Whole frame, or (between whole-frame looks) only the regions where tracked plates should be."""
        det = self.recognizer.detector
        tracks = [tr for tr in self.tracker.tracks if frame.t - tr.last.t <= self.tracker.c.max_gap_s]
        if self.o.full_detect_every <= 1 or not tracks or self._since_full + 1 >= self.o.full_detect_every:
            self._since_full = 0
            self.counts["full_detections"] += 1
            return det.detect(frame.image, self.recognizer.detect_threshold)
        self._since_full += 1
        s = frame.scale
        boxes, scores = [], []
        for tr in tracks:
            x1, y1, x2, y2 = (v / s for v in tr.predicted_box(frame.t))
            bw, bh = max(x2 - x1, 8.0), max(y2 - y1, 4.0)
            region = (int(x1 - 1.0 * bw), int(y1 - 2.0 * bh), int(x2 + 1.0 * bw), int(y2 + 2.0 * bh))
            d = det.detect_region(frame.image, region, self.recognizer.detect_threshold)
            boxes.append(d.boxes)
            scores.append(d.scores)
        self.counts["region_detections"] += 1
        b = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
        sc = np.concatenate(scores) if scores else np.zeros((0,), np.float32)
        keep = nms(b, sc, 0.3, 0.4) if len(sc) else np.zeros(0, np.int64)
        return Detections(b[keep], sc[keep])

    def _observe(self, frame: Frame) -> list[Observation]:
        t0 = time.perf_counter()
        dets = self._detect(frame)
        t1 = time.perf_counter()
        self.times.add("detect_ms", (t1 - t0) * 1000)
        self.counts["detections"] += len(dets)
        if not len(dets):
            return []
        full = frame.full_image
        boxes = dets.boxes * frame.scale
        known = [self._settled(b) if self.o.settle_frames else None for b in boxes]
        h, w = full.shape[:2]
        # a box cut by the frame's edge holds at best part of a plate (the vehicle is read in other
        # frames): not worth reading. "Cut" is when the reader's crop (the box grown by the margins it
        # was trained with) does not fit in the frame: the text may go on past the edge unseen.
        mx, my = self.recognizer.reader.margin_x, self.recognizer.reader.margin_y
        cut = [b[0] - mx * (b[2] - b[0]) < 0 or b[1] - my * (b[3] - b[1]) < 0 or b[2] + mx * (b[2] - b[0]) > w
               or b[3] + my * (b[3] - b[1]) > h for b in boxes]
        small = ~self.recognizer.wide_enough(boxes)
        todo = [i for i, k in enumerate(known) if k is None and not cut[i] and not small[i]]
        # the verify band's boxes beyond the detector's verify_max_boxes are not read (nor tracked)
        kept = self.recognizer.band_kept(dets.scores, todo)
        unread, todo = set(todo) - set(kept), kept
        # each box is read from its cut moved onto the plate's edges (PlateRecognizer.refine); the track
        # follows the detector's boxes, whose size changes with distance the same way from frame to frame
        cuts = self.recognizer.refine(full, boxes[todo]) if todo else boxes[todo]
        reads = dict(zip(todo, self.recognizer.reader.read(self.recognizer.crops(full, cuts)) if todo else []))
        if todo:
            self.times.add("read_ms", (time.perf_counter() - t1) * 1000)
        self.counts["reads_skipped"] += sum(k is not None for k in known)
        out = []
        for i, box in enumerate(boxes):
            x1, y1, x2, y2 = (float(v) for v in box)
            if small[i]:
                self.counts["too_small"] += 1  # [pipeline] min_plate_width: not read, not tracked
                continue
            if known[i] is not None:
                k = known[i]
                text, conf, cc = k.text, k.confidence, k.char_confidences
            elif i in unread:
                continue
            elif cut[i]:
                # counted only for boxes the detector calls plates (a verify-band box needed a read)
                self.counts["cut_by_edge"] += int(dets.scores[i] >= self.recognizer.detector.threshold)
                continue
            else:
                r = reads[i]
                if not self.recognizer.accepts(float(dets.scores[i]), r):
                    continue
                text, conf, cc = r.text, r.confidence, r.char_confidences
            out.append(Observation(text, conf, cc, (x1, y1, x2, y2), frame.t, frame.utc, frame.seq,
                                   (full.shape[1], full.shape[0]), payload=self._patch(full, (x1, y1, x2, y2))))
        return out

    def _region(self, box, w: int, h: int) -> tuple[int, int, int, int]:
        """The part of the frame a record may need: the plate with margin, or the vehicle."""
        x1, y1, x2, y2 = box
        bw, bh = x2 - x1, y2 - y1
        if self.o.vehicle_image:
            fx0, fy0, fx1, fy1 = 2.0, 4.0, 2.0, 1.5
        else:
            fx0, fy0, fx1, fy1 = 0.1, 0.2, 0.1, 0.2
        return (max(0, int(x1 - fx0 * bw)), max(0, int(y1 - fy0 * bh)), min(w, int(x2 + fx1 * bw)), min(h, int(y2 + fy1 * bh)))

    def _patch(self, full: np.ndarray, box) -> tuple[np.ndarray, int, int]:
        # a copy of just that region, so tracks do not keep whole frames alive
        x1, y1, x2, y2 = self._region(box, full.shape[1], full.shape[0])
        return full[y1:y2, x1:x2].copy(), x1, y1

    def _emit(self, passes: list[Pass]) -> None:
        for p in passes:
            t0 = time.perf_counter()
            rec = self.build_read(p)
            self.outbox.put(rec.read_id, self.o.topic, rec.to_json())
            self.times.add("record_ms", (time.perf_counter() - t0) * 1000)
            self.counts["reads"] += 1
            if self.keep_reads:
                self.reads.append(rec)
            if self.notify:
                self.notify()
            if self.on_read:
                self.on_read(rec)

    def build_read(self, p: Pass) -> Read:
        patch, ox, oy = p.best.payload
        x1, y1, x2, y2 = p.best.box
        bw, bh = x2 - x1, y2 - y1
        ph, pw = patch.shape[:2]
        cx1, cy1 = max(0, int(x1 - 0.1 * bw) - ox), max(0, int(y1 - 0.2 * bh) - oy)
        cx2, cy2 = min(pw, int(x2 + 0.1 * bw) - ox), min(ph, int(y2 + 0.2 * bh) - oy)
        plate_jpeg = base64.b64encode(encode_jpeg(patch[cy1:cy2, cx1:cx2], self.o.plate_jpeg_quality, 60_000)).decode()
        vehicle_jpeg = None
        if self.o.vehicle_image:
            v = patch
            s = min(1.0, self.o.vehicle_max_px / max(v.shape[:2]))
            if s < 1:
                v = cv2.resize(v, (int(v.shape[1] * s), int(v.shape[0] * s)), interpolation=cv2.INTER_AREA)
            vehicle_jpeg = base64.b64encode(encode_jpeg(v, 80, 250_000)).decode()
        fa = self.gps.fix_at(p.best.t)
        f = fa.fix
        gps = Gps(
            status=fa.status,
            lat=f.lat if f else None,
            lon=f.lon if f else None,
            alt_m=f.alt_m if f else None,
            mode=f.mode if f else None,
            fix_age_s=fa.age_s,
            accuracy_m=f.accuracy_m if f else None,
            speed_mps=f.speed_mps if f else None,
            heading_deg=f.heading_deg if f else None,
            source=fa.source,  # type: ignore[arg-type]
        )
        heading = f.heading_deg if (f and self.identity.camera.mounting == "vehicle") else None
        utc = p.best.utc or datetime.now(UTC)
        return Read(
            read_id=self.read_id(p),
            time=utc,
            plate=Plate(
                text=p.text,
                confidence=min(1.0, p.confidence),
                char_confidences=[min(1.0, c) for c in p.char_confidences],
                region=region_guess(p.text, tuple(self.recognizer.config.regions)),
                box=Box(x1=round(x1, 1), y1=round(y1, 1), x2=round(x2, 1), y2=round(y2, 1)),
                candidates=[RecCandidate(text=c.text, confidence=min(1.0, c.confidence), votes=c.votes)
                            for c in p.candidates if 2 <= len(c.text) <= 10],
            ),
            images=Images(plate_jpeg=plate_jpeg, vehicle_jpeg=vehicle_jpeg),
            track=Track(first_seen=p.first.utc or utc, last_seen=p.last.utc or utc, frames=p.frames,
                        direction=p.direction, lateral=p.lateral, heading_deg=heading),  # type: ignore[arg-type]
            gps=gps,
            camera=self.identity.camera,
            device=Device(id=self.identity.device_id, software=__version__, detector_model=self.identity.detector_model,
                          reader_model=self.identity.reader_model),
        )

    # ---------------------------------------------------------- health

    def health(self) -> dict:
        up = max(1e-6, time.monotonic() - self.started)
        return {
            "device_id": self.identity.device_id,
            "time": datetime.now(UTC).isoformat(),
            "uptime_s": round(up, 1),
            "fps_captured": round(self.counts["captured"] / up, 2),
            "fps_processed": round(self.counts["processed"] / up, 2),
            "frames": dict(self.counts),
            "frames_dropped": self.frames.dropped,
            "queue_depth": self.frames.qsize(),
            "outbox_backlog": self.outbox.backlog(),
            "outbox": self.outbox.counters(),
            "gps": self.gps.state(),
            "stage_ms": self.times.medians(),
            "cpu_temp_c": cpu_temperature(),
            "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "source": self.source.stats(),
        }


class _BlockingQueue(DropOldestQueue):
    def put(self, item) -> None:
        self.q.put(item)
