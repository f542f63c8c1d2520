"""No single person, whatever credentials they hold, obtains a movement history alone: every path tried
with one admin's token, then with one supervisor's, then with one investigator's."""

from datetime import UTC, datetime, timedelta

from edge.collector.ingest import Ingestor
from edge.collector.store import Store

from .conftest import collector_users, run_edge
from .test_collector import good


def test_one_admin_alone_cannot_make_the_people_a_history_needs(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    t = collector_users(db, sam="supervisor", ann="investigator")
    root = t["root"]
    run = lambda *a: run_edge(*a, "--db", db)  # noqa: E731
    assert run("cases", "open", "K-1", "--token", t["sam"]).returncode == 0
    Ingestor(Store(db)).ingest([("t", good(1, datetime.now(UTC) - timedelta(days=d, hours=1), "SOLO123")) for d in (1, 5, 9)])
    # root asks for an investigator, a supervisor's new token and a second admin: all wait for another admin
    asks = [run("users", "add", "eve", "--role", "investigator", "--token", root),
            run("users", "add", "sam", "--role", "supervisor", "--rotate", "--token", root),
            run("users", "add", "puppet", "--role", "admin", "--token", root)]
    assert all(a.returncode == 0 and a.stdout.strip().startswith("USR-") for a in asks)
    for a in asks:
        r = run("users", "confirm", a.stdout.strip(), "--token", root)
        assert r.returncode == 2 and "second admin" in r.stderr and "lpr_" not in r.stdout
    assert run("cases", "list", "--token", t["sam"]).returncode == 0  # sam's token still works: nothing was re-issued
    r = run("users", "add", "third", "--role", "admin", "--bootstrap")
    assert r.returncode == 2 and "first two admins" in r.stderr  # bootstrap is closed
    r = run("query", "--ack-policy", "--token", root, "--case", "K-1", "--plate", "SOLO123")
    assert r.returncode == 2 and "may not search" in r.stderr  # an admin searches nothing
    ann = run("query", "--ack-policy", "--token", t["ann"], "--case", "K-1", "--plate", "SOLO123")
    assert ann.returncode == 3
    req = ann.stderr.split("request ")[1].split()[0]
    r = run("approve", req, "--token", root)
    assert r.returncode == 2 and "supervisor" in r.stderr  # nor approves
    users = run("users", "list", "--token", root).stdout
    assert "eve" not in users and "puppet" not in users


def test_one_supervisor_or_one_investigator_alone_gets_no_history(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    t = collector_users(db, sam="supervisor", ann="investigator")
    run = lambda *a: run_edge(*a, "--db", db)  # noqa: E731
    assert run("cases", "open", "K-1", "--token", t["sam"]).returncode == 0
    Ingestor(Store(db)).ingest([("t", good(1, datetime.now(UTC) - timedelta(days=d, hours=1), "SOLO123")) for d in (1, 5, 9)])
    own = run("query", "--ack-policy", "--token", t["sam"], "--case", "K-1", "--plate", "SOLO123")
    assert own.returncode == 3
    req = own.stderr.split("request ")[1].split()[0]
    r = run("approve", req, "--token", t["sam"])
    assert r.returncode == 2 and "second person" in r.stderr
    ann = run("query", "--ack-policy", "--token", t["ann"], "--case", "K-1", "--plate", "SOLO123")
    req = ann.stderr.split("request ")[1].split()[0]
    assert run("approve", req, "--token", t["ann"]).returncode == 2  # an investigator approves nothing
    r = run("query", "--ack-policy", "--token", t["ann"], "--case", "K-1", "--plate", "SOLO123", "--approval", req)
    assert r.returncode == 2 and "not been granted" in r.stderr
    for k in range(1, 12):  # and slicing it a day at a time gives one day of it
        since = (datetime.now(UTC) - timedelta(days=k)).isoformat()
        until = (datetime.now(UTC) - timedelta(days=k - 1)).isoformat()
        run("query", "--ack-policy", "--token", t["ann"], "--case", "K-1", "--plate", "SOLO123", "--from", since, "--to", until)
    trail = Store(db).query("SELECT detail FROM audit WHERE actor = 'ann' AND action = 'query'")
    shown = sum('"results":1' in d for (d,) in trail)
    assert shown == 1, trail


def test_a_wrong_token_on_the_command_line_is_on_the_record(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    t = collector_users(db)
    r = run_edge("users", "list", "--token", "lpr_guessed", "--db", db)
    assert r.returncode == 2 and "unknown API token" in r.stderr
    trail = Store(db).query("SELECT actor, detail FROM audit WHERE action = 'login.failed'")
    assert len(trail) == 1 and trail[0][0] == "(unknown)" and "lpr_guessed" not in trail[0][1] and '"cli:' in trail[0][1]
    for _ in range(9):  # guessing on: after 10 failures in a minute even the right token waits
        run_edge("users", "list", "--token", "lpr_guessed", "--db", db)
    r = run_edge("users", "list", "--token", t["root"], "--db", db)
    assert r.returncode == 2 and "too many failed logins" in r.stderr


def test_revoking_the_other_admin_does_not_reopen_the_bootstrap(tmp_path):
    """root revokes rita, then tries to bootstrap a puppet admin to confirm its own requests with: refused."""
    db = f"sqlite:///{tmp_path / 'c.db'}"
    t = collector_users(db)
    assert run_edge("users", "revoke", "rita", "--token", t["root"], "--db", db).returncode == 0
    r = run_edge("users", "add", "puppet", "--role", "admin", "--bootstrap", "--db", db)
    assert r.returncode == 2 and "first two admins" in r.stderr and "lpr_" not in r.stdout
    req = run_edge("users", "add", "eve", "--role", "investigator", "--token", t["root"], "--db", db).stdout.strip()
    assert run_edge("users", "confirm", req, "--token", t["root"], "--db", db).returncode == 2


def test_whoever_made_an_investigators_account_does_not_approve_their_history(tmp_path):
    """root asks for investigator ivy (perhaps for himself) and is later made a supervisor: he may not
    approve ivy's request; a supervisor who had no hand in ivy's account may."""
    db = f"sqlite:///{tmp_path / 'c.db'}"
    t = collector_users(db, ivy="investigator", ada="admin", sam="supervisor")
    run = lambda *a: run_edge(*a, "--db", db)  # noqa: E731
    req = run("users", "add", "root", "--role", "supervisor", "--rotate", "--token", t["rita"]).stdout.split()[-1]
    ok = run("users", "confirm", req, "--token", t["ada"])
    assert ok.returncode == 0, ok.stderr
    root = ok.stdout.split()[-1]
    assert run("cases", "open", "K-1", "--token", t["sam"]).returncode == 0
    Ingestor(Store(db)).ingest([("t", good(1, datetime.now(UTC) - timedelta(days=d, hours=1), "LINE123")) for d in (1, 5, 9)])
    ask = run("query", "--ack-policy", "--token", t["ivy"], "--case", "K-1", "--plate", "LINE123")
    assert ask.returncode == 3
    rid = ask.stderr.split("request ")[1].split()[0]
    r = run("approve", rid, "--token", root)
    assert r.returncode == 2 and "made or re-issued 'ivy'" in r.stderr
    assert run("approve", rid, "--token", t["sam"]).returncode == 0
    r = run("query", "--ack-policy", "--token", t["ivy"], "--case", "K-1", "--plate", "LINE123", "--approval", rid)
    assert r.returncode == 0 and r.stdout.count("LINE123") == 3, r.stdout + r.stderr
