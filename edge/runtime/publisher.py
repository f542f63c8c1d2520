"""The publisher: the outbox drained through the MQTT transport (edge.mqtt) at QoS 1, a record deleted
only after the collector's receipt (or, with receipts off, the broker's PUBACK), and a periodic
health message."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from edge.homeassistant import HaState, entities
from edge.mqtt import MqttSettings, MqttTransport, PublisherStats
from edge.outbox import Outbox
from edge.record import MAX_RECORD_BYTES

log = logging.getLogger("edge.mqtt")


class OutboxDrain:
    """Which outbox records are in flight, sent through `transport`; a record leaves the outbox only
    when the broker acknowledged it. A PUBACK may arrive before paho's publish() has returned the
    message id: it is remembered for the record being published, and for nothing else (a reused id
    must never delete a record that was not acknowledged)."""

    def __init__(self, outbox: Outbox, max_inflight: int, on_progress: Callable[[], None], topic: str = "reads"):
        """`topic`: which of this device's topics (edge.mqtt.topics) the records go to."""
        self.outbox, self.max_inflight, self.on_progress, self.topic = outbox, max_inflight, on_progress, topic
        self.stats: PublisherStats | None = None
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # mid -> outbox seq
        self._early: set[int] = set()  # PUBACKs that arrived before publish() returned
        self._acking: set[int] = set()  # acknowledged, being deleted from the outbox
        self._publishing = False  # a read's publish() call is in progress (its PUBACK may beat the mid)

    def lost(self) -> None:
        """The connection dropped: unacknowledged records stay in the outbox and are sent again."""
        with self._lock:
            self._inflight.clear()
            self._early.clear()

    def acked(self, mid: int, reason_code) -> None:
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                # only a read being published right now can be acknowledged before we know its mid;
                # anything else (status, health, paho's own resends) must not be remembered
                if self._publishing:
                    self._early.add(mid)
                return
            self._acking.add(seq)
        self._settle(seq, reason_code)

    def _settle(self, seq: int, reason_code) -> None:
        """Called with `seq` in _acking, so the sender does not pick it up again meanwhile."""
        st = self.stats
        try:
            if reason_code is not None and getattr(reason_code, "is_failure", False):
                if st:
                    st.refused += 1
                    st.last_error = f"publish refused: {reason_code}"
                log.warning("broker refused read seq %s: %s (kept in outbox)", seq, reason_code)
                return
            self.outbox.ack(seq)
            if st:
                st.acked += 1
            self.on_progress()
        finally:
            with self._lock:
                self._acking.discard(seq)

    def send(self, transport: MqttTransport) -> None:
        """Send what the in-flight window has room for."""
        with self._lock:
            busy = set(self._inflight.values()) | self._acking
            room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for item in self.outbox.peek(limit=room + len(busy)):
            if item.seq in busy:
                continue
            if len(item.payload) > MAX_RECORD_BYTES:  # the broker would drop the connection, again and again
                self.outbox.receipt([], [item.read_id])
                log.error("read %s is %d bytes, over the %d a record may have: dropped (counted as dropped_refused)",
                          item.read_id, len(item.payload), MAX_RECORD_BYTES)
                continue
            if not transport.connected:
                return
            with self._lock:  # acknowledged since the snapshot above: do not send it again
                if item.seq in self._acking or item.seq in self._inflight.values():
                    continue
                self._early.clear()
                self._publishing = True
            try:
                # this device's reads topic as configured now: a read queued under a wrong prefix goes out once it is fixed
                ok, mid = transport.publish(transport.t[self.topic], item.payload, qos=1)
            except Exception:
                with self._lock:
                    self._publishing = False
                raise
            with self._lock:
                # still "publishing" until the mid is registered: a PUBACK may arrive in between
                self._publishing = False
                early = ok and mid in self._early
                self._early.clear()
                if early:
                    self._acking.add(item.seq)
                elif ok:
                    self._inflight[mid] = item.seq
            if not ok:
                return  # not connected after all: the record stays queued
            if self.stats:
                self.stats.published += 1
            self.outbox.mark_attempt(item.seq)
            if early:
                self._settle(item.seq, None)
            room -= 1
            if room <= 0:
                return


