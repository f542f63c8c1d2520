"""Soak benchmark (a script, not a test): one device replaying a clip in a loop, at its frame rate, for an hour into a real
`edge collect`, through the shipped broker settings, with the broker stopped, killed and restarted
every few minutes. Prints the device's and the collector's resident memory at the start and the end
(and every 5 minutes), and what arrived.

    .venv/bin/python -m tests.soak_replay --minutes 60
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .broker import collector_broker
from .conftest import ROOT, run_edge


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--clip", default=str(ROOT / "fixtures" / "videos" / "02_lane_speed.mp4"))
    ap.add_argument("--flap-every", type=float, default=120, help="seconds between broker outages")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="edge-soak-"))
    ca = d / "ca"
    for a in (("ca",), ("server", "localhost", "--san", "127.0.0.1", "--out", str(d / "server")),
              ("client", "collector", "--out", str(d / "collector")),
              ("device", "soak-1", "--owner", "Soak", "--broker", "127.0.0.1:8883", "--out", str(d / "soak-1"))):
        r = run_edge("provision", *a, "--ca-dir", str(ca))
        assert r.returncode == 0, r.stderr
    broker = collector_broker(d / "broker", ca, d / "server")
    db = f"sqlite:///{d / 'c.db'}"
    env = {**os.environ, "EDGE_COLLECTOR_AUDIT_HEAD": str(d / "audit.head")}
    col = subprocess.Popen([sys.executable, "-m", "edge.cli", "collect", "--db", db, "--mqtt", f"127.0.0.1:{broker.collector_port}",
                            "--cafile", str(ca / "ca.crt"), "--certfile", str(d / "collector" / "collector.crt"),
                            "--keyfile", str(d / "collector" / "collector.key"), "--health-interval", "60"],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (d / "outbox.key").write_bytes(os.urandom(32))
    b = d / "soak-1"
    denv = {**os.environ, "EDGE_MQTT__CAFILE": str(b / "ca.crt"), "EDGE_MQTT__CERTFILE": str(b / "device.crt"), "EDGE_HOTLIST__PUBLIC_KEY": str(b / "hotlist.pub"),
            "EDGE_MQTT__KEYFILE": str(b / "device.key"), "EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(broker.port),
            "EDGE_MQTT__RECEIPT_WAIT_S": "5", "EDGE_OUTBOX__KEY_FILE": str(d / "outbox.key"),
            "EDGE_DEVICE__STATE_DIR": str(d / "state"), "EDGE_OUTBOX__PATH": str(d / "state" / "outbox.db"),
            # the clip loops every few seconds: without this the tracker takes each loop's plates for the
            # same passes (the same plate again within repeat_window_s) and reads nothing after the first
            "EDGE_TRACKING__REPEAT_WINDOW_S": "0"}
    dev = subprocess.Popen([sys.executable, "-m", "edge.cli", "replay", args.clip, "--loop", "--config", str(b / "device.toml")],
                           cwd=ROOT, env=denv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rng = random.Random(7)
    time.sleep(60)  # models loaded, a loop or two made: the start is after warm-up
    start = (rss_mb(dev.pid), rss_mb(col.pid))
    print(f"start: device RSS {start[0]:.1f} MB, collector RSS {start[1]:.1f} MB", flush=True)
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    outages = kills = 0
    next_flap = t0 + args.flap_every
    next_report = t0 + 300
    while time.monotonic() < end:
        time.sleep(1)
        if dev.poll() is not None or col.poll() is not None:
            print(f"a process ended: device {dev.poll()}, collector {col.poll()}", flush=True)
            break
        if time.monotonic() >= next_flap:
            if rng.random() < 0.5:
                broker.proc.send_signal(signal.SIGKILL)
                broker.proc.wait(10)
                kills += 1
            else:
                broker.stop()
                outages += 1
            time.sleep(rng.uniform(2, 20))
            broker.start()
            next_flap = time.monotonic() + args.flap_every
        if time.monotonic() >= next_report:
            print(f"{(time.monotonic() - t0) / 60:5.1f} min: device RSS {rss_mb(dev.pid):.1f} MB, collector RSS "
                  f"{rss_mb(col.pid):.1f} MB", flush=True)
            next_report += 300
    stop = (rss_mb(dev.pid), rss_mb(col.pid))
    dev.send_signal(signal.SIGTERM)
    dev.wait(60)
    time.sleep(10)
    col.send_signal(signal.SIGTERM)
    col.wait(30)
    broker.stop()
    from edge.collector.store import Store

    s = Store(db)
    n, plates = s.one("SELECT COUNT(*), COUNT(DISTINCT plate) FROM reads")
    import sqlite3

    with sqlite3.connect(d / "state" / "outbox.db") as ob:
        oc = dict(ob.execute("SELECT name, value FROM counters").fetchall())
        left = ob.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    print(f"end after {(time.monotonic() - t0) / 60:.1f} min: device RSS {stop[0]:.1f} MB ({stop[0] - start[0]:+.1f}), "
          f"collector RSS {stop[1]:.1f} MB ({stop[1] - start[1]:+.1f}); broker stopped {outages}x, killed {kills}x; "
          f"device made {oc.get('accepted', 0)} reads, {oc.get('delivered', 0)} receipted, {left} left in its outbox; "
          f"{n} reads stored ({plates} distinct plates)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
