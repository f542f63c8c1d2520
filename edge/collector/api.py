"""A small read-only HTTP API (JSON) over the same governed search.

    GET /v1/reads?case=CASE&plate=ABC123&match=exact|wildcard|fuzzy&camera=..&site=..
                 &near=lat,lon,km&box=lat1,lon1,lat2,lon2&from=ISO&to=ISO&days=N&approval=APR-..&limit=N
    GET /v1/health, GET /metrics (Prometheus; supervisors and admins)
    GET /healthz (liveness: no token, tells nothing else)

Every request needs `Authorization: Bearer <token>` (tokens are stored hashed). No query runs
without a user and a case; every query is audited.
"""

from __future__ import annotations

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


def make_server(gov: Governance, host: str, port: int, health=None) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHandler):
        server_version = "edge-collector"

        def do_GET(self):  # noqa: N802
            if urlparse(self.path).path == "/healthz":  # liveness for a load balancer: no token, nothing told
                return self.reply(200, {"ok": True})
            auth = self.headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else ""
            source = self.client_address[0]
            with lock:
                if gov.login_blocked(source):
                    return self.reply(429, {"error": f"too many failed logins from {source}: wait a minute"})
                user = gov.user_for_token(token) if token else None
                if token and not user:  # a wrong token is on the record, without the token itself
                    gov.login_failed(source, {"path": urlparse(self.path).path})
            if not user:
                return self.reply(401, {"error": "authentication required: Authorization: Bearer <token>"})
            url = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
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

        def do_POST(self):  # noqa: N802
            self.reply(405, {"error": "read-only API"})

        do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

    return ThreadingHTTPServer((host, port), Handler)
