"""Tampering caught: the audit head every command keeps without being told, and signed checkpoints at a
witness off the host that a rewrite of the whole database (chain and head recomputed) cannot match."""

import hashlib
import sqlite3

from .conftest import collector_users, run_edge


def users(db: str, env: dict | None = None) -> str:
    return collector_users(db, env)["root"]


def test_every_command_keeps_the_head_and_verify_catches_a_removed_last_entry(tmp_path):
    path = tmp_path / "c.db"
    db = f"sqlite:///{path}"
    root = users(db)
    for i in range(3):
        assert run_edge("users", "add", f"u{i}", "--role", "viewer", "--token", root, "--db", db).returncode == 0
    head = tmp_path / "c.db.audit-head"
    assert head.exists() and head.read_text().split()[0] == "5"  # no flag: the head is beside the database
    assert run_edge("audit", "verify", "--db", db).returncode == 0
    with sqlite3.connect(path) as c:
        c.execute("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)")
    r = run_edge("audit", "verify", "--db", db)
    assert r.returncode == 1 and "entries were removed" in r.stderr
    head.unlink()  # the head removed too: verify does not pass
    r = run_edge("audit", "verify", "--db", db)
    assert r.returncode == 1 and "head file" in r.stderr and "missing" in r.stderr


def test_a_whole_database_rewrite_is_caught_by_the_witness(tmp_path):
    import os

    keys = tmp_path / "keys"
    assert run_edge("audit", "keygen", "--out", str(keys)).returncode == 0
    assert oct((keys / "audit-signing.key").stat().st_mode & 0o777) == "0o600"
    witness = tmp_path / "witness" / "audit.checkpoints"  # another machine's share, in real life
    witness.parent.mkdir()
    env = {**os.environ, "EDGE_COLLECTOR_SIGNING_KEY": str(keys / "audit-signing.key"), "EDGE_COLLECTOR_WITNESS": str(witness)}
    path = tmp_path / "c.db"
    db = f"sqlite:///{path}"
    root = users(db, env)
    for i in range(45):
        assert run_edge("users", "add", f"u{i}", "--role", "viewer", "--token", root, "--db", db, env=env).returncode == 0
    assert len(witness.read_text().splitlines()) == 2  # every 20 entries
    ok = run_edge("audit", "verify", "--db", db, "--public-key", str(keys / "audit-signing.pub"), env=env)
    assert ok.returncode == 0 and "every checkpoint" in ok.stdout, ok.stderr
    # the attacker on the collector host: remove user u7's entry and recompute every hash after it, and the head
    with sqlite3.connect(path) as c:
        c.execute("DELETE FROM audit WHERE detail LIKE '%\"u7\"%'")
        rows = c.execute("SELECT seq, ts, actor, action, detail FROM audit ORDER BY seq").fetchall()
        c.execute("DELETE FROM audit")
        prev = "0" * 64
        for n, (_, ts, actor, action, detail) in enumerate(rows, 1):
            h = hashlib.sha256(f"{prev}|{n}|{ts}|{actor}|{action}|{detail}".encode()).hexdigest()
            c.execute("INSERT INTO audit (seq, ts, actor, action, detail, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (n, ts, actor, action, detail, prev, h))
            prev = h
    (tmp_path / "c.db.audit-head").write_text(f"{len(rows)} {prev}\n")
    assert run_edge("audit", "verify", "--db", db).returncode == 0  # the chain and its head alone cannot tell
    r = run_edge("audit", "verify", "--db", db, "--public-key", str(keys / "audit-signing.pub"), env=env)
    assert r.returncode == 1 and "rewritten" in r.stderr, r.stderr
    forged = tmp_path / "forged.pub"
    assert run_edge("audit", "keygen", "--out", str(tmp_path / "k2")).returncode == 0
    forged.write_bytes((tmp_path / "k2" / "audit-signing.pub").read_bytes())
    r = run_edge("audit", "verify", "--db", db, "--public-key", str(forged), env=env)
    assert r.returncode == 1 and "not a checkpoint signed by this key" in r.stderr
