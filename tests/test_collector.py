"""The collector against real SQLite and PostgreSQL, and a real Mosquitto (issue: central collector)."""

import base64
import json
import random
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.collector.bench import jpeg_of_size, payload
from edge.collector.governance import AccessDenied, Governance, NeedsApproval, Policy
from edge.collector.ingest import Collector, Ingestor, Reject, fuzzy_key, validate
from edge.collector.query import Query, search
from edge.collector.store import Store
from edge.mqtt import MqttSettings
from edge.outbox import Outbox
from edge.runtime.publisher import Publisher

from .broker import Broker
from .conftest import api_client, collector_users, run_edge

IMG = base64.b64encode(jpeg_of_size(20_000)).decode()
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def good(i: int, when: datetime = NOW, text: str | None = None, lat=47.0, lon=15.0, camera="cam-1", site="north",
         device: str | None = None) -> bytes:
    d = json.loads(payload(i, IMG, when))
    if device:
        d["device"]["id"] = device
    if text:
        d["plate"]["text"] = text
        d["plate"]["char_confidences"] = [0.9] * len(text)
    d["gps"].update({"lat": lat, "lon": lon})
    d["camera"].update({"id": camera, "site": site})
    return json.dumps(d).encode()




def hostile(rng: random.Random) -> bytes:
    base = json.loads(good(0))
    kind = rng.randrange(12)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return b"[" * 5000 + b"]" * 5000
    if kind == 2:
        base["plate"]["text"] = "A" * 100000
    elif kind == 3:
        base["images"]["plate_jpeg"] = "!!!not base64!!!"
    elif kind == 4:
        base["images"]["plate_jpeg"] = base64.b64encode(b"\xff\xd8" + bytes(500)).decode()  # JPEG magic, not a JPEG
    elif kind == 5:
        base["schema"] = rng.choice(["lpr.read/2", "lpr.read/0", None, 1, ""])
    elif kind == 6:
        del base[rng.choice(["read_id", "time", "plate", "camera", "device", "gps", "track"])]
    elif kind == 7:
        base["plate"]["confidence"] = rng.choice(["high", None, [], {}, 7.5])
    elif kind == 8:
        base["time"] = rng.choice(["yesterday", 12345, "2026-11-27T10:00:00"])
    elif kind == 9:
        return b'"just a string"'
    elif kind == 10:
        base["gps"]["lat"] = 1e308
    else:
        return json.dumps(base).encode()[: rng.randrange(1, 300)]
    return json.dumps(base).encode()


def test_fuzzed_payloads_mixed_with_valid_ones(store):
    ing = Ingestor(store)
    rng = random.Random(1)
    msgs, valid = [], 0
    n = 10000 if store.engine == "sqlite" else 3000
    for i in range(n):
        if rng.random() < 0.3:
            msgs.append((f"lpr/v1/dev-{i % 8}/reads", good(i)))
            valid += 1
        else:
            msgs.append((f"lpr/v1/dev-{i % 8}/reads", hostile(rng)))
    tot_stored = tot_rej = 0
    for i in range(0, len(msgs), 250):
        r = ing.ingest(msgs[i : i + 250])
        tot_stored += r.stored
        tot_rej += r.rejected
    assert tot_stored == valid and tot_rej == n - valid
    assert store.one("SELECT COUNT(*) FROM reads")[0] == valid
    assert store.one("SELECT COUNT(*) FROM rejects")[0] == n - valid
    assert store.one("SELECT COUNT(*) FROM rejects WHERE reason IS NULL OR reason = ''")[0] == 0
    assert max(len(bytes(p)) for (p,) in store.query("SELECT payload FROM rejects")) <= 4096
    h = ing.health()
    assert h["received"] == n and h["stored"] == valid and h["rejected"] == n - valid


