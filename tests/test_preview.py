"""The preview page during a real replay: a headless Chromium loads it and its scripts fill the plates
in view; the frame changes and carries a drawn box; every opening is logged; a token is asked for
when one is set, and required beyond loopback. The screenshot is kept under out/."""

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import cv2
import numpy as np

from .broker import free_port, wait_port
from .conftest import ROOT, chromium, run_edge

CLIP = ROOT / "fixtures" / "videos" / "02_lane_speed.mp4"


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def start(tmp, port: int, token_file=None) -> subprocess.Popen:
    f = tmp / "d.toml"
    f.write_text(f'[device]\nid = "dev-p"\nstate_dir = "{tmp / "state"}"\n[camera]\nid = "c"\nowner = "o"\n'
                 f'[preview]\nenabled = true\nlisten = "127.0.0.1:{port}"\n' + (f'token_file = "{token_file}"\n' if token_file else ""))
    p = subprocess.Popen([sys.executable, "-m", "edge.cli", "replay", str(CLIP), "--loop", "--no-mqtt", "--config", str(f)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_port(port, 60)
    return p


def green(jpeg: bytes) -> int:
    """Pixels of the colour the preview draws the cuts read in (pure green)."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    b, g, r = (img[..., i].astype(int) for i in range(3))
    return int(((g > 200) & (b < 60) & (r < 60)).sum())


def test_the_preview_page_shows_the_camera_what_it_reads_and_how_to_aim(tmp_path):
    port = free_port()
    p = start(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        plates, frame = [], b""
        end = time.monotonic() + 60
        while not plates and time.monotonic() < end:  # asking starts the feed; a plate comes into view
            frame = fetch(base + "/frame.jpg")[1]
            plates = json.loads(fetch(base + "/status.json")[1])["plates"]
            time.sleep(0.2)
        assert plates and plates[0]["width_px"] > 0 and plates[0]["sharpness"] > 0 and plates[0]["ideal_px"] == 130
        with_box = max((fetch(base + "/frame.jpg")[1] for _ in range(5)), key=green)
        assert green(with_box) > 50  # the cut read is drawn around the plate
        time.sleep(1)
        assert fetch(base + "/frame.jpg")[1] != frame  # the frame changes
        while not json.loads(fetch(base + "/status.json")[1])["reads"]:  # a first pass is complete
            assert time.monotonic() < end + 60, "no read within two minutes"
            time.sleep(0.3)
        out = ROOT / "out" / "preview.png"
        out.parent.mkdir(exist_ok=True)
        dom, shot = chromium(base + "/", out, size=(1400, 1200), run_ms=4000)
        assert "live video of people" in dom and "Plates in view" in dom
        assert "<td>" in dom.split('id="health"')[1]  # the page's script filled the health table
        reads_table = dom.split('id="reads"')[1].split("</tbody>")[0]
        assert re.search(r"<td>[A-Z0-9]{5,8}</td>", reads_table), reads_table[:500]  # and the last reads, with their crops
        assert "data:image/jpeg;base64," in reads_table
        assert shot.stat().st_size > 10_000
        # what the browser showed, shot again: the frame has changed, and (within a few tries, as cars
        # come and go) a cut read is drawn on it
        shots = [cv2.imread(str(shot))]
        for k in range(6):
            _, again = chromium(base + "/", tmp_path / f"again-{k}.png", size=(1400, 1200), run_ms=2000)
            shots.append(cv2.imread(str(again)))
            if max(green(cv2.imencode(".png", x[60:760, :1300])[1].tobytes()) for x in shots) > 50 and len(shots) > 2:
                break
        frames = [x[60:760, :1300].astype(int) for x in shots]
        assert any(abs(a - frames[0]).mean() > 1.0 for a in frames[1:])  # the frame changed in the browser
        assert max(green(cv2.imencode(".png", x[60:760, :1300])[1].tobytes()) for x in shots) > 50
    finally:
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=30)[1]
    assert err.count("preview opened from 127.0.0.1") >= 1  # every opening of the page is on the record


def test_the_preview_asks_for_its_token_and_needs_one_beyond_loopback(tmp_path):
    f = tmp_path / "wide.toml"
    f.write_text('[device]\nid = "dev-p"\n[camera]\nid = "c"\nowner = "o"\n[preview]\nenabled = true\nlisten = "0.0.0.0:8090"\n')
    r = run_edge("config", "check", str(f))
    assert r.returncode == 2 and "token_file" in r.stderr, r.stderr
    tok = tmp_path / "preview.token"
    tok.write_text("aim-and-focus\n")
    port = free_port()
    p = start(tmp_path, port, tok)
    base = f"http://127.0.0.1:{port}"
    try:
        assert fetch(base + "/")[0] == 401 and fetch(base + "/frame.jpg")[0] == 401
        assert fetch(base + "/?token=wrong")[0] == 401
        code, page = fetch(base + "/?token=aim-and-focus")
        assert code == 200 and b"frame.jpg?token=aim-and-focus" in page
        assert fetch(base + "/status.json?token=aim-and-focus")[0] == 200
    finally:
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=30)[1]
    assert "refused an opening" in err
