"""Per-device provisioning: the deployment's own CA, device bundles, broker credentials.

Keys are made locally with the `openssl` command line tool (Debian's openssl package); nothing
leaves the machine. A device bundle is a folder to drop onto the SD card's boot partition:

    edge-bundle/
      device.toml      the device configuration (TLS paths point at /etc/edge)
      ca.crt           the deployment CA (to verify the broker)
      device.crt       this device's client certificate (CN = device id = MQTT username)
      device.key       its private key (mode 0600; moved into /etc/edge on first boot)
      hostname         the hostname to set
  or, with --password: mqtt-password (0600) instead of device.crt/device.key, and a line to add
  to the broker's password file (`broker-passwd.line`, PBKDF2-SHA512 as mosquitto_passwd writes it).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class ProvisionError(Exception):
    pass


def _openssl(*args: str, cwd: Path) -> None:
    if not shutil.which("openssl"):
        raise ProvisionError("openssl is not installed (apt-get install openssl)")
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ProvisionError(f"openssl {args[0]} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")


def _private(path: Path) -> None:
    os.chmod(path, 0o600)


def init_ca(ca_dir: Path, name: str = "edge-lpr deployment CA", days: int = 3650) -> Path:
    ca_dir.mkdir(parents=True, exist_ok=True)
    if (ca_dir / "ca.key").exists():
        raise ProvisionError(f"a CA already exists in {ca_dir} (refusing to overwrite ca.key)")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", str(days), "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=ca_dir)
    _private(ca_dir / "ca.key")
    return ca_dir / "ca.crt"


def issue_cert(ca_dir: Path, out_dir: Path, stem: str, cn: str, server_names: list[str] | None = None, days: int = 825) -> tuple[Path, Path]:
    """A key and a certificate signed by the CA: a client certificate, or a server one with SANs."""
    if not (ca_dir / "ca.key").exists():
        raise ProvisionError(f"no CA in {ca_dir}: run `edge provision ca --ca-dir {ca_dir}` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    key, csr, crt, ext = (out_dir / f"{stem}{s}" for s in (".key", ".csr", ".crt", ".ext"))
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={cn}", cwd=out_dir)
    _private(key)
    if server_names:
        sans = ",".join(f"IP:{n}" if re.match(r"^[0-9.]+$|:", n) else f"DNS:{n}" for n in server_names)
        ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
    else:
        ext.write_text("extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.crt"), "-CAkey", str(ca_dir / "ca.key"),
             "-CAcreateserial", "-out", str(crt), "-days", str(days), "-extfile", str(ext), cwd=out_dir)
    csr.unlink()
    ext.unlink()
    return key, crt


def mosquitto_password_line(user: str, password: str, iterations: int = 101) -> str:
    """A password-file line in mosquitto 2's format ($7$: PBKDF2-HMAC-SHA512)."""
    salt = secrets.token_bytes(12)
    h = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{user}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(h).decode()}"


@dataclass
class DeviceSpec:
    device_id: str
    owner: str
    site: str = ""
    camera_id: str = ""
    camera_source: str = "picamera2"
    mounting: str = "fixed"
    broker_host: str = "localhost"
    broker_port: int = 8883
    gps: str = "none"  # none | gpsd | fixed:LAT,LON | nmea:/dev/ttyUSB0
    password: bool = False


def device_toml(spec: DeviceSpec, etc: str = "/etc/edge") -> str:
    gps_lines = ['mode = "none"']
    if spec.gps == "gpsd":
        gps_lines = ['mode = "gpsd"']
    elif spec.gps.startswith("fixed:"):
        try:
            lat, lon = (float(v) for v in spec.gps[6:].split(","))
        except ValueError:
            raise ProvisionError(f"--gps fixed:LAT,LON, got {spec.gps!r}") from None
        gps_lines = ['mode = "fixed"', f"lat = {lat}", f"lon = {lon}"]
    elif spec.gps.startswith("nmea:"):
        gps_lines = ['mode = "nmea"', f'device = "{spec.gps[5:]}"']
    elif spec.gps != "none":
        raise ProvisionError(f"--gps: none, gpsd, fixed:LAT,LON or nmea:DEVICE, got {spec.gps!r}")
    # secrets reach the service as systemd credentials (LoadCredential=, see deploy/image/units/edge.service)
    auth = [f'username = "{spec.device_id}"', 'password_file = "credential:mqtt-password"'] if spec.password else \
        [f'certfile = "{etc}/device.crt"', 'keyfile = "credential:device.key"']
    esc = lambda v: v.replace("\\", "\\\\").replace('"', '\\"')  # noqa: E731
    return "\n".join([
        "# Made by `edge provision device`; check with `edge config check`.",
        "[device]", f'id = "{spec.device_id}"', 'state_dir = "/var/lib/edge"', "",
        "[camera]", f'id = "{esc(spec.camera_id or spec.device_id + "-cam")}"', f'owner = "{esc(spec.owner)}"',
        f'site = "{esc(spec.site)}"' if spec.site else "# site = \"\"", f'mounting = "{spec.mounting}"',
        f'source = "{esc(spec.camera_source)}"', "",
        "[gps]", *gps_lines, "",
        "[mqtt]", f'host = "{esc(spec.broker_host)}"', f"port = {spec.broker_port}", "tls = true", f'cafile = "{etc}/ca.crt"', *auth, "",
    ])


def make_bundle(ca_dir: Path, out: Path, spec: DeviceSpec) -> Path:
    if not DEVICE_ID.match(spec.device_id):
        raise ProvisionError(f"device id {spec.device_id!r}: letters, digits, '.', '_' and '-' only (max 63)")
    if not spec.owner.strip():
        raise ProvisionError("--owner is required: who answers for this camera's reads")
    if out.exists() and any(out.iterdir()):
        raise ProvisionError(f"{out} is not empty (refusing to overwrite a bundle)")
    if not (ca_dir / "ca.crt").exists():
        raise ProvisionError(f"no CA in {ca_dir}: run `edge provision ca --ca-dir {ca_dir}` first")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca_dir / "ca.crt", out / "ca.crt")
    if spec.password:
        pw = secrets.token_urlsafe(24)
        (out / "mqtt-password").write_text(pw + "\n")
        _private(out / "mqtt-password")
        (out / "broker-passwd.line").write_text(mosquitto_password_line(spec.device_id, pw) + "\n")
    else:
        issue_cert(ca_dir, out, "device", spec.device_id)
    (out / "device.toml").write_text(device_toml(spec))
    (out / "hostname").write_text(spec.device_id + "\n")
    return out
