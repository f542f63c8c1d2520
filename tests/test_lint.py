"""`make lint` as CI runs it: ruff on the code, mypy on edge/ (configured in pyproject.toml)."""

import subprocess
import sys
import time

from .conftest import ROOT, record_stage


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "edge", "tests", "models/train"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean_on_edge():
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    record_stage("mypy", time.monotonic() - t0)
    assert r.returncode == 0 and "Success: no issues found" in r.stdout, r.stdout[-3000:] + r.stderr
