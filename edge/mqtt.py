"""MQTT publisher: drains the outbox at QoS 1, deleting a record only after the broker's PUBACK.

The transport: `MqttTransport` is the connection (paho-mqtt 2.x; MQTT 5 with a fallback to 3.1.1 when
the broker refuses the protocol version; TLS with server verification and optional client
certificates, or username/password; a retained status topic, `online` with last-will `offline`);
edge.runtime.publisher drains the outbox through it.

Topics (prefix `lpr/v1` by default):
    <prefix>/<device_id>/reads    one Read record (JSON), QoS 1, not retained
    <prefix>/<device_id>/status   {"state": "online"|"offline", ...}, QoS 1, retained
    <prefix>/<device_id>/health   periodic health JSON, QoS 0
    <prefix>/<device_id>/receipts {"stored": [read_id, ...], "refused": [read_id, ...]} from the collector,
                                  QoS 1, read by this device only (when receipts are on); alert ids too
    <prefix>/<device_id>/alerts   one Alert (edge.record, lpr.alert/1), QoS 1, sent before any read
    <prefix>/<device_id>/hotlist/manifest, .../hotlist/part/<n>
                                  the signed hotlist bundle (edge.hotlist) from the collector, retained
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.record import iso_utc

log = logging.getLogger("edge.mqtt")


@dataclass
class MqttSettings:
    host: str = "localhost"
    port: int = 1883
    keepalive: int = 30
    client_id: str = ""
    protocol: str = "auto"  # "5", "3.1.1" or "auto" (5, falling back to 3.1.1)
    topic_prefix: str = "lpr/v1"
    username: str | None = None
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    tls: bool = False
    max_inflight: int = 20
    health_interval_s: float = 30.0
    connect_timeout_s: float = 10.0
    receipts: bool = False  # keep each read until the collector's receipt, not only the broker's PUBACK


def topics(prefix: str, device_id: str) -> dict[str, str]:
    base = f"{prefix.rstrip('/')}/{device_id}"
    return {"reads": f"{base}/reads", "status": f"{base}/status", "health": f"{base}/health", "receipts": f"{base}/receipts",
            "alerts": f"{base}/alerts", "hotlist": f"{base}/hotlist"}


@dataclass
class PublisherStats:
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    acked: int = 0
    refused: int = 0
    protocol: str = ""
    last_error: str = ""
    extra: dict = field(default_factory=dict)


class MqttTransport:
    """The broker connection. Tells `on_ack(mid, reason_code)` of each PUBACK and `on_lost()` when the
    connection drops (every unacknowledged message is then forgotten by the broker's side of paho)."""

    def __init__(self, settings: MqttSettings, device_id: str, on_ack: Callable[[int, object], None],
                 on_lost: Callable[[], None], on_ready: Callable[[], None],
                 on_receipt: Callable[[bytes], None] | None = None,
                 on_hotlist: Callable[[str, int, bytes], None] | None = None,
                 status_extra: Callable[[], dict] | None = None):
        """`on_hotlist(kind, part index, payload)`: the collector's hotlist messages ("manifest" or
        "part"); `status_extra`: more for the retained `online` status (site, hotlist version)."""
        self.s = settings
        self.on_hotlist, self.status_extra = on_hotlist, status_extra
        self.device_id = device_id
        self.t = topics(settings.topic_prefix, device_id)
        self.stats = PublisherStats()
        self.on_ack, self.on_lost, self.on_ready, self.on_receipt = on_ack, on_lost, on_ready, on_receipt
        self.closing = threading.Event()
        self.fallback = False
        self._proto = mqtt.MQTTv5 if settings.protocol in ("5", "auto") else mqtt.MQTTv311
        self._client = self._make_client()

    def _status(self, state: str) -> str:
        body: dict = {"state": state, "device_id": self.device_id}
        if state == "online":  # ISO 8601 UTC, as the health message and the records write time
            body["time"] = iso_utc()
            if self.status_extra:
                body.update(self.status_extra())
        return json.dumps(body)

    def _make_client(self) -> mqtt.Client:
        s = self.s
        cid = s.client_id or f"edge-{self.device_id}"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=self._proto,
                        clean_session=None if self._proto == mqtt.MQTTv5 else True)
        c.will_set(self.t["status"], self._status("offline"), qos=1, retain=True)
        if s.username:
            c.username_pw_set(s.username, s.password)
        if s.tls or s.cafile or s.certfile:
            c.tls_set(ca_certs=s.cafile, certfile=s.certfile, keyfile=s.keyfile, cert_reqs=ssl.CERT_REQUIRED,
                      tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.max_inflight_messages_set(s.max_inflight)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.stats.last_error = f"connect refused: {reason_code}"
            log.warning("broker refused connection: %s", reason_code)
            if self.s.protocol == "auto" and self._proto == mqtt.MQTTv5 and "protocol" in str(reason_code).lower():
                self.fallback = True
            return
        self.stats.connected = True
        self.stats.connects += 1
        self.stats.protocol = "5" if self._proto == mqtt.MQTTv5 else "3.1.1"
        if self.s.receipts:
            client.subscribe(self.t["receipts"], qos=1)
        if self.on_hotlist:
            client.subscribe(self.t["hotlist"] + "/#", qos=1)
        client.publish(self.t["status"], self._status("online"), qos=1, retain=True)
        log.info("connected to %s:%s (MQTT %s)", self.s.host, self.s.port, self.stats.protocol)
        self.on_ready()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.closing.is_set():
            log.debug("disconnected from broker on close: %s", reason_code)  # a clean exit is not a warning
        elif self.stats.connected:
            self.stats.disconnects += 1
            log.warning("disconnected from broker: %s", reason_code)
        self.stats.connected = False
        self.on_lost()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self.on_ack(mid, reason_code)

    def _on_message(self, client, userdata, msg):
        if msg.topic == self.t["receipts"] and self.on_receipt:
            try:
                self.on_receipt(msg.payload)
            except Exception as e:  # a bad receipt must never stop the connection's thread
                log.warning("receipt not understood: %s", e)
        elif msg.topic.startswith(self.t["hotlist"] + "/") and self.on_hotlist and msg.payload:
            rest = msg.topic[len(self.t["hotlist"]) + 1 :]
            try:
                if rest == "manifest":
                    self.on_hotlist("manifest", 0, msg.payload)
                elif rest.startswith("part/") and rest[5:].isdigit():
                    self.on_hotlist("part", int(rest[5:]), msg.payload)
            except Exception as e:  # a bad bundle must never stop the connection's thread
                log.warning("hotlist message on %s not handled: %s", msg.topic, e)

    @property
    def connected(self) -> bool:
        return self.stats.connected

    def start(self) -> None:
        self.fallback = False
        self._client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive)
        self._client.loop_start()

    def switch_to_311(self) -> None:
        log.warning("broker refused MQTT 5; falling back to MQTT 3.1.1")
        self.fallback = False
        self._client.loop_stop()
        self._proto = mqtt.MQTTv311
        self._client = self._make_client()
        self.start()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> tuple[bool, int]:
        """(accepted by paho for sending, message id)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS, info.mid

    def close(self) -> None:
        """Say `offline` (retained) when connected, then disconnect."""
        if self.stats.connected:
            try:
                info = self._client.publish(self.t["status"], self._status("offline"), qos=1, retain=True)
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self.closing.set()
        self._client.disconnect()
        self._client.loop_stop()
