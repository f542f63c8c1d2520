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
      hotlist.pub      the collector's hotlist signing key, public half (bundles it did not sign are refused)
  or, with --password: mqtt-password (0600) instead of device.crt/device.key, and a line to add
  to the broker's password file (`broker-passwd.line`, PBKDF2-SHA512 as mosquitto_passwd writes it).

The CA folder holds two authorities: `ca` signs the broker's certificate and the devices', and
`collectors-ca` signs only collectors'; `hotlist-signing.key` (Ed25519) is the collector's, to sign the
hotlist bundles it sends the devices. The broker takes devices on one listener (their CA; the
certificate's CN is their username and their client id) and collectors on another (the collectors'
CA), so no device certificate, whatever its name, can act as a collector or take a collector's MQTT
session. `devices.crl` lists the device certificates `edge provision revoke` has withdrawn; every
device certificate issued is kept in `issued/` to be revocable by name.

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
RESERVED_DEVICE_IDS = re.compile(r"^(collector|homeassistant$)", re.I)
INTEGRATIONS = ("homeassistant",)  # names deploy/collector/edge.acl gives read rights on the devices' listener


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


def _self_signed(name: str, days: int):
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
    return key, cert


def _crl(ca_key, ca_cert, serials: list[int], days: int = 3650) -> bytes:
    now = _now()
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
         .next_update(now + dt.timedelta(days=days)))
    for n in serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(n).revocation_date(now).build())
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def init_ca(ca_dir: Path, name: str = "edge-lpr deployment CA", days: int = 3650) -> Path:
    """The deployment's CA folder: the devices' and broker's CA, the collectors' CA and an empty
    revocation list. A folder made before the collectors had their own CA gets what it lacks."""
    ca_dir = Path(ca_dir).absolute()
    have = {n for n in ("ca.key", "collectors-ca.key", "devices.crl", "hotlist-signing.key") if (ca_dir / n).exists()}
    if len(have) == 4:
        raise ProvisionError(f"a CA already exists in {ca_dir} (refusing to overwrite ca.key)")
    with _writing(ca_dir) as files:
        if "ca.key" in have:
            key, cert = _load_ca(ca_dir)
        else:
            key, cert = _self_signed(name, days)
            files["ca.key"] = (_key_pem(key), True)
            files["ca.crt"] = (_cert_pem(cert), False)
        if "collectors-ca.key" not in have:
            ckey, ccert = _self_signed(f"{name}: collectors", days)
            files["collectors-ca.key"] = (_key_pem(ckey), True)
            files["collectors-ca.crt"] = (_cert_pem(ccert), False)
        if "devices.crl" not in have:
            files["devices.crl"] = (_crl(key, cert, []), False)
        if "hotlist-signing.key" not in have:  # the collector signs hotlist bundles; devices get the public half
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            hk = Ed25519PrivateKey.generate()
            files["hotlist-signing.key"] = (hk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()), True)
            files["hotlist-signing.pub"] = (hk.public_key().public_bytes(serialization.Encoding.PEM,
                                                                          serialization.PublicFormat.SubjectPublicKeyInfo), False)
    return ca_dir / "ca.crt"


def _load_ca(ca_dir: Path, which: str = "ca"):
    if not (ca_dir / f"{which}.key").exists() or not (ca_dir / f"{which}.crt").exists():
        what = "CA" if which == "ca" else "collectors' CA"
        hint = "" if which == "ca" or not (ca_dir / "ca.key").exists() else " (a CA folder made before collectors had their own CA: it adds it)"
        raise ProvisionError(f"no {what} in {ca_dir}: run `edge provision ca --ca-dir {ca_dir}` first{hint}")
    try:
        key = serialization.load_pem_private_key((ca_dir / f"{which}.key").read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((ca_dir / f"{which}.crt").read_bytes())
    except (ValueError, TypeError) as e:
        raise ProvisionError(f"{ca_dir}: {which}.key / {which}.crt are not a PEM key and certificate ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{ca_dir}: {which}.key is not an EC key (edge provision ca makes P-256 keys)")
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.public_numbers() != key.public_key().public_numbers():
        raise ProvisionError(f"{ca_dir}: {which}.key is not the key of {which}.crt")
    return key, cert


def revoke(ca_dir: Path, device_id: str) -> tuple[Path, int]:
    """Add the device's certificate(s) to devices.crl (re-signed); (the CRL, how many it lists)."""
    ca_dir = Path(ca_dir).absolute()
    key, cert = _load_ca(ca_dir)
    issued = sorted((ca_dir / "issued").glob(f"{device_id}.*.crt")) if DEVICE_ID.match(device_id) else []
    if not issued:
        raise ProvisionError(f"no certificate issued to a device {device_id!r} in {ca_dir / 'issued'}")
    crl_path = ca_dir / "devices.crl"
    old = x509.load_pem_x509_crl(crl_path.read_bytes()) if crl_path.exists() else None
    serials = {r.serial_number for r in old} if old is not None else set()
    serials |= {x509.load_pem_x509_certificate(f.read_bytes()).serial_number for f in issued}
    tmp = crl_path.with_name(".devices.crl.new")
    tmp.write_bytes(_crl(key, cert, sorted(serials)))
    os.replace(tmp, crl_path)
    return crl_path, len(serials)


def _san(name: str):
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.*-]{0,252})$", name):
            raise ProvisionError(f"--san {name!r} is neither an IP address nor a DNS name") from None
        return x509.DNSName(name)


