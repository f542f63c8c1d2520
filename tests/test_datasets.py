"""The committed models on the shared real data (skipped when ../shared/datasets is absent).

These floors are regression guards a little under what this release measured (release 19: all
0.881, us 0.854, eu 0.904, br 0.911, detected 0.976, FP 0.043, US crops 0.873; see models/README.md),
so that a model or runtime change that loses plates fails here; the issue's own floors are scored
by `edge eval` and quoted in the model card.
"""

import json

from .conftest import run_edge

FLOORS = {"detected": 0.96, "exact": 0.86, "region_exact": 0.83, "fp_per_image_max": 0.055, "crops_exact": 0.85}


def table(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in stdout.splitlines() if line.split()}


def test_endtoend_eval_on_openalpr(datasets, tmp_path):
    out = tmp_path / "pred.jsonl"
    r = run_edge("eval", str(datasets / "openalpr-endtoend"), "--out", str(out), "--threads", "1", timeout=1200)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    rows = table(r.stdout)
    everything = rows["all"]
    detected, exact, fp = float(everything[2]), float(everything[3]), float(everything[6])
    assert detected >= FLOORS["detected"] and exact >= FLOORS["exact"] and fp <= FLOORS["fp_per_image_max"]
    for region in ("br", "eu", "us"):
        assert float(rows[region][3]) >= FLOORS["region_exact"], rows[region]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 211 and all(set(o) == {"image", "plates", "ms"} for o in lines)


def test_reader_alone_on_openalpr_us_crops(datasets):
    r = run_edge("eval", "--crops", str(datasets / "openalpr-us-crops"), "--threads", "1", timeout=600)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    row = [line.split() for line in r.stdout.splitlines() if line.split() and line.split()[0] == "openalpr"][0]
    assert float(row[2]) >= FLOORS["crops_exact"]


def test_eval_rejects_a_file_given_as_folder(datasets, tmp_path):
    r = run_edge("eval", str(datasets / "README.md"), "--out", str(tmp_path / "p.jsonl"))
    assert r.returncode == 2 and "not a folder" in r.stderr
