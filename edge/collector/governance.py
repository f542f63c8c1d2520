"""Who may see what, and the record of who looked: roles, cases, approvals, audit, retention.

Roles (each includes nothing it does not list):
- viewer:       reads by camera/site/time, no plate search, no images
- investigator: plate searches with images, tied to an open case
- supervisor:   what an investigator may do, plus approving movement-history queries and managing cases
- admin:        users, retention, audit verification; no access to reads

Every query names a user and a case (the justification). A plate search over more than
`history_hours` (a movement history) runs only with a supervisor's approval recorded beforehand,
given by someone other than the requester, used once. The audit log is append-only and
hash-chained: each row's hash covers the previous row's hash, so `verify` finds any edited,
inserted or removed row (the head is also written to a file outside the database when configured).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.collector import partitions
from edge.collector.store import Store, dumps

ROLES = ("viewer", "investigator", "supervisor", "admin")
DAY_MS = 86_400_000
MAX_WINDOW_MS = 5 * 365 * DAY_MS + 2 * DAY_MS  # five years, leap days included
GENESIS = "0" * 64


class AccessDenied(Exception):
    pass


class NeedsApproval(Exception):
    def __init__(self, request_id: str, why: str = "this is a movement-history query"):
        super().__init__(f"{why}: a supervisor must approve request {request_id} first "
                         f"(edge approve {request_id} --token SUPERVISOR_TOKEN)")
        self.request_id = request_id


@dataclass
class Policy:
    retention_days: float = 30.0
    max_hold_days: float = 5 * 365
    cache_ttl_hours: float = 4.0  # clamped to 4..24
    history_hours: float = 24.0  # a plate seen over a longer time, in one search or several, is a movement history
    history_reads: int = 10  # or more reads of one plate than this, shown to one user
    approval_valid_hours: float = 24.0  # an approval is used once within this time of being granted
    approval_slack_ms: int = 60_000  # a re-run's window may be this much longer than the approved one (its clock moved)
    audit_head_file: Path | None = None  # the log's last entry, kept outside the database (edge.collector.cli: default_head)
    signing_key_file: Path | None = None  # Ed25519 key, held apart from the database: signs checkpoints of the chain
    witness_file: Path | None = None  # where signed checkpoints go, off the database host (an append-only file)
    checkpoint_every: int = 20  # entries between signed checkpoints
    use_policy_file: Path | None = None  # the deployment's use policy (EDGE_COLLECTOR_USE_POLICY); default USE_POLICY
    require_ack: bool = True  # every search acknowledges the use policy it was shown

    def __post_init__(self):
        self.cache_ttl_hours = min(24.0, max(4.0, self.cache_ttl_hours))


USE_POLICY = """Reads are location data about people who are mostly suspected of nothing. Search them only for the
open case you name, and only for what it needs: a vehicle already identified in it, a time and place
the case concerns. A vehicle's movements over time need a supervisor's approval, and every search,
its results and this acknowledgement are audited. Do not copy reads out of the system except as the
case requires (an export is audited as one). Misuse is a disciplinary and may be a criminal matter."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Governance:
    def __init__(self, store: Store, policy: Policy | None = None, clock: Callable[[], float] = time.time):
        from edge.collector.exposure import Exposure

        self.s = store
        self.p = policy or Policy()
        self.clock = clock
        self.exposure = Exposure(store, int(self.p.history_hours * 3_600_000), self.p.history_reads, ref=self.plate_ref)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def use_policy(self) -> tuple[str, str]:
        """The use policy every search carries, and its digest (what an acknowledgement names)."""
        text = Path(self.p.use_policy_file).read_text().strip() if self.p.use_policy_file else USE_POLICY
        return text, hashlib.sha256(text.encode()).hexdigest()[:12]

    # ------------------------------------------------------------ audit

    # ------------------------------------------------------------ plates in the record

    def _plate_key(self) -> bytes:
        """The key plate references are made with: EDGE_COLLECTOR_AUDIT_KEY (a file held apart from the
        database), else one kept in the database (then someone with the database can test guesses)."""
        if getattr(self, "_pk", None) is None:
            path = os.environ.get("EDGE_COLLECTOR_AUDIT_KEY")
            if path:
                self._pk = Path(path).read_bytes().strip()
            else:
                with self.s.tx(exclusive=True):
                    self.s.execute("CREATE TABLE IF NOT EXISTS collector_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    r = self.s.one("SELECT value FROM collector_keys WHERE name = 'plate-ref'")
                    if r is None:
                        self.s.execute("INSERT INTO collector_keys (name, value) VALUES ('plate-ref', ?)", (secrets.token_hex(32),))
                        r = self.s.one("SELECT value FROM collector_keys WHERE name = 'plate-ref'")
                self._pk = str(r[0]).encode()
        return self._pk

    def plate_ref(self, plate: str) -> str:
        """What the audit log says instead of a plate: a keyed hash. An auditor can still ask whether a
        given plate was searched (`edge audit plate TEXT`); the log itself lists none."""
        import hmac

        return "plate:" + hmac.new(self._plate_key(), plate.upper().encode(), hashlib.sha256).hexdigest()[:24]

    def redact(self, value):
        """A detail with every `plate` value replaced by its reference."""
        if isinstance(value, dict):
            return {k: (self.plate_ref(v) if k == "plate" and isinstance(v, str) and not v.startswith("plate:") else self.redact(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value

    def audit(self, actor: str, action: str, detail: dict) -> str:
        detail = self.redact(detail)
        with self.s.tx(exclusive=True):
            last = self.s.one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            seq, prev = (int(last[0]) + 1, last[1]) if last else (1, GENESIS)
            ts = self.now_ms()
            d = dumps(detail)
            h = hashlib.sha256(f"{prev}|{seq}|{ts}|{actor}|{action}|{d}".encode()).hexdigest()
            self.s.execute("INSERT INTO audit (seq, ts, actor, action, detail, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (seq, ts, actor, action, d, prev, h))
            if self.p.audit_head_file:  # inside the writers' lock, replaced atomically
                head = Path(self.p.audit_head_file)
                tmp = head.with_name(head.name + ".tmp")
                with open(tmp, "w") as f:
                    f.write(f"{seq} {h}\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, head)
            if self.p.signing_key_file and self.p.witness_file and seq % max(1, self.p.checkpoint_every) == 0:
                self._checkpoint(seq, h, ts)
        return h

    def _checkpoint(self, seq: int, h: str, ts: int) -> None:
        """Sign the chain's head and append it to the witness: a rewrite of the whole database on this
        host, chain and head recomputed, no longer matches what the witness holds."""
        import base64

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        assert self.p.signing_key_file is not None and self.p.witness_file is not None
        key = serialization.load_pem_private_key(Path(self.p.signing_key_file).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{self.p.signing_key_file}: not an Ed25519 key (edge audit keygen makes one)")
        sig = base64.b64encode(key.sign(f"{seq} {h} {ts}".encode())).decode()
        with open(self.p.witness_file, "a") as f:
            f.write(f"{seq} {h} {ts} {sig}\n")
            f.flush()
            os.fsync(f.fileno())

    def checkpoint_now(self) -> None:
        """A signed checkpoint of the current head (the collector makes one on start and every N entries)."""
        last = self.s.one("SELECT seq, hash, ts FROM audit ORDER BY seq DESC LIMIT 1")
        if last and self.p.signing_key_file and self.p.witness_file:
            self._checkpoint(int(last[0]), last[1], int(last[2]))

    def verify_audit(self) -> list[str]:
        """Problems found in the chain (empty when intact)."""
        problems = []
        prev, expect = GENESIS, 1
        for seq, ts, actor, action, detail, p, h in self.s.query(
                "SELECT seq, ts, actor, action, detail, prev, hash FROM audit ORDER BY seq"):
            seq = int(seq)
            if seq != expect:
                problems.append(f"entry {expect} is missing (next is {seq})")
            if p != prev:
                problems.append(f"entry {seq}: does not follow the entry before it")
            calc = hashlib.sha256(f"{p}|{seq}|{ts}|{actor}|{action}|{detail}".encode()).hexdigest()
            if calc != h:
                problems.append(f"entry {seq}: content was changed")
            prev, expect = h, seq + 1
        if not self.p.audit_head_file and expect > 1:
            problems.append("no audit head is configured (EDGE_COLLECTOR_AUDIT_HEAD; beside a SQLite database it is kept "
                            "by default): a removed last entry could not be told")
        elif self.p.audit_head_file and not Path(self.p.audit_head_file).exists() and expect > 1:
            problems.append(f"the head file {self.p.audit_head_file} is missing: the log's end cannot be checked")
        elif self.p.audit_head_file and Path(self.p.audit_head_file).exists():
            try:
                head_seq, head_hash = Path(self.p.audit_head_file).read_text().split()
                int(head_seq)
            except ValueError:
                return problems + [f"the head file {self.p.audit_head_file} is unreadable"]
            if int(head_seq) != expect - 1 or head_hash != prev:
                problems.append(f"the log ends at entry {expect - 1} but the recorded head is entry {head_seq}: entries were "
                                + ("removed" if int(head_seq) > expect - 1 else "added or changed outside the collector"))
        return problems

    def verify_witness(self, witness: Path, public_key: Path) -> list[str]:
        """The chain against the signed checkpoints a witness holds: each must be an entry of this chain."""
        import base64

        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            pub = serialization.load_pem_public_key(Path(public_key).read_bytes())
            lines = Path(witness).read_text().splitlines()
        except (OSError, ValueError) as e:
            return [f"cannot read the witness or its key: {e}"]
        if not isinstance(pub, Ed25519PublicKey):
            return [f"{public_key}: not an Ed25519 public key"]
        chain = {int(seq): h for seq, h in self.s.query("SELECT seq, hash FROM audit")}
        problems = []
        if not lines:
            problems.append(f"the witness {witness} holds no checkpoint")
        for n, line in enumerate(lines, 1):
            try:
                seq_s, h, ts, sig = line.split()
                pub.verify(base64.b64decode(sig), f"{seq_s} {h} {ts}".encode())
            except (ValueError, InvalidSignature):
                problems.append(f"witness line {n}: not a checkpoint signed by this key")
                continue
            if int(seq_s) not in chain:
                problems.append(f"checkpoint of entry {seq_s}: the log no longer has that entry: entries were removed")
            elif chain[int(seq_s)] != h:
                problems.append(f"checkpoint of entry {seq_s}: the log's entry differs from what was signed: the log was rewritten")
        return problems

    # ------------------------------------------------------------ users

    def add_user(self, actor: str, name: str, role: str, rotate: bool = False) -> str:
        """A new user with a new API token (returned once, stored hashed). An existing name is refused
        unless `rotate`: then that user gets a new token (the old one stops working) and this role."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        token = "lpr_" + secrets.token_urlsafe(24)  # a prefix: never starts with "-", easy to spot in a leak
        with self.s.tx():
            old = self.s.one("SELECT role FROM users WHERE name = ?", (name,))
            if old and not rotate:
                raise ValueError(f"user {name!r} exists ({old[0]}): --rotate gives them a new token (the old one stops "
                                 "working) and the role given")
            if old:
                self.s.execute("UPDATE users SET role = ?, token_hash = ? WHERE name = ?", (role, hash_token(token), name))
            else:
                self.s.execute("INSERT INTO users (name, role, token_hash, created) VALUES (?, ?, ?, ?)",
                               (name, role, hash_token(token), self.now_ms()))
        self.audit(actor, "user.rotate" if old else "user.add", {"name": name, "role": role, **({"was": old[0]} if old else {})})
        return token

    # Separation of duties: after the first two admins (--bootstrap, for two people), no account is made,
    # re-issued or given another role by one admin alone: one asks, a second admin confirms and receives
    # the token to hand over. So no single person, whatever they hold, can make themselves the
    # investigator and the supervisor a movement history needs.
    REQUEST_VALID_MS = DAY_MS

    LOGIN_FAIL_LIMIT, LOGIN_FAIL_WINDOW_MS = 10, 60_000  # failed logins from one source in a minute, then it waits

    def login_failed(self, source: str, detail: dict) -> None:
        """A wrong token: on the record (never the token itself), and counted for its source."""
        now = self.now_ms()
        self.s.execute("DELETE FROM login_failures WHERE ts < ?", (now - self.LOGIN_FAIL_WINDOW_MS,))
        self.s.execute("INSERT INTO login_failures (source, ts) VALUES (?, ?)", (source, now))
        self.audit("(unknown)", "login.failed", {"source": source, **detail})

    def login_blocked(self, source: str) -> bool:
        n = self.s.one("SELECT COUNT(*) FROM login_failures WHERE source = ? AND ts >= ?",
                       (source, self.now_ms() - self.LOGIN_FAIL_WINDOW_MS))[0]
        return int(n) >= self.LOGIN_FAIL_LIMIT

    def admins(self) -> int:
        return int(self.s.one("SELECT COUNT(*) FROM users WHERE role = 'admin' AND token_hash IS NOT NULL")[0])

    def request_user(self, actor: str, name: str, role: str, rotate: bool = False) -> str:
        self.require(actor, "admin")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        old = self.s.one("SELECT role FROM users WHERE name = ?", (name,))
        if old and not rotate:
            raise ValueError(f"user {name!r} exists ({old[0]}): --rotate gives them a new token (the old one stops working) "
                             "and the role given")
        if rotate and not old:
            raise ValueError(f"no user {name!r} to give a new token (leave out --rotate to add one)")
        rid = "USR-" + secrets.token_hex(4)
        self.s.execute("INSERT INTO user_requests (id, name, role, rotate, requested_by, created) VALUES (?, ?, ?, ?, ?, ?)",
                       (rid, name, role, int(rotate), actor, self.now_ms()))
        self.audit(actor, "user.request", {"id": rid, "name": name, "role": role, "rotate": rotate})
        return rid

    def confirm_user(self, actor: str, request_id: str) -> tuple[str, str, str, bool]:
        """A second admin confirms a request: (name, role, the new token, whether it replaced an old one)."""
        self.require(actor, "admin")
        with self.s.tx(exclusive=True):
            r = self.s.one("SELECT name, role, rotate, requested_by, created, confirmed_by FROM user_requests WHERE id = ?",
                           (request_id,))
            if not r:
                raise ValueError(f"no user request {request_id}")
            name, role, rotate, by, created, done = r
            if by == actor:
                raise AccessDenied("a second admin must confirm: the one who asked cannot confirm their own request")
            if done:
                raise ValueError(f"request {request_id} was already confirmed")
            if self.now_ms() - int(created) > self.REQUEST_VALID_MS:
                raise ValueError(f"request {request_id} has expired (a day after it was made)")
            if name == actor:
                raise AccessDenied("an admin does not confirm a change to their own account")
            self.s.execute("UPDATE user_requests SET confirmed_by = ?, confirmed = ? WHERE id = ?", (actor, self.now_ms(), request_id))
        token = self.add_user(f"{by}+{actor}", name, role, rotate=bool(rotate))
        self.audit(actor, "user.confirm", {"id": request_id, "name": name, "role": role, "requested_by": by})
        return name, role, token, bool(rotate)

    def made_by(self, name: str) -> set[str]:
        """Everyone who asked for or confirmed the making, re-issue or role change of `name`'s account:
        none of them may approve that user's history (they could have made the account for themselves)."""
        rows = self.s.query("SELECT requested_by, confirmed_by FROM user_requests WHERE name = ? AND confirmed_by IS NOT NULL",
                            (name,))
        return {who for r in rows for who in r}

    def users(self, actor: str) -> list[tuple[str, str, int, bool]]:
        """(name, role, created ms, has a working token) of every user; admins only."""
        self.require(actor, "admin")
        rows = self.s.query("SELECT name, role, created, token_hash FROM users ORDER BY name")
        self.audit(actor, "user.list", {"users": len(rows)})
        return [(r[0], r[1], int(r[2]), r[3] is not None) for r in rows]

    def revoke(self, actor: str, name: str) -> None:
        """The user's token stops working (the user and their audit trail stay); admins only, and never
        the last admin with a working token."""
        self.require(actor, "admin")
        with self.s.tx():
            r = self.s.one("SELECT role, token_hash FROM users WHERE name = ?", (name,))
            if not r:
                raise ValueError(f"unknown user {name!r}")
            if r[0] == "admin" and r[1] is not None:
                left = self.s.one("SELECT COUNT(*) FROM users WHERE role = 'admin' AND token_hash IS NOT NULL AND name <> ?",
                                  (name,))[0]
                if not left:
                    raise ValueError(f"{name!r} is the last admin with a working token: add another admin first")
            self.s.execute("UPDATE users SET token_hash = NULL WHERE name = ?", (name,))
        self.audit(actor, "user.revoke", {"name": name})

    def cases(self, actor: str) -> list[tuple[str, str, str, int, int | None, str]]:
        """(id, title, status, opened ms, closed ms, opened by) of every case; any user but a viewer."""
        self.require(actor, "investigator", "supervisor", "admin")
        rows = self.s.query("SELECT id, title, status, opened, closed, opened_by FROM cases ORDER BY opened")
        self.audit(actor, "case.list", {"cases": len(rows)})
        return [(r[0], r[1] or "", r[2], int(r[3]), int(r[4]) if r[4] is not None else None, r[5]) for r in rows]

    def rejects(self, actor: str, reason: str | None = None, limit: int = 50) -> list[tuple[int, int, str, str, int]]:
        """(id, received ms, topic, reason, payload bytes) of the newest rejected messages, those whose
        reason contains `reason` if given; admins only (a payload may hold a read). Payloads are not shown."""
        self.require(actor, "admin")
        sql = "SELECT id, received, topic, reason, payload FROM rejects"
        params: list = []
        if reason:
            sql += " WHERE reason LIKE ?"
            params.append(f"%{reason}%")
        rows = self.s.query(sql + " ORDER BY id DESC LIMIT ?", (*params, int(limit)))
        self.audit(actor, "rejects.list", {"reason": reason, "shown": len(rows)})
        return [(int(r[0]), int(r[1]), r[2] or "", r[3], len(r[4] or b"")) for r in rows]

    def role(self, name: str) -> str:
        r = self.s.one("SELECT role FROM users WHERE name = ?", (name,))
        if not r:
            raise AccessDenied(f"unknown user {name!r}")
        return r[0]

    def user_for_token(self, token: str) -> str | None:
        r = self.s.one("SELECT name FROM users WHERE token_hash = ?", (hash_token(token),))
        return r[0] if r else None

    def require(self, name: str, *roles: str) -> str:
        role = self.role(name)
        if role not in roles:
            raise AccessDenied(f"user {name!r} ({role}) may not do this (needs {' or '.join(roles)})")
        return role

    # ------------------------------------------------------------ cases

    def open_case(self, actor: str, case_id: str, title: str = "") -> None:
        self.require(actor, "supervisor")
        with self.s.tx():
            if self.s.one("SELECT id FROM cases WHERE id = ?", (case_id,)):
                raise ValueError(f"case {case_id} already exists")
            self.s.execute("INSERT INTO cases (id, title, status, opened, opened_by) VALUES (?, ?, 'open', ?, ?)",
                           (case_id, title, self.now_ms(), actor))
        self.audit(actor, "case.open", {"case": case_id, "title": title})

    def close_case(self, actor: str, case_id: str) -> None:
        self.require(actor, "supervisor")
        self.s.execute("UPDATE cases SET status = 'closed', closed = ? WHERE id = ?", (self.now_ms(), case_id))
        self.audit(actor, "case.close", {"case": case_id})

    def check_case(self, case_id: str | None) -> None:
        if not case_id:
            raise AccessDenied("every query needs a justification: --case CASE-ID of an open case")
        r = self.s.one("SELECT status FROM cases WHERE id = ?", (case_id,))
        if not r:
            raise AccessDenied(f"case {case_id!r} does not exist")
        if r[0] != "open":
            raise AccessDenied(f"case {case_id!r} is closed")

    def hold(self, actor: str, case_id: str, read_ids: list[str]) -> int:
        self.require(actor, "investigator", "supervisor")
        self.check_case(case_id)
        n = 0
        with self.s.tx():
            for rid in read_ids:
                if self.s.one("SELECT read_id FROM reads WHERE read_id = ?", (rid,)):
                    self.s.execute("INSERT INTO case_reads (case_id, read_id, held) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                                   (case_id, rid, self.now_ms()))
                    if self.s.partitioned:  # into reads_held: a day dropped by retention never takes it
                        self.s.execute("UPDATE reads SET held = true WHERE read_id = ? AND NOT held", (rid,))
                    n += 1
        self.audit(actor, "case.hold", {"case": case_id, "reads": read_ids})
        return n

    # ------------------------------------------------------------ approvals

    def request_approval(self, actor: str, case_id: str, query: dict) -> str:
        rid = "APR-" + secrets.token_hex(4)
        self.s.execute("INSERT INTO approvals (id, requester, case_id, query, created) VALUES (?, ?, ?, ?, ?)",
                       (rid, actor, case_id, dumps(query), self.now_ms()))
        self.audit(actor, "approval.request", {"id": rid, "case": case_id, "query": query})
        return rid

    def pending(self, actor: str) -> list[tuple[str, str, str, dict, int]]:
        """(id, requester, case, query, filed ms) of the approval requests no one has approved yet,
        oldest first: what a supervisor is asked to look at; audited."""
        self.require(actor, "supervisor")
        rows = self.s.query("SELECT id, requester, case_id, query, created FROM approvals WHERE approver IS NULL "
                            "AND id NOT IN (SELECT id FROM approval_denials) ORDER BY created")
        self.audit(actor, "approval.list", {"pending": len(rows)})
        return [(r[0], r[1], r[2], json.loads(r[3]), int(r[4])) for r in rows]

    def approve(self, actor: str, request_id: str) -> None:
        self.require(actor, "supervisor")
        r = self.s.one("SELECT requester, approver FROM approvals WHERE id = ?", (request_id,))
        if not r:
            raise ValueError(f"no approval request {request_id}")
        if r[0] == actor:
            raise AccessDenied("a second person must approve: the requester cannot approve their own query")
        if actor in self.made_by(r[0]):
            raise AccessDenied(f"{actor!r} made or re-issued {r[0]!r}'s account: a supervisor who did not may approve")
        if r[1]:
            raise ValueError(f"request {request_id} is already approved")
        if self.s.one("SELECT id FROM approval_denials WHERE id = ?", (request_id,)):
            raise ValueError(f"request {request_id} was denied")
        self.s.execute("UPDATE approvals SET approver = ?, approved = ? WHERE id = ?", (actor, self.now_ms(), request_id))
        self.audit(actor, "approval.grant", {"id": request_id, "requester": r[0]})

    def deny(self, actor: str, request_id: str, reason: str) -> None:
        """A supervisor other than the requester refuses a request, saying why; it cannot be approved after."""
        self.require(actor, "supervisor")
        if not reason.strip():
            raise ValueError("say why the request is denied")
        r = self.s.one("SELECT requester, approver FROM approvals WHERE id = ?", (request_id,))
        if not r:
            raise ValueError(f"no approval request {request_id}")
        if r[0] == actor:
            raise AccessDenied("a second person decides: the requester cannot deny their own request either")
        if r[1] or self.s.one("SELECT id FROM approval_denials WHERE id = ?", (request_id,)):
            raise ValueError(f"request {request_id} was already decided")
        self.s.execute("INSERT INTO approval_denials (id, denied_by, denied, reason) VALUES (?, ?, ?, ?)",
                       (request_id, actor, self.now_ms(), reason.strip()[:500]))
        self.audit(actor, "approval.deny", {"id": request_id, "requester": r[0], "reason": reason.strip()[:500]})

    def use_approval(self, actor: str, case_id: str, question: dict, approval: str | None) -> str | None:
        """Check a search against its approval (or file a request and refuse). An approval covers a
        question (plate, match kind, filters: edge.collector.query.binding), a case and a window
        length, for the requester, once, within approval_valid_hours of being granted."""
        if approval:
            r = self.s.one("SELECT requester, case_id, query, approver, approved, used FROM approvals WHERE id = ?", (approval,))
            if not r:
                raise AccessDenied(f"no approval {approval}")
            requester, case, q, approver, approved, used = r
            asked = json.loads(q)
            same = {k: v for k, v in asked.items() if k != "window_ms"} == {k: v for k, v in question.items() if k != "window_ms"}
            if requester != actor or case != case_id or not same:
                raise AccessDenied(f"approval {approval} was given for another user, case or question")
            if question.get("window_ms", 0) > int(asked.get("window_ms", 0)) + self.p.approval_slack_ms:
                raise AccessDenied(f"approval {approval} covers {int(asked.get('window_ms', 0)) / DAY_MS:g} day(s); this "
                                   f"search asks for {question['window_ms'] / DAY_MS:g}")
            if not approver:
                raise AccessDenied(f"approval {approval} has not been granted yet")
            if used:
                raise AccessDenied(f"approval {approval} was already used")
            if self.now_ms() - int(approved) > self.p.approval_valid_hours * 3_600_000:
                raise AccessDenied(f"approval {approval} has expired ({self.p.approval_valid_hours:g} h after it was granted)")
            with self.s.tx(exclusive=True):  # used once, even by two processes at the same moment
                n = self.s.execute("UPDATE approvals SET used = ? WHERE id = ? AND used IS NULL", (self.now_ms(), approval)).rowcount
            if n != 1:
                raise AccessDenied(f"approval {approval} was already used")
            return approval
        raise NeedsApproval(self.request_approval(actor, case_id, question))

    # ------------------------------------------------------------ retention

    def _retention_partitioned(self, held: str, cutoff: int, hard: int) -> tuple[list[str], list[str]]:
        """PostgreSQL: the same reads go as on SQLite, whole days dropped where a day is wholly past the
        cutoff. Inside the caller's transaction; the read ids gone, and the days dropped."""
        s = self.s
        days = s.days
        assert days is not None
        # a hold makes a read held at once (Governance.hold); here, defensively, any a hold missed
        s.execute(f"UPDATE reads SET held = true WHERE NOT held AND ts < ? AND read_id IN ({held})", (cutoff,))
        # held reads whose cases have closed: gone when past retention, else back among the live reads
        released = s.query(f"SELECT read_id, ts FROM reads_held WHERE read_id NOT IN ({held})")
        ids = [r for r, ts in released if int(ts) < cutoff]
        back = [(r, int(ts)) for r, ts in released if int(ts) >= cutoff]
        ids += [r for (r,) in s.query(f"SELECT read_id FROM reads_held WHERE ts < ? AND read_id IN ({held})", (hard,))]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            s.execute(f"DELETE FROM reads WHERE held AND read_id IN ({','.join('?' * len(chunk))})", chunk)
        if back:
            days.make({partitions.day_of(ts) for _, ts in back})  # a day dropped while they were held
            for i in range(0, len(back), 500):
                chunk = [r for r, _ in back[i : i + 500]]
                s.execute(f"UPDATE reads SET held = false WHERE held AND read_id IN ({','.join('?' * len(chunk))})", chunk)
        # whole days past the cutoff: dropped, with their keys
        dropped = []
        for d in days.before(cutoff):
            name = partitions.name_of(d)
            ids += [r for (r,) in s.query(f"SELECT read_id FROM {name}")]
            days.drop(d)
            dropped.append(name)
        # the day the cutoff falls in: its reads before the cutoff, one by one (an hour's worth when run hourly)
        ids += [r for (r,) in s.query("DELETE FROM reads_live WHERE ts < ? RETURNING read_id", (cutoff,))]
        # the keys of every read gone (a held read keeps its key)
        s.execute("DELETE FROM read_keys WHERE ts < ? AND read_id NOT IN (SELECT read_id FROM reads_held)", (cutoff,))
        return ids, dropped

    def retention(self, actor: str = "system") -> dict:
        """Delete reads past retention unless held by an open case (never beyond the hold limit)."""
        now = self.now_ms()
        cutoff = now - int(self.p.retention_days * DAY_MS)
        hard = now - int(self.p.max_hold_days * DAY_MS)
        self._plate_key()  # made (if need be) before the transaction below, which may name plates by reference
        if self.s.days is not None:
            self.s.days.maintain(now)  # the days ahead, made before the transaction below
        dropped_days: list[str] = []
        leftover = self.s.unlink_trash()  # what a retention killed after its commit left to unlink
        with self.s.tx():
            held = "SELECT cr.read_id FROM case_reads cr JOIN cases c ON c.id = cr.case_id WHERE c.status = 'open'"
            if self.s.partitioned:
                ids, dropped_days = self._retention_partitioned(held, cutoff, hard)
            else:
                old = self.s.query(f"SELECT read_id FROM reads WHERE (ts < ? AND read_id NOT IN ({held})) OR ts < ?", (cutoff, hard))
                ids = [r[0] for r in old]
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    self.s.execute(f"DELETE FROM reads WHERE read_id IN ({','.join('?' * len(chunk))})", chunk)
            in_cases = sorted(set(ids) & {r for (r,) in self.s.query("SELECT DISTINCT read_id FROM case_reads")})
            for i in range(0, len(in_cases), 500):
                chunk = in_cases[i : i + 500]
                self.s.execute(f"DELETE FROM case_reads WHERE read_id IN ({','.join('?' * len(chunk))})", chunk)
            # alerts past retention go too, unless their case is still open
            gone_alerts = self.s.execute("DELETE FROM alerts WHERE received < ? AND (case_id IS NULL OR case_id NOT IN "
                                         "(SELECT id FROM cases WHERE status = 'open'))", (cutoff,)).rowcount
            # an image whose newest read is past the cutoff is named only by reads past it: those left are held
            gone = self.s.query(
                "DELETE FROM images WHERE last_ts < ? "
                "AND hash NOT IN (SELECT plate_image FROM reads WHERE ts < ? AND plate_image IS NOT NULL) "
                "AND hash NOT IN (SELECT vehicle_image FROM reads WHERE ts < ? AND vehicle_image IS NOT NULL) "
                "AND hash NOT IN (SELECT plate_image FROM alerts WHERE plate_image IS NOT NULL) RETURNING file", (cutoff, cutoff, cutoff))
            gone_images = len(gone)
            files = [f for (f,) in gone if f is not None]
            for i in range(0, len(files), 500):  # unlinked after the commit (unlink_trash below)
                chunk = files[i : i + 500]
                self.s.execute("INSERT INTO image_trash (file) VALUES " + ", ".join(["(?)"] * len(chunk)) + " ON CONFLICT DO NOTHING", chunk)
            # hotlist entries ended (expired or removed) before the cutoff keep their record, not their plate
            ended = self.s.query("SELECT id, plate FROM hotlist WHERE plate NOT LIKE ? AND "
                                 "(expires < ? OR (removed IS NOT NULL AND removed < ?))", ("plate:%", cutoff, cutoff))
            for eid, plate in ended:
                self.s.execute("UPDATE hotlist SET plate = ? WHERE id = ?", (self.plate_ref(plate), eid))
            ttl = int(self.p.cache_ttl_hours * 3_600_000)
            # searches keep no results (a leftover cache table is emptied); a deleted read leaves the budgets too
            gone_cache = self.s.execute("DELETE FROM query_cache WHERE created < ? OR ?", (now - ttl, bool(ids))).rowcount
            self.exposure.forget_reads(ids)
            # what else held plates: rejected messages (payloads), and the questions of old approvals
            gone_rejects = self.s.execute("DELETE FROM rejects WHERE received < ?", (cutoff,)).rowcount
            # the web app's sign-ins (at most 8 hours each) made before the cutoff: who signed in, and from which browser
            gone_sessions = self.s.execute("DELETE FROM web_sessions WHERE created < ?", (cutoff,)).rowcount
            old_q = self.s.query("SELECT id, query FROM approvals WHERE created < ?", (cutoff,))
            redacted = 0
            for rid, q in old_q:
                new = dumps(self.redact(json.loads(q)))
                if new != q:
                    self.s.execute("UPDATE approvals SET query = ? WHERE id = ?", (new, rid))
                    redacted += 1
        detail = {"deleted_reads": len(ids), **({"dropped_days": dropped_days} if self.s.partitioned else {}),
                  "deleted_images": gone_images, **({"image_files": len(files)} if self.s.image_dir is not None else {}), "deleted_alerts": gone_alerts,
                  "hotlist_plates_redacted": len(ended), "expired_cache": gone_cache,
                  "deleted_rejects": gone_rejects, "deleted_web_sessions": gone_sessions, "approvals_redacted": redacted,
                  "cutoff_ms": cutoff, "retention_days": self.p.retention_days}
        self.audit(actor, "retention.delete", detail)
        if self.s.image_dir is not None:  # the files of the images deleted, once the deletes and their audit are in
            detail["image_files_unlinked"] = leftover + self.s.unlink_trash()
            detail["image_files_swept"] = self.s.sweep_images(now)
        if self.s.engine == "sqlite":  # nor left in the write-ahead log
            self.s.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return detail
