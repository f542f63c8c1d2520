"""Durable outbox: every read is committed to SQLite (WAL, synchronous=FULL) before it counts.

A publisher takes the oldest records and sends them. With receipts (the default for a provisioned
device) a record leaves the outbox only when the collector says it has committed it: the broker's
PUBACK only schedules a re-send, later and later (RECEIPT_WAIT_S doubling up to RECEIPT_WAIT_MAX_S),
for as long as no receipt comes. Without receipts the PUBACK deletes it. Records survive broker
outages and crashes, kill -9 and power loss. The outbox is bounded by
age and size; every record it has to drop is counted (by reason) in the same database, so the loss
is reported, never silent.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("edge.outbox")
RECEIPT_WAIT_S = 30.0  # after the broker took a record, how long to wait for the collector's receipt
RECEIPT_WAIT_MAX_S = 3600.0  # the wait doubles with each send, up to this
SEALED = b"EGCM1"  # a sealed record: this, a 12-byte nonce, AES-256-GCM ciphertext and tag
CLOCK_STEP_S = 120.0  # a wall-clock move this much beyond the steady clock's is a step (NTP slews far less)


def _boot_clock() -> float:
    """Seconds since boot, suspend included; wall-clock steps do not move it."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    read_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Item:
    seq: int
    read_id: str
    topic: str
    payload: bytes
    created: float
    attempts: int


class OutboxError(Exception):
    pass


