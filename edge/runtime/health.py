"""What the device reports about itself: counters and stage times kept by the frame loop, read by the
heartbeat and the MQTT health message from their own threads."""

from __future__ import annotations

import bisect
import collections
import logging
import resource
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from edge.record import iso_utc

log = logging.getLogger("edge.health")
KEEP_TIMES = 200  # stage times kept per stage for the medians
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)  # the stage-time histograms' bounds


class Health:
    """A registry safe to read from any thread: counters, stage times, and providers (functions
    asked for their part when a snapshot is taken; one that raises shows as its error, the snapshot
    is still made)."""

    def __init__(self, device_id: str):
        self.device_id = device_id
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._times: dict[str, collections.deque[float]] = {}
        self._hist: dict[str, tuple[list[int], list[float]]] = {}  # stage -> (count per bucket and over, [sum])
        self._providers: dict[str, Callable[[], Any]] = {}

    def count(self, name: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counts[name] += int(n)

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def time(self, name: str, ms: float) -> None:
        i = bisect.bisect_left(BUCKETS_MS, ms)
        with self._lock:
            self._times.setdefault(name, collections.deque(maxlen=KEEP_TIMES)).append(ms)
            h = self._hist.get(name)
            if h is None:
                h = self._hist[name] = ([0] * (len(BUCKETS_MS) + 1), [0.0])
            h[0][i] += 1
            h[1][0] += ms

    def histograms(self) -> dict[str, tuple[tuple[int, ...], list[int], float]]:
        """Per stage since start: (bucket bounds in ms, count per bucket and over the last, sum of ms)."""
        with self._lock:
            return {k: (BUCKETS_MS, list(c), t[0]) for k, (c, t) in self._hist.items()}

    def medians(self) -> dict[str, float]:
        with self._lock:
            return {k: round(statistics.median(v), 2) for k, v in self._times.items() if v}

    def provide(self, name: str, fn: Callable[[], Any]) -> None:
        with self._lock:
            self._providers[name] = fn

    def snapshot(self) -> dict[str, Any]:
        up = max(1e-6, time.monotonic() - self.started)
        counts = self.counts()
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "time": iso_utc(),
            "uptime_s": round(up, 1),
            "fps_captured": round(counts.get("captured", 0) / up, 2),
            "fps_processed": round(counts.get("processed", 0) / up, 2),
            "frames": counts,
            "stage_ms": self.medians(),
            "cpu_temp_c": cpu_temperature(),
            "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        with self._lock:
            providers = dict(self._providers)
        for name, fn in providers.items():
            try:
                out[name] = fn()
            except Exception as e:  # one broken part must not take the others' report with it
                out[name] = {"error": f"{type(e).__name__}: {e}"}
        return out


def cpu_temperature() -> float | None:
    try:
        with open("/sys/class/thermal/thermal_zone0/temp") as f:
            return round(int(f.read().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None
