"""Prometheus metrics (prometheus-client's exposition format) and a liveness answer.

The device: `[metrics] listen = "127.0.0.1:9108"` serves `GET /metrics` (what the frame loop, the
outbox and the GPS report, read from `edge.runtime.health.Health` when scraped: nothing is done per
frame beyond what the health report keeps) and `GET /healthz` ({"ok": true}, nothing else). Bound
beyond loopback, /metrics needs `Authorization: Bearer <token>` (`[metrics] token_file`).

The collector: `edge collect --http` serves the same two paths; its /metrics (received, stored,
duplicates, conflicts, rejects by reason, ingest lag, audit entries by action, approvals waiting,
the audit head) needs a supervisor's or an admin's token, as /v1/health does.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge.httpserve import Handler as BaseHandler


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class DeviceMetrics:
    """A prometheus-client collector over a device's Health: asked on each scrape."""

    def __init__(self, health):
        self.health = health

    def collect(self) -> Iterable[Metric]:
        h = self.health.snapshot()
        dev = h.get("device_id", "")
        events = CounterMetricFamily("edge_pipeline_events", "frame loop events by kind (captured, processed, reads, "
                                     "idle, skipped, detections, ...)", labels=["device", "event"])
        for name, n in sorted(h.get("frames", {}).items()):
            events.add_metric([dev, name], n)
        yield events
        for key, doc in (("fps_captured", "frames captured per second since start"),
                         ("fps_processed", "frames through the pipeline per second since start"),
                         ("uptime_s", "seconds since the device process started"),
                         ("cpu_temp_c", "CPU temperature, Celsius"), ("rss_mb", "peak resident memory, MB"),
                         ("queue_depth", "frames waiting for the pipeline"),
                         ("outbox_backlog", "reads in the outbox, not yet delivered"),
                         ("receipts_pending", "reads the broker took, waiting for the collector's receipt"),
                         ("gps_fix_age_s", "seconds since the GPS fix in use was taken")):
            v = _number(h.get(key))
            if v is not None:
                g = GaugeMetricFamily(f"edge_{key}", doc, labels=["device"])
                g.add_metric([dev], v)
                yield g
        dropped = _number(h.get("frames_dropped"))
        if dropped is not None:
            c = CounterMetricFamily("edge_frames_dropped", "frames dropped because the pipeline was busy", labels=["device"])
            c.add_metric([dev], dropped)
            yield c
        ob = h.get("outbox")
        if isinstance(ob, dict) and "error" not in ob:
            c = CounterMetricFamily("edge_outbox_records", "outbox records by outcome (accepted, delivered, dropped_*)",
                                    labels=["device", "outcome"])
            for name, n in sorted(ob.items()):
                c.add_metric([dev, name], n)
            yield c
        gps = h.get("gps")
        if isinstance(gps, str):
            g = GaugeMetricFamily("edge_gps_status", "1 for the GPS state now (ok, stale, missing)", labels=["device", "status"])
            for s in ("ok", "stale", "missing"):
                g.add_metric([dev, s], 1.0 if gps == s else 0.0)
            yield g
        for stage, (bounds, counts, total) in sorted(self.health.histograms().items()):
            hist = HistogramMetricFamily(f"edge_stage_{stage.removesuffix('_ms')}_ms", f"time per frame in {stage}, ms",
                                         labels=["device"])
            cum, buckets = 0, []
            for b, n in zip(bounds, counts, strict=False):
                cum += n
                buckets.append((repr(float(b)), cum))
            buckets.append(("+Inf", sum(counts)))
            hist.add_metric([dev], buckets, total)
            yield hist


class CollectorMetrics:
    """A prometheus-client collector over the collector's store and audit log: asked on each scrape."""

    def __init__(self, store, health: Callable[[], dict] | None = None):
        self.store, self.health = store, health

    def collect(self) -> Iterable[Metric]:
        s = self.store
        c = s.counters()
        for key, doc in (("received", "messages taken from the broker"), ("stored", "reads stored"),
                         ("duplicate", "reads received again (stored once)"),
                         ("conflict", "stored read ids sent again with other content: possible forgeries"),
                         ("rejected", "messages refused by ingest"), ("alerts", "hotlist alerts stored"),
                         ("alerts_flagged", "alerts stored flagged (entry expired or withdrawn, plate not confirmed, "
                                            "other region)")):
            m = CounterMetricFamily(f"edge_collector_{key}", doc)
            m.add_metric([], c.get(key, 0))
            yield m
        rej = CounterMetricFamily("edge_collector_rejects", "rejected messages held, by reason", labels=["reason"])
        for reason, n in s.query("SELECT reason, COUNT(*) FROM rejects GROUP BY reason"):
            rej.add_metric([str(reason).split(":")[0][:60]], n)
        yield rej
        audit = CounterMetricFamily("edge_collector_audit_entries", "audit entries by action (queries, refusals, "
                                    "approvals, logins failed, ...)", labels=["action"])
        for action, n in s.query("SELECT action, COUNT(*) FROM audit GROUP BY action"):
            audit.add_metric([action], n)
        yield audit
        head = s.one("SELECT MAX(seq) FROM audit")
        g = GaugeMetricFamily("edge_collector_audit_head_seq", "the audit log's last entry")
        g.add_metric([], float(head[0] or 0))
        yield g
        pending = s.one("SELECT COUNT(*) FROM approvals WHERE approver IS NULL")
        g = GaugeMetricFamily("edge_collector_approvals_pending", "movement-history requests waiting for a supervisor")
        g.add_metric([], float(pending[0]))
        yield g
        unacked = s.one("SELECT COUNT(*) FROM alerts WHERE acked IS NULL")
        g = GaugeMetricFamily("edge_collector_alerts_unacknowledged", "alerts no officer has acknowledged yet")
        g.add_metric([], float(unacked[0]))
        yield g
        active = s.one("SELECT COUNT(*) FROM hotlist WHERE approved IS NOT NULL AND removed IS NULL AND expires > ?",
                       (int(time.time() * 1000),))
        g = GaugeMetricFamily("edge_collector_hotlist_entries", "hotlist entries in force")
        g.add_metric([], float(active[0]))
        yield g
        lag = (self.health() if self.health else {}).get("lag_ms_median")
        if lag is not None:
            g = GaugeMetricFamily("edge_collector_ingest_lag_ms", "median of the last reads' time from the device to storage")
            g.add_metric([], float(lag))
            yield g


def render(collector) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return generate_latest(reg)


CONTENT_TYPE = CONTENT_TYPE_LATEST


def serve(host: str, port: int, collector, token: str | None = None) -> ThreadingHTTPServer:
    """/metrics and /healthz on host:port in a thread of their own; /metrics wants the token when
    one is given. The server is returned (shutdown() stops it)."""

    class Handler(BaseHandler):
        server_version = "edge-metrics"

        def do_GET(self):  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                return self.send(200, b'{"ok": true}', "application/json")
            if path != "/metrics":
                return self.send(404, json.dumps({"error": f"no such endpoint {path}"}).encode(), "application/json")
            if token is not None:
                given = self.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    return self.send(401, b'{"error": "authentication required: Authorization: Bearer <token>"}',
                                      "application/json")
            try:
                body = render(collector)
            except Exception as e:  # a scrape gets an answer, never a dropped connection
                return self.send(500, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode(), "application/json")
            return self.send(200, body, CONTENT_TYPE)

    srv = ThreadingHTTPServer((host, port), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="metrics", daemon=True).start()
    return srv
