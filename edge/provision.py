"""Per-device provisioning: the deployment's own CA, device bundles, broker credentials.

Keys and certificates are made in-process with the `cryptography` package (EC P-256, SHA-256);
nothing leaves the machine and no external tool runs. A device bundle is a folder to drop onto the
SD card's boot partition:

    edge-bundle/
      device.toml      the device configuration (TLS paths point at /etc/edge)
      ca.crt           the deployment CA (to verify the broker)
      device.crt       this device's client certificate (CN = device id = MQTT username)
      device.key       its private key (mode 0600; moved into /etc/edge on first boot)
      hostname         the hostname to set
  or, with --password: mqtt-password (0600) instead of device.crt/device.key, and a line to add
  to the broker's password file (`broker-passwd.line`, PBKDF2-SHA512 as mosquitto_passwd writes it).

Every step writes its files under temporary names and renames them into place at the end: a step
that fails leaves nothing behind, so it can simply be run again.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# names the broker's ACL (deploy/collector/edge.acl) gives powers to: never a device's
RESERVED_DEVICE_IDS = re.compile(r"^collector", re.I)


class ProvisionError(Exception):
    pass


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@contextlib.contextmanager
def _writing(folder: Path):
    """Collect files to write into `folder`; on leaving without error they are put in place (keys
    0600), otherwise nothing is left behind. Yields a dict name -> (bytes, private). A folder that
    does not exist yet (or is empty) appears whole, by one rename, even if the process is killed."""
    files: dict[str, tuple[bytes, bool]] = {}
    yield files
    for name in files:
        if (folder / name).exists():
            raise ProvisionError(f"{folder / name} already exists (refusing to overwrite it)")
    whole = not folder.exists() or not any(folder.iterdir())
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.provision-", dir=folder.parent if whole else folder))
    done: list[Path] = []
    try:
        for name, (data, private) in files.items():
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        if whole:
            os.chmod(tmp, 0o700 if "ca.key" in files else 0o755)  # the CA folder stays private
            os.replace(tmp, folder)  # onto an empty folder too
            return
        for name in files:
            os.replace(tmp / name, folder / name)
            done.append(folder / name)
    except BaseException:
        for f in done:
            f.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def init_ca(ca_dir: Path, name: str = "edge-lpr deployment CA", days: int = 3650) -> Path:
    ca_dir = Path(ca_dir).absolute()
    if (ca_dir / "ca.key").exists():
        raise ProvisionError(f"a CA already exists in {ca_dir} (refusing to overwrite ca.key)")
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    with _writing(ca_dir) as files:
        files["ca.key"] = (_key_pem(key), True)
        files["ca.crt"] = (_cert_pem(cert), False)
    return ca_dir / "ca.crt"


def _load_ca(ca_dir: Path):
    if not (ca_dir / "ca.key").exists() or not (ca_dir / "ca.crt").exists():
        raise ProvisionError(f"no CA in {ca_dir}: run `edge provision ca --ca-dir {ca_dir}` first")
    try:
        key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    except (ValueError, TypeError) as e:
        raise ProvisionError(f"{ca_dir}: ca.key / ca.crt are not a PEM key and certificate ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{ca_dir}: ca.key is not an EC key (edge provision ca makes P-256 keys)")
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.public_numbers() != key.public_key().public_numbers():
        raise ProvisionError(f"{ca_dir}: ca.key is not the key of ca.crt")
    return key, cert


def _san(name: str):
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.*-]{0,252})$", name):
            raise ProvisionError(f"--san {name!r} is neither an IP address nor a DNS name") from None
        return x509.DNSName(name)


def _leaf(ca_dir: Path, cn: str, server_names: list[str] | None, days: int):
    """A new key and its certificate, signed by the CA: a client certificate, or a server one with SANs."""
    ca_dir = Path(ca_dir).absolute()
    ca_key, ca_cert = _load_ca(ca_dir)
    if not cn or len(cn) > 64:
        raise ProvisionError(f"name {cn!r}: 1 to 64 characters")
    key = _new_key()
    now = _now()
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if server_names:
        b = b.add_extension(x509.SubjectAlternativeName([_san(n) for n in server_names]), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


def issue_cert(ca_dir: Path, out_dir: Path, stem: str, cn: str, server_names: list[str] | None = None, days: int = 825) -> tuple[Path, Path]:
    """Write `stem`.key and `stem`.crt into out_dir (refusing to overwrite either)."""
    out_dir = Path(out_dir).absolute()
    key, cert = _leaf(ca_dir, cn, server_names, days)
    with _writing(out_dir) as files:
        files[f"{stem}.key"] = (_key_pem(key), True)
        files[f"{stem}.crt"] = (_cert_pem(cert), False)
    return out_dir / f"{stem}.key", out_dir / f"{stem}.crt"


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
    camera_source: str = "/dev/video0"
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
    ca_dir, out = Path(ca_dir).absolute(), Path(out).absolute()
    if not DEVICE_ID.match(spec.device_id):
        raise ProvisionError(f"device id {spec.device_id!r}: letters, digits, '.', '_' and '-' only (max 63)")
    if RESERVED_DEVICE_IDS.match(spec.device_id):
        raise ProvisionError(f"device id {spec.device_id!r} is reserved: the broker's ACL gives names starting with "
                             "'collector' the collector's rights (edge provision client collector is the collector's certificate)")
    if not spec.owner.strip():
        raise ProvisionError("--owner is required: who answers for this camera's reads")
    if out.exists() and any(out.iterdir()):
        raise ProvisionError(f"{out} is not empty (refusing to overwrite a bundle)")
    _load_ca(ca_dir)  # there, and a key with its certificate
    files = {"ca.crt": ((ca_dir / "ca.crt").read_bytes(), False)}
    if spec.password:
        pw = secrets.token_urlsafe(24)
        files["mqtt-password"] = ((pw + "\n").encode(), True)
        files["broker-passwd.line"] = ((mosquitto_password_line(spec.device_id, pw) + "\n").encode(), False)
    else:
        key, cert = _leaf(ca_dir, spec.device_id, None, 825)
        files["device.key"] = (_key_pem(key), True)
        files["device.crt"] = (_cert_pem(cert), False)
    files["device.toml"] = (device_toml(spec).encode(), False)
    files["hostname"] = ((spec.device_id + "\n").encode(), False)
    with _writing(out) as w:
        w.update(files)
    return out
