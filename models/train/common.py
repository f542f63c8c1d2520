"""Helpers shared by the training scripts (never imported by the runtime)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


class Logger:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def save_onnx_with_meta(model, example, path: Path, input_names, output_names, dynamic_axes, meta: dict, opset=17):
    """Export to ONNX (opset 17) and store every metadata key as a JSON string in the model."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        example,
        str(tmp),
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        opset_version=opset,
        dynamo=False,
    )
    m = onnx.load(str(tmp))
    write_meta(m, meta)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    tmp.unlink()
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)


def write_meta(m, meta: dict) -> None:
    """Replace an ONNX model's metadata with `meta`, checked against its kind's schema
    (edge/vision/metadata.py): a model the runtime cannot load is never written."""
    from edge.vision.metadata import to_props

    props = to_props(meta)
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)


def read_meta(m) -> dict:
    """An ONNX model's metadata as Python values."""
    return {p.key: json.loads(p.value) for p in m.metadata_props}
