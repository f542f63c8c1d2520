"""Ingest: validate each MQTT message, store good reads once, put bad ones in `rejects`.

The subscriber uses an MQTT 5 shared subscription (`$share/<group>/lpr/v1/+/reads`) so several
collectors split the stream, and a persistent session (clean start off, long session expiry) so
the broker queues while a collector is down. PUBACKs are sent by hand, only after the batch that
holds the message is committed: an accepted read is never lost, a redelivered one is a no-op.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import re
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

from edge.collector import SESSION_EXPIRY_S
from edge.collector.partitions import day_of
from edge.collector.store import Store, sha256
from edge.plates import fold
from edge.record import MAX_RECORD_BYTES, SCHEMA_ID, Read

log = logging.getLogger("edge.collector")

MAX_PAYLOAD = MAX_RECORD_BYTES


def fuzzy_key(text: str) -> str:
    """Fold the letters readers confuse with digits (edge.plates.fold), so O/0, I/1, Z/2, S/5, B/8 read alike."""
    return fold(text)


class Reject(Exception):
    pass


def _depth_ok(raw: bytes, limit: int = 32) -> bool:
    depth = 0
    in_str = esc = False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x7B, 0x5B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x7D, 0x5D):
            depth -= 1
    return True


MAX_IMAGE_SIDE = 4096
_CONTROL = re.compile(rb"\\u00[01][0-9a-fA-F]")


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF header, without decoding it; None if there is none."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + seg
    return None


# characters no field of a record holds: C0/C1 controls (a newline could forge a line of `edge query`),
# and the line/paragraph separators and bidirectional overrides that reorder or break what is shown
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


_BASE64_FIELDS = ("images.plate_jpeg", "images.vehicle_jpeg")


def _loose(obj, where: str = "") -> str | None:
    """What in the parsed JSON the schema's types cannot say: null (a field is left out instead),
    unprintable characters in any string. None when there is nothing."""
    if obj is None:
        return f"null at {where or 'top level'}: leave the field out instead"
    if isinstance(obj, str):
        if where in _BASE64_FIELDS:  # checked as strict base64 by the schema: no such character passes
            return None
        return f"control or unprintable characters in {where}" if _UNPRINTABLE.search(obj) else None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if _UNPRINTABLE.search(k):
                return f"control or unprintable characters in a field name under {where or 'top level'}"
            bad = _loose(v, f"{where}.{k}" if where else k)
            if bad:
                return bad
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            bad = _loose(v, f"{where}[{i}]")
            if bad:
                return bad
    return None


def validate(payload: bytes, topic: str | None = None, images: dict[str, bytes] | None = None) -> Read:
    """The record, or Reject with a one-line reason. `images`, when given, gets the decoded JPEGs by field."""
    if len(payload) > MAX_PAYLOAD:
        raise Reject(f"oversized: {len(payload)} bytes (limit {MAX_PAYLOAD})")
    # a real record has a dozen brackets: only walk the bytes when there are many
    if payload.count(b"{") + payload.count(b"[") > 64 and not _depth_ok(payload):
        raise Reject("JSON nested too deeply")
    try:
        obj = json.loads(payload)
    except RecursionError:
        raise Reject("JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise Reject(f"not JSON: {str(e)[:120]}") from None
    if not isinstance(obj, dict):
        raise Reject("not a JSON object")
    if _CONTROL.search(payload):
        raise Reject("control characters in text fields")
    bad = _loose(obj)
    if bad:
        raise Reject(bad)
    schema = obj.get("schema")
    if schema != SCHEMA_ID:
        raise Reject(f"wrong schema version: {str(schema)[:40]!r} (expected {SCHEMA_ID})")
    decoded: dict[str, bytes] = {}
    try:
        rec = Read.model_validate_json(payload, context={"decoded": decoded})
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise Reject(f"invalid field {where}: {err['msg'][:160]} ({e.error_count()} error(s))") from None
    if topic is not None:
        parts = topic.split("/")
        if len(parts) >= 2 and parts[-1] == "reads" and parts[-2] != rec.device.id:
            raise Reject(f"device.id {rec.device.id!r} does not match the topic's device {parts[-2]!r}")
    for name in ("plate_jpeg", "vehicle_jpeg"):
        b64 = getattr(rec.images, name)
        if b64 is not None:
            raw = decoded[name] if name in decoded else base64.b64decode(b64)
            size = jpeg_size(raw)
            if size is None or not (0 < size[0] <= MAX_IMAGE_SIDE and 0 < size[1] <= MAX_IMAGE_SIDE):
                raise Reject(f"bad image: images.{name} has no usable JPEG header or is larger than {MAX_IMAGE_SIDE} px")
            # every coefficient is still read at an eighth of the size: a broken stream fails as at full size
            img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
            if img is None:
                raise Reject(f"bad image: images.{name} does not decode as JPEG")
            if images is not None:
                images[name] = raw
    return rec


MAX_AHEAD_MS = 10 * 60_000  # how far ahead of the collector's clock a device's time may be


def to_row(rec: Read, now_ms: int, decoded: dict[str, bytes] | None = None) -> tuple[dict, dict[str, bytes]]:
    """The reads row, and the images it names (by SHA-256) for the store to keep. `decoded`: the
    images validate() decoded already."""
    imgs: dict[str, str | None] = {}
    blobs: dict[str, bytes] = {}
    for name in ("plate_jpeg", "vehicle_jpeg"):
        b64 = getattr(rec.images, name)
        if b64:
            raw = decoded[name] if decoded and name in decoded else base64.b64decode(b64)
            h = sha256(raw)
            imgs[name] = h
            blobs[h] = raw
        else:
            imgs[name] = None
    # the stored record keeps the image hashes instead of the bytes
    d = rec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"images"})
    d["images"] = {k: v for k, v in imgs.items() if v}
    return {
        "read_id": rec.read_id,
        "device_id": rec.device.id,
        "camera_id": rec.camera.id,
        "site": rec.camera.site,
        "plate": rec.plate.text,
        "plate_fuzzy": fuzzy_key(rec.plate.text),
        "confidence": rec.plate.confidence,
        # a device clock ahead of ours is not believed: the read is held at (at most) its receive time, so
        # retention deletes it on time (a read dated 2099 would never go); the record keeps the device's time
        "ts": min(int(rec.time.timestamp() * 1000), now_ms + MAX_AHEAD_MS),
        "lat": rec.gps.lat,
        "lon": rec.gps.lon,
        "direction": rec.track.direction,
        "region": rec.plate.region,
        "plate_image": imgs["plate_jpeg"],
        "vehicle_image": imgs["vehicle_jpeg"],
        "record": json.dumps(d, separators=(",", ":")),
        "received": now_ms,
    }, blobs


_READ_ID = re.compile(r"^[0-9a-fA-F-]{32,36}$")


def claimed_read_id(payload: bytes) -> str | None:
    """The read_id a refused message claims, if it names one that looks like a read id."""
    try:
        rid = json.loads(payload).get("read_id")
    except (ValueError, AttributeError, RecursionError, UnicodeDecodeError):
        return None
    return rid if isinstance(rid, str) and _READ_ID.match(rid) else None


@dataclass
class IngestResult:
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    conflict: int = 0
    # per message: (topic, read_id or None, "stored" | "duplicate" | "rejected" | "conflict")
    outcomes: list[tuple[str, str | None, str]] = field(default_factory=list)


@dataclass
class Checked:
    """A batch as Ingestor.check leaves it for Ingestor.commit."""

    now: int
    items: list[tuple[str, bytes, Any]]


class Ingestor:
    """Validates and stores batches of (topic, payload); thread-safe."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time, alerts=None):
        self.store = store
        self.clock = clock
        self.alerts = alerts  # edge.collector.hotlist.Alerts: messages on .../alerts
        self.lag_ms: deque[float] = deque(maxlen=500)
        self.alert_ms: deque[float] = deque(maxlen=500)  # first read on the device -> stored here

    def ingest(self, batch: list[tuple[str, bytes]]) -> IngestResult:
        """Store a batch exactly once: validated first, then in one transaction, reads inserted together
        (multi-row, in read_id order); a read_id already stored is a duplicate, or a conflict when its
        content differs. One outcome per message, in the batch's order."""
        return self.commit(self.check(batch))

    def pipeline(self, batches: Iterable[list[tuple[str, bytes]]]) -> Iterator[IngestResult]:
        """Store a stream of batches as `Collector` does: each batch checked in a second thread while
        the one before it commits (the database's work overlaps the validation's)."""
        from concurrent.futures import ThreadPoolExecutor

        it = iter(batches)
        first = next(it, None)
        if first is None:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="ingest-check") as pool:
            fut = pool.submit(self.check, first)
            for b in it:
                checked = fut.result()
                fut = pool.submit(self.check, b)
                yield self.commit(checked)
            yield self.commit(fut.result())

    def check(self, batch: list[tuple[str, bytes]]) -> Checked:
        """The batch validated and made into rows: no store needed, so a collector checks the next
        batch while the last one commits."""
        now = int(self.clock() * 1000)
        items: list[tuple[str, bytes, Any]] = []  # (topic, payload, (row, blobs, rec) | Reject | None for an alert)
        for topic, payload in batch:
            if topic.endswith("/alerts") and self.alerts is not None:
                items.append((topic, payload, None))
                continue
            try:
                raw: dict[str, bytes] = {}
                rec = validate(payload, topic, raw)
                items.append((topic, payload, (*to_row(rec, now, raw), rec)))
            except Reject as e:
                items.append((topic, payload, e))
        return Checked(now, items)

    def commit(self, checked: Checked) -> IngestResult:
        """Store a checked batch, exactly once, in one transaction."""
        res = IngestResult()
        now, items = checked.now, checked.items
        rows = [c[2][0] for c in items if isinstance(c[2], tuple)]
        if self.store.days is not None and rows:  # PostgreSQL: the days these reads fall on, made first
            self.store.days.ensure({day_of(r["ts"]) for r in rows})
        cams: dict[str, tuple[str | None, float, float, int]] = {}
        with self.store.tx():
            stored = self.store.insert_reads(rows)
            again = sorted({r["read_id"] for r in rows} - stored)
            known: dict[str, str] = {}
            for i in range(0, len(again), 500):
                chunk = again[i : i + 500]
                known.update(self.store.query(f"SELECT read_id, record FROM reads WHERE read_id IN ({', '.join('?' * len(chunk))})",
                                              chunk))
            images: dict[str, tuple[bytes, int]] = {}
            for topic, payload, what in items:
                if what is None:
                    aid, kind = self.alerts.ingest(topic, payload, now)
                    res.outcomes.append((topic, aid, kind))
                    if kind == "rejected":
                        res.rejected += 1
                    elif kind == "conflict":
                        res.conflict += 1
                    continue
                if isinstance(what, Reject):
                    self.store.insert_reject(now, topic, str(what), payload)
                    res.rejected += 1
                    res.outcomes.append((topic, claimed_read_id(payload), "rejected"))
                    continue
                row, blobs, rec = what
                rid = rec.read_id
                if rid in stored:
                    stored.discard(rid)  # the first of the batch's copies is the one stored
                    known[rid] = row["record"]
                    for h, data in blobs.items():
                        if row["ts"] >= images.get(h, (b"", -1))[1]:
                            images[h] = (data, row["ts"])
                    res.stored += 1
                    res.outcomes.append((topic, rid, "stored"))
                    self.lag_ms.append(now - rec.time.timestamp() * 1000)
                    if rec.camera.mounting == "fixed" and row["lat"] is not None and row["lon"] is not None:
                        if row["ts"] >= cams.get(rec.camera.id, (None, 0.0, 0.0, -1))[3]:
                            cams[rec.camera.id] = (row["site"], row["lat"], row["lon"], row["ts"])
                elif known.get(rid) is not None and known[rid] != row["record"]:
                    # the same id with other content: a forgery or a device bug, never a re-send
                    self.store.insert_reject(now, topic, f"conflict: read_id {rid} is stored with other content "
                                                         "(a forged or corrupted record)", payload)
                    res.conflict += 1
                    res.outcomes.append((topic, rid, "conflict"))
                    log.warning("possible forgery on %s: read_id %s reused with other content", topic, rid)
                else:
                    res.duplicate += 1
                    res.outcomes.append((topic, rid, "duplicate"))
            self.store.put_images(images)
            self.store.note_cameras(cams)
            self.store.bump("received", len(items))
            for name in ("stored", "duplicate", "rejected", "conflict"):
                if getattr(res, name):
                    self.store.bump(name, getattr(res, name))
        return res

    def reject(self, topic: str, reason: str, payload: bytes) -> None:
        now = int(self.clock() * 1000)
        with self.store.tx():
            self.store.insert_reject(now, topic, reason, payload)
            self.store.bump("received", 1)
            self.store.bump("rejected", 1)

    def health(self) -> dict:
        c = self.store.counters()
        return {
            "received": c.get("received", 0),
            "stored": c.get("stored", 0),
            "duplicate": c.get("duplicate", 0),
            "rejected": c.get("rejected", 0),
            "conflict": c.get("conflict", 0),  # a stored read_id sent again with other content: possible forgery
            "lag_ms_median": round(statistics.median(self.lag_ms), 1) if self.lag_ms else None,
            "alerts": c.get("alerts", 0),
            "alerts_flagged": c.get("alerts_flagged", 0),
        }