class Outbox:
    def __init__(
        self,
        path: str | Path,
        max_age_s: float = 30 * 86400,
        max_bytes: int = 512 * 1024 * 1024,
        min_free_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        steady: Callable[[], float] | None = None,
        receipts: bool = False,
        receipt_wait_s: float = RECEIPT_WAIT_S,
        key: bytes | None = None,
    ):
        """`clock` stamps records (wall time, seconds); `steady` is a clock the wall clock's steps do not
        move (default: CLOCK_BOOTTIME when `clock` is the system's wall clock; None: no step correction).
        A device without a real-time clock boots with a stale wall clock (fake-hwclock keeps the time it
        was switched off) and queues reads under it; when NTP then sets the clock forward by the weeks
        it lay off, those reads would look that much older and be dropped as too old. So when the wall
        clock moves more than CLOCK_STEP_S away from the steady clock, the records this process
        stamped before the step are moved with it: their age stays what it really is."""
        self.path = Path(path)
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.clock = clock
        self.receipts, self.receipt_wait_s = receipts, receipt_wait_s
        self.lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(outbox)")}
            if "due" not in cols:  # an outbox written before receipts
                self.db.execute("ALTER TABLE outbox ADD COLUMN due REAL")
            # records with a higher seq were stamped by this process, under the clock it watches
            self._first_own_seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'").fetchone()[0] + 1
        except (sqlite3.Error, OSError) as e:
            raise OutboxError(f"cannot open outbox {self.path}: {e}") from None
        self._seal: Any = None  # AESGCM when a key is given
        try:
            self._check_key(key)
        except BaseException:
            self.db.close()
            raise
        self.steady = steady if steady is not None else (_boot_clock if clock is time.time else None)
        self._anchor = (self.clock(), self.steady()) if self.steady else None

    # -------------------------------------------------------------- sealing

    def _check_key(self, key: bytes | None) -> None:
        """With a key, records (images included) are sealed with AES-256-GCM, the read id as associated
        data; the outbox remembers a check value of its key, so a wrong key is refused at open and
        nothing queued is touched. Records queued before a key was set are still sent as they are."""
        import hashlib
        import hmac

        check = self.db.execute("SELECT value FROM state WHERE key = 'seal'").fetchone()
        sealed = self.db.execute("SELECT COUNT(*) FROM outbox WHERE substr(payload, 1, 5) = ?", (SEALED,)).fetchone()[0]
        if key is None:
            if sealed:
                raise OutboxError(f"outbox {self.path} holds {sealed} sealed read(s): its key is needed "
                                  "(outbox.key_file); nothing was changed")
            return
        if len(key) != 32:
            raise OutboxError(f"outbox key: expected 32 bytes, got {len(key)}")
        mine = hmac.new(key, b"edge-outbox-seal", hashlib.sha256).hexdigest()[:16]
        if check and check[0] != mine:
            raise OutboxError(f"outbox {self.path} was sealed with another key: this key is wrong; nothing was changed")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._seal = AESGCM(key)
        if not check:
            self.db.execute("INSERT INTO state (key, value) VALUES ('seal', ?)", (mine,))

    def _sealed(self, read_id: str, payload: bytes) -> bytes:
        if self._seal is None:
            return payload
        import os

        nonce = os.urandom(12)
        return SEALED + nonce + self._seal.encrypt(nonce, payload, read_id.encode())

    def _opened(self, read_id: str, data: bytes) -> bytes:
        if not data.startswith(SEALED):
            return data
        if self._seal is None:
            raise OutboxError("a sealed record and no key")
        return self._seal.decrypt(data[5:17], data[17:], read_id.encode())

    # -------------------------------------------------------------- writing

    def put(self, read_id: str, topic: str, payload: bytes) -> bool:
        """Store a record durably (returns after the commit is on disk). False if already queued.

        Bounds, the insert and the counters are one transaction: a drop is never left uncounted.
        """
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self._enforce_bounds(len(payload))
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO outbox (read_id, topic, payload, created) VALUES (?, ?, ?, ?)",
                    (read_id, topic, self._sealed(read_id, payload), self.clock()),
                )
                if cur.rowcount:
                    self._bump("accepted", 1)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            return bool(cur.rowcount)

    def _enforce_bounds(self, incoming: int) -> None:
        """Drop what is too old, then oldest-first while over size or short of disk. Counted."""
        self._follow_clock_steps()
        cutoff = self.clock() - self.max_age_s
        n = self.db.execute("DELETE FROM outbox WHERE created < ?", (cutoff,)).rowcount
        if n:
            self._bump("dropped_age", n)
        size = self.db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()[0]
        # pages SQLite already holds free are reusable space too; deleting rows adds to them
        # without shrinking the file, so count them rather than the disk alone
        page = self.db.execute("PRAGMA page_size").fetchone()[0]
        reusable = self.db.execute("PRAGMA freelist_count").fetchone()[0] * page
        free = shutil.disk_usage(self.path.parent).free + reusable
        while size + incoming > self.max_bytes or free - incoming < self.min_free_bytes:
            row = self.db.execute("SELECT seq, LENGTH(payload) FROM outbox ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                break
            self.db.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))
            self._bump("dropped_space", 1)
            size -= row[1]
            free += row[1]

    def _follow_clock_steps(self) -> None:
        if self._anchor is None or self.steady is None:
            return
        wall, steady = self.clock(), self.steady()
        step = (wall - self._anchor[0]) - (steady - self._anchor[1])
        self._anchor = (wall, steady)
        if abs(step) > CLOCK_STEP_S:
            n = self.db.execute("UPDATE outbox SET created = created + ? WHERE seq >= ?", (step, self._first_own_seq)).rowcount
            self._bump("clock_steps", 1)
            log.warning("wall clock stepped by %+.0f s; %d queued records restamped to keep their age", step, n)

    def _bump(self, name: str, n: int) -> None:
        self.db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    # -------------------------------------------------------------- reading

    def peek(self, limit: int = 50) -> list[Item]:
        """Oldest records first, of those due to be sent: never sent, or sent and still without a
        receipt when their wait ran out."""
        with self.lock:
            rows = self.db.execute(
                "SELECT seq, read_id, topic, payload, created, attempts FROM outbox WHERE due IS NULL OR due <= ? "
                "ORDER BY seq LIMIT ?", (self.clock(), limit)
            ).fetchall()
        return [Item(r[0], r[1], r[2], self._opened(r[1], bytes(r[3])), r[4], r[5]) for r in rows]

    def mark_attempt(self, seq: int) -> None:
        with self.lock:
            self.db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", (seq,))

    def ack(self, seq: int) -> None:
        """The broker acknowledged this record. Without receipts: delete it. With receipts: it waits
        for the collector's receipt, and is sent again if none comes in time."""
        with self.lock:
            if not self.receipts:
                n = self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount
                if n:
                    self._bump("delivered", n)
                return
            row = self.db.execute("SELECT attempts FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if row:
                wait = min(self.receipt_wait_s * 2 ** max(0, int(row[0]) - 1), RECEIPT_WAIT_MAX_S)
                self.db.execute("UPDATE outbox SET due = ? WHERE seq = ?", (self.clock() + wait, seq))

    def receipt(self, stored: list[str], refused: list[str] | None = None) -> int:
        """The collector committed `stored` (or already had them), and refused `refused` for good
        (a record it can never take; counted as dropped_refused). Both leave the outbox; the number
        that did is returned."""
        n = 0
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for ids, counter in ((stored, "delivered"), (refused or [], "dropped_refused")):
                    k = 0
                    for rid in ids:
                        k += self.db.execute("DELETE FROM outbox WHERE read_id = ?", (rid,)).rowcount
                    if k:
                        self._bump(counter, k)
                    n += k
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        return n

    def awaiting_receipt(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM outbox WHERE due IS NOT NULL").fetchone()[0]

    def next_due(self) -> float | None:
        """When the next record waiting for a receipt is sent again (None: nothing waits)."""
        with self.lock:
            r = self.db.execute("SELECT MIN(due) FROM outbox WHERE due IS NOT NULL").fetchone()
        return r[0] if r else None

    def backlog(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def counters(self) -> dict[str, int]:
        with self.lock:
            c = dict(self.db.execute("SELECT name, value FROM counters").fetchall())
        for k in ("accepted", "delivered", "dropped_age", "dropped_space", "dropped_refused"):
            c.setdefault(k, 0)
        return c

    def get_state(self, key: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str | None) -> None:
        """Small durable key/value notes (e.g. where a replay got to)."""
        with self.lock:
            if value is None:
                self.db.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                self.db.execute("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                (key, value))

    def close(self) -> None:
        with self.lock:
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self.db.close()
