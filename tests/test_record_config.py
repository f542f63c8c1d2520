"""Wire record (schema file, validation) and the device configuration."""

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge.config import ConfigError, load_config
from edge.record import SCHEMA_FILE, Read, schema_text, uuid7

from .conftest import run_edge


def test_committed_schema_matches_the_model():
    assert SCHEMA_FILE.read_text() == schema_text(), "run: python -m edge.record --write"


def test_uuid7_is_time_ordered_and_well_formed():
    a = uuid7(1_700_000_000_000)
    b = uuid7(1_700_000_000_001)
    assert a < b and a[14] == "7" and a[19] in "89ab"
    assert uuid7(5, b"\x00" * 10) == uuid7(5, b"\x00" * 10)


def jpeg_b64(size=(20, 60)):
    ok, buf = cv2.imencode(".jpg", np.full((*size, 3), 128, np.uint8))
    return base64.b64encode(buf.tobytes()).decode()


def sample(**over):
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    d = {
        "schema": "lpr.read/1",
        "read_id": uuid7(),
        "time": now.isoformat(),
        "plate": {"text": "ABC123", "confidence": 0.97, "char_confidences": [0.9] * 6, "box": {"x1": 1, "y1": 2, "x2": 30, "y2": 12}},
        "images": {"plate_jpeg": jpeg_b64()},
        "track": {"first_seen": now.isoformat(), "last_seen": (now + timedelta(seconds=2)).isoformat(), "frames": 12,
                  "direction": "towards", "lateral": "none"},
        "gps": {"status": "ok", "lat": 47.1, "lon": 15.4, "mode": 3, "fix_age_s": 0.4, "source": "gpsd"},
        "camera": {"id": "cam1", "owner": "Border Agency", "mounting": "fixed"},
        "device": {"id": "dev-1", "software": "0.1.0", "detector_model": "d", "reader_model": "r"},
    }
    d.update(over)
    return d


def test_valid_record_round_trips():
    r = Read.model_validate_json(json.dumps(sample()))
    again = Read.from_json(r.to_json())
    assert again == r and json.loads(r.to_json())["schema"] == "lpr.read/1"


@pytest.mark.parametrize("change", [
    {"schema": "lpr.read/2"},
    {"read_id": "not-a-uuid"},
    {"time": "2026-11-27T10:00:00"},  # no offset
    {"time": datetime(2026, 11, 27, 10, tzinfo=timezone(timedelta(hours=2))).isoformat()},  # not UTC
    {"plate": {"text": "ab-12", "confidence": 0.9, "char_confidences": [], "box": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}},
    {"plate": {"text": "ABC123", "confidence": 1.5, "char_confidences": [], "box": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}},
    {"images": {"plate_jpeg": "%%%not base64"}},
    {"images": {"plate_jpeg": base64.b64encode(b"PNG not jpeg").decode()}},
    {"images": {"plate_jpeg": base64.b64encode(b"\xff\xd8" + b"0" * 70000).decode()}},
    {"gps": {"status": "ok", "lat": 123.0, "source": "gpsd"}},
    {"unexpected": 1},
    {"time": 12345},  # a number is not a time
])
def test_invalid_records_are_rejected(change):
    with pytest.raises(ValidationError):
        Read.model_validate_json(json.dumps(sample(**change)))


GOOD = """
[device]
id = "gate-7"
state_dir = "{state}"
[camera]
id = "cam-1"
owner = "Border Agency"
source = "fixtures/videos/01_gate_day.mp4"
[gps]
mode = "fixed"
lat = 47.07
lon = 15.44
[mqtt]
host = "127.0.0.1"
port = 1883
"""


