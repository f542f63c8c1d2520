"""The collector's web application (FastAPI, Jinja2 templates, a little plain JavaScript, every asset
served by the app itself): the JSON API (`/v1/...`, bearer tokens, OpenAPI schema at
/openapi.json) and the investigators' pages (search, a read, movement history on a map, cases,
approvals, hotlist alerts, the audit log), all through the collector's governance: the same roles,
cases, approvals, exposure budgets, use policy and audit as the command line.

Sign-in exchanges a user's API token for a session: a random cookie (HttpOnly, SameSite=Strict,
Secure behind TLS) stored hashed, bound to the browser that signed in (a second random cookie of
its own), ending after 30 minutes idle, 8 hours at most, or at sign-out. Every form carries the
session's CSRF token. Failed sign-ins are audited and rate limited as failed API tokens are.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from edge.collector.governance import Governance

HERE = Path(__file__).parent
SESSION_COOKIE, BROWSER_COOKIE = "edge_session", "edge_browser"
IDLE_S, MAX_S = 30 * 60, 8 * 3600


def _h(v: str) -> str:
    return hashlib.sha256(v.encode()).hexdigest()


@dataclass
class Session:
    user: str
    role: str
    csrf: str


class Sessions:
    """Web sessions in the collector's database: any collector instance on it knows them."""

    def __init__(self, gov: Governance, idle_s: float = IDLE_S, max_s: float = MAX_S):
        self.g, self.s = gov, gov.s
        self.idle_ms, self.max_ms = int(idle_s * 1000), int(max_s * 1000)

    def start(self, user: str, browser: str, source: str) -> tuple[str, str]:
        """(cookie value, CSRF token) of a new session for `user` in the browser whose own cookie is `browser`."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = self.g.now_ms()
        self.s.execute("INSERT INTO web_sessions (id_hash, user_name, csrf, browser, created, seen) VALUES (?, ?, ?, ?, ?, ?)",
                       (_h(sid), user, csrf, _h(browser), now, now))
        self.g.audit(user, "session.start", {"source": source})
        return sid, csrf

    def get(self, sid: str | None, browser: str | None, source: str) -> tuple[Session | None, str]:
        """The session, or None and why not ("" when there was no cookie)."""
        if not sid:
            return None, ""
        r = self.s.one("SELECT user_name, csrf, browser, created, seen, ended FROM web_sessions WHERE id_hash = ?", (_h(sid),))
        if r is None:
            return None, "unknown session"
        user, csrf, bound, created, seen, ended = r
        now = self.g.now_ms()
        why = ""
        if ended:
            why = "you signed out there: sign in again"
        elif now - int(seen) > self.idle_ms:
            why = "the sign-in expired (30 minutes without use)"
        elif now - int(created) > self.max_ms:
            why = "the sign-in expired (8 hours after it was made)"
        elif not browser or not hmac.compare_digest(_h(browser), bound):
            why = "this sign-in belongs to another browser"
        if why:
            if not ended:
                self.s.execute("UPDATE web_sessions SET ended = ? WHERE id_hash = ?", (now, _h(sid)))
            self.g.audit(user, "session.refused", {"source": source, "reason": why})
            return None, why
        if now - int(seen) > 10_000:
            self.s.execute("UPDATE web_sessions SET seen = ? WHERE id_hash = ?", (now, _h(sid)))
        try:
            role = self.g.role(user)
        except Exception:
            return None, "the user no longer exists"
        if self.s.one("SELECT token_hash FROM users WHERE name = ?", (user,))[0] is None:
            self.end(sid, user, "token revoked")
            return None, "the user's token was revoked"
        return Session(user, role, csrf), ""

    def end(self, sid: str, user: str, why: str = "signed out") -> None:
        self.s.execute("UPDATE web_sessions SET ended = ? WHERE id_hash = ? AND ended IS NULL", (self.g.now_ms(), _h(sid)))
        self.g.audit(user, "session.end", {"reason": why})


class Server:
    """The app under uvicorn, on a socket bound here (port 0: any free one), with the small interface
    http.server's had: serve_forever(), shutdown(), server_close(), server_address."""

    def __init__(self, app, host: str, port: int, certfile: str | None = None, keyfile: str | None = None):
        import socket

        import uvicorn

        self.sock = socket.create_server((host, port), reuse_port=False)
        self.server_address = self.sock.getsockname()[:2]
        self.uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                ssl_certfile=certfile, ssl_keyfile=keyfile))
        self._done = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.uv.run(sockets=[self.sock])
        finally:
            self._done.set()

    def shutdown(self) -> None:
        self.uv.should_exit = True
        self._done.wait(10)

    def server_close(self) -> None:
        self.sock.close()


def make_server(gov: Governance, host: str, port: int, health=None, tiles: str | None = None, certfile: str | None = None,
                keyfile: str | None = None) -> Server:
    """With certfile and keyfile the app speaks HTTPS (its cookies are then Secure)."""
    from edge.collector.web.app import create_app

    return Server(create_app(gov, health=health, tiles=tiles), host, port, certfile, keyfile)
