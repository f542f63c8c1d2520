"""Movement histories through the real collector: `edge collect --http` against a TLS Mosquitto,
reads published by a device over MQTT, searched over HTTP, on SQLite and on PostgreSQL. Each test is
one of the attacks that once got through (slicing, other doors, relative windows, one person alone,
an unanswered request, failed logins without a trace), tried as an investigator, a viewer or an
admin would try it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ..broker import collector_broker, free_port, wait_port
from ..conftest import ROOT, collector_users, run_edge
from ..test_collector import good

PLATE = "HIST123"
SEEN_DAYS_AGO = (2, 11, 25)


class Site:
    """A collector deployment on loopback: CA, broker, `edge collect --http`, users and a case."""

    def __init__(self, tmp, db: str):
        self.tmp, self.db = tmp, db
        self.env = {**os.environ, "EDGE_COLLECTOR_AUDIT_HEAD": str(tmp / "audit.head")}
        ca = tmp / "ca"
        for args in (("ca",), ("server", "localhost", "--san", "127.0.0.1"), ("client", "collector"),
                     ("device", "dev-a", "--owner", "Agency", "--broker", "127.0.0.1:8883")):
            out = () if args[0] == "ca" else ("--out", str(tmp / args[1]))
            r = run_edge("provision", *args, "--ca-dir", str(ca), *out)
            assert r.returncode == 0, r.stderr
        self.broker = collector_broker(tmp / "broker", ca, tmp / "localhost")
        self.tokens = collector_users(db, env=self.env, ann="investigator", sam="supervisor", tom="supervisor",
                                      val="viewer")
        assert self.cli("cases", "open", "K-1", "--token", self.tokens["sam"]).returncode == 0
        self.http = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "collect", "--db", db, "--mqtt", f"127.0.0.1:{self.broker.collector_port}",
             "--cafile", str(ca / "ca.crt"), "--certfile", str(tmp / "collector" / "collector.crt"),
             "--keyfile", str(tmp / "collector" / "collector.key"), "--http", f"127.0.0.1:{self.http}",
             "--health-interval", "1"], cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert wait_port(self.http, 30), self.proc.stdout.read() if self.proc.poll() is not None else "no HTTP port"
        self.digest = self.get("/v1/policy", self.tokens["ann"])[1]["digest"]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_edge(*args, "--db", self.db, env=self.env)

    def get(self, path: str, token: str | None, **params) -> tuple[int, dict]:
        url = f"http://127.0.0.1:{self.http}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def reads(self, token: str, **params) -> tuple[int, dict]:
        return self.get("/v1/reads", token, case="K-1", ack_policy=self.digest, **params)

    def publish(self, payloads: list[bytes]) -> None:
        """As device dev-a, with its certificate, on its own topic; then wait until all are stored."""
        dev = self.tmp / "dev-a"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-a", protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(dev / "ca.crt"), certfile=str(dev / "device.crt"), keyfile=str(dev / "device.key"))
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        try:
            for p in payloads:
                c.publish("lpr/v1/dev-a/reads", p, qos=1).wait_for_publish(10)
        finally:
            c.disconnect()
            c.loop_stop()
        end = time.monotonic() + 30
        while self.get("/v1/health", self.tokens["sam"])[1].get("stored", 0) < len(payloads):
            assert time.monotonic() < end, "the collector did not store what dev-a published"
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.broker.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request, tmp_path):
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'c.db'}"
    else:
        db = request.getfixturevalue("postgres").database("k" + os.urandom(4).hex())
    s = Site(tmp_path, db)
    now = datetime.now(UTC)
    msgs = []
    for i, k in enumerate(SEEN_DAYS_AGO):  # one car seen 3 times in a month at cam-1, another beside it each time
        t = now - timedelta(days=k, hours=3)
        msgs += [good(10 + i, t, PLATE, camera="cam-1", site="north", device="dev-a"),
                 good(20 + i, t, f"ZZ{i}9XYZ", camera="cam-1", site="north", device="dev-a")]
    s.publish(msgs)
    yield s
    s.close()


def day(k: int) -> dict:
    now = datetime.now(UTC)
    return {"from": (now - timedelta(days=k + 1)).isoformat(), "to": (now - timedelta(days=k)).isoformat()}


def texts(body: dict) -> list[str]:
    return [r["plate"]["text"] for r in body.get("reads", []) if r.get("plate", {}).get("text")]


def test_slicing_a_month_into_one_day_searches_shows_one_day(site):
    ann = site.tokens["ann"]
    shown, asked = 0, set()
    for k in range(31):
        code, body = site.reads(ann, plate=PLATE, **day(k))
        if code == 200:
            shown += texts(body).count(PLATE)
        else:
            assert code == 403 and body["approval_request"].startswith("APR-"), body
            asked.add(body["approval_request"])
    assert shown == 1 and len(asked) == 2  # the first day it appears; the other two need a supervisor


def test_camera_site_and_wildcard_doors_give_no_history(site):
    ann, val = site.tokens["ann"], site.tokens["val"]
    code, body = site.reads(ann, camera="cam-1", days=1800)
    assert code == 200 and body["reads"] == [] and body["counts"], body  # a long camera search: counts only
    assert PLATE not in json.dumps(body)
    code, body = site.reads(val, site="north", days=1800)
    assert PLATE not in json.dumps(body) and "ZZ09XYZ" not in json.dumps(body)  # a viewer: never plate texts
    code, body = site.reads(val, site="north", days=1)
    assert all("text" not in r.get("plate", {}) and not r.get("images") for r in body.get("reads", [])), body
    for pattern in ("*", "H*", "HI?1*"):
        code, body = site.reads(ann, plate=pattern, match="wildcard", days=1)
        assert code in (400, 403) and PLATE not in json.dumps(body), (pattern, code, body)
    shown = 0
    for k in range(31):  # a day at a time at the camera: the plate's budget still holds
        code, body = site.reads(ann, camera="cam-1", **day(k))
        shown += texts(body).count(PLATE)
    assert shown == 1


def test_an_approval_for_30_days_works_when_the_search_is_run_again_later(site):
    ann, sam = site.tokens["ann"], site.tokens["sam"]
    code, body = site.reads(ann, plate=PLATE, days=30)
    assert code == 403
    rid = body["approval_request"]
    r = site.cli("approve", rid, "--token", ann)
    assert r.returncode == 2  # an investigator approves nothing
    code, body = site.reads(ann, plate=PLATE, days=30, approval=rid)
    assert code == 403 and "not been granted" in body["error"]
    assert site.cli("approve", rid, "--token", sam).returncode == 0
    time.sleep(1.5)  # "now" has moved on: the window's end is not what was approved
    code, body = site.reads(site.tokens["tom"], plate=PLATE, days=30, approval=rid)
    assert code == 403  # another user cannot use ann's approval
    code, body = site.reads(ann, plate=PLATE, days=90, approval=rid)
    assert code == 403 and "covers 30 day" in body["error"]  # nor stretch it
    code, body = site.reads(ann, plate=PLATE, days=30, approval=rid)
    assert code == 200 and texts(body).count(PLATE) == 3, body
    code, body = site.reads(ann, plate=PLATE, days=30, approval=rid)
    assert code == 403 and "already used" in body["error"]  # once


def test_one_admin_or_one_supervisor_alone_reads_no_history(site):
    root, sam = site.tokens["root"], site.tokens["sam"]
    code, body = site.reads(root, plate=PLATE, days=30)
    assert code == 403 and "may not search" in body["error"]
    code, body = site.reads(sam, plate=PLATE, days=30)
    assert code == 403
    r = site.cli("approve", body["approval_request"], "--token", sam)
    assert r.returncode == 2 and "second person" in r.stderr
    r = site.cli("approve", body["approval_request"], "--token", root)
    assert r.returncode == 2
    req = site.cli("users", "add", "sam", "--role", "supervisor", "--rotate", "--token", root)
    r = site.cli("users", "confirm", req.stdout.split()[-1], "--token", root)
    assert r.returncode == 2 and "second admin" in r.stderr
    assert site.reads(sam, plate=PLATE, days=1)[0] == 200  # sam's token was not re-issued


def test_bad_requests_get_an_answer_naming_the_parameter(site):
    ann = site.tokens["ann"]
    for params, name in (({"days": "inf"}, "days"), ({"days": "nan"}, "days"), ({"near": "1,2,inf"}, "near"),
                         ({"from": "yesterday"}, "from"), ({"limit": "0"}, "limit"), ({"box": "1,2,3"}, "box")):
        code, body = site.reads(ann, plate=PLATE, **params)
        assert code == 400 and name in body["error"], (params, code, body)
    code, body = site.get("/v1/reads", ann, plate=PLATE, days=1, case="K-1")
    assert code == 403 and "polic" in body["error"]  # the use policy must be acknowledged


def test_failed_logins_are_on_the_record_and_limited(site):
    for _ in range(10):
        assert site.reads("lpr_guessed", plate=PLATE)[0] == 401
    code, body = site.reads(site.tokens["ann"], plate=PLATE, days=1)
    assert code == 429  # that address now waits, even with a good token
    r = site.cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr  # the collector's own entries kept the configured head
    assert "lpr_guessed" not in json.dumps(_audit(site))
    assert sum(a == "login.failed" for a, _ in _audit(site)) == 10


def test_every_search_over_http_is_in_a_verifiable_log_that_catches_truncation(site):
    ann = site.tokens["ann"]
    site.reads(ann, plate=PLATE, days=1)
    assert site.cli("audit", "verify").returncode == 0
    from edge.collector.store import Store

    s = Store(site.db)
    last = s.one("SELECT MAX(seq) FROM audit")[0]
    s.execute("DELETE FROM audit WHERE seq = ?", (last,))
    s.close()
    r = site.cli("audit", "verify")
    assert r.returncode == 1 and "remov" in (r.stdout + r.stderr), r.stdout + r.stderr
    assert PLATE not in json.dumps(_audit(site))  # the log names plates only by reference


def _audit(site) -> list[tuple[str, str]]:
    from edge.collector.store import Store

    s = Store(site.db)
    try:
        return [(a, d) for a, d in s.query("SELECT action, detail FROM audit ORDER BY seq")]
    finally:
        s.close()
