"""The shipped model files: where they are (a checkout's models/, or the wheel's edge/models/) and
which of them a choice of int8 loads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DETECTOR_FILE = "plate_detector.onnx"
READER_FILE = "plate_reader.onnx"
REFINER_FILE = "plate_refiner.onnx"  # optional: without it boxes are read as the detector gives them
INT8_CHOICES = ("none", "reader", "detector", "both")


def model_files(int8: str = "none") -> tuple[str, str]:
    """The (detector, reader) file names for a choice of int8-quantized models: "none" (float32
    pair), "reader", "detector" or "both". The int8 files sit beside the float32 ones
    (`plate_reader.int8.onnx`); models/README.md gives what each choice reads and costs."""
    if int8 not in INT8_CHOICES:
        raise ValueError(f"int8: expected one of {', '.join(INT8_CHOICES)}, got {int8!r}")
    det = DETECTOR_FILE.replace(".onnx", ".int8.onnx") if int8 in ("detector", "both") else DETECTOR_FILE
    rd = READER_FILE.replace(".onnx", ".int8.onnx") if int8 in ("reader", "both") else READER_FILE
    return det, rd


def default_model_dir() -> Path:
    """$EDGE_MODELS; else, in a source checkout, its `models/` folder; else the models the installed
    package carries (`edge/models/` in the wheel, package data)."""
    env = os.environ.get("EDGE_MODELS")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "models" / DETECTOR_FILE).is_file():
        return root / "models"
    return Path(__file__).resolve().parents[1] / "models"


def model_label(kind: str, version: str, path: str | Path) -> str:
    """What a record names a model by: kind, version and the file's digest (`plate-reader-2-1a2b3c4d`)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]
    return f"{kind}-{version}-{digest}"[:64]
