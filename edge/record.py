"""The wire record: one `Read` per vehicle pass, the one contract between device and collector.

Versioned by `schema` ("lpr.read/1"); `edge/schema/read-v1.json` is generated from this model
(`python -m edge.record --write`) and a test checks that it matches.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edge.plates import PLATE_MAX_CHARS, PLATE_MIN_CHARS, PLATE_TEXT

# the statuses a read carries, shared with the parts that produce them (tracker, GPS, config)
Direction = Literal["towards", "away", "unknown"]
Lateral = Literal["left", "right", "none"]
GpsStatus = Literal["ok", "stale", "missing"]
GpsKind = Literal["gpsd", "nmea", "fixed", "none"]
Mounting = Literal["fixed", "vehicle"]

SCHEMA_ID = "lpr.read/1"
MAX_RECORD_BYTES = 512 * 1024  # a read's JSON at most (the collector refuses more; the broker, 600 KiB packets)
SCHEMA_FILE = Path(__file__).parent / "schema" / "read-v1.json"
MAX_PLATE_JPEG = 64 * 1024
MAX_VEHICLE_JPEG = 256 * 1024


def uuid7(now_ms: int | None = None, rand: bytes | None = None) -> str:
    """A time-ordered UUID version 7 (RFC 9562): 48-bit Unix ms, version, 74 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    r = rand if rand is not None else secrets.token_bytes(10)
    b = bytearray(ms.to_bytes(6, "big") + r[:10])
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _jpeg_b64(limit: int):
    def check(v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        try:
            raw = base64.b64decode(v, validate=True)
        except (ValueError, TypeError) as e:
            raise ValueError(f"not base64: {e}") from None
        if len(raw) > limit:
            raise ValueError(f"image is {len(raw)} bytes, over the {limit} byte limit")
        if not raw.startswith(b"\xff\xd8"):
            raise ValueError("not a JPEG image")
        if isinstance(info.context, dict) and isinstance(info.context.get("decoded"), dict):
            info.context["decoded"][info.field_name] = raw  # the collector keeps the bytes instead of decoding twice
        return v

    return check


Text = Annotated[str, Field(min_length=PLATE_MIN_CHARS, max_length=PLATE_MAX_CHARS, pattern=PLATE_TEXT.pattern)]
Conf = Annotated[float, Field(ge=0.0, le=1.0)]


class Strict(BaseModel):
    # types exactly as written (no "3" for 3), finite numbers only: NaN and Infinity are not JSON
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Candidate(Strict):
    text: Text
    confidence: Conf
    votes: int = Field(ge=1, le=100_000)


Pixel = Annotated[float, Field(ge=-100_000, le=100_000)]


class Box(Strict):
    x1: Pixel
    y1: Pixel
    x2: Pixel
    y2: Pixel


class Plate(Strict):
    text: Text
    confidence: Conf
    char_confidences: list[Conf] = Field(max_length=PLATE_MAX_CHARS)
    region: str | None = Field(default=None, max_length=16, description="registration region guess (us, eu, uk, br), when the reader can tell")
    box: Box = Field(description="plate box in the best frame, full-resolution pixels")
    candidates: list[Candidate] = Field(default_factory=list, max_length=5, description="runner-up texts")


class Images(Strict):
    plate_jpeg: str | None = Field(default=None, description="base64 JPEG of the plate crop (<= 64 KiB)")
    vehicle_jpeg: str | None = Field(default=None, description="base64 JPEG of the vehicle (<= 256 KiB), off by default")

    _p = field_validator("plate_jpeg")(_jpeg_b64(MAX_PLATE_JPEG))
    _v = field_validator("vehicle_jpeg")(_jpeg_b64(MAX_VEHICLE_JPEG))


UtcTime = Annotated[datetime, Field(strict=True)]


class Track(Strict):
    first_seen: UtcTime
    last_seen: UtcTime
    frames: int = Field(ge=1, le=10_000_000)
    direction: Direction = "unknown"
    lateral: Lateral = "none"
    heading_deg: float | None = Field(default=None, ge=0, lt=360, description="vehicle-mounted: GPS heading at the read")


class Gps(Strict):
    status: GpsStatus
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    alt_m: float | None = Field(default=None, ge=-1_000, le=100_000)
    mode: int | None = Field(default=None, ge=0, le=3, description="gpsd fix mode: 0/1 none, 2 2D, 3 3D")
    fix_age_s: float | None = Field(default=None, ge=0, le=1e9)
    accuracy_m: float | None = Field(default=None, ge=0, le=1e7)
    speed_mps: float | None = Field(default=None, ge=0, le=1_000)
    heading_deg: float | None = Field(default=None, ge=0, lt=360)
    source: GpsKind = "none"


class Camera(Strict):
    id: str = Field(min_length=1, max_length=64)
    owner: str = Field(max_length=128)
    operator: str | None = Field(default=None, max_length=128)
    site: str | None = Field(default=None, max_length=128)
    mounting: Mounting = "fixed"
    bearing_deg: float | None = Field(default=None, ge=0, lt=360)


class Device(Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    software: str = Field(max_length=32)
    detector_model: str = Field(max_length=64)
    reader_model: str = Field(max_length=64)


class Read(Strict):
    schema_: Literal["lpr.read/1"] = Field(default="lpr.read/1", alias="schema")
    read_id: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", description="UUIDv7, same across retries")
    time: UtcTime = Field(description="UTC time of the best frame")
    plate: Plate
    images: Images = Field(default_factory=Images)
    track: Track
    gps: Gps
    camera: Camera
    device: Device

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True, allow_inf_nan=False)

    @field_validator("time")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None or v.utcoffset() != UTC.utcoffset(None):
            raise ValueError("time must be UTC with an explicit offset")
        return v

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Read:
        return cls.model_validate_json(data)


MatchKind = Literal["exact", "look-alike", "one-edit"]
ALERT_SCHEMA_ID = "lpr.alert/1"


class Alert(Strict):
    """A device's alert: a read matched a hotlist entry (edge.hotlist) before its pass was over. It
    names the entry by id, never by plate; the pass's own read follows under the same read id."""

    schema_: Literal["lpr.alert/1"] = Field(default="lpr.alert/1", alias="schema")
    alert_id: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    entry: str = Field(pattern=r"^HL-[0-9a-f]{8}$", description="the hotlist entry matched")
    kind: MatchKind
    bundle: int = Field(ge=0, le=2**53, description="the version of the hotlist bundle that matched")
    first_read: UtcTime = Field(description="the frame in which the track's plate was first read")
    seen: UtcTime = Field(description="the frame in which the match was made")
    read: Read

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True, allow_inf_nan=False)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


def json_schema() -> dict:
    s = Read.model_json_schema(by_alias=True)
    s["$id"] = "https://edge-lpr.invalid/schema/read-v1.json"
    s["title"] = "Read (lpr.read/1)"
    return s


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_utc(t: datetime | None = None) -> str:
    """A time as the device writes it everywhere outside a record (status, health, JSON logs):
    ISO 8601 in UTC to the millisecond, `2026-12-01T20:02:55.381Z`."""
    return (t or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


if __name__ == "__main__":
    if "--write" in sys.argv:
        SCHEMA_FILE.parent.mkdir(exist_ok=True)
        SCHEMA_FILE.write_text(schema_text())
        print(f"wrote {SCHEMA_FILE}")
    else:
        sys.stdout.write(schema_text())
