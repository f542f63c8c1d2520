"""One typed configuration for a device, loaded from TOML with environment overrides.

Environment overrides: `EDGE_<SECTION>__<KEY>=value`, e.g. `EDGE_MQTT__HOST=broker.example`,
`EDGE_CAMERA__SOURCE=/dev/video0`. Values are parsed as TOML scalars when they can be
(`EDGE_MQTT__PORT=8883` is the integer 8883), else taken as strings.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from edge.plates import PLATE_MAX_CHARS, PLATE_MIN_CHARS, REGION_CODES, REGIONS, check_regions
from edge.record import Mounting

ENV_PREFIX = "EDGE_"
REGION_HELP = "; ".join(f"{r.code} {r.name}" + (" (plate formats settle letter/digit look-alikes)" if r.formats else "")
                        + (" (the O/0 glyph read as 0, a bar after a digit as 1)" if r.digit_bars else "") for r in REGIONS.values())


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceSection(Section):
    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="unique device id, used in MQTT topics")
    state_dir: Path = Path("/var/lib/edge")


class CameraSection(Section):
    id: str = Field(min_length=1, max_length=64)
    owner: str = Field(min_length=1, max_length=128, description="who owns the camera and answers for its reads")
    operator: str | None = Field(default=None, max_length=128)
    site: str | None = Field(default=None, max_length=128)
    mounting: Mounting = "fixed"
    bearing_deg: float | None = Field(default=None, ge=0, lt=360)
    source: str = Field(default="picamera2", description="picamera2 | /dev/videoN | device index | rtsp://... | http://... | a video file")
    width: int = Field(default=1280, ge=160, le=4096)
    height: int = Field(default=720, ge=120, le=3072)
    fps: float = Field(default=15, gt=0, le=120)
    exposure_us: int | None = Field(default=2000, ge=50, le=1_000_000, description="picamera2: short exposure for moving vehicles")
    lores_width: int = Field(default=640, ge=160, le=1920, description="picamera2: detection stream width")
    retry_max_s: float = Field(default=30, gt=0)


class GpsSection(Section):
    mode: Literal["none", "fixed", "gpsd", "nmea"] = "none"
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    alt_m: float | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=2947, ge=1, le=65535)
    device: str | None = None
    baud: int = 9600
    max_age_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _needs(self):
        if self.mode == "fixed" and (self.lat is None or self.lon is None):
            raise ValueError("mode 'fixed' needs lat and lon")
        if self.mode == "nmea" and not self.device:
            raise ValueError("mode 'nmea' needs device (e.g. /dev/ttyUSB0)")
        return self


def resolve_secret(p: Path | None) -> Path | None:
    """`credential:NAME` is a systemd credential (LoadCredential=NAME:...), found in $CREDENTIALS_DIRECTORY."""
    if p is None or not str(p).startswith("credential:"):
        return p
    base = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(base) / str(p).split(":", 1)[1] if base else p


class MqttSection(Section):
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    keepalive: int = Field(default=30, ge=5, le=3600)
    client_id: str = ""
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    topic_prefix: str = Field(default="lpr/v1", pattern=r"^[^#+]+$")
    username: str | None = None
    password: str | None = None
    password_file: Path | None = Field(default=None, description="read the password from this file (systemd credential)")
    tls: bool = False
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    health_interval_s: float = Field(default=30, ge=1)
    receipts: bool = Field(default=False, description="keep each read until the collector's receipt says it is stored "
                                                      "(provisioned devices: on); off: until the broker's PUBACK")
    receipt_wait_s: float = Field(default=30, ge=0.5, le=3600, description="with receipts: seconds after the broker took a "
                                  "read before it is sent again if no receipt came (doubling with each send, up to an hour)")

    @model_validator(mode="after")
    def _files(self, info: ValidationInfo):
        offline = bool(info.context and info.context.get("offline"))
        for k in ("cafile", "certfile", "keyfile", "password_file"):
            p = resolve_secret(getattr(self, k))
            if p is not None and str(p).startswith("credential:"):
                continue  # only there when systemd runs the service
            if p is not None and offline and info.context is not None:
                info.context.setdefault("unchecked", []).append(f"mqtt.{k}: {p} not checked (it lives on the device)")
                continue
            if p is not None and not Path(p).is_file():
                raise ValueError(f"{k} {p} does not exist")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together")
        return self


class OutboxSection(Section):
    path: Path | None = Field(default=None, description="default: <state_dir>/outbox.db")
    max_age_days: float = Field(default=30, gt=0)
    max_mb: float = Field(default=512, gt=0)
    min_free_mb: float = Field(default=64, ge=0)
    key_file: Path | None = Field(default=None, description="32-byte key that seals queued reads (AES-256-GCM); "
                                  "credential:outbox.key on a provisioned device")

    @model_validator(mode="after")
    def _key(self, info: ValidationInfo):
        p = resolve_secret(self.key_file)
        if p is None or str(p).startswith("credential:"):
            return self  # only there when systemd runs the service
        if info.context and info.context.get("offline"):
            info.context.setdefault("unchecked", []).append(f"outbox.key_file: {p} not checked (it lives on the device)")
        elif not Path(p).is_file():
            raise ValueError(f"key_file {p} does not exist (head -c 32 /dev/urandom > {p}; mode 0600)")
        return self


class PipelineSection(Section):
    threads: int = Field(default=1, ge=1, le=8, description="onnxruntime intra-op threads")
    queue_size: int = Field(default=4, ge=1, le=64, description="frames waiting for inference; the oldest is dropped")
    detect_every: int = Field(default=1, ge=1, le=30, description="run the models on every Nth frame")
    motion_gate: bool = True
    motion_threshold: float = Field(default=0.004, ge=0, le=1, description="fraction of changed pixels that counts as motion")
    idle_detect_every_s: float = Field(default=1.0, gt=0, description="with no motion, still look this often")
    min_confidence: float = Field(default=0.5, ge=0, le=1, description="per-frame reads less sure than this do not vote in a track (a pass then needs [tracking] min_confidence); edge eval, reading still images, drops reads under 0.7")
    regions: list[str] = Field(default_factory=list, description="the site's region(s), from edge.plates: " + REGION_HELP,
                               json_schema_extra={"items": {"enum": list(REGION_CODES)}})
    verify: bool = Field(default=True, description="also take boxes the detector scored just under its threshold when the reader reads them confidently (the detector's calibrated verify rule)")
    min_length: int = Field(default=4, ge=PLATE_MIN_CHARS, le=PLATE_MAX_CHARS, description="shorter reads are dropped (signs, stickers); plates of 2-3 characters need 2 or 3")
    min_plate_width: int = Field(default=0, ge=0, le=4000, description="plates narrower than this many frame pixels are not read (vehicles far in the background); 0: all")
    full_detect_every: int = Field(default=3, ge=1, le=30, description="while tracking, look at the whole frame every Nth frame, around tracked plates in between")
    settle_frames: int = Field(default=4, ge=0, le=100, description="stop re-reading a track read the same way this many frames running, every character read with at least 0.9 confidence (0: always read)")
    reread_misfits: bool = Field(default=True, description="with plate formats (br, eu, uk): a read that fits none is read again "
                                 "from cuts shifted left and right, the first that fits replacing it (video and stills alike)")
    model_dir: Path | None = None
    refine: bool = Field(default=True, description="move each detector box onto the plate's edges before reading it (the model folder's "
                                                   "plate_refiner.onnx; without that file boxes are read as detected)")
    int8: Literal["none", "reader", "detector", "both"] = Field(
        default="none", description="use the int8-quantized model(s) shipped beside the float32 pair: the reader int8 is about 3x faster "
                                    "and reads almost as well; the int8 detector loses plates (models/README.md)")


    @field_validator("regions")
    @classmethod
    def _known_regions(cls, v: list[str]) -> list[str]:
        check_regions(v)
        return v


class TrackingSection(Section):
    max_gap_s: float = Field(default=1.0, gt=0)
    max_duration_s: float = Field(default=60, gt=0)
    min_frames: int = Field(default=2, ge=1)
    min_confidence: float = Field(default=0.8, ge=0, le=1, description="a pass whose per-character vote is less sure than this is not published")
    min_length_share: float = Field(default=0.6, ge=0, le=1, description="the track's reads of the voted length must carry this share "
                                    "of its read confidence: a sign's lettering reads a different length from frame to frame")
    repeat_window_s: float = Field(default=10.0, ge=0, description="the same plate again this soon is the same pass (occlusions)")
    # The detector's boxes of a plate of constant size swing by up to 15% between the two ends of a
    # track (fixture clips 03 and 06); an approaching car's plate grows 1.7-2.7x there.
    towards_ratio: float = Field(default=1.25, gt=1, description="plate height grown (median of the track's last third over its "
                                 "first) by this factor: towards the camera; shrunk by it: away")
    lateral_frac: float = Field(default=0.05, gt=0, lt=1, description="plate centre moved this share of the frame width: left or right")


class RecordSection(Section):
    plate_jpeg_quality: int = Field(default=85, ge=10, le=100)
    vehicle_image: bool = Field(default=False, description="also send a vehicle image (more personal data: off by default)")
    vehicle_max_px: int = Field(default=640, ge=64, le=1920)


class HomeAssistantSection(Section):
    enabled: bool = Field(default=False, description="announce this device to Home Assistant (MQTT discovery): its last "
                          "plate and crop then reach whoever may read those topics, outside the collector's audit")
    discovery_prefix: str = Field(default="homeassistant", pattern=r"^[A-Za-z0-9_/-]+$")


class HotlistSection(Section):
    enabled: bool = Field(default=False, description="match reads against the collector's signed hotlist and raise alerts")
    public_key: Path | None = Field(default=None, description="the collector's hotlist-signing.pub (edge provision device "
                                    "puts it in the bundle)")
    path: Path | None = Field(default=None, description="where the installed bundle is kept; default <state_dir>/hotlist.bundle")
    repeat_window_s: float = Field(default=60, ge=0, description="the same entry matched again this soon is the same alert")

    @model_validator(mode="after")
    def _key(self, info: ValidationInfo):
        if not self.enabled:
            return self
        if self.public_key is None:
            raise ValueError("enabled needs public_key, the collector's hotlist-signing.pub")
        if info.context and info.context.get("offline"):
            info.context.setdefault("unchecked", []).append(f"hotlist.public_key: {self.public_key} not checked (it lives on the device)")
        elif not Path(self.public_key).is_file():
            raise ValueError(f"public_key {self.public_key} does not exist")
        return self


def loopback(host: str) -> bool:
    """Whether HOST (an address or localhost) is this machine's loopback."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class PreviewSection(Section):
    enabled: bool = Field(default=False, description="serve the aiming and focus page (live video of people: every "
                          "opening is logged)")
    listen: str = Field(default="127.0.0.1:8090", description="HOST:PORT of the preview page")
    token_file: Path | None = Field(default=None, description="the token the page asks for (required beyond loopback)")

    @model_validator(mode="after")
    def _listen(self):
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"listen: expected HOST:PORT (e.g. 127.0.0.1:8090), got {self.listen!r}")
        if self.enabled and not loopback(host) and self.token_file is None:
            raise ValueError(f"listen {self.listen!r} is beyond loopback: set token_file, the token the page asks for")
        return self

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host, int(port)


