from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
MODELS = ROOT / "models"
DATASETS = Path(os.environ.get("EDGE_DATASETS", ROOT.parent / "shared" / "datasets"))


def run_edge(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the real `edge` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not (DATASETS / "README.md").exists():
        pytest.skip(f"shared datasets not present at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="session")
def recognizer():
    from edge.vision.recognizer import PlateRecognizer, RecognizerConfig

    return PlateRecognizer(RecognizerConfig(model_dir=MODELS, threads=1))
