"""Hostile devices and unlucky operators against the shipped broker settings (deploy/collector), a real
`edge collect` and real device replays: session takeover, a device named like a collector, a device
whose id is not its certificate's, a broker killed with reads it acknowledged, a replay killed after
its clip ended, a failed collector start, oversized and revoked devices."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.collector.store import Store

from ..broker import collector_broker
from ..conftest import ROOT, run_edge
from ..test_collector import good

CLIP = ROOT / "fixtures" / "videos" / "02_lane_speed.mp4"


def client(port: int, pki: Path, who: str, client_id: str, cert: tuple[Path, Path] | None = None, v5: bool = True,
           clean: bool = True, expiry: int = 0):
    """A connected paho client with `who`'s certificate (a device bundle or the collector), or None if
    the broker would not have it."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                    **({} if v5 else {"clean_session": clean}))
    if cert is None:
        cert = ((pki / who / "device.crt", pki / who / "device.key") if who.startswith("dev") else
                (pki / who / f"{who}.crt", pki / who / f"{who}.key"))
    c.tls_set(ca_certs=str(pki / "ca" / "ca.crt"), certfile=str(cert[0]), keyfile=str(cert[1]))
    c.got = []
    c.on_message = lambda cl, u, m: cl.got.append((m.topic, m.payload))
    ok = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: ok.set() if not rc.is_failure else None
    try:
        if v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = expiry
            c.connect("127.0.0.1", port, clean_start=clean, properties=props)
        else:
            c.connect("127.0.0.1", port)
    except (OSError, ValueError):
        return None
    c.loop_start()
    if not ok.wait(5):
        c.loop_stop()
        return None
    return c


def close(c) -> None:
    if c is not None:
        c.disconnect()
        c.loop_stop()


