"""MQTT over TLS with server verification and client certificates, against a real Mosquitto."""

import shutil
import subprocess
import time

import pytest

from edge.mqtt import MqttSettings
from edge.outbox import Outbox
from edge.runtime.publisher import Publisher

from .broker import Broker


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=test-ca", cwd=d)
    for name, cn, ext in (("server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "dev-tls", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={cn}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.crt",
                "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    for f in d.iterdir():
        f.chmod(0o644)
    return d


def test_tls_with_client_certificate(tmp_path, pki):
    conf = (f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
            "require_certificate true\nuse_identity_as_username true\n")
    b = Broker(tmp_path / "broker", extra_conf=conf).start()
    try:
        ob = Outbox(tmp_path / "o.db")
        ob.put("tls-1", "lpr/v1/dev-tls/reads", b'{"read_id":"tls-1"}')
        pub = Publisher(MqttSettings(host="127.0.0.1", port=b.port, cafile=str(pki / "ca.crt"), certfile=str(pki / "client.crt"),
                                     keyfile=str(pki / "client.key")), "dev-tls", ob)
        pub.start()
        try:
            assert pub.wait_connected(15), pub.stats.last_error
            assert pub.flush(15)
        finally:
            pub.stop()
        # without a client certificate the broker refuses, and the read stays queued
        ob2 = Outbox(tmp_path / "o2.db")
        ob2.put("tls-2", "lpr/v1/dev-tls/reads", b"{}")
        anon = Publisher(MqttSettings(host="127.0.0.1", port=b.port, cafile=str(pki / "ca.crt")), "dev-tls", ob2)
        anon.start()
        try:
            time.sleep(3)
            assert not anon.stats.connected and ob2.backlog() == 1
        finally:
            anon.stop(flush_timeout=0)
    finally:
        b.stop()


def test_tls_rejects_a_server_it_cannot_verify(tmp_path, pki):
    conf = f"certfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
    b = Broker(tmp_path / "broker", extra_conf=conf).start()
    other = tmp_path / "other-ca.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tmp_path / "o.key"),
            "-out", str(other), "-days", "2", "-subj", "/CN=other", cwd=tmp_path)
    try:
        ob = Outbox(tmp_path / "o.db")
        ob.put("x", "lpr/v1/d/reads", b"{}")
        pub = Publisher(MqttSettings(host="127.0.0.1", port=b.port, cafile=str(other)), "d", ob)
        pub.start()
        try:
            time.sleep(3)
            assert not pub.stats.connected and ob.backlog() == 1
        finally:
            pub.stop(flush_timeout=0)
    finally:
        b.stop()
