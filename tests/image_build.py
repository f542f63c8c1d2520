"""The arm64 image for tests/test_image.py, built once per run by deploy/image/build (which keeps
it in its cache outside the clone, keyed by a digest of its inputs). The build starts in the
background as soon as pytest has collected an image test, and runs while the other tests do; the
image tests run last and wait for it here."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from .conftest import ROOT, record_stage

OUT = ROOT / "build" / "image-test"
LOG = ROOT / "build" / "image-test.log"
# Measured on the slowest machine found (2-core Intel Xeon): a cold build 14 min (the base root
# filesystem 12.5 min of it; 21 min before it made its initramfs once), 67 s with the base cached,
# seconds with the image cached. The limit leaves room for a slow mirror; past it the test says
# which step the build was in.
TIMEOUT_S = float(os.environ.get("EDGE_IMAGE_BUILD_TIMEOUT", 3000))

_proc: subprocess.Popen | None = None
_t0 = 0.0


def wanted() -> bool:
    return os.environ.get("EDGE_IMAGE_TESTS") != "0" and os.geteuid() == 0


def start_in_background() -> None:
    global _proc, _t0
    if _proc is not None or not wanted():
        return
    LOG.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PY": str(ROOT / ".venv" / "bin" / "python")}
    _t0 = time.monotonic()
    with open(LOG, "w") as log:
        _proc = subprocess.Popen(["bash", "deploy/image/build", str(OUT)], cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_background() -> None:
    """An interrupted run does not leave a build behind (the cache keeps only finished entries)."""
    if _proc is not None and _proc.poll() is None:
        os.killpg(_proc.pid, signal.SIGTERM)
        try:
            _proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(_proc.pid, signal.SIGKILL)


def steps(text: str) -> list[tuple[str, str]]:
    """The build's step lines, "== [SECONDS s] WHAT", as (seconds, what)."""
    return re.findall(r"^== \[(\d+)s\] (.*)$", text, re.M)


def last_step(text: str) -> str:
    done = steps(text)
    return f"'{done[-1][1]}' (started at {done[-1][0]} s)" if done else "'start'"


def wait() -> tuple[int, str]:
    """Wait for the build; return its exit status and log. A build past TIMEOUT_S is stopped and
    reported with the step it was in."""
    start_in_background()
    assert _proc is not None
    w0 = time.monotonic()
    try:
        rc = _proc.wait(max(1.0, TIMEOUT_S - (time.monotonic() - _t0)))
    except subprocess.TimeoutExpired:
        stop_background()
        text = LOG.read_text(errors="replace")
        raise AssertionError(f"image build too slow: still running after {TIMEOUT_S:.0f} s in step {last_step(text)} "
                             f"(EDGE_IMAGE_BUILD_TIMEOUT); log {LOG}:\n{text[-3000:]}") from None
    text = LOG.read_text(errors="replace")
    cache = "; ".join(re.findall(r"^image cache: (.*)$", text, re.M)) or "no cache line"
    # the build's own clock: its last step line is written as it ends, perhaps long before this wait
    done = steps(text)
    record_stage("image build (in the background)", float(done[-1][0]) if done else time.monotonic() - _t0, cache)
    record_stage("image build, waited for after the other tests", time.monotonic() - w0)
    return rc, text
