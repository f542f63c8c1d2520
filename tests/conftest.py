from __future__ import annotations

import contextlib
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


def chromium(url: str, out: Path, size: tuple[int, int] = (1000, 1400), run_ms: int = 0) -> tuple[str, Path]:
    """A page loaded by a real headless Chromium: (its DOM after load, a PNG screenshot); `run_ms`: let
    the page's scripts run that long (virtual time) first. Make installs Chromium for `make test`;
    elsewhere a missing one skips, in CI it fails."""
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (make test installs it: deploy/host-packages.sh chromium)")
        pytest.skip("chromium is not installed (make test installs it)")
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size[0]},{size[1]}"]
    if run_ms:
        flags.append(f"--virtual-time-budget={run_ms}")
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run([*flags, f"--screenshot={out}", url], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and out.exists(), shot.stderr[-2000:]
    return dom.stdout, out


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not (DATASETS / "README.md").exists():
        pytest.skip(f"shared datasets not present at {DATASETS}")
    return DATASETS


def device_config(**sections):
    """A device Config with the test's sections (dicts) over a minimal device."""
    from edge.config import Config

    data: dict = {"device": {"id": "test", "state_dir": "out/test"}, "camera": {"id": "c", "owner": "o"}, "mqtt": {"topic_prefix": "t"}}
    data.update(sections)
    return Config.model_validate(data)


def make_stage(still: bool = False, **pipeline):
    """The plate stage edge.runtime.assembly builds for a [pipeline] section with these keys."""
    from edge.config import PipelineSection
    from edge.runtime.assembly import build_stage

    return build_stage(PipelineSection(model_dir=MODELS, **pipeline), still=still)


def run_loop(video, outbox_path, cfg=None, stage=None, gps=None, source=None, blocking=True):
    """A file through the frame loop edge.runtime.assembly builds (every frame, video time); returns the loop
    (its reads kept in loop.reads, its counters in loop.health)."""
    from edge.capture.sources import VideoFileSource
    from edge.gps import NoGps
    from edge.outbox import Outbox
    from edge.runtime.assembly import build_loop

    cfg = cfg or device_config()
    ob = Outbox(outbox_path)
    loop = build_loop(cfg, source or VideoFileSource(video, pace=False), ob, gps or NoGps(), stage, blocking=blocking, keep_reads=True)
    loop.run()
    loop.outbox_backlog = ob.backlog()
    ob.close()
    return loop


@pytest.fixture(scope="session")
def stage():
    """The still-image stage (edge eval's): the shipped models, no region."""
    return make_stage(still=True)


@pytest.fixture(scope="session")
def video_stage():
    """The video stage (edge run's defaults)."""
    return make_stage()


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


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    from .pg import Postgres, pg_bin

    if pg_bin() is None:
        pytest.skip("PostgreSQL server not installed")
    pg = Postgres(tmp_path_factory.mktemp("pg")).start()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """A collector store, once on SQLite and once on a real PostgreSQL server, emptied for each test."""
    from edge.collector.store import Store

    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'c.db'}")
    else:
        from edge.collector.exposure import SCHEMA as EXPOSURE

        pg = request.getfixturevalue("postgres")
        s = Store(pg.url)
        with s.tx():
            for stmt in EXPOSURE:
                s.execute(stmt)
        with s.tx():
            for t in ("reads", "images", "rejects", "users", "cases", "case_reads", "approvals", "audit", "query_cache", "counters", "exposure", "user_requests", "login_failures",
                      "hotlist", "hotlist_devices", "hotlist_bundles", "alerts", "approval_denials", "web_sessions", "read_keys",
                      "cameras", "settings", "image_trash"):
                s.execute(f"DELETE FROM {t}")
            for d in sorted(s.days.known):  # the days of the last test's reads
                s.days.drop(d)
    yield s
    s.close()


def collector_users(db: str, env: dict | None = None, **roles: str) -> dict[str, str]:
    """API tokens by name: the first two admins (root, rita) by --bootstrap, then each NAME=ROLE asked
    for by root and confirmed by rita, as the README does it."""
    tok: dict[str, str] = {}
    for admin in ("root", "rita"):
        r = run_edge("users", "add", admin, "--role", "admin", "--bootstrap", "--db", db, env=env)
        assert r.returncode == 0, r.stderr
        tok[admin] = r.stdout.split()[-1]
    for name, role in roles.items():
        req = run_edge("users", "add", name, "--role", role, "--token", tok["root"], "--db", db, env=env)
        assert req.returncode == 0, req.stderr
        ok = run_edge("users", "confirm", req.stdout.split()[-1], "--token", tok["rita"], "--db", db, env=env)
        assert ok.returncode == 0, ok.stderr
        tok[name] = ok.stdout.split()[-1]
    return tok


@contextlib.contextmanager
def api_client(gov):
    """The collector's HTTP API (the server `edge collect --http` runs) on a free loopback port:
    yields get(path, token) -> (status, JSON body)."""
    import json
    import threading
    import urllib.error
    import urllib.request

    from edge.collector.api import make_server

    srv = make_server(gov, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"

    def get(path: str, token: str | None = None):
        req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    get.base = base  # type: ignore[attr-defined]  # for a client that wants the raw answer
    try:
        yield get
    finally:
        srv.shutdown()
