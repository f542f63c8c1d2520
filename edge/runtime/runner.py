"""Builds the device service from a Config and runs it (`edge run`, `edge replay`)."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge.capture.base import CaptureError, FrameSource
from edge.capture.sources import VideoFileSource, open_source
from edge.config import Config, resolve_secret
from edge.gps import FixedGps, GpsdClient, GpsSource, NmeaSerial, NoGps
from edge.mqtt import MqttSettings
from edge.outbox import Outbox
from edge.record import Read, uuid7
from edge.runtime.loop import FrameLoop
from edge.runtime.publisher import Publisher
from edge.runtime.systemd import SdNotify
from edge.tracking import Pass

log = logging.getLogger("edge.runner")

EXIT_OK = 0
EXIT_USAGE = 2  # bad config or arguments
EXIT_SOURCE = 3  # camera missing, video unreadable
EXIT_BROKER = 4  # reads could not be delivered (kept in the outbox)
EXIT_RUNTIME = 5  # models or outbox unusable
HOTLIST_WAIT_S = 5.0  # a replay on a device with no hotlist yet waits this long for the collector's


class RunError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def build_gps(cfg: Config) -> GpsSource:
    g = cfg.gps
    if g.mode == "fixed" and g.lat is not None and g.lon is not None:  # the config requires both
        return FixedGps(g.lat, g.lon, g.alt_m, max_age_s=g.max_age_s)
    if g.mode == "gpsd":
        return GpsdClient(g.host, g.port, max_age_s=g.max_age_s)
    if g.mode == "nmea" and g.device:
        return NmeaSerial(g.device, g.baud, max_age_s=g.max_age_s)
    return NoGps(max_age_s=g.max_age_s)


def mqtt_settings(cfg: Config) -> MqttSettings:
    m = cfg.mqtt
    password = m.password
    if m.password_file is not None:
        password = Path(resolve_secret(m.password_file) or m.password_file).read_text().strip()
    return MqttSettings(
        host=m.host, port=m.port, keepalive=m.keepalive, client_id=m.client_id, protocol=m.protocol,
        topic_prefix=m.topic_prefix, username=m.username, password=password, tls=m.tls,
        cafile=str(m.cafile) if m.cafile else None, certfile=str(m.certfile) if m.certfile else None,
        keyfile=str(resolve_secret(m.keyfile)) if m.keyfile else None, health_interval_s=m.health_interval_s,
        receipts=m.receipts,
    )


def outbox_key(cfg: Config) -> bytes | None:
    """The outbox's sealing key from `[outbox] key_file` (32 raw bytes, or 64 hex digits); a missing
    or malformed key is one clear line."""
    f = cfg.outbox.key_file
    if f is None:
        return None
    path = resolve_secret(f)
    try:
        raw = Path(str(path)).read_bytes()
    except OSError as e:
        hint = " (a systemd credential: the unit's LoadCredential= hands it over)" if str(path).startswith("credential:") else ""
        raise RunError(f"outbox.key_file {path}: {e.strerror or e}{hint}", EXIT_USAGE) from None
    text = raw.strip()
    if len(text) == 64 and all(c in b"0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text.decode())
    if len(raw) == 32:
        return raw
    raise RunError(f"outbox.key_file {path}: expected 32 bytes (head -c 32 /dev/urandom > FILE), got {len(raw)}", EXIT_USAGE)


def replay_key(path: Path) -> str:
    st = path.stat()
    return f"replay:{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def replay_read_id(key: str) -> Callable[[Pass], str]:
    """Replays give the same read the same id every time, so a restarted replay never doubles a read."""

    def make(p: Pass) -> str:
        ms = int(p.first.utc.timestamp() * 1000) if p.first.utc else 0
        rnd = hashlib.sha256(f"{key}|{p.first.frame_seq}|{p.text}".encode()).digest()[:10]
        return uuid7(ms, rnd)

    return make


def format_read(r: Read) -> str:
    """One read on one line: time, plate, confidence, track, where (GPS), whose camera, id."""
    p, g, c = r.plate, r.gps, r.camera
    where = f"{g.lat:.5f},{g.lon:.5f} ({g.status})" if g.lat is not None and g.lon is not None else g.status
    owner = ", ".join(x for x in (c.owner, c.site) if x)
    return (f"{r.time.strftime('%H:%M:%S.%f')[:-3]}  {p.text:<10} conf {p.confidence:.2f}  frames {r.track.frames:3d}  "
            f"{r.track.direction}/{r.track.lateral}  region {p.region or '-'}  gps {where}  camera {c.id} ({owner})  id {r.read_id}")


@dataclass
class RunOptions:
    source: str | None = None  # override cfg.camera.source
    pace: bool = True
    loop: bool = False
    publish: bool = True
    replay: bool = False
    restart: bool = False  # replay: ignore a saved position
    flush_timeout_s: float = 10.0
    json_out: bool = False
    print_reads: bool = True


class Runner:
    def __init__(self, cfg: Config, opts: RunOptions, out=None):
        self.cfg = cfg
        self.o = opts
        self.out = out or sys.stdout
        self.stop_event = threading.Event()
        self.pipeline: FrameLoop | None = None
        self.publisher: Publisher | None = None

    def _print(self, r: Read) -> None:
        if self.publisher is not None:
            self.publisher.read_made(r)
        if self.pipeline is not None and self.pipeline.preview is not None:
            self.pipeline.preview.read(r)
        if not self.o.print_reads:
            return
        if self.o.json_out:
            d = json.loads(r.to_json())
            d.get("images", {}).pop("plate_jpeg", None)
            d.get("images", {}).pop("vehicle_jpeg", None)
            self.out.write(json.dumps(d) + "\n")
        else:
            self.out.write(format_read(r) + "\n")
        self.out.flush()

    def run(self) -> int:
        cfg = self.cfg
        from edge.outbox import OutboxError
        from edge.runtime.assembly import build_loop, build_stage, describe
        from edge.vision.session import ModelError

        try:
            stage = build_stage(cfg.pipeline)
        except ModelError as e:
            raise RunError(str(e), EXIT_RUNTIME) from None
        source_spec = self.o.source or cfg.camera.source
        outbox_path, scratch = self._outbox_path(source_spec)
        try:
            outbox = Outbox(outbox_path, key=outbox_key(cfg), max_age_s=cfg.outbox.max_age_days * 86400, max_bytes=int(cfg.outbox.max_mb * 1e6),
                            min_free_bytes=int(cfg.outbox.min_free_mb * 1e6), receipts=cfg.mqtt.receipts and self.o.publish,
                            receipt_wait_s=cfg.mqtt.receipt_wait_s)
        except OutboxError as e:
            raise RunError(str(e), EXIT_RUNTIME) from None
        alerts, hotlist = self._hotlist(outbox_path, outbox)
        state_key = None
        start_frame, utc0, ended = 0, None, False
        if self.o.replay:
            p = Path(source_spec)
            if p.is_file():
                state_key = replay_key(p)
                saved = outbox.get_state(state_key)
                if saved and not self.o.restart:
                    st = json.loads(saved)
                    start_frame, utc0, ended = int(st["resume"]), datetime.fromisoformat(st["utc0"]), bool(st.get("ended"))
                    if ended:
                        print(f"edge replay: {p} was read to its end by the last replay, which stopped before its reads "
                              f"were all delivered: sending the {outbox.backlog()} left (--restart starts over)", file=sys.stderr)
                    else:
                        print(f"edge replay: resuming {p} at frame {start_frame}: the last replay of it was interrupted "
                              "(--restart starts over)", file=sys.stderr)
        source: FrameSource
        try:
            if state_key:
                source = VideoFileSource(source_spec, pace=self.o.pace, loop=self.o.loop, stop=self.stop_event,
                                         start_frame=start_frame, utc0=utc0)
            else:
                c = cfg.camera
                source = open_source(source_spec, pace=self.o.pace, loop=self.o.loop, width=c.width, height=c.height, fps=c.fps,
                                     exposure_us=c.exposure_us, lores_width=c.lores_width, retry_max_s=c.retry_max_s,
                                     stop=self.stop_event)
        except CaptureError as e:
            outbox.close()
            raise RunError(str(e), EXIT_SOURCE) from None
        gps = build_gps(cfg)
        gps.start()
        ha = (cfg.homeassistant.discovery_prefix, cfg.camera.site or cfg.camera.id) if cfg.homeassistant.enabled else None
        pub = Publisher(mqtt_settings(cfg), cfg.device.id, outbox, homeassistant=ha, alerts=alerts, hotlist=hotlist,
                        site=cfg.camera.site) if self.o.publish else None
        checkpoint = None
        if state_key and isinstance(source, VideoFileSource):
            video, key = source, state_key

            def checkpoint(seq: int) -> None:
                outbox.set_state(key, json.dumps({"resume": seq, "utc0": (video.utc0 or datetime.now(UTC)).isoformat()}))

        pl = build_loop(cfg, source, outbox, gps, stage, blocking=bool(state_key) or not self.o.pace, on_read=self._print,
                        notify=pub.notify if pub else None, read_id=replay_read_id(state_key) if state_key else None,
                        checkpoint=checkpoint)
        self.pipeline = pl
        if alerts is not None and hotlist is not None:
            from edge.runtime.alerts import AlertWatch

            pl.watch = AlertWatch(hotlist, alerts, pl.records, pub.t["alerts"] if pub else "alerts", cfg.hotlist.repeat_window_s,
                                  notify=pub.alert_made if pub else None)
            pl.health.provide("hotlist", hotlist.health)
            pl.health.provide("alerts_backlog", alerts.backlog)
            pl.health.provide("alerts", lambda: pl.watch.alerts)
        if pub:
            pub.health = pl.health.snapshot
            pub.start()
            self.publisher = pub
        sd = SdNotify()
        self._install_signals()
        hb = threading.Thread(target=self._heartbeat, args=(sd, pl), daemon=True)
        hb.start()
        metrics = None
        if cfg.metrics.listen:
            from edge.metrics import DeviceMetrics, serve

            host, port = cfg.metrics.address
            token = None
            if cfg.metrics.token_file is not None:
                token = Path(str(resolve_secret(cfg.metrics.token_file))).read_text().strip()
            try:
                metrics = serve(host, port, DeviceMetrics(pl.health), token=token)
            except OSError as e:
                log.error("metrics: cannot listen on %s: %s (the reader runs on without them)", cfg.metrics.listen, e.strerror or e)
        preview = None
        if cfg.preview.enabled:
            from edge.preview import PreviewFeed
            from edge.preview import serve as serve_preview

            pl.preview = PreviewFeed(cfg.pipeline.min_plate_width)
            host, port = cfg.preview.address
            token = None
            if cfg.preview.token_file is not None:
                token = Path(str(resolve_secret(cfg.preview.token_file))).read_text().strip()
            try:
                preview = serve_preview(host, port, pl.preview, cfg.device.id, pl.health.snapshot, token=token)
                log.info("preview on http://%s:%s/ (live video: every opening is logged)", host, port)
            except OSError as e:
                log.error("preview: cannot listen on %s: %s (the reader runs on without it)", cfg.preview.listen, e.strerror or e)
        sd.send("READY=1")
        log.info("running: device %s, source %s, outbox %s", cfg.device.id, source_spec, outbox_path)
        say = log.debug if self.o.replay else log.info  # a service's log names what it runs; a replay stays quiet
        for line in describe(stage, cfg.pipeline):
            say("%s", " ".join(line.split()))
        if pub and not pub.wait_connected(3.0):
            log.warning("broker %s:%s not reachable yet; reads are kept in the outbox until it is", cfg.mqtt.host, cfg.mqtt.port)
        elif pub and hotlist is not None and hotlist.version == 0 and self.o.replay:
            # a replay with no list yet waits a moment for the collector's, so that what it alerts on does not
            # depend on how fast the list came (a live camera starts at once and matches once it is there)
            end = time.monotonic() + HOTLIST_WAIT_S
            while hotlist.version == 0 and time.monotonic() < end and not self.stop_event.is_set():
                time.sleep(0.05)
            if hotlist.version == 0:
                log.warning("hotlist: no list from the collector within %g s; this replay matches nothing", HOTLIST_WAIT_S)
        code = EXIT_OK
        failure: Exception | None = None
        try:
            if not ended:
                pl.run()
        except Exception as e:  # the run ends, but what was read is kept and still sent below
            failure = e
            log.exception("pipeline failed")
            pl.stop()
        sd.send("STOPPING=1")
        if state_key and failure is None and not self.stop_event.is_set():
            # read to the end: until every read is delivered, a restart sends what is left and reads nothing
            # again (a fresh play would make the same passes again, at other times, under other ids)
            t0 = source.utc0 if isinstance(source, VideoFileSource) and source.utc0 else utc0 or datetime.now(UTC)
            outbox.set_state(state_key, json.dumps({"resume": start_frame, "utc0": t0.isoformat(), "ended": True}))
        if failure is not None:
            code = EXIT_RUNTIME
            print(f"edge: error: {type(failure).__name__}: {str(failure).splitlines()[0] if str(failure) else ''} "
                  f"(reads made so far are kept in {outbox_path})", file=sys.stderr)
        elif pl.capture_error is not None:
            code = EXIT_SOURCE
            print(f"edge: error: capture failed: {pl.capture_error}", file=sys.stderr)
        if pub:
            delivered = pub.flush(self.o.flush_timeout_s)
            pub.stop(flush_timeout=0.5)
            if not delivered:
                n, waiting = pub.backlog(), outbox.awaiting_receipt() + (alerts.awaiting_receipt() if alerts else 0)
                if waiting:
                    why = (f"the broker took {waiting} read(s) but no receipt from the collector came (is it running, and "
                           f"are this device's topics allowed?)")
                else:
                    why = f"broker {cfg.mqtt.host}:{cfg.mqtt.port} unreachable or not acknowledging"
                print(f"edge: error: {why}; {n} read(s) kept in outbox {outbox_path} and sent on the next start", file=sys.stderr)
                code = code or EXIT_BROKER
        gps.stop()
        if metrics is not None:
            metrics.shutdown()
        if preview is not None:
            preview.shutdown()
        done = failure is None and (pub is None or pub.backlog() == 0)
        if state_key and done:
            # every read delivered: the next replay of this clip plays it afresh. A replay stopped (Ctrl-C,
            # SIGTERM) with reads left, or a crash (kill -9, power loss), leaves its position to resume from
            outbox.set_state(state_key, None)
            if self.stop_event.is_set():
                print(f"edge replay: stopped at frame {pl.health['captured']}; the next replay of this clip starts from "
                      "the beginning", file=sys.stderr)
        outbox.close()
        if alerts is not None:
            alerts.close()
        if scratch and done:  # nothing left to deliver, no position to resume: the replay's own outbox goes
            for base in (outbox_path, self._alerts_path(outbox_path)):
                for f in (base, Path(f"{base}-wal"), Path(f"{base}-shm")):
                    f.unlink(missing_ok=True)
        return code

    @staticmethod
    def _alerts_path(outbox_path: Path) -> Path:
        return outbox_path.with_name(outbox_path.stem + "-alerts.db")

    def _hotlist(self, outbox_path: Path, outbox: Outbox):
        """(alerts outbox, hotlist store) when [hotlist] is on, else (None, None)."""
        cfg = self.cfg
        if not cfg.hotlist.enabled or cfg.hotlist.public_key is None:
            return None, None
        from edge.hotlist import BundleError, load_public_key
        from edge.outbox import OutboxError
        from edge.runtime.alerts import HotlistStore

        try:
            key = load_public_key(cfg.hotlist.public_key)
            alerts = Outbox(self._alerts_path(outbox_path), key=outbox_key(cfg), max_age_s=cfg.outbox.max_age_days * 86400,
                            max_bytes=int(cfg.outbox.max_mb * 1e6), min_free_bytes=int(cfg.outbox.min_free_mb * 1e6),
                            receipts=cfg.mqtt.receipts and self.o.publish, receipt_wait_s=cfg.mqtt.receipt_wait_s)
        except (BundleError, OutboxError) as e:
            outbox.close()
            raise RunError(str(e), EXIT_USAGE if isinstance(e, BundleError) else EXIT_RUNTIME) from None
        return alerts, HotlistStore(cfg.hotlist_path, key)

    def _outbox_path(self, source_spec: str) -> tuple[Path, bool]:
        """The outbox, and whether it is the replay's own. A replay whose outbox is not named
        (`--outbox`, `[outbox] path`) gets one for that clip: reads of a replay without MQTT never
        reach a later run's broker, and it is removed when the replay ends with nothing left to send
        (after a crash it stays, for the next replay of the clip to resume from)."""
        cfg = self.cfg
        if not (self.o.replay and cfg.outbox.path is None and Path(source_spec).is_file()):
            return cfg.outbox_path, False
        clip = Path(source_spec).resolve()
        tag = hashlib.sha256(str(clip).encode()).hexdigest()[:8]
        return cfg.device.state_dir / f"replay-{clip.stem[:40]}-{tag}.db", True

    def _heartbeat(self, sd: SdNotify, pl: FrameLoop) -> None:
        """Pets systemd's watchdog while the frame loop makes progress. Nothing here may end the
        thread: a status line that fails is logged and the pings go on."""
        interval = min(5.0, sd.watchdog_s / 2) if sd.watchdog_s else 5.0
        last_processed = -1
        last_progress = time.monotonic()
        while not pl.stop_event.wait(interval):
            n = pl.health["processed"]
            if n != last_processed or pl.frames.qsize() == 0:
                last_progress = time.monotonic()
            last_processed = n
            # only pet the watchdog while the inference loop makes progress
            if time.monotonic() - last_progress < max(30.0, 3 * interval):
                sd.send("WATCHDOG=1")
            try:
                h = pl.health.snapshot()
                sd.send(f"STATUS=fps {h['fps_processed']}, backlog {h.get('outbox_backlog')}, gps {h.get('gps')}")
                log.debug("health %s", json.dumps(h, default=str))
            except Exception as e:  # the watchdog pings above must go on whatever the status does
                log.warning("health status failed: %s: %s", type(e).__name__, e)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum, frame):
            log.info("signal %s: stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def stop(self) -> None:
        self.stop_event.set()
        if self.pipeline:
            self.pipeline.stop()
