"""The collector's JSON API (served by edge.collector.web with the pages) and its parameter parsing.

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

import math
from datetime import datetime

from edge.collector.governance import DAY_MS, Governance
from edge.collector.query import Query


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


def make_server(gov: Governance, host: str, port: int, health=None, tiles: str | None = None, certfile: str | None = None,
                keyfile: str | None = None):
    """The collector's web app (edge.collector.web: these JSON endpoints and the pages) on HOST:PORT."""
    from edge.collector.web import make_server as web_server

    return web_server(gov, host, port, health=health, tiles=tiles, certfile=certfile, keyfile=keyfile)
