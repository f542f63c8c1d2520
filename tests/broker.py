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
        self.collector_port: int | None = None  # collector_broker: the collectors' listener

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
    """deploy/collector/mosquitto.conf as shipped (two TLS listeners: devices with certificates from
    ca.crt, CN = username = client id, edge.acl; collectors with certificates from collectors-ca.crt,
    collectors.acl), on free loopback ports (`port` the devices', `collector_port` the collectors')
    with the given CA folder and server certificate, started."""
    root = Path(__file__).resolve().parents[1]
    b = Broker(workdir)
    b.collector_port = free_port()
    conf = (root / "deploy" / "collector" / "mosquitto.conf").read_text()
    for old, new in (("listener 8883", f"listener {b.port} 127.0.0.1"), ("listener 8884", f"listener {b.collector_port} 127.0.0.1"),
                     ("/var/lib/mosquitto/", f"{workdir}/"), ("/etc/mosquitto/edge/server.", f"{server_dir}/server."),
                     ("/etc/mosquitto/edge/edge.acl", f"{root}/deploy/collector/edge.acl"),
                     ("/etc/mosquitto/edge/collectors.acl", f"{root}/deploy/collector/collectors.acl"),
                     ("/etc/mosquitto/edge/", f"{ca_dir}/")):
        conf = conf.replace(old, new)
    b.conf.write_text(f"log_dest file {workdir}/mosquitto.log\n{'user root' if os.geteuid() == 0 else ''}\n{conf}")
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


class Mqtt311OnlyProxy:
    """A loopback proxy in front of a real broker that behaves like a broker which knows only MQTT
    3.1.1: a CONNECT asking for MQTT 5 gets the 3.1.1 refusal (CONNACK return code 1, "unacceptable
    protocol version") and is closed; any other connection is passed through to the broker."""

    def __init__(self, broker_port: int):
        self.broker_port = broker_port
        self.refused_v5 = 0
        self.passed = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            head = self._read(conn, 1)
            length, mult, raw = 0, 1, b""
            while True:  # the remaining length, a variable-length integer
                b = self._read(conn, 1)
                raw += b
                length += (b[0] & 0x7F) * mult
                mult *= 128
                if not b[0] & 0x80:
                    break
            body = self._read(conn, length)
            name_len = int.from_bytes(body[:2], "big")
            level = body[2 + name_len]
            if head[0] >> 4 == 1 and level == 5:
                self.refused_v5 += 1
                conn.sendall(b"\x20\x02\x00\x01")
                conn.close()
                return
            self.passed += 1
            up = socket.create_connection(("127.0.0.1", self.broker_port))
            up.sendall(head + raw + body)
        except (OSError, ConnectionError, IndexError):
            conn.close()
            return

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
        threading.Thread(target=pipe, args=(up, conn), daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
