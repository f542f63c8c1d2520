"""Hotlist benchmarks: `python -m tests.bench_hotlist [--entries 100000] [--devices 100] [--clips]`.

1. matching: a bundle of N random entries (5 to 8 characters, look-alike matching on), its size, and
   the time to match one read on one thread (median of 5 rounds of 2,000 reads that match nothing,
   the dearest case: every one-edit variant is tried);
2. distribution: D devices (each edge.mqtt's transport and edge.runtime.alerts' store, with its own
   provisioned certificate) on the shipped broker settings and a real `edge collect`; the time from
   a list change committed to every device holding the new bundle (5 changes: median and max);
3. alerts (--clips): every fixture clip replayed by `edge replay` at its recorded rate with the clips'
   plates listed: the time from the frame in which a plate was first read to its alert stored at
   the collector (p50, p95, max), listed plates alerted, false alerts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
A = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def bench_matching(n: int) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.hotlist import Bundle, Entry, compile_bundle

    rnd = random.Random(1)
    k = Ed25519PrivateKey.generate()
    exp = int(time.time() + 86400)
    es = [Entry(f"HL-{i:08x}", "".join(rnd.choice(A) for _ in range(rnd.choice((5, 6, 7, 7, 8)))), True, exp) for i in range(n)]
    t = time.perf_counter()
    manifest, parts = compile_bundle(es, 1, "", k)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    b = Bundle(manifest, parts, k.public_key())
    load_s = time.perf_counter() - t
    listed = {e.plate for e in es}
    rounds = []
    for _r in range(5):
        reads = ["".join(rnd.choice(A) for _ in range(7)) for _ in range(2000)]
        reads = [x for x in reads if x not in listed]
        t = time.perf_counter()
        hits = sum(b.match(x) is not None for x in reads)
        rounds.append((time.perf_counter() - t) / len(reads) * 1000)
    size = len(manifest) + sum(len(p) for p in parts)
    print(f"matching: {n} entries, bundle {size / 1e6:.2f} MB in {len(parts)} part(s); compiled in {compile_s:.2f} s, "
          f"loaded in {load_s:.2f} s on the device")
    print(f"  one read, one thread: median {statistics.median(rounds):.3f} ms (rounds {', '.join(f'{x:.3f}' for x in rounds)}); "
          f"{hits} of the last round's random reads one edit from an entry")


def provision(d: Path, devices: int) -> None:
    from edge.cli import main as edge_main
    from edge.provision import DeviceSpec, make_bundle

    ca = d / "ca"
    for args in (["provision", "ca"], ["provision", "server", "localhost", "--san", "127.0.0.1", "--out", str(d / "server")],
                 ["provision", "client", "collector", "--out", str(d / "collector")]):
        assert edge_main([*args, "--ca-dir", str(ca)]) == 0
    for i in range(devices):
        make_bundle(ca, d / f"sim-{i:03d}", DeviceSpec(device_id=f"sim-{i:03d}", owner="bench"))


def bench_distribution(devices: int) -> None:
    from edge.collector.governance import Governance
    from edge.collector.hotlist import Hotlists
    from edge.collector.store import Store
    from edge.hotlist import load_public_key
    from edge.mqtt import MqttSettings, MqttTransport
    from edge.runtime.alerts import HotlistStore
    from tests.attacks.test_devices import Collector
    from tests.broker import collector_broker

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        provision(d, devices)
        print(f"distribution: {devices} devices provisioned in {time.perf_counter() - t:.1f} s")
        broker = collector_broker(d / "broker", d / "ca", d / "server")
        col = Collector(d, broker, d, "--hotlist-key", str(d / "ca" / "hotlist-signing.key")).start()
        pub = load_public_key(d / "ca" / "hotlist-signing.pub")
        sims = []
        try:
            for i in range(devices):
                b = d / f"sim-{i:03d}"
                store = HotlistStore(d / f"state-{i:03d}" / "hotlist.bundle", pub)
                s = MqttSettings(host="127.0.0.1", port=broker.port, tls=True, cafile=str(b / "ca.crt"), certfile=str(b / "device.crt"),
                                 keyfile=str(b / "device.key"))
                tr = MqttTransport(s, f"sim-{i:03d}", on_ack=lambda m, rc: None, on_lost=lambda: None, on_ready=lambda: None,
                                   on_hotlist=store.message, status_extra=lambda st=store: {"site": "", "hotlist": st.version})
                tr.start()
                sims.append((tr, store))
            end = time.monotonic() + 60
            while time.monotonic() < end and not all(tr.connected for tr, _ in sims):
                time.sleep(0.1)
            gov = Governance(Store(col.db))
            h = Hotlists(gov)
            for name, role in (("ivy", "investigator"), ("sue", "supervisor")):
                gov.add_user("bench", name, role)
            gov.add_user("bench", "sam", "supervisor")
            gov.open_case("sam", "BENCH")
            # the first bundle (on connect) reaches everyone before the changes are timed
            end = time.monotonic() + 60
            while time.monotonic() < end and not all(st.version for _, st in sims):
                time.sleep(0.1)
            times = []
            for k in range(5):
                eid = h.propose("ivy", "BENCH", f"BEN{k}CH{k}", "benchmark")
                before = max(st.version for _, st in sims)
                t0 = time.monotonic()
                h.approve("sue", eid)
                while time.monotonic() - t0 < 30 and not all(st.version > before for _, st in sims):
                    time.sleep(0.01)
                times.append(time.monotonic() - t0)
                missing = sum(st.version <= before for _, st in sims)
                if missing:
                    print(f"  change {k + 1}: {missing} device(s) without the new bundle after 30 s")
            print(f"  a list change to all {devices} devices: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
                  f"({', '.join(f'{x:.2f}' for x in times)})")
        finally:
            for tr, _ in sims:
                tr.close()
            col.stop()
            broker.stop()


def bench_clips() -> None:
    from tests.attacks.test_devices import Collector
    from tests.broker import collector_broker
    from tests.conftest import collector_users, run_edge

    clips = sorted((ROOT / "fixtures" / "videos").glob("*.mp4"))
    truth = {c.name: [p["text"] for p in json.loads(c.with_suffix(".json").read_text())["plates"] if p.get("readable", True)]
             for c in clips}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        provision(d, 1)
        broker = collector_broker(d / "broker", d / "ca", d / "server")
        col = Collector(d, broker, d, "--hotlist-key", str(d / "ca" / "hotlist-signing.key")).start()
        try:
            tok = collector_users(col.db, env=col.env, ivy="investigator", sue="supervisor", sam="supervisor")
            run_edge("cases", "open", "BENCH", "--db", col.db, "--token", tok["sam"], env=col.env)
            entry_plate = {}
            for plate in sorted({p for ps in truth.values() for p in ps}):
                r = run_edge("hotlist", "add", "--plate", plate, "--case", "BENCH", "--reason", "bench", "--db", col.db,
                             "--token", tok["ivy"], env=col.env)
                eid = r.stdout.split()[-1]
                entry_plate[eid] = plate
                run_edge("hotlist", "approve", eid, "--db", col.db, "--token", tok["sue"], env=col.env)
            b = d / "sim-000"
            key = d / "outbox.key"
            key.write_bytes(os.urandom(32))
            env = {**os.environ, "EDGE_MQTT__CAFILE": str(b / "ca.crt"), "EDGE_MQTT__CERTFILE": str(b / "device.crt"),
                   "EDGE_MQTT__KEYFILE": str(b / "device.key"), "EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(broker.port),
                   "EDGE_HOTLIST__PUBLIC_KEY": str(b / "hotlist.pub"), "EDGE_OUTBOX__KEY_FILE": str(key),
                   "EDGE_DEVICE__STATE_DIR": str(d / "state")}
            per_clip = {}
            for c in clips:  # the first clip's start also brings the bundle; each plays at its recorded rate
                if not (d / "state" / "hotlist.bundle").exists():
                    subprocess.run([sys.executable, "-m", "edge.cli", "replay", str(clips[-2]), "--config", str(b / "device.toml")],
                                   cwd=ROOT, env=env, capture_output=True, timeout=300)
                seen = col_alerts(col)
                r = subprocess.run([sys.executable, "-m", "edge.cli", "replay", str(c), "--config", str(b / "device.toml")],
                                   cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
                if r.returncode:
                    print(f"  {c.name}: replay exited {r.returncode}: {r.stderr.strip()[-300:]}")
                time.sleep(1.0)
                per_clip[c.name] = [a for a in col_alerts(col) if a not in seen]
            lat, alerted, false = [], 0, 0
            for name, got in per_clip.items():
                plates = [entry_plate.get(a[0]) for a in got]
                for (_, first, received), plate in zip(got, plates, strict=True):
                    if plate in truth[name]:
                        lat.append(received - first)
                    else:
                        false += 1
                missed = [p for p in truth[name] if p not in plates]
                alerted += len(truth[name]) - len(missed)
                print(f"  {name}: {len(got)} alert(s){', missed ' + ', '.join(missed) if missed else ''}")
            listed = sum(len(v) for v in truth.values())
            lat.sort()
            p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else float("nan")
            print(f"alerts: {alerted} of {listed} listed plates alerted, {false} false alert(s); first read to stored at the "
                  f"collector: p50 {statistics.median(lat):.0f} ms, p95 {p95:.0f} ms, max {max(lat):.0f} ms over {len(lat)} alerts")
        finally:
            col.stop()
            broker.stop()


def col_alerts(col) -> list[tuple[str, int, int]]:
    from edge.collector.store import Store

    s = Store(col.db)
    try:
        return [(r[0], int(r[1]), int(r[2])) for r in s.query("SELECT entry_id, first_read, received FROM alerts ORDER BY received")]
    finally:
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--clips", action="store_true", help="also replay every fixture clip at its recorded rate")
    a = ap.parse_args()
    if a.entries:
        bench_matching(a.entries)
    if a.devices:
        bench_distribution(a.devices)
    if a.clips:
        bench_clips()
    return 0


if __name__ == "__main__":
    sys.exit(main())
