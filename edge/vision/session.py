"""onnxruntime sessions that carry the model's own metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class ModelError(Exception):
    """A model file is missing, unreadable or lacks the metadata the runtime needs."""


class OnnxModel:
    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load model {path}: {str(e).splitlines()[0]}") from None
        raw = self.session.get_modelmeta().custom_metadata_map
        self.meta: dict[str, Any] = {}
        for k, v in raw.items():
            try:
                self.meta[k] = json.loads(v)
            except (json.JSONDecodeError, TypeError):
                self.meta[k] = v
        self.path = path
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x})
