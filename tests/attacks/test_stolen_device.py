"""A device stolen from a border post: its outbox gives away no reads without the key held apart, and a
wrong or missing key is one line at start with nothing queued destroyed."""

import subprocess
import sys

from edge.outbox import Outbox, OutboxError

from ..conftest import ROOT


def test_sealed_outbox_holds_no_plate_or_image_in_clear(tmp_path):
    key = bytes(range(32))
    ob = Outbox(tmp_path / "o.db", key=key)
    payload = b'{"plate":{"text":"SECRET1"},"images":{"plate_jpeg":"/9j/AAAAIMAGEBYTES"}}'
    ob.put("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", "lpr/v1/d/reads", payload)
    assert ob.peek()[0].payload == payload
    ob.close()
    raw = b"".join(f.read_bytes() for f in tmp_path.iterdir())
    assert b"SECRET1" not in raw and b"IMAGEBYTES" not in raw
    for wrong in (bytes(32), None):
        try:
            Outbox(tmp_path / "o.db", key=wrong)
            raise AssertionError("opened with the wrong key")
        except OutboxError as e:
            assert "nothing was changed" in str(e)
    assert Outbox(tmp_path / "o.db", key=key).peek()[0].payload == payload  # still all there


def test_a_wrong_or_missing_key_file_stops_the_device_with_one_line(tmp_path):
    clip = ROOT / "fixtures" / "videos" / "02_lane_speed.mp4"
    keyf = tmp_path / "outbox.key"
    keyf.write_bytes(bytes(range(32)))
    f = tmp_path / "d.toml"
    f.write_text(f"""[device]\nid = "dev-s"\nstate_dir = "{tmp_path / 'state'}"\n[camera]\nid = "c"\nowner = "o"\n"""
                 f"""[outbox]\npath = "{tmp_path / 'o.db'}"\nkey_file = "{keyf}"\n""")

    def replay(*extra):
        return subprocess.run([sys.executable, "-m", "edge.cli", "replay", str(clip), "--fast", "--config", str(f), "--no-mqtt", *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)

    r = replay()
    assert r.returncode == 0, r.stderr
    kept = len(Outbox(tmp_path / "o.db", key=bytes(range(32))).peek())
    assert kept > 0
    keyf.write_bytes(bytes(32))  # another key
    r = replay()
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "another key" in lines[0], r.stderr
    keyf.unlink()
    r = replay()
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "key_file" in lines[0] and "does not exist" in lines[0], r.stderr
    assert len(Outbox(tmp_path / "o.db", key=bytes(range(32))).peek()) == kept  # nothing queued was lost
