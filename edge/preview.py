"""The device preview: a page to aim and focus the camera (`[preview] enabled = true`, `edge run` and
`edge replay`; bound to 127.0.0.1 by default, a token required anywhere else).

    GET /            the page (it says it shows live video of people, and that each opening is logged)
    GET /frame.jpg   the latest frame with the detector's boxes, the cuts read, the text and its
                     confidence, and the motion gate's state, drawn when asked for
    GET /status.json per plate in view: width in pixels against the reader's minimum and ideal,
                     sharpness (variance of the Laplacian on the crop), exposure; the last reads with
                     their crops; health (fps, decode, drops, queue, outbox, receipts, GPS, CPU, memory)

The frame loop leaves the latest frame and what it found only while someone has asked in the last
few seconds: with no one watching it costs the loop one clock read per frame. Frames are never
written to disk. Each opening of the page is logged (address, time, whether a token was given).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import deque
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

from edge.httpserve import Handler as BaseHandler

log = logging.getLogger("edge.preview")
WATCH_S = 5.0  # the loop keeps feeding the preview this long after the last request
IDEAL_PLATE_PX = 130  # a plate this wide reads best (the reader's input is 128-wide-ish crops)
BOX, CUT, TEXT = (0, 200, 255), (0, 255, 0), (255, 255, 255)


class PreviewFeed:
    """What the frame loop hands the preview: written by the loop, read by the server's threads."""

    def __init__(self, min_plate_px: int = 0):
        self.min_plate_px = min_plate_px
        self._asked = 0.0
        self._lock = threading.Lock()
        self._latest: tuple | None = None  # (frame, candidates or None, motion state)
        self.reads: deque[dict] = deque(maxlen=6)

    def watching(self) -> bool:
        return time.monotonic() - self._asked < WATCH_S

    def asked(self) -> None:
        self._asked = time.monotonic()

    def frame(self, frame, candidates, motion: str) -> None:
        with self._lock:
            self._latest = (frame, candidates, motion)

    def read(self, rec) -> None:
        self.reads.appendleft({"plate": rec.plate.text, "confidence": rec.plate.confidence, "time": rec.time.isoformat(),
                               "crop": rec.images.plate_jpeg})

    def latest(self):
        with self._lock:
            return self._latest


def plates_in_view(frame, c, min_px: int) -> list[dict]:
    """The aiming aid per box: width against the minimum and the ideal, sharpness, exposure."""
    out: list[dict] = []
    if c is None:
        return out
    img = frame.full_image
    gray_all = None
    for i in range(len(c)):
        x1, y1, x2, y2 = (int(round(v)) for v in c.refined[i])
        x1, y1 = max(0, x1), max(0, y1)
        x2, y2 = min(img.shape[1], x2), min(img.shape[0], y2)
        if x2 - x1 < 4 or y2 - y1 < 4:
            continue
        if gray_all is None:
            gray_all = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
        crop = gray_all[y1:y2, x1:x2]
        sharp = float(cv2.Laplacian(crop, cv2.CV_64F).var())
        mean = float(crop.mean())
        r = c.text(i)
        width = x2 - x1
        hints = []
        if min_px and width < min_px:
            hints.append("too small to be read: zoom in or move closer")
        elif width < IDEAL_PLATE_PX * 0.6:
            hints.append("small: reads improve up to about 130 px wide")
        if sharp < 60:
            hints.append("soft: turn the focus ring (or shorten the exposure if it moves)")
        if mean < 50:
            hints.append("dark: more light or a longer exposure")
        elif mean > 210:
            hints.append("bright: shorter exposure")
        out.append({"text": r.text if r else None, "confidence": round(float(r.confidence), 3) if r else None,
                    "width_px": width, "min_px": min_px, "ideal_px": IDEAL_PLATE_PX, "sharpness": round(sharp, 1),
                    "brightness": round(mean, 1), "hints": hints})
    return out


