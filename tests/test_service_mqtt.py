"""The device process end to end with a real Mosquitto: outages, kill -9, bad inputs (edge-runtime issue)."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edge.mqtt import MqttSettings
from edge.outbox import Outbox
from edge.runtime.publisher import Publisher

from .broker import Broker, Subscriber, free_port
from .conftest import ROOT, run_edge

CLIP = ROOT / "fixtures" / "videos" / "07_mixed_styles.mp4"


def config(tmp: Path, port: int, source: str = str(CLIP), device: str = "dev-a") -> Path:
    f = tmp / "device.toml"
    f.write_text(f"""
[device]
id = "{device}"
state_dir = "{tmp / 'state'}"
[camera]
id = "cam-1"
owner = "Test Owner"
source = "{source}"
[gps]
mode = "fixed"
lat = 47.0
lon = 15.0
[mqtt]
host = "127.0.0.1"
port = {port}
health_interval_s = 1
""")
    return f


_REFERENCE: dict[str, list[str]] = {}


def expected(clip: Path) -> list[str]:
    """What an uninterrupted replay of the clip reads (its accuracy is test_replay's business):
    these tests check that every such read is delivered, once, whatever happens on the way."""
    if clip.name not in _REFERENCE:
        with tempfile.TemporaryDirectory() as td:
            r = run_edge("replay", str(clip), "--fast", "--json", "--outbox", f"{td}/ref.db", timeout=300)
        assert r.returncode == 0, r.stderr
        _REFERENCE[clip.name] = sorted(json.loads(line)["plate"]["text"] for line in r.stdout.splitlines() if line.startswith("{"))
        assert _REFERENCE[clip.name], "the reference replay read nothing"
    return _REFERENCE[clip.name]


def start_replay(cfg: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "replay", str(CLIP), "--config", str(cfg), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def replay_outboxes(tmp: Path) -> list[Path]:
    """The outboxes replays of CLIP made for themselves under the config's state_dir."""
    return sorted((tmp / "state").glob(f"replay-{CLIP.stem}-*.db"))


def dedup(messages) -> dict[str, str]:
    """read_id -> plate text, as a de-duplicating subscriber sees them."""
    out = {}
    for topic, payload, _ in messages:
        if topic.endswith("/reads"):
            d = json.loads(payload)
            out[d["read_id"]] = d["plate"]["text"]
    return out


def test_replay_publishes_every_read_and_health(tmp_path):
    b = Broker(tmp_path / "broker").start()
    sub = Subscriber(b.port, "lpr/v1/dev-a/#", client_id="svc-sub")
    try:
        r = run_edge("replay", str(CLIP), "--config", str(config(tmp_path, b.port)), "--fast", timeout=300)
        assert r.returncode == 0, r.stderr
        assert sub.wait_for(lambda m: sorted(dedup(m).values()) == expected(CLIP), 20)
        assert sub.wait_for(lambda m: any(t.endswith("/status") and b"online" in p for t, p, _ in m))
        printed = [line for line in r.stdout.splitlines() if " id " in line]
        assert len(printed) == len(expected(CLIP))
        assert "WARNING" not in r.stderr, r.stderr  # a clean exit's own disconnection is no warning
        iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")  # status and health write time alike
        online = [json.loads(p) for t, p, _ in sub.messages if t.endswith("/status") and b"online" in p]
        health = [json.loads(p) for t, p, _ in sub.messages if t.endswith("/health")]
        assert online and all(iso.match(m["time"]) for m in online), online
        assert not health or all(iso.match(m["time"]) for m in health), health[:1]
    finally:
        sub.close()
        b.stop()


def test_broker_stopped_for_10_seconds_mid_replay_loses_nothing(tmp_path):
    port = free_port()
    b = Broker(tmp_path / "broker", port=port).start()
    sub = Subscriber(port, "lpr/v1/dev-a/reads", client_id="outage-sub")
    want = expected(CLIP)
    proc = start_replay(config(tmp_path, port), "--flush-timeout", "40")
    try:
        time.sleep(3.0)
        b.stop()
        time.sleep(10.0)
        b.start()
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert sub.wait_for(lambda m: sorted(set(dedup(m).values())) == want, 30)
        assert sorted(dedup(sub.messages).values()) == want  # each plate once after de-duplication
    finally:
        proc.kill()
        sub.close()
        b.stop()


def test_sigkill_mid_replay_then_restart_delivers_each_plate_once(tmp_path):
    b = Broker(tmp_path / "broker").start()
    sub = Subscriber(b.port, "lpr/v1/dev-a/reads", client_id="kill-sub")
    cfg = config(tmp_path, b.port)
    want = expected(CLIP)
    proc = start_replay(cfg)
    try:
        line = proc.stdout.readline()  # the first read is out
        assert " id " in line, proc.stderr.read()
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        again = run_edge("replay", str(CLIP), "--config", str(cfg), "--fast", timeout=300)
        assert again.returncode == 0, again.stderr
        assert "resuming" in again.stderr and "interrupted" in again.stderr  # only a crash resumes
        assert replay_outboxes(tmp_path) == []  # all delivered: the replay's outbox is gone
        assert sub.wait_for(lambda m: sorted(set(dedup(m).values())) == want, 30)
        seen = dedup(sub.messages)
        assert sorted(seen.values()) == want, seen
    finally:
        proc.kill()
        sub.close()
        b.stop()


def test_unreachable_broker_exits_4_and_keeps_the_reads(tmp_path):
    want = expected(CLIP)
    port = free_port()  # nothing listens here
    cfg = config(tmp_path, port)
    r = run_edge("replay", str(CLIP), "--config", str(cfg), "--fast", "--flush-timeout", "1", timeout=300)
    assert r.returncode == 4
    err = [x for x in r.stderr.splitlines() if "error" in x]
    (kept,) = replay_outboxes(tmp_path)  # the replay's own outbox, named in the error line
    assert len(err) == 1 and "unreachable" in err[0] and f"kept in outbox {kept}" in err[0]
    ob = Outbox(kept)
    assert ob.backlog() == len(want)
    # the kept reads go out once a broker is there
    b = Broker(tmp_path / "broker", port=port).start()
    sub = Subscriber(port, "lpr/v1/dev-a/reads", client_id="late-sub")
    pub = Publisher(MqttSettings(port=port), "dev-a", ob)
    pub.start()
    try:
        assert pub.flush(20)
        assert sub.wait_for(lambda m: sorted(dedup(m).values()) == want)
    finally:
        pub.stop()
        sub.close()
        b.stop()


@pytest.mark.parametrize("source,needle", [
    ("/nonexistent/clip.mp4", "video file not found"),
    ("GARBAGE", "cannot"),
    ("/dev/video99", "camera /dev/video99 not found"),
])
def test_bad_sources_exit_3_with_one_line(tmp_path, source, needle):
    if source == "GARBAGE":
        g = tmp_path / "garbage.mp4"
        g.write_bytes(os.urandom(4096))
        source = str(g)
    cfg = config(tmp_path, free_port(), source=source)
    r = run_edge("run", "--config", str(cfg), timeout=60)
    assert r.returncode == 3, r.stderr
    errs = [x for x in r.stderr.splitlines() if "error" in x]
    assert len(errs) == 1 and needle in errs[0] and "Traceback" not in r.stderr


def test_bad_config_exits_2(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[device]\nid = 'x'\n")
    r = run_edge("run", "--config", str(f))
    assert r.returncode == 2 and "camera" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_flushes_and_exits_cleanly(tmp_path):
    b = Broker(tmp_path / "broker").start()
    sub = Subscriber(b.port, "lpr/v1/dev-a/#", client_id="term-sub")
    cfg = config(tmp_path, b.port)
    proc = start_replay(cfg)
    try:
        assert " id " in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert replay_outboxes(tmp_path) == []  # flushed before exit, so nothing was kept
        assert "stopped at frame" in err and "starts from the beginning" in err
        assert sub.wait_for(lambda m: any(t.endswith("/status") and b"offline" in p for t, p, _ in m))
        again = run_edge("replay", str(CLIP), "--config", str(cfg), "--fast", timeout=300)
        assert again.returncode == 0 and "resuming" not in again.stderr  # a clean stop is not resumed
    finally:
        proc.kill()
        sub.close()
        b.stop()


def test_a_replay_without_mqtt_leaves_nothing_for_a_later_one_to_publish(tmp_path):
    """Replays without a broker used to queue their reads in out/replay/outbox.db, and the next replay
    with --mqtt published them too: each replay now has its clip's own outbox, gone when it ends."""
    state = tmp_path / "state"
    quiet = run_edge("replay", str(ROOT / "fixtures" / "videos" / "01_gate_day.mp4"), "--fast", cwd=tmp_path, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert not list((tmp_path / "out" / "replay").glob("*.db"))  # the developer default state_dir: nothing kept
    b = Broker(tmp_path / "broker").start()
    sub = Subscriber(b.port, "lpr/v1/+/reads", client_id="fresh-sub")
    try:
        r = run_edge("replay", str(ROOT / "fixtures" / "videos" / "08_no_plate.mp4"), "--fast", "--mqtt", f"127.0.0.1:{b.port}",
                     cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)
        assert dedup(sub.messages) == {}  # the no-plate clip publishes nothing, and nothing old
    finally:
        sub.close()
        b.stop()
    assert not state.exists() or not list(state.glob("*.db"))
