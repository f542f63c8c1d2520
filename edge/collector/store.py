"""Storage for the collector: one schema, two engines (SQLite file by default, PostgreSQL by URL).

Reads are stored once, keyed by `read_id`; images by the SHA-256 of their bytes. Times are
integer milliseconds since the Unix epoch (UTC) in both engines, so queries behave the same.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS reads (
        read_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        camera_id TEXT NOT NULL,
        site TEXT,
        plate TEXT NOT NULL,
        plate_fuzzy TEXT NOT NULL,
        confidence REAL NOT NULL,
        ts BIGINT NOT NULL,
        lat DOUBLE PRECISION,
        lon DOUBLE PRECISION,
        direction TEXT,
        region TEXT,
        plate_image TEXT,
        vehicle_image TEXT,
        record TEXT NOT NULL,
        received BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS reads_plate ON reads (plate)",
    "CREATE INDEX IF NOT EXISTS reads_fuzzy ON reads (plate_fuzzy)",
    "CREATE INDEX IF NOT EXISTS reads_ts ON reads (ts)",
    "CREATE INDEX IF NOT EXISTS reads_camera ON reads (camera_id, ts)",
    "CREATE TABLE IF NOT EXISTS images (hash TEXT PRIMARY KEY, data {blob} NOT NULL)",
    # where each fixed camera is (its latest positioned read), kept at ingest so a map of the cameras
    # never scans the reads; a vehicle-mounted camera is left out: its position is where it last read
    """CREATE TABLE IF NOT EXISTS cameras (
        camera_id TEXT PRIMARY KEY, site TEXT, lat DOUBLE PRECISION NOT NULL, lon DOUBLE PRECISION NOT NULL, last_seen BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS rejects (
        id {serial},
        received BIGINT NOT NULL,
        topic TEXT,
        reason TEXT NOT NULL,
        payload {blob}
    )""",
    "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, token_hash TEXT, created BIGINT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS cases (
        id TEXT PRIMARY KEY, title TEXT, status TEXT NOT NULL, opened BIGINT NOT NULL, closed BIGINT, opened_by TEXT NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS case_reads (case_id TEXT NOT NULL, read_id TEXT NOT NULL, held BIGINT NOT NULL, PRIMARY KEY (case_id, read_id))",
    """CREATE TABLE IF NOT EXISTS approvals (
        id TEXT PRIMARY KEY, requester TEXT NOT NULL, case_id TEXT NOT NULL, query TEXT NOT NULL,
        created BIGINT NOT NULL, approver TEXT, approved BIGINT, used BIGINT
    )""",
    """CREATE TABLE IF NOT EXISTS audit (
        seq BIGINT PRIMARY KEY, ts BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        detail TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS user_requests (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, rotate INTEGER NOT NULL, requested_by TEXT NOT NULL,
        created BIGINT NOT NULL, confirmed_by TEXT, confirmed BIGINT
    )""",
    "CREATE TABLE IF NOT EXISTS login_failures (source TEXT NOT NULL, ts BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS query_cache (key TEXT PRIMARY KEY, created BIGINT NOT NULL, result TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    # vehicles of possible interest (edge.collector.hotlist): entries, the devices they go to, the signed
    # bundles made of them, and the alerts devices raise
    """CREATE TABLE IF NOT EXISTS hotlist (
        id TEXT PRIMARY KEY, plate TEXT NOT NULL, lookalike INTEGER NOT NULL, region TEXT, site TEXT, reason TEXT NOT NULL,
        case_id TEXT NOT NULL, requested_by TEXT NOT NULL, batch TEXT, created BIGINT NOT NULL, expires BIGINT NOT NULL,
        approved_by TEXT, approved BIGINT, removed_by TEXT, removed BIGINT, remove_reason TEXT, expiry_noted BIGINT
    )""",
    "CREATE INDEX IF NOT EXISTS hotlist_case ON hotlist (case_id)",
    """CREATE TABLE IF NOT EXISTS hotlist_devices (
        device_id TEXT PRIMARY KEY, site TEXT, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL, version BIGINT,
        sent_version BIGINT, parts INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS hotlist_bundles (
        scope TEXT NOT NULL, rev BIGINT NOT NULL, version BIGINT NOT NULL, created BIGINT NOT NULL, entries BIGINT NOT NULL,
        manifest {blob} NOT NULL, parts {blob} NOT NULL, PRIMARY KEY (scope, rev)
    )""",
    """CREATE TABLE IF NOT EXISTS alerts (
        alert_id TEXT PRIMARY KEY, entry_id TEXT NOT NULL, case_id TEXT, device_id TEXT NOT NULL, read_id TEXT NOT NULL,
        kind TEXT NOT NULL, confirmed TEXT NOT NULL, flags TEXT NOT NULL, first_read BIGINT NOT NULL, seen BIGINT NOT NULL,
        received BIGINT NOT NULL, camera_id TEXT, site TEXT, plate TEXT NOT NULL, plate_image TEXT, record TEXT NOT NULL,
        acked_by TEXT, acked BIGINT, ack_note TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS alerts_case ON alerts (case_id, received)",
    "CREATE TABLE IF NOT EXISTS approval_denials (id TEXT PRIMARY KEY, denied_by TEXT NOT NULL, denied BIGINT NOT NULL, reason TEXT NOT NULL)",
    # the web app's sessions (edge.collector.web): the cookie's hash, its user, its CSRF token, the browser it belongs to
    """CREATE TABLE IF NOT EXISTS web_sessions (
        id_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL, csrf TEXT NOT NULL, browser TEXT NOT NULL, created BIGINT NOT NULL,
        seen BIGINT NOT NULL, ended BIGINT
    )""",
]


class StoreError(Exception):
    pass


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


DB_URL_FORMS = "sqlite:///relative/path.db, sqlite:////absolute/path.db or postgresql://user:password@host/dbname"


def parse_db_url(url: str) -> tuple[str, str]:
    """("sqlite", file path) or ("postgresql", url), the SQLAlchemy forms: sqlite:/// then a path
    relative to the working folder, four slashes for an absolute one. Anything else is an error."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StoreError(f"--db {url!r} is not a database URL (one of {DB_URL_FORMS})")
    if scheme in ("postgresql", "postgres"):
        return "postgresql", url
    if scheme != "sqlite":
        raise StoreError(f"--db: unknown database kind {scheme!r} (one of {DB_URL_FORMS})")
    if not rest.startswith("/") or len(rest) < 2:
        raise StoreError(f"--db {url!r}: a SQLite URL is sqlite:/// and then the file's path ({DB_URL_FORMS})")
    return "sqlite", rest[1:]


def redact_db_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


class Store:
    """A thin engine adapter: `?` placeholders in, the engine's own out."""

    def __init__(self, url: str):
        kind, path = parse_db_url(url)
        self.url = url
        self.lock = threading.RLock()
        self.conn: Any  # a psycopg or sqlite3 connection
        if kind == "postgresql":
            try:
                import psycopg
            except ImportError:
                raise StoreError("PostgreSQL needs psycopg: pip install 'edge-lpr[collector]'") from None
            try:
                self.conn = psycopg.connect(url, autocommit=True)
            except psycopg.Error as e:
                raise StoreError(f"cannot connect to PostgreSQL: {str(e).strip().splitlines()[0]}") from None
            self.engine = "postgresql"
            self.ph = "%s"
            blob, serial = "BYTEA", "BIGSERIAL PRIMARY KEY"
            self._errors: tuple = (psycopg.Error,)
        else:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute("PRAGMA foreign_keys=ON")
                self.conn.execute("PRAGMA secure_delete=ON")  # a deleted read's bytes are overwritten, not left in free pages
            except (sqlite3.Error, OSError) as e:
                raise StoreError(f"cannot open SQLite database {path}: {e}") from None
            self.engine = "sqlite"
            self.ph = "?"
            blob, serial = "BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"
            self._errors = (sqlite3.Error,)
        with self.tx():
            for stmt in SCHEMA:
                self.execute(stmt.format(blob=blob, serial=serial))
            if self.one("SELECT value FROM counters WHERE name = 'schema_cameras'") is None:
                # a store made before the cameras table: fill it once from the reads
                rows = self.query("SELECT camera_id, MAX(site), AVG(lat), AVG(lon), MAX(ts) FROM reads WHERE lat IS NOT NULL "
                                  "AND lon IS NOT NULL AND record NOT LIKE ? GROUP BY camera_id", ('%"mounting":"vehicle"%',))
                self.note_cameras({r[0]: (r[1], float(r[2]), float(r[3]), int(r[4])) for r in rows})
                self.execute("INSERT INTO counters (name, value) VALUES ('schema_cameras', 1) ON CONFLICT (name) DO NOTHING")

    def recover(self) -> None:
        """After an error: roll back what is open, and reconnect to PostgreSQL if the link dropped."""
        with self.lock:
            if self.engine == "sqlite":
                try:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                return
            import psycopg

            if self.conn.closed or self.conn.broken:
                try:
                    self.conn = psycopg.connect(self.url, autocommit=True)
                except psycopg.Error:
                    pass

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.engine == "postgresql" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()):
        with self.lock:
            return self.conn.execute(self._sql(sql), tuple(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.lock:
            return list(self.execute(sql, params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()):
        rows = self.query(sql, params)
        return rows[0] if rows else None

    @contextmanager
    def tx(self, exclusive: bool = False):
        """A transaction; `exclusive` serialises writers across processes (audit chain)."""
        with self.lock:
            if self.engine == "sqlite":
                # always IMMEDIATE: a deferred transaction that reads and then writes is refused at once
                # ("database is locked", no waiting) when another process wrote in between
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            else:
                with self.conn.transaction():
                    if exclusive:
                        self.conn.execute("SELECT pg_advisory_xact_lock(7331)")
                    yield self

    def bump(self, name: str, n: int = 1) -> None:
        self.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
                     (name, n))

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.query("SELECT name, value FROM counters")}

    def put_image(self, data: bytes) -> str:
        h = sha256(data)
        # DO UPDATE (not DO NOTHING) locks an existing row, so retention cannot delete it under us
        self.execute("INSERT INTO images (hash, data) VALUES (?, ?) ON CONFLICT (hash) DO UPDATE SET hash = excluded.hash", (h, data))
        return h

    def insert_read(self, row: dict) -> bool:
        cols = list(row)
        sql = f"INSERT INTO reads ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) ON CONFLICT (read_id) DO NOTHING"
        cur = self.execute(sql, [row[c] for c in cols])
        return cur.rowcount == 1

    def note_cameras(self, cams: dict[str, tuple[str | None, float, float, int]]) -> None:
        """Upsert camera -> (site, lat, lon, time of the read): the newest position wins. In camera order,
        so collectors writing at once take the rows' locks in one order."""
        for cam in sorted(cams):
            site, lat, lon, ts = cams[cam]
            self.execute("INSERT INTO cameras (camera_id, site, lat, lon, last_seen) VALUES (?, ?, ?, ?, ?) ON CONFLICT (camera_id) "
                         "DO UPDATE SET site = excluded.site, lat = excluded.lat, lon = excluded.lon, last_seen = excluded.last_seen "
                         "WHERE excluded.last_seen >= cameras.last_seen", (cam, site, lat, lon, ts))

    def insert_reject(self, received: int, topic: str, reason: str, payload: bytes) -> None:
        self.execute("INSERT INTO rejects (received, topic, reason, payload) VALUES (?, ?, ?, ?)",
                     (received, topic[:256], reason[:500], payload[:4096]))

    def image(self, h: str) -> bytes | None:
        r = self.one("SELECT data FROM images WHERE hash = ?", (h,))
        return bytes(r[0]) if r else None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.lock:
            if self.engine == "sqlite":
                self.conn.executemany(self._sql(sql), list(rows))
            else:
                with self.conn.cursor() as cur:
                    cur.executemany(self._sql(sql), list(rows))

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
