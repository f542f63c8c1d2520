"""Collector commands: collect, query, approve, audit verify, users, cases, retention, bench-collector."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from edge.collector import SESSION_EXPIRY_S

DEFAULT_DB = os.environ.get("EDGE_COLLECTOR_DB", "sqlite:///out/collector.db")
DEFAULT_IMAGES = os.environ.get("EDGE_COLLECTOR_IMAGES") or None


class CollectorUserError(Exception):
    pass


def _gov(args):
    from edge.collector.governance import Governance, Policy
    from edge.collector.store import Store, StoreError

    try:
        store = Store(args.db, images=getattr(args, "images", None))
    except StoreError as e:
        raise CollectorUserError(str(e)) from None
    head = getattr(args, "audit_head", None) or os.environ.get("EDGE_COLLECTOR_AUDIT_HEAD") or default_head(args.db)
    key, witness = os.environ.get("EDGE_COLLECTOR_SIGNING_KEY"), os.environ.get("EDGE_COLLECTOR_WITNESS")
    use = os.environ.get("EDGE_COLLECTOR_USE_POLICY")
    pol = Policy(use_policy_file=Path(use) if use else None, retention_days=getattr(args, "retention_days", 30.0), cache_ttl_hours=getattr(args, "cache_hours", 4.0),
                 audit_head_file=Path(head) if head else None, signing_key_file=Path(key) if key else None,
                 witness_file=Path(witness) if witness else None)
    return Governance(store, pol)


def default_head(db_url: str) -> str | None:
    """Every command keeps the audit log's head outside the database without being told: beside a
    SQLite file (`reads.db.audit-head`); for PostgreSQL, EDGE_COLLECTOR_AUDIT_HEAD names it."""
    from edge.collector.store import StoreError, parse_db_url

    try:
        kind, path = parse_db_url(db_url)
    except StoreError:
        return None
    return f"{path}.audit-head" if kind == "sqlite" else None


def _actor(gov, args) -> str:
    """Who is asking: the user whose API token is given (--token or EDGE_TOKEN), never a bare name."""
    token = getattr(args, "token", None) or os.environ.get("EDGE_TOKEN")
    tf = getattr(args, "token_file", None)
    if tf and not token:
        try:
            token = Path(tf).read_text().strip()
        except OSError as e:
            raise CollectorUserError(f"--token-file: cannot read {tf}: {e.strerror}") from None
    if not token:
        raise CollectorUserError("this needs your API token: --token-file FILE, EDGE_TOKEN or --token TOKEN "
                                 "(printed once by `edge users add`)")
    import getpass

    source = f"cli:{getpass.getuser()}"
    if gov.login_blocked(source):
        raise CollectorUserError(f"too many failed logins from {source}: wait a minute")
    user = gov.user_for_token(token)
    if not user:  # on the record (the token itself is not), as the HTTP API's failures are
        gov.login_failed(source, {"command": args.cmd})
        raise CollectorUserError("unknown API token")
    return user


def _hostport(v: str, what: str) -> tuple[str, int]:
    host, _, port = v.rpartition(":")
    if not host or not port.isdigit():
        raise CollectorUserError(f"{what} expects HOST:PORT, got {v!r}")
    return host, int(port)


def cmd_collect(args) -> int:
    import logging
    import signal
    import threading

    from edge.collector.ingest import Collector
    from edge.collector.store import redact_db_url

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gov = _gov(args)
    gov.checkpoint_now()  # a signed checkpoint of where the log stands when the collector starts
    host, port = _hostport(args.mqtt, "--mqtt")
    tls = None
    if args.cafile or args.certfile:
        for flag, f in (("--cafile", args.cafile), ("--certfile", args.certfile), ("--keyfile", args.keyfile)):
            if f and not Path(f).is_file():
                print(f"edge collect: error: {flag} {f}: no such file", file=sys.stderr)
                return 2
        tls = {"ca_certs": args.cafile, "certfile": args.certfile, "keyfile": args.keyfile}
    if not 0 <= args.session_expiry <= 30 * 86400:
        print(f"edge collect: error: --session-expiry {args.session_expiry}: expected 0 to {30 * 86400} seconds", file=sys.stderr)
        return 2
    from edge.collector.hotlist import Alerts, Distributor, Fanout, Hotlists, load_signing_key

    signing_file = args.hotlist_key or os.environ.get("EDGE_COLLECTOR_HOTLIST_KEY")
    secret_file = args.alert_webhook_secret or os.environ.get("EDGE_COLLECTOR_WEBHOOK_SECRET")
    try:
        signing = load_signing_key(Path(signing_file)) if signing_file else None
        secret = Path(secret_file).read_bytes().strip() if secret_file else None
    except ValueError as e:
        print(f"edge collect: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"edge collect: error: --alert-webhook-secret {secret_file}: {e.strerror}", file=sys.stderr)
        return 2
    if args.alert_webhook and not secret:
        print("edge collect: error: --alert-webhook needs --alert-webhook-secret FILE (EDGE_COLLECTOR_WEBHOOK_SECRET): "
              "its receiver checks each call's signature", file=sys.stderr)
        return 2
    alerts = Alerts(gov)
    dist: Distributor | None = None
    col = Collector(gov.s, host, port, group=args.group, client_id=args.client_id, tls=tls,
                    session_expiry_s=args.session_expiry, alerts=alerts,
                    on_status=(lambda t, p: dist.status(t, p) if dist else None) if signing else None)
    if args.alert_webhook or args.alert_topic:
        alerts.fanout = Fanout(alerts.get, webhook=args.alert_webhook, secret=secret, mqtt_topic=args.alert_topic,
                               mqtt_publish=lambda t, p, r: col.client.publish(t, p, qos=1, retain=r),
                               counter=lambda name: gov.s.bump(name))
    if signing:
        dist = Distributor(Hotlists(gov), signing, lambda t, p, r: col.client.publish(t, p, qos=1, retain=r))
    srv = None
    if args.http:  # every port bound before the broker hears of us: a busy port leaves no session behind
        try:
            from edge.collector.api import make_server
            from edge.collector.web.app import create_app  # noqa: F401  (the web app's packages are there)
        except ImportError as e:
            print(f"edge collect: error: --http needs the collector's web packages ({e.name} is missing): "
                  "pip install 'edge-lpr[collector]'", file=sys.stderr)
            return 2
        h, p = _hostport(args.http, "--http")
        try:
            if bool(args.http_cert) != bool(args.http_key):
                print("edge collect: error: --http-cert and --http-key go together", file=sys.stderr)
                return 2
            for flag, f in (("--http-cert", args.http_cert), ("--http-key", args.http_key)):
                if f and not Path(f).is_file():
                    print(f"edge collect: error: {flag} {f}: no such file", file=sys.stderr)
                    return 2
            srv = make_server(gov, h, p, health=col.ing.health, tiles=args.tiles, certfile=args.http_cert, keyfile=args.http_key)
        except OSError as e:
            print(f"edge collect: error: cannot serve --http {args.http}: {e.strerror or e}", file=sys.stderr)
            return 2
    try:
        col.start()
    except (OSError, ValueError) as e:
        if srv:
            srv.server_close()
        print(f"edge collect: error: cannot reach broker {args.mqtt}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 4
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    if srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    if dist:
        def distribute() -> None:
            while not stop.wait(0.25):
                try:
                    dist.tick()
                except Exception as e:  # the store or the broker away for a moment: the next tick tries again
                    logging.getLogger("edge.collector").warning("hotlist distribution: %s", e)
                    gov.s.recover()

        threading.Thread(target=distribute, name="hotlist", daemon=True).start()
    else:
        print("hotlists: not distributed (no --hotlist-key); alerts from devices are still taken", flush=True)
    print(f"collecting from {args.mqtt} ($share/{args.group}) into {redact_db_url(args.db)}", flush=True)
    last_ret = time.monotonic()
    while not stop.wait(args.health_interval):
        print("health " + json.dumps(col.ing.health()), flush=True)
        if time.monotonic() - last_ret > 3600:
            gov.retention()
            last_ret = time.monotonic()
    col.stop()
    if srv:
        srv.shutdown()
    print("health " + json.dumps(col.ing.health()), flush=True)
    return 0


def _query_args(args):
    from edge.collector.api import floats, parse_time
    from edge.collector.governance import DAY_MS
    from edge.collector.query import Query

    if not 1 <= args.limit <= 5000:
        raise CollectorUserError(f"--limit: expected 1 to 5000 reads, got {args.limit}")
    q = Query(plate=args.plate, match=args.match, camera=args.camera, site=args.site, limit=args.limit)
    try:
        if args.near:
            lat, lon, km = floats(args.near, 3, "--near")
            q.near = (lat, lon, km)
        if args.box:
            a, b, c, d = floats(args.box, 4, "--box")
            q.box = (a, b, c, d)
        if args.since:
            q.since_ms = parse_time(args.since, "--from")
        if args.until:
            q.until_ms = parse_time(args.until, "--to")
        if args.days is not None:
            # the window ends now unless --to says otherwise, pinned here: ending it at the search's own
            # "now" a few ms later would make a 1-day window longer than a day (a history query)
            if q.until_ms is None:
                q.until_ms = int(time.time() * 1000)
            q.since_ms = q.until_ms - int(args.days * DAY_MS)
    except ValueError as e:
        raise CollectorUserError(str(e)) from None
    return q


def cmd_query(args) -> int:
    from edge.collector.governance import AccessDenied, NeedsApproval
    from edge.collector.query import search

    gov = _gov(args)
    try:
        query, actor = _query_args(args), _actor(gov, args)  # a mistake in the flags is the one line it prints
        text, digest = gov.use_policy()
        if args.ack_policy:
            print(f"use policy ({digest}):\n{text}\n", file=sys.stderr)  # every search shows it (a refusal below, too)
        rows = search(gov, actor, args.case, query, args.approval, export=bool(args.export), ack=digest if args.ack_policy else None)
    except NeedsApproval as e:
        print(f"edge query: approval needed: {e}", file=sys.stderr)
        return 3
    except (AccessDenied, ValueError) as e:
        print(f"edge query: error: {e}", file=sys.stderr)
        return 2
    if args.export:
        Path(args.export).write_text(json.dumps(rows, indent=1))
        print(f"exported {len(rows)} read(s) to {args.export}")
        return 0
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            img = "image" if r.get("images", {}).get("plate_jpeg") else "-"
            print(f"{r['time']}  {r['plate'].get('text', '(withheld)'):<10} {r['camera']['id']:<12} {r['camera'].get('site') or '-':<20} "
                  f"{r['gps'].get('lat', '-')},{r['gps'].get('lon', '-')}  {r['track']['direction']:<8} {img}  {r['read_id']}")
    if rows.counts is not None:
        print(json.dumps({"counts": rows.counts}) if args.json else
              f"{rows.counts['reads']} read(s): " + ", ".join(f"{c} {n}" for c, n in rows.counts["cameras"].items()))
    if rows.note:
        print(f"edge query: {rows.note}", file=sys.stderr)
    print(f"{len(rows)} read(s)" + (f", {rows.withheld} left out" if rows.withheld else ""), file=sys.stderr)
    return 0


def cmd_approve(args) -> int:
    from edge.collector.governance import AccessDenied

    gov = _gov(args)
    try:
        gov.approve(_actor(gov, args), args.request)
    except (AccessDenied, ValueError) as e:
        print(f"edge approve: error: {e}", file=sys.stderr)
        return 2
    print(f"approved {args.request}")
    return 0


def cmd_approvals(args) -> int:
    """The requests waiting for a supervisor: `--ids` prints their ids alone (one per line)."""
    from edge.collector.governance import AccessDenied

    gov = _gov(args)
    try:
        rows = gov.pending(_actor(gov, args))
    except AccessDenied as e:
        raise CollectorUserError(str(e)) from None
    for rid, requester, case, query, filed in rows:
        if args.ids:
            print(rid)
        else:
            asked = ", ".join(f"{k} {v}" for k, v in query.items() if v not in (None, "", [], 500) and k != "limit")
            print(f"{rid}  filed {_ms(filed)} by {requester:<12} case {case:<12} {asked}")
    if not args.ids:
        print(f"{len(rows)} request(s) waiting", file=sys.stderr)
    return 0


def cmd_audit_verify(args) -> int:
    gov = _gov(args)
    problems = gov.verify_audit()
    witness = args.witness or os.environ.get("EDGE_COLLECTOR_WITNESS")
    if witness:
        if not args.public_key:
            raise CollectorUserError("--witness needs --public-key FILE (edge audit keygen wrote it)")
        problems += gov.verify_witness(Path(witness), Path(args.public_key))
    n = gov.s.one("SELECT COUNT(*) FROM audit")[0]
    if problems:
        for p in problems:
            print(f"audit: {p}", file=sys.stderr)
        return 1
    print(f"audit log intact: {n} entries" + (f", every checkpoint in {witness} matches" if witness else ""))
    return 0


def cmd_audit_plate(args) -> int:
    """Was this plate searched, by whom, when: the audit log names plates only by keyed reference."""
    from edge.collector.governance import AccessDenied

    gov = _gov(args)
    try:
        actor = _actor(gov, args)
        gov.require(actor, "admin", "supervisor")
    except AccessDenied as e:
        raise CollectorUserError(str(e)) from None
    ref = gov.plate_ref(args.plate.upper().replace(" ", "").replace("-", ""))
    rows = gov.s.query("SELECT seq, ts, actor, action FROM audit WHERE detail LIKE ? ORDER BY seq", (f"%{ref}%",))
    gov.audit(actor, "audit.plate", {"plate": args.plate.upper(), "entries": len(rows)})
    for seq, ts, who, action in rows:
        print(f"{seq:>6}  {_ms(int(ts))}  {who:<14} {action}")
    print(f"{len(rows)} audit entr{'y' if len(rows) == 1 else 'ies'} name {args.plate.upper()} (as {ref})", file=sys.stderr)
    return 0


def cmd_audit_keygen(args) -> int:
    """An Ed25519 signing key for the audit checkpoints (keep it apart from the database) and its
    public key (give it to whoever verifies)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(args.out)
    key, pub = out / "audit-signing.key", out / "audit-signing.pub"
    if key.exists() or pub.exists():
        raise CollectorUserError(f"{key} or {pub} already exists (refusing to overwrite it)")
    out.mkdir(parents=True, exist_ok=True)
    k = Ed25519PrivateKey.generate()
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    print(f"signing key {key} (0600; EDGE_COLLECTOR_SIGNING_KEY), public key {pub}")
    return 0


