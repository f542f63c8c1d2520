"""`edge eval` end to end through the real command line."""

import csv
import json
import re
import shutil
import subprocess
import sys

import cv2
import pytest

from .conftest import DATA, MODELS, ROOT, run_edge


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "pred.jsonl"
    r = run_edge("eval", str(DATA / "scenes"), "--out", str(out), "--threads", "1")
    assert r.returncode == 0, r.stderr
    return r, out


def test_eval_writes_one_exact_json_object_per_image(scene_run):
    r, out = scene_run
    lines = out.read_text().splitlines()
    n = len(list((DATA / "scenes" / "synthetic").glob("*.txt")))
    assert len(lines) == n
    for line in lines:
        o = json.loads(line)
        assert set(o) == {"image", "plates", "ms"}
        assert o["image"].startswith("synthetic/") and o["image"].endswith(".jpg")
        assert isinstance(o["ms"], float) and o["ms"] > 0
        for p in o["plates"]:
            assert set(p) == {"text", "box", "confidence"}
            assert len(p["box"]) == 4 and p["box"][0] < p["box"][2] and p["box"][1] < p["box"][3]
            assert 0 <= p["confidence"] <= 1 and p["text"].isalnum()


def test_eval_reads_still_images_with_the_still_confidence_floor(scene_run):
    import argparse

    from edge.cli import _stage
    from edge.runtime.assembly import FRAME_MIN_CONFIDENCE, STILL_MIN_CONFIDENCE

    ns = argparse.Namespace(int8="none", models=str(MODELS), threads=1, region=None, min_confidence=None)
    assert _stage(ns, still=True).settings.min_confidence == STILL_MIN_CONFIDENCE == 0.7
    assert _stage(ns).settings.min_confidence == FRAME_MIN_CONFIDENCE == 0.5  # video frames vote in tracks
    ns.min_confidence = 0.55
    assert _stage(ns, still=True).settings.min_confidence == 0.55  # --min-confidence wins
    _, out = scene_run
    for bad in ("2", "-0.1"):
        r = run_edge("eval", str(DATA / "scenes"), "--out", str(out.parent / "bad.jsonl"), "--min-confidence", bad)
        assert r.returncode == 2 and "--min-confidence: input should be " in r.stderr and f"got {float(bad)}" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (out.parent / "bad.jsonl").exists()
    confs = [p["confidence"] for line in out.read_text().splitlines() for p in json.loads(line)["plates"]]
    assert confs and min(confs) >= STILL_MIN_CONFIDENCE


def test_eval_prints_a_table_per_region(scene_run):
    r, _ = scene_run
    head = next(line for line in r.stdout.splitlines() if line.startswith("region"))
    for col in ("images", "detected", "exact", "CER", "FP/img", "ms(med)"):
        assert col in head
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.split() and line.split()[0] in ("synthetic", "all")}
    assert set(rows) == {"synthetic", "all"}
    assert "peak memory" in r.stdout


def test_eval_table_agrees_with_the_shared_scorer(scene_run):
    scorer = ROOT.parent / "shared" / "tools" / "score.py"
    if not scorer.exists():
        pytest.skip("shared/tools/score.py not present")
    r, out = scene_run
    ref = json.loads(subprocess.check_output([sys.executable, str(scorer), str(DATA / "scenes"), str(out), "--json"], text=True))
    ours = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.split() and line.split()[0] == "all"}["all"]
    images, detected, exact, lenient, cer, fp = int(ours[1]), *map(float, ours[2:7])
    a = ref["all"]
    assert images == a["images"]
    assert detected == pytest.approx(a["detected"], abs=1e-3)
    assert exact == pytest.approx(a["exact"], abs=1e-3)
    assert lenient == pytest.approx(a["lenient"], abs=1e-3)
    assert cer == pytest.approx(a["cer"], abs=1e-3)
    assert fp == pytest.approx(a["fp_per_image"], abs=1e-3)


