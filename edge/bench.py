"""`edge bench VIDEO`: whole-pipeline frame rate against the decode-only rate of the same file."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

from edge.capture.sources import VideoFileSource
from edge.gps import NoGps
from edge.outbox import Outbox
from edge.record import Camera
from edge.service import Identity, Pipeline, PipelineOptions


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
    def __init__(self, path, max_frames):
        super().__init__(path, pace=False)
        self.max_frames = max_frames

    def frames(self):
        for f in super().frames():
            if f.seq >= self.max_frames:
                return
            yield f


def run_bench(path: Path, threads: int = 1, max_frames: int = 300, repeats: int = 3, motion_gate: bool = False,
              stream=sys.stdout, int8: str = "none", refine: bool = True) -> dict:
    from edge.vision.recognizer import PlateRecognizer, RecognizerConfig, model_files

    det_file, reader_file = model_files(int8)
    rec = PlateRecognizer(RecognizerConfig(threads=threads, detector_file=det_file, reader_file=reader_file, refine=refine))
    rec.detector.detect(_first_frame(path))  # warm-up outside the timing
    dec_fps, pipe_fps, cpu = [], [], []
    stage: dict[str, list[float]] = {}
    reads = 0
    for _ in range(repeats):
        n, dt = decode_only(path, max_frames)
        dec_fps.append(n / dt)
        with tempfile.TemporaryDirectory() as td:
            ob = Outbox(Path(td) / "o.db")
            src = _Limited(path, max_frames)
            pl = Pipeline(src, rec, ob, Identity("bench", Camera(id="bench", owner="bench")), NoGps(),
                          PipelineOptions(motion_gate=motion_gate, topic="bench"))
            c0 = os.times()
            t0 = time.perf_counter()
            pl.run(blocking_queue=True)
            wall = time.perf_counter() - t0
            c1 = os.times()
            pipe_fps.append(pl.counts["processed"] / wall)
            cpu.append(((c1.user - c0.user) + (c1.system - c0.system)) / wall * 100)
            for k, v in pl.times.medians().items():
                stage.setdefault(k, []).append(v)
            reads = pl.counts["reads"]
            ob.close()
    res = {
        "video": str(path),
        "frames": n,
        "threads": threads,
        "decode_fps": round(statistics.median(dec_fps), 1),
        "pipeline_fps": round(statistics.median(pipe_fps), 1),
        "ratio": round(statistics.median(pipe_fps) / statistics.median(dec_fps), 3),
        "stage_ms": {k: round(statistics.median(v), 2) for k, v in stage.items()},
        "cpu_percent": round(statistics.median(cpu), 0),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "reads": reads,
        "repeats": repeats,
        "models": [det_file, reader_file],
    }
    print(f"video            {res['video']} ({res['frames']} frames, {threads} inference thread(s), median of {repeats})", file=stream)
    print(f"models           {det_file} + {reader_file}", file=stream)
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
    return img
