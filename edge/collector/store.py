"""Storage for the collector: one schema, two engines (SQLite file by default, PostgreSQL by URL).

Reads are stored once, keyed by `read_id`; images by the SHA-256 of their bytes. Times are
integer milliseconds since the Unix epoch (UTC) in both engines, so queries behave the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.collector.images import MARKER, ImageDir, ImageDirError
from edge.collector.partitions import Days

READ_COLUMNS = """
        read_id TEXT {pk},
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
        received BIGINT NOT NULL"""

# SQLite (one site): one table, read_id its key
SQLITE_READS = [
    f"CREATE TABLE IF NOT EXISTS reads ({READ_COLUMNS.format(pk='PRIMARY KEY')}\n    )",
    "CREATE INDEX IF NOT EXISTS reads_plate ON reads (plate)",
    "CREATE INDEX IF NOT EXISTS reads_fuzzy ON reads (plate_fuzzy)",
    "CREATE INDEX IF NOT EXISTS reads_ts ON reads (ts)",
    "CREATE INDEX IF NOT EXISTS reads_camera ON reads (camera_id, ts)",
]

# PostgreSQL (many sites, years of holds): reads partitioned first by whether a case holds them, then the
# live ones by UTC day (edge.collector.partitions makes the days), so retention drops whole days and a
# drop never takes a held read; read_keys keeps each read_id once across all partitions (exactly-once);
# a PostGIS point with a GiST index where the extension is there
PG_READS = [
    f"""CREATE TABLE IF NOT EXISTS reads ({READ_COLUMNS.format(pk='NOT NULL')},
        held BOOLEAN NOT NULL DEFAULT false{{geog}}
    ) PARTITION BY LIST (held)""",
    "CREATE TABLE IF NOT EXISTS reads_held PARTITION OF reads FOR VALUES IN (true)",
    "CREATE TABLE IF NOT EXISTS reads_live PARTITION OF reads FOR VALUES IN (false) PARTITION BY RANGE (ts)",
    "CREATE TABLE IF NOT EXISTS read_keys (read_id TEXT PRIMARY KEY, ts BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS read_keys_ts ON read_keys (ts)",
    "CREATE INDEX IF NOT EXISTS reads_id ON reads (read_id)",
    # text_pattern_ops: the same index serves = and a wildcard's fixed start (LIKE 'AB12%') in any collation
    "CREATE INDEX IF NOT EXISTS reads_plate ON reads (plate text_pattern_ops, ts)",
    "CREATE INDEX IF NOT EXISTS reads_fuzzy ON reads (plate_fuzzy, ts)",
    "CREATE INDEX IF NOT EXISTS reads_ts ON reads (ts)",
    "CREATE INDEX IF NOT EXISTS reads_camera ON reads (camera_id, ts)",
]
PG_GEOG = (",\n        geog geography(Point, 4326) GENERATED ALWAYS AS (CASE WHEN lat IS NULL OR lon IS NULL THEN NULL "
           "ELSE ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography END) STORED")

SCHEMA = [
    # images by the SHA-256 of their bytes; last_ts: the newest read (or alert) that names it, so retention
    # finds the images it may delete without reading every read; file: where the bytes are when an image
    # directory keeps them (edge.collector.images; data is then empty), else NULL
    "CREATE TABLE IF NOT EXISTS images (hash TEXT PRIMARY KEY, data {blob} NOT NULL, last_ts BIGINT NOT NULL DEFAULT 0, file TEXT)",
    # image files whose rows retention deleted, unlinked after its commit (a retention killed in between
    # leaves them here for the next one)
    "CREATE TABLE IF NOT EXISTS image_trash (file TEXT PRIMARY KEY)",
    # the store's own facts: where its image directory is, and that directory's marker
    "CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
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


log = logging.getLogger("edge.collector.store")

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

    def __init__(self, url: str, images: str | None = None):
        """`images`: a directory to keep image bytes in (edge.collector.images); None: where this database
        keeps them (in it, or the directory it recorded)."""
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
                from edge.collector.query import haversine_km

                self.conn.create_function("haversine_km", 4, lambda a, b, c, d: None if None in (a, b, c, d) else haversine_km(a, b, c, d),
                                          deterministic=True)
            except (sqlite3.Error, OSError) as e:
                raise StoreError(f"cannot open SQLite database {path}: {e}") from None
            self.engine = "sqlite"
            self.ph = "?"
            blob, serial = "BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"
            self._errors = (sqlite3.Error,)
        self.partitioned = self.postgis = False
        self.days: Days | None = None  # on PostgreSQL
        if self.engine == "postgresql":
            self._pg_reads()
        with self.tx():
            if self.engine == "sqlite":
                for stmt in SQLITE_READS:
                    self.execute(stmt)
            for stmt in SCHEMA:
                self.execute(stmt.format(blob=blob, serial=serial))
            self._upgrade()
        self.image_dir: ImageDir | None = None
        try:
            self.image_dir = self._open_image_dir(images)
        except StoreError:
            self.conn.close()
            raise

    def setting(self, name: str) -> str | None:
        row = self.one("SELECT value FROM settings WHERE name = ?", (name,))
        return row[0] if row else None

    def set_setting(self, name: str, value: str) -> None:
        self.execute("INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                     (name, value))

    def _open_image_dir(self, arg: str | None) -> ImageDir | None:
        """The image directory: the one given (made this store's the first time), else the one recorded."""
        given = Path(arg.removeprefix("file://")).expanduser().absolute() if arg else None
        if given is None and self.setting("images_store") is None:
            return None  # images in the database: no lock taken at every start
        with self.tx(exclusive=True):  # collectors starting together on a new directory agree on one marker
            sid, where = self.setting("images_store"), self.setting("images_dir")
            if sid is None:
                if given is None:
                    return None
                mark = ImageDir.marker_of(given)
                if mark is not None:
                    raise StoreError(f"--images {given}: that directory holds another database's images (marker {mark})")
                sid = secrets.token_hex(8)
                try:
                    d = ImageDir.create(given, sid)
                except ImageDirError as e:
                    raise StoreError(str(e)) from None
                self.set_setting("images_store", sid)
                self.set_setting("images_dir", str(given))
                return d
            path = given or Path(where or "")
            mark = ImageDir.marker_of(path)
            if mark != sid:
                if given is None:
                    raise StoreError(f"this database keeps its images in {where}, which is not there or not its image store "
                                     f"(no {MARKER} marker {sid}): mount it there, or give --images DIR where it is now")
                raise StoreError(f"--images {given}: not this database's image store (it keeps them in {where}, marker {sid})")
            if given is not None and str(given) != where:  # the directory was moved or mounted elsewhere
                self.set_setting("images_dir", str(given))
            return ImageDir(path, sid)

    def _pg_reads(self) -> None:
        """The partitioned reads on PostgreSQL (an older plain `reads` table is moved into it once)."""
        with self.tx():
            self.execute("SELECT pg_advisory_xact_lock(7333)")  # collectors starting together make it once
            kind = self.one("SELECT relkind FROM pg_class WHERE relname = 'reads' AND relnamespace = current_schema()::regnamespace")
            self.postgis = self._try_postgis()
            if kind is not None and kind[0] == "r":
                self.execute("ALTER TABLE reads RENAME TO reads_unpartitioned")
                for ix in ("reads_plate", "reads_fuzzy", "reads_ts", "reads_camera"):
                    self.execute(f"DROP INDEX IF EXISTS {ix}")
            for stmt in PG_READS:
                self.execute(stmt.format(geog=PG_GEOG if self.postgis else ""))
            self.postgis = self.one("SELECT 1 FROM information_schema.columns WHERE table_name = 'reads' AND column_name = 'geog'") is not None
            if self.postgis:
                self.execute("CREATE INDEX IF NOT EXISTS reads_geog ON reads USING GIST (geog)")
        self.partitioned = True
        self.days = Days(self)
        self.days.maintain(int(time.time() * 1000))  # this week's days, before any batch needs them
        if kind is not None and kind[0] == "r":
            self._move_unpartitioned()

    def _try_postgis(self) -> bool:
        if self.one("SELECT 1 FROM pg_extension WHERE extname = 'postgis'"):
            return True
        if not self.one("SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'"):
            return False
        try:
            self.execute("SAVEPOINT postgis")
            self.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            self.execute("RELEASE SAVEPOINT postgis")
            return True
        except self._errors:  # not allowed to (not a superuser): plain latitude and longitude
            self.execute("ROLLBACK TO SAVEPOINT postgis")
            return False

    def _move_unpartitioned(self) -> None:
        assert self.days is not None
        cols = "read_id, device_id, camera_id, site, plate, plate_fuzzy, confidence, ts, lat, lon, direction, region, " \
               "plate_image, vehicle_image, record, received"
        days = {int(d) for (d,) in self.query("SELECT DISTINCT ts / 86400000 FROM reads_unpartitioned")}
        self.days.ensure(days)
        with self.tx():
            self.execute("INSERT INTO read_keys (read_id, ts) SELECT read_id, ts FROM reads_unpartitioned ON CONFLICT DO NOTHING")
            self.execute(f"INSERT INTO reads ({cols}, held) SELECT {cols}, read_id IN (SELECT read_id FROM case_reads) "
                         f"FROM reads_unpartitioned")
            self.execute("DROP TABLE reads_unpartitioned")

    def _upgrade(self) -> None:
        """Columns and tables a store made by an older version lacks, filled once."""
        if self.engine == "sqlite":
            has = {r[1] for r in self.query("PRAGMA table_info(images)")}
            if "last_ts" not in has:
                self.execute("ALTER TABLE images ADD COLUMN last_ts BIGINT NOT NULL DEFAULT 0")
            if "file" not in has:
                self.execute("ALTER TABLE images ADD COLUMN file TEXT")
        else:
            self.execute("ALTER TABLE images ADD COLUMN IF NOT EXISTS last_ts BIGINT NOT NULL DEFAULT 0")
            self.execute("ALTER TABLE images ADD COLUMN IF NOT EXISTS file TEXT")
            # JPEG bytes do not compress: stored out of line as they are, not tried with pglz on every insert
            self.execute("ALTER TABLE images ALTER COLUMN data SET STORAGE EXTERNAL")
        self.execute("CREATE INDEX IF NOT EXISTS images_last_ts ON images (last_ts)")
        if self.one("SELECT value FROM counters WHERE name = 'schema_images_last_ts'") is None:
            for col, ts, table in (("plate_image", "ts", "reads"), ("vehicle_image", "ts", "reads"),
                                   ("plate_image", "received", "alerts")):
                self.execute(f"UPDATE images SET last_ts = m.ts FROM (SELECT {col} AS h, MAX({ts}) AS ts FROM {table} "
                             f"WHERE {col} IS NOT NULL GROUP BY {col}) AS m WHERE images.hash = m.h AND m.ts > images.last_ts")
            self.execute("INSERT INTO counters (name, value) VALUES ('schema_images_last_ts', 1) ON CONFLICT (name) DO NOTHING")
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

    def put_image(self, data: bytes, ts: int) -> str:
        """Store one image; `ts`: the time of the newest read (or alert) that names it, which retention goes by."""
        return self.put_images({sha256(data): (data, ts)})[0]

    def put_images(self, images: dict[str, tuple[bytes, int]]) -> list[str]:
        """Store images (hash -> (bytes, time of the read naming it)), each once; in hash order, so
        collectors writing at once lock rows in one order. Inside the caller's transaction: with an image
        directory, the new files are durable before it commits."""
        hashes = sorted(images)
        new: dict[str, bytes] = {}
        for i in range(0, len(hashes), 200):
            chunk = hashes[i : i + 200]
            # DO UPDATE (not DO NOTHING) locks an existing row, so retention cannot delete it under us
            upsert = (" ON CONFLICT (hash) DO UPDATE SET last_ts = CASE WHEN excluded.last_ts > images.last_ts "
                      "THEN excluded.last_ts ELSE images.last_ts END")
            if self.image_dir is None:
                self.execute("INSERT INTO images (hash, data, last_ts) VALUES " + ", ".join(["(?, ?, ?)"] * len(chunk)) + upsert,
                             [v for h in chunk for v in (h, images[h][0], int(images[h][1]))])
                continue
            names = {h: self.image_dir.name_for(h) for h in chunk}
            got = self.query("INSERT INTO images (hash, data, last_ts, file) VALUES " + ", ".join(["(?, ?, ?, ?)"] * len(chunk)) +
                             upsert + " RETURNING hash, file",
                             [v for h in chunk for v in (h, b"", int(images[h][1]), names[h])])
            new.update((f, images[h][0]) for h, f in got if f == names[h])  # a row already there keeps its file
        if new:
            assert self.image_dir is not None
            self.image_dir.write(new)
        return hashes

    def unlink_trash(self) -> int:
        """Unlink the files retention deleted the rows of (after its commit), then forget them."""
        if self.image_dir is None:
            return 0
        names = [f for (f,) in self.query("SELECT file FROM image_trash")]
        gone = self.image_dir.unlink(names)
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            self.execute(f"DELETE FROM image_trash WHERE file IN ({', '.join('?' * len(chunk))})", chunk)
        return gone

    def sweep_images(self, now_ms: int) -> int:
        """Unlink files no row names (written by a transaction that never committed), in the directories
        of the days since the last sweep less two (every day's the first time); files under an hour old
        are left, as an open transaction may still commit them."""
        if self.image_dir is None:
            return 0
        last = self.setting("images_swept")
        since = datetime.fromtimestamp(int(last) / 1000 - 2 * 86400, UTC).strftime("%Y%m%d") if last else ""
        orphans: list[str] = []
        for day in self.image_dir.days():
            if day < since:
                continue
            files = self.image_dir.files_of_day(day)
            for i in range(0, len(files), 500):
                chunk = files[i : i + 500]
                hashes = sorted({f.rsplit("/", 1)[-1].split("-", 1)[0] for f in chunk})
                named = {f for (f,) in self.query(f"SELECT file FROM images WHERE hash IN ({', '.join('?' * len(hashes))})",
                                                  hashes) if f is not None}
                orphans += [f for f in chunk if f not in named]
        gone = self.image_dir.unlink(orphans)
        if orphans:
            log.warning("image store: %d file(s) no image row names (left by a collector stopped mid-write) removed", gone)
        self.set_setting("images_swept", str(now_ms))
        return gone

    def insert_read(self, row: dict) -> bool:
        return row["read_id"] in self.insert_reads([row])

    def insert_reads(self, rows: list[dict]) -> set[str]:
        """Insert reads not stored yet (multi-row, in read_id order); the ids stored now. Inside the
        caller's transaction; on PostgreSQL the days they fall on must exist (`days.ensure`)."""
        if not rows:
            return set()
        cols = list(rows[0])
        first: dict[str, dict] = {}
        for r in sorted(rows, key=lambda r: r["read_id"]):
            first.setdefault(r["read_id"], r)
        order = list(first.values())
        stored: set[str] = set()
        step = 500
        row_marks = "(" + ", ".join("?" * len(cols)) + ")"
        for i in range(0, len(order), step):
            chunk = order[i : i + step]
            values = ", ".join([row_marks] * len(chunk))
            if self.partitioned:
                keys = self.query("INSERT INTO read_keys (read_id, ts) VALUES " + ", ".join(["(?, ?)"] * len(chunk)) +
                                  " ON CONFLICT (read_id) DO NOTHING RETURNING read_id",
                                  [v for r in chunk for v in (r["read_id"], r["ts"])])
                new = {k for (k,) in keys}
                chunk = [r for r in chunk if r["read_id"] in new]
                if chunk:
                    self.execute(f"INSERT INTO reads ({', '.join(cols)}) VALUES " + ", ".join([row_marks] * len(chunk)),
                                 [r[c] for r in chunk for c in cols])
                stored |= new
            else:
                got = self.query(f"INSERT INTO reads ({', '.join(cols)}) VALUES {values} ON CONFLICT (read_id) DO NOTHING "
                                 "RETURNING read_id", [r[c] for r in chunk for c in cols])
                stored |= {k for (k,) in got}
        return stored

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
        return self.images([h]).get(h)

    def images(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """Images by hash, many at once (from the database or the image directory, as each was stored)."""
        want = sorted(set(hashes))
        out: dict[str, bytes] = {}
        for i in range(0, len(want), 500):
            chunk = want[i : i + 500]
            for h, d, f in self.query(f"SELECT hash, data, file FROM images WHERE hash IN ({', '.join('?' * len(chunk))})", chunk):
                if f is None:
                    out[h] = bytes(d)
                elif self.image_dir is not None and (b := self.image_dir.read(f)) is not None:
                    out[h] = b
        return out

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
        if self.image_dir is not None:
            self.image_dir.close()


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
