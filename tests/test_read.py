"""`edge read IMAGE` and `from edge import Reader`: the still-image path a user calls."""

import json

import cv2
import numpy as np
import pytest

from .conftest import DATA, run_edge

SCENES = DATA / "scenes" / "synthetic"


def test_edge_read_prints_each_plate_and_draws_them(tmp_path):
    a, b = SCENES / "scene000.jpg", SCENES / "scene001.jpg"
    r = run_edge("read", str(a), str(b))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and "CF69542" in lines[0] and "KV039KZ" in lines[1] and "conf " in lines[0] and "box " in lines[0]
    out = tmp_path / "drawn.jpg"
    r = run_edge("read", "--json", "--draw", str(out), str(a))
    d = json.loads(r.stdout)
    assert r.returncode == 0 and d["plates"][0]["text"] == "CF69542" and len(d["plates"][0]["box"]) == 4
    assert 0.7 <= d["plates"][0]["confidence"] <= 1 and cv2.imread(str(out)).shape == cv2.imread(str(a)).shape
    from edge.plates import region_guess

    for region in ("uk", "br"):
        got = json.loads(run_edge("read", "--json", "--region", region, str(SCENES / "scene002.jpg")).stdout)["plates"][0]
        assert got["region"] == region_guess(got["text"], (region,))


def test_edge_read_bad_input_is_one_line_and_exit_2(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    for args, say in ((["nothere.jpg"], "image not found: nothere.jpg"), ([str(junk)], "cannot decode image"),
                      (["--region", "xx", str(SCENES / "scene000.jpg")], "--region: unknown region 'xx'"),
                      (["--draw", str(tmp_path / "d.jpg"), str(junk), str(junk)], "--draw writes one picture")):
        r = run_edge("read", *args)
        assert r.returncode == 2 and say in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    r = run_edge("read", str(SCENES / "scene000.jpg"), "--models", str(tmp_path))
    assert r.returncode == 5 and "model file not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_reader_takes_paths_and_bgr_grey_and_bgra_arrays():
    from edge import ImageError, Reader

    reader = Reader()
    path = SCENES / "scene000.jpg"
    bgr = cv2.imread(str(path))
    for image in (path, str(path), bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[..., None],
                  cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)):
        plates = reader.read(image)
        assert plates and plates[0].text == "CF69542" and plates[0].confidence >= 0.7
    for bad, say in ((None, "numpy array"), (bgr.astype(np.float32), "uint8"), (bgr[..., :2], "shape"),
                     ("nothere.jpg", "not found"), (np.zeros((0, 0, 3), np.uint8), "empty")):
        with pytest.raises((ImageError, ValueError), match=say):
            reader.read(bad)
    assert reader.stage.settings.min_confidence == 0.7  # the still-image floor, as edge eval reads
    assert Reader(min_confidence=0.5).stage.settings.min_confidence == 0.5
