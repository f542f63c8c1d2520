"""Searching stored reads, always through the governance rules and always audited."""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from edge.collector.governance import DAY_MS, MAX_WINDOW_MS, AccessDenied, Governance, NeedsApproval
from edge.collector.ingest import fuzzy_key

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
    offset: int = 0  # paging: the reads after this many (newest first)

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
        q.offset = max(0, min(int(q.offset), 1_000_000))
        if q.near is not None and not (-90 <= q.near[0] <= 90 and -180 <= q.near[1] <= 180 and 0 < q.near[2] <= 1000):
            raise ValueError("near: lat,lon,km with a radius of 0-1000 km")
        return q


def haversine_km(lat1, lon1, lat2, lon2) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


MIN_KNOWN_CHARS = 5  # a wildcard search names at least this many characters: it finds a vehicle already identified


class Found(list):
    """The reads a search shows, with what it left out and why (`withheld`, `counts`, `note`)."""

    def __init__(self, rows=(), withheld: int = 0, counts: dict | None = None, note: str = ""):
        super().__init__(rows)
        self.withheld, self.counts, self.note = withheld, counts, note


def binding(q: Query) -> dict:
    """What an approval covers: the question (plate, match kind, filters) and the window's length, not
    its end: a search re-run later with the same --days is the same question."""
    return {"plate": q.plate, "match": q.match if q.plate else None, "camera": q.camera, "site": q.site,
            "near": list(q.near) if q.near else None, "box": list(q.box) if q.box else None,
            "window_ms": int(q.until_ms or 0) - int(q.since_ms or 0)}


def search(gov: Governance, user: str, case_id: str | None, query: Query, approval: str | None = None,
           export: bool = False, ack: str | None = None) -> Found:
    """Run a governed query. `ack`: the digest of the use policy the user was shown and acknowledged
    (Governance.use_policy). Refusals are audited too, then raised."""
    try:
        text, digest = gov.use_policy()
        if gov.p.require_ack and ack != digest:
            raise AccessDenied(f"every search acknowledges the use policy (digest {digest}); read it and search again "
                               f"with --ack-policy (API: ack_policy={digest}):\n{text}")
        return _search(gov, user, case_id, query, approval, export)
    except AccessDenied as e:
        gov.audit(user, "query.denied", {"case": case_id, "query": asdict(query), "reason": str(e)})
        raise


def _search(gov: Governance, user: str, case_id: str | None, query: Query, approval: str | None, export: bool) -> Found:
    role = gov.role(user)
    if role == "admin":
        raise AccessDenied(f"user {user!r} (admin) manages the system and may not search reads")
    gov.check_case(case_id)
    assert case_id is not None  # check_case refused a query without one
    q = query.normalised(gov.now_ms())
    if q.plate and role == "viewer":
        raise AccessDenied(f"user {user!r} (viewer) may not search by plate")
    if q.plate and q.match == "wildcard" and sum(c not in "*?" for c in q.plate) < MIN_KNOWN_CHARS:
        raise AccessDenied(f"a wildcard search names at least {MIN_KNOWN_CHARS} characters of the plate: it finds a vehicle "
                           f"already identified, not every plate ({q.plate!r} names {sum(c not in '*?' for c in q.plate)})")
    qdict = asdict(q)
    since, until = int(q.since_ms or 0), int(q.until_ms or 0)  # normalised: both set
    long = (until - since) > gov.p.history_hours * 3_600_000
    bound = binding(q)
    used = None
    if q.plate and long:  # a movement history
        used = gov.use_approval(user, case_id, bound, approval)
    elif long and approval:  # a camera, site or area over a long window, approved to show plates
        used = gov.use_approval(user, case_id, bound, approval)
    elif long:  # without approval such a search shows counts only
        counts = _counts(gov, q)
        rid = gov.request_approval(user, case_id, bound)
        note = (f"a search by camera, site or area over more than {gov.p.history_hours:g} h shows counts only; "
                f"a supervisor's approval of request {rid} shows its reads (--approval {rid})")
        gov.audit(user, "query.counts", {"case": case_id, "query": qdict, "counts": counts, "request": rid})
        return Found([], withheld=counts["reads"], counts=counts, note=note)
    include_images = role != "viewer"
    rows = _run(gov, q, include_images)
    withheld, note = 0, ""
    if used is None and role != "viewer":  # an approved search's reads do not count against the budget
        by_key: dict[str, list[dict]] = {}
        for r in rows:
            by_key.setdefault(fuzzy_key(r["plate"]["text"]), []).append(r)
        over = {k for k, rs in by_key.items() if gov.exposure.over(user, k, since, until, {r["read_id"] for r in rs})}
        if over and q.plate:
            rid = gov.request_approval(user, case_id, bound)
            raise NeedsApproval(rid, f"you have already seen this plate over {gov.p.history_hours:g} h or {gov.p.history_reads} "
                                     "reads: more of it is a movement history")
        if over:
            withheld = sum(len(by_key[k]) for k in over)
            rows = [r for r in rows if fuzzy_key(r["plate"]["text"]) not in over]
            note = (f"{withheld} read(s) of {len(over)} plate(s) left out: you have already seen them over "
                    f"{gov.p.history_hours:g} h or {gov.p.history_reads} reads (a plate search with a supervisor's approval shows them)")
        for k, rs in by_key.items():
            if k not in over:
                gov.exposure.record(user, k, since, until, {r["read_id"] for r in rs}, gov.now_ms())
    if role == "viewer":
        for r in rows:  # a viewer sees that a vehicle passed, not which one
            r["plate"] = {"withheld": True}
    gov.audit(user, "export" if export else "query",
              {"case": case_id, "query": qdict, "results": len(rows), "withheld": withheld, "approval": used,
               "use_policy": gov.use_policy()[1] if gov.p.require_ack else None,
               "read_ids": [r["read_id"] for r in rows][:200]})
    return Found(rows, withheld=withheld, note=note)