class Publisher:
    def __init__(
        self,
        settings: MqttSettings,
        device_id: str,
        outbox: Outbox,
        health: Callable[[], dict] | None = None,
        homeassistant: tuple[str, str] | None = None,
        alerts: Outbox | None = None,
        hotlist=None,
        site: str | None = None,
    ):
        """`homeassistant`: (discovery prefix, device name) to announce this device to Home Assistant.
        `alerts`: the alerts outbox, drained before the reads; `hotlist`: the store
        (edge.runtime.alerts.HotlistStore) the collector's bundles go to."""
        self.s = settings
        self.device_id = device_id
        self.outbox = outbox
        self.alerts = alerts
        self.hotlist = hotlist
        self.health = health
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.drain = OutboxDrain(outbox, settings.max_inflight, self._wake.set)
        self.alert_drain = OutboxDrain(alerts, settings.max_inflight, self._wake.set, topic="alerts") if alerts else None

        def acked(mid: int, rc) -> None:  # one message id space: each drain takes only its own
            self.drain.acked(mid, rc)
            if self.alert_drain:
                self.alert_drain.acked(mid, rc)

        def lost() -> None:
            self.drain.lost()
            if self.alert_drain:
                self.alert_drain.lost()

        extra = (lambda: {"site": site or "", "hotlist": hotlist.version}) if hotlist is not None else None
        self.transport = MqttTransport(settings, device_id, on_ack=acked, on_lost=lost, on_ready=self._wake.set,
                                       on_receipt=self._receipt, on_hotlist=hotlist.message if hotlist is not None else None,
                                       status_extra=extra)
        self.receipts_seen = 0
        self.drain.stats = self.transport.stats
        self.ha = homeassistant
        self.ha_state = HaState() if homeassistant else None
        self._announced = 0  # the connection (by count) Home Assistant's discovery was last sent on
        self.t = self.transport.t

    @property
    def stats(self) -> PublisherStats:
        return self.transport.stats

    def start(self) -> None:
        self.transport.start()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def _receipt(self, payload: bytes) -> None:
        """The collector's word on reads it committed (or will never take): they leave the outbox."""
        d = json.loads(payload)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        ids = {}
        for k in ("stored", "refused"):
            v = d.get(k, [])
            if not isinstance(v, list) or len(v) > 10_000 or not all(isinstance(x, str) and len(x) <= 64 for x in v):
                raise ValueError(f"{k}: expected a list of read ids")
            ids[k] = v
        n = self.outbox.receipt(ids["stored"], ids["refused"])
        if self.alerts is not None:
            n += self.alerts.receipt(ids["stored"], ids["refused"])
        self.receipts_seen += n
        if ids["refused"]:
            log.warning("the collector refused %d read(s) for good: %s", len(ids["refused"]), ", ".join(ids["refused"][:5]))
        if n:
            self._wake.set()

    def alert_made(self, alert) -> None:
        """An alert was raised (and is in its outbox): Home Assistant's match sensor follows it."""
        if self.ha_state:
            self.ha_state.alert(alert)
        self._wake.set()

    def read_made(self, rec) -> None:
        """A read was made (and is in the outbox): Home Assistant's state follows it."""
        if self.ha_state:
            self.ha_state.read(rec)
            self._wake.set()

    def _homeassistant(self) -> None:
        assert self.ha and self.ha_state
        if self._announced != self.transport.stats.connects:  # each (re)connection: the broker may have lost them
            self._announced = self.transport.stats.connects
            for topic, body in entities(self.device_id, self.s.topic_prefix, self.ha[0], self.ha[1], hotlist=self.hotlist is not None):
                self.transport.publish(topic, json.dumps(body), qos=1, retain=True)
            self.ha_state.dirty = True
        if self.ha_state.dirty:
            self.ha_state.dirty = False
            self.transport.publish(f"{self.t['reads'][:-len('reads')]}ha/state", self.ha_state.payload(), qos=1, retain=True)
        while self.ha_state.alerts:
            self.transport.publish(f"{self.t['reads'][:-len('reads')]}ha/alert", self.ha_state.alerts.pop(0), qos=1)
        if self.ha_state.crop_dirty and self.ha_state.crop:
            self.ha_state.crop_dirty = False
            self.transport.publish(f"{self.t['reads'][:-len('reads')]}ha/plate_crop", self.ha_state.crop, qos=1, retain=True)

    def notify(self) -> None:
        """A new record is in the outbox."""
        self._wake.set()

    def _run(self) -> None:
        next_health = time.monotonic() + 1.0
        while not self._stop.is_set():
            if self.transport.fallback:
                self.transport.switch_to_311()
            if self.transport.connected:
                if self.alert_drain:  # alerts first: a read backlog never holds one up
                    self.alert_drain.send(self.transport)
                self.drain.send(self.transport)
                if self.health and time.monotonic() >= next_health:
                    try:
                        h = self.health()
                        self.transport.publish(self.t["health"], json.dumps(h, default=str), qos=0)
                        if self.ha_state:
                            self.ha_state.health(h)
                    except Exception as e:  # health must never stop publishing reads
                        log.warning("health message failed: %s", e)
                    next_health = time.monotonic() + self.s.health_interval_s
                if self.ha:
                    self._homeassistant()
            self._wake.wait(0.5)
            self._wake.clear()

    def wait_connected(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.transport.connected:
                return True
            time.sleep(0.05)
        return False

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (everything acknowledged) or the timeout passes."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.backlog() == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return self.backlog() == 0

    def backlog(self) -> int:
        """Reads and alerts not yet delivered."""
        return self.outbox.backlog() + (self.alerts.backlog() if self.alerts is not None else 0)

    def stop(self, flush_timeout: float = 5.0) -> None:
        if self.transport.connected:
            self.flush(flush_timeout)
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(5)
        self.transport.close()
