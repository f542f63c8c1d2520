"""Vehicles of possible interest at the collector: governed hotlist entries, the signed bundles that
carry them to devices, and the alerts devices raise.

Entries are governed as searches are: an investigator (or supervisor) proposes one for an open case,
with a reason and an expiry no later than the policy's maximum; a supervisor who is neither the
proposer nor anyone who made the proposer's account approves it. Proposing, approving, removing,
expiring and every listing are audited (plates by keyed reference only). Entries expire by
themselves, on the device too.

Only approved, unexpired entries go to devices (edge.hotlist: keyed hashes, never plates, signed
with the collector's Ed25519 key), each device on its own retained topics, re-sent when the list
changes or when a device comes online with another version.

An alert is stored once (by its id), checked against the entry's plate in clear (the device only
knew hashes), flagged when its entry had expired or been withdrawn, when the plate does not confirm,
or when the read's region is not the entry's; shown to users who name the entry's case,
acknowledged by an officer (audited), and fanned out to configured targets.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import logging
import queue
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from pydantic import ValidationError

from edge.collector.governance import DAY_MS, AccessDenied, Governance
from edge.collector.store import Store, sha256
from edge.hotlist import ALERT_SCHEMA, ONE_EDIT_MIN_CHARS, Entry, compile_bundle
from edge.plates import PLATE_MAX_CHARS, PLATE_MIN_CHARS, PLATE_TEXT, fold
from edge.tracking import edit_distance

log = logging.getLogger("edge.collector")

DEFAULT_DAYS = 30.0
MAX_DAYS = 90.0
MAX_REASON = 500
MAX_IMPORT = 200_000


def normalise_plate(text: str) -> str:
    """As a reader writes it: capitals and digits, no spaces or dashes."""
    return re.sub(r"[\s\-.]", "", text).upper()


def check_plate(plate: str) -> str | None:
    """Why `plate` cannot be an entry, or None."""
    if not PLATE_TEXT.match(plate):
        return f"plate {plate!r} has characters other than A-Z and 0-9"
    if not PLATE_MIN_CHARS <= len(plate) <= PLATE_MAX_CHARS:
        return f"plate {plate!r} is not {PLATE_MIN_CHARS} to {PLATE_MAX_CHARS} characters long"
    return None


@dataclass
class HotlistEntry:
    id: str
    plate: str
    lookalike: bool
    region: str | None
    site: str | None
    reason: str
    case_id: str
    requested_by: str
    batch: str | None
    created: int
    expires: int
    approved_by: str | None
    approved: int | None
    removed_by: str | None
    removed: int | None

    def state(self, now_ms: int) -> str:
        if self.removed:
            return "removed"
        if self.expires <= now_ms:
            return "expired"
        return "active" if self.approved else "pending"


COLUMNS = "id, plate, lookalike, region, site, reason, case_id, requested_by, batch, created, expires, approved_by, approved, removed_by, removed"


def _entry(r) -> HotlistEntry:
    return HotlistEntry(r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], int(r[9]), int(r[10]), r[11],
                        int(r[12]) if r[12] is not None else None, r[13], int(r[14]) if r[14] is not None else None)


class Hotlists:
    def __init__(self, gov: Governance, default_days: float = DEFAULT_DAYS, max_days: float = MAX_DAYS):
        self.g, self.s = gov, gov.s
        self.default_days, self.max_days = default_days, max(default_days, max_days)

    def _expiry(self, days: float | None, until_ms: int | None, now: int) -> int:
        if until_ms is not None:
            exp = until_ms
        else:
            d = self.default_days if days is None else days
            if d <= 0:
                raise ValueError(f"an entry's expiry must be in the future (got {d:g} days)")
            exp = now + int(d * DAY_MS)
        if exp <= now:
            raise ValueError("the expiry is in the past")
        if exp > now + int(self.max_days * DAY_MS) + 60_000:
            raise ValueError(f"an entry lasts at most {self.max_days:g} days (the policy's maximum); it can be proposed again")
        return exp

    def _bump(self) -> None:
        self.s.bump("hotlist_rev")

    # ---------------------------------------------------------- entries

    def propose(self, actor: str, case_id: str, plate: str, reason: str, region: str | None = None, site: str | None = None,
                lookalike: bool = True, days: float | None = None, until_ms: int | None = None) -> str:
        self.g.require(actor, "investigator", "supervisor")
        self.g.check_case(case_id)
        plate = normalise_plate(plate)
        bad = check_plate(plate)
        if bad:
            raise ValueError(bad)
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON:
            raise ValueError(f"every entry needs a reason (1 to {MAX_REASON} characters)")
        now = self.g.now_ms()
        exp = self._expiry(days, until_ms, now)
        eid = "HL-" + secrets.token_hex(4)
        self.s.execute(f"INSERT INTO hotlist ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, NULL, NULL, NULL, NULL)",
                       (eid, plate, int(lookalike), region, site, reason, case_id, actor, now, exp))
        self.g.audit(actor, "hotlist.propose", {"id": eid, "plate": plate, "case": case_id, "expires": exp, "region": region,
                                                "site": site, "lookalike": lookalike})
        return eid

    def import_csv(self, actor: str, case_id: str, text: str, lookalike: bool = True) -> tuple[str, list[str]]:
        """Every line checked before anything is written: (batch id, entry ids), or ValueError with one
        line per problem, each naming its line. Columns: plate, region, reason, expiry (a date
        YYYY-MM-DD, an ISO time, a number of days, or empty for the default); a header line is allowed."""
        self.g.require(actor, "investigator", "supervisor")
        self.g.check_case(case_id)
        now = self.g.now_ms()
        rows: list[tuple[str, str | None, str, int]] = []
        problems: list[str] = []
        seen: dict[str, int] = {}
        for n, row in enumerate(csv.reader(io.StringIO(text)), 1):
            if not row or all(not c.strip() for c in row):
                continue
            if n == 1 and row[0].strip().lower() == "plate":
                continue
            if len(rows) + len(problems) >= MAX_IMPORT:
                problems.append(f"line {n}: more than {MAX_IMPORT} entries in one import")
                break
            if len(row) != 4:
                problems.append(f"line {n}: expected 4 columns (plate, region, reason, expiry), got {len(row)}")
                continue
            plate, region, reason, expiry = (c.strip() for c in row)
            plate = normalise_plate(plate)
            bad = check_plate(plate)
            if bad:
                problems.append(f"line {n}: {bad}")
                continue
            if plate in seen:
                problems.append(f"line {n}: plate {plate} is already on line {seen[plate]}")
                continue
            seen[plate] = n
            if not reason or len(reason) > MAX_REASON:
                problems.append(f"line {n}: a reason of 1 to {MAX_REASON} characters is required")
                continue
            if region and not re.fullmatch(r"[a-z]{2}(-[a-z0-9]{1,8})?", region.lower()):
                problems.append(f"line {n}: region {region!r} is not a code like us, uk, br or us-ca")
                continue
            try:
                exp = self._expiry(*_parse_expiry(expiry), now)
            except ValueError as e:
                problems.append(f"line {n}: expiry {expiry!r}: {e}")
                continue
            rows.append((plate, region.lower() or None, reason, exp))
        if problems:
            raise ValueError("\n".join(problems))
        if not rows:
            raise ValueError("the file holds no entries")
        batch = "HB-" + secrets.token_hex(4)
        ids = ["HL-" + secrets.token_hex(4) for _ in rows]
        with self.s.tx():
            self.s.executemany(f"INSERT INTO hotlist ({COLUMNS}) VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)",
                               [(i, p, int(lookalike), rg, rs, case_id, actor, batch, now, e) for i, (p, rg, rs, e) in zip(ids, rows, strict=True)])
        self.g.audit(actor, "hotlist.import", {"batch": batch, "case": case_id,
                                               "entries": [{"id": i, "plate": r[0]} for i, r in zip(ids, rows, strict=True)]})
        return batch, ids

    def approve(self, actor: str, ref: str) -> list[str]:
        """Approve an entry (HL-...) or a whole import (HB-...): a supervisor who did not propose it
        and did not make the proposer's account."""
        self.g.require(actor, "supervisor")
        col = "batch" if ref.startswith("HB-") else "id"
        now = self.g.now_ms()
        with self.s.tx(exclusive=True):
            rows = [_entry(r) for r in self.s.query(f"SELECT {COLUMNS} FROM hotlist WHERE {col} = ?", (ref,))]
            if not rows:
                raise ValueError(f"no hotlist entry or import {ref}")
            for e in rows:
                if e.requested_by == actor:
                    raise AccessDenied("a second person must approve: whoever proposed an entry cannot approve it")
                if actor in self.g.made_by(e.requested_by):
                    raise AccessDenied(f"{actor!r} made or re-issued {e.requested_by!r}'s account: a supervisor who did not "
                                       "may approve")
                if e.state(now) != "pending":
                    raise ValueError(f"entry {e.id} is {e.state(now)}: only a pending entry is approved")
            self.g.check_case(rows[0].case_id)
            self.s.execute(f"UPDATE hotlist SET approved_by = ?, approved = ? WHERE {col} = ?", (actor, now, ref))
            self._bump()
        self.g.audit(actor, "hotlist.approve", {"ref": ref, "ids": [e.id for e in rows], "case": rows[0].case_id,
                                                "requested_by": rows[0].requested_by})
        return [e.id for e in rows]

    def remove(self, actor: str, eid: str, reason: str) -> None:
        """Withdraw an entry (its proposer, or a supervisor): it leaves the devices' lists."""
        role = self.g.require(actor, "investigator", "supervisor")
        if not reason.strip():
            raise ValueError("say why the entry is removed (--reason)")
        with self.s.tx(exclusive=True):
            r = self.s.one(f"SELECT {COLUMNS} FROM hotlist WHERE id = ?", (eid,))
            if not r:
                raise ValueError(f"no hotlist entry {eid}")
            e = _entry(r)
            if role != "supervisor" and e.requested_by != actor:
                raise AccessDenied("an investigator removes only the entries they proposed; a supervisor removes any")
            if e.removed:
                raise ValueError(f"entry {eid} was already removed")
            self.s.execute("UPDATE hotlist SET removed_by = ?, removed = ?, remove_reason = ? WHERE id = ?",
                           (actor, self.g.now_ms(), reason.strip()[:MAX_REASON], eid))
            self._bump()
        self.g.audit(actor, "hotlist.remove", {"id": eid, "case": e.case_id, "reason": reason.strip()[:MAX_REASON]})

    def show(self, actor: str, case_id: str | None = None, include_ended: bool = False) -> list[HotlistEntry]:
        """Entries with their plates: an investigator names the case; a supervisor may see every
        case's (the approval queue). Audited."""
        role = self.g.require(actor, "investigator", "supervisor")
        if case_id is None and role != "supervisor":
            raise AccessDenied("name the case whose entries you need (--case); a supervisor may list every case's")
        if case_id is not None and role != "supervisor":
            self.g.check_case(case_id)
        self.expire_due()
        now = self.g.now_ms()
        sql, params = f"SELECT {COLUMNS} FROM hotlist", []
        if case_id is not None:
            sql += " WHERE case_id = ?"
            params.append(case_id)
        rows = [e for e in (_entry(r) for r in self.s.query(sql + " ORDER BY created", params))
                if include_ended or e.state(now) in ("pending", "active")]
        self.g.audit(actor, "hotlist.list", {"case": case_id, "shown": len(rows)})
        return rows

    def expire_due(self, actor: str = "system") -> list[str]:
        """Note (audit) each entry whose time has run out; the devices' lists change with it."""
        now = self.g.now_ms()
        rows = self.s.query("SELECT id, case_id, approved FROM hotlist WHERE expires <= ? AND expiry_noted IS NULL "
                            "AND removed IS NULL", (now,))
        if not rows:
            return []
        with self.s.tx(exclusive=True):
            done = []
            for eid, case, approved in rows:
                n = self.s.execute("UPDATE hotlist SET expiry_noted = ? WHERE id = ? AND expiry_noted IS NULL", (now, eid)).rowcount
                if n:
                    done.append((eid, case, approved))
            if any(a for _, _, a in done):
                self._bump()
        for eid, case, _ in done:
            self.g.audit(actor, "hotlist.expire", {"id": eid, "case": case})
        return [d[0] for d in done]

    def active(self, scope: str) -> list[Entry]:
        """What the devices of site `scope` ("" for a device with no site) match against now."""
        now = self.g.now_ms()
        rows = self.s.query("SELECT id, plate, lookalike, expires FROM hotlist WHERE approved IS NOT NULL AND removed IS NULL "
                            "AND expires > ? AND (site IS NULL OR site = ?)", (now, scope))
        return [Entry(r[0], r[1], bool(r[2]), int(r[3]) // 1000) for r in rows]

    def rev(self) -> int:
        r = self.s.one("SELECT value FROM counters WHERE name = 'hotlist_rev'")
        return int(r[0]) if r else 0


def _parse_expiry(v: str) -> tuple[float | None, int | None]:
    """(days, until ms) from an import's expiry column."""
    if not v:
        return None, None
    try:
        return float(v), None
    except ValueError:
        pass
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            d = date.fromisoformat(v)
            return None, int(datetime(d.year, d.month, d.day, 23, 59, 59, tzinfo=UTC).timestamp() * 1000)
        t = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError("expected a date (YYYY-MM-DD), an ISO time with its offset, or a number of days") from None
    if t.tzinfo is None:
        raise ValueError("an ISO time needs its offset (e.g. +00:00)")
    return None, int(t.timestamp() * 1000)


# ------------------------------------------------------------------ bundles to devices


def load_signing_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ValueError(f"hotlist signing key {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"hotlist signing key {path}: not an Ed25519 key (edge provision ca makes hotlist-signing.key)")
    return key


class Distributor:
    """Keeps every known device's retained hotlist topics on the current bundle of its site."""

    def __init__(self, hotlists: Hotlists, signing_key, publish, prefix: str = "lpr/v1"):
        self.h, self.s = hotlists, hotlists.s
        self.key = signing_key
        self.publish = publish  # (topic, payload, retain) -> None
        self.prefix = prefix.rstrip("/")
        self.q: queue.Queue = queue.Queue(maxsize=100_000)
        self._rev = -1
        self.published = 0

    def bundle(self, scope: str) -> tuple[int, bytes, list[bytes]]:
        """The signed bundle of `scope` for the list as it is now (made once per change, shared by
        every collector on this database)."""
        rev = self.h.rev()
        r = self.s.one("SELECT version, manifest, parts FROM hotlist_bundles WHERE scope = ? AND rev = ?", (scope, rev))
        if r is None:
            with self.s.tx(exclusive=True):
                r = self.s.one("SELECT version, manifest, parts FROM hotlist_bundles WHERE scope = ? AND rev = ?", (scope, rev))
                if r is None:
                    self.s.bump("hotlist_version")
                    version = int(self.s.one("SELECT value FROM counters WHERE name = 'hotlist_version'")[0])
                    entries = self.h.active(scope)
                    manifest, parts = compile_bundle(entries, version, scope, self.key, self.h.g.now_ms())
                    packed = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
                    self.s.execute("DELETE FROM hotlist_bundles WHERE scope = ? AND rev < ?", (scope, rev))
                    self.s.execute("INSERT INTO hotlist_bundles (scope, rev, version, created, entries, manifest, parts) "
                                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (scope, rev, version, self.h.g.now_ms(), len(entries), manifest, packed))
                    r = (version, manifest, packed)
        version, manifest, packed = int(r[0]), bytes(r[1]), bytes(r[2])
        parts, i = [], 0
        while i < len(packed):
            n = int.from_bytes(packed[i : i + 4], "big")
            parts.append(packed[i + 4 : i + 4 + n])
            i += 4 + n
        return version, manifest, parts

    def version(self, scope: str) -> int:
        """The version of `scope`'s current bundle, without reading the bundle itself when it is made."""
        r = self.s.one("SELECT version FROM hotlist_bundles WHERE scope = ? AND rev = ?", (scope, self.h.rev()))
        return int(r[0]) if r else self.bundle(scope)[0]

    def send(self, device_id: str, scope: str) -> int:
        version, manifest, parts = self.bundle(scope)
        base = f"{self.prefix}/{device_id}/hotlist"
        old = self.s.one("SELECT parts FROM hotlist_devices WHERE device_id = ?", (device_id,))
        for i, p in enumerate(parts):  # the parts first: a manifest is installed once its parts are there
            self.publish(f"{base}/part/{i}", p, True)
        for i in range(len(parts), int(old[0] or 0) if old else 0):
            self.publish(f"{base}/part/{i}", b"", True)  # an empty retained message clears a part the list no longer has
        self.publish(f"{base}/manifest", manifest, True)
        self.s.execute("UPDATE hotlist_devices SET sent_version = ?, parts = ? WHERE device_id = ?", (version, len(parts), device_id))
        self.published += 1
        return version

    def status(self, topic: str, payload: bytes) -> None:
        """A device's retained status (from the MQTT thread): handled by tick()."""
        try:
            self.q.put_nowait((topic, payload))
        except queue.Full:
            pass

    def _seen(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) < 2 or parts[-1] != "status":
            return
        dev = parts[-2]
        try:
            d = json.loads(payload)
        except ValueError:
            return
        if not isinstance(d, dict) or d.get("state") != "online" or d.get("device_id") != dev:
            return
        claimed = d.get("site")
        site: str = claimed if isinstance(claimed, str) else ""
        have = d.get("hotlist") if isinstance(d.get("hotlist"), int) else None
        now = self.h.g.now_ms()
        r = self.s.one("SELECT site FROM hotlist_devices WHERE device_id = ?", (dev,))
        if r is None:
            self.s.execute("INSERT INTO hotlist_devices (device_id, site, first_seen, last_seen, version) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (device_id) DO NOTHING", (dev, site[:128], now, now, have))
            scope = site[:128]
        else:
            scope = r[0] or ""
            if site != scope:  # a device's site is the one it first came with: another claim gets it no other site's list
                log.warning("device %s says it is at site %r; it is known at %r (kept)", dev, site[:64], scope)
            self.s.execute("UPDATE hotlist_devices SET last_seen = ?, version = ? WHERE device_id = ?", (now, have, dev))
        if have != self.version(scope):
            self.send(dev, scope)

    def tick(self) -> None:
        """Handle device statuses; after any change of the list (or an entry running out), send every
        known device its new bundle."""
        while True:
            try:
                topic, payload = self.q.get_nowait()
            except queue.Empty:
                break
            try:
                self._seen(topic, payload)
            except Exception as e:  # a device's status must never stop distribution
                log.warning("hotlist: status on %s not handled: %s", topic, e)
                self.s.recover()
        self.h.expire_due()
        rev = self.h.rev()
        if rev != self._rev:
            if self._rev >= 0 or self.s.one("SELECT COUNT(*) FROM hotlist_devices")[0]:
                for dev, site in self.s.query("SELECT device_id, site FROM hotlist_devices ORDER BY device_id"):
                    self.send(dev, site or "")
            self._rev = rev


# ------------------------------------------------------------------ alerts from devices


class AlertReject(Exception):
    pass


def confirm(entry_plate: str, lookalike: bool, read_text: str) -> str:
    """How the read matches the entry's plate, seen in clear: exact, look-alike, one-edit or unconfirmed."""
    if read_text == entry_plate:
        return "exact"
    if lookalike:
        a, b = fold(read_text), fold(entry_plate)
        if a == b:
            return "look-alike"
        if min(len(a), len(b)) >= ONE_EDIT_MIN_CHARS and edit_distance(a, b) <= 1:
            return "one-edit"
    return "unconfirmed"


ALERT_COLUMNS = ("alert_id, entry_id, case_id, device_id, read_id, kind, confirmed, flags, first_read, seen, received, camera_id, "
                 "site, plate, plate_image, record, acked_by, acked, ack_note")


class Alerts:
    def __init__(self, gov: Governance, fanout: Fanout | None = None):
        self.g, self.s = gov, gov.s
        self.fanout = fanout

    def ingest(self, topic: str, payload: bytes, now_ms: int) -> tuple[str | None, str]:
        """(alert id, "stored" | "duplicate" | "rejected" | "conflict"), inside the caller's transaction."""
        from edge.collector.ingest import Reject, _loose, validate
        from edge.record import Alert

        try:
            if len(payload) > 600 * 1024:
                raise AlertReject(f"oversized alert: {len(payload)} bytes")
            try:
                obj = json.loads(payload)
            except (ValueError, RecursionError, UnicodeDecodeError) as e:
                raise AlertReject(f"alert not JSON: {str(e)[:120]}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("read"), dict):
                raise AlertReject("an alert is a JSON object with its read")
            bad = _loose({k: v for k, v in obj.items() if k != "read"})
            if bad:
                raise AlertReject(f"alert: {bad}")
            if obj.get("schema") != ALERT_SCHEMA:
                raise AlertReject(f"wrong alert schema: {str(obj.get('schema'))[:40]!r} (expected {ALERT_SCHEMA})")
            try:
                rec = validate(json.dumps(obj["read"]).encode(), topic=None)
                a = Alert.model_validate_json(payload)
            except Reject as e:
                raise AlertReject(f"alert's read: {e}") from None
            except ValidationError as e:
                err = e.errors()[0]
                raise AlertReject(f"invalid alert field {'.'.join(str(p) for p in err['loc'])}: {err['msg'][:160]}") from None
            dev = topic.split("/")[-2] if topic.count("/") >= 2 else ""
            if rec.device.id != dev:
                raise AlertReject(f"alert's device {rec.device.id!r} does not match the topic's device {dev!r}")
            row = self.s.one(f"SELECT {COLUMNS} FROM hotlist WHERE id = ?", (a.entry,))
            if row is None:
                raise AlertReject(f"alert names no known hotlist entry ({a.entry})")
        except AlertReject as err:
            self.s.insert_reject(now_ms, topic, str(err), payload)
            rid = obj.get("alert_id") if isinstance(locals().get("obj"), dict) else None
            return (rid if isinstance(rid, str) and len(rid) <= 64 else None), "rejected"
        entry = _entry(row)
        seen_ms = int(a.seen.timestamp() * 1000)
        flags = []
        if entry.removed and entry.removed <= seen_ms:
            flags.append("withdrawn")
        if entry.expires <= seen_ms:
            flags.append("expired")
        if not entry.approved or entry.approved > seen_ms + 60_000:
            flags.append("not-approved")
        ok = confirm(entry.plate, entry.lookalike, rec.plate.text) if not entry.plate.startswith("plate:") else "unconfirmed"
        if ok == "unconfirmed":
            flags.append("unconfirmed")
        if entry.region and rec.plate.region and not rec.plate.region.startswith(entry.region):
            flags.append("other-region")
        image = None
        if rec.images.plate_jpeg:
            raw = base64.b64decode(rec.images.plate_jpeg)
            image = sha256(raw)
        d = rec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"images"})
        d["images"] = {"plate_jpeg": image} if image else {}
        record = json.dumps(d, separators=(",", ":"))
        n = self.s.execute(
            f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL) "
            "ON CONFLICT (alert_id) DO NOTHING",
            (a.alert_id, a.entry, entry.case_id, dev, rec.read_id, a.kind, ok, ",".join(flags), int(a.first_read.timestamp() * 1000),
             seen_ms, now_ms, rec.camera.id, rec.camera.site, rec.plate.text, image, record)).rowcount
        if n != 1:
            old = self.s.one("SELECT read_id, entry_id, record FROM alerts WHERE alert_id = ?", (a.alert_id,))
            if old and (old[0], old[1], old[2]) != (rec.read_id, a.entry, record):
                self.s.insert_reject(now_ms, topic, f"conflict: alert_id {a.alert_id} is stored with other content", payload)
                return a.alert_id, "conflict"
            return a.alert_id, "duplicate"
        if image:
            self.s.put_image(base64.b64decode(rec.images.plate_jpeg or ""), now_ms)
        self.s.bump("alerts")
        if flags:
            self.s.bump("alerts_flagged")
        return a.alert_id, "stored"

    def stored(self, alert_ids: list[str]) -> None:
        """After the commit: the new alerts go to the configured targets."""
        if self.fanout:
            for aid in alert_ids:
                self.fanout.put(aid)

    def get(self, alert_id: str) -> dict | None:
        r = self.s.one(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = ?", (alert_id,))
        return _alert(r) if r else None

    def show(self, actor: str, case_id: str, unacked: bool = False, limit: int = 200) -> list[dict]:
        """The alerts of a case's entries, newest first, for the investigators and supervisors who name it."""
        self.g.require(actor, "investigator", "supervisor")
        self.g.check_case(case_id)
        sql = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE case_id = ?" + (" AND acked IS NULL" if unacked else "")
        rows = [_alert(r) for r in self.s.query(sql + " ORDER BY received DESC LIMIT ?", (case_id, int(limit)))]
        self.g.audit(actor, "alert.list", {"case": case_id, "shown": len(rows), "alerts": [r["alert_id"] for r in rows]})
        return rows

    def ack(self, actor: str, alert_id: str, note: str) -> dict:
        self.g.require(actor, "investigator", "supervisor")
        with self.s.tx(exclusive=True):
            a = self.get(alert_id)
            if a is None:
                raise ValueError(f"no alert {alert_id}")
            self.g.check_case(a["case"])
            if a["acked"]:
                raise ValueError(f"alert {alert_id} was already acknowledged by {a['acked_by']}")
            self.s.execute("UPDATE alerts SET acked_by = ?, acked = ?, ack_note = ? WHERE alert_id = ?",
                           (actor, self.g.now_ms(), note.strip()[:MAX_REASON], alert_id))
        self.g.audit(actor, "alert.ack", {"alert": alert_id, "case": a["case"], "entry": a["entry"], "note": note.strip()[:MAX_REASON]})
        return a

    def counts(self) -> dict:
        c = self.s.counters()
        return {"alerts": c.get("alerts", 0), "alerts_flagged": c.get("alerts_flagged", 0),
                "alerts_unacked": int(self.s.one("SELECT COUNT(*) FROM alerts WHERE acked IS NULL")[0])}


def _ms_iso(v: int | None) -> str | None:
    return datetime.fromtimestamp(v / 1000, UTC).isoformat().replace("+00:00", "Z") if v is not None else None


def _alert(r) -> dict:
    return {"alert_id": r[0], "entry": r[1], "case": r[2], "device": r[3], "read_id": r[4], "kind": r[5], "confirmed": r[6],
            "flags": [f for f in (r[7] or "").split(",") if f], "first_read": _ms_iso(r[8]), "seen": _ms_iso(r[9]),
            "received": _ms_iso(r[10]), "latency_ms": int(r[10]) - int(r[8]), "camera": r[11], "site": r[12], "plate": r[13],
            "plate_image": r[14], "acked_by": r[16], "acked": _ms_iso(r[17]), "ack_note": r[18]}


class Fanout:
    """Sends each new alert to the configured targets, from its own thread (a slow target never holds
    up ingest): an HTTPS/HTTP webhook, signed (HMAC-SHA256 over "<timestamp>.<body>" in
    X-Edge-Signature, the timestamp in X-Edge-Timestamp), with the plate; and an MQTT topic (for Home
    Assistant or Node-RED) with no plate and no image. A failed delivery is retried, then counted."""

    def __init__(self, alerts_get, webhook: str | None = None, secret: bytes | None = None, mqtt_publish=None,
                 mqtt_topic: str | None = None, attempts: int = 4, counter=None):
        self.get, self.webhook, self.secret = alerts_get, webhook, secret
        self.mqtt_publish, self.mqtt_topic = mqtt_publish, mqtt_topic
        self.attempts = attempts
        self.counter = counter
        self.q: queue.Queue = queue.Queue()
        self.sent = {"webhook": 0, "mqtt": 0, "failed": 0}
        self._t = threading.Thread(target=self._run, name="alert-fanout", daemon=True)
        self._t.start()

    def put(self, alert_id: str) -> None:
        self.q.put(alert_id)

    def _run(self) -> None:
        while True:
            aid = self.q.get()
            try:
                a = self.get(aid)
                if a is not None:
                    self._deliver(a)
            except Exception as e:
                log.warning("alert %s: fan-out failed: %s", aid, e)

    def _deliver(self, a: dict) -> None:
        if self.mqtt_publish and self.mqtt_topic:
            brief = {k: a[k] for k in ("alert_id", "entry", "case", "kind", "confirmed", "flags", "device", "camera", "site",
                                       "seen", "received")}
            site = re.sub(r"[^A-Za-z0-9_.-]", "_", a.get("site") or a["device"])
            self.mqtt_publish(f"{self.mqtt_topic.rstrip('/')}/{site}", json.dumps(brief), False)
            self.sent["mqtt"] += 1
        if self.webhook:
            import urllib.request

            body = json.dumps({k: v for k, v in a.items() if k != "plate_image"}, sort_keys=True).encode()
            delay = 1.0
            for attempt in range(self.attempts):
                ts = str(int(time.time()))
                headers = {"Content-Type": "application/json", "X-Edge-Timestamp": ts, "X-Edge-Alert": a["alert_id"]}
                if self.secret:
                    headers["X-Edge-Signature"] = "sha256=" + hmac.new(self.secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
                try:
                    req = urllib.request.Request(self.webhook, data=body, headers=headers, method="POST")
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        if 200 <= resp.status < 300:
                            self.sent["webhook"] += 1
                            return
                except OSError as e:
                    log.warning("alert %s: webhook attempt %d failed: %s", a["alert_id"], attempt + 1, e)
                time.sleep(delay)
                delay *= 2
            self.sent["failed"] += 1
            if self.counter:
                self.counter("alerts_webhook_failed")


def verify_webhook(secret: bytes, timestamp: str, body: bytes, signature: str, max_age_s: float = 300) -> bool:
    """What a webhook's receiver checks: the signature, and that it is recent (a replayed call is not)."""
    want = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    try:
        fresh = abs(time.time() - int(timestamp)) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(want, signature)


__all__ = ["Alerts", "Distributor", "Fanout", "Hotlists", "Store", "confirm", "load_signing_key", "verify_webhook"]