def _leaf(ca_dir: Path, cn: str, server_names: list[str] | None, days: int, issuer: str = "ca"):
    """A new key and its certificate, signed by the CA (`issuer`: ca or collectors-ca): a client
    certificate, or a server one with SANs."""
    ca_dir = Path(ca_dir).absolute()
    ca_key, ca_cert = _load_ca(ca_dir, issuer)
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


COLLECTOR_NAME = re.compile(r"^collector[A-Za-z0-9._-]{0,54}$")


def issue_collector_cert(ca_dir: Path, out_dir: Path, name: str, days: int = 825) -> tuple[Path, Path]:
    """A collector's client certificate, from the collectors' CA; the name starts with `collector`."""
    if not COLLECTOR_NAME.match(name):
        raise ProvisionError(f"collector name {name!r}: starts with 'collector' (e.g. collector, collector-2), "
                             "then letters, digits, '.', '_' or '-'")
    return issue_cert(ca_dir, out_dir, name, name, issuer="collectors-ca", days=days)


def issue_integration_cert(ca_dir: Path, out_dir: Path, name: str, days: int = 825) -> tuple[Path, Path]:
    """An integration's client certificate (Home Assistant), from the devices' CA: its name is one the
    broker's ACL gives read rights to (INTEGRATIONS)."""
    if name not in INTEGRATIONS:
        raise ProvisionError(f"integration {name!r}: one of {', '.join(INTEGRATIONS)}")
    return issue_cert(ca_dir, out_dir, name, name, days=days)


def issue_cert(ca_dir: Path, out_dir: Path, stem: str, cn: str, server_names: list[str] | None = None, days: int = 825,
               issuer: str = "ca") -> tuple[Path, Path]:
    """Write `stem`.key and `stem`.crt into out_dir (refusing to overwrite either)."""
    out_dir = Path(out_dir).absolute()
    key, cert = _leaf(ca_dir, cn, server_names, days, issuer)
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
        "[mqtt]", f'host = "{esc(spec.broker_host)}"', f"port = {spec.broker_port}", "tls = true", f'cafile = "{etc}/ca.crt"', *auth,
        "receipts = true  # a read leaves the outbox when the collector has stored it, not when the broker took it", "",
        "[outbox]", 'key_file = "credential:outbox.key"  # made on the device at first boot: queued reads are sealed with it', "",
        "[hotlist]", "enabled = true  # match reads against the collector's signed list of vehicles of possible interest",
        f'public_key = "{etc}/hotlist.pub"', "",
    ])


def make_bundle(ca_dir: Path, out: Path, spec: DeviceSpec) -> Path:
    ca_dir, out = Path(ca_dir).absolute(), Path(out).absolute()
    if not DEVICE_ID.match(spec.device_id):
        raise ProvisionError(f"device id {spec.device_id!r}: letters, digits, '.', '_' and '-' only (max 63)")
    if RESERVED_DEVICE_IDS.match(spec.device_id):
        raise ProvisionError(f"device id {spec.device_id!r} is reserved: names starting with 'collector' are the "
                             "collectors' (edge provision client collector makes a collector's certificate), "
                             "'homeassistant' is Home Assistant's (edge provision integration homeassistant)")
    if not spec.owner.strip():
        raise ProvisionError("--owner is required: who answers for this camera's reads")
    if out.exists() and any(out.iterdir()):
        raise ProvisionError(f"{out} is not empty (refusing to overwrite a bundle)")
    _load_ca(ca_dir)  # there, and a key with its certificate
    if not (ca_dir / "hotlist-signing.pub").exists():
        raise ProvisionError(f"{ca_dir} has no hotlist-signing.pub (a CA folder made before hotlists): run "
                             f"`edge provision ca --ca-dir {ca_dir}` once, it adds what is missing")
    files = {"ca.crt": ((ca_dir / "ca.crt").read_bytes(), False),
             "hotlist.pub": ((ca_dir / "hotlist-signing.pub").read_bytes(), False)}
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
    if not spec.password:  # kept by serial, so that `edge provision revoke` can name it
        issued = ca_dir / "issued"
        issued.mkdir(mode=0o700, exist_ok=True)
        (issued / f"{spec.device_id}.{cert.serial_number:x}.crt").write_bytes(_cert_pem(cert))
    return out