def test_config_loads_and_env_overrides(tmp_path):
    f = tmp_path / "d.toml"
    f.write_text(GOOD.format(state=tmp_path))
    cfg = load_config(f, env={"EDGE_MQTT__PORT": "8883", "EDGE_CAMERA__SITE": "north gate", "OTHER": "x",
                              "EDGE_MQTT__PROTOCOL": "5", "EDGE_DEVICE__ID": "1234", "EDGE_PIPELINE__MOTION_GATE": "false",
                              "EDGE_TRACKING__MIN_LENGTH_SHARE": "0.5"})
    assert cfg.mqtt.port == 8883 and cfg.camera.site == "north gate" and cfg.gps.lat == 47.07
    assert cfg.mqtt.protocol == "5" and cfg.device.id == "1234" and cfg.pipeline.motion_gate is False
    assert cfg.outbox_path == tmp_path / "outbox.db" and cfg.tracking.min_length_share == 0.5
    f.write_text(GOOD.format(state=tmp_path) + '\n[pipeline]\nregions = ["eu", "uk"]\n')
    assert load_config(f, env={}).pipeline.regions == ["eu", "uk"]


def test_config_reports_every_problem_with_its_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("""
[device]
id = "bad id with spaces"
[camera]
owner = "x"
colour = "red"
[gps]
mode = "fixed"
[mqtt]
port = 99999
[pipeline]
min_plate_width = -5
int8 = "all"
regions = ["eu", "europe"]
[tracking]
min_length_share = 1.5
""")
    with pytest.raises(ConfigError) as e:
        load_config(f, env={})
    text = "\n".join(e.value.problems)
    for key in ("device.id", "camera.id", "camera.colour: unknown key", "gps: ", "mqtt.port", "pipeline.min_plate_width", "pipeline.int8",
                "pipeline.regions", "tracking.min_length_share"):
        assert key in text


def test_config_check_command(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD.format(state=tmp_path))
    r = run_edge("config", "check", str(good))
    assert r.returncode == 0 and "ok" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nid=")
    r = run_edge("config", "check", str(bad))
    assert r.returncode == 2 and "not valid TOML" in r.stderr and r.stderr.count("\n") == 1
    r = run_edge("config", "check", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "file not found" in r.stderr


def test_config_check_offline_passes_the_shipped_example_and_a_fresh_bundle(tmp_path):
    from .conftest import ROOT

    example = ROOT / "deploy" / "device.example.toml"
    r = run_edge("config", "check", "--offline", str(example))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok (offline)"), r.stdout + r.stderr
    assert run_edge("provision", "ca", "--ca-dir", str(tmp_path / "ca")).returncode == 0
    r = run_edge("provision", "device", "gate-1", "--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "b"), "--owner", "A")
    assert r.returncode == 0, r.stderr
    r = run_edge("config", "check", "--offline", str(tmp_path / "b" / "device.toml"))
    assert r.returncode == 0 and "mqtt.cafile: /etc/edge/ca.crt not checked" in r.stdout, r.stdout + r.stderr
    r = run_edge("config", "check", str(tmp_path / "b" / "device.toml"))  # on the device, a missing file is still an error
    assert r.returncode == 2 and "cafile /etc/edge/ca.crt does not exist" in r.stderr


def test_list_settings_can_be_overridden_from_the_environment(tmp_path):
    f = tmp_path / "d.toml"
    f.write_text('[device]\nid = "d"\n[camera]\nid = "c"\nowner = "o"\nsource = "x.mp4"\n')
    cfg = load_config(f, env={"EDGE_PIPELINE__REGIONS": '["uk", "eu"]'})
    assert cfg.pipeline.regions == ["uk", "eu"]
    with pytest.raises(ConfigError) as e:
        load_config(f, env={"EDGE_PIPELINE__REGIONS": '["xx"]'})
    assert "pipeline.regions: unknown region 'xx'" in str(e.value)


def test_version_python_m_edge_and_iso_times_in_json_logs(tmp_path):
    import subprocess
    import sys

    from edge import __version__

    from .conftest import ROOT

    for cmd in ([sys.executable, "-m", "edge", "--version"], [sys.executable, "-m", "edge.cli", "--version"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.strip() == f"edge {__version__}", r.stdout + r.stderr
    r = run_edge("replay", str(ROOT / "fixtures" / "videos" / "08_no_plate.mp4"), "--fast", "--log-json", "--outbox", str(tmp_path / "o.db"))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    assert lines
    for line in lines:
        t = line["time"]
        assert t.endswith("Z") and datetime.fromisoformat(t).utcoffset() == timedelta(0), t