class Collector:
    """MQTT side: shared subscription, persistent session, manual PUBACK after commit."""

    def __init__(self, store: Store, host: str, port: int, group: str = "collectors", topic: str = "lpr/v1/+/reads",
                 client_id: str = "edge-collector", batch_max: int = 200, batch_wait_s: float = 0.05,
                 tls: dict | None = None, username: str | None = None, password: str | None = None,
                 session_expiry_s: int = SESSION_EXPIRY_S, alerts=None, on_status: Callable[[str, bytes], None] | None = None):
        """`alerts` (edge.collector.hotlist.Alerts): also take the devices' alerts (same shared group);
        `on_status`: also follow every device's retained status (not shared: each collector sees all)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.ing = Ingestor(store, alerts=alerts)
        self.q: queue.Queue = queue.Queue(maxsize=10000)
        self.batch_max, self.batch_wait_s = batch_max, batch_wait_s
        self.topic = f"$share/{group}/{topic}"
        self.topics = [self.topic]
        if alerts is not None:
            self.topics.append(f"$share/{group}/{topic.rsplit('/', 1)[0]}/alerts")
        self.on_status = on_status
        if on_status is not None:
            self.topics.append(f"{topic.rsplit('/', 1)[0]}/status")
        self.host, self.port = host, port
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        if username:
            c.username_pw_set(username, password)
        if tls:
            c.tls_set(**tls)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s  # how long the broker queues for a collector that is gone
        self._props = props
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.subscribed = threading.Event()
        self.refused: str | None = None
        c.on_disconnect = lambda *a: self.connected.clear()
        self.client = c
        self._mqtt = mqtt

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker refused the collector: %s", reason_code)
            return
        client.subscribe([(t, 1) for t in self.topics])
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            bad = [t for t, rc in zip(self.topics, reason_codes, strict=False) if rc.is_failure]
            self.refused = f"the broker refused the subscription to {', '.join(bad)}: {reason_codes[0]}"
        self.subscribed.set()

    def _on_message(self, client, userdata, msg):
        if self.on_status is not None and msg.topic.endswith("/status"):
            self.on_status(msg.topic, msg.payload)  # only noted: nothing to commit first
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            return
        self.q.put((msg.topic, msg.payload, msg.mid, msg.qos))

    def start(self, timeout: float = 30.0) -> None:
        """Connect and subscribe; return once the broker has granted the subscription (so nothing
        published after this is missed), else leave no session behind and raise OSError."""
        self.client.connect(self.host, self.port, clean_start=False, properties=self._props)
        self.client.loop_start()
        if not self.subscribed.wait(timeout) or self.refused:
            self.abandon()
            raise OSError(self.refused or f"no subscription granted within {timeout:g} s")
        self.checked: queue.Queue = queue.Queue(maxsize=2)  # checked batches waiting for the writer
        self.checker = threading.Thread(target=self._check_loop, name="collector-checker", daemon=True)
        self.writer = threading.Thread(target=self._write_loop, name="collector-writer", daemon=True)
        self.checker.start()
        self.writer.start()

    def _check_loop(self) -> None:
        """Batches from the broker, checked (validated, made rows) here while the writer commits the last."""
        while not self.stop_event.is_set() or not self.q.empty():
            try:
                first = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            end = time.monotonic() + self.batch_wait_s
            while len(batch) < self.batch_max:
                try:
                    batch.append(self.q.get(timeout=max(0.0, end - time.monotonic())))
                except queue.Empty:
                    break
            try:
                checked = self.ing.check([(t, p) for t, p, _, _ in batch])
            except Exception as e:  # never expected (check raises nothing of its own): the writer retries one by one
                log.error("checking a batch of %d failed: %s", len(batch), e)
                checked = None
            self.checked.put((batch, checked))
        self.checked.put(None)

    def _write_loop(self) -> None:
        while True:
            got = self.checked.get()
            if got is None:
                return
            batch, checked = got
            outcomes = self._store(batch, checked)
            self._send_receipts(outcomes)
            if self.ing.alerts is not None:
                new = [rid for t, rid, what in outcomes if what == "stored" and rid and t.endswith("/alerts")]
                if new:
                    self.ing.alerts.stored(new)
            for _, _, mid, qos in batch:
                if qos > 0:
                    self.client.ack(mid, qos)

    def _send_receipts(self, outcomes: list[tuple[str, str | None, str]]) -> None:
        """After the commit: tell each device which of its reads are stored (or were already), and
        which will never be (refused: malformed, or a read_id reused with other content), on its own
        receipts topic. A receipt lost on the way only makes the device send again, harmlessly."""
        per: dict[str, dict[str, list[str]]] = {}
        for topic, rid, what in outcomes:
            if rid is None or not (topic.endswith("/reads") or topic.endswith("/alerts")):
                continue
            r = per.setdefault(topic.rsplit("/", 1)[0] + "/receipts", {"stored": [], "refused": []})
            r["stored" if what in ("stored", "duplicate") else "refused"].append(rid)
        for topic, body in per.items():
            self.client.publish(topic, json.dumps(body, separators=(",", ":")), qos=1)

    def _store(self, batch, checked: Checked | None = None) -> list[tuple[str, str | None, str]]:
        """Commit the batch before any PUBACK. Storage trouble is retried (the messages are held,
        never dropped); a message that fails on its own after that goes to rejects, so one bad
        message cannot stall the stream."""
        msgs = [(t, p) for t, p, _, _ in batch]
        delay = 0.5
        for _attempt in range(6):
            try:
                return (self.ing.commit(checked) if checked is not None else self.ing.ingest(msgs)).outcomes
            except Exception as e:
                log.error("storing a batch of %d failed (%s); retrying in %.1f s", len(msgs), e, delay)
                self.ing.store.recover()
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        outcomes: list[tuple[str, str | None, str]] = []
        for m in msgs:  # one at a time: find the message the store cannot take
            while True:
                try:
                    outcomes += self.ing.ingest([m]).outcomes
                    break
                except Exception as e:
                    self.ing.store.recover()
                    try:
                        self.ing.reject(m[0], f"store failed: {str(e).splitlines()[0][:200]}", m[1])
                        break
                    except Exception as e2:  # the store itself is down: wait for it, keep the message
                        log.error("store unavailable (%s); holding the message", e2)
                        time.sleep(5.0)
                        self.ing.store.recover()
        return outcomes  # a message the store failed on gets no receipt: its device sends it again later

    def abandon(self) -> None:
        """Disconnect and end the session on the broker (expiry 0), so that a failed or trial start
        leaves no shared-subscription member taking its share of the stream."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        try:
            self.client.disconnect(properties=props)  # never connected: there is no session to end
        finally:
            self.client.loop_stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.checker.join(10)
        self.writer.join(10)
        self.client.disconnect()
        self.client.loop_stop()
