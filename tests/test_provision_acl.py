"""`edge provision` certificates and bundles, and the broker ACL of deploy/collector, with a real Mosquitto."""

import os
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import load_config

from .broker import Broker, collector_broker
from .conftest import ROOT, run_edge


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    d = tmp_path_factory.mktemp("deploy")
    ca = d / "ca"
    assert run_edge("provision", "ca", "--ca-dir", str(ca)).returncode == 0
    assert run_edge("provision", "server", "localhost", "--san", "127.0.0.1", "--san", "localhost", "--ca-dir", str(ca),
                    "--out", str(d / "server")).returncode == 0
    assert run_edge("provision", "client", "collector", "--ca-dir", str(ca), "--out", str(d / "collector")).returncode == 0
    for dev in ("dev-a", "dev-b"):
        r = run_edge("provision", "device", dev, "--ca-dir", str(ca), "--out", str(d / dev), "--owner", "Agency",
                     "--broker", "127.0.0.1:8883", "--gps", "fixed:47.1,15.4")
        assert r.returncode == 0, r.stderr
    return d


def test_bundle_contents_and_modes(deployment):
    b = deployment / "dev-a"
    assert {p.name for p in b.iterdir()} == {"ca.crt", "device.crt", "device.key", "device.toml", "hostname", "hotlist.pub"}
    assert oct((b / "device.key").stat().st_mode & 0o777) == "0o600"
    assert oct((deployment / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"
    text = (b / "device.toml").read_text().replace("/etc/edge", str(b)).replace("/var/lib/edge", str(deployment / "state"))
    (deployment / "check.toml").write_text(text)
    cfg = load_config(deployment / "check.toml", env={})
    assert cfg.device.id == "dev-a" and cfg.mqtt.tls and cfg.gps.lat == 47.1
    assert str(cfg.mqtt.keyfile) == "credential:device.key"  # handed over by systemd (LoadCredential=)
    from edge.config import resolve_secret

    os.environ["CREDENTIALS_DIRECTORY"] = str(b)
    try:
        assert resolve_secret(cfg.mqtt.keyfile) == b / "device.key"
    finally:
        del os.environ["CREDENTIALS_DIRECTORY"]


def test_provision_bad_inputs(tmp_path, deployment):
    r = run_edge("provision", "device", "bad id!", "--ca-dir", str(deployment / "ca"), "--out", str(tmp_path / "x"), "--owner", "A")
    assert r.returncode == 2 and "device id" in r.stderr
    r = run_edge("provision", "device", "dev-c", "--ca-dir", str(tmp_path / "noca"), "--out", str(tmp_path / "y"), "--owner", "A")
    assert r.returncode == 2 and "no CA" in r.stderr
    r = run_edge("provision", "ca", "--ca-dir", str(deployment / "ca"))
    assert r.returncode == 2 and "already exists" in r.stderr
    r = run_edge("provision", "device", "dev-a", "--ca-dir", str(deployment / "ca"), "--out", str(deployment / "dev-a"), "--owner", "A")
    assert r.returncode == 2 and "not empty" in r.stderr


class Client:
    def __init__(self, port, d, cert_dir, stem, cid):
        self.got, self.acks, self.subacks = [], {}, []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        self.c.tls_set(ca_certs=str(d / "ca" / "ca.crt"), certfile=str(cert_dir / f"{stem}.crt"), keyfile=str(cert_dir / f"{stem}.key"))
        self.c.on_message = lambda c, u, m: self.got.append(m.topic)
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.extend(rcs)
        self.ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: self.ready.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(10)

    def publish(self, topic):
        info = self.c.publish(topic, b"{}", qos=1)
        end = time.monotonic() + 5
        while info.mid not in self.acks and time.monotonic() < end:
            time.sleep(0.02)
        return self.acks.get(info.mid)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_broker_acl_devices_own_topics_only(tmp_path, deployment):
    d = deployment
    b = collector_broker(tmp_path / "broker", d / "ca", d / "server")
    col = Client(b.collector_port, d, d / "collector", "collector", "collector-1")
    a = Client(b.port, d, d / "dev-a", "device", "dev-a")
    try:
        col.c.subscribe("$share/collectors/lpr/v1/+/reads", qos=1)
        col.c.subscribe("lpr/v1/+/status", qos=1)
        a.c.subscribe("lpr/v1/dev-b/#", qos=1)  # reading another device's topics
        time.sleep(0.5)
        ok = a.publish("lpr/v1/dev-a/reads")
        bad = a.publish("lpr/v1/dev-b/reads")  # publishing as device B
        assert not ok.is_failure and bad.is_failure  # MQTT 5 tells the device: not authorized
        bclient = Client(b.port, d, d / "dev-b", "device", "dev-b")
        try:
            assert not bclient.publish("lpr/v1/dev-b/reads").is_failure
            time.sleep(1.0)
        finally:
            bclient.close()
        assert sorted(col.got) == ["lpr/v1/dev-a/reads", "lpr/v1/dev-b/reads"]  # the collector reads all, nothing forged
        assert a.got == []  # device A saw nothing of device B (mosquitto grants the subscription but delivers nothing)
    finally:
        a.close()
        col.close()
        b.stop()


def test_password_bundle_works_with_mosquitto(tmp_path, deployment):
    out = tmp_path / "pw"
    r = run_edge("provision", "device", "dev-pw", "--password", "--ca-dir", str(deployment / "ca"), "--out", str(out), "--owner", "A")
    assert r.returncode == 0, r.stderr
    assert not (out / "device.key").exists() and oct((out / "mqtt-password").stat().st_mode & 0o777) == "0o600"
    pwfile = tmp_path / "passwd"
    pwfile.write_text((out / "broker-passwd.line").read_text())
    b = Broker(tmp_path / "broker", extra_conf=f"password_file {pwfile}\n")
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    b.start()
    try:
        results = {}
        for name, pw in (("good", (out / "mqtt-password").read_text().strip()), ("bad", "wrong")):
            ev = threading.Event()
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pw-{name}", protocol=mqtt.MQTTv5)
            c.username_pw_set("dev-pw", pw)
            c.on_connect = lambda cl, u, f, rc, p, name=name, ev=ev: (results.__setitem__(name, rc), ev.set())
            c.connect("127.0.0.1", b.port)
            c.loop_start()
            ev.wait(10)
            c.disconnect()
            c.loop_stop()
        assert not results["good"].is_failure and results["bad"].is_failure
    finally:
        b.stop()


def test_firstboot_moves_secrets_and_sets_hostname(tmp_path, deployment):
    import shutil
    import subprocess

    root = tmp_path / "root"
    boot = root / "boot" / "firmware"
    boot.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n")
    shutil.copytree(deployment / "dev-a", boot / "edge-bundle")
    (boot / "edge-bundle" / "authorized_keys").write_text("ssh-ed25519 AAAA test@tech\n")
    env = {"ROOT": str(root), "SVC_USER": "root", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    r = subprocess.run(["sh", str(ROOT / "deploy" / "image" / "edge-firstboot.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    etc = root / "etc" / "edge"
    assert oct((etc / "credentials" / "device.key").stat().st_mode & 0o777) == "0o600"
    assert (etc / "credentials" / "mqtt-password").stat().st_size == 0  # unused credential: present, empty
    okey = etc / "credentials" / "outbox.key"  # the outbox's sealing key, made on the device
    assert okey.stat().st_size == 32 and oct(okey.stat().st_mode & 0o777) == "0o600"
    assert 'key_file = "credential:outbox.key"' in (etc / "device.toml").read_text()
    assert oct((etc / "device.toml").stat().st_mode & 0o777) == "0o640"
    assert not (boot / "edge-bundle").exists()  # nothing secret left on the FAT partition
    assert (root / "etc" / "hostname").read_text().strip() == "dev-a"
    assert "dev-a" in (root / "etc" / "hosts").read_text()
    assert (root / "root" / ".ssh" / "authorized_keys").exists()
    again = subprocess.run(["sh", str(ROOT / "deploy" / "image" / "edge-firstboot.sh")], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_provision_with_relative_paths_as_the_readme_writes_them(tmp_path):
    """The README's commands, typed in a fresh folder: relative --ca-dir and --out."""
    cwd = {"cwd": tmp_path}

    def edge(*a):
        import subprocess
        import sys

        return subprocess.run([sys.executable, "-m", "edge.cli", "provision", *a], capture_output=True, text=True, timeout=60, **cwd)

    assert edge("ca", "--ca-dir", "ca/").returncode == 0
    assert edge("server", "collector.example.org", "--ca-dir", "ca/", "--out", "broker/").returncode == 0
    assert edge("client", "collector", "--ca-dir", "ca/", "--out", "collector/").returncode == 0
    r = edge("device", "gate-north-01", "--ca-dir", "ca/", "--out", "edge-bundle/", "--owner", "Border Agency",
             "--site", "North crossing", "--broker", "collector.example.org:8883", "--gps", "fixed:47.07,15.44")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "broker").iterdir()} == {"server.key", "server.crt"}
    assert {p.name for p in (tmp_path / "edge-bundle").iterdir()} == {"ca.crt", "device.crt", "device.key", "device.toml", "hostname",
                                                                       "hotlist.pub"}
    assert oct((tmp_path / "broker" / "server.key").stat().st_mode & 0o777) == "0o600"


def test_a_failed_provisioning_step_leaves_nothing_and_can_be_rerun(tmp_path, deployment):
    ca = str(deployment / "ca")
    out = tmp_path / "broker"
    r = run_edge("provision", "server", "broker.example.org", "--san", "not a name!", "--ca-dir", ca, "--out", str(out))
    assert r.returncode == 2 and "--san" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
    r = run_edge("provision", "server", "broker.example.org", "--ca-dir", ca, "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = run_edge("provision", "server", "broker.example.org", "--ca-dir", ca, "--out", str(out))  # never over a key
    assert r.returncode == 2 and "already exists" in r.stderr
    bundle = tmp_path / "bundle"
    r = run_edge("provision", "device", "gate-7", "--ca-dir", ca, "--out", str(bundle), "--owner", "A", "--gps", "fixed:x")
    assert r.returncode == 2 and "--gps" in r.stderr and not bundle.exists()
    assert run_edge("provision", "device", "gate-7", "--ca-dir", ca, "--out", str(bundle), "--owner", "A").returncode == 0


@pytest.mark.parametrize("name", ["collector", "Collector", "collector-2"])
def test_a_device_cannot_be_provisioned_with_the_collectors_name(tmp_path, deployment, name):
    out = tmp_path / "b"
    r = run_edge("provision", "device", name, "--ca-dir", str(deployment / "ca"), "--out", str(out), "--owner", "A")
    assert r.returncode == 2 and "reserved" in r.stderr and not out.exists()


def test_the_certificates_are_what_the_broker_and_devices_expect(deployment):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = x509.load_pem_x509_certificate((deployment / "ca" / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    dev = x509.load_pem_x509_certificate((deployment / "dev-a" / "device.crt").read_bytes())
    assert dev.subject.rfc4514_string() == "CN=dev-a" and dev.issuer == ca.subject
    assert list(dev.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca.public_key().verify(dev.signature, dev.tbs_certificate_bytes, ec.ECDSA(dev.signature_hash_algorithm))  # signed by the CA
    srv = x509.load_pem_x509_certificate((deployment / "server" / "server.crt").read_bytes())
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_the_bundle_s_camera_source_is_one_its_image_has(tmp_path, deployment):
    import tomllib

    ca = str(deployment / "ca")

    def source(out, *extra):
        r = run_edge("provision", "device", "cam-1", "--ca-dir", ca, "--out", str(tmp_path / out), "--owner", "A", *extra)
        assert r.returncode == 0, r.stderr
        return tomllib.loads((tmp_path / out / "device.toml").read_text())["camera"]["source"]

    assert source("debian") == "/dev/video0"  # the Debian image (the default) has no picamera2
    assert source("pi", "--image", "raspios") == "picamera2"
    assert source("rtsp", "--camera-source", "rtsp://cam.local/stream") == "rtsp://cam.local/stream"
    r = run_edge("provision", "device", "cam-2", "--ca-dir", ca, "--out", str(tmp_path / "x"), "--owner", "A",
                 "--camera-source", "picamera2")
    assert r.returncode == 2 and "--image raspios" in r.stderr and not (tmp_path / "x").exists()
    # on a machine without picamera2 a picamera2 configuration cannot run: config check says so (not offline)
    pi = tmp_path / "pi" / "device.toml"
    pi.write_text(pi.read_text().replace("/etc/edge/ca.crt", str(deployment / "ca" / "ca.crt"))
                  .replace("/etc/edge/device.crt", str(tmp_path / "pi" / "device.crt"))
                  .replace("/etc/edge/hotlist.pub", str(tmp_path / "pi" / "hotlist.pub")))
    r = run_edge("config", "check", str(pi))
    assert r.returncode == 2 and "picamera2 is not installed here" in r.stderr, r.stdout + r.stderr
    assert run_edge("config", "check", "--offline", str(pi)).returncode == 0
