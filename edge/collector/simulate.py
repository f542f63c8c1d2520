"""A national-scale load on the collector's store: `edge bench-collector --db URL --simulate [--reads 20000000]`.

1. Ingest: 1, 2 and 4 collector processes on the one database, each storing its own reads through the whole
   ingest path (validation, JPEG check, exactly-once insert) with a distinct 20 KB plate image per read; the
   reads per second of all together, and per instance.
2. Load: synthetic reads of a realistic shape (10,000 cameras in 1,000 sites, 500,000 plates repeating with a
   Zipf law, `--days` days of time, GPS around each camera) copied straight into the store up to `--reads`,
   as ingest would have stored them (the day partitions, the exactly-once keys, a thousand 4 KB crops in turn).
3. Queries, through the same search code as `edge query` (not its governance): an exact plate over 30 days,
   a look-alike, a wildcard, a 5 km radius over a day, a camera over a day; p50/p95/p99 of `--queries` each.
4. One day's retention (the oldest day past the cutoff), timed, and the database's size per read without images.

Prints a table; `--json` writes the figures. The load is left in the database (`--keep`) or dropped.
"""

from __future__ import annotations

import base64
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

DAY_MS = 86_400_000
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def cameras(n: int, rnd: random.Random) -> list[tuple[str, str, float, float]]:
    """(camera, site, lat, lon): sites scattered over a country-sized box, ten cameras at each."""
    sites = [(f"site-{k:04d}", 45.0 + rnd.uniform(0, 9), 5.0 + rnd.uniform(0, 14)) for k in range(max(1, n // 10))]
    out = []
    for c in range(n):
        site, la, lo = sites[c % len(sites)]
        out.append((f"cam-{c:05d}", site, la + rnd.uniform(-0.01, 0.01), lo + rnd.uniform(-0.01, 0.01)))
    return out


def plates(n: int, rnd: random.Random) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        p = "".join(rnd.choice(LETTERS) for _ in range(2)) + f"{rnd.randrange(10000):04d}" + rnd.choice(LETTERS)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


class Zipf:
    """Plate k drawn with weight 1/(k+1)^s: a few vehicles pass every day, most rarely."""

    def __init__(self, n: int, s: float, rnd: random.Random):
        import numpy as np

        w = 1.0 / np.arange(1, n + 1) ** s
        self.cdf = np.cumsum(w) / w.sum()
        self.rnd = np.random.default_rng(rnd.randrange(2**32))

    def draw(self, k: int):
        import numpy as np

        return np.searchsorted(self.cdf, self.rnd.random(k))


# ---------------------------------------------------------------- 1. ingest with N collector processes


def _ingest_worker(url: str, images: str | None, worker: int, n: int, batch: int, start, results) -> None:
    from edge.collector.bench import jpeg_of_size, payload, unique_jpeg
    from edge.collector.ingest import Ingestor
    from edge.collector.store import Store

    store = Store(url, images=images)
    ing = Ingestor(store)
    base = jpeg_of_size(20_000, worker)
    now = datetime.now(UTC)
    msgs = []
    for i in range(n):
        k = worker * 10_000_000 + i  # a distinct crop for every read of every worker
        msgs.append((f"lpr/v1/dev-{k % 8}/reads", payload(k, base64.b64encode(unique_jpeg(base, k)).decode(), now)))
    start.wait()
    t0 = time.perf_counter()
    stored = 0
    for r in ing.pipeline(msgs[i : i + batch] for i in range(0, n, batch)):  # as the collector's two threads do
        stored += r.stored
    results.put((worker, stored, t0, time.perf_counter()))
    store.close()


def _cpu_busy() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole host so far, from /proc/stat (Linux); None elsewhere."""
    try:
        f = [float(x) for x in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = float(os.sysconf("SC_CLK_TCK"))
    idle = f[3] + (f[4] if len(f) > 4 else 0.0)
    return (sum(f) - idle) / hz, sum(f) / hz


def ingest_rates(url: str, instances: list[int], per_instance: int, batch: int = 100, images: str | None = None) -> dict[int, dict]:
    """Reads/s with each number of collector processes, all starting at once."""
    ctx = mp.get_context("spawn")
    out = {}
    for k in instances:
        start, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_ingest_worker, args=(url, images, w, per_instance, batch, start, results)) for w in range(k)]
        for p in procs:
            p.start()
        time.sleep(2.0 + 0.5 * k)  # each builds its messages first
        c0 = _cpu_busy()
        start.set()
        got = [results.get(timeout=900) for _ in procs]
        c1 = _cpu_busy()
        for p in procs:
            p.join(60)
        stored = sum(g[1] for g in got)
        if stored != k * per_instance:
            raise RuntimeError(f"{k} instance(s): {stored} of {k * per_instance} reads stored")
        span = max(g[3] for g in got) - min(g[2] for g in got)
        out[k] = {"reads": stored, "seconds": round(span, 2), "reads_per_s": round(stored / span, 1),
                  "per_instance": round(stored / span / k, 1),
                  # the cores the host kept busy meanwhile (collectors, PostgreSQL, everything): a host with
                  # no idle core left cannot go faster by adding instances
                  "host_busy_cores": round((c1[0] - c0[0]) / span, 2) if c0 and c1 else None,
                  "host_cores": os.cpu_count()}
        _clear_ingested(url, images)
    return out


def _clear_ingested(url: str, images: str | None = None) -> None:
    from edge.collector.store import Store

    s = Store(url, images=images)
    with s.tx():  # the simulation's own database, empty when it started
        s.execute("TRUNCATE reads, read_keys, images, counters, cameras")
    if s.image_dir is not None:  # and its image files
        for day in s.image_dir.days():
            s.image_dir.unlink(s.image_dir.files_of_day(day, older_than_s=-60))
    s.close()


# ---------------------------------------------------------------- 2. the load


def load(store, n: int, days: int, now_ms: int, rnd: random.Random, n_cameras: int = 10_000, n_plates: int = 500_000,
         stream=sys.stdout) -> tuple[list, list]:
    """COPY n reads spread over `days` days before now into the store, as ingest stores them."""
    from edge.collector import partitions
    from edge.collector.bench import jpeg_of_size, unique_jpeg
    from edge.collector.store import sha256
    from edge.plates import fold

    if store.engine != "postgresql":
        raise RuntimeError("the simulation loads PostgreSQL (--db postgresql://...)")
    cams = cameras(n_cameras, rnd)
    pl = plates(n_plates, rnd)
    zipf = Zipf(len(pl), 0.9, rnd)
    # a thousand distinct 4 KB crops taken in turn: a page of results fetches as many images as it has reads,
    # as it would with every read's own crop, without twenty million images on the disk
    base = jpeg_of_size(4000)
    imgs = [unique_jpeg(base, k) for k in range(1000)]
    store.put_images({sha256(b): (b, now_ms) for b in imgs})
    hashes = [sha256(b) for b in imgs]
    start = (partitions.day_of(now_ms) - days) * DAY_MS  # from midnight: the oldest day is a whole one
    store.days.ensure(range(partitions.day_of(start), partitions.day_of(now_ms) + 1))
    cols = ("read_id, device_id, camera_id, site, plate, plate_fuzzy, confidence, ts, lat, lon, direction, region, plate_image, "
            "vehicle_image, record, received")
    t0 = time.perf_counter()
    chunk = 100_000
    done = 0
    # time runs forward, so each chunk fills one or two days' partitions, as a live stream does
    while done < n:
        k = min(chunk, n - done)
        picks = zipf.draw(k)
        rows, keys = [], []
        for j in range(k):
            i = done + j
            cam, site, la, lo = cams[rnd.randrange(len(cams))]
            plate = pl[int(picks[j])]
            ts = start + int((i + rnd.random()) * (now_ms - start) / n)
            rid = f"{ts:012x}"[:8] + "-" + f"{ts:012x}"[8:12] + f"-7{i % 4096:03x}-8{(i >> 12) % 4096:03x}-{i:012x}"
            t = datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds")
            lat, lon = la + rnd.uniform(-0.0005, 0.0005), lo + rnd.uniform(-0.0005, 0.0005)
            h = hashes[i % len(hashes)]
            rec = {"schema": "lpr.read/1", "read_id": rid, "time": t,
                   "plate": {"text": plate, "confidence": 0.95, "char_confidences": [0.95] * len(plate),
                             "box": {"x1": 1.0, "y1": 2.0, "x2": 60.0, "y2": 20.0}},
                   "images": {"plate_jpeg": h}, "track": {"first_seen": t, "last_seen": t, "frames": 7, "direction": "towards"},
                   "gps": {"status": "ok", "lat": lat, "lon": lon, "source": "fixed"},
                   "camera": {"id": cam, "owner": "simulation", "site": site, "mounting": "fixed"},
                   "device": {"id": "dev-" + cam[4:], "software": "sim", "detector_model": "d", "reader_model": "r"}}
            rows.append((rid, "dev-" + cam[4:], cam, site, plate, fold(plate), 0.95, ts, lat, lon, "towards", None, h, None,
                         json.dumps(rec, separators=(",", ":")), ts))
            keys.append((rid, ts))
        with store.lock, store.conn.transaction(), store.conn.cursor() as cur:
            with cur.copy("COPY read_keys (read_id, ts) FROM STDIN") as cp:
                for key in keys:
                    cp.write_row(key)
            with cur.copy(f"COPY reads ({cols}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
        done += k
        if done % 1_000_000 < chunk or done == n:
            el = time.perf_counter() - t0
            print(f"  loaded {done:>11,} reads  {done / el:8.0f} reads/s", file=stream, flush=True)
    with store.tx():
        store.note_cameras({c: (site, la, lo, now_ms) for c, site, la, lo in cams})
    store.execute("ANALYZE")
    return cams, pl


# ---------------------------------------------------------------- 3. queries, 4. retention, size


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)

    def at(p: float) -> float:
        return xs[min(len(xs) - 1, max(0, math.ceil(p * len(xs)) - 1))]

    return {"p50": round(statistics.median(xs), 2), "p95": round(at(0.95), 2), "p99": round(at(0.99), 2)}


def query_times(store, cams, pl, now_ms: int, n: int, rnd: random.Random) -> dict[str, dict]:
    from edge.collector.governance import Governance, Policy
    from edge.collector.query import Query, _run

    gov = Governance(store, Policy(require_ack=False))
    day = (now_ms - DAY_MS, now_ms)
    month = (now_ms - 30 * DAY_MS, now_ms)
    common = pl[:5000]  # vehicles seen often: the dearest plate searches
    kinds = {
        "exact plate, 30 days": lambda i: Query(plate=rnd.choice(common), since_ms=month[0], until_ms=month[1]),
        "look-alike, 30 days": lambda i: Query(plate=rnd.choice(common).replace("0", "O").replace("1", "I"), match="fuzzy",
                                               since_ms=month[0], until_ms=month[1]),
        "wildcard, 30 days": lambda i: Query(plate=rnd.choice(common)[:5] + "*", match="wildcard", since_ms=month[0],
                                             until_ms=month[1]),
        "radius 5 km, 1 day": lambda i: (lambda c: Query(near=(c[2], c[3], 5.0), since_ms=day[0], until_ms=day[1]))(rnd.choice(cams)),
        "camera, 1 day": lambda i: Query(camera=rnd.choice(cams)[0], since_ms=day[0], until_ms=day[1]),
    }
    out = {}
    for name, make in kinds.items():
        times, found = [], []
        for i in range(n):
            q = make(i)
            q.limit = 500
            t0 = time.perf_counter()
            rows = _run(gov, q, include_images=True)
            times.append((time.perf_counter() - t0) * 1000)
            found.append(len(rows))
        out[name] = {**percentiles(times), "reads_median": statistics.median(found)}
    return out


def retention_time(store, days: int, now_ms: int) -> dict[str, Any]:
    """Retention with the clock set so that exactly the oldest whole day is past the cutoff."""
    from edge.collector import partitions
    from edge.collector.governance import Governance, Policy

    oldest = min(store.days.known)
    # the cutoff one hour into the day after the oldest: that day is dropped, and an hour of the next deleted
    cutoff = (oldest + 1) * DAY_MS + 3_600_000
    clock_ms = now_ms
    gov = Governance(store, Policy(retention_days=(clock_ms - cutoff) / DAY_MS, require_ack=False), clock=lambda: clock_ms / 1000)
    before = store.one(f"SELECT COUNT(*) FROM {partitions.name_of(oldest)}")[0]
    t0 = time.perf_counter()
    detail = gov.retention("simulation")
    secs = time.perf_counter() - t0
    return {"seconds": round(secs, 2), "deleted_reads": detail["deleted_reads"], "dropped_days": detail["dropped_days"],
            "reads_in_the_dropped_day": int(before)}


def size_per_read(store) -> dict[str, float]:
    n = store.one("SELECT COUNT(*) FROM reads")[0]
    rel = store.one("SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c WHERE c.relkind = 'r' AND "
                    "(c.relname LIKE ? OR c.relname IN ('reads_held', 'read_keys', 'cameras'))", ("reads_live_%",))[0]
    return {"reads": int(n), "bytes": int(rel), "bytes_per_read": round(int(rel) / max(1, int(n)), 1)}


def simulate(url: str, reads: int, days: int = 90, instances: tuple[int, ...] = (1, 2, 4), per_instance: int = 4000,
             queries: int = 200, keep: bool = False, seed: int = 1, reuse: bool = False, images: str | None = None,
             stream=sys.stdout) -> dict[str, Any]:
    """`reuse`: measure a load an earlier run left (`keep`) instead of loading again (no ingest, no load);
    `images`: the collectors keep image bytes in this directory (edge.collector.images), not in the database."""
    from edge.collector.store import Store

    store = Store(url, images=images)
    if store.engine != "postgresql":
        raise RuntimeError("--simulate measures PostgreSQL: give --db postgresql://...")
    held = store.one("SELECT COUNT(*) FROM (SELECT 1 FROM reads LIMIT 1) AS x")[0]
    if reuse:
        if not held:
            raise RuntimeError("--reuse measures a load left by --keep: this database holds no reads")
        res: dict[str, Any] = {"postgis": store.postgis, "reused": True}
        rnd = random.Random(seed)
        cams, pl = cameras(10_000, rnd), plates(500_000, rnd)  # as load() drew them from the same seed
        now_ms = int(store.one("SELECT MAX(ts) FROM read_keys")[0])
        res["size"] = size_per_read(store)
        res["queries"] = query_times(store, cams, pl, now_ms, queries, rnd)
        res["retention"] = retention_time(store, days, now_ms)
        print_table(res, stream)
        store.close()
        return res
    if held:
        raise RuntimeError("--simulate needs an empty database: this one holds reads")
    res = {"postgis": store.postgis, "images_in": "directory" if store.image_dir is not None else "database"}
    if instances:
        print(f"ingest, {per_instance} reads per instance, distinct 20 KB images in the {res['images_in']}:", file=stream, flush=True)
        res["ingest"] = ingest_rates(url, list(instances), per_instance, images=images)
        for k, r in res["ingest"].items():
            print(f"  {k} instance(s): {r['reads_per_s']:8.0f} reads/s  ({r['per_instance']:.0f} per instance)", file=stream, flush=True)
    rnd = random.Random(seed)
    now_ms = int(time.time() * 1000)
    print(f"load: {reads:,} reads over {days} days, 10,000 cameras", file=stream, flush=True)
    t0 = time.perf_counter()
    cams, pl = load(store, reads, days, now_ms, rnd, stream=stream)
    res["load_s"] = round(time.perf_counter() - t0, 1)
    res["size"] = size_per_read(store)
    res["queries"] = query_times(store, cams, pl, now_ms, queries, rnd)
    res["retention"] = retention_time(store, days, now_ms)
    print_table(res, stream)
    if not keep:  # whole days first: deleting twenty million rows one by one would take longer than loading them
        assert store.days is not None
        for d in sorted(store.days.known):
            with store.tx():
                store.days.drop(d)
        _clear_ingested(url, images)
    store.close()
    return res


def print_table(res: dict[str, Any], stream=sys.stdout) -> None:
    w = stream.write
    w("\n")
    if "ingest" in res:
        one = res["ingest"].get(1, {}).get("reads_per_s")
        w(f"{'ingest (20 KB images in ' + res.get('images_in', 'database') + ')':<34} {'reads/s':>9} {'per instance':>13} {'vs 1':>6} {'host cores busy':>16}\n")
        for k, r in res["ingest"].items():
            busy = f"{r['host_busy_cores']:.2f} of {r['host_cores']}" if r.get("host_busy_cores") is not None else "-"
            w(f"  {k} collector instance(s){'':<11} {r['reads_per_s']:9.0f} {r['per_instance']:13.0f} "
              f"{(r['reads_per_s'] / one if one else float('nan')):5.2f}x {busy:>16}\n")
    s = res["size"]
    w(f"\n{'at ' + format(s['reads'], ',') + ' reads':<34} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'reads':>7}\n")
    for name, q in res["queries"].items():
        w(f"  {name:<32} {q['p50']:9.1f} {q['p95']:9.1f} {q['p99']:9.1f} {q['reads_median']:7.0f}\n")
    r = res["retention"]
    w(f"\none day's retention: {r['seconds']:.2f} s ({r['deleted_reads']:,} reads, {len(r['dropped_days'])} day dropped)\n")
    w(f"database per read, images excluded: {s['bytes_per_read']:.0f} bytes ({s['bytes'] / 1e9:.2f} GB in reads, keys, cameras)\n")
    w(f"PostGIS: {'yes' if res['postgis'] else 'no (latitude/longitude box and haversine)'}\n")
