"""Where the camera is: gpsd (JSON on TCP 2947), an NMEA serial device, or a fixed position.

Every source keeps a short history of fixes stamped with the monotonic clock at receipt, so a
read gets the fix that matches its frame time, with its age. A read is never dropped for want
of a fix: it is flagged `stale` or `missing` instead.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from edge.record import GpsKind, GpsStatus

log = logging.getLogger("edge.gps")


class _Trouble:
    """A failing GPS link said at WARNING the first time, then at most once every `every_s` while it
    keeps failing (with the count since), and once at INFO when it works again."""

    def __init__(self, what: str, every_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.what, self.every_s, self.clock = what, every_s, clock
        self.failures = 0
        self.last_said: float | None = None

    def failed(self, err: object) -> None:
        self.failures += 1
        now = self.clock()
        if self.last_said is None or now - self.last_said >= self.every_s:
            more = f" ({self.failures} failures so far; said again at most every {self.every_s:.0f} s)" if self.failures > 1 else ""
            log.warning("%s: %s%s", self.what, err, more)
            self.last_said = now

    def ok(self) -> None:
        if self.failures:
            log.info("%s: working again after %d failures", self.what, self.failures)
        self.failures, self.last_said = 0, None


@dataclass(frozen=True)
class Fix:
    t: float  # monotonic seconds when received
    lat: float | None
    lon: float | None
    alt_m: float | None = None
    mode: int = 0  # 0 unknown, 1 no fix, 2 2D, 3 3D
    speed_mps: float | None = None
    heading_deg: float | None = None
    accuracy_m: float | None = None
    time: datetime | None = None

    @property
    def valid(self) -> bool:
        return self.mode >= 2 and self.lat is not None and self.lon is not None


@dataclass(frozen=True)
class FixAtFrame:
    status: GpsStatus
    fix: Fix | None
    age_s: float | None
    source: GpsKind


class FixHistory:
    def __init__(self, keep: int = 600):
        self.keep = keep
        self._t: list[float] = []
        self._f: list[Fix] = []
        self._lock = threading.Lock()

    def add(self, f: Fix) -> None:
        with self._lock:
            self._t.append(f.t)
            self._f.append(f)
            if len(self._t) > self.keep:
                del self._t[: len(self._t) - self.keep]
                del self._f[: len(self._f) - self.keep]

    def at(self, t: float) -> Fix | None:
        """The latest valid fix received at or before t (else the earliest after it)."""
        with self._lock:
            i = bisect.bisect_right(self._t, t)
            for j in range(i - 1, -1, -1):
                if self._f[j].valid:
                    return self._f[j]
            for j in range(i, len(self._f)):
                if self._f[j].valid:
                    return self._f[j]
        return None


class GpsSource:
    name: GpsKind = "none"

    def __init__(self, max_age_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.history = FixHistory()
        self.max_age_s = max_age_s
        self.clock = clock

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def fix_at(self, t: float) -> FixAtFrame:
        f = self.history.at(t)
        if f is None:
            return FixAtFrame("missing", None, None, self.name)
        age = abs(t - f.t)
        return FixAtFrame("ok" if age <= self.max_age_s else "stale", f, round(age, 3), self.name)

    def state(self) -> str:
        return self.fix_at(self.clock()).status

    def fix_age(self) -> float | None:
        """Seconds since the fix in use now was taken (None: no fix)."""
        return self.fix_at(self.clock()).age_s


class _ThreadedGps(GpsSource):
    """A source read by a background thread (`_run`), stopped through `_stop`."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(3)

    def _run(self) -> None:
        raise NotImplementedError


class NoGps(GpsSource):
    name: GpsKind = "none"


class FixedGps(GpsSource):
    name: GpsKind = "fixed"

    def __init__(self, lat: float, lon: float, alt_m: float | None = None, **kw):
        super().__init__(**kw)
        self.fix = Fix(0.0, lat, lon, alt_m, mode=3)

    def fix_at(self, t: float) -> FixAtFrame:
        return FixAtFrame("ok", self.fix, 0.0, self.name)


