"""Retention that leaves nothing: a future-dated read goes on time, rejects and old approvals lose their
plates, the audit log names plates only by keyed reference, and the database file holds no byte of a
deleted read."""

import base64
import json
from datetime import timedelta

from edge.collector.governance import Governance, Policy
from edge.collector.ingest import Ingestor
from edge.collector.query import Query, search
from edge.collector.store import Store

from .test_collector import IMG, NOW, good


def test_after_retention_the_database_holds_nothing_of_a_deleted_read(tmp_path):
    path = tmp_path / "c.db"
    store = Store(f"sqlite:///{path}")
    clock = [NOW.timestamp()]
    ing = Ingestor(store, clock=lambda: clock[0])
    future = json.loads(good(1, NOW, "QQ77RRR"))
    future["time"] = "2099-01-01T00:00:00Z"  # a device whose clock is wrong
    ing.ingest([("lpr/v1/dev-1/reads", json.dumps(future).encode()),
                ("lpr/v1/dev-2/reads", good(2, NOW - timedelta(hours=1), "KEEP123")),
                ("lpr/v1/dev-9/reads", b'{"plate": {"text": "QQ77RRR"}, "truncated')])  # a reject that carries the plate
    gov = Governance(store, Policy(retention_days=30, require_ack=False), clock=lambda: clock[0])
    gov.add_user("root", "alice", "investigator")
    gov.add_user("root", "sam", "supervisor")
    gov.open_case("sam", "C-1")
    got = search(gov, "alice", "C-1", Query(plate="QQ77RRR", since_ms=int((NOW - timedelta(hours=12)).timestamp() * 1000),
                                            until_ms=int((NOW + timedelta(hours=1)).timestamp() * 1000)))
    assert [r["plate"]["text"] for r in got] == ["QQ77RRR"]  # held at its receive time, so found as now
    trail = " ".join(d for (d,) in store.query("SELECT detail FROM audit"))
    assert "QQ77RRR" not in trail and gov.plate_ref("QQ77RRR") in trail  # the log names it by reference only
    clock[0] += 31 * 86400  # a month later, the 2099 read is due like any other
    done = gov.retention("root")
    assert done["deleted_reads"] == 2 and done["deleted_rejects"] == 1
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("c.db"))
    assert b"QQ77RRR" not in raw and b"KEEP123" not in raw
    image = base64.b64decode(IMG)
    assert image[200:264] not in raw  # nor the plate crop's bytes


def test_an_auditor_asks_whether_a_plate_was_searched(tmp_path):
    from .conftest import collector_users, run_edge

    db = f"sqlite:///{tmp_path / 'c.db'}"
    t = collector_users(db, sam="supervisor", ann="investigator")
    root, sam, ann = t["root"], t["sam"], t["ann"]
    assert run_edge("cases", "open", "K-1", "--token", sam, "--db", db).returncode == 0
    assert run_edge("query", "--ack-policy", "--token", ann, "--case", "K-1", "--plate", "AB12CDE", "--days", "1", "--db", db).returncode == 0
    assert run_edge("query", "--ack-policy", "--token", ann, "--case", "K-1", "--plate", "AB12CDE", "--db", db).returncode == 3
    r = run_edge("audit", "plate", "AB12CDE", "--token", root, "--db", db)
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 2, r.stdout  # the search, and the request the refusal filed
    assert "ann" in r.stdout and "query" in r.stdout
    assert run_edge("audit", "plate", "AB12CDE", "--token", ann, "--db", db).returncode == 2  # not an investigator's question
    assert run_edge("audit", "plate", "ZZ99ZZZ", "--token", root, "--db", db).stdout.strip() == ""
    assert b"AB12CDE" not in b"".join(r[0].encode() for r in Store(db).query("SELECT detail FROM audit"))
