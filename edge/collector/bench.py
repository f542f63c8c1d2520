"""Ingest throughput: validated, de-duplicated, stored reads per second, each with its own 20 KB plate image."""

from __future__ import annotations

import base64
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np

from edge.collector.ingest import Ingestor
from edge.collector.store import Store
from edge.record import uuid7


def jpeg_of_size(target: int = 20_000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (120, 240, 3), dtype=np.uint8), (3, 3), 0)
    lo, hi = 5, 100
    best = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    while lo <= hi:  # the lowest quality that reaches the target size
        q = (lo + hi) // 2
        data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()
        if len(data) >= target:
            best, hi = data, q - 1
        else:
            lo = q + 1
    return best


def unique_jpeg(base: bytes, i: int) -> bytes:
    """A distinct JPEG of the same size and content: a comment segment carrying the number after the start marker."""
    tag = f"read {i:012d}".encode()
    return base[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag + base[2:]


def payload(i: int, image_b64: str, now: datetime) -> bytes:
    t = now.isoformat()
    text = f"B{i % 100000:05d}X"[:8]
    return (
        '{"schema":"lpr.read/1","read_id":"%s","time":"%s","plate":{"text":"%s","confidence":0.95,'
        '"char_confidences":[0.9,0.9,0.9,0.9,0.9,0.9,0.9],"box":{"x1":1,"y1":2,"x2":60,"y2":20}},'
        '"images":{"plate_jpeg":"%s"},"track":{"first_seen":"%s","last_seen":"%s","frames":5},'
        '"gps":{"status":"ok","lat":47.0,"lon":15.0,"source":"fixed"},"camera":{"id":"cam-%d","owner":"bench"},'
        '"device":{"id":"dev-%d","software":"0.1.0","detector_model":"d","reader_model":"r"}}'
        % (uuid7(), t, text, image_b64, t, t, i % 8, i % 8)
    ).encode()


def run(store: Store, n: int = 3000, batch: int = 100, stream=sys.stdout) -> dict:
    ing = Ingestor(store)
    now = datetime.now(UTC)
    # a distinct image for every read (as every pass's crop is), about 20 KB each
    base = jpeg_of_size(20_000)
    imgs = [base64.b64encode(unique_jpeg(base, i)).decode() for i in range(n)]
    msgs = [(f"lpr/v1/dev-{i % 8}/reads", payload(i, imgs[i], now)) for i in range(n)]
    rates = []
    stored = 0
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    for r in ing.pipeline(msgs[i : i + batch] for i in range(0, n, batch)):  # as the collector's two threads do
        stored += r.stored
        t1 = time.perf_counter()
        rates.append(len(r.outcomes) / (t1 - t0))
        t0 = t1
    total = time.perf_counter() - t_all
    if stored != n:
        raise RuntimeError(f"bench: only {stored} of {n} reads were stored")
    res: dict[str, Any] = {"engine": store.engine, "reads": n, "batch": batch, "image_bytes": len(base),
           "reads_per_s": round(n / total, 1), "batch_rate_median": round(statistics.median(rates), 1)}
    print(f"ingest {store.engine}: {n} reads with ~{res['image_bytes'] // 1000} KB images in batches of {batch}: "
          f"{res['reads_per_s']:.0f} reads/s overall (median batch {res['batch_rate_median']:.0f} reads/s)", file=stream)
    return res
