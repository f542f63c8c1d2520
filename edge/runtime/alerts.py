"""Hotlist matching in the frame loop: a track is checked as soon as its vote is sure enough to
publish, and again whenever its voted text changes, so an alert leaves while the vehicle is still
in view. A match goes into the alerts outbox (sealed, as the reads are; sent before any read) with
the read as it stands, the entry's id and the match kind; the pass's own read follows later under
the same read id. Nothing here logs a plate."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edge.hotlist import Bundle, BundleError, Receiver
from edge.outbox import Outbox
from edge.record import Alert, uuid7
from edge.runtime.records import RecordBuilder
from edge.tracking import Pass

log = logging.getLogger("edge.hotlist")


class HotlistStore:
    """The installed bundle (on disk, re-verified at start) and the receiver that replaces it."""

    def __init__(self, path: Path, public_key):
        self.path = Path(path)
        self.lock = threading.Lock()
        installed = None
        if self.path.exists():
            try:
                installed = Bundle.load(self.path, public_key)
            except (BundleError, OSError) as e:
                log.error("hotlist: the saved bundle %s is refused (%s): no list until the collector sends one", self.path, e)
        self.receiver = Receiver(public_key, installed)
        self.installed_at: float | None = None

    @property
    def bundle(self) -> Bundle | None:
        return self.receiver.bundle

    @property
    def version(self) -> int:
        return self.receiver.version

    def message(self, kind: str, index: int, payload: bytes) -> bool:
        """A retained hotlist message from the broker; True when a new bundle was installed."""
        with self.lock:
            before = self.receiver.refused.copy()
            b = self.receiver.manifest(payload) if kind == "manifest" else self.receiver.part(index, payload)
            if self.receiver.refused != before:
                log.warning("hotlist: refused: %s", self.receiver.last_refusal)
            if b is None:
                return False
            b.save(self.path)
        log.info("hotlist: bundle %d installed (%d entries)", b.version, b.entries)
        return True

    def health(self) -> dict:
        b = self.bundle
        return {"version": b.version if b else 0, "entries": b.entries if b else 0, "refused": dict(self.receiver.refused)}


class AlertWatch:
    def __init__(self, store: HotlistStore, outbox: Outbox, records: RecordBuilder, topic: str, repeat_window_s: float = 60.0,
                 notify: Callable[[Alert], None] | None = None, clock: Callable[[], float] | None = None):
        """`notify(alert)`: an alert is in the outbox (the publisher wakes; Home Assistant hears of it)."""
        self.store, self.outbox, self.records, self.topic = store, outbox, records, topic
        self.repeat_window_s = repeat_window_s
        self.notify = notify
        self._checked: dict[int, str] = {}  # track -> the text last checked
        self._read_ids: dict[int, str] = {}  # track -> the read id its alert carried (its pass keeps it)
        self._alerted: dict[int, set[str]] = {}  # track -> entries it alerted for
        self._recent: dict[str, float] = {}  # entry -> when it last alerted (frame time)
        self.alerts = 0
        self.clock = clock

    def _check(self, p: Pass) -> None:
        b = self.store.bundle
        if b is None or self._checked.get(p.track) == p.text:
            return
        self._checked[p.track] = p.text
        utc = p.last.utc or datetime.now(UTC)
        m = b.match(p.text, now_s=utc.timestamp() if self.clock is None else self.clock())
        if m is None or m.entry_id in self._alerted.get(p.track, set()):
            return
        last = self._recent.get(m.entry_id)
        if last is not None and 0 <= p.last.t - last < self.repeat_window_s:
            return  # the same vehicle again (hidden a moment, or a second look): one alert
        self._recent[m.entry_id] = p.last.t
        self._alerted.setdefault(p.track, set()).add(m.entry_id)
        rid = self._read_ids.get(p.track)
        rec = self.records.build(p, read_id=rid)
        self._read_ids[p.track] = rec.read_id
        # the frame in which the plate was first read: the track's first read that matches this entry
        first = next((u for text, u in p.history if u is not None and (h := b.match(text, now_s=utc.timestamp())) is not None
                      and h.entry_id == m.entry_id), None) or p.first.utc or utc
        # one read, one entry: one alert id, so a replay resumed after a crash raises no second alert
        aid = uuid7(int(utc.timestamp() * 1000), hashlib.sha256(f"{rec.read_id}|{m.entry_id}".encode()).digest()[:10])
        alert = Alert(alert_id=aid, entry=m.entry_id, kind=m.kind, bundle=b.version,
                      first_read=first, seen=utc, read=rec)
        self.outbox.put(alert.alert_id, self.topic, alert.to_json())
        self.alerts += 1
        log.warning("hotlist: alert %s: entry %s (%s) at camera %s", alert.alert_id, m.entry_id, m.kind, rec.camera.id)
        if self.notify:
            self.notify(alert)

    def frame(self, open_passes: list[Pass]) -> None:
        """The tracks seen in this frame that are sure enough to publish, as they stand."""
        for p in open_passes:
            self._check(p)
        if len(self._checked) > 512:  # tracks that ended without a pass: forget the oldest
            for t in sorted(self._checked)[:256]:
                self._checked.pop(t, None)
                self._alerted.pop(t, None)
                self._read_ids.pop(t, None)

    def passed(self, p: Pass) -> str | None:
        """A pass is over: checked once more as voted at its end; the read id its alert used, if any."""
        self._check(p)
        self._checked.pop(p.track, None)
        self._alerted.pop(p.track, None)
        return self._read_ids.pop(p.track, None)
