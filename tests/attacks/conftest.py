"""A deployment's PKI (both CAs, a server, a collector, three devices) and the shipped broker settings
on free loopback ports, for the attack and fault suites."""

import pytest

from ..broker import collector_broker
from ..conftest import run_edge


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = d / "ca"
    steps = [("ca",), ("server", "localhost", "--san", "127.0.0.1", "--out", str(d / "server")),
             ("client", "collector", "--out", str(d / "collector"))]
    steps += [("device", dev, "--owner", "Agency", "--broker", "127.0.0.1:8883", "--out", str(d / dev))
              for dev in ("dev-a", "dev-b", "dev-c")]
    for args in steps:
        r = run_edge("provision", *args, "--ca-dir", str(ca))
        assert r.returncode == 0, r.stderr
    return d


@pytest.fixture
def broker(tmp_path, pki):
    b = collector_broker(tmp_path / "broker", pki / "ca", pki / "server")
    yield b
    b.stop()


