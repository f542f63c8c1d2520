"""GPS sources: a fake gpsd (TCP server replaying recorded JSON), NMEA through a pty, fixed."""

import json
import os
import socket
import threading
import time

import pytest

from edge.gps import FixedGps, GpsdClient, NmeaParser, NmeaSerial, nmea_checksum_ok, parse_tpv

TPV = [
    {"class": "VERSION", "release": "3.22"},
    {"class": "DEVICES", "devices": []},
    {"class": "WATCH", "enable": True, "json": True},
    {"class": "TPV", "mode": 1, "time": "2026-11-27T10:00:00.000Z"},
    {"class": "TPV", "mode": 3, "time": "2026-11-27T10:00:01.000Z", "lat": 47.0731, "lon": 15.4382, "altHAE": 353.2,
     "speed": 13.9, "track": 271.5, "eph": 4.2},
    {"class": "SKY", "satellites": []},
]


def nmea(body: str) -> str:
    x = 0
    for ch in body:
        x ^= ord(ch)
    return f"${body}*{x:02X}"


class FakeGpsd:
    """Accepts one client at a time, waits for ?WATCH, then replays lines; can drop the client."""

    def __init__(self, lines):
        self.lines = lines
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.watch_seen = 0
        self.conns = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            if b"?WATCH" in c.recv(1024):
                self.watch_seen += 1
            for line in self.lines:
                c.sendall((json.dumps(line) + "\n").encode())

    def drop_clients(self):
        for c in self.conns:
            c.close()
        self.conns.clear()

    def close(self):
        self.drop_clients()
        self.srv.close()


def wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_gpsd_client_reads_tpv_and_reconnects():
    srv = FakeGpsd(TPV)
    g = GpsdClient("127.0.0.1", srv.port, max_age_s=5)
    g.start()
    try:
        assert wait(lambda: g.fix_at(time.monotonic()).status == "ok")
        fa = g.fix_at(time.monotonic())
        assert fa.fix.lat == pytest.approx(47.0731) and fa.fix.mode == 3 and fa.fix.alt_m == pytest.approx(353.2)
        assert fa.fix.heading_deg == pytest.approx(271.5) and fa.fix.accuracy_m == pytest.approx(4.2)
        assert fa.source == "gpsd" and srv.watch_seen == 1
        srv.drop_clients()
        assert wait(lambda: srv.watch_seen >= 2, 15)  # came back by itself
    finally:
        g.stop()
        srv.close()


def test_fix_age_flags_stale_and_missing():
    now = [100.0]
    g = GpsdClient("127.0.0.1", 1, max_age_s=2, clock=lambda: now[0])
    assert g.fix_at(100.0).status == "missing"
    g.history.add(parse_tpv(TPV[4], 100.0))
    assert g.fix_at(101.0).status == "ok" and g.fix_at(101.0).age_s == pytest.approx(1.0)
    assert g.fix_at(110.0).status == "stale"
    g.history.add(parse_tpv(TPV[3], 111.0))  # a no-fix report does not replace the last good fix
    assert g.fix_at(111.5).fix.lat == pytest.approx(47.0731)


def test_fix_matches_frame_time_not_latest():
    g = GpsdClient("127.0.0.1", 1)
    for i, lat in enumerate([10.0, 11.0, 12.0]):
        g.history.add(parse_tpv({**TPV[4], "lat": lat}, 100.0 + i))
    assert g.fix_at(101.4).fix.lat == 11.0
    assert g.fix_at(99.0).fix.lat == 10.0


def test_nmea_parser_rmc_gga():
    p = NmeaParser()
    assert p.feed(nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), 1.0) is None
    f = p.feed(nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), 1.0)
    assert f.lat == pytest.approx(48.1173) and f.lon == pytest.approx(11.516667, abs=1e-5)
    assert f.alt_m == pytest.approx(545.4) and f.mode == 3
    assert f.speed_mps == pytest.approx(22.4 * 0.514444) and f.heading_deg == pytest.approx(84.4)
    assert f.time.year == 1994 and f.time.hour == 12
    assert p.feed(nmea("GPRMC,123519,V,,,,,,,230394,,"), 2.0).valid is False


def test_nmea_rejects_bad_checksum_and_garbage():
    s = nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W")
    assert nmea_checksum_ok(s)
    assert not nmea_checksum_ok(s[:-2] + "00")
    p = NmeaParser()
    assert p.feed(s[:-2] + "00", 0) is None
    assert p.feed("garbage", 0) is None
    assert p.feed(nmea("GPRMC,xx,A,bad,N,,E,,,,"), 0) is None


def test_nmea_serial_through_a_pty():
    master, slave = os.openpty()
    g = NmeaSerial(os.ttyname(slave), 9600)
    g.start()
    try:
        os.write(master, b"noise\r\n" + nmea("GNRMC,101010,A,5130.000,N,00007.500,W,10.0,180.0,271126,,").encode() + b"\r\n")
        assert wait(lambda: g.fix_at(time.monotonic()).status == "ok")
        f = g.fix_at(time.monotonic()).fix
        assert f.lat == pytest.approx(51.5) and f.lon == pytest.approx(-0.125) and f.heading_deg == 180.0
    finally:
        g.stop()
        os.close(master)
        os.close(slave)


def test_fixed_position():
    g = FixedGps(46.5, 6.6, 400)
    fa = g.fix_at(12345.0)
    assert fa.status == "ok" and fa.fix.lat == 46.5 and fa.source == "fixed"


def test_an_unreachable_gpsd_is_a_warning_once_then_rate_limited(caplog):
    """Nobody listens on the port: said at WARNING at once, not at every reconnect (every 0.5-10 s)."""
    import logging
    import socket
    import time

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # a free port with nothing behind it
    caplog.set_level(logging.DEBUG, logger="edge.gps")
    g = GpsdClient("127.0.0.1", port)
    g.start()
    try:
        time.sleep(4.0)  # back-off 0.5, 1, 2: four tries
    finally:
        g.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and f"gpsd 127.0.0.1:{port}" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_trouble_is_said_again_only_after_its_interval_and_when_it_clears(caplog):
    import logging

    from edge.gps import _Trouble

    now = [0.0]
    caplog.set_level(logging.INFO, logger="edge.gps")
    t = _Trouble("gpsd x", every_s=300, clock=lambda: now[0])
    for i in range(10):
        now[0] = i * 10.0
        t.failed("refused")
    now[0] = 301.0
    t.failed("refused")
    t.ok()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in said] == ["WARNING", "WARNING", "INFO"]
    assert "11 failures so far" in said[1][1] and "working again after 11 failures" in said[2][1]
