"""The one request handler base the device's and the collector's small HTTP servers share: quiet
(the audit log or the service log is the record), every answer with its length and `no-store`."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def reply(self, code: int, body: dict | list) -> None:
        self.send(code, json.dumps(body).encode(), "application/json")