def test_missing_folder_is_one_clear_line(tmp_path):
    r = run_edge("eval", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.jsonl"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_folder_without_labels_is_rejected(tmp_path):
    (tmp_path / "us").mkdir()
    r = run_edge("eval", str(tmp_path), "--out", str(tmp_path / "p.jsonl"))
    assert r.returncode == 2 and "no labels" in r.stderr


def test_missing_out_and_missing_dir_arguments(tmp_path):
    assert run_edge("eval", str(DATA / "scenes")).returncode == 2
    assert run_edge("eval").returncode == 2


def test_bad_labels_and_corrupt_images_are_reported_and_the_rest_scored(tmp_path):
    reg = tmp_path / "xx"
    reg.mkdir()
    src = DATA / "scenes" / "synthetic"
    for stem in ("scene000", "scene001"):
        shutil.copy(src / f"{stem}.jpg", reg)
        shutil.copy(src / f"{stem}.txt", reg)
    (reg / "broken.txt").write_text("broken.jpg\tnot-a-number\n")
    (reg / "corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    (reg / "corrupt.txt").write_text("corrupt.jpg\t1\t1\t10\t5\tABC123\n")
    (reg / "gone.txt").write_text("gone.jpg\t1\t1\t10\t5\tABC123\n")
    out = tmp_path / "p.jsonl"
    r = run_edge("eval", str(tmp_path), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "broken.txt" in r.stderr and "gone.jpg not found" in r.stderr and "cannot decode" in r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [o["image"] for o in recs] == ["xx/corrupt.jpg", "xx/scene000.jpg", "xx/scene001.jpg"]
    assert recs[0]["plates"] == [] and recs[0]["error"]


def test_crops_eval_on_committed_crops(tmp_path):
    out = tmp_path / "crops.jsonl"
    r = run_edge("eval", "--crops", str(DATA / "crops"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "exact" in r.stdout and len(out.read_text().splitlines()) == 60


def test_crops_eval_with_the_int8_reader(tmp_path):
    r = run_edge("eval", "--crops", str(DATA / "crops"), "--int8", "reader")
    assert r.returncode == 0, r.stderr
    assert "exact" in r.stdout
    bad = run_edge("eval", "--crops", str(DATA / "crops"), "--int8", "fast")
    assert bad.returncode == 2 and "--int8" in bad.stderr
    empty = tmp_path / "m"
    empty.mkdir()
    shutil.copy(MODELS / "plate_reader.onnx", empty)  # the float32 reader only: the int8 one is missing
    miss = run_edge("eval", "--crops", str(DATA / "crops"), "--models", str(empty), "--int8", "reader")
    assert miss.returncode == 5 and "plate_reader.int8.onnx" in miss.stderr


def test_crops_eval_without_groundtruth(tmp_path):
    r = run_edge("eval", "--crops", str(tmp_path))
    assert r.returncode == 2 and "groundtruth.csv" in r.stderr


def test_region_folders_read_with_their_formats_unless_turned_off(tmp_path):
    src = DATA / "scenes" / "synthetic"
    br = tmp_path / "set" / "br"
    br.mkdir(parents=True)
    for p in sorted(src.glob("scene00*")):
        shutil.copy(p, br / p.name)
    on = run_edge("eval", str(tmp_path / "set"), "--out", str(tmp_path / "on.jsonl"))
    off = run_edge("eval", str(tmp_path / "set"), "--out", str(tmp_path / "off.jsonl"), "--no-region-from-folder")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert "reading br/ with that region's plate conventions" in on.stdout
    assert "plate conventions" not in off.stdout
    assert all(json.loads(x)["image"].startswith("br/") for x in (tmp_path / "on.jsonl").read_text().splitlines())


def test_crops_eval_reads_us_state_crops_with_the_us_glyph_rule(tmp_path):
    """A crop whose state column names a US state is read as a US plate (O and 0: one glyph, written 0)."""
    from edge.vision.reader import PlateReader

    reader = PlateReader(MODELS / "plate_reader.onnx")
    rows = list(csv.DictReader(open(DATA / "crops" / "groundtruth.csv")))
    blind = reader.read([cv2.imread(str(DATA / "crops" / r["filename"])) for r in rows])
    with_o = [r for r, b in zip(rows, blind) if "O" in b.text][:6]
    without = [r for r, b in zip(rows, blind) if "O" not in b.text][:6]
    assert with_o, "the reader reads no O on the committed crops: pick crops that show the rule"
    d = tmp_path / "crops"
    d.mkdir()
    with open(d / "groundtruth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "state", "text"])
        for r in with_o + without:
            shutil.copy(DATA / "crops" / r["filename"], d / r["filename"])
            w.writerow([r["filename"], "ca" if r in with_o else "xx", r["text"]])
    on = run_edge("eval", "--crops", str(d), "--out", str(tmp_path / "on.jsonl"))
    off = run_edge("eval", "--crops", str(d), "--out", str(tmp_path / "off.jsonl"), "--no-region-from-folder")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert "names a US state" in on.stdout and "US state" not in off.stdout
    a = [json.loads(x) for x in (tmp_path / "on.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "off.jsonl").read_text().splitlines()]
    n = len(with_o)
    assert all("O" in y["text"] for y in b[:n])  # read blind: the O is there
    # as a US plate: 0 (and a bar after a digit: 1)
    assert all(x["text"] == re.sub(r"(?<=[0-9])I(?=[0-9]|$)", "1", y["text"].replace("O", "0")) != y["text"]
               for x, y in zip(a[:n], b[:n]))
    assert all(x["text"] == y["text"] for x, y in zip(a[n:], b[n:]))  # not a US state: untouched
    bad = run_edge("eval", "--crops", str(d), "--region", "xx")
    assert bad.returncode == 2 and "unknown region 'xx'" in bad.stderr


def test_eval_writes_a_misread_sheet_and_a_reliability_plot_a_browser_shows(scene_run, tmp_path):
    """People look at errors rather than read JSON lines: every miss and false positive with its crop,
    truth, read and confidence, and how often reads of each confidence were right, in one page."""
    import cv2
    import numpy as np

    from .conftest import chromium

    r, out = scene_run
    page = out.with_name(out.stem + "-misreads.html")
    assert f"misread sheet {page}" in r.stdout and "reliability (confidence -> share of reads right):" in r.stdout
    misses = []
    for line in out.read_text().splitlines():
        rec = json.loads(line)
        truth = (DATA / "scenes" / rec["image"]).with_suffix(".txt").read_text().split("\t")[5].strip()
        if truth not in [p["text"] for p in rec["plates"]]:
            misses.append((rec["image"], truth))
    assert misses  # the rendered scenes have a couple, which the sheet must show
    dom, shot = chromium(page.as_uri(), tmp_path / "sheet.png")
    rows = dom.count("<tr>") - 1
    assert rows >= len(misses) and all(image in dom and truth in dom for image, truth in misses)
    assert dom.count("<circle") >= 1 and "share right" in dom
    img = cv2.imread(str(shot))
    blue = np.all(np.abs(img.astype(int) - (235, 111, 31)) < 40, axis=2)  # the plot's points (#1f6feb, BGR)
    assert blue.sum() > 10
    crops = sorted((out.parent / (out.stem + "-misreads")).glob("*.jpg"))
    assert len(crops) == rows and all(cv2.imread(str(c)) is not None for c in crops)
    left = img[:, 20:200]  # the crop column: the crops are drawn there, not broken-image boxes
    assert (left.std(axis=2) > 20).sum() > 2000


def test_crops_eval_writes_its_sheet_beside_the_predictions(tmp_path):
    out = tmp_path / "crops.jsonl"
    r = run_edge("eval", "--crops", str(DATA / "crops"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    page = out.with_name("crops-misreads.html")
    wrong = [json.loads(x) for x in out.read_text().splitlines()]
    wrong = [x for x in wrong if x["text"] != x["truth"]]
    html = page.read_text()
    assert f"misread sheet {page}" in r.stdout and html.count("<tr>") - 1 == len(wrong)
    assert all(x["truth"] in html for x in wrong)
