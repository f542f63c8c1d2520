"""The pip package: the wheel carries the models, and a fresh venv with only the built wheel reads a
plate from the command line and from Python, away from any checkout."""

import subprocess
import sys
import time
import tomllib
import zipfile

import pytest

from .conftest import DATA, ROOT, record_stage

SCENE = DATA / "scenes" / "synthetic" / "scene000.jpg"  # CF69542


def test_every_package_under_edge_is_in_the_wheel_list():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "edge").rglob("*.py") if "__pycache__" not in p.parts}
    assert found <= listed, f"packages missing from pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("edge_lpr-*.whl")
    return whl


def test_the_wheel_carries_the_models_and_the_schema_not_the_training_code(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("plate_detector.onnx", "plate_reader.onnx", "plate_refiner.onnx", "plate_reader.int8.onnx", "README.md"):
        assert f"edge/models/{f}" in names
    assert "edge/schema/read-v1.json" in names and "edge/api.py" in names
    # the collector's web app: its templates and assets travel with it
    assert {"edge/collector/web/templates/search.html", "edge/collector/web/static/app.css",
            "edge/collector/web/static/map.js"} <= set(names)
    assert not [n for n in names if "/train/" in n or n.startswith("models/") or n.startswith("tests/")]


def test_a_fresh_venv_with_only_the_wheel_reads_a_plate(wheel, tmp_path):
    t0 = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    record_stage("wheel: build, fresh venv, install", time.monotonic() - t0)
    away = tmp_path / "elsewhere"  # not the checkout: nothing of it may be found from here
    away.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import edge, sys; print(edge.__file__)"], cwd=away, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    read = subprocess.run([str(venv / "bin" / "edge"), "read", str(SCENE)], cwd=away, env=env, capture_output=True, text=True,
                          timeout=300)
    assert read.returncode == 0 and "CF69542" in read.stdout, read.stdout + read.stderr
    api = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "from edge import Reader\n"
                          f"for plate in Reader().read({str(SCENE)!r}):\n"
                          "    print(plate.text, plate.confidence)"], cwd=away, env=env, capture_output=True, text=True, timeout=300)
    assert api.returncode == 0 and api.stdout.split()[0] == "CF69542", api.stdout + api.stderr
    for cmd in (["edge", "--version"], ["python", "-m", "edge", "--version"]):
        v = subprocess.run([str(venv / "bin" / cmd[0]), *cmd[1:]], cwd=away, env=env, capture_output=True, text=True, timeout=60)
        assert v.returncode == 0 and v.stdout.startswith("edge 0."), v.stdout + v.stderr
