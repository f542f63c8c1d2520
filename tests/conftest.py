from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
MODELS = ROOT / "models"
DATASETS = Path(os.environ.get("EDGE_DATASETS", ROOT.parent / "shared" / "datasets"))

# Wall time of the slow stages, printed at the end of the run (`make test` shows them), so a change
# that slows CI shows up in its own run: name -> (seconds, note).
STAGES: dict[str, tuple[float, str]] = {}
_T0 = time.monotonic()


def record_stage(name: str, seconds: float, note: str = "") -> None:
    STAGES[name] = (seconds, note)


def run_edge(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the real `edge` command line in a subprocess."""
    kw.setdefault("cwd", ROOT)
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not (DATASETS / "README.md").exists():
        pytest.skip(f"shared datasets not present at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="session")
def recognizer():
    from edge.vision.recognizer import PlateRecognizer, RecognizerConfig

    return PlateRecognizer(RecognizerConfig(model_dir=MODELS, threads=1))


def _is_image_test(item) -> bool:
    return item.path.name == "test_image.py"


def pytest_collection_modifyitems(session, config, items):
    # the image tests last: their image is built in the background while the others run
    items.sort(key=_is_image_test)


def pytest_collection_finish(session):
    if any(_is_image_test(i) for i in session.items):
        from . import image_build

        image_build.start_in_background()


def pytest_sessionfinish(session, exitstatus):
    from . import image_build

    image_build.stop_background()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    total = time.monotonic() - _T0
    tr = terminalreporter
    tr.section("stage times (wall)")
    setup_started = os.environ.get("EDGE_SETUP_STARTED")
    if setup_started:
        tr.write_line(f"{'set-up (make: venv, pip, Debian packages)':48s} {time.time() - total - float(setup_started):7.0f} s")
    image_total = 0.0
    for name, (secs, note) in STAGES.items():
        tr.write_line(f"{name:48s} {secs:7.0f} s  {note}".rstrip())
        if not name.startswith("image build"):
            image_total += secs
    waited = STAGES.get("image build, waited for after the other tests", (0.0, ""))[0]
    tr.write_line(f"{'the rest (every other test)':48s} {total - image_total - waited:7.0f} s")
    tr.write_line(f"{'pytest in all':48s} {total:7.0f} s")
