"""The routes: `/v1/...` JSON for programs (bearer tokens), pages for people (a session cookie).

Every route reaches the store through one lock and through Governance, Query/search, Hotlists and
Alerts: nothing here decides who may see what.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from edge.collector.api import floats, parse_time, query_from_params
from edge.collector.governance import DAY_MS, AccessDenied, Governance, NeedsApproval
from edge.collector.hotlist import Alerts, Hotlists
from edge.collector.query import Query, search
from edge.collector.web import BROWSER_COOKIE, HERE, MAX_S, SESSION_COOKIE, Session, Sessions
from edge.collector.web.mapview import svg_map

PAGE_SIZE = 50
MAX_BODY = 8 * 1024 * 1024


def _iso(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ms is not None else "-"


def create_app(gov: Governance, health=None, tiles: str | None = None) -> FastAPI:
    app = FastAPI(title="edge-lpr collector", version=__import__("edge").__version__, docs_url=None, redoc_url=None,
                  description="Governed access to licence-plate reads: every call names a user (bearer token) and, for "
                              "reads, an open case; movement histories need a supervisor's approval; all is audited.")
    lock = threading.RLock()
    sessions = Sessions(gov)
    hotlists, alerts = Hotlists(gov), Alerts(gov)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["iso"] = _iso
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def server_timing(request: Request, call_next):
        t0 = time.perf_counter()
        resp = await call_next(request)
        resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:" + (f" {tiles.split('/{')[0]}" if tiles else "")
                                                   + "; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
        return resp

    # ------------------------------------------------------------------ the JSON API (bearer tokens)

    def api_user(request: Request) -> str | JSONResponse:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        source = request.client.host if request.client else "?"
        with lock:
            if gov.login_blocked(source):
                return JSONResponse({"error": f"too many failed logins from {source}: wait a minute"}, 429)
            user = gov.user_for_token(token) if token else None
            if token and not user:  # a wrong token is on the record, without the token itself
                gov.login_failed(source, {"path": request.url.path})
        if not user:
            return JSONResponse({"error": "authentication required: Authorization: Bearer <token>"}, 401)
        return user

    def governed(fn) -> JSONResponse:
        try:
            with lock:
                code, body = fn()
        except NeedsApproval as e:
            return JSONResponse({"error": str(e), "approval_request": e.request_id}, 403)
        except AccessDenied as e:
            return JSONResponse({"error": str(e)}, 403)
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            lines = str(e).strip("'").splitlines()
            return JSONResponse({"error": lines[0] if lines else type(e).__name__, "errors": lines}, 400)
        except Exception as e:  # never a dropped connection: the client gets an answer
            return JSONResponse({"error": f"{type(e).__name__}: {e}"}, 500)
        return JSONResponse(body, code)

    async def body(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ValueError(f"request body over {MAX_BODY} bytes")
        try:
            d = json.loads(raw or b"{}")
        except ValueError:
            raise ValueError("the request body is not JSON") from None
        if not isinstance(d, dict):
            raise ValueError("the request body is not a JSON object")
        return d

    @app.get("/healthz", summary="liveness (no token, tells nothing else)")
    def healthz():
        return {"ok": True}

    @app.get("/v1/health", summary="the collector's counters (supervisors, admins)")
    def api_health(request: Request):
        user = api_user(request)
        if isinstance(user, JSONResponse):
            return user
        with lock:
            role = gov.role(user)
        if role not in ("supervisor", "admin"):
            return JSONResponse({"error": "health needs supervisor or admin"}, 403)
        return health() if health else {"ok": True}

    @app.get("/metrics", summary="Prometheus metrics (supervisors, admins)")
    def api_metrics(request: Request):
        user = api_user(request)
        if isinstance(user, JSONResponse):
            return user
        with lock:
            if gov.role(user) not in ("supervisor", "admin"):
                return JSONResponse({"error": "metrics need supervisor or admin"}, 403)
            from edge.metrics import CONTENT_TYPE, CollectorMetrics, render

            data = render(CollectorMetrics(gov.s, health))
        return Response(data, media_type=CONTENT_TYPE)

    @app.get("/v1/policy", summary="the use policy every search acknowledges, and its digest")
    def api_policy(request: Request):
        user = api_user(request)
        if isinstance(user, JSONResponse):
            return user
        with lock:
            text, digest = gov.use_policy()
        return {"use_policy": text, "digest": digest}

    def api_get(request: Request, act) -> JSONResponse:
        """A GET of the API: the token's user, then `act(user, params) -> (code, body)` under governance."""
        user = api_user(request)
        if isinstance(user, JSONResponse):
            return user
        params = dict(request.query_params)
        return governed(lambda: act(user, params))

    async def api_post(request: Request, act) -> JSONResponse:
        """A POST of the API: the token's user and the JSON body, then `act(user, body) -> (code, body)`."""
        user = api_user(request)
        if isinstance(user, JSONResponse):
            return user
        try:
            d = await body(request)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, 400)
        return governed(lambda: act(user, d))

    @app.get("/v1/reads", summary="search reads (case, plate, match, camera, site, near, box, from, to, days, approval, limit, "
                                  "ack_policy)")
    def api_reads(request: Request):
        def run(user, p):
            rows = search(gov, user, p.get("case"), query_from_params(p, gov.now_ms()), p.get("approval"), ack=p.get("ack_policy"))
            return 200, {"count": len(rows), "reads": rows, "withheld": rows.withheld, "counts": rows.counts, "note": rows.note,
                         "use_policy": gov.use_policy()[0]}

        return api_get(request, run)

    @app.get("/v1/hotlist", summary="hotlist entries (an investigator names the case)")
    def api_hotlist(request: Request):
        def run(user, p):
            now = gov.now_ms()
            es = hotlists.show(user, p.get("case"), include_ended=p.get("all") in ("1", "true"))
            return 200, {"count": len(es), "entries": [{**e.__dict__, "state": e.state(now)} for e in es]}

        return api_get(request, run)

    @app.get("/v1/alerts", summary="the alerts of a case")
    def api_alerts(request: Request):
        def run(user, p):
            rows = alerts.show(user, p.get("case", ""), unacked=p.get("unacked") in ("1", "true"), limit=int(p.get("limit", "200")))
            return 200, {"count": len(rows), "alerts": rows}

        return api_get(request, run)

    @app.post("/v1/hotlist", status_code=201, summary="propose an entry {case, plate, reason, region, site, days, exact}")
    async def api_propose(request: Request):
        return await api_post(request, lambda user, d: (201, {"id": hotlists.propose(
            user, d.get("case", ""), str(d["plate"]), str(d.get("reason", "")), region=d.get("region"), site=d.get("site"),
            lookalike=not d.get("exact", False), days=d.get("days"))}))

    @app.post("/v1/hotlist/import", status_code=201, summary="import entries {case, csv}: all lines or none")
    async def api_import(request: Request):
        def run(user, d):
            batch, ids = hotlists.import_csv(user, d.get("case", ""), str(d["csv"]), lookalike=not d.get("exact", False))
            return 201, {"batch": batch, "ids": ids}

        return await api_post(request, run)

    @app.post("/v1/hotlist/{ref}/approve", summary="approve an entry (HL-...) or an import (HB-...)")
    async def api_approve_entry(ref: str, request: Request):
        return await api_post(request, lambda user, d: (200, {"approved": hotlists.approve(user, ref)}))

    @app.post("/v1/hotlist/{ref}/remove", summary="withdraw an entry {reason}")
    async def api_remove_entry(ref: str, request: Request):
        def run(user, d):
            hotlists.remove(user, ref, str(d.get("reason", "")))
            return 200, {"removed": ref}

        return await api_post(request, run)

    @app.post("/v1/alerts/{alert_id}/ack", summary="acknowledge an alert {note}")
    async def api_ack(alert_id: str, request: Request):
        def run(user, d):
            alerts.ack(user, alert_id, str(d.get("note", "")))
            return 200, {"acknowledged": alert_id}

        return await api_post(request, run)

    # ------------------------------------------------------------------ pages (a session cookie)

    def source(request: Request) -> str:
        return request.client.host if request.client else "?"

    def session(request: Request) -> tuple[Session | None, str]:
        with lock:
            return sessions.get(request.cookies.get(SESSION_COOKIE), request.cookies.get(BROWSER_COOKIE), source(request))

    def page(request: Request, name: str, s: Session | None, code: int = 200, **ctx) -> HTMLResponse:
        with lock:
            policy, digest = gov.use_policy()
        return templates.TemplateResponse(request, name, {"s": s, "policy": policy, "digest": digest, **ctx}, status_code=code)

    def to_signin(why: str = "") -> RedirectResponse:
        r = RedirectResponse("/signin" + (f"?{urlencode({'why': why})}" if why else ""), 303)
        r.delete_cookie(SESSION_COOKIE, path="/")
        return r

    async def form(request: Request, s: Session) -> dict[str, Any] | HTMLResponse:
        """The posted form, once its CSRF token is the session's; else the refusal, audited."""
        f = await request.form()
        token = str(f.get("csrf", ""))
        if not token or not hmac.compare_digest(token, s.csrf):
            with lock:
                gov.audit(s.user, "web.csrf_refused", {"path": request.url.path, "source": source(request)})
            return page(request, "error.html", s, 403, message="This form's security token is missing or out of date: "
                                                                 "nothing was done. Reload the page and try again.")
        return {k: str(v) for k, v in f.items()}

    def open_cases() -> list[tuple[str, str]]:
        return [(r[0], r[1] or "") for r in gov.s.query("SELECT id, title FROM cases WHERE status = 'open' ORDER BY id")]

    @app.get("/signin", response_class=HTMLResponse, include_in_schema=False)
    def signin_page(request: Request, why: str = ""):
        r = page(request, "signin.html", None, why=why)
        if not request.cookies.get(BROWSER_COOKIE):
            r.set_cookie(BROWSER_COOKIE, __import__("secrets").token_urlsafe(24), max_age=400 * 86400, httponly=True,
                         samesite="strict", secure=request.url.scheme == "https", path="/")
        return r

    @app.post("/signin", include_in_schema=False)
    async def signin(request: Request):
        f = await request.form()
        browser = request.cookies.get(BROWSER_COOKIE)
        src = source(request)
        if not browser:  # no cookie of this browser's own: cookies are off, or the form was posted from elsewhere
            return page(request, "signin.html", None, 400, why="Cookies are needed to sign in: reload this page and try again.")
        with lock:
            if gov.login_blocked(src):
                return page(request, "signin.html", None, 429, why=f"Too many failed sign-ins from {src}: wait a minute.")
            user = gov.user_for_token(str(f.get("token", "")).strip())
            if not user:
                gov.login_failed(src, {"path": "/signin"})
                return page(request, "signin.html", None, 401, why="That token is not valid.")
            sid, _ = sessions.start(user, browser, src)
        r = RedirectResponse("/", 303)
        r.set_cookie(SESSION_COOKIE, sid, max_age=MAX_S, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                     path="/")
        return r

    @app.post("/signout", include_in_schema=False)
    async def signout(request: Request):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        f = await form(request, s)
        if isinstance(f, HTMLResponse):
            return f
        with lock:
            sessions.end(request.cookies.get(SESSION_COOKIE, ""), s.user)
        return to_signin("You are signed out.")

    @app.get("/", include_in_schema=False)
    def home(request: Request):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        return RedirectResponse("/audit" if s.role == "admin" else "/search", 303)

    # ---------------------------------------------------------- search

    def query_from_form(f: dict[str, str], now_ms: int) -> Query:
        q = Query(plate=f.get("plate") or None, match=f.get("match") or "exact", camera=f.get("camera") or None,
                  site=f.get("site") or None, limit=PAGE_SIZE)
        if f.get("near_lat") or f.get("near_lon") or f.get("near_km"):
            lat, lon, km = floats(f"{f.get('near_lat', '')},{f.get('near_lon', '')},{f.get('near_km', '')}", 3, "near")
            q.near = (lat, lon, km)
        if f.get("box"):
            a, b, c, d = floats(f["box"], 4, "box")
            q.box = (min(a, c), min(b, d), max(a, c), max(b, d))
        until = parse_time(f["to"] + ("" if f["to"].endswith("Z") or "+" in f["to"][10:] else "Z"), "to") if f.get("to") else now_ms
        q.until_ms = until
        if f.get("from"):
            q.since_ms = parse_time(f["from"] + ("" if f["from"].endswith("Z") or "+" in f["from"][10:] else "Z"), "from")
        else:
            days = float(f.get("days") or 1)
            if not 0 < days <= 5 * 365:
                raise ValueError("days: 0 to 1825")
            q.since_ms = until - int(days * DAY_MS)
        page_no = max(1, int(f.get("page") or 1))
        q.offset = (page_no - 1) * PAGE_SIZE
        if f.get("approval"):  # an approval is used once: its movement history comes whole, on one page
            q.limit, q.offset = 500, 0
        return q

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search_page(request: Request):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        with lock:
            cases = open_cases() if s.role != "admin" else []
        return page(request, "search.html", s, cases=cases, f={"days": "1", "match": "exact"}, rows=None,
                    map=svg_map([], cameras(), interactive=True, tiles=tiles))

    def cameras() -> list[tuple[str, str | None, float, float]]:
        """(camera, site, lat, lon) of each fixed camera that has sent a positioned read: where they are, not who passed."""
        rows = gov.s.query("SELECT camera_id, site, lat, lon FROM cameras ORDER BY camera_id LIMIT 500")
        return [(r[0], r[1], float(r[2]), float(r[3])) for r in rows]

    @app.post("/search", response_class=HTMLResponse, include_in_schema=False)
    async def search_post(request: Request):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        f = await form(request, s)
        if isinstance(f, HTMLResponse):
            return f
        ctx: dict[str, Any] = {"f": f, "rows": None, "error": "", "approval_request": "", "note": "", "counts": None}
        with lock:
            ctx["cases"] = open_cases()
            cams = cameras()
            try:
                q = query_from_form(f, gov.now_ms())
                digest = gov.use_policy()[1] if f.get("ack") == "yes" else None
                rows = search(gov, s.user, f.get("case") or None, q, f.get("approval") or None, ack=digest)
                ctx.update(rows=list(rows), counts=rows.counts, note=rows.note, withheld=rows.withheld,
                           page=q.offset // PAGE_SIZE + 1, more=len(rows) == PAGE_SIZE and q.limit == PAGE_SIZE)
                pts = [(r["gps"]["lat"], r["gps"]["lon"], r["time"], r["plate"].get("text", "")) for r in rows
                       if r.get("gps", {}).get("lat") is not None]
                path = bool(q.plate) and s.role != "viewer"
                ctx["map"] = svg_map(pts, cams, path=path, interactive=True, tiles=tiles, box=q.box, near=q.near)
                ctx["history"] = path and (q.until_ms or 0) - (q.since_ms or 0) > gov.p.history_hours * 3_600_000
            except NeedsApproval as e:
                ctx.update(error=str(e).split(":")[0], approval_request=e.request_id)
            except (AccessDenied, ValueError, OverflowError) as e:
                ctx.update(error=str(e).splitlines()[0])
        ctx.setdefault("map", svg_map([], cams, interactive=True, tiles=tiles))
        return page(request, "search.html", s, 200 if not ctx["error"] else 403, **ctx)

    @app.post("/read", response_class=HTMLResponse, include_in_schema=False)
    async def read_page(request: Request):
        """One read the user was shown by a search of theirs (its exposure record names it)."""
        s, why = session(request)
        if s is None:
            return to_signin(why)
        f = await form(request, s)
        if isinstance(f, HTMLResponse):
            return f
        rid, case = f.get("read_id", ""), f.get("case", "")
        with lock:
            try:
                if s.role in ("viewer", "admin"):
                    raise AccessDenied(f"a {s.role} opens no read")
                gov.check_case(case)
                shown = gov.s.one("SELECT 1 FROM exposure WHERE user_name = ? AND read_ids LIKE ? LIMIT 1", (s.user, f'%"{rid}"%'))
                approved = gov.s.one("SELECT 1 FROM audit WHERE actor = ? AND action = 'query' AND detail LIKE ? LIMIT 1",
                                     (s.user, f'%"{rid}"%'))
                if not (shown or approved):
                    raise AccessDenied("open a read from a search of yours that showed it")
                r = gov.s.one("SELECT record, plate_image, vehicle_image FROM reads WHERE read_id = ?", (rid,))
                if r is None:
                    raise ValueError("no such read (retention may have deleted it)")
                rec = json.loads(r[0])
                img = gov.s.image(r[1]) if r[1] else None
                vimg = gov.s.image(r[2]) if r[2] else None
                gov.audit(s.user, "read.view", {"case": case, "read_id": rid, "plate": rec["plate"]["text"]})
            except (AccessDenied, ValueError) as e:
                return page(request, "error.html", s, 403, message=str(e))
        import base64

        crop = base64.b64encode(img).decode() if img else None
        vehicle = base64.b64encode(vimg).decode() if vimg else None
        pts = [(rec["gps"]["lat"], rec["gps"]["lon"], rec["time"], rec["plate"]["text"])] if rec.get("gps", {}).get("lat") is not None else []
        return page(request, "read.html", s, rec=rec, crop=crop, vehicle=vehicle, case=case, map=svg_map(pts, [], tiles=tiles))

    # ---------------------------------------------------------- cases, approvals, alerts, audit

    @app.get("/cases", response_class=HTMLResponse, include_in_schema=False)
    def cases_page(request: Request, done: str = ""):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        try:
            with lock:
                rows = gov.cases(s.user)
        except AccessDenied as e:
            return page(request, "error.html", s, 403, message=str(e))
        return page(request, "cases.html", s, rows=rows, done=done)

    @app.post("/cases", response_class=HTMLResponse, include_in_schema=False)
    async def cases_post(request: Request):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        f = await form(request, s)
        if isinstance(f, HTMLResponse):
            return f
        try:
            with lock:
                act, case = f.get("action"), f.get("case", "").strip()
                if act == "open":
                    gov.open_case(s.user, case, f.get("title", ""))
                elif act == "close":
                    gov.close_case(s.user, case)
                elif act == "hold":
                    n = gov.hold(s.user, case, [x for x in f.get("reads", "").replace(",", " ").split() if x])
                    return RedirectResponse(f"/cases?{urlencode({'done': f'{n} read(s) held for {case}'})}", 303)
                else:
                    raise ValueError("unknown action")
        except (AccessDenied, ValueError) as e:
            return page(request, "error.html", s, 403, message=str(e))
        return RedirectResponse(f"/cases?{urlencode({'done': f'case {case}: {act}'})}", 303)

    @app.get("/approvals", response_class=HTMLResponse, include_in_schema=False)
    def approvals_page(request: Request, done: str = ""):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        try:
            with lock:
                rows = [r for r in gov.pending(s.user) if r[1] != s.user]  # a request is for supervisors other than its requester
        except AccessDenied as e:
            return page(request, "error.html", s, 403, message=str(e))
        return page(request, "approvals.html", s, rows=rows, done=done)

    @app.post("/approvals", response_class=HTMLResponse, include_in_schema=False)
    async def approvals_post(request: Request):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        f = await form(request, s)
        if isinstance(f, HTMLResponse):
            return f
        rid = f.get("request", "")
        try:
            with lock:
                if f.get("decision") == "approve":
                    gov.approve(s.user, rid)
                    done = f"approved {rid}"
                else:
                    gov.deny(s.user, rid, f.get("reason", ""))
                    done = f"denied {rid}"
        except (AccessDenied, ValueError) as e:
            return page(request, "error.html", s, 403, message=str(e))
        return RedirectResponse(f"/approvals?{urlencode({'done': done})}", 303)

    @app.get("/alerts", response_class=HTMLResponse, include_in_schema=False)
    def alerts_page(request: Request, case: str = "", done: str = ""):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        rows, error = None, ""
        with lock:
            cs = open_cases() if s.role in ("investigator", "supervisor") else []
            if case:
                try:
                    rows = alerts.show(s.user, case)
                except (AccessDenied, ValueError) as e:
                    error = str(e)
        return page(request, "alerts.html", s, 403 if error else 200, cases=cs, case=case, rows=rows, error=error, done=done)

    @app.post("/alerts", response_class=HTMLResponse, include_in_schema=False)
    async def alerts_post(request: Request):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        f = await form(request, s)
        if isinstance(f, HTMLResponse):
            return f
        try:
            with lock:
                alerts.ack(s.user, f.get("alert", ""), f.get("note", ""))
        except (AccessDenied, ValueError) as e:
            return page(request, "error.html", s, 403, message=str(e))
        return RedirectResponse(f"/alerts?{urlencode({'case': f.get('case', ''), 'done': 'acknowledged'})}", 303)

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    def audit_page(request: Request, actor: str = "", action: str = "", limit: int = 200):
        s, why = session(request)
        if s is None:
            return to_signin(why)
        if s.role != "admin":
            return page(request, "error.html", s, 403, message="the audit log is for admins")
        with lock:
            sql, params = "SELECT seq, ts, actor, action, detail FROM audit", []
            where = []
            if actor:
                where.append("actor = ?")
                params.append(actor)
            if action:
                where.append("action LIKE ?")
                params.append(action.replace("*", "%") + ("%" if "*" not in action else ""))
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = gov.s.query(sql + " ORDER BY seq DESC LIMIT ?", (*params, max(1, min(int(limit), 2000))))
            problems = gov.verify_audit()
            gov.audit(s.user, "audit.view", {"actor": actor, "action": action, "shown": len(rows)})
        return page(request, "audit.html", s, rows=rows, problems=problems, actor=actor, action=action)

    return app