class MetricsSection(Section):
    listen: str = Field(default="", description="HOST:PORT for GET /metrics (Prometheus) and /healthz; empty: off")
    token_file: Path | None = Field(default=None, description="bearer token /metrics wants (required beyond loopback)")

    @model_validator(mode="after")
    def _listen(self):
        if not self.listen:
            return self
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"listen: expected HOST:PORT (e.g. 127.0.0.1:9108), got {self.listen!r}")
        if not loopback(host) and self.token_file is None:
            raise ValueError(f"listen {self.listen!r} is beyond loopback: set token_file, the token /metrics asks for")
        return self

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host, int(port)


class Config(Section):
    device: DeviceSection
    camera: CameraSection
    gps: GpsSection = GpsSection()
    mqtt: MqttSection = MqttSection()
    outbox: OutboxSection = OutboxSection()
    pipeline: PipelineSection = PipelineSection()
    tracking: TrackingSection = TrackingSection()
    record: RecordSection = RecordSection()
    metrics: MetricsSection = MetricsSection()
    homeassistant: HomeAssistantSection = HomeAssistantSection()
    preview: PreviewSection = PreviewSection()
    hotlist: HotlistSection = HotlistSection()

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or (self.device.state_dir / "outbox.db")

    @property
    def hotlist_path(self) -> Path:
        return self.hotlist.path or (self.device.state_dir / "hotlist.bundle")

    @model_validator(mode="after")
    def _sealed_alerts(self):
        if self.hotlist.enabled and self.outbox.key_file is None:
            raise ValueError("hotlist.enabled needs outbox.key_file: an alert names the plate it matched, and this device "
                             "keeps no listed plate in clear")
        return self

    @model_validator(mode="after")
    def _identity(self):
        """The broker knows a device by its certificate's CN (or its username): the configured id must
        be that name, or every read would go to topics the broker refuses it."""
        m = self.mqtt
        if m.username is not None and m.username != self.device.id:
            raise ValueError(f"mqtt.username {m.username!r} is not device.id {self.device.id!r}: the broker knows a "
                             "device by one name")
        cert = resolve_secret(m.certfile)
        if cert is not None and Path(cert).is_file():
            cn = certificate_cn(Path(cert))
            if cn != self.device.id:
                raise ValueError(f"device.id {self.device.id!r} is not the name in mqtt.certfile {cert} ({cn!r}): the "
                                 "broker knows this device as its certificate's name")
        return self


