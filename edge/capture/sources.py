from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.capture.base import CaptureError, Frame, FrameSource

log = logging.getLogger("edge.capture")


TRUNCATED_SLACK = 2  # containers may state a frame or two more than decode


class VideoFileSource(FrameSource):
    """Plays a video file at its recorded frame rate (`pace`), or as fast as it decodes."""

    name = "file"

    def __init__(
        self,
        path: str | Path,
        pace: bool = True,
        loop: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        stop: threading.Event | None = None,
        start_frame: int = 0,
        utc0: datetime | None = None,
    ):
        self.path = Path(path)
        if not self.path.exists():
            raise CaptureError(f"video file not found: {self.path}")
        if self.path.is_dir():
            raise CaptureError(f"not a video file (a folder): {self.path}")
        self.cap = cv2.VideoCapture(str(self.path))
        if not self.cap.isOpened():
            raise CaptureError(f"cannot open video {self.path}: OpenCV cannot decode it")
        ok, first = self.cap.read()
        if not ok or first is None:
            self.cap.release()
            raise CaptureError(f"cannot read video {self.path}: no decodable frames")
        self.start_frame = 0
        if start_frame > 0:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, start_frame)
            ok, img = self.cap.read()
            if ok and img is not None:
                first, self.start_frame = img, start_frame
        self._first: np.ndarray | None = first
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 1 <= fps <= 240 else 25.0
        self.pace, self.loop = pace, loop
        self.clock, self.sleep, self.wall = clock, sleep, wall
        self.utc0 = utc0
        self.stop_event = stop or threading.Event()
        self.decoded = 0
        n = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.claimed = int(n) if n and n > 0 else None  # the frame count the container states
        self.truncated: tuple[int, int] | None = None  # (frames decoded, frames stated) when it ended early

    def frames(self) -> Iterator[Frame]:
        seq = self.start_frame
        t0 = self.clock() - seq / self.fps
        # the wall time of frame 0: now, for a paced replay (its frames then happen now); a fast one
        # runs ahead of the clock, so its clip is placed to end now, and no read is stamped in the future
        if self.utc0 is None and not self.pace and self.claimed:
            self.utc0 = self.wall() - timedelta(seconds=self.claimed / self.fps)
        utc0 = self.utc0 or self.wall()
        self.utc0 = utc0
        while not self.stop_event.is_set():
            if self._first is not None:
                img, self._first = self._first, None
            else:
                ok, img = self.cap.read()
                if not ok or img is None:
                    if self.loop and seq > 0:
                        self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                        ok, img = self.cap.read()  # frame numbers keep counting across loops
                    if not ok or img is None:
                        self._ended(seq)
                        return
            self.decoded += 1
            vt = seq / self.fps
            if self.pace:
                delay = t0 + vt - self.clock()
                if delay > 0:
                    self.sleep(delay)
            yield Frame(seq, t0 + vt, utc0 + timedelta(seconds=vt), img)
            seq += 1

    def _ended(self, seq: int) -> None:
        """The file ended at frame `seq`: say so when that is short of what the container states
        (a truncated or damaged file: the reads of its missing part are missing too)."""
        if self.claimed and seq < self.claimed - TRUNCATED_SLACK:
            self.truncated = (seq, self.claimed)
            log.warning("video %s ended after %d of its %d frames (truncated or damaged file)", self.path, seq, self.claimed)

    def close(self) -> None:
        self.cap.release()

    def stats(self) -> dict:
        return {"decoded": self.decoded, **({"truncated_at": self.truncated[0]} if self.truncated else {})}


def _is_device(source: str) -> bool:
    return source.isdigit() or source.startswith("/dev/video")


