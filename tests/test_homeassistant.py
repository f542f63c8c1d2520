"""Home Assistant MQTT discovery through the shipped broker settings: a device replaying a clip with
`[homeassistant] enabled`, Home Assistant connecting afterwards with its own certificate and finding
the entities in the retained discovery messages, the last plate's state and a crop that decodes, and
nothing of the read records."""

import json
import os
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .broker import collector_broker
from .conftest import ROOT, run_edge

CLIP = ROOT / "fixtures" / "videos" / "02_lane_speed.mp4"
# what Home Assistant's MQTT discovery needs of each component (its documented required options)
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}, "image": {"image_topic"}}


def ha_client(port: int, d, seen: list):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="homeassistant", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(d / "ca" / "ca.crt"), certfile=str(d / "ha" / "homeassistant.crt"), keyfile=str(d / "ha" / "homeassistant.key"))
    c.on_message = lambda cl, u, m: seen.append((m.topic, m.payload, m.retain))
    up = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: (cl.subscribe([("homeassistant/#", 1), ("lpr/v1/+/ha/#", 1), ("lpr/v1/+/status", 1),
                                                          ("lpr/v1/+/reads", 1)]), up.set())
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert up.wait(10)
    return c


def test_home_assistant_finds_the_device_its_last_plate_and_crop(tmp_path):
    d = tmp_path
    for args in (("ca",), ("server", "localhost", "--san", "127.0.0.1", "--out", str(d / "server")),
                 ("integration", "homeassistant", "--out", str(d / "ha")),
                 ("device", "dev-h", "--owner", "Agency", "--site", "North gate", "--out", str(d / "dev-h"))):
        r = run_edge("provision", *args, "--ca-dir", str(d / "ca"))
        assert r.returncode == 0, r.stderr
    r = run_edge("provision", "device", "homeassistant", "--ca-dir", str(d / "ca"), "--out", str(d / "x"), "--owner", "A")
    assert r.returncode == 2 and "reserved" in r.stderr
    b = collector_broker(d / "broker", d / "ca", d / "server")
    try:
        live: list = []
        watcher = ha_client(b.port, d, live)
        (d / "outbox.key").write_bytes(os.urandom(32))
        bundle = d / "dev-h"
        env = {**os.environ, "EDGE_MQTT__CAFILE": str(bundle / "ca.crt"), "EDGE_MQTT__CERTFILE": str(bundle / "device.crt"), "EDGE_HOTLIST__PUBLIC_KEY": str(bundle / "hotlist.pub"),
               "EDGE_MQTT__KEYFILE": str(bundle / "device.key"), "EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(b.port),
               "EDGE_MQTT__RECEIPTS": "false", "EDGE_OUTBOX__KEY_FILE": str(d / "outbox.key"),
               "EDGE_DEVICE__STATE_DIR": str(d / "state"), "EDGE_HOMEASSISTANT__ENABLED": "true", "EDGE_MQTT__HEALTH_INTERVAL_S": "1"}
        r = subprocess.run([sys.executable, "-m", "edge.cli", "replay", str(CLIP), "--config", str(bundle / "device.toml"), "--json"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        plates = [json.loads(x)["plate"]["text"] for x in r.stdout.splitlines() if x.startswith("{")]
        assert plates
        time.sleep(1)
        watcher.disconnect()
        watcher.loop_stop()
        assert not [t for t, _, _ in live if t.endswith("/reads")]  # the records never reach Home Assistant
        fresh: list = []  # Home Assistant starting afterwards: what the broker kept
        later = ha_client(b.port, d, fresh)
        time.sleep(1.5)
        later.disconnect()
        later.loop_stop()
        kept = {t: p for t, p, retained in fresh if retained}
        configs = {t: json.loads(p) for t, p in kept.items() if t.startswith("homeassistant/") and t.endswith("/config")}
        assert len(configs) == 7, sorted(configs)  # the six, and the hotlist match sensor ([hotlist] is on)
        assert "homeassistant/binary_sensor/dev-h/hotlist_match/config" in configs
        for topic, body in configs.items():
            component, node, obj, _ = topic.split("/")[1:]
            assert node == "dev-h" and REQUIRED[component] <= set(body), (topic, body)
            assert body["unique_id"] == f"edge_lpr_dev-h_{obj}" and body["device"]["identifiers"] == ["edge_lpr_dev-h"]
            for k, v in body.items():
                if k.endswith("_topic"):
                    assert "+" not in v and "#" not in v
        state = json.loads(kept["lpr/v1/dev-h/ha/state"])
        assert state["plate"] == plates[-1] and state["time"]
        crop = cv2.imdecode(np.frombuffer(kept["lpr/v1/dev-h/ha/plate_crop"], np.uint8), cv2.IMREAD_COLOR)
        assert crop is not None and crop.shape[1] > 20
        assert json.loads(kept["lpr/v1/dev-h/status"])["state"] == "offline"  # the replay ended: the device says so
        assert not [t for t, _, _ in fresh if t.endswith("/reads")]
    finally:
        b.stop()
