"""A real Mosquitto broker on a free loopback port, started and stopped by tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, up: bool = True) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return True
        except OSError:
            if not up:
                return True
        time.sleep(0.05)
    return False


class Broker:
    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = ""):
        if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
            raise RuntimeError("mosquitto is not installed (make test installs it)")
        self.exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = port or free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\nlog_dest file {self.dir}/mosquitto.log\n"
            # as root, mosquitto would switch to its own user, who cannot read pytest's private folders
            f"{'user root' if os.geteuid() == 0 else ''}\n{extra_conf}"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(self.port):
            self.stop()
            raise RuntimeError(f"mosquitto did not start on port {self.port}: {(self.dir / 'mosquitto.log').read_text()[-500:]}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        wait_port(self.port, 5, up=False)


def collector_broker(workdir: Path, ca_dir: Path, server_dir: Path) -> Broker:
    """deploy/collector/mosquitto.conf as shipped (TLS, client certificates required, the
    certificate's CN as username, the edge.acl patterns), on a free loopback port with the given
    CA and server certificate, started."""
    root = Path(__file__).resolve().parents[1]
    conf = (root / "deploy" / "collector" / "mosquitto.conf").read_text()
    conf = "\n".join(line for line in conf.splitlines() if not line.startswith(("listener", "persistence_location", "acl_file",
                                                                                   "cafile", "certfile", "keyfile", "persistence")))
    conf += (f"\ncafile {ca_dir}/ca.crt\ncertfile {server_dir}/server.crt\nkeyfile {server_dir}/server.key\n"
             f"acl_file {root}/deploy/collector/edge.acl\n")
    b = Broker(workdir, extra_conf=conf.replace("allow_anonymous false", ""))
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    return b.start()


class Subscriber:
    """Collects messages on a topic filter (QoS 1, persistent session so nothing is missed)."""

    def __init__(self, port: int, topic: str, client_id: str = "test-sub"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False)
        self.topic = topic
        self.c.on_message = self._msg
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _msg(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def wait_for(self, pred, timeout: float = 20.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if pred(list(self.messages)):
                    return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
