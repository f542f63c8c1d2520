"""A small HTTP API (JSON) over the same governed search, hotlists and alerts.

    GET /v1/reads?case=CASE&plate=ABC123&match=exact|wildcard|fuzzy&camera=..&site=..
                 &near=lat,lon,km&box=lat1,lon1,lat2,lon2&from=ISO&to=ISO&days=N&approval=APR-..&limit=N
    GET /v1/health, GET /metrics (Prometheus; supervisors and admins)
    GET /v1/hotlist?case=CASE&all=1, GET /v1/alerts?case=CASE&unacked=1
    POST /v1/hotlist {"case", "plate", "reason", "region", "site", "days", "exact"} (propose),
         /v1/hotlist/import {"case", "csv"}, /v1/hotlist/<HL-|HB-...>/approve, /v1/hotlist/<HL-...>/remove {"reason"},
         /v1/alerts/<id>/ack {"note"}
    GET /healthz (liveness: no token, tells nothing else)

Every request needs `Authorization: Bearer <token>` (tokens are stored hashed). No query runs
without a user and a case; every query is audited.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import datetime
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from edge.collector.governance import DAY_MS, AccessDenied, Governance, NeedsApproval
from edge.collector.query import Query, search
from edge.httpserve import Handler as BaseHandler


def parse_time(v: str, name: str = "time") -> int:
    """ISO 8601 with an offset, in ms; a bad value is a ValueError naming `name` (the flag or parameter)."""
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: {v!r} is not an ISO 8601 time (e.g. 2026-11-27T10:00:00Z)") from None
    if dt.tzinfo is None:
        raise ValueError(f"{name}: {v!r} needs a UTC offset (e.g. 2026-11-27T10:00:00Z)")
    return int(dt.timestamp() * 1000)


def floats(v: str, n: int, name: str) -> tuple[float, ...]:
    parts = v.split(",")
    if len(parts) != n:
        raise ValueError(f"{name} needs {n} comma-separated numbers, got {v!r}")
    try:
        out = tuple(float(x) for x in parts)
    except ValueError:
        raise ValueError(f"{name} needs {n} comma-separated numbers, got {v!r}") from None
    if not all(math.isfinite(x) for x in out):
        raise ValueError(f"{name} needs {n} finite numbers, got {v!r}")
    return out


def query_from_params(p: dict[str, str], now_ms: int) -> Query:
    q = Query(plate=p.get("plate"), match=p.get("match", "exact"), camera=p.get("camera"), site=p.get("site"))
    if "near" in p:
        lat, lon, km = floats(p["near"], 3, "near")
        q.near = (lat, lon, km)
    if "box" in p:
        a, b, c, d = floats(p["box"], 4, "box")
        q.box = (a, b, c, d)
    if "from" in p:
        q.since_ms = parse_time(p["from"], "from")
    if "to" in p:
        q.until_ms = parse_time(p["to"], "to")
    if "days" in p:
        if q.until_ms is None:
            q.until_ms = now_ms  # pinned: a window ending at a later "now" would be longer than asked
        q.since_ms = q.until_ms - int(number(p["days"], "days") * DAY_MS)
    if "limit" in p:
        limit = number(p["limit"], "limit")
        if limit != int(limit) or not 1 <= limit <= 5000:
            raise ValueError(f"limit: expected 1 to 5000 reads, got {p['limit']!r}")
        q.limit = int(limit)
    return q


def number(v: str, name: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {v!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    return x


FAIL_LIMIT = Governance.LOGIN_FAIL_LIMIT  # failed logins from one address in a minute, then it waits a minute


MAX_BODY = 8 * 1024 * 1024  # a hotlist import's CSV at most


def make_server(gov: Governance, host: str, port: int, health=None) -> ThreadingHTTPServer:
    from edge.collector.hotlist import Alerts, Hotlists

    lock = threading.Lock()
    hotlists, alerts = Hotlists(gov), Alerts(gov)

    class Handler(BaseHandler):
        server_version = "edge-collector"

        def user(self) -> str | None:
            """The token's user, or None with the answer (401, 429) already sent."""
            auth = self.headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else ""
            source = self.client_address[0]
            with lock:
                if gov.login_blocked(source):
                    self.reply(429, {"error": f"too many failed logins from {source}: wait a minute"})
                    return None
                user = gov.user_for_token(token) if token else None
                if token and not user:  # a wrong token is on the record, without the token itself
                    gov.login_failed(source, {"path": urlparse(self.path).path})
            if not user:
                self.reply(401, {"error": "authentication required: Authorization: Bearer <token>"})
            return user

        def do_GET(self):  # noqa: N802
            if urlparse(self.path).path == "/healthz":  # liveness for a load balancer: no token, nothing told
                return self.reply(200, {"ok": True})
            user = self.user()
            if not user:
                return None
            url = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path in ("/v1/hotlist", "/v1/alerts"):
                return self.governed(lambda: self.listing(user, url.path, params))
            if url.path == "/v1/health":
                with lock:
                    role = gov.role(user)
                if role not in ("supervisor", "admin"):
                    return self.reply(403, {"error": "health needs supervisor or admin"})
                return self.reply(200, health() if health else {"ok": True})
            if url.path == "/metrics":
                with lock:
                    role = gov.role(user)
                    if role not in ("supervisor", "admin"):
                        return self.reply(403, {"error": "metrics need supervisor or admin"})
                    from edge.metrics import CONTENT_TYPE, CollectorMetrics, render

                    body = render(CollectorMetrics(gov.s, health))
                return self.send(200, body, CONTENT_TYPE)
            if url.path == "/v1/policy":
                with lock:
                    text, digest = gov.use_policy()
                return self.reply(200, {"use_policy": text, "digest": digest})
            if url.path != "/v1/reads":
                return self.reply(404, {"error": f"no such endpoint {url.path}"})
            try:
                with lock:
                    q = query_from_params(params, gov.now_ms())
                    rows = search(gov, user, params.get("case"), q, params.get("approval"), ack=params.get("ack_policy"))
            except NeedsApproval as e:
                return self.reply(403, {"error": str(e), "approval_request": e.request_id})
            except AccessDenied as e:
                return self.reply(403, {"error": str(e)})
            except (ValueError, OverflowError) as e:
                return self.reply(400, {"error": str(e)})
            except Exception as e:  # never a dropped connection: the client gets an answer
                return self.reply(500, {"error": f"{type(e).__name__}: {e}"})
            return self.reply(200, {"count": len(rows), "reads": rows, "withheld": rows.withheld, "counts": rows.counts,
                                    "note": rows.note, "use_policy": gov.use_policy()[0]})

        def governed(self, fn):
            """Run a hotlist or alert call under the collector's rules; every refusal is one answer."""
            try:
                with lock:
                    code, body = fn()
            except AccessDenied as e:
                return self.reply(403, {"error": str(e)})
            except (ValueError, KeyError, TypeError) as e:
                lines = str(e).strip("'").splitlines()
                return self.reply(400, {"error": lines[0] if lines else type(e).__name__, "errors": lines})
            except Exception as e:  # never a dropped connection: the client gets an answer
                return self.reply(500, {"error": f"{type(e).__name__}: {e}"})
            return self.reply(code, body)

        def listing(self, user: str, path: str, p: dict) -> tuple[int, dict]:
            if path == "/v1/alerts":
                rows = alerts.show(user, p.get("case", ""), unacked=p.get("unacked") in ("1", "true"),
                                   limit=int(number(p.get("limit", "200"), "limit")))
                return 200, {"count": len(rows), "alerts": rows}
            now = gov.now_ms()
            entries = hotlists.show(user, p.get("case"), include_ended=p.get("all") in ("1", "true"))
            return 200, {"count": len(entries), "entries": [{**e.__dict__, "state": e.state(now)} for e in entries]}

        def body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_BODY:
                raise ValueError(f"request body over {MAX_BODY} bytes")
            raw = self.rfile.read(n) if n else b"{}"
            try:
                d = json.loads(raw)
            except ValueError:
                raise ValueError("the request body is not JSON") from None
            if not isinstance(d, dict):
                raise ValueError("the request body is not a JSON object")
            return d

        def do_POST(self):  # noqa: N802
            """POST /v1/hotlist (propose), /v1/hotlist/import, /v1/hotlist/<ref>/approve,
            /v1/hotlist/<id>/remove, /v1/alerts/<id>/ack: JSON bodies, the same rules as the CLI."""
            path = urlparse(self.path).path.rstrip("/").split("/")
            if path[:3] not in (["", "v1", "hotlist"], ["", "v1", "alerts"]):
                return self.reply(405, {"error": "reads are searched with GET /v1/reads"})
            user = self.user()
            if not user:
                return None

            def act() -> tuple[int, dict]:
                d = self.body()
                if path == ["", "v1", "hotlist"]:
                    eid = hotlists.propose(user, d.get("case", ""), str(d["plate"]), str(d.get("reason", "")), region=d.get("region"),
                                           site=d.get("site"), lookalike=not d.get("exact", False), days=d.get("days"))
                    return 201, {"id": eid}
                if path == ["", "v1", "hotlist", "import"]:
                    batch, ids = hotlists.import_csv(user, d.get("case", ""), str(d["csv"]), lookalike=not d.get("exact", False))
                    return 201, {"batch": batch, "ids": ids}
                if len(path) == 5 and path[2] == "hotlist" and path[4] == "approve":
                    return 200, {"approved": hotlists.approve(user, path[3])}
                if len(path) == 5 and path[2] == "hotlist" and path[4] == "remove":
                    hotlists.remove(user, path[3], str(d.get("reason", "")))
                    return 200, {"removed": path[3]}
                if len(path) == 5 and path[2] == "alerts" and path[4] == "ack":
                    alerts.ack(user, path[3], str(d.get("note", "")))
                    return 200, {"acknowledged": path[3]}
                return 404, {"error": f"no such endpoint {'/'.join(path)}"}

            return self.governed(act)

        def do_PUT(self):  # noqa: N802
            self.reply(405, {"error": "not a method of this API"})

        do_DELETE = do_PATCH = do_PUT  # noqa: N815

    return ThreadingHTTPServer((host, port), Handler)
