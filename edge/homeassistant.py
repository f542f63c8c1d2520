"""Home Assistant MQTT discovery (opt-in, `[homeassistant] enabled = true`).

On each connection the device publishes, retained, one discovery message per entity under
`<discovery_prefix>/<component>/<device_id>/<object>/config`, as Home Assistant's MQTT discovery
documents them, all on one HA device:

    sensor        last_plate       the last plate read (state topic, value_json.plate)
    sensor        last_read        when (device_class timestamp)
    sensor        fps              frames through the pipeline per second
    sensor        outbox_backlog   reads not yet delivered
    binary_sensor online           the retained status topic (`online`, last will `offline`)
    image         plate_crop       the last plate crop, a binary JPEG on its own retained topic
    binary_sensor hotlist_match    with [hotlist] on: ON at each alert (the entry's id and the match kind as
                                   attributes, never the plate), off again after 30 s

States go to `<prefix>/<device_id>/ha/state` (JSON) and `<prefix>/<device_id>/ha/plate_crop` (JPEG).
What this exposes: every plate the camera reads and its crop, to whoever may read those topics,
outside the collector's audited, case-bound access; with hotlists on, which of those plates are
listed (the last plate at the moment of a match). The broker's ACL gives that to one user
(`homeassistant`), never `lpr/v1/+/reads`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

from edge import __version__

MATCH_OFF_S = 30  # the match sensor turns off by itself this long after an alert


def entities(device_id: str, prefix: str, discovery_prefix: str, camera_name: str = "",
             hotlist: bool = False) -> Iterator[tuple[str, dict]]:
    """(topic, payload) of each discovery message."""
    base = f"{prefix.rstrip('/')}/{device_id}"
    state, status = f"{base}/ha/state", f"{base}/status"
    device = {"identifiers": [f"edge_lpr_{device_id}"], "name": camera_name or f"Plate reader {device_id}",
              "manufacturer": "edge-lpr", "model": "licence-plate reader", "sw_version": __version__}
    avail = {"availability_topic": status, "availability_template": "{{ value_json.state }}",
             "payload_available": "online", "payload_not_available": "offline"}

    def one(component: str, obj: str, name: str, **fields) -> tuple[str, dict]:
        body = {"name": name, "unique_id": f"edge_lpr_{device_id}_{obj}", "object_id": f"{device_id}_{obj}",
                "device": device, **fields}
        return f"{discovery_prefix}/{component}/{device_id}/{obj}/config", body

    yield one("sensor", "last_plate", "Last plate", state_topic=state, value_template="{{ value_json.plate }}",
              icon="mdi:card-text-outline", **avail)
    yield one("sensor", "last_read", "Last read", state_topic=state, value_template="{{ value_json.time }}",
              device_class="timestamp", **avail)
    yield one("sensor", "fps", "Frames per second", state_topic=state, value_template="{{ value_json.fps }}",
              unit_of_measurement="fps", state_class="measurement", **avail)
    yield one("sensor", "outbox_backlog", "Outbox backlog", state_topic=state, value_template="{{ value_json.outbox_backlog }}",
              unit_of_measurement="reads", state_class="measurement", **avail)
    yield one("binary_sensor", "online", "Online", state_topic=status, value_template="{{ value_json.state }}",
              payload_on="online", payload_off="offline", device_class="connectivity")
    yield one("image", "plate_crop", "Last plate crop", image_topic=f"{base}/ha/plate_crop", content_type="image/jpeg", **avail)
    if hotlist:
        yield one("binary_sensor", "hotlist_match", "Vehicle of interest", state_topic=f"{base}/ha/alert",
                  value_template="{{ value_json.state }}", payload_on="ON", json_attributes_topic=f"{base}/ha/alert",
                  off_delay=MATCH_OFF_S, icon="mdi:car-search", **avail)


class HaState:
    """The latest state to publish: what the last read and the last health said."""

    def __init__(self):
        self.plate: str | None = None
        self.time: str | None = None
        self.crop: bytes | None = None
        self.fps: float | None = None
        self.backlog: int | None = None
        self.dirty = False
        self.crop_dirty = False
        self.alerts: list[str] = []  # match messages not yet published

    def alert(self, a) -> None:
        """An alert (edge.record.Alert): the match sensor's message, with no plate in it."""
        self.alerts.append(json.dumps({"state": "ON", "entry": a.entry, "kind": a.kind, "time": a.seen.isoformat(),
                                       "camera": a.read.camera.id}))

    def read(self, rec) -> None:
        self.plate, self.time = rec.plate.text, rec.time.isoformat()
        if rec.images.plate_jpeg:
            self.crop = base64.b64decode(rec.images.plate_jpeg)
            self.crop_dirty = True
        self.dirty = True

    def health(self, h: dict) -> None:
        self.fps, self.backlog = h.get("fps_processed"), h.get("outbox_backlog")
        self.dirty = True

    def payload(self) -> str:
        return json.dumps({"plate": self.plate, "time": self.time, "fps": self.fps, "outbox_backlog": self.backlog})