def test_reasons_name_the_problem():
    with pytest.raises(Reject, match="not JSON"):
        validate(b"{nope")
    with pytest.raises(Reject, match="wrong schema version"):
        validate(json.dumps({**json.loads(good(1)), "schema": "lpr.read/9"}).encode())
    with pytest.raises(Reject, match="oversized"):
        validate(b" " * (600 * 1024))
    with pytest.raises(Reject, match="nested too deeply"):
        validate(b"[" * 100 + b"]" * 100)
    with pytest.raises(Reject, match="invalid field plate"):
        validate(json.dumps({**json.loads(good(1)), "plate": {}}).encode())
    with pytest.raises(Reject, match="does not match the topic"):
        validate(good(1), "lpr/v1/dev-2/reads")  # good(1) comes from dev-1
    validate(good(1), "lpr/v1/dev-1/reads")
    d = json.loads(good(1))
    d["camera"]["site"] = "north\u0000gate"
    with pytest.raises(Reject, match="control characters"):
        validate(json.dumps(d).encode())
    # a small JPEG whose header claims 30000 x 30000 pixels is refused before decoding
    raw = bytearray(base64.b64decode(IMG))
    i = 2
    while raw[i + 1] not in (0xC0, 0xC2):
        i += 2 + int.from_bytes(raw[i + 2 : i + 4], "big")
    raw[i + 5 : i + 9] = (30000).to_bytes(2, "big") + (30000).to_bytes(2, "big")
    d = json.loads(good(1))
    d["images"]["plate_jpeg"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(Reject, match="larger than"):
        validate(json.dumps(d).encode())


def test_redelivery_is_stored_once_and_images_by_hash(store):
    ing = Ingestor(store)
    msgs = [("t", good(i)) for i in range(20)]
    ing.ingest(msgs)
    r = ing.ingest(msgs)  # every read delivered twice
    assert r.stored == 0 and r.duplicate == 20
    assert store.one("SELECT COUNT(*) FROM reads")[0] == 20
    assert store.one("SELECT COUNT(*) FROM images")[0] == 1  # one image content, stored once


def test_cameras_are_kept_at_ingest_not_scanned_from_the_reads(store, tmp_path):
    ing = Ingestor(store)
    moving = json.loads(good(9, camera="car-7", lat=48.5, lon=16.5))
    moving["camera"]["mounting"] = "vehicle"
    ing.ingest([("t", good(0, NOW - timedelta(hours=2), lat=47.0, lon=15.0)), ("t", good(1, NOW, lat=47.1, lon=15.1)),
                ("t", good(2, NOW - timedelta(hours=1), lat=46.0, lon=14.0)),  # older than the newest: not where it is
                ("t", good(3, camera="cam-2", site="south", lat=None, lon=None)),  # no fix: not placed
                ("t", json.dumps(moving).encode())])  # a patrol car's camera: its position is where it last read
    assert store.query("SELECT camera_id, site, lat, lon FROM cameras") == [("cam-1", "north", 47.1, 15.1)]
    ing.ingest([("t", good(4, NOW - timedelta(days=1), lat=45.0, lon=13.0))])  # a late, older read moves nothing
    assert store.one("SELECT lat, lon FROM cameras WHERE camera_id = 'cam-1'") == (47.1, 15.1)
    if store.engine == "sqlite":  # a store from before the table is filled once when it is opened
        path = tmp_path / "old.db"
        old = Store(f"sqlite:///{path}")
        Ingestor(old).ingest([("t", good(5, lat=40.0, lon=10.0)), ("t", json.dumps(moving).encode())])
        old.execute("DELETE FROM cameras")
        old.execute("DELETE FROM counters WHERE name = 'schema_cameras'")
        old.close()
        again = Store(f"sqlite:///{path}")
        assert again.query("SELECT camera_id, lat, lon FROM cameras") == [("cam-1", 40.0, 10.0)]
        again.close()


def setup_gov(store, now=NOW):
    clock = [now.timestamp()]
    # the search rules; acknowledging the use policy has its own tests (tests/test_exposure.py)
    head = Path(tempfile.mkdtemp(prefix="edge-audit-")) / "audit.head"  # as a deployment keeps it, outside the database
    gov = Governance(store, Policy(retention_days=30, require_ack=False, audit_head_file=head), clock=lambda: clock[0])
    gov.add_user("root", "alice", "investigator")
    gov.add_user("root", "sam", "supervisor")
    gov.add_user("root", "tom", "supervisor")
    gov.add_user("root", "val", "viewer")
    gov.add_user("root", "adm", "admin")
    gov.open_case("sam", "CASE-1", "stolen car")
    return gov, clock


def test_query_rules_and_movement_history_needs_a_second_person(store):
    ing = Ingestor(store, clock=lambda: NOW.timestamp())
    ing.ingest([("t", good(1, NOW - timedelta(hours=2), "AB12CDE", camera="cam-1", site="north")),
                ("t", good(2, NOW - timedelta(days=3), "AB12CDE", lat=48.2, lon=16.4, camera="cam-2", site="east")),
                ("t", good(3, NOW - timedelta(hours=1), "XY99ZZZ")),
                ("t", good(4, NOW - timedelta(hours=1), "A812CDE"))])
    gov, _ = setup_gov(store)
    with pytest.raises(AccessDenied, match="justification"):
        search(gov, "alice", None, Query(plate="AB12CDE"))
    with pytest.raises(AccessDenied, match="does not exist"):
        search(gov, "alice", "CASE-404", Query(plate="AB12CDE"))
    with pytest.raises(AccessDenied, match="viewer"):
        search(gov, "val", "CASE-1", Query(plate="AB12CDE"))
    with pytest.raises(AccessDenied, match="admin"):
        search(gov, "adm", "CASE-1", Query(camera="cam-1"))
    # a short window is not a movement history
    day = Query(plate="AB12CDE", since_ms=int((NOW - timedelta(hours=12)).timestamp() * 1000))
    rows = search(gov, "alice", "CASE-1", day)
    assert [r["plate"]["text"] for r in rows] == ["AB12CDE"] and rows[0]["images"]["plate_jpeg"]
    # 30 days of one plate: needs approval, recorded before it runs
    with pytest.raises(NeedsApproval) as e:
        search(gov, "alice", "CASE-1", Query(plate="AB12CDE"))
    req = e.value.request_id
    with pytest.raises(AccessDenied, match="not been granted"):
        search(gov, "alice", "CASE-1", Query(plate="AB12CDE"), approval=req)
    with pytest.raises(AccessDenied):
        gov.approve("alice", req)  # an investigator cannot approve
    gov.approve("sam", req)
    rows = search(gov, "alice", "CASE-1", Query(plate="AB12CDE"), approval=req)
    assert len(rows) == 2
    with pytest.raises(AccessDenied, match="already used"):
        search(gov, "alice", "CASE-1", Query(plate="AB12CDE"), approval=req)
    with pytest.raises(NeedsApproval) as e2:
        search(gov, "sam", "CASE-1", Query(plate="AB12CDE"))
    with pytest.raises(AccessDenied, match="second person"):
        gov.approve("sam", e2.value.request_id)
    # fuzzy, wildcard, location, camera, viewer without images
    f = search(gov, "alice", "CASE-1", Query(plate="AB12CDE", match="fuzzy", since_ms=day.since_ms))
    assert {r["plate"]["text"] for r in f} == {"AB12CDE", "A812CDE"}
    assert fuzzy_key("OI8S2") == fuzzy_key("01B52")
    w = search(gov, "alice", "CASE-1", Query(plate="XY99Z*", since_ms=day.since_ms))  # a wildcard names 5 characters
    assert [r["plate"]["text"] for r in w] == ["XY99ZZZ"]
    near = search(gov, "sam", "CASE-1", Query(near=(48.2, 16.4, 5)))  # 30 days of an area: counts only
    assert list(near) == [] and near.counts["cameras"] == {"cam-2": 1}
    box = search(gov, "sam", "CASE-1", Query(box=(46.5, 14.5, 47.5, 15.5), since_ms=day.since_ms))
    assert len(box) == 3
    v = search(gov, "val", "CASE-1", Query(camera="cam-1", since_ms=day.since_ms))
    assert v and all(r["images"] == {} and r["plate"] == {"withheld": True} for r in v)
    with pytest.raises(ValueError, match="5 years"):
        search(gov, "sam", "CASE-1", Query(camera="cam-1", since_ms=0))
    assert gov.verify_audit() == []
    actions = [a for (a,) in store.query("SELECT action FROM audit ORDER BY seq")]
    assert actions.count("approval.request") == 3 and "approval.grant" in actions and actions.count("query") == 6
    assert actions.count("query.counts") == 1 and actions.count("query.denied") == 6  # refusals are on the record too


def test_audit_tamper_is_detected(store, tmp_path):
    gov, _ = setup_gov(store)
    gov.p.audit_head_file = tmp_path / "head"
    for i in range(5):
        gov.audit("alice", "query", {"n": i})
    assert gov.verify_audit() == []
    store.execute("UPDATE audit SET detail = ? WHERE seq = 3", ('{"n":99}',))
    assert any("entry 3: content was changed" in p for p in gov.verify_audit())
    store.execute("DELETE FROM audit WHERE seq = 2")
    assert any("missing" in p for p in gov.verify_audit())


def test_audit_truncation_is_detected_with_the_head_file(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    gov = Governance(s, Policy(audit_head_file=tmp_path / "head"))
    for i in range(4):
        gov.audit("x", "query", {"i": i})
    s.execute("DELETE FROM audit WHERE seq = 4")
    assert any("removed" in p for p in gov.verify_audit())


def test_retention_with_an_injected_clock(store):
    ing = Ingestor(store)
    ing.ingest([("t", good(1, NOW - timedelta(days=40), "OLD1111")), ("t", good(2, NOW - timedelta(days=40), "CASE222")),
                ("t", good(3, NOW - timedelta(days=2), "NEW3333")), ("t", good(4, NOW - timedelta(days=6 * 365), "ANCIENT"))])
    gov, clock = setup_gov(store)
    case_read = store.one("SELECT read_id FROM reads WHERE plate = 'CASE222'")[0]
    ancient = store.one("SELECT read_id FROM reads WHERE plate = 'ANCIENT'")[0]
    gov.hold("alice", "CASE-1", [case_read, ancient])
    for age_days, sid in ((31, "old"), (1, "new")):  # the web app's sign-ins: who, when, from which browser
        t = int((NOW - timedelta(days=age_days)).timestamp() * 1000)
        store.execute("INSERT INTO web_sessions (id_hash, user_name, csrf, browser, created, seen) VALUES (?, 'alice', 'c', 'b', ?, ?)",
                      (sid, t, t))
    detail = gov.retention()
    assert detail["deleted_web_sessions"] == 1 and store.query("SELECT id_hash FROM web_sessions") == [("new",)]
    left = {p for (p,) in store.query("SELECT plate FROM reads")}
    assert left == {"CASE222", "NEW3333"}  # held for an open case stays, never beyond 5 years
    assert detail["deleted_reads"] == 2
    gov.close_case("sam", "CASE-1")
    clock[0] += 29 * 86400
    gov.retention()
    assert {p for (p,) in store.query("SELECT plate FROM reads")} == set()
    assert store.one("SELECT COUNT(*) FROM images")[0] == 0
    rows = store.query("SELECT detail FROM audit WHERE action = 'retention.delete' ORDER BY seq")
    assert [json.loads(d)["deleted_reads"] for (d,) in rows] == [2, 2]
    assert gov.verify_audit() == []


def test_cache_ttl_is_clamped():
    assert Policy(cache_ttl_hours=1).cache_ttl_hours == 4 and Policy(cache_ttl_hours=99).cache_ttl_hours == 24


def test_two_collectors_on_one_postgres_share_the_stream(postgres, tmp_path):
    b = Broker(tmp_path / "broker").start()
    s0 = Store(postgres.url)
    with s0.tx():
        for t in ("reads", "images", "rejects", "counters"):
            s0.execute(f"DELETE FROM {t}")
    cols = [Collector(Store(postgres.url), "127.0.0.1", b.port, client_id=f"col-{i}") for i in range(2)]
    for c in cols:
        c.start()
    ob = Outbox(tmp_path / "o.db")
    pub = Publisher(MqttSettings(port=b.port), "dev-x", ob)
    try:
        for c in cols:
            assert c.connected.wait(10)
        n = 400
        for i in range(n):
            ob.put(f"r{i}", pub.t["reads"], good(i, device="dev-x"))
        pub.start()
        assert pub.flush(60)
        end = time.monotonic() + 60
        while time.monotonic() < end and s0.one("SELECT COUNT(*) FROM reads")[0] < n:
            time.sleep(0.2)
        assert s0.one("SELECT COUNT(*) FROM reads")[0] == n
        per = [c.ing.health()["received"] for c in cols]
        counters = s0.counters()
        assert counters["stored"] == n and counters.get("duplicate", 0) == 0
        print(f"messages handled per collector: {per}")
    finally:
        pub.stop()
        for c in cols:
            c.stop()
        b.stop()


def test_collector_keeps_queue_while_down_persistent_session(tmp_path):
    b = Broker(tmp_path / "broker").start()
    db = tmp_path / "c.db"
    c = Collector(Store(f"sqlite:///{db}"), "127.0.0.1", b.port, client_id="persist-col")
    c.start()
    assert c.connected.wait(10)
    c.stop()  # collector goes away; its session stays on the broker
    ob = Outbox(tmp_path / "o.db")
    pub = Publisher(MqttSettings(port=b.port), "dev-y", ob)
    for i in range(30):
        ob.put(f"p{i}", pub.t["reads"], good(i, device="dev-y"))
    pub.start()
    try:
        assert pub.flush(20)
        c2 = Collector(Store(f"sqlite:///{db}"), "127.0.0.1", b.port, client_id="persist-col")
        c2.start()
        end = time.monotonic() + 20
        while time.monotonic() < end and sqlite3.connect(db).execute("SELECT COUNT(*) FROM reads").fetchone()[0] < 30:
            time.sleep(0.1)
        assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM reads").fetchone()[0] == 30
        c2.stop()
    finally:
        pub.stop()
        b.stop()


def test_http_api_needs_a_token_and_a_case(tmp_path):

    s = Store(f"sqlite:///{tmp_path / 'h.db'}")
    Ingestor(s).ingest([("t", good(1, datetime.now(UTC) - timedelta(hours=1), "HTTP123"))])
    gov = Governance(s)
    tok = gov.add_user("root", "alice", "investigator")
    gov.add_user("root", "sam", "supervisor")
    gov.open_case("sam", "C-9")
    with api_client(gov) as get:
        assert get("/v1/reads?plate=HTTP123&case=C-9")[0] == 401
        assert get("/v1/reads?plate=HTTP123&case=C-9", "wrong-token")[0] == 401
        assert get("/v1/reads?plate=HTTP123", tok)[0] == 403
        ack = f"&ack_policy={gov.use_policy()[1]}"
        assert get("/v1/reads?plate=HTTP123&case=C-9&days=0.5", tok)[0] == 403  # the use policy not acknowledged
        code, body = get("/v1/reads?plate=HTTP123&case=C-9&days=0.5" + ack, tok)
        assert code == 200 and body["count"] == 1 and body["reads"][0]["images"]["plate_jpeg"]
        code, body = get("/v1/reads?plate=HTTP123&case=C-9" + ack, tok)
        assert code == 403 and body["approval_request"].startswith("APR-")
        assert get("/v1/reads?plate=HTTP123&case=C-9&from=yesterday", tok)[0] == 400
        assert s.one("SELECT COUNT(*) FROM users WHERE token_hash = ?", (tok,))[0] == 0  # stored hashed, not plain


def test_cli_bootstrap_query_and_audit_verify(tmp_path):
    db = f"sqlite:///{tmp_path / 'cli.db'}"

    def token(r):
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().split()[-1]

    t = collector_users(db, sam="supervisor", ann="investigator")
    root, sam, ann = t["root"], t["sam"], t["ann"]
    assert run_edge("users", "add", "eve", "--role", "admin", "--bootstrap", "--db", db).returncode == 2  # two are made so
    r = run_edge("users", "add", "mallory", "--role", "admin", "--token", ann, "--db", db)
    assert r.returncode == 2 and "may not" in r.stderr  # only an admin adds users
    r = run_edge("users", "add", "x", "--role", "admin", "--db", db)
    assert r.returncode == 2 and "API token" in r.stderr  # a bare name is not an identity
    assert run_edge("cases", "open", "K-1", "--token", sam, "--db", db).returncode == 0
    Ingestor(Store(db)).ingest([("t", good(1, datetime.now(UTC) - timedelta(hours=3), "CLI1234"))])
    r = run_edge("query", "--ack-policy", "--token", ann, "--case", "K-1", "--plate", "CLI1234", "--days", "1", "--db", db)
    assert r.returncode == 0 and "CLI1234" in r.stdout
    r = run_edge("query", "--ack-policy", "--token", ann, "--case", "K-1", "--plate", "CLI1234", "--db", db)
    assert r.returncode == 3 and "approve" in r.stderr
    req = r.stderr.split("request ")[1].split()[0]
    r = run_edge("approve", req, "--token", ann, "--db", db)
    assert r.returncode == 2  # the investigator cannot approve their own query
    assert run_edge("approve", req, "--token", sam, "--db", db).returncode == 0
    out = tmp_path / "export.json"
    r = run_edge("query", "--ack-policy", "--token", ann, "--case", "K-1", "--plate", "CLI1234", "--approval", req, "--export", str(out), "--db", db)
    assert r.returncode == 0 and json.loads(out.read_text())[0]["plate"]["text"] == "CLI1234"
    r = run_edge("retention", "--token", sam, "--db", db)
    assert r.returncode == 2  # retention is an admin's job
    assert run_edge("retention", "--token", root, "--retention-days", "0", "--db", db).returncode == 2
    assert run_edge("retention", "--token", root, "--db", db).returncode == 0
    r = run_edge("audit", "verify", "--db", db)
    assert r.returncode == 0 and "intact" in r.stdout
    con = sqlite3.connect(tmp_path / "cli.db")
    con.execute("UPDATE audit SET actor = 'nobody' WHERE seq = 2")
    con.commit()
    r = run_edge("audit", "verify", "--db", db)
    assert r.returncode == 1 and "entry 2" in r.stderr
    r = run_edge("query", "--ack-policy", "--token", ann, "--plate", "X", "--db", "postgresql://nobody@127.0.0.1:1/x")
    assert r.returncode == 2 and "cannot connect" in r.stderr


def test_bench_collector_command(tmp_path):
    r = run_edge("bench-collector", "--db", f"sqlite:///{tmp_path / 'b.db'}", "--n", "200", "--batch", "50")
    assert r.returncode == 0 and "reads/s" in r.stdout


def test_a_days_window_is_exactly_that_long_not_a_history_query_by_a_few_ms():
    """`--days 1` / `days=1` ends the window when asked and pins that end, so the search's own
    later "now" cannot make it longer than a day (which would need a supervisor's approval)."""
    from edge.cli import build_parser
    from edge.collector.api import query_from_params
    from edge.collector.cli import _query_args
    from edge.collector.governance import DAY_MS

    q = query_from_params({"plate": "AB123", "days": "1"}, 1_000_000_000_000)
    assert q.until_ms == 1_000_000_000_000 and q.until_ms - q.since_ms == DAY_MS
    q = query_from_params({"plate": "AB123", "days": "1", "to": "2026-01-02T00:00:00Z"}, 1)
    assert q.until_ms - q.since_ms == DAY_MS
    q = _query_args(build_parser().parse_args(["query", "--token", "t", "--case", "K-1", "--plate", "AB123", "--days", "1"]))
    time.sleep(0.01)
    assert q.until_ms - q.since_ms == DAY_MS and q.until_ms <= int(time.time() * 1000)


def test_database_urls_are_parsed_strictly(tmp_path):
    from edge.collector.store import StoreError, parse_db_url, redact_db_url

    assert parse_db_url("sqlite:///out/c.db") == ("sqlite", "out/c.db")  # relative to the working folder
    assert parse_db_url("sqlite:////var/lib/edge-collector/reads.db") == ("sqlite", "/var/lib/edge-collector/reads.db")
    assert parse_db_url("postgresql://u:p@h/db") == ("postgresql", "postgresql://u:p@h/db")
    for bad in ("mysql://x/y", "reads.db", "sqlite://", "sqlite:reads.db", "sqlite:///"):
        with pytest.raises(StoreError):
            parse_db_url(bad)
    assert redact_db_url("postgresql://edge:s3cret@db.example.org/reads") == "postgresql://edge:***@db.example.org/reads"
    r = run_edge("users", "add", "root", "--role", "admin", "--bootstrap", "--db", "mysql://x/y", cwd=tmp_path)
    assert r.returncode == 2 and "unknown database kind 'mysql'" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not any(tmp_path.iterdir())  # no ./mysql: file
    db = tmp_path / "abs" / "reads.db"
    r = run_edge("users", "add", "root", "--role", "admin", "--bootstrap", "--db", f"sqlite:///{db}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert db.exists()  # the README's four-slash form is the absolute path


def test_operators_list_users_and_cases_revoke_tokens_and_see_rejects(tmp_path):
    """The admin's tools: users add refuses an existing name unless --rotate, users list and revoke
    (never the last admin), cases list, rejects list; each audited, each refused to the wrong role."""
    db = f"sqlite:///{tmp_path / 'ops.db'}"

    def token(r):
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().split()[-1]

    t = collector_users(db, ann="investigator", sam="supervisor")
    root, rita, ann, sam = t["root"], t["rita"], t["ann"], t["sam"]
    again = run_edge("users", "add", "ann", "--role", "admin", "--token", root, "--db", db)
    assert again.returncode == 2 and "exists (investigator)" in again.stderr and "--rotate" in again.stderr
    listed = run_edge("users", "list", "--token", root, "--db", db)
    assert listed.returncode == 0 and "ann" in listed.stdout and "investigator" in listed.stdout  # still as she was
    req = token(run_edge("users", "add", "ann", "--role", "investigator", "--rotate", "--token", root, "--db", db))
    assert run_edge("cases", "list", "--token", ann, "--db", db).returncode == 0  # asked for, not yet done
    new = run_edge("users", "confirm", req, "--token", rita, "--db", db)
    assert new.returncode == 0 and "rotated" in new.stderr
    ann2 = token(new)
    assert run_edge("cases", "list", "--token", ann, "--db", db).returncode == 2  # the old token is dead
    assert run_edge("cases", "open", "K-9", "--title", "stolen van", "--token", sam, "--db", db).returncode == 0
    cases = run_edge("cases", "list", "--token", ann2, "--db", db)
    assert cases.returncode == 0 and "K-9" in cases.stdout and "open" in cases.stdout and "stolen van" in cases.stdout
    assert run_edge("users", "list", "--token", ann2, "--db", db).returncode == 2  # admins only
    r = run_edge("users", "revoke", "ann", "--token", root, "--db", db)
    assert r.returncode == 0 and run_edge("cases", "list", "--token", ann2, "--db", db).returncode == 2
    assert "revoked" in run_edge("users", "list", "--token", root, "--db", db).stdout
    assert run_edge("users", "revoke", "rita", "--token", root, "--db", db).returncode == 0
    last = run_edge("users", "revoke", "root", "--token", root, "--db", db)
    assert last.returncode == 2 and "last admin" in last.stderr
    Ingestor(Store(db)).ingest([("lpr/v1/dev-1/reads", b'{"not": "a read"}'), ("lpr/v1/dev-1/reads", b"\xff\xfe")])
    rj = run_edge("rejects", "list", "--token", root, "--db", db)
    assert rj.returncode == 0 and len(rj.stdout.strip().splitlines()) == 2 and "lpr/v1/dev-1/reads" in rj.stdout
    some = run_edge("rejects", "list", "--reason", "JSON", "--token", root, "--db", db)
    assert some.returncode == 0 and len(some.stdout.strip().splitlines()) == 1, some.stdout
    assert run_edge("rejects", "list", "--token", sam, "--db", db).returncode == 2  # payloads hold reads: admins only
    trail = Store(db).query("SELECT action FROM audit ORDER BY seq")
    for action in ("user.add", "user.request", "user.confirm", "user.rotate", "user.list", "user.revoke", "case.list",
                   "rejects.list"):
        assert (action,) in trail, action