class Collector:
    """`edge collect` on a SQLite file, on the broker's collectors' listener."""

    def __init__(self, tmp: Path, broker, pki: Path, *extra: str, client_id: str = "collector-main"):
        self.db = f"sqlite:///{tmp / 'c.db'}"
        self.env = {**os.environ, "EDGE_COLLECTOR_AUDIT_HEAD": str(tmp / "audit.head")}
        self.cmd = [sys.executable, "-m", "edge.cli", "collect", "--db", self.db, "--mqtt", f"127.0.0.1:{broker.collector_port}",
                    "--cafile", str(pki / "ca" / "ca.crt"), "--certfile", str(pki / "collector" / "collector.crt"),
                    "--keyfile", str(pki / "collector" / "collector.key"), "--client-id", client_id,
                    "--health-interval", "1", *extra]
        self.proc: subprocess.Popen | None = None

    def start(self) -> Collector:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        while line and not line.startswith("collecting from"):
            line = self.proc.stdout.readline()
        assert line, f"edge collect did not start (exit {self.proc.poll()})"
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        return self

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)

    def reads(self) -> list[tuple[str, str]]:
        s = Store(self.db)
        try:
            return sorted(s.query("SELECT read_id, plate FROM reads"))
        finally:
            s.close()

    def wait_reads(self, n: int, timeout: float = 30) -> list[tuple[str, str]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.reads()
            if len(got) >= n:
                return got
            time.sleep(0.2)
        return self.reads()


def publish_reads(port: int, pki: Path, dev: str, n: int, first: int = 100) -> None:
    c = client(port, pki, dev, dev)
    assert c is not None
    try:
        for i in range(n):
            c.publish(f"lpr/v1/{dev}/reads", good(first + i, datetime.now(UTC) - timedelta(minutes=5), device=dev),
                      qos=1).wait_for_publish(10)
    finally:
        close(c)


def test_a_device_cannot_take_the_collectors_session(tmp_path, pki, broker):
    """dev-a connects with the collector's client id and joins the collectors' shared subscription.
    The broker makes its client id its certificate's name (the collector keeps its session), and
    the share the broker hands it and then drops (Mosquitto grants any subscription and applies the
    ACL on delivery) is sent again by the device that made it, for want of a receipt."""
    want = reference_plates()
    col = Collector(tmp_path, broker, pki).start()
    try:
        thief = client(broker.port, pki, "dev-a", "collector-main", clean=False, expiry=3600)
        assert thief is not None
        thief.subscribe("$share/collectors/lpr/v1/+/reads", qos=1)
        thief.subscribe("lpr/v1/+/receipts", qos=1)
        assert client(broker.collector_port, pki, "dev-a", "collector-main") is None  # no device gets onto that listener
        time.sleep(0.5)
        r = replay(pki, "dev-b", tmp_path, broker.port, "--flush-timeout", "60", env_extra={"EDGE_MQTT__RECEIPT_WAIT_S": "1"})
        assert r.returncode == 0, r.stderr
        got = col.wait_reads(len(want))
        assert sorted(p for _, p in got) == want, got
        assert outbox_rows(tmp_path, "dev-b") == 0
        assert thief.got == []  # it saw neither reads nor receipts
        close(thief)
        log = (tmp_path / "broker" / "mosquitto.log").read_text()
        assert "collector-main already connected" not in log  # the collector was never kicked off
    finally:
        col.stop()


def test_a_device_certificate_named_collector_has_no_powers(tmp_path, pki, broker):
    from edge.provision import issue_cert

    r = run_edge("provision", "device", "collector", "--ca-dir", str(pki / "ca"), "--out", str(tmp_path / "x"), "--owner", "A")
    assert r.returncode == 2 and "reserved" in r.stderr
    # someone who holds the devices' CA signs a "collector" certificate by hand: still a device
    key, crt = issue_cert(pki / "ca", tmp_path / "forged", "collector", "collector")
    spy = client(broker.port, pki, "forged", "collector", cert=(crt, key))
    assert spy is not None
    spy.subscribe("lpr/v1/+/reads", qos=1)
    spy.subscribe("$share/collectors/lpr/v1/+/reads", qos=1)
    assert client(broker.collector_port, pki, "forged", "collector-x", cert=(crt, key)) is None
    time.sleep(0.3)
    publish_reads(broker.port, pki, "dev-b", 3)
    time.sleep(1.0)
    assert spy.got == []
    close(spy)


def bundle_env(pki: Path, dev: str, tmp: Path, port: int) -> dict:
    """The device's bundle as provisioned, run here: its files from the bundle, its outbox key (which
    a device makes at first boot) made here."""
    b = pki / dev
    key = tmp / f"{dev}-outbox.key"
    if not key.exists():
        key.write_bytes(os.urandom(32))
    return {"EDGE_OUTBOX__KEY_FILE": str(key), **os.environ, "EDGE_MQTT__CAFILE": str(b / "ca.crt"), "EDGE_MQTT__CERTFILE": str(b / "device.crt"),
            "EDGE_MQTT__KEYFILE": str(b / "device.key"), "EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(port),
            "EDGE_DEVICE__STATE_DIR": str(tmp / f"state-{dev}"), "EDGE_CAMERA__SOURCE": str(CLIP),
            "EDGE_HOTLIST__PUBLIC_KEY": str(b / "hotlist.pub")}


def replay(pki, dev, tmp, port, *extra, env_extra=None, timeout=300):
    env = {**bundle_env(pki, dev, tmp, port), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "edge.cli", "replay", str(CLIP), "--fast", "--config", str(pki / dev / "device.toml"),
                           "--json", *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_device_whose_id_is_not_its_certificates_name_does_not_start(tmp_path, pki, broker):
    for proto in ("3.1.1", "5"):
        r = replay(pki, "dev-a", tmp_path, broker.port, env_extra={"EDGE_DEVICE__ID": "dev-z", "EDGE_MQTT__PROTOCOL": proto})
        assert r.returncode == 2, r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "dev-z" in lines[0] and "'dev-a'" in lines[0], r.stderr
    assert not (tmp_path / "state-dev-a").exists() or not list((tmp_path / "state-dev-a").glob("*.db"))


def outbox_rows(tmp: Path, dev: str) -> int:
    import sqlite3

    n = 0
    for f in (tmp / f"state-{dev}").glob("*.db"):
        with sqlite3.connect(f) as c:
            n += c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    return n


@functools.cache
def reference_reads() -> tuple[tuple[str, int], ...]:
    """What an uninterrupted replay of CLIP reads, without MQTT: (plate, ms from the clip's first
    read to this one's first frame), as the read ids say."""
    with __import__("tempfile").TemporaryDirectory() as td:
        r = run_edge("replay", str(CLIP), "--fast", "--json", "--outbox", f"{td}/ref.db", timeout=300)
    assert r.returncode == 0, r.stderr
    reads = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    ms = [id_ms(d["read_id"]) for d in reads]
    return tuple(sorted((d["plate"]["text"], m - min(ms)) for d, m in zip(reads, ms, strict=True)))


def id_ms(read_id: str) -> int:
    """The Unix milliseconds a UUIDv7 read id carries (for a replay: the pass's first frame)."""
    return int(read_id.replace("-", "")[:12], 16)


def reference_plates() -> list[str]:
    return sorted(p for p, _ in reference_reads())


def test_reads_the_broker_took_survive_a_broker_kill(tmp_path, pki, broker):
    """The collector is away; the broker acknowledges the device's reads and queues them, then dies
    (kill -9) before it wrote them to disk. The device still has them and sends them again."""
    want = reference_plates()
    col = Collector(tmp_path, broker, pki).start()
    col.stop()  # its session (and queue) stays on the broker
    r = replay(pki, "dev-c", tmp_path, broker.port, "--flush-timeout", "3")
    assert r.returncode == 4, r.stderr  # the broker took them, no receipt came: kept
    assert outbox_rows(tmp_path, "dev-c") == len(want)
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(10)
    broker.start()
    col.start()
    try:
        r = replay(pki, "dev-c", tmp_path, broker.port, "--flush-timeout", "60")
        assert r.returncode == 0, r.stderr
        assert "read to its end" in r.stderr  # nothing read twice: what was left is sent
        got = col.wait_reads(len(want))
        assert sorted(p for _, p in got) == want, got
        assert outbox_rows(tmp_path, "dev-c") == 0
    finally:
        col.stop()


def test_a_replay_killed_after_its_clip_ended_delivers_each_pass_once(tmp_path, pki, broker):
    want = reference_plates()
    col = Collector(tmp_path, broker, pki).start()
    col.stop()
    env = {**bundle_env(pki, "dev-b", tmp_path, broker.port)}
    p = subprocess.Popen([sys.executable, "-m", "edge.cli", "replay", str(CLIP), "--fast", "--config", str(pki / "dev-b" / "device.toml"),
                          "--json", "--flush-timeout", "60"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = 0
    for line in p.stdout:  # every read is printed as it is made; the clip is over after the last
        seen += line.startswith("{")
        if seen == len(want):
            break
    time.sleep(2.0)  # past the end of the clip, waiting for receipts that cannot come
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    col.start()
    try:
        r = replay(pki, "dev-b", tmp_path, broker.port, "--flush-timeout", "60")
        assert r.returncode == 0, r.stderr
        got = col.wait_reads(len(want))
        time.sleep(1.0)
        got = col.reads()
        assert sorted(p for _, p in got) == want, got  # each pass once, under one read_id
    finally:
        col.stop()


def test_a_failed_collector_start_leaves_no_session_behind(tmp_path, pki, broker):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    trial = Collector(tmp_path / "trial", broker, pki, "--http", f"127.0.0.1:{port}", client_id="collector-trial")
    (tmp_path / "trial").mkdir()
    r = subprocess.run(trial.cmd, cwd=ROOT, env=trial.env, capture_output=True, text=True, timeout=60)
    busy.close()
    assert r.returncode == 2 and "--http" in r.stderr, r.stderr
    col = Collector(tmp_path, broker, pki).start()
    try:
        publish_reads(broker.port, pki, "dev-b", 6)
        assert len(col.wait_reads(6, timeout=15)) == 6  # no ghost member took a share of the stream
    finally:
        col.stop()


def test_the_broker_refuses_oversized_messages(tmp_path, pki, broker):
    col = Collector(tmp_path, broker, pki).start()
    try:
        c = client(broker.port, pki, "dev-b", "dev-b")
        big = json.loads(good(1, device="dev-b"))
        big["camera"]["owner"] = "x" * 700_000
        c.publish("lpr/v1/dev-b/reads", json.dumps(big), qos=1)
        time.sleep(1.5)
        close(c)
        publish_reads(broker.port, pki, "dev-b", 1)
        got = col.wait_reads(1)
        time.sleep(0.5)
        s = Store(col.db)
        assert len(col.reads()) == 1 and s.one("SELECT COUNT(*) FROM rejects")[0] == 0  # it never reached the collector
        s.close()
    finally:
        col.stop()
    assert got


def test_a_revoked_device_is_refused_by_the_broker(tmp_path, pki):
    import shutil

    ca = tmp_path / "ca"
    shutil.copytree(pki / "ca", ca)
    r = run_edge("provision", "device", "dev-r", "--ca-dir", str(ca), "--out", str(tmp_path / "dev-r"), "--owner", "A")
    assert r.returncode == 0, r.stderr
    pk = tmp_path  # pki-shaped: ca/, dev-r/
    b = collector_broker(tmp_path / "b1", ca, pki / "server")
    try:
        assert client(b.port, pk, "dev-r", "dev-r") is not None
    finally:
        b.stop()
    r = run_edge("provision", "revoke", "dev-r", "--ca-dir", str(ca))
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
    b = collector_broker(tmp_path / "b2", ca, pki / "server")
    try:
        assert client(b.port, pk, "dev-r", "dev-r") is None
        shutil.copytree(pki / "dev-a", tmp_path / "dev-a")
        assert client(b.port, pk, "dev-a", "dev-a") is not None  # the others still get in
    finally:
        b.stop()


def test_a_publish_denied_without_a_word_on_mqtt_311_keeps_the_reads(tmp_path, pki, broker):
    """MQTT 3.1.1 has no way to say "not authorized" to a publish: the broker acknowledges it and drops
    it. With receipts the device keeps every read and says so (exit 4), instead of deleting them."""
    col = Collector(tmp_path, broker, pki).start()
    try:
        want = reference_plates()
        r = replay(pki, "dev-a", tmp_path, broker.port, "--flush-timeout", "4",
                   env_extra={"EDGE_MQTT__PROTOCOL": "3.1.1", "EDGE_MQTT__TOPIC_PREFIX": "lpr/v0"})  # topics the ACL denies
        assert r.returncode == 4, r.stderr
        assert outbox_rows(tmp_path, "dev-a") == len(want) and col.reads() == []
        r = replay(pki, "dev-a", tmp_path, broker.port, "--flush-timeout", "60", env_extra={"EDGE_MQTT__PROTOCOL": "3.1.1"})
        assert r.returncode == 0, r.stderr  # set right, what was kept goes out, on the topic configured now
        assert sorted(p for _, p in col.wait_reads(len(want))) == want
    finally:
        col.stop()


def test_collector_start_names_a_missing_file(tmp_path, pki, broker):
    c = Collector(tmp_path, broker, pki)
    cmd = [x if x != str(pki / "ca" / "ca.crt") else str(tmp_path / "nope.crt") for x in c.cmd]
    r = subprocess.run(cmd, cwd=ROOT, env=c.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and str(tmp_path / "nope.crt") in r.stderr and "Traceback" not in r.stderr, r.stderr
