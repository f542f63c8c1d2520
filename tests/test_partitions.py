"""The collector's store at scale: PostgreSQL's reads partitioned by hold and by day, PostGIS, batched ingest, and
the same answers as SQLite (issue: national-scale collector). Real SQLite, real PostgreSQL with PostGIS."""

import json
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

from edge.collector import partitions
from edge.collector.governance import DAY_MS, Governance, Policy
from edge.collector.ingest import Ingestor
from edge.collector.query import Query, haversine_km, search
from edge.collector.store import Store

from .conftest import run_edge
from .test_collector import NOW, good, setup_gov

ON_POSTGRES = pytest.mark.parametrize("store", ["postgresql"], indirect=True)  # SQLite keeps one table


@ON_POSTGRES
def test_days_are_made_ahead_with_an_injected_clock_and_on_demand(store):
    assert store.partitioned and store.postgis  # make test installs PostGIS
    gov, clock = setup_gov(store)
    store.days.maintain(gov.now_ms())
    today = partitions.day_of(gov.now_ms())
    names = {n for (n,) in store.query("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                       "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'reads_live'")}
    assert names == {partitions.name_of(d) for d in range(today, today + partitions.AHEAD_DAYS + 1)}
    assert "reads_live_20261127" in names  # NOW is 2026-11-27
    # a read from a device that was away for weeks makes its own day, outside any transaction of the batch
    Ingestor(store).ingest([("t", good(1, NOW - timedelta(days=20), "LATE111"))])
    assert partitions.name_of(today - 20) in {partitions.name_of(d) for d in store.days.known}
    assert store.one("SELECT tableoid::regclass::text FROM reads WHERE plate = 'LATE111'")[0] == "reads_live_20261107"
    # a second store (another collector) sees the days the first made and makes none twice
    other = Store(store.url)
    assert other.days.maintain(gov.now_ms()) == []
    other.close()


def test_retention_drops_whole_days_and_never_a_held_read(store):
    ing = Ingestor(store)
    gov, clock = setup_gov(store)
    # 3 days of reads 40 days back, one of them held for an open case, one for a case that then closes
    msgs = [("t", good(i, NOW - timedelta(days=40 + i % 3, hours=i % 24), f"OLD{i:04d}")) for i in range(60)]
    msgs += [("t", good(100 + i, NOW - timedelta(days=2, hours=i), f"NEW{i:04d}")) for i in range(10)]
    ing.ingest(msgs)
    ids = dict(store.query("SELECT plate, read_id FROM reads"))
    gov.open_case("sam", "CASE-2", "closed later")
    assert gov.hold("alice", "CASE-1", [ids["OLD0007"]]) == 1
    assert gov.hold("alice", "CASE-2", [ids["OLD0008"]]) == 1
    if store.partitioned:
        held = {p for (p,) in store.query("SELECT plate FROM reads_held")}
        assert held == {"OLD0007", "OLD0008"}
    gov.close_case("sam", "CASE-2")
    before = store.one("SELECT COUNT(*) FROM reads")[0]
    done = gov.retention("adm")
    left = {p for (p,) in store.query("SELECT plate FROM reads")}
    assert left == {"OLD0007"} | {f"NEW{i:04d}" for i in range(10)}
    assert done["deleted_reads"] == before - len(left) == 59
    if store.partitioned:
        assert len(done["dropped_days"]) >= 3  # whole days, not row by row
        assert not any(partitions.day_of((NOW - timedelta(days=40)).timestamp() * 1000) == d for d in store.days.known)
        # the keys of the deleted reads are gone too; the held read keeps its own
        assert store.one("SELECT COUNT(*) FROM read_keys")[0] == len(left)
    # audited, with the days it dropped
    last = store.one("SELECT action, detail FROM audit ORDER BY seq DESC LIMIT 1")
    assert last[0] == "retention.delete" and json.loads(last[1])["deleted_reads"] == 59
    # the held read's image stays; the case's read is still found by the case
    assert store.one("SELECT COUNT(*) FROM images")[0] == 1
    # once its case closes, the held read goes at the next run
    gov.close_case("sam", "CASE-1")
    gov.retention("adm")
    assert {p for (p,) in store.query("SELECT plate FROM reads")} == {f"NEW{i:04d}" for i in range(10)}
    clock[0] += 29 * 86400  # and a month on, the new ones too, and their image
    gov.retention("adm")
    assert store.one("SELECT COUNT(*) FROM reads")[0] == 0
    assert store.one("SELECT COUNT(*) FROM images")[0] == 0


@ON_POSTGRES
def test_a_released_hold_inside_retention_returns_to_its_day(store):
    gov, clock = setup_gov(store)
    Ingestor(store).ingest([("t", good(1, NOW - timedelta(days=5), "KEEP111"))])
    rid = store.one("SELECT read_id FROM reads")[0]
    gov.open_case("sam", "CASE-3", "short")
    gov.hold("alice", "CASE-3", [rid])
    store.days.drop(partitions.day_of((NOW - timedelta(days=5)).timestamp() * 1000))  # its day went while it was held
    gov.close_case("sam", "CASE-3")
    gov.retention("adm")
    assert store.one("SELECT plate, held, tableoid::regclass::text FROM reads") == ("KEEP111", False, "reads_live_20261122")


def test_batched_ingest_is_exactly_once_across_two_writers(store):
    """Two ingestors (two collectors) on one store, each given the same reads in another order and
    some twice in a batch, one with a forged copy: each read stored once, the forgery a conflict."""
    msgs = [("t", good(i, NOW - timedelta(minutes=i))) for i in range(600)]
    forged = json.loads(msgs[5][1])
    forged["plate"]["text"] = "FORGED1"
    forged["plate"]["char_confidences"] = [0.9] * 7
    a = msgs[:400] + msgs[:3]
    b = list(reversed(msgs[200:])) + [("t", json.dumps(forged).encode())]
    other = Store(store.url) if store.engine == "postgresql" else store
    out: dict[str, object] = {}

    def run(name, st, batch):
        ing = Ingestor(st)
        res = [ing.ingest(batch[i : i + 100]) for i in range(0, len(batch), 100)]
        out[name] = res

    ts = [threading.Thread(target=run, args=("a", store, a)), threading.Thread(target=run, args=("b", other, b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert store.one("SELECT COUNT(*) FROM reads")[0] == 600
    assert store.one("SELECT COUNT(DISTINCT read_id) FROM reads")[0] == 600
    stored = sum(r.stored for rs in out.values() for r in rs)
    dup = sum(r.duplicate for rs in out.values() for r in rs)
    conflict = sum(r.conflict for rs in out.values() for r in rs)
    assert (stored, dup, conflict) == (600, len(a) + len(b) - 1 - 600, 1)
    assert store.one("SELECT plate FROM reads WHERE read_id = ?", (json.loads(msgs[5][1])["read_id"],))[0] != "FORGED1"
    # one outcome per message, in the batch's order
    assert [o[1] for o in out["a"][4].outcomes] == [json.loads(p)["read_id"] for _, p in a[400:403]]
    if other is not store:
        other.close()


def load_same(store) -> None:
    """The same 400 reads, plates repeating, three cameras, points scattered around 47N 15E."""
    rnd = random.Random(7)
    msgs = []
    for i in range(400):
        lat, lon = 47.0 + rnd.uniform(-0.1, 0.1), 15.0 + rnd.uniform(-0.15, 0.15)
        msgs.append(("t", good(i, NOW - timedelta(minutes=3 * i), f"AB{rnd.randrange(40):03d}CD", lat=lat, lon=lon,
                               camera=f"cam-{i % 3}", site="north" if i % 2 else "south")))
    Ingestor(store).ingest(msgs)


QUESTIONS = [
    Query(plate="AB007CD"), Query(plate="AB0O7CD", match="fuzzy"), Query(plate="AB01*CD", match="wildcard"),
    Query(camera="cam-1"), Query(site="north"), Query(near=(47.0, 15.0, 5.0)), Query(near=(47.05, 14.95, 2.5)),
    Query(box=(46.95, 14.9, 47.02, 15.05)), Query(box=(47.03, 15.0, 47.08, 15.12)), Query(box=(46.9, 14.85, 47.1, 15.15)),
    Query(camera="cam-2", near=(47.0, 15.0, 8.0)),
]


def test_queries_give_the_same_reads_on_sqlite_and_postgresql(postgres, tmp_path):
    answers = {}
    for engine, url in (("sqlite", f"sqlite:///{tmp_path / 'same.db'}"), ("postgresql", postgres.database("same"))):
        s = Store(url)
        load_same(s)
        gov = Governance(s, Policy(retention_days=30, require_ack=False, history_reads=10_000, audit_head_file=tmp_path / engine),
                         clock=lambda: NOW.timestamp())
        gov.add_user("root", "alice", "investigator")
        gov.add_user("root", "sam", "supervisor")
        gov.open_case("sam", "C", "same")
        got = []
        for q in QUESTIONS:
            q = Query(**{**q.__dict__, "since_ms": int(NOW.timestamp() * 1000) - DAY_MS, "until_ms": int(NOW.timestamp() * 1000)})
            pages = []
            for off in (0, 25):  # two pages, so a radius filtered after the page would show
                q.limit, q.offset = 25, off
                # the read ids are drawn afresh for each load: a read is its time, plate and camera
                pages.append([(r["time"], r["plate"]["text"], r["camera"]["id"]) for r in search(gov, "alice", "C", q)])
            got.append(pages)
        answers[engine] = got
        if engine == "postgresql":
            assert s.postgis
        s.close()
    assert answers["sqlite"] == answers["postgresql"]
    assert all(sum(map(len, pages)) > 0 for pages in answers["sqlite"])
    # and a radius search finds exactly the reads within it
    s = Store(f"sqlite:///{tmp_path / 'same.db'}")
    inside = {(json.loads(rec)["time"], p, c) for rec, p, c, la, lo in s.query("SELECT record, plate, camera_id, lat, lon FROM reads")
              if haversine_km(47.0, 15.0, la, lo) <= 5.0}
    s.close()
    assert len(inside) > 50 and set(answers["sqlite"][5][0] + answers["sqlite"][5][1]) <= inside


def test_an_older_unpartitioned_postgres_store_is_moved_into_days(postgres):
    import psycopg

    url = postgres.database("old")
    with psycopg.connect(url, autocommit=True) as c:  # the layout of 0.4.0 and before, with a held read
        c.execute("""CREATE TABLE reads (read_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, camera_id TEXT NOT NULL, site TEXT,
            plate TEXT NOT NULL, plate_fuzzy TEXT NOT NULL, confidence REAL NOT NULL, ts BIGINT NOT NULL, lat DOUBLE PRECISION,
            lon DOUBLE PRECISION, direction TEXT, region TEXT, plate_image TEXT, vehicle_image TEXT, record TEXT NOT NULL,
            received BIGINT NOT NULL)""")
        c.execute("CREATE INDEX reads_plate ON reads (plate)")
        c.execute("CREATE TABLE images (hash TEXT PRIMARY KEY, data BYTEA NOT NULL)")
        c.execute("CREATE TABLE case_reads (case_id TEXT NOT NULL, read_id TEXT NOT NULL, held BIGINT NOT NULL, "
                  "PRIMARY KEY (case_id, read_id))")
        for i in range(3):
            ts = int((NOW - timedelta(days=i)).timestamp() * 1000)
            c.execute("INSERT INTO reads VALUES (%s, 'd', 'cam', 's', %s, %s, 0.9, %s, 47.0, 15.0, NULL, NULL, 'h', NULL, '{}', %s)",
                      (f"id-{i}", f"OLD{i}", f"OLD{i}", ts, ts))
        c.execute("INSERT INTO images VALUES ('h', '\\x00')")
        c.execute("INSERT INTO case_reads VALUES ('C', 'id-2', 1)")
    s = Store(url)
    assert s.partitioned
    assert sorted(s.query("SELECT read_id, held FROM reads")) == [("id-0", False), ("id-1", False), ("id-2", True)]
    assert s.one("SELECT COUNT(*) FROM read_keys")[0] == 3
    assert s.one("SELECT last_ts FROM images")[0] == int(NOW.timestamp() * 1000)
    assert s.one("SELECT to_regclass('reads_unpartitioned')")[0] is None
    s.close()
    assert Store(url).one("SELECT COUNT(*) FROM reads")[0] == 3  # opened again: nothing moved twice


def test_a_read_from_far_in_the_future_is_held_at_its_receive_time(store):
    when = datetime(2099, 1, 1, tzinfo=UTC)
    ing = Ingestor(store, clock=lambda: NOW.timestamp())
    assert ing.ingest([("t", good(1, when, "FUTURE1"))]).stored == 1
    ts = store.one("SELECT ts FROM reads")[0]
    assert ts <= int(NOW.timestamp() * 1000) + 10 * 60_000


def test_the_simulation_command_prints_its_table_and_leaves_nothing(postgres, tmp_path):
    url = postgres.database("sim")
    out = tmp_path / "sim.json"
    r = run_edge("bench-collector", "--db", url, "--simulate", "--reads", "30000", "--days", "4", "--instances", "1,2",
                 "--per-instance", "300", "--queries", "20", "--json", str(out))
    assert r.returncode == 0, r.stderr
    for line in ("1 collector instance(s)", "2 collector instance(s)", "exact plate, 30 days", "radius 5 km, 1 day",
                 "one day's retention", "database per read, images excluded", "PostGIS: yes"):
        assert line in r.stdout, r.stdout
    res = json.loads(out.read_text())
    assert res["ingest"]["2"]["reads"] == 600 and res["size"]["reads"] == 30000
    day = res["retention"]
    assert len(day["dropped_days"]) == 1 and day["deleted_reads"] >= day["reads_in_the_dropped_day"] > 5000
    assert all(q["p95"] > 0 for q in res["queries"].values())
    assert res["queries"]["exact plate, 30 days"]["reads_median"] >= 1  # the plates seen most are found
    s = Store(url)
    assert s.one("SELECT COUNT(*) FROM reads")[0] == 0 and s.one("SELECT COUNT(*) FROM read_keys")[0] == 0
    s.close()
    # a load kept, then measured again without loading
    r = run_edge("bench-collector", "--db", url, "--simulate", "--reads", "20000", "--days", "3", "--instances", "",
                 "--queries", "10", "--keep")
    assert r.returncode == 0, r.stderr
    r = run_edge("bench-collector", "--db", url, "--simulate", "--reuse", "--queries", "10", "--json", str(out))
    assert r.returncode == 0 and "one day's retention" in r.stdout, r.stdout + r.stderr
    again = json.loads(out.read_text())
    # what the kept run left after its own day of retention, less one more day now
    assert again["reused"] is True and 5000 < again["size"]["reads"] < 20000 and len(again["retention"]["dropped_days"]) == 1
    # on a database that holds reads, or on SQLite, it refuses in one line
    r = run_edge("bench-collector", "--db", url, "--simulate", "--reads", "3000", "--instances", "")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith("needs an empty database: this one holds reads")
    url = postgres.database("sim2")
    r = run_edge("bench-collector", "--db", url, "--simulate", "--reuse")
    assert r.returncode == 2 and "holds no reads" in r.stderr.strip().splitlines()[-1]
    Ingestor(s := Store(url)).ingest([("t", good(1))])
    s.close()
    r = run_edge("bench-collector", "--db", url, "--simulate", "--reads", "3000", "--instances", "")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith("needs an empty database: this one holds reads")
    r = run_edge("bench-collector", "--db", f"sqlite:///{tmp_path / 's.db'}", "--simulate", "--reads", "3000", "--instances", "")
    assert r.returncode == 2 and "PostgreSQL" in r.stderr.strip().splitlines()[-1]
    r = run_edge("bench-collector", "--db", url, "--simulate", "--instances", "1,two")
    assert r.returncode != 0 and "--instances" in r.stderr