def _counts(gov: Governance, q: Query) -> dict:
    where, params = _where(q, gov.s)
    n = gov.s.one(f"SELECT COUNT(*) FROM reads WHERE {' AND '.join(where)}", params)[0]
    per = gov.s.query(f"SELECT camera_id, COUNT(*) FROM reads WHERE {' AND '.join(where)} GROUP BY camera_id ORDER BY camera_id",
                      params)
    return {"reads": int(n), "cameras": {c: int(k) for c, k in per}}


def _where(q: Query, store=None) -> tuple[list[str], list[Any]]:
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
            fixed = re.split(r"[*?]", q.plate, maxsplit=1)[0]
            if fixed and store is not None and store.engine == "postgresql":
                # the fixed start as a range the plate index (text_pattern_ops) serves, prepared statement or not
                where.append("plate ~>=~ ? AND plate ~<~ ?")
                params += [fixed, fixed[:-1] + chr(ord(fixed[-1]) + 1)]
    if q.camera:
        where.append("camera_id = ?")
        params.append(q.camera)
    if q.site:
        where.append("site = ?")
        params.append(q.site)
    if q.box:
        where.append("lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?")
        params += [q.box[0], q.box[2], q.box[1], q.box[3]]
        if store is not None and store.postgis:
            # the GiST index finds the candidates: the envelope's geodetic bounding box holds the whole latitude and
            # longitude box, and the condition above keeps exactly the box
            where.append("geog && ST_MakeEnvelope(?, ?, ?, ?, 4326)::geography")
            params += [q.box[1], q.box[0], q.box[3], q.box[2]]
    if q.near:
        lat, lon, km = q.near
        dlat = km / 111.0
        dlon = km / max(1e-6, 111.0 * math.cos(math.radians(lat)))
        where.append("lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?")
        params += [lat - dlat, lat + dlat, lon - dlon, lon + dlon]
        # within the radius itself, on the same sphere in every engine (so a page holds the same reads)
        if store is not None and store.postgis:
            where.append("ST_DWithin(geog, ST_SetSRID(ST_MakePoint(?, ?), 4326)::geography, ?, false)")
            params += [lon, lat, km * 1000.0]
        elif store is not None and store.engine == "postgresql":
            where.append("2 * 6371.0088 * asin(least(1.0, sqrt(power(sin(radians(lat - ?) / 2), 2) + "
                         "cos(radians(?)) * cos(radians(lat)) * power(sin(radians(lon - ?) / 2), 2)))) <= ?")
            params += [lat, lat, lon, km]
        else:  # SQLite: the store registers haversine_km
            where.append("haversine_km(?, ?, lat, lon) <= ?")
            params += [lat, lon, km]
    return where, params


def _run(gov: Governance, q: Query, include_images: bool) -> list[dict]:
    where, params = _where(q, gov.s)
    sql = f"SELECT record, plate_image FROM reads WHERE {' AND '.join(where)} ORDER BY ts DESC, read_id LIMIT ? OFFSET ?"
    params += [q.limit, q.offset]
    rows = gov.s.query(sql, params)
    images = gov.s.images({img for _, img in rows if img}) if include_images else {}  # the page's images in one query
    out = []
    for record, img in rows:
        d = json.loads(record)
        if include_images and img:
            data = images.get(img)
            d["images"]["plate_jpeg"] = base64.b64encode(data).decode() if data else None
        else:
            d["images"] = {}
        out.append(d)
    return out