def parse_tpv(obj: dict, t: float) -> Fix | None:
    """A gpsd TPV report -> Fix (None for other classes)."""
    if obj.get("class") != "TPV":
        return None
    when = None
    if isinstance(obj.get("time"), str):
        try:
            when = datetime.fromisoformat(obj["time"].replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            when = None
    acc = None
    if obj.get("eph") is not None:
        acc = float(obj["eph"])
    elif obj.get("epx") is not None and obj.get("epy") is not None:
        acc = max(float(obj["epx"]), float(obj["epy"]))

    def num(k):
        v = obj.get(k)
        return float(v) if isinstance(v, int | float) else None

    return Fix(t, num("lat"), num("lon"), num("altHAE") if "altHAE" in obj else num("alt"), int(obj.get("mode", 0) or 0),
               num("speed"), num("track"), acc, when)


class GpsdClient(_ThreadedGps):
    """A small gpsd client of our own: ?WATCH JSON, reconnects with back-off."""

    name: GpsKind = "gpsd"

    def __init__(self, host: str = "127.0.0.1", port: int = 2947, **kw):
        super().__init__(**kw)
        self.host, self.port = host, port
        self.connected = False
        self.reconnects = 0

    def _run(self) -> None:
        delay = 0.5
        trouble = _Trouble(f"gpsd {self.host}:{self.port}")
        while not self._stop.is_set():
            try:
                with socket.create_connection((self.host, self.port), timeout=5) as s:
                    s.sendall(b'?WATCH={"enable":true,"json":true};\n')
                    s.settimeout(1.0)
                    self.connected = True
                    trouble.ok()
                    delay = 0.5
                    buf = b""
                    while not self._stop.is_set():
                        try:
                            chunk = s.recv(65536)
                        except TimeoutError:
                            continue
                        if not chunk:
                            break
                        buf += chunk
                        while b"\n" in buf:
                            line, buf = buf.split(b"\n", 1)
                            self._line(line)
                        if len(buf) > 1 << 20:
                            buf = b""  # garbage without newlines: drop it
            except OSError as e:
                trouble.failed(e)
            if self.connected:
                self.reconnects += 1
            self.connected = False
            self._stop.wait(delay)
            delay = min(delay * 2, 10.0)

    def _line(self, line: bytes) -> None:
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        if isinstance(obj, dict):
            f = parse_tpv(obj, self.clock())
            if f is not None:
                self.history.add(f)


# ---------------------------------------------------------------- NMEA


def nmea_checksum_ok(sentence: str) -> bool:
    s = sentence.strip()
    if not s.startswith("$") or "*" not in s:
        return False
    body, _, cs = s[1:].partition("*")
    x = 0
    for ch in body:
        x ^= ord(ch)
    try:
        return int(cs[:2], 16) == x
    except ValueError:
        return False


def _deg(v: str, hemi: str) -> float | None:
    if not v:
        return None
    dot = v.index(".") if "." in v else len(v)
    d = float(v[: dot - 2]) + float(v[dot - 2 :]) / 60
    return -d if hemi in ("S", "W") else d


class NmeaParser:
    """Combines RMC (position, speed, course, date) and GGA (fix quality, altitude, HDOP)."""

    def __init__(self):
        self.alt: float | None = None
        self.hdop: float | None = None
        self.quality = 0

    def feed(self, sentence: str, t: float) -> Fix | None:
        if not nmea_checksum_ok(sentence):
            return None
        f = sentence.strip()[1:].split("*")[0].split(",")
        kind = f[0][2:]
        try:
            if kind == "GGA" and len(f) >= 10:
                self.quality = int(f[6] or 0)
                self.hdop = float(f[8]) if f[8] else None
                self.alt = float(f[9]) if f[9] else None
                return None
            if kind == "RMC" and len(f) >= 10:
                if f[2] != "A":
                    return Fix(t, None, None, mode=1)
                when = None
                if f[1] and f[9]:
                    hh, mm, ss = int(f[1][0:2]), int(f[1][2:4]), float(f[1][4:])
                    dd, mo, yy = int(f[9][0:2]), int(f[9][2:4]), int(f[9][4:6])
                    yy += 2000 if yy < 80 else 1900  # two-digit NMEA year
                    when = datetime(yy, mo, dd, hh, mm, int(ss), int((ss % 1) * 1e6), tzinfo=UTC)
                speed = float(f[7]) * 0.514444 if f[7] else None
                course = float(f[8]) % 360 if f[8] else None
                mode = 3 if self.alt is not None else 2
                acc = self.hdop * 5.0 if self.hdop is not None else None  # rough: UERE ~5 m
                return Fix(t, _deg(f[3], f[4]), _deg(f[5], f[6]), self.alt, mode, speed, course, acc, when)
        except (ValueError, IndexError):
            return None
        return None


class NmeaSerial(_ThreadedGps):
    """NMEA 0183 from a serial device (configured with termios; no extra packages)."""

    name: GpsKind = "nmea"

    def __init__(self, device: str, baud: int = 9600, **kw):
        super().__init__(**kw)
        self.device, self.baud = device, baud
        self.parser = NmeaParser()

    def _open(self) -> int:
        fd = os.open(self.device, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            import termios

            attrs = termios.tcgetattr(fd)
            speed = getattr(termios, f"B{self.baud}", termios.B9600)
            attrs[4] = attrs[5] = speed
            attrs[3] &= ~(termios.ICANON | termios.ECHO)
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except (ImportError, OSError, ValueError):
            pass  # not a tty (a pipe or a file in tests): read as is
        return fd

    def _run(self) -> None:
        import select

        delay = 0.5
        trouble = _Trouble(f"NMEA device {self.device}")
        while not self._stop.is_set():
            try:
                fd = self._open()
                trouble.ok()
            except OSError as e:
                trouble.failed(e)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            buf = b""
            try:
                while not self._stop.is_set():
                    r, _, _ = select.select([fd], [], [], 0.5)
                    if not r:
                        continue
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        break
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        fx = self.parser.feed(line.decode("ascii", "replace"), self.clock())
                        if fx is not None:
                            self.history.add(fx)
                    buf = buf[-4096:]
            except OSError as e:
                trouble.failed(e)
            finally:
                os.close(fd)
            self._stop.wait(delay)
