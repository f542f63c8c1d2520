"""`edge bench VIDEO [--config FILE]`: the frame rate of the pipeline `edge run --config FILE` would run
(built by edge.runtime.assembly from that config), against the decode-only rate of the same file."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2

from edge.capture.base import Frame
from edge.capture.sources import VideoFileSource
from edge.config import Config
from edge.gps import NoGps
from edge.outbox import Outbox
from edge.runtime.assembly import build_loop, build_stage, describe


def decode_only(path: Path, max_frames: int) -> tuple[int, float]:
    cap = cv2.VideoCapture(str(path))
    n = 0
    t0 = time.perf_counter()
    while n < max_frames:
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    dt = time.perf_counter() - t0
    cap.release()
    return n, dt


class _Limited(VideoFileSource):
    def __init__(self, path: Path, max_frames: int, loop: bool = False):
        super().__init__(path, pace=False, loop=loop)
        self.max_frames = max_frames

    def frames(self) -> Iterator[Frame]:
        for f in super().frames():
            if f.seq >= self.max_frames:
                return
            yield f


def run_bench(path: Path, cfg: Config, max_frames: int = 300, repeats: int = 3, stream=sys.stdout) -> dict:
    stage = build_stage(cfg.pipeline)
    first = _first_frame(path)
    if first is not None:
        stage.detector.detect(first)  # warm-up outside the timing
    dec_fps, pipe_fps, cpu = [], [], []
    stage_ms: dict[str, list[float]] = {}
    reads = n = 0
    for _ in range(repeats):
        n, dt = decode_only(path, max_frames)
        dec_fps.append(n / dt)
        with tempfile.TemporaryDirectory() as td:
            ob = Outbox(Path(td) / "o.db")
            loop = build_loop(cfg, _Limited(path, max_frames), ob, NoGps(), stage, blocking=True)
            c0 = os.times()
            t0 = time.perf_counter()
            loop.run()
            wall = time.perf_counter() - t0
            c1 = os.times()
            pipe_fps.append(loop.health["processed"] / wall)
            cpu.append(((c1.user - c0.user) + (c1.system - c0.system)) / wall * 100)
            for k, v in loop.health.medians().items():
                stage_ms.setdefault(k, []).append(v)
            reads = loop.health["reads"]
            ob.close()
    res: dict[str, Any] = {
        "video": str(path),
        "frames": n,
        "threads": cfg.pipeline.threads,
        "decode_fps": round(statistics.median(dec_fps), 1),
        "pipeline_fps": round(statistics.median(pipe_fps), 1),
        "ratio": round(statistics.median(pipe_fps) / statistics.median(dec_fps), 3),
        "stage_ms": {k: round(statistics.median(v), 2) for k, v in stage_ms.items()},
        "cpu_percent": round(statistics.median(cpu), 0),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "reads": reads,
        "repeats": repeats,
        "models": [p.name for p in stage.model_paths()],
        "regions": list(cfg.pipeline.regions),
    }
    print(f"video            {res['video']} ({res['frames']} frames, median of {repeats})", file=stream)
    for line in describe(stage, cfg.pipeline):
        print(line, file=stream)
    print(f"decode only      {res['decode_fps']:.1f} fps", file=stream)
    print(f"whole pipeline   {res['pipeline_fps']:.1f} fps  ({res['ratio']:.2f}x decode-only)", file=stream)
    for k, v in res["stage_ms"].items():
        print(f"  {k:<14} {v:.2f} ms (median)", file=stream)
    print(f"cpu              {res['cpu_percent']:.0f}% of one core", file=stream)
    print(f"peak memory      {res['peak_rss_mb']:.0f} MB", file=stream)
    print(f"reads            {res['reads']}", file=stream)
    return res


def _first_frame(path: Path):
    cap = cv2.VideoCapture(str(path))
    ok, img = cap.read()
    cap.release()
    return img if ok else None


def run_preview_bench(path: Path, cfg: Config, max_frames: int = 300, repeats: int = 3, stream=sys.stdout) -> dict:
    """`edge bench VIDEO --preview`: the pipeline's frame rate with the preview off, on with no one
    watching, and on with one viewer fetching what the page fetches (the frame and the status, every
    0.7 s), alternated in one run; medians and ratios to off."""
    import threading
    import urllib.request

    from edge.preview import PreviewFeed, serve

    stage = build_stage(cfg.pipeline)
    first = _first_frame(path)
    if first is not None:
        stage.detector.detect(first)
    fps: dict[str, list[float]] = {"off": [], "on, no viewer": [], "on, one viewer": []}
    modes = list(fps)
    for rep in range(repeats):
        for mode in modes[rep % 3:] + modes[:rep % 3]:  # each mode first, second and third in turn
            with tempfile.TemporaryDirectory() as td:
                ob = Outbox(Path(td) / "o.db")
                # the clip played round to max_frames: runs long enough for a viewer's requests to count
                loop = build_loop(cfg, _Limited(path, max_frames, loop=True), ob, NoGps(), stage, blocking=True)
                srv, stop = None, threading.Event()
                if mode != "off":
                    loop.preview = PreviewFeed(cfg.pipeline.min_plate_width)
                    srv = serve("127.0.0.1", 0, loop.preview, "bench", loop.health.snapshot)
                if mode == "on, one viewer" and srv is not None:
                    base = f"http://127.0.0.1:{srv.server_address[1]}"

                    def viewer(base=base, stop=stop):
                        while not stop.is_set():
                            for page in ("/frame.jpg", "/status.json"):
                                with urllib.request.urlopen(base + page, timeout=10) as r:
                                    r.read()
                            stop.wait(0.7)

                    urllib.request.urlopen(base + "/", timeout=10).read()
                    threading.Thread(target=viewer, daemon=True).start()
                t0 = time.perf_counter()
                loop.run()
                wall = time.perf_counter() - t0
                stop.set()
                if srv:
                    srv.shutdown()
                fps[mode].append(loop.health["processed"] / wall)
                ob.close()
    med = {k: statistics.median(v) for k, v in fps.items()}
    print(f"video            {path} ({max_frames} frames, looped, median of {repeats}, modes in turn)", file=stream)
    for k, v in med.items():
        print(f"preview {k:<16} {v:.1f} fps  ({v / med['off']:.3f}x off)", file=stream)
    return {"video": str(path), "repeats": repeats, "fps": {k: round(v, 1) for k, v in med.items()},
            "ratio": {k: round(v / med["off"], 3) for k, v in med.items()}}
