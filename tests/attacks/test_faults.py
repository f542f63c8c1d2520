"""The fault suite: a provisioned device replaying a clip again and again into a real `edge collect`,
through the shipped broker settings, while the device is killed (-9), the broker is stopped and
killed (-9, with its persistence) and the collector is killed (-9), in a loop bounded in count and
time. A replay's processes (the first, and those that resume it after a kill) make one play of the
clip, all of its reads stamped from one start time (a resumed replay keeps it). Every read any process
printed (it was in the outbox before it was printed) is at the collector; the reads there, grouped by
play, are the clip's passes once each; and nothing is left in the outbox.
Prints plays, kills, reads expected / delivered / doubled."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter

from .test_devices import CLIP, Collector, bundle_env, id_ms, outbox_rows, reference_plates, reference_reads

DEVICE_KILLS, BROKER_OUTAGES, BROKER_KILLS, COLLECTOR_KILLS = 20, 10, 5, 5
DEADLINE_S = 900


def test_kills_and_outages_lose_nothing_and_double_nothing(tmp_path, pki, broker):
    want = Counter(reference_plates())
    rng = random.Random(23)
    col = Collector(tmp_path, broker, pki).start()
    env = {**bundle_env(pki, "dev-c", tmp_path, broker.port), "EDGE_MQTT__RECEIPT_WAIT_S": "1"}
    cmd = [sys.executable, "-m", "edge.cli", "replay", str(CLIP), "--fast", "--config", str(pki / "dev-c" / "device.toml"),
           "--flush-timeout", "20", "--json"]
    # the faults to come, in a random order: the device's kills happen to a running replay
    faults = (["device"] * DEVICE_KILLS + ["broker-stop"] * BROKER_OUTAGES + ["broker-kill"] * BROKER_KILLS
              + ["collector-kill"] * COLLECTOR_KILLS)
    rng.shuffle(faults)
    offset = {}
    for plate, ms in reference_reads():
        offset[plate] = ms
    printed: dict[str, str] = {}
    exits = 0
    t0 = time.monotonic()
    trail = (tmp_path / "processes.log").open("w")

    def account(out: str, err: str, what: str = "") -> None:
        reads = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        printed.update({d["read_id"]: d["plate"]["text"] for d in reads})
        marks = [x for x in err.splitlines() if "resuming" in x or "read to its end" in x or "error" in x]
        trail.write(f"{what} plates={[d['plate']['text'] for d in reads]} {marks}\n")
        trail.flush()

    try:
        while faults:
            assert time.monotonic() - t0 < DEADLINE_S, f"{len(faults)} faults left after {DEADLINE_S} s"
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            fault = faults.pop()
            time.sleep(rng.uniform(0.3, 4.0))
            if fault == "device":
                p.send_signal(signal.SIGKILL)
            elif fault == "broker-stop":
                broker.stop()
                time.sleep(rng.uniform(0.5, 3.0))
                broker.start()
            elif fault == "broker-kill":
                broker.proc.send_signal(signal.SIGKILL)
                broker.proc.wait(10)
                time.sleep(rng.uniform(0.2, 2.0))
                broker.start()
            elif fault == "collector-kill":
                col.stop(signal.SIGKILL)
                time.sleep(rng.uniform(0.2, 2.0))
                col.start()
            out, err = p.communicate(timeout=120)
            exits += 1
            assert p.returncode in (0, -9, 4), err  # done, killed, or the broker was away at its end: it resumes
            account(out, err, f"{fault} rc={p.returncode}")
        while True:  # the last play interrupted or unfinished: run until it ends with everything receipted
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode in (0, 4), r.stderr
            account(r.stdout, r.stderr)
            if r.returncode == 0:
                break
            assert time.monotonic() - t0 < DEADLINE_S + 300
        got = dict(col.wait_reads(len(printed), timeout=60))
        time.sleep(2)
        got = dict(col.reads())
        # plays: the reads' start times (first frame's time less its place in the clip), a second apart or more
        starts = sorted((id_ms(rid) - offset[plate], rid, plate) for rid, plate in got.items())
        plays: list[list[str]] = []
        last = None
        for u, _, plate in starts:
            if last is None or u - last > 1000:
                plays.append([])
            plays[-1].append(plate)
            last = u
        expected = sum(want.values()) * len(plays)
        doubled = sum(max(0, n - want[p]) for play in plays for p, n in Counter(play).items())
        missing = len(set(printed) - set(got)) + sum(sum((want - Counter(play)).values()) for play in plays)
        print(f"\nfault suite: {len(plays)} plays of the clip ({exits + 1} processes), {DEVICE_KILLS} device kills, "
              f"{BROKER_OUTAGES} broker outages, {BROKER_KILLS} broker kills, {COLLECTOR_KILLS} collector kills in "
              f"{time.monotonic() - t0:.0f} s; reads expected {expected}, delivered {len(got)}, doubled {doubled}, "
              f"missing {missing}")
        assert set(printed) <= set(got)  # every read made is stored
        for play in plays:
            assert Counter(play) == want, (play, plays)  # each play: the clip's passes, once each
        assert len(got) == expected and doubled == 0 and missing == 0
        assert outbox_rows(tmp_path, "dev-c") == 0
    finally:
        col.stop()