def certificate_cn(path: Path) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ValueError(f"mqtt.certfile {path} is not a PEM certificate") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


class ConfigError(Exception):
    """Every problem found, one per line, each naming its key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _parse_scalar(v: str):
    try:
        return tomllib.loads(f"v = {v}")["v"]
    except tomllib.TOMLDecodeError:
        return v


def _wants_text(section: str, key: str) -> bool:
    """Whether the field takes text (then an environment value stays a string: EDGE_CAMERA__SOURCE=0)."""
    import typing

    sec = Config.model_fields.get(section)
    model = sec.annotation if sec is not None else None
    field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
    if field is None:
        return False
    ann = field.annotation
    if typing.get_origin(ann) in (list, tuple, dict, set):
        return False  # a list or a table is written as TOML: EDGE_PIPELINE__REGIONS='["uk", "eu"]'
    if typing.get_origin(ann) is typing.Literal:
        return True
    args = typing.get_args(ann) or (ann,)
    return any(a is str or a is Path or typing.get_origin(a) is typing.Literal for a in args)


def apply_env(data: dict, env: dict[str, str]) -> dict:
    for k, v in env.items():
        if not k.startswith(ENV_PREFIX) or "__" not in k:
            continue
        section, _, key = k[len(ENV_PREFIX) :].lower().partition("__")
        data.setdefault(section, {})
        if isinstance(data[section], dict):
            data[section][key] = v if _wants_text(section, key) else _parse_scalar(v)
    return data


def load_config(path: str | Path, env: dict[str, str] | None = None, context: dict | None = None) -> Config:
    """The device configuration. context={"offline": True} checks a file away from its device: the
    TLS files it names are not looked for (their paths are listed in context["unchecked"])."""
    path = Path(path)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror}"]) from None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [f"not valid TOML: {e}"]) from None
    data = apply_env(data, dict(os.environ) if env is None else env)
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(f"{key}: {msg}")
        raise ConfigError(str(path), problems) from None