def annotate(frame, c, motion: str) -> bytes:
    img = frame.full_image.copy()
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    scale = max(1.0, img.shape[1] / 1280)
    if c is not None:
        for i in range(len(c)):
            bx = tuple(int(v) for v in c.boxes[i])
            cv2.rectangle(img, bx[:2], bx[2:], BOX, max(1, int(2 * scale)))
            rx = tuple(int(v) for v in c.refined[i])
            cv2.rectangle(img, rx[:2], rx[2:], CUT, max(1, int(2 * scale)))
            r = c.text(i)
            if r is not None:
                label = f"{r.text} {float(r.confidence):.2f}"
                org = (rx[0], max(12, rx[1] - int(6 * scale)))
                cv2.putText(img, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, (0, 0, 0), int(4 * scale))
                cv2.putText(img, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, TEXT, max(1, int(2 * scale)))
    cv2.putText(img, f"motion gate: {motion}", (10, int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, (0, 0, 0),
                int(4 * scale))
    cv2.putText(img, f"motion gate: {motion}", (10, int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, TEXT,
                max(1, int(2 * scale)))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes() if ok else b""


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Preview: {device}</title>
<style>body{{font:14px sans-serif;margin:12px;background:#111;color:#eee}}img.f{{max-width:100%;border:1px solid #444}}
table{{border-collapse:collapse}}td,th{{padding:2px 8px;border-bottom:1px solid #333;text-align:left}}
.warn{{background:#402;padding:6px;margin:6px 0}} .crop{{height:32px}}</style></head><body>
<div class="warn">This page shows live video of people passing the camera. Every opening of it is logged
(address and time). Use it to aim and focus the camera, nothing else; no frame is kept.</div>
<h2>Device {device}</h2>
<img class="f" id="frame" alt="latest frame" src="frame.jpg{q}">
<h3>Plates in view</h3><table><thead><tr><th>text</th><th>conf</th><th>width px (min / ideal)</th><th>sharpness</th>
<th>brightness</th><th>hints</th></tr></thead><tbody id="plates"></tbody></table>
<h3>Last reads</h3><table><tbody id="reads"></tbody></table>
<h3>Health</h3><table><tbody id="health"></tbody></table>
<script>
const q = "{q}";
function cell(t) {{ const d = document.createElement("td"); d.textContent = t; return d; }}
function row(cells) {{ const r = document.createElement("tr"); cells.forEach(c => r.appendChild(c)); return r; }}
async function tick() {{
  document.getElementById("frame").src = "frame.jpg" + q + (q ? "&" : "?") + "t=" + Date.now();
  try {{
    const s = await (await fetch("status.json" + q)).json();
    const p = document.getElementById("plates"); p.replaceChildren();
    for (const x of s.plates) p.appendChild(row([cell(x.text || "?"), cell(x.confidence ?? ""),
      cell(x.width_px + " (" + x.min_px + " / " + x.ideal_px + ")"), cell(x.sharpness), cell(x.brightness), cell(x.hints.join("; "))]));
    const r = document.getElementById("reads"); r.replaceChildren();
    for (const x of s.reads) {{ const img = document.createElement("img"); img.className = "crop";
      if (x.crop) img.src = "data:image/jpeg;base64," + x.crop; const c = document.createElement("td"); c.appendChild(img);
      r.appendChild(row([cell(x.time), cell(x.plate), cell(x.confidence), c])); }}
    const h = document.getElementById("health"); h.replaceChildren();
    for (const [k, v] of Object.entries(s.health)) h.appendChild(row([cell(k), cell(typeof v === "object" ? JSON.stringify(v) : v)]));
  }} catch (e) {{}}
}}
tick(); setInterval(tick, 700);
</script></body></html>"""


def serve(host: str, port: int, feed: PreviewFeed, device_id: str, health, token: str | None = None) -> ThreadingHTTPServer:
    """The preview on host:port in threads of its own; returned (shutdown() stops it)."""

    class Handler(BaseHandler):
        server_version = "edge-preview"

        def do_GET(self):  # noqa: N802
            url = urlparse(self.path)
            given = parse_qs(url.query).get("token", [""])[-1] or self.headers.get("Authorization", "").removeprefix("Bearer ")
            if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
                if url.path == "/":
                    log.warning("preview: refused an opening from %s (no or wrong token)", self.client_address[0])
                return self.send(401, b"preview: a token is required (?token=...)\n", "text/plain")
            feed.asked()
            if url.path == "/":
                log.info("preview opened from %s at %s%s", self.client_address[0], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         " (token)" if token else "")
                q = f"?token={given}" if token else ""
                return self.send(200, PAGE.format(device=device_id, q=q).encode(), "text/html; charset=utf-8")
            latest = feed.latest()
            if url.path == "/frame.jpg":
                if latest is None:
                    blank = np.zeros((90, 320, 3), np.uint8)
                    cv2.putText(blank, "waiting for a frame", (10, 50), cv2.FONT_HERSHEY_SIMPLEX, 0.7, TEXT, 2)
                    return self.send(200, cv2.imencode(".jpg", blank)[1].tobytes(), "image/jpeg")
                return self.send(200, annotate(*latest), "image/jpeg")
            if url.path == "/status.json":
                h = health()
                body = {"device": device_id, "motion": latest[2] if latest else None,
                        "plates": plates_in_view(latest[0], latest[1], feed.min_plate_px) if latest else [],
                        "reads": list(feed.reads),
                        "health": {k: h.get(k) for k in ("fps_captured", "fps_processed", "frames_dropped", "queue_depth",
                                                          "outbox_backlog", "receipts_pending", "gps", "gps_fix_age_s", "cpu_temp_c",
                                                          "rss_mb",
                                                          "stage_ms", "source")}}
                return self.send(200, json.dumps(body, default=str).encode(), "application/json")
            return self.send(404, b"no such page\n", "text/plain")

    srv = ThreadingHTTPServer((host, port), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="preview", daemon=True).start()
    return srv
