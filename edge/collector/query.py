"""Searching stored reads, always through the governance rules and always audited."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from edge.collector.governance import DAY_MS, MAX_WINDOW_MS, AccessDenied, Governance
from edge.collector.ingest import fuzzy_key
from edge.collector.store import dumps

PLATE_PATTERN = re.compile(r"^[A-Z0-9*?]{1,10}$")


@dataclass
class Query:
    plate: str | None = None
    match: str = "exact"  # exact | wildcard | fuzzy
    camera: str | None = None
    site: str | None = None
    near: tuple[float, float, float] | None = None  # lat, lon, radius km
    box: tuple[float, float, float, float] | None = None  # lat_min, lon_min, lat_max, lon_max
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 500

    def normalised(self, now_ms: int) -> Query:
        q = Query(**asdict(self))
        if q.plate is not None:
            q.plate = q.plate.upper().replace(" ", "").replace("-", "")
            if not PLATE_PATTERN.match(q.plate):
                raise ValueError(f"plate {self.plate!r}: use A-Z, 0-9 and the wildcards * ?")
            if q.match not in ("exact", "wildcard", "fuzzy"):
                raise ValueError(f"match {q.match!r}: one of exact, wildcard, fuzzy")
            if q.match != "wildcard" and any(c in q.plate for c in "*?"):
                q.match = "wildcard"
        q.until_ms = q.until_ms if q.until_ms is not None else now_ms
        q.since_ms = q.since_ms if q.since_ms is not None else q.until_ms - 30 * DAY_MS
        if q.since_ms > q.until_ms:
            raise ValueError("the time window ends before it starts")
        if q.until_ms - q.since_ms > MAX_WINDOW_MS:
            raise ValueError("the time window is longer than 5 years")
        q.limit = max(1, min(int(q.limit), 5000))
        if q.near is not None and not (-90 <= q.near[0] <= 90 and -180 <= q.near[1] <= 180 and 0 < q.near[2] <= 1000):
            raise ValueError("near: lat,lon,km with a radius of 0-1000 km")
        return q


def haversine_km(lat1, lon1, lat2, lon2) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


def search(gov: Governance, user: str, case_id: str | None, query: Query, approval: str | None = None,
           export: bool = False) -> list[dict]:
    """Run a governed query. Refusals are audited too, then raised."""
    try:
        return _search(gov, user, case_id, query, approval, export)
    except AccessDenied as e:
        gov.audit(user, "query.denied", {"case": case_id, "query": asdict(query), "reason": str(e)})
        raise


def _search(gov: Governance, user: str, case_id: str | None, query: Query, approval: str | None, export: bool) -> list[dict]:
    role = gov.role(user)
    if role == "admin":
        raise AccessDenied(f"user {user!r} (admin) manages the system and may not search reads")
    gov.check_case(case_id)
    assert case_id is not None  # check_case refused a query without one
    q = query.normalised(gov.now_ms())
    if q.plate and role == "viewer":
        raise AccessDenied(f"user {user!r} (viewer) may not search by plate")
    qdict = asdict(q)
    since, until = int(q.since_ms or 0), int(q.until_ms or 0)  # normalised: both set
    history = bool(q.plate) and (until - since) > gov.p.history_hours * 3_600_000
    used = None
    if history:
        # the approval binds the query as it was asked (so a default window means the same on a re-run)
        asked = {**asdict(query), "plate": q.plate}
        used = gov.use_approval(user, case_id, asked, approval)
    include_images = role != "viewer"
    key = hashlib.sha256(f"{user}|{case_id}|{dumps(qdict)}|{include_images}".encode()).hexdigest()
    ttl = int(gov.p.cache_ttl_hours * 3_600_000)
    cached = gov.s.one("SELECT created, result FROM query_cache WHERE key = ?", (key,))
    if cached and gov.now_ms() - int(cached[0]) < ttl and not history:
        rows = json.loads(cached[1])
    else:
        rows = _run(gov, q, include_images)
        if not history:  # movement histories are never cached
            gov.s.execute("INSERT INTO query_cache (key, created, result) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
                          "SET created = excluded.created, result = excluded.result", (key, gov.now_ms(), json.dumps(rows)))
    gov.audit(user, "export" if export else "query",
              {"case": case_id, "query": qdict, "results": len(rows), "approval": used, "read_ids": [r["read_id"] for r in rows][:200]})
    return rows


def _run(gov: Governance, q: Query, include_images: bool) -> list[dict]:
    where: list[str] = ["ts >= ?", "ts <= ?"]
    params: list[Any] = [q.since_ms, q.until_ms]
    if q.plate:
        if q.match == "exact":
            where.append("plate = ?")
            params.append(q.plate)
        elif q.match == "fuzzy":
            where.append("plate_fuzzy = ?")
            params.append(fuzzy_key(q.plate))
        else:
            where.append("plate LIKE ?")
            params.append(q.plate.replace("*", "%").replace("?", "_"))
    if q.camera:
        where.append("camera_id = ?")
        params.append(q.camera)
    if q.site:
        where.append("site = ?")
        params.append(q.site)
    if q.box:
        where.append("lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?")
        params += [q.box[0], q.box[2], q.box[1], q.box[3]]
    if q.near:
        lat, lon, km = q.near
        dlat = km / 111.0
        dlon = km / max(1e-6, 111.0 * math.cos(math.radians(lat)))
        where.append("lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?")
        params += [lat - dlat, lat + dlat, lon - dlon, lon + dlon]
    sql = f"SELECT record, plate_image, lat, lon FROM reads WHERE {' AND '.join(where)} ORDER BY ts DESC LIMIT ?"
    params.append(q.limit)
    out = []
    for record, img, lat, lon in gov.s.query(sql, params):
        if q.near and (lat is None or haversine_km(q.near[0], q.near[1], lat, lon) > q.near[2]):
            continue
        d = json.loads(record)
        if include_images and img:
            data = gov.s.image(img)
            d["images"]["plate_jpeg"] = base64.b64encode(data).decode() if data else None
        else:
            d["images"] = {}
        out.append(d)
    return out