class OpenCVSource(FrameSource):
    """A USB/V4L2 camera or an RTSP/HTTP stream; reopened with back-off when it goes away."""

    name = "opencv"

    def __init__(
        self,
        source: str,
        width: int = 1280,
        height: int = 720,
        fps: float = 15,
        retry_max_s: float = 30.0,
        stop: threading.Event | None = None,
        open_timeout_s: float = 10.0,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.source, self.width, self.height, self.fps = source, width, height, fps
        self.retry_max_s = retry_max_s
        self.open_timeout_s = open_timeout_s
        self.stop_event = stop or threading.Event()
        self.wall = wall
        self.reconnects = 0
        self.state = "closed"
        self.cap: cv2.VideoCapture | None = None
        if source.startswith("/dev/") and not os.path.exists(source):
            raise CaptureError(f"camera {source} not found (is it plugged in? ls /dev/video*)")
        self.cap = self._open()
        if self.cap is None:
            raise CaptureError(f"cannot open camera {source}")

    def _open(self) -> cv2.VideoCapture | None:
        src: int | str = int(self.source) if self.source.isdigit() else self.source
        # a stalled stream must not block forever: bounded open and read times
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000]
        if _is_device(self.source):
            cap = cv2.VideoCapture(src, cv2.CAP_V4L2)
        else:
            cap = cv2.VideoCapture(src, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            return None
        if _is_device(self.source):
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.state = "open"
        return cap

    def frames(self) -> Iterator[Frame]:
        seq = 0
        delay = 0.5
        while not self.stop_event.is_set():
            if self.cap is None:
                self.state = "retrying"
                log.warning("camera %s unavailable; retrying in %.1f s", self.source, delay)
                if self.stop_event.wait(delay):
                    return
                delay = min(delay * 2, self.retry_max_s)
                self.cap = self._open()
                if self.cap is not None:
                    self.reconnects += 1
                    log.info("camera %s is back", self.source)
                continue
            ok, img = self.cap.read()
            if not ok or img is None:
                self.cap.release()
                self.cap = None
                continue
            delay = 0.5
            yield Frame(seq, time.monotonic(), self.wall(), img)
            seq += 1

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()

    def stats(self) -> dict:
        return {"state": self.state, "reconnects": self.reconnects}


class PiCameraSource(FrameSource):
    """Raspberry Pi CSI camera through picamera2 (imported lazily: apt python3-picamera2).

    Runs two streams from one request: a low-resolution one for the detector and the full
    resolution one from which plates are cropped. Short exposure for moving vehicles.
    """

    name = "picamera2"

    def __init__(self, width=1920, height=1080, lores_width=640, fps=15.0, exposure_us: int | None = 2000,
                 stop: threading.Event | None = None, retry_max_s: float = 30.0):
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise CaptureError(
                "picamera2 is not installed: on Raspberry Pi OS `apt install python3-picamera2` and make the venv with "
                "--system-site-packages"
            ) from None
        self._Picamera2 = Picamera2
        self.size = (width, height)
        lw = lores_width - lores_width % 2
        lh = int(round(height * lw / width)) // 2 * 2
        self.lores = (lw, lh)
        self.fps = fps
        self.exposure_us = exposure_us
        self.stop_event = stop or threading.Event()
        self.retry_max_s = retry_max_s
        self.cam: Any = None
        self.reconnects = 0
        self._start()

    def _start(self) -> None:
        try:
            if not self._Picamera2.global_camera_info():
                raise CaptureError("no Pi camera detected (check the ribbon cable and `rpicam-hello --list-cameras`)")
            cam = self._Picamera2()
            controls = {"FrameRate": self.fps}
            if self.exposure_us:
                controls.update({"ExposureTime": int(self.exposure_us), "AeEnable": False, "AnalogueGain": 4.0})
            cfg = cam.create_video_configuration(main={"size": self.size, "format": "RGB888"},
                                                 lores={"size": self.lores, "format": "YUV420"}, controls=controls, buffer_count=4)
            cam.configure(cfg)
            cam.start()
            self.cam = cam
        except CaptureError:
            raise
        except Exception as e:  # libcamera raises many kinds
            raise CaptureError(f"cannot start the Pi camera: {e}") from None

    def frames(self) -> Iterator[Frame]:
        seq = 0
        delay = 0.5
        while not self.stop_event.is_set():
            try:
                req = self.cam.capture_request()
                try:
                    lo = req.make_array("lores")
                    full = req.make_array("main")  # RGB888 in picamera2 is BGR byte order
                finally:
                    req.release()
            except Exception as e:
                log.warning("Pi camera failed (%s); restarting in %.1f s", e, delay)
                try:
                    self.cam.close()
                except Exception:
                    pass
                if self.stop_event.wait(delay):
                    return
                delay = min(delay * 2, self.retry_max_s)
                try:
                    self._start()
                    self.reconnects += 1
                except CaptureError as ce:
                    log.warning("%s", ce)
                continue
            delay = 0.5
            h = self.lores[1]
            small = cv2.cvtColor(lo[: h * 3 // 2], cv2.COLOR_YUV2BGR_I420)
            yield Frame(seq, time.monotonic(), datetime.now(UTC), small, full)
            seq += 1

    def close(self) -> None:
        if self.cam is not None:
            try:
                self.cam.stop()
                self.cam.close()
            except Exception:
                pass

    def stats(self) -> dict:
        return {"reconnects": self.reconnects}


def open_source(source: str, *, pace: bool = True, loop: bool = False, width: int = 1280, height: int = 720,
                fps: float = 15, exposure_us: int | None = 2000, lores_width: int = 640, retry_max_s: float = 30.0,
                stop: threading.Event | None = None) -> FrameSource:
    if source == "picamera2":
        return PiCameraSource(width, height, lores_width, fps, exposure_us, stop=stop, retry_max_s=retry_max_s)
    if _is_device(source) or "://" in source:
        return OpenCVSource(source, width, height, fps, retry_max_s, stop=stop)
    return VideoFileSource(source, pace=pace, loop=loop, stop=stop)
