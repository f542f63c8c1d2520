"""Hotlists end to end on the shipped broker settings: entries proposed and approved with the CLI, the
signed bundle sent by a real `edge collect` to a provisioned device, alerts raised by real replays at
the recorded rate and stored, shown, acknowledged and fanned out at the collector; an alert queued
while the broker is down goes out before the reads; nothing on the device's disk names a listed
plate; a device cannot publish a bundle, read another's, or forge an alert the collector believes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from edge.collector.hotlist import verify_webhook
from edge.collector.store import Store

from ..conftest import ROOT, collector_users, run_edge
from .test_devices import Collector, bundle_env, client, close

CLIPS = ROOT / "fixtures" / "videos"
# clip 02 shows DW03NTE, FR01544 and 02ZYA4: how each entry may match (a slipped read can come first)
LISTED = {"DW03NTE": {"exact", "one-edit"}, "FR0I544": {"look-alike", "one-edit"}, "02ZYA": {"one-edit"}}
ABSENT = "ZZ99ZZZ"


class Webhook:
    """A case system's endpoint: keeps each call it receives."""

    def __init__(self):
        self.calls: list[tuple[dict, bytes]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/alerts"

    def close(self):
        self.srv.shutdown()


def edge(col, *args, token=None):
    return run_edge(*args, "--db", col.db, *(("--token", token) if token else ()), env=col.env)


def device_replay(pki, dev, tmp, port, clip, *extra, fast=False, timeout=300, env_extra=None):
    env = {**bundle_env(pki, dev, tmp, port), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "edge.cli", "replay", str(CLIPS / clip), "--config", str(pki / dev / "device.toml"),
                           "--json", *(("--fast",) if fast else ()), *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def alerts(col) -> list[dict]:
    s = Store(col.db)
    try:
        cols = ["alert_id", "entry_id", "kind", "confirmed", "flags", "first_read", "received", "read_id", "plate"]
        return [dict(zip(cols, r, strict=True)) for r in s.query(f"SELECT {', '.join(cols)} FROM alerts ORDER BY received")]
    finally:
        s.close()


def wait(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    return pred()


def listed_setup(tmp_path, pki, broker, *extra):
    """A collector that signs bundles, the users of one case, and the plates of LISTED and ABSENT
    proposed by an investigator and approved by a supervisor."""
    col = Collector(tmp_path, broker, pki, "--hotlist-key", str(pki / "ca" / "hotlist-signing.key"), *extra).start()
    tok = collector_users(col.db, env=col.env, ivy="investigator", sam="supervisor", sue="supervisor")
    assert edge(col, "cases", "open", "C-7", "--title", "checkpoint", token=tok["sam"]).returncode == 0
    ids = {}
    for plate in [*LISTED, ABSENT]:
        r = edge(col, "hotlist", "add", "--plate", plate, "--case", "C-7", "--reason", "stolen, report 4471", token=tok["ivy"])
        assert r.returncode == 0, r.stderr
        ids[plate] = r.stdout.split()[-1]
        own = edge(col, "hotlist", "approve", ids[plate], token=tok["ivy"])
        assert own.returncode == 2 and "supervisor" in own.stderr  # no one lists and approves a plate alone
        assert edge(col, "hotlist", "approve", ids[plate], token=tok["sue"]).returncode == 0
    return col, tok, ids


def get_bundle(pki, dev, tmp, broker) -> Path:
    """A first run (a clip without plates) on which the device comes online and is sent its bundle."""
    r = device_replay(pki, dev, tmp, broker.port, "08_no_plate.mp4")
    assert r.returncode == 0, r.stderr
    path = tmp / f"state-{dev}" / "hotlist.bundle"
    assert path.exists(), r.stderr
    return path


def test_a_listed_plate_alerts_at_the_collector_within_a_second(tmp_path, pki, broker):
    hook = Webhook()
    secret = tmp_path / "webhook.secret"
    secret.write_text("s3cret-shared-with-the-case-system\n")
    r = run_edge("provision", "integration", "homeassistant", "--ca-dir", str(pki / "ca"), "--out", str(tmp_path / "ha"))
    assert r.returncode == 0, r.stderr
    col, tok, ids = listed_setup(tmp_path, pki, broker, "--alert-webhook", hook.url, "--alert-webhook-secret", str(secret),
                                 "--alert-topic", "lpr/alerts")
    ha = client(broker.port, pki, "ha", "homeassistant", cert=(tmp_path / "ha" / "homeassistant.crt", tmp_path / "ha" / "homeassistant.key"))
    assert ha is not None
    ha.subscribe([("lpr/alerts/#", 1), ("lpr/v1/+/ha/alert", 1)])
    try:
        get_bundle(pki, "dev-a", tmp_path, broker)
        r = device_replay(pki, "dev-a", tmp_path, broker.port, "02_lane_speed.mp4", "--flush-timeout", "30",  # the recorded rate
                          env_extra={"EDGE_HOMEASSISTANT__ENABLED": "true"})
        assert r.returncode == 0, r.stderr
        got = wait(lambda: len(alerts(col)) >= 3 and alerts(col))
        by_entry = {a["entry_id"]: a for a in got}
        assert sorted(by_entry) == sorted(ids[p] for p in LISTED), got  # every listed plate, and not the absent one
        for plate, kinds in LISTED.items():
            a = by_entry[ids[plate]]
            assert a["kind"] in kinds and (a["confirmed"], a["flags"]) == (a["kind"], ""), a
            # stored after the frame it was first read in (how soon: python -m tests.bench_hotlist --clips, not a timed test)
            assert a["first_read"] <= a["received"], a
        reads = dict(col.wait_reads(3))
        assert {a["read_id"] for a in got} <= set(reads)  # each pass's read follows under its alert's read id
        # shown to the case's users, acknowledged once, audited
        shown = edge(col, "alerts", "--case", "C-7", "--json", token=tok["ivy"])
        assert shown.returncode == 0, shown.stderr
        rows = [json.loads(x) for x in shown.stdout.splitlines()]
        assert {x["entry"] for x in rows} == set(by_entry) and all(x["plate"] for x in rows)
        first = rows[0]["alert_id"]
        assert edge(col, "alerts", "ack", first, "--note", "stopped at lane 2", token=tok["sam"]).returncode == 0
        again = edge(col, "alerts", "ack", first, "--note", "x", token=tok["ivy"])
        assert again.returncode == 2 and "already" in again.stderr
        assert edge(col, "alerts", "--case", "C-7", token=tok["root"]).returncode == 2  # an admin sees no alerts
        s = Store(col.db)
        actions = [a for (a,) in s.query("SELECT action FROM audit ORDER BY seq")]
        s.close()
        assert "alert.ack" in actions and "alert.list" in actions
        # fanned out: the webhook signed, with the plate; the MQTT topic without plate or image
        fanned = lambda: [(t, p) for t, p in ha.got if t.startswith("lpr/alerts/")]  # noqa: E731
        assert wait(lambda: len(hook.calls) >= 3 and len(fanned()) >= 3), (len(hook.calls), ha.got)
        key = secret.read_bytes().strip()
        for headers, body in hook.calls:
            assert verify_webhook(key, headers["x-edge-timestamp"], body, headers["x-edge-signature"])
            assert not verify_webhook(key, headers["x-edge-timestamp"], body + b" ", headers["x-edge-signature"])
        assert {json.loads(b)["plate"] for _, b in hook.calls} == {a["plate"] for a in got}
        for _topic, payload in ha.got:
            assert not any(p.encode() in payload for p in (*LISTED, "FR01544", "02ZYA4")), payload
        # Home Assistant's match sensor: ON at each alert, with the entry's id and no plate
        matches = [json.loads(p) for t, p in ha.got if t == "lpr/v1/dev-a/ha/alert"]
        assert sorted(m["entry"] for m in matches) == sorted(by_entry) and {m["state"] for m in matches} == {"ON"}
        # nothing on the device's disk names a listed plate in clear (bundle: hashes; outboxes: sealed)
        files = [f for f in (tmp_path / "state-dev-a").rglob("*") if f.is_file()]
        assert any(f.name == "hotlist.bundle" for f in files)
        for f in files:
            data = f.read_bytes()
            for p in (*LISTED, "FR01544", "02ZYA4", ABSENT):
                assert p.encode() not in data, (f, p)
    finally:
        close(ha)
        col.stop()
        hook.close()


def test_an_alert_queued_while_the_broker_is_down_goes_before_the_reads(tmp_path, pki, broker):
    col, tok, ids = listed_setup(tmp_path, pki, broker)
    try:
        get_bundle(pki, "dev-b", tmp_path, broker)
        broker.stop()
        r = device_replay(pki, "dev-b", tmp_path, broker.port, "02_lane_speed.mp4", "--flush-timeout", "1", fast=True)
        assert r.returncode == 4, r.stderr  # the broker is away: everything kept
        broker.start()
        watch = client(broker.collector_port, pki, "collector", "collector-watch")
        assert watch is not None
        watch.subscribe([("lpr/v1/dev-b/alerts", 1), ("lpr/v1/dev-b/reads", 1)])
        time.sleep(0.5)
        r = device_replay(pki, "dev-b", tmp_path, broker.port, "02_lane_speed.mp4", "--flush-timeout", "60", fast=True)
        assert r.returncode == 0, r.stderr
        assert wait(lambda: len(watch.got) >= 6)
        topics = [t.rsplit("/", 1)[1] for t, _ in watch.got]
        assert topics[:3] == ["alerts"] * 3, topics  # the alerts first, then the backlog of reads
        assert len(wait(lambda: len(alerts(col)) >= 3 and alerts(col))) == 3
        close(watch)
    finally:
        col.stop()


def test_a_device_can_neither_send_a_bundle_nor_read_anothers_nor_forge_an_alert(tmp_path, pki, broker):
    col, tok, ids = listed_setup(tmp_path, pki, broker)
    try:
        path = get_bundle(pki, "dev-c", tmp_path, broker)
        before = path.read_bytes()
        spy = client(broker.port, pki, "dev-a", "dev-a")
        assert spy is not None
        spy.subscribe("lpr/v1/dev-c/hotlist/#", qos=1)  # another device's list
        spy.subscribe("lpr/v1/dev-a/hotlist/#", qos=1)
        # a device publishes a "bundle" of its own to another device: the broker drops it
        spy.publish("lpr/v1/dev-c/hotlist/manifest", b'{"schema":"lpr.hotlist/1","version":999}\nAAAA', qos=1, retain=True).wait_for_publish(5)
        # and forges an alert for an entry, on its own topic, naming a read that is not the plate
        from ..test_collector import good

        read = json.loads(good(900, device="dev-a", text="QQ1234Q"))
        forged = {"schema": "lpr.alert/1", "alert_id": read["read_id"], "entry": ids["DW03NTE"], "kind": "exact", "bundle": 1,
                  "first_read": read["time"], "seen": read["time"], "read": read}
        spy.publish("lpr/v1/dev-a/alerts", json.dumps(forged), qos=1).wait_for_publish(5)
        spy.publish("lpr/v1/dev-a/alerts", b'{"schema":"lpr.alert/1","read":{}}', qos=1).wait_for_publish(5)
        got = wait(lambda: alerts(col))
        assert [(a["entry_id"], a["confirmed"]) for a in got] == [(ids["DW03NTE"], "unconfirmed")]
        assert "unconfirmed" in got[0]["flags"].split(",")  # kept, and flagged: the plate is not the entry's
        time.sleep(1.0)
        assert not any("/dev-c/" in t for t, _ in spy.got)  # it never saw dev-c's list
        s = Store(col.db)
        assert s.one("SELECT COUNT(*) FROM rejects WHERE reason LIKE ?", ("%alert%",))[0] == 1
        s.close()
        r = device_replay(pki, "dev-c", tmp_path, broker.port, "08_no_plate.mp4", fast=True)
        assert r.returncode == 0, r.stderr
        assert path.read_bytes() == before  # the device's list is still the collector's
        close(spy)
    finally:
        col.stop()
