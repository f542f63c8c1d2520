"""Model metadata: one schema per model kind, written into the ONNX file by the exporters in
`models/train/` and read back by the runtime loaders, so the runtime hard-codes nothing about a model.

Keys not in a schema (metrics, calibration tables, the training commit) ride along untouched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.vision.session import ModelError


class ModelMeta(BaseModel):
    """Keys every model kind has."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str
    version: str = Field(min_length=1, max_length=32)


class DetectorMeta(ModelMeta):
    kind: Literal["plate-detector"]
    stride: int = Field(gt=0)
    long_side: int = Field(gt=0, description="the frame is letterboxed so its long side is this many pixels")
    pad_multiple: int = Field(gt=0)
    threshold: float = Field(gt=0, le=1, description="the lowest heat that is a plate")
    # boxes scored from verify_threshold to threshold count as plates only when the reader reads them
    # with at least verify_confidence (models/train/calibrate.py); absent: no verify band
    verify_threshold: float | None = Field(default=None, gt=0, le=1)
    verify_confidence: float | None = Field(default=None, ge=0, le=1)
    # at most this many boxes of the band are read per frame, the highest scored first; absent: all
    verify_max_boxes: int | None = Field(default=None, ge=0)


class ReaderMeta(ModelMeta):
    kind: Literal["plate-reader"]
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    charset: str = Field(min_length=1)
    blank: int = Field(ge=0, description="the CTC blank's class index")
    max_len: int = Field(ge=1, description="the longest text the model was trained to write")
    # where the detector box sits inside the crop the reader was trained on (shares of the box)
    crop_margin_x: float = Field(ge=0, le=1)
    crop_margin_y: float = Field(ge=0, le=1)


class RefinerMeta(ModelMeta):
    kind: Literal["plate-refiner"]
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    context_x: float = Field(ge=0, description="context around the box, in box widths each side")
    context_y: float = Field(ge=0, description="and in box heights above and below")
    max_shift: float = Field(gt=0, le=1, description="each predicted edge shift is clipped to this share of the box")


KINDS: dict[str, type[ModelMeta]] = {"plate-detector": DetectorMeta, "plate-reader": ReaderMeta, "plate-refiner": RefinerMeta}
M = TypeVar("M", bound=ModelMeta)


def _problems(e: ValidationError) -> str:
    out = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(metadata)"
        out.append(f"{key}: {'missing' if err['type'] == 'missing' else err['msg']}")
    return "; ".join(out)


def parse_meta(schema: type[M], meta: dict[str, Any], path: str | Path = "model") -> M:
    """The model's metadata as its kind's schema; a wrong kind or a missing or malformed key is one
    ModelError naming the file and the keys."""
    want = next(k for k, v in KINDS.items() if v is schema)
    if meta.get("kind") != want:
        raise ModelError(f"{path}: not a {want} model (metadata kind={meta.get('kind')!r})")
    try:
        return schema.model_validate(meta)
    except ValidationError as e:
        raise ModelError(f"{path}: model metadata: {_problems(e)}") from None


def to_props(meta: dict[str, Any]) -> dict[str, str]:
    """Validate exporter metadata against its kind's schema and render it as ONNX metadata_props
    (each value JSON): what models/train writes."""
    schema = KINDS.get(str(meta.get("kind")))
    if schema is None:
        raise ModelError(f"unknown model kind {meta.get('kind')!r} (known: {', '.join(KINDS)})")
    parse_meta(schema, meta, "export")
    return {k: json.dumps(v) for k, v in meta.items()}
