"""A finished vehicle pass -> the `Read` record (edge.record): plate crop and vehicle image within the
record's own size bounds, GPS at the best frame, camera and device identity, region guess."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import cv2
import numpy as np

from edge import __version__
from edge.config import RecordSection
from edge.gps import GpsSource
from edge.plates import PLATE_MAX_CHARS, PLATE_MIN_CHARS, region_guess
from edge.record import MAX_PLATE_JPEG, MAX_VEHICLE_JPEG, Box, Camera, Device, Gps, Images, Plate, Read, Track, uuid7
from edge.record import Candidate as RecordCandidate
from edge.tracking import Box as BoxT
from edge.tracking import Pass

# the plate crop: the plate box grown by these shares of its width (left, right) and height (top, bottom)
PLATE_MARGIN_X, PLATE_MARGIN_Y = 0.1, 0.2
# the vehicle image around a plate, in plate widths left and right, plate heights above and below
VEHICLE_LEFT, VEHICLE_RIGHT, VEHICLE_ABOVE, VEHICLE_BELOW = 2.0, 2.0, 4.0, 1.5
VEHICLE_JPEG_QUALITY = 80
MIN_JPEG_QUALITY = 40  # below this a JPEG too large is halved in size instead


def encode_jpeg(img: np.ndarray, quality: int, limit: int) -> bytes:
    """A JPEG of at most `limit` bytes: lower quality first, then half the size until it fits."""
    q, im = quality, img
    while True:
        ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q])
        data = buf.tobytes() if ok else b""
        if len(data) <= limit:
            return data
        if q > MIN_JPEG_QUALITY:
            q -= 15
        else:
            im = cv2.resize(im, (max(16, im.shape[1] // 2), max(8, im.shape[0] // 2)), interpolation=cv2.INTER_AREA)


@dataclass
class Identity:
    device_id: str
    camera: Camera
    detector_model: str = "unknown"
    reader_model: str = "unknown"


def grow(box: BoxT, w: int, h: int, left: float, above: float, right: float, below: float) -> tuple[int, int, int, int]:
    """The box grown by shares of its width and height, clipped to a w x h frame (integer pixels)."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    return max(0, int(x1 - left * bw)), max(0, int(y1 - above * bh)), min(w, int(x2 + right * bw)), min(h, int(y2 + below * bh))


class RecordBuilder:
    def __init__(self, record: RecordSection, identity: Identity, gps: GpsSource, regions: tuple[str, ...] = (),
                 read_id: Callable[[Pass], str] | None = None):
        self.r, self.identity, self.gps, self.regions = record, identity, gps, tuple(regions)
        self.read_id = read_id or (lambda p: uuid7(int((p.best.utc or datetime.now(UTC)).timestamp() * 1000)))

    def patch(self, full: np.ndarray, box: BoxT) -> tuple[np.ndarray, int, int]:
        """The part of the frame the record may need (the plate with its margin, or the vehicle), as a
        copy, so tracks do not keep whole frames alive; with its top-left corner in the frame."""
        h, w = full.shape[:2]
        if self.r.vehicle_image:
            x1, y1, x2, y2 = grow(box, w, h, VEHICLE_LEFT, VEHICLE_ABOVE, VEHICLE_RIGHT, VEHICLE_BELOW)
        else:
            x1, y1, x2, y2 = grow(box, w, h, PLATE_MARGIN_X, PLATE_MARGIN_Y, PLATE_MARGIN_X, PLATE_MARGIN_Y)
        return full[y1:y2, x1:x2].copy(), x1, y1

    def images(self, p: Pass) -> Images:
        patch, ox, oy = p.best.payload
        ph, pw = patch.shape[:2]
        x1, y1, x2, y2 = grow(p.best.box, pw + ox, ph + oy, PLATE_MARGIN_X, PLATE_MARGIN_Y, PLATE_MARGIN_X, PLATE_MARGIN_Y)
        crop = patch[max(0, y1 - oy) : y2 - oy, max(0, x1 - ox) : x2 - ox]
        plate = base64.b64encode(encode_jpeg(crop, self.r.plate_jpeg_quality, MAX_PLATE_JPEG)).decode()
        vehicle = None
        if self.r.vehicle_image:
            v = patch
            s = min(1.0, self.r.vehicle_max_px / max(v.shape[:2]))
            if s < 1:
                v = cv2.resize(v, (int(v.shape[1] * s), int(v.shape[0] * s)), interpolation=cv2.INTER_AREA)
            vehicle = base64.b64encode(encode_jpeg(v, VEHICLE_JPEG_QUALITY, MAX_VEHICLE_JPEG)).decode()
        return Images(plate_jpeg=plate, vehicle_jpeg=vehicle)

    def gps_at(self, t: float) -> Gps:
        fa = self.gps.fix_at(t)
        f = fa.fix
        return Gps(status=fa.status, lat=f.lat if f else None, lon=f.lon if f else None, alt_m=f.alt_m if f else None,
                   mode=f.mode if f else None, fix_age_s=fa.age_s, accuracy_m=f.accuracy_m if f else None,
                   speed_mps=f.speed_mps if f else None, heading_deg=f.heading_deg if f else None, source=fa.source)

    def build(self, p: Pass, read_id: str | None = None) -> Read:
        """`read_id`: the id this pass already has (its track raised an alert that named it)."""
        x1, y1, x2, y2 = p.best.box
        gps = self.gps_at(p.best.t)
        heading = gps.heading_deg if self.identity.camera.mounting == "vehicle" else None
        utc = p.best.utc or datetime.now(UTC)
        return Read(
            read_id=read_id or self.read_id(p),
            time=utc,
            plate=Plate(
                text=p.text,
                confidence=min(1.0, p.confidence),
                char_confidences=[min(1.0, c) for c in p.char_confidences],
                region=region_guess(p.text, self.regions),
                box=Box(x1=round(x1, 1), y1=round(y1, 1), x2=round(x2, 1), y2=round(y2, 1)),
                candidates=[RecordCandidate(text=c.text, confidence=min(1.0, c.confidence), votes=c.votes)
                            for c in p.candidates if PLATE_MIN_CHARS <= len(c.text) <= PLATE_MAX_CHARS],
            ),
            images=self.images(p),
            track=Track(first_seen=p.first.utc or utc, last_seen=p.last.utc or utc, frames=p.frames,
                        direction=p.direction, lateral=p.lateral, heading_deg=heading),
            gps=gps,
            camera=self.identity.camera,
            device=Device(id=self.identity.device_id, software=__version__, detector_model=self.identity.detector_model,
                          reader_model=self.identity.reader_model),
        )