def cmd_users_add(args) -> int:
    """--bootstrap: one of the first two admins, token on stdout. Otherwise a request a second admin
    confirms (`edge users confirm`): its id on stdout."""
    from edge.collector.governance import AccessDenied

    gov = _gov(args)
    try:
        if args.bootstrap:
            # admins ever made, revoked ones too: revoking the other admin must not reopen the bootstrap
            if gov.s.one("SELECT COUNT(*) FROM users WHERE role = 'admin'")[0] >= 2:
                raise AccessDenied("--bootstrap only makes the first two admins; now one admin asks "
                                   "(edge users add) and another confirms (edge users confirm)")
            if args.role != "admin":
                raise AccessDenied("a bootstrap user is an admin")
            if gov.s.one("SELECT 1 FROM users WHERE name = ?", (args.name,)):
                raise ValueError(f"user {args.name!r} exists")
            token = gov.add_user(args.name, args.name, "admin")
            print(f"admin {args.name} ({gov.admins()} of the first two); their API token follows (shown once, stored hashed)",
                  file=sys.stderr)
            print(token)
            return 0
        actor = _actor(gov, args)
        rid = gov.request_user(actor, args.name, args.role, rotate=args.rotate)
    except (AccessDenied, ValueError) as e:
        print(f"edge users: error: {e}", file=sys.stderr)
        return 2
    what = "a new token for" if args.rotate else "user"
    print(f"request {rid}: {what} {args.name} ({args.role}); a second admin confirms it: edge users confirm {rid} "
          "(and receives the token to hand over)", file=sys.stderr)
    print(rid)
    return 0


