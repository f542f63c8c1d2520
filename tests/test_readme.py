"""The README is the test: every shell block of README.md (then of deploy/*/README.md) runs, in order,
in one shell, in a copy of the checkout, as a new user would type it: `make demo` sets the copy up,
the walk-through provisions a CA, starts the shipped broker set-up on a free loopback port, and runs
the collector, a device bundle's replay and the searches. A line or block the test cannot run is
marked just before its block with its reason, which the test prints:

    <!-- readme-test: skip: REASON -->                 the next block
    <!-- readme-test: skip-line "PREFIX": REASON -->   lines of the next block that start with PREFIX
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .broker import free_port
from .conftest import ROOT, record_stage
from .pg import Postgres, pg_bin

DIRECTIVE = re.compile(r'^<!-- readme-test: (skip|skip-line "([^"]+)"): (.+?) -->$')
FENCE = re.compile(r"^```(\w*)\s*$")
RUNS = {"sh": "sh", "bash": "sh", "python": "python"}


@dataclass
class Block:
    source: str  # README.md:LINE
    kind: str  # sh | python
    lines: list[str]
    skip: str | None = None  # the whole block, and why
    skip_lines: list[tuple[str, str]] = field(default_factory=list)  # (prefix, why)


def blocks(path: Path) -> list[Block]:
    """The runnable fenced blocks of a Markdown file, with the directives just before each."""
    out: list[Block] = []
    pending_skip: str | None = None
    pending_lines: list[tuple[str, str]] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        d = DIRECTIVE.match(line.strip())
        if d:
            if d.group(2):
                pending_lines.append((d.group(2), d.group(3)))
            else:
                pending_skip = d.group(3)
            i += 1
            continue
        f = FENCE.match(line)
        if f:
            start = i + 1
            j = start
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            kind = RUNS.get(f.group(1))
            if kind:
                out.append(Block(f"{path.relative_to(ROOT)}:{start}", kind, lines[start:j], pending_skip, pending_lines))
            pending_skip, pending_lines = None, []
            i = j + 1
            continue
        if line.strip():
            pending_skip, pending_lines = None, []  # a directive holds for the block right after it only
        i += 1
    return out


def script(all_blocks: list[Block]) -> str:
    """One bash script of every block, in order, each announced, the skipped parts said with their reason."""
    out = ["set -euo pipefail"]
    for n, b in enumerate(all_blocks, 1):
        out.append(f"echo '::block {n} {b.source}'")
        if b.skip:
            out.append(f"echo {quote(f'::skipped block {b.source}: {b.skip}')}")
            continue
        if b.kind == "python":
            out += ["python - <<'README_PYTHON'", *b.lines, "README_PYTHON"]
            continue
        cont = False
        for line in b.lines:
            why = next((w for p, w in b.skip_lines if line.strip().startswith(p)), None)
            if why and not cont:
                out.append(f"echo {quote(f'::skipped line {line.strip()}: {why}')}")
                cont = line.rstrip().endswith("\\")
                continue
            if cont:  # the rest of a skipped line continued with a backslash
                cont = line.rstrip().endswith("\\")
                continue
            out.append(line)
    out.append("echo '::done'")
    return "\n".join(out) + "\n"


def quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def checkout_copy(dest: Path) -> Path:
    """The checkout's files (tracked, and untracked but not ignored) copied as a fresh clone holds them."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True,
                           timeout=60).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def readmes() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "deploy").glob("*/README.md"))]


def test_every_readme_block_is_run_or_says_why_not():
    found = [b for p in readmes() for b in blocks(p)]
    assert len([b for b in found if b.source.startswith("README.md")]) >= 5
    for b in found:
        assert b.lines, b.source
        if b.skip:
            assert len(b.skip) > 20, f"{b.source}: a skipped block says why"


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_the_readme_as_a_new_user_types_it(tmp_path, db):
    """Every block of README.md and deploy/*/README.md, in order, in one shell, in a copy of the checkout;
    the collector's database as the README gives it (SQLite), and once on a real PostgreSQL server."""
    work = checkout_copy(tmp_path / "edge-lpr")
    all_blocks = [b for p in readmes() for b in blocks(p)]
    (tmp_path / "readme.sh").write_text(script(all_blocks))
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path / "home"),
           "LANG": "C.UTF-8", "PORT": str(free_port()), "COLLECTOR_PORT": str(free_port()),
           "HTTP_PORT": str(free_port())}
    for keep in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE", "XDG_CACHE_HOME", "PIP_CACHE_DIR"):
        import os

        if keep in os.environ:
            env[keep] = os.environ[keep]
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))  # the machine's cache, as a user's second run has
    (tmp_path / "home").mkdir()
    pg = None
    if db == "postgresql":
        if pg_bin() is None:
            pytest.skip("PostgreSQL server not installed (make test installs it)")
        pg = Postgres(tmp_path / "pg").start()
        env["EDGE_COLLECTOR_DB"] = pg.url  # the README's line keeps a database the user named
    t0 = time.monotonic()
    try:
        r = subprocess.run(["bash", str(tmp_path / "readme.sh")], cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    finally:
        if pg is not None:
            pg.stop()
    record_stage(f"README walk-through ({db}: make demo in a copy, every block)", time.monotonic() - t0)
    out = r.stdout
    for line in out.splitlines():
        if line.startswith("::skipped"):
            print(line)  # the reason, in the test's output
    last = [x for x in out.splitlines() if x.startswith("::block")][-1:] or ["(none)"]
    assert r.returncode == 0 and "::done" in out, f"stopped in {last[0]}:\n{out[-4000:]}\n{r.stderr[-4000:]}"
    assert "gps 47.07071,15.43950 (ok)" in out and "crop out/demo/crops/" in out  # make demo: a read as the mission says
    assert "car.jpg  CF69542" in out  # edge read, then the Python API
    assert re.search(r"^CF69542 [01]\.\d+$", out, re.M)
    # the one-day search and the approved movement history each find the read the device's bundle sent
    found = [x for x in out.splitlines() if "DW03NTE" in x and "gate-north-01-cam North crossing" in x and " HL-" not in x]
    assert len(found) == 2 and "needs approval" in out and re.search(r"^approved APR-[0-9a-f]+$", out, re.M), out[-3000:]
    # the listed plate alerted while the van was in view, and an officer acknowledged it
    assert re.search(r"DW03NTE\s+(exact|look-alike|one-edit)\s+HL-[0-9a-f]{8}\s+gate-north-01-cam", out), out[-3000:]
    assert re.search(r"^alert [0-9a-f-]{36} acknowledged$", out, re.M), out[-3000:]
    assert (work / "car-plates.jpg").exists() and (work / "out" / "eval-misreads.html").exists()
    assert (work / "collector.db").exists() == (db == "sqlite")  # the collector used the database it was given
