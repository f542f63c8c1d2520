"""The web app's search page on a large store: `python -m tests.bench_web [--reads 1000000] [--engines sqlite,postgresql]`.

Loads N synthetic reads (500 cameras, 200,000 plates repeating with a Zipf-like law, 30 days, GPS
around each camera, one shared plate crop) straight into the store, serves the app as `edge collect
--http` does, signs an investigator in over HTTP and posts the search form as a browser would: a
plate (exact, look-alike, wildcard) over a day, a camera over a day, a 5 km radius over a day, and
an approved 30-day movement history. The plates seen most are searched, so some searches are refused
(403) as over the exposure limit, as they would be for a user: their time counts too. Prints, per engine and search, the app's own time for the
request (its Server-Timing header: the page rendered, governance and audit included) as p50/p95
over 40 requests, and the page's weight without its images.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from http.cookiejar import CookieJar
from pathlib import Path

DAY_MS = 86_400_000


def rows(n: int, now_ms: int, img_hash: str, rnd: random.Random):
    cams = [(f"cam-{c:03d}", f"site-{c // 10:02d}", 47.0 + rnd.uniform(-1, 1), 15.0 + rnd.uniform(-1.5, 1.5)) for c in range(500)]
    plates = [f"{rnd.choice('ABCDEFGHKLMNPRSTUVWXYZ')}{rnd.choice('ABCDEFGHKLMNPRSTUVWXYZ')}{k:05d}" for k in range(200_000)]
    weights = [1.0 / (k + 1) ** 0.8 for k in range(len(plates))]
    picks = rnd.choices(range(len(plates)), weights=weights, k=n)
    for i in range(n):
        cam, site, la, lo = cams[i % len(cams)]
        plate = plates[picks[i]]
        ts = now_ms - rnd.randrange(30 * DAY_MS)
        lat, lon = la + rnd.uniform(-0.002, 0.002), lo + rnd.uniform(-0.002, 0.002)
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts / 1000)) + f".{ts % 1000:03d}000+00:00"
        rid = f"{ts:012x}"[:8] + "-" + f"{ts:012x}"[8:12] + f"-7{i % 4096:03x}-8{i // 4096 % 4096:03x}-{i:012x}"
        rec = {"schema": "lpr.read/1", "read_id": rid, "time": t,
               "plate": {"text": plate, "confidence": 0.95, "char_confidences": [0.95] * len(plate),
                         "box": {"x1": 1.0, "y1": 2.0, "x2": 60.0, "y2": 20.0}, "candidates": []},
               "images": {"plate_jpeg": img_hash}, "track": {"first_seen": t, "last_seen": t, "frames": 9, "direction": "towards",
                                                             "lateral": "none"},
               "gps": {"status": "ok", "lat": lat, "lon": lon, "source": "fixed"},
               "camera": {"id": cam, "owner": "bench", "site": site, "mounting": "fixed"},
               "device": {"id": f"dev-{cam}", "software": "bench", "detector_model": "d", "reader_model": "r"}}
        from edge.plates import fold

        yield (rid, f"dev-{cam}", cam, site, plate, fold(plate), 0.95, ts, lat, lon, "towards", None, img_hash, None,
               json.dumps(rec, separators=(",", ":")), ts)
    return cams, plates


COLS = ("read_id, device_id, camera_id, site, plate, plate_fuzzy, confidence, ts, lat, lon, direction, region, plate_image, "
        "vehicle_image, record, received")


def load(store, n: int, now_ms: int, rnd: random.Random) -> tuple[list, list]:
    from edge.collector.bench import jpeg_of_size
    from edge.collector.store import sha256

    img = jpeg_of_size(4000)
    h = sha256(img)
    store.put_image(img, now_ms)
    if store.days is not None:  # PostgreSQL: the days the reads fall on, as ingest makes them
        from edge.collector.partitions import day_of

        store.days.ensure(range(day_of(now_ms - 30 * DAY_MS), day_of(now_ms) + 1))
    gen = rows(n, now_ms, h, rnd)
    batch: list[tuple] = []
    t0 = time.perf_counter()
    cams = plates = None
    while True:
        try:
            batch.append(next(gen))
        except StopIteration as e:
            cams, plates = e.value
            break
        if len(batch) >= 50_000:
            _flush(store, batch)
            batch = []
    if batch:
        _flush(store, batch)
    with store.tx():  # as ingest keeps them: each camera where it was last seen
        store.note_cameras({c: (site, la, lo, now_ms) for c, site, la, lo in cams})
    if store.engine == "postgresql":
        store.execute("ANALYZE reads")
    else:
        store.execute("ANALYZE")
    print(f"  loaded {n} reads in {time.perf_counter() - t0:.0f} s", flush=True)
    return cams, plates


def _flush(store, batch) -> None:
    if store.engine == "postgresql":
        with store.lock, store.conn.transaction(), store.conn.cursor() as cur:
            with cur.copy("COPY read_keys (read_id, ts) FROM STDIN") as cp:
                for r in batch:
                    cp.write_row((r[0], r[7]))
            with cur.copy(f"COPY reads ({COLS}) FROM STDIN") as cp:
                for r in batch:
                    cp.write_row(r)
    else:
        with store.tx():
            store.executemany(f"INSERT INTO reads ({COLS}) VALUES ({', '.join('?' * 16)})", batch)


class Browser:
    """Cookies and the CSRF token, as a browser keeps them."""

    def __init__(self, base: str):
        self.base, self.jar = base, CookieJar()
        self.op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.csrf = ""

    def get(self, path: str) -> str:
        with self.op.open(self.base + path, timeout=60) as r:
            return r.read().decode()

    def post(self, path: str, data: dict) -> tuple[float, int, str]:
        req = urllib.request.Request(self.base + path, data=urllib.parse.urlencode(data).encode(), method="POST")
        try:
            with self.op.open(req, timeout=120) as r:
                body, timing, code = r.read().decode(), r.headers.get("Server-Timing", ""), r.status
        except urllib.error.HTTPError as e:
            body, timing, code = e.read().decode(), e.headers.get("Server-Timing", ""), e.code
        m = re.search(r"dur=([\d.]+)", timing)
        return float(m.group(1)) if m else float("nan"), code, body


def bench(url: str, n: int, label: str) -> None:
    from edge.collector.governance import Governance, Policy
    from edge.collector.store import Store
    from edge.collector.web import make_server

    rnd = random.Random(3)
    store = Store(url)
    now_ms = int(time.time() * 1000)
    print(f"{label}:", flush=True)
    cams, plates = load(store, n, now_ms, rnd)
    gov = Governance(store, Policy())
    tok = gov.add_user("bench", "ivy", "investigator")
    gov.add_user("bench", "sam", "supervisor")
    gov.open_case("sam", "BENCH")
    srv = make_server(gov, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    time.sleep(0.5)
    b = Browser(f"http://127.0.0.1:{srv.server_address[1]}")
    b.get("/signin")
    b.post("/signin", {"token": tok})
    b.csrf = re.search(r'name="csrf" value="([^"]+)"', b.get("/search")).group(1)
    common = {"csrf": b.csrf, "case": "BENCH", "ack": "yes", "days": "1", "page": "1"}
    hot = plates[:2000]  # the plates seen most: the dearest searches
    kinds = {
        "plate exact, 1 day": lambda i: {"plate": hot[i * 7 % len(hot)]},
        "plate look-alike, 1 day": lambda i: {"plate": hot[i * 11 % len(hot)].replace("0", "O"), "match": "fuzzy"},
        "plate wildcard, 1 day": lambda i: {"plate": hot[i * 13 % len(hot)][:6] + "*", "match": "wildcard"},
        "camera, 1 day": lambda i: {"camera": cams[i % len(cams)][0]},
        "radius 5 km, 1 day": lambda i: {"near_lat": f"{cams[i % len(cams)][2]:.4f}", "near_lon": f"{cams[i % len(cams)][3]:.4f}",
                                         "near_km": "5"},
    }
    for name, make in kinds.items():
        times, weights, codes = [], [], Counter()
        for i in range(40):
            ms, code, page = b.post("/search", {**common, **make(i)})
            times.append(ms)
            codes[code] += 1
            weights.append(len(re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", page).encode()))
        times.sort()
        print(f"  {name:<28} p50 {statistics.median(times):6.1f} ms  p95 {times[int(0.95 * (len(times) - 1))]:6.1f} ms  "
              f"page {max(weights) / 1000:.0f} KB without images  ({codes[200]} shown, {codes[403]} refused as over the exposure "
              f"limit{'' if codes[200] + codes[403] == 40 else ', others ' + str(sorted(set(codes) - {200, 403}))})", flush=True)
    times = []
    for i in range(40):  # an approved movement history: the request filed by a refusal, approved by a second person
        plate = hot[(i * 17 + 5) % len(hot)]
        _, code, page = b.post("/search", {**common, "plate": plate, "days": "30"})
        m = re.search(r'id="request">(APR-[0-9a-f]+)<', page)
        if not m:
            continue
        gov.approve("sam", m.group(1))
        ms, code, page = b.post("/search", {**common, "plate": plate, "days": "30", "approval": m.group(1)})
        times.append(ms)
    times.sort()
    if times:
        print(f"  {'approved history, 30 days':<28} p50 {statistics.median(times):6.1f} ms  p95 {times[int(0.95 * (len(times) - 1))]:6.1f} ms",
              flush=True)
    srv.shutdown()
    store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=1_000_000)
    ap.add_argument("--engines", default="sqlite,postgresql")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for engine in a.engines.split(","):
            if engine == "sqlite":
                bench(f"sqlite:///{Path(tmp) / 'bench.db'}", a.reads, f"SQLite, {a.reads} reads")
            else:
                sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
                from tests.pg import Postgres, pg_bin

                if pg_bin() is None:
                    print("PostgreSQL is not installed: skipped")
                    continue
                pg = Postgres(Path(tmp) / "pg").start()
                try:
                    bench(pg.url, a.reads, f"PostgreSQL, {a.reads} reads")
                finally:
                    pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