def cmd_users_confirm(args) -> int:
    from edge.collector.governance import AccessDenied

    gov = _gov(args)
    try:
        name, role, token, rotated = gov.confirm_user(_actor(gov, args), args.request)
    except (AccessDenied, ValueError) as e:
        raise CollectorUserError(str(e)) from None
    note = " (rotated: the old token no longer works)" if rotated else ""
    # the token alone on stdout, so a script can keep it: TOKEN=$(edge users confirm ...)
    print(f"user {name} ({role}){note}; their API token follows (shown once, stored hashed): hand it to them", file=sys.stderr)
    print(token)
    return 0


def _ms(v: int | None) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(v / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if v is not None else "-"


def cmd_users_list(args) -> int:
    from edge.collector.governance import AccessDenied

    gov = _gov(args)
    try:
        rows = gov.users(_actor(gov, args))
    except AccessDenied as e:
        raise CollectorUserError(str(e)) from None
    for name, role, created, active in rows:
        print(f"{name:<20} {role:<13} since {_ms(created)}  {'token ok' if active else 'revoked'}")
    return 0


def cmd_users_revoke(args) -> int:
    from edge.collector.governance import AccessDenied

    gov = _gov(args)
    try:
        gov.revoke(_actor(gov, args), args.name)
    except (AccessDenied, ValueError) as e:
        raise CollectorUserError(str(e)) from None
    print(f"user {args.name}: token revoked (edge users add {args.name} --rotate gives a new one)")
    return 0


def cmd_rejects(args) -> int:
    from edge.collector.governance import AccessDenied

    if not 1 <= args.limit <= 5000:
        raise CollectorUserError(f"--limit: expected 1 to 5000, got {args.limit}")
    gov = _gov(args)
    try:
        rows = gov.rejects(_actor(gov, args), args.reason, args.limit)
    except AccessDenied as e:
        raise CollectorUserError(str(e)) from None
    for rid, received, topic, reason, size in rows:
        print(f"{rid:>6}  {_ms(received)}  {topic or '-':<32} {size:>7} B  {reason}")
    print(f"{len(rows)} reject(s)", file=sys.stderr)
    return 0


def cmd_cases(args) -> int:
    from edge.collector.governance import AccessDenied

    gov = _gov(args)
    actor = _actor(gov, args)
    if args.action != "list" and not args.case:
        raise CollectorUserError(f"cases {args.action} needs a CASE id")
    try:
        if args.action == "list":
            for cid, title, status, opened, closed, by in gov.cases(actor):
                print(f"{cid:<16} {status:<7} opened {_ms(opened)} by {by:<12} closed {_ms(closed)}  {title}")
            return 0
        if args.action == "open":
            gov.open_case(actor, args.case, args.title or "")
        elif args.action == "close":
            gov.close_case(actor, args.case)
        else:
            n = gov.hold(actor, args.case, args.reads)
            print(f"{n} read(s) held for case {args.case}")
            return 0
    except (AccessDenied, ValueError) as e:
        print(f"edge cases: error: {e}", file=sys.stderr)
        return 2
    print(f"case {args.case}: {args.action}")
    return 0


def cmd_retention(args) -> int:
    from edge.collector.governance import AccessDenied

    if args.retention_days <= 0:
        raise CollectorUserError(f"--retention-days must be more than 0, got {args.retention_days}")
    gov = _gov(args)
    actor = _actor(gov, args)
    try:
        gov.require(actor, "admin")
    except AccessDenied as e:
        print(f"edge retention: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(gov.retention(actor)))
    return 0


def cmd_bench_collector(args) -> int:
    if args.simulate:
        from edge.collector.simulate import simulate
        from edge.collector.store import StoreError

        try:
            inst = tuple(int(k) for k in args.instances.split(",") if k.strip()) if args.instances else ()
        except ValueError:
            raise CollectorUserError(f"--instances {args.instances!r}: numbers separated by commas, e.g. 1,2,4") from None
        if args.reads < 1000 or args.days < 2:
            raise CollectorUserError("--simulate needs --reads of 1000 or more and --days of 2 or more")
        try:
            res = simulate(args.db, args.reads, days=args.days, instances=inst, per_instance=args.per_instance,
                           queries=args.queries, keep=args.keep, reuse=args.reuse, images=args.images)
        except (RuntimeError, StoreError) as e:
            print(f"edge bench-collector: error: {e}", file=sys.stderr)
            return 2
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        return 0
    from edge.collector.bench import run

    gov = _gov(args)
    run(gov.s, n=args.n, batch=args.batch)
    return 0


def _hotlists(args):
    from edge.collector.hotlist import Hotlists

    gov = _gov(args)
    return gov, Hotlists(gov, default_days=float(os.environ.get("EDGE_COLLECTOR_HOTLIST_DAYS", 30)),
                         max_days=float(os.environ.get("EDGE_COLLECTOR_HOTLIST_MAX_DAYS", 90)))


def cmd_hotlist(args) -> int:
    """edge hotlist add|approve|list|remove|import: entries proposed by one person, approved by another."""
    from edge.collector.api import parse_time
    from edge.collector.governance import AccessDenied

    gov, hl = _hotlists(args)
    actor = _actor(gov, args)
    try:
        if args.action == "add":
            until = parse_time(args.until, "--until") if args.until else None
            eid = hl.propose(actor, args.case or "", args.plate, args.reason or "", region=args.region, site=args.site,
                             lookalike=not args.exact, days=args.days, until_ms=until)
            print(f"proposed {eid}; a supervisor who did not propose it approves it: edge hotlist approve {eid}", file=sys.stderr)
            print(eid)
        elif args.action == "import":
            try:
                text = Path(args.file).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise CollectorUserError(f"cannot read {args.file}: {getattr(e, 'strerror', None) or e}") from None
            batch, ids = hl.import_csv(actor, args.case or "", text, lookalike=not args.exact)
            print(f"imported {len(ids)} entries as {batch}; a supervisor approves them all: edge hotlist approve {batch}",
                  file=sys.stderr)
            print(batch)
        elif args.action == "approve":
            ids = hl.approve(actor, args.ref)
            print(f"approved {len(ids)} entr{'y' if len(ids) == 1 else 'ies'}: they reach the devices within seconds")
        elif args.action == "remove":
            hl.remove(actor, args.ref, args.reason or "")
            print(f"removed {args.ref}: it leaves the devices' lists within seconds")
        else:
            now = gov.now_ms()
            rows = hl.show(actor, args.case, include_ended=args.all)
            for ent in rows:
                if args.json:
                    print(json.dumps({"id": ent.id, "plate": ent.plate, "state": ent.state(now), "case": ent.case_id, "reason": ent.reason,
                                      "region": ent.region, "site": ent.site, "lookalike": ent.lookalike, "expires": _ms(ent.expires),
                                      "requested_by": ent.requested_by, "approved_by": ent.approved_by, "batch": ent.batch}))
                else:
                    print(f"{ent.id}  {ent.plate:<10} {ent.state(now):<8} case {ent.case_id:<12} until {_ms(ent.expires)}  "
                          f"by {ent.requested_by}{' approved by ' + ent.approved_by if ent.approved_by else ''}  {ent.reason}")
            print(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}", file=sys.stderr)
    except (AccessDenied, ValueError) as e:
        for line in str(e).splitlines():
            print(f"edge hotlist {args.action}: error: {line}", file=sys.stderr)
        return 2
    return 0


def cmd_alerts(args) -> int:
    """edge alerts [list] --case C | edge alerts ack ALERT --note TEXT."""
    from edge.collector.governance import AccessDenied
    from edge.collector.hotlist import Alerts

    gov = _gov(args)
    actor = _actor(gov, args)
    al = Alerts(gov)
    try:
        if args.action == "ack":
            if not args.alert:
                raise CollectorUserError("alerts ack needs the ALERT id")
            al.ack(actor, args.alert, args.note or "")
            print(f"alert {args.alert} acknowledged")
            return 0
        if not args.case:
            raise CollectorUserError("alerts are shown for a case: --case CASE-ID")
        rows = al.show(actor, args.case, unacked=args.unacked, limit=args.limit)
    except (AccessDenied, ValueError) as e:
        print(f"edge alerts: error: {e}", file=sys.stderr)
        return 2
    for a in rows:
        if args.ids:
            print(a["alert_id"])
        elif args.json:
            print(json.dumps(a))
        else:
            flags = ",".join(a["flags"]) or "-"
            ack = f"acked by {a['acked_by']}" if a["acked_by"] else "NOT ACKED"
            print(f"{a['seen']}  {a['plate']:<10} {a['kind']:<10} {a['entry']}  {a['camera'] or '-':<12} {a['site'] or '-':<16} "
                  f"flags {flags:<12} {ack}  {a['alert_id']}")
    print(f"{len(rows)} alert(s)", file=sys.stderr)
    return 0


def token_args(p, who: str) -> None:
    """--token and --token-file: who the command acts as (see _actor)."""
    p.add_argument("--token", help=who)
    p.add_argument("--token-file", help="read the API token from this file (the safer way: a --token on the command line "
                                        "shows in the process list)")


def register(sub) -> None:
    def db(p):
        p.add_argument("--db", default=DEFAULT_DB, help="sqlite:///relative.db, sqlite:////absolute.db or postgresql://... (env EDGE_COLLECTOR_DB)")
        p.add_argument("--images", default=DEFAULT_IMAGES, metavar="DIR",
                       help="keep image bytes in this directory, not in the database (env EDGE_COLLECTOR_IMAGES); the database "
                            "records it, so later commands find it without being told")
        p.add_argument("--audit-head", help="file that records the audit log's last entry (default: EDGE_COLLECTOR_AUDIT_HEAD, "
                                            "else beside a SQLite database)")

    c = sub.add_parser("collect", help="collector: ingest reads from MQTT into the store")
    db(c)
    c.add_argument("--mqtt", required=True, help="broker HOST:PORT")
    c.add_argument("--group", default="collectors", help="shared-subscription group")
    c.add_argument("--client-id", default="edge-collector")
    c.add_argument("--session-expiry", type=int, default=SESSION_EXPIRY_S, metavar="SECONDS",
                   help="how long the broker keeps queueing for this collector once it is gone (default 7 days)")
    c.add_argument("--http", help="also serve the web app (pages and the JSON API) on HOST:PORT")
    c.add_argument("--http-cert", metavar="FILE", help="serve the web app over HTTPS with this certificate (its cookies Secure)")
    c.add_argument("--http-key", metavar="FILE", help="... and this key")
    c.add_argument("--tiles", metavar="URL", help="the web app's maps: a tile server of the deployment's own, "
                                                   "https://tiles.example/{z}/{x}/{y}.png (default: no tiles, nothing fetched)")
    c.add_argument("--health-interval", type=float, default=30)
    c.add_argument("--cafile", help="TLS: the deployment CA")
    c.add_argument("--certfile", help="TLS: the collector's client certificate (CN collector)")
    c.add_argument("--keyfile", help="TLS: its key")
    c.add_argument("--hotlist-key", help="the Ed25519 key that signs hotlist bundles for the devices (hotlist-signing.key "
                                         "from edge provision ca; env EDGE_COLLECTOR_HOTLIST_KEY); without it no list is sent")
    c.add_argument("--alert-webhook", metavar="URL", help="POST each new alert here, signed (X-Edge-Signature)")
    c.add_argument("--alert-webhook-secret", metavar="FILE", help="the webhook's HMAC key (env EDGE_COLLECTOR_WEBHOOK_SECRET)")
    c.add_argument("--alert-topic", metavar="TOPIC", help="also publish each new alert (no plate, no image) under "
                                                          "TOPIC/<site>, e.g. lpr/alerts for Home Assistant or Node-RED")
    c.set_defaults(func=cmd_collect)

    q = sub.add_parser("query", help="collector: search reads (audited, needs a case)")
    db(q)
    token_args(q, "your API token (or EDGE_TOKEN)")
    q.add_argument("--case", help="the open case that justifies this query")
    q.add_argument("--plate")
    q.add_argument("--match", default="exact", choices=["exact", "wildcard", "fuzzy"])
    q.add_argument("--camera")
    q.add_argument("--site")
    q.add_argument("--near", help="lat,lon,km")
    q.add_argument("--box", help="lat_min,lon_min,lat_max,lon_max")
    q.add_argument("--from", dest="since", help="ISO time with offset")
    q.add_argument("--to", dest="until", help="ISO time with offset")
    q.add_argument("--days", type=float, help="window of this many days ending at --to (default 30)")
    q.add_argument("--approval", help="supervisor approval id for a movement-history query")
    q.add_argument("--limit", type=int, default=500)
    q.add_argument("--export", help="write the results (with images) to this JSON file; audited as an export")
    q.add_argument("--json", action="store_true")
    q.add_argument("--ack-policy", action="store_true",
                   help="you have read the use policy it shows and this search serves the case (recorded in the audit log)")
    q.set_defaults(func=cmd_query)

    a = sub.add_parser("approve", help="collector: a supervisor approves a movement-history query")
    db(a)
    a.add_argument("request")
    token_args(a, "the approving supervisor's API token (or EDGE_TOKEN)")
    a.set_defaults(func=cmd_approve)

    ap = sub.add_parser("approvals", help="collector: movement-history requests waiting for a supervisor")
    apsub = ap.add_subparsers(dest="approvals_cmd", required=True)
    apl = apsub.add_parser("list")
    db(apl)
    token_args(apl, "a supervisor's API token (or EDGE_TOKEN)")
    apl.add_argument("--ids", action="store_true", help="print only the request ids, one per line")
    apl.set_defaults(func=cmd_approvals)

    au = sub.add_parser("audit", help="collector: audit log tools")
    ausub = au.add_subparsers(dest="audit_cmd", required=True)
    v = ausub.add_parser("verify", help="check the hash chain and its head; exit 1 on any edited or removed entry")
    db(v)
    v.add_argument("--witness", help="the signed checkpoints (EDGE_COLLECTOR_WITNESS): catches a rewrite of the whole database")
    v.add_argument("--public-key", help="the checkpoints' public key (edge audit keygen)")
    v.set_defaults(func=cmd_audit_verify)
    apl2 = ausub.add_parser("plate", help="the audit entries that name a plate (admins, supervisors; the log keeps only references)")
    db(apl2)
    apl2.add_argument("plate")
    token_args(apl2, "your API token (or EDGE_TOKEN)")
    apl2.set_defaults(func=cmd_audit_plate)
    kg = ausub.add_parser("keygen", help="make the Ed25519 key that signs audit checkpoints, and its public key")
    kg.add_argument("--out", required=True, help="folder for audit-signing.key (keep it off the database) and audit-signing.pub")
    kg.set_defaults(func=cmd_audit_keygen)

    u = sub.add_parser("users", help="collector: user administration")
    usub = u.add_subparsers(dest="users_cmd", required=True)
    ua = usub.add_parser("add", help="ask for a user (or, with --rotate, a new token) that a second admin confirms")
    db(ua)
    ua.add_argument("name")
    ua.add_argument("--role", required=True, choices=["viewer", "investigator", "supervisor", "admin"])
    token_args(ua, "the admin's API token (or EDGE_TOKEN)")
    ua.add_argument("--bootstrap", action="store_true", help="make one of the first two admins (no token needed)")
    ua.add_argument("--rotate", action="store_true", help="the user exists: give them a new token (the old one stops working)")
    ua.set_defaults(func=cmd_users_add)
    uc = usub.add_parser("confirm", help="a second admin confirms a user request and receives the token to hand over")
    db(uc)
    uc.add_argument("request", help="USR-... (printed by edge users add)")
    token_args(uc, "the confirming admin's API token (or EDGE_TOKEN)")
    uc.set_defaults(func=cmd_users_confirm)
    ul = usub.add_parser("list", help="every user, role and whether their token works (admins)")
    db(ul)
    token_args(ul, "an admin's API token (or EDGE_TOKEN)")
    ul.set_defaults(func=cmd_users_list)
    ur = usub.add_parser("revoke", help="stop a user's token working (admins; never the last admin)")
    db(ur)
    ur.add_argument("name")
    token_args(ur, "an admin's API token (or EDGE_TOKEN)")
    ur.set_defaults(func=cmd_users_revoke)

    rj = sub.add_parser("rejects", help="collector: messages ingest refused, newest first (admins; payloads not shown)")
    rjsub = rj.add_subparsers(dest="rejects_cmd", required=True)
    rl = rjsub.add_parser("list")
    db(rl)
    rl.add_argument("--reason", help="only rejects whose reason contains this")
    rl.add_argument("--limit", type=int, default=50)
    token_args(rl, "an admin's API token (or EDGE_TOKEN)")
    rl.set_defaults(func=cmd_rejects)

    cs = sub.add_parser("cases", help="collector: list, open or close cases, hold reads for a case")
    db(cs)
    cs.add_argument("action", choices=["list", "open", "close", "hold"])
    cs.add_argument("case", nargs="?")
    cs.add_argument("reads", nargs="*", help="read ids to hold (hold)")
    token_args(cs, "your API token (or EDGE_TOKEN)")
    cs.add_argument("--title")
    cs.set_defaults(func=cmd_cases)

    r = sub.add_parser("retention", help="collector: delete reads past retention (audited)")
    db(r)
    r.add_argument("--retention-days", type=float, default=30.0)
    r.add_argument("--cache-hours", type=float, default=4.0)
    token_args(r, "an admin's API token (or EDGE_TOKEN)")
    r.set_defaults(func=cmd_retention)

    hl = sub.add_parser("hotlist", help="collector: vehicles of possible interest (proposed by one person, approved by another)")
    hl.add_argument("action", choices=["add", "approve", "list", "remove", "import"])
    hl.add_argument("ref", nargs="?", help="approve: HL-... or an import's HB-...; remove: HL-...")
    db(hl)
    token_args(hl, "your API token (or EDGE_TOKEN)")
    hl.add_argument("--case", help="the open case the entry serves (add, import; list: an investigator's case)")
    hl.add_argument("--plate", help="add: the plate")
    hl.add_argument("--reason", help="add: why the vehicle is of interest; remove: why it no longer is")
    hl.add_argument("--region", help="add: where the plate is registered, if known (us, uk, br, us-ca ...)")
    hl.add_argument("--site", help="add: only the devices of this site match it (default: every device)")
    hl.add_argument("--days", type=float, help="add: how long it lasts (default 30, at most the policy's 90)")
    hl.add_argument("--until", help="add: when it ends (ISO time with offset), instead of --days")
    hl.add_argument("--exact", action="store_true", help="match the plate exactly: no look-alikes, no one-character slips")
    hl.add_argument("--file", help="import: a CSV file of plate,region,reason,expiry")
    hl.add_argument("--all", action="store_true", help="list: expired and removed entries too")
    hl.add_argument("--json", action="store_true")
    hl.set_defaults(func=cmd_hotlist)

    al = sub.add_parser("alerts", help="collector: alerts raised by the devices for a case's hotlist entries")
    al.add_argument("action", nargs="?", default="list", choices=["list", "ack"])
    al.add_argument("alert", nargs="?", help="ack: the alert id")
    db(al)
    token_args(al, "your API token (or EDGE_TOKEN)")
    al.add_argument("--case", help="list: the case whose alerts to show")
    al.add_argument("--unacked", action="store_true", help="list: only alerts no officer has acknowledged")
    al.add_argument("--note", help="ack: what was done")
    al.add_argument("--limit", type=int, default=200)
    al.add_argument("--ids", action="store_true", help="list: print only the alert ids, one per line")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_alerts)

    b = sub.add_parser("bench-collector", help="collector: ingest reads/s with 20 KB images")
    db(b)
    b.add_argument("--n", type=int, default=3000)
    b.add_argument("--batch", type=int, default=100)
    b.add_argument("--simulate", action="store_true", help="a national-scale load on PostgreSQL: ingest with 1, 2 and 4 "
                   "instances, then --reads reads over --days days, query times, one day's retention, size per read")
    b.add_argument("--reads", type=int, default=20_000_000, help="with --simulate: reads to load (default 20,000,000)")
    b.add_argument("--days", type=int, default=90, help="with --simulate: days the reads span (default 90)")
    b.add_argument("--instances", default="1,2,4", help="with --simulate: collector processes to ingest with ('' for none)")
    b.add_argument("--per-instance", type=int, default=4000, help="with --simulate: reads each instance ingests")
    b.add_argument("--queries", type=int, default=200, help="with --simulate: queries of each kind")
    b.add_argument("--keep", action="store_true", help="with --simulate: leave the load in the database")
    b.add_argument("--reuse", action="store_true", help="with --simulate: measure the load a --keep run left (queries, "
                   "one day's retention, size) without loading again")
    b.add_argument("--json", help="with --simulate: write the figures to this file")
    b.set_defaults(func=cmd_bench_collector)
