"""Outbox durability and the publisher against a real Mosquitto broker."""

import json
import os
import subprocess
import sys
import time

import pytest

from edge.mqtt import MqttSettings
from edge.outbox import Outbox, OutboxError
from edge.runtime.publisher import Publisher

from .broker import Broker, Mqtt311OnlyProxy, Subscriber, free_port


def test_outbox_keeps_order_and_deduplicates(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    assert ob.put("a", "t", b"1") and ob.put("b", "t", b"2")
    assert not ob.put("a", "t", b"1")  # same read_id again: no second copy
    items = ob.peek()
    assert [i.read_id for i in items] == ["a", "b"]
    ob.ack(items[0].seq)
    assert ob.backlog() == 1 and ob.counters()["delivered"] == 1 and ob.counters()["accepted"] == 2


def test_outbox_bounds_are_counted(tmp_path):
    now = [1000.0]
    ob = Outbox(tmp_path / "o.db", max_age_s=100, max_bytes=25, clock=lambda: now[0])
    ob.put("old", "t", b"x" * 10)
    now[0] += 200
    ob.put("a", "t", b"y" * 10)
    ob.put("b", "t", b"z" * 10)
    ob.put("c", "t", b"w" * 10)  # over 25 bytes: the oldest goes
    c = ob.counters()
    assert c["dropped_age"] == 1 and c["dropped_space"] == 1
    assert [i.read_id for i in ob.peek()] == ["b", "c"]


def test_outbox_keeps_the_age_of_reads_queued_under_a_stale_clock(tmp_path):
    """A Pi without a real-time clock boots with the time it was switched off, queues reads, then NTP
    sets the clock forward by the weeks it lay off: those reads are seconds old, not weeks."""
    day = 86400.0
    wall, steady = [100 * day], [50.0]
    ob = Outbox(tmp_path / "o.db", max_age_s=30 * day, clock=lambda: wall[0], steady=lambda: steady[0])
    ob.put("before", "t", b"1")  # queued, then the power goes for 40 days
    ob.close()
    wall[0] += 60  # fake-hwclock: the time it was switched off; a new boot, so the steady clock restarts
    steady[0] = 5.0
    ob = Outbox(tmp_path / "o.db", max_age_s=30 * day, clock=lambda: wall[0], steady=lambda: steady[0])
    ob.put("offline", "t", b"2")
    stamped = ob.peek()[1].created
    wall[0] += 40 * day + 30  # NTP: 30 s later by the steady clock, 40 days later by the wall clock
    steady[0] += 30
    ob.put("after", "t", b"3")
    assert [i.read_id for i in ob.peek()] == ["offline", "after"]  # the one read really 40 days old went
    c = ob.counters()
    assert c["dropped_age"] == 1 and c["clock_steps"] == 1
    assert ob.peek()[0].created == pytest.approx(stamped + 40 * day)  # restamped: 30 s old, as it is
    wall[0] -= 3600  # a step back: nothing is dropped, the own records move with it
    ob.put("back", "t", b"4")
    assert ob.backlog() == 3 and ob.counters()["clock_steps"] == 2
    slow = Outbox(tmp_path / "p.db", max_age_s=100, clock=lambda: wall[0], steady=lambda: steady[0])
    slow.put("x", "t", b"5")
    wall[0] += 101  # the wall clock moving with the steady one is no step: the read is old and goes
    steady[0] += 101
    slow.put("y", "t", b"6")
    assert [i.read_id for i in slow.peek()] == ["y"] and "clock_steps" not in slow.counters()


def test_outbox_survives_kill_9(tmp_path):
    db = tmp_path / "o.db"
    code = (
        "import os,sys; sys.path.insert(0, %r)\n"
        "from edge.outbox import Outbox\n"
        "ob = Outbox(%r)\n"
        "for i in range(50): ob.put(f'r{i}', 't', b'p' * 100)\n"
        "print('written', flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    ) % (os.getcwd(), str(db))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "written" in p.stdout and p.returncode == -9
    assert Outbox(db).backlog() == 50


def test_outbox_unwritable_path_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(tmp_path / "file" / "o.db")


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def test_publisher_delivers_and_deletes_only_after_ack(tmp_path, broker):
    ob = Outbox(tmp_path / "o.db")
    sub = Subscriber(broker.port, "lpr/v1/dev1/#")
    pub = Publisher(MqttSettings(port=broker.port, health_interval_s=0.5), "dev1", ob, health=lambda: {"ok": True})
    for i in range(20):
        ob.put(f"id{i}", pub.t["reads"], json.dumps({"read_id": f"id{i}"}).encode())
    pub.start()
    try:
        assert pub.wait_connected(10)
        assert pub.flush(15)
        assert sub.wait_for(lambda m: len({json.loads(p)["read_id"] for t, p, _ in m if t.endswith("/reads")}) == 20)
        assert sub.wait_for(lambda m: any(t.endswith("/health") for t, _, _ in m))
        assert sub.wait_for(lambda m: any(t.endswith("/status") and b"online" in p for t, p, _ in m))
        assert ob.counters()["delivered"] == 20 and pub.stats.protocol == "5"
    finally:
        pub.stop()
        sub.close()


def test_publisher_falls_back_to_mqtt_311_when_the_broker_refuses_5(tmp_path, broker):
    proxy = Mqtt311OnlyProxy(broker.port)
    sub = Subscriber(broker.port, "lpr/v1/dev5/reads", client_id="v311-sub")
    ob = Outbox(tmp_path / "o.db")
    for i in range(5):
        ob.put(f"r{i}", "lpr/v1/dev5/reads", json.dumps({"read_id": f"r{i}"}).encode())
    pub = Publisher(MqttSettings(port=proxy.port), "dev5", ob)  # protocol "auto": 5 first
    pub.start()
    try:
        assert pub.wait_connected(20)
        assert pub.stats.protocol == "3.1.1" and proxy.refused_v5 >= 1 and proxy.passed >= 1
        assert pub.flush(15)
        assert sub.wait_for(lambda m: {json.loads(p)["read_id"] for _, p, _ in m} == {f"r{i}" for i in range(5)})
        assert ob.counters()["delivered"] == 5
    finally:
        pub.stop()
        sub.close()
        proxy.close()


def test_publisher_told_to_speak_mqtt_5_keeps_reads_when_the_broker_refuses(tmp_path, broker):
    proxy = Mqtt311OnlyProxy(broker.port)
    ob = Outbox(tmp_path / "o.db")
    ob.put("kept", "lpr/v1/dev6/reads", b'{"read_id":"kept"}')
    pub = Publisher(MqttSettings(port=proxy.port, protocol="5"), "dev6", ob)  # no fallback asked for
    pub.start()
    try:
        deadline = time.monotonic() + 10
        while proxy.refused_v5 < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        assert proxy.refused_v5 >= 1 and proxy.passed == 0
        assert not pub.stats.connected and "protocol" in pub.stats.last_error.lower()
        assert ob.backlog() == 1  # nothing accepted is lost
    finally:
        pub.stop()
        proxy.close()


def test_publisher_rides_out_a_broker_outage(tmp_path):
    port = free_port()
    b = Broker(tmp_path / "broker", port=port).start()
    sub = Subscriber(port, "lpr/v1/dev2/reads", client_id="outage-sub")
    ob = Outbox(tmp_path / "o.db")
    pub = Publisher(MqttSettings(port=port), "dev2", ob)
    pub.start()
    try:
        assert pub.wait_connected(10)
        ob.put("before", pub.t["reads"], b'{"read_id":"before"}')
        pub.notify()
        assert pub.flush(10)
        b.stop()
        deadline = time.monotonic() + 10
        while pub.stats.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(5):
            ob.put(f"during{i}", pub.t["reads"], json.dumps({"read_id": f"during{i}"}).encode())
        time.sleep(1)
        assert ob.backlog() == 5  # nothing is deleted while the broker is away
        b.start()
        assert pub.flush(40)
        ids = lambda m: {json.loads(p)["read_id"] for _, p, _ in m}  # noqa: E731
        assert sub.wait_for(lambda m: ids(m) == {"before"} | {f"during{i}" for i in range(5)}, 30)
    finally:
        pub.stop()
        sub.close()
        b.stop()


def test_last_will_marks_device_offline(tmp_path, broker):
    code = (
        "import sys,time; sys.path.insert(0, %r)\n"
        "from edge.mqtt import MqttSettings\nfrom edge.runtime.publisher import Publisher\nfrom edge.outbox import Outbox\n"
        "p = Publisher(MqttSettings(port=%d, keepalive=2), 'dev3', Outbox(%r)); p.start()\n"
        "assert p.wait_connected(10); print('up', flush=True); time.sleep(60)\n"
    ) % (os.getcwd(), broker.port, str(tmp_path / "o.db"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    sub = Subscriber(broker.port, "lpr/v1/dev3/status", client_id="will-sub")
    try:
        assert proc.stdout.readline().strip() == "up"
        assert sub.wait_for(lambda m: any(b"online" in p for _, p, _ in m))
        proc.kill()
        assert sub.wait_for(lambda m: b"offline" in m[-1][1], 15)
    finally:
        proc.kill()
        sub.close()
