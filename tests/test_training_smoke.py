"""A tiny run of each training script (training itself is not run in CI)."""

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from .conftest import ROOT

pytest.importorskip("torch", reason="training smoke runs need the [train] extra")
pytest.importorskip("PIL", reason="training smoke runs need the [train] extra")


def py(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def voc_folder(tmp_path, n=6):
    """A few project-rendered scenes written in the layout of the VOC sets the detector reads."""
    from models.train.scene import render_still

    root = tmp_path / "data" / "ro-dashcam-voc" / "train"
    (root / "images").mkdir(parents=True)
    (root / "annots").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img, plates = render_still(rng, 640, 360)
        cv2.imwrite(str(root / "images" / f"s{i}.jpg"), img[..., ::-1])
        x1, y1, x2, y2 = plates[0].box
        (root / "annots" / f"s{i}.xml").write_text(
            f"<annotation><filename>s{i}.jpg</filename><object><name>license-plate</name><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>")
    return tmp_path / "data"


def test_detector_training_smoke_resume_export(tmp_path):
    from edge.vision.detector import PlateDetector

    data = voc_folder(tmp_path)
    out = tmp_path / "det"
    py("models.train.detector", "--data", str(data), "--out", str(out), "--steps", "2", "--batch", "2")
    r = py("models.train.detector", "--data", str(data), "--out", str(out), "--steps", "3", "--batch", "2")
    assert "resumed from step 2" in r.stdout
    py("models.train.detector", "--out", str(out), "--export", str(tmp_path / "d.onnx"))
    d = PlateDetector(tmp_path / "d.onnx")
    assert d.model.meta["train_steps"] == 3 and "train.log" in {p.name for p in out.iterdir()}
    d.detect(np.zeros((360, 640, 3), np.uint8))
    r = py("models.train.detector", "--data", str(data), "--out", str(out), "--finetune", "--steps", "2", "--batch", "2",
           "--negatives", "1.0", "--synthetic", "1.0", "--lr", "1e-3")
    assert "fine-tuning from step 3" in r.stdout and "stopped at step 5" in r.stdout
    # a new stage starts from that checkpoint with a fresh schedule, the old run left as it was
    before = (out / "ckpt.pt").read_bytes()
    r = py("models.train.detector", "--data", str(data), "--out", str(tmp_path / "stage2"), "--init", str(out / "ckpt.pt"),
           "--finetune", "--steps", "1", "--batch", "2")
    assert "fine-tuning from step 5 for up to 1 steps" in r.stdout and "stopped at step 6" in r.stdout
    assert (out / "ckpt.pt").read_bytes() == before
    bad = subprocess.run([sys.executable, "-m", "models.train.detector", "--out", str(tmp_path / "stage3"), "--finetune",
                          "--init", str(tmp_path / "missing.pt")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "--init: no checkpoint at" in bad.stderr


def test_distractors_paint_text_but_never_over_a_plate():
    pytest.importorskip("PIL", reason="needs the [train] extra")
    from models.train.distractors import paint

    rng = np.random.default_rng(0)
    img = np.full((320, 320, 3), 128, np.uint8)
    boxes = np.array([[100, 100, 220, 160]], np.float32)
    changed = 0
    for _ in range(10):
        out = paint(img, boxes, rng, n=3)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.array_equal(out[100:160, 100:220], img[100:160, 100:220])  # the plate is left alone
        changed += int((out != img).any())
    assert changed >= 8  # and something was painted nearly every time


def test_synthetic_vehicle_adds_a_labelled_plate_and_hides_no_real_one():
    pytest.importorskip("PIL", reason="needs the [train] extra")
    from models.train.detector import add_vehicle

    rng = np.random.default_rng(1)
    img = np.full((320, 320, 3), 128, np.uint8)
    boxes = np.array([[20, 20, 120, 50]], np.float32)
    added = 0
    for _ in range(20):
        out, nb = add_vehicle(img, boxes, rng)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.array_equal(nb[:1], boxes)
        if len(nb) == 2:
            added += 1
            x1, y1, x2, y2 = nb[1]
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 320
            inside = out[int(y1) + 1 : int(y2), int(x1) + 1 : int(x2)]
            assert inside.size and inside.std() > 5  # a plate with lettering is drawn there, not flat grey
            # the labelled plate was not painted over (only blurred a little)
            assert np.abs(out[22:48, 22:118].astype(int) - 128).max() <= 2
        else:
            assert np.array_equal(out, img)
    assert added >= 15


def test_reader_training_smoke_export_and_quantize(tmp_path):
    from edge.vision.reader import PlateReader

    out = tmp_path / "rd"
    py("models.train.reader", "--data", str(tmp_path / "none"), "--pseudo", str(tmp_path / "none.tsv"), "--out", str(out),
       "--steps", "2", "--batch", "4", "--val-size", "4", "--backgrounds", "0")
    py("models.train.reader", "--out", str(out), "--export", str(tmp_path / "r.onnx"))
    r = PlateReader(tmp_path / "r.onnx")
    assert r.model.meta["train_steps"] == 2 and r.charset == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert len(r.read([np.zeros((40, 120, 3), np.uint8)])) == 1
    py("models.train.quantize", "--reader", str(tmp_path / "r.onnx"), "--n", "2")
    q = PlateReader(tmp_path / "r.int8.onnx")
    assert q.model.meta["version"].endswith("int8")


def test_testset_renderer_smoke(tmp_path):
    py("models.train.make_testset", "--out", str(tmp_path), "--scenes", "2", "--crops", "3")
    assert len(list((tmp_path / "scenes" / "synthetic").glob("*.txt"))) == 2
    assert len((tmp_path / "crops" / "groundtruth.csv").read_text().splitlines()) == 4


def test_reader_finetune_and_weight_average_smoke(tmp_path):
    import shutil

    import torch

    base, ft, avg = tmp_path / "base", tmp_path / "ft", tmp_path / "avg"
    common = ["--data", str(tmp_path / "none"), "--pseudo", str(tmp_path / "none.tsv"), "--batch", "4", "--val-size", "4",
              "--backgrounds", "0"]
    py("models.train.reader", *common, "--out", str(base), "--steps", "2")
    ft.mkdir()
    shutil.copy(base / "ckpt.pt", ft / "ckpt.pt")
    r = py("models.train.reader", *common, "--out", str(ft), "--finetune", "--steps", "2", "--lr", "1e-3", "--us-extras",
           "--crisp", "0.5", "--us-o-zero", "merge", "--loose", "0.5")
    assert "fine-tuning from step 2" in r.stdout
    py("models.train.reader", *common, "--out", str(avg), "--average", str(base / "ckpt.pt"), str(ft / "ckpt.pt"), "--alpha", "0.25")
    a, b, m = (torch.load(p / "ckpt.pt", map_location="cpu") for p in (base, ft, avg))
    k = "cls.weight"
    assert not torch.equal(a["model"][k], b["model"][k])
    assert torch.allclose(m["model"][k], 0.75 * a["model"][k] + 0.25 * b["model"][k], atol=1e-6)
    assert m["metrics"]["averaged"] == "0.75 x step 2 + 0.25 x step 4"
    py("models.train.reader", "--out", str(avg), "--export", str(tmp_path / "r.onnx"))
    bad = subprocess.run([sys.executable, "-m", "models.train.reader", "--out", str(tmp_path / "x"), "--average",
                          str(base / "ckpt.pt"), str(tmp_path / "missing.pt")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0
    r = py("models.train.reader", *common, "--out", str(tmp_path / "avg2"), "--average", str(base / "ckpt.pt"), str(ft / "ckpt.pt"),
           "--alpha", "0,1")
    assert "kept alpha" in r.stdout
    kept = torch.load(tmp_path / "avg2" / "ckpt.pt", map_location="cpu")
    assert any(torch.equal(kept["model"][k], c["model"][k]) for c in (a, b))  # one of the two ends, as scored
    for opt in ("--loose", "--crisp", "--real-frac"):
        bad = subprocess.run([sys.executable, "-m", "models.train.reader", "--out", str(tmp_path / "z"), opt, "1.5"], cwd=ROOT,
                             capture_output=True, text=True)
        assert bad.returncode != 0 and opt in bad.stderr and "0..1" in bad.stderr and not (tmp_path / "z").exists()
    bad = subprocess.run([sys.executable, "-m", "models.train.reader", "--out", str(tmp_path / "y"), "--average",
                          str(base / "ckpt.pt"), str(ft / "ckpt.pt"), "--alpha", "0.5,x"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "--alpha" in bad.stderr


def test_wide_reader_with_batch_workers_from_a_packed_copy(tmp_path):
    """The GPU recipe: pack what training reads (fonts, backgrounds, pseudo-labelled crops) into one
    folder, train a network of other widths with batch-drawing worker processes from that folder
    alone, export it and read with it."""
    import os

    import torch

    from edge.vision.reader import PlateReader

    data = voc_folder(tmp_path)
    rows = []
    for xml in sorted((data / "ro-dashcam-voc" / "train" / "annots").glob("*.xml")):
        t = xml.read_text()
        b = [t.split(f"<{k}>")[1].split("<")[0] for k in ("xmin", "ymin", "xmax", "ymax")]
        rows.append("\t".join([str(data / "ro-dashcam-voc" / "train" / "images" / (xml.stem + ".jpg")), *b, "AB123",
                               "0.99", "one", "ro-dashcam-voc"]))
    (tmp_path / "p.tsv").write_text("\n".join(rows) + "\n")
    # a review: the first crop's label was wrong (-), and a crop the labelling missed is labelled by eye
    f0 = rows[0].split("\t")
    rel = f0[0].split("/data/")[1]
    (tmp_path / "review.tsv").write_text("\t".join([rel, *f0[1:5], "-"]) + "\n"
                                         + "\t".join([rel, "1.0", "2.0", "60.0", "20.0", "CD45"]) + "\n")
    packed = tmp_path / "packed"
    r = py("models.train.pack", "--data", str(data), "--pseudo", str(tmp_path / "p.tsv"), "--out", str(packed),
           "--backgrounds", "3", "--review", str(tmp_path / "review.tsv"))
    assert "7 crops" in r.stdout and len(list((packed / "bg").iterdir())) == 3 and list((packed / "fonts").iterdir())
    texts = []
    for line in (packed / "pseudo.tsv").read_text().splitlines():
        f = line.split("\t")
        assert len(f) == 10 and f[9].endswith(".jpg")
        texts.append((f[5], f[7]))
        crop = cv2.imread(f[0])
        x1, y1, x2, y2 = map(float, f[1:5])
        assert 0 <= x1 < x2 <= crop.shape[1] and 0 <= y1 < y2 <= crop.shape[0]
    assert sorted(texts) == sorted([("-", "one")] + [("AB123", "one")] * 5 + [("CD45", "review")])
    env = {**os.environ, "PLATE_FONTS": str(packed / "fonts")}
    out = tmp_path / "wide"
    cmd = [sys.executable, "-m", "models.train.reader", "--data", str(packed / "bg"), "--pseudo", str(packed / "pseudo.tsv"),
           "--out", str(out), "--widths", "8,8,16,24", "--workers", "2", "--steps", "3", "--batch", "4", "--val-size", "4",
           "--light-ckpt"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"real crops train (\d) val (\d); backgrounds 3", r.stdout)
    assert m and int(m[1]) + int(m[2]) == 6 and "2 batch workers" in r.stdout
    st = torch.load(out / "ckpt.pt", map_location="cpu")
    assert st["widths"] == [8, 8, 16, 24] and st["step"] == 3 and "opt" not in st
    py("models.train.reader", "--out", str(out), "--export", str(tmp_path / "w.onnx"))
    assert len(PlateReader(tmp_path / "w.onnx").read([np.zeros((40, 120, 3), np.uint8)])) == 1
    for bad, word in ((["--widths", "8,8"], "--widths"), (["--widths", "8,x,8,8"], "--widths"), (["--device", "nope"], "--device")):
        b = subprocess.run([sys.executable, "-m", "models.train.reader", "--out", str(tmp_path / "bad"), *bad], cwd=ROOT,
                           capture_output=True, text=True)
        assert b.returncode != 0 and word in b.stderr.strip().splitlines()[-1]
    b = subprocess.run([sys.executable, "-m", "models.train.pack", "--pseudo", str(tmp_path / "missing.tsv"), "--out",
                        str(tmp_path / "p2")], cwd=ROOT, capture_output=True, text=True)
    assert b.returncode != 0 and "missing.tsv" in b.stderr


def test_us_extras_and_crisp_samples_keep_the_registration_as_the_label():
    from models.train.render import plate_crop_sample, render_plate

    for seed in range(12):
        a = render_plate(np.random.default_rng(seed), "us")
        b = render_plate(np.random.default_rng(seed), "us")
        assert a.text == b.text and np.array_equal(a.image, b.image)  # without extras: the same plates as before
        p = render_plate(np.random.default_rng(seed), "us", extras=True)
        assert p.text.isalnum() and p.text == p.text.upper() and 2 <= len(p.text) <= 10
        im, text = plate_crop_sample(np.random.default_rng(seed), 160, 48, None, extras=True, crisp=1.0)
        assert im.shape == (48, 160, 3) and 2 <= len(text) <= 10


def test_loose_edges_reach_past_the_usual_jitter_only_when_asked():
    from models.train.render import LOOSE_MAX, loose_edges, plate_crop_sample

    # loose=0 draws exactly what the tight jitter drew before the option existed (same random stream)
    assert np.array_equal(loose_edges(np.random.default_rng(5), 0.0, -0.09, 0.12), np.random.default_rng(5).uniform(-0.09, 0.12, 4))
    tight = np.concatenate([loose_edges(np.random.default_rng(s), 0.0, -0.09, 0.12) for s in range(200)])
    assert tight.min() >= -0.09 and tight.max() < 0.12
    far = np.concatenate([loose_edges(np.random.default_rng(s), 1.0, -0.09, 0.12) for s in range(200)])
    assert far.min() >= 0.12 and far.max() < LOOSE_MAX
    mixed = np.concatenate([loose_edges(np.random.default_rng(s), 0.25, -0.09, 0.12) for s in range(400)])
    assert 0.18 < (mixed >= 0.12).mean() < 0.32
    # every edge cut loose: still a reader-sized sample labelled with its registration
    for seed in range(6):
        im, text = plate_crop_sample(np.random.default_rng(seed), 160, 48, None, loose=1.0)
        assert im.shape == (48, 160, 3) and 2 <= len(text) <= 10


def test_self_label_keeps_a_stable_reading_and_drops_a_blank():
    from edge.vision.reader import PlateReader
    from models.train.pseudolabel import self_label
    from models.train.render import render_plate

    reader = PlateReader(ROOT / "models" / "plate_reader.onnx")
    found = 0
    for seed in range(4):
        plate = render_plate(np.random.default_rng(seed), "eu")
        h, w = plate.image.shape[:2]
        img = np.full((h * 3, w * 2, 3), 90, np.uint8)
        img[h : 2 * h, w // 2 : w // 2 + w] = plate.image[..., ::-1]
        got = self_label(reader, img, (w // 2, h, w // 2 + w, 2 * h), 0.9)
        assert got is None or (got[0] == plate.text and got[1] >= 0.9)  # stable readings of a clean plate are right
        found += got is not None
    assert found >= 2
    blank = np.full((300, 600, 3), 128, np.uint8)
    assert self_label(reader, blank, (100, 100, 400, 180), 0.9) is None
    tiny = cv2.resize(blank, (20, 10))
    assert self_label(reader, tiny, (30, 30, 40, 40), 0.9) is None  # a box outside the image: no crop, no label


def test_us_o_zero_merge_emits_label_0_as_o_or_0_for_us_samples_only():
    import torch

    from models.train.reader import CHARSET, o_zero_merged

    torch.manual_seed(0)
    lp = torch.log_softmax(torch.randn(5, 3, len(CHARSET) + 1), -1)
    out = o_zero_merged(lp, [True, False, True])
    i0, io = CHARSET.index("0") + 1, CHARSET.index("O") + 1
    for n in (0, 2):  # US samples: the 0 column carries p(O) + p(0)
        assert torch.allclose(out[:, n, i0].exp(), lp[:, n, i0].exp() + lp[:, n, io].exp(), atol=1e-6)
        assert torch.equal(out[:, n, io], lp[:, n, io])
    assert torch.equal(out[:, 1], lp[:, 1])  # other samples unchanged
    assert o_zero_merged(lp, [False, False, False]) is lp
    # the CTC loss of a US label with a 0 no longer cares whether the glyph was read O or 0
    ctc = torch.nn.CTCLoss(blank=0)
    def loss(col):
        x = torch.full((3, 1, len(CHARSET) + 1), -20.0)
        x[0, 0, col] = 0.0
        x[1, 0, 0] = 0.0
        x[2, 0, col] = 0.0
        x = torch.log_softmax(x, -1)
        tg = torch.tensor([i0, i0])
        return float(ctc(o_zero_merged(x, [True]), tg, torch.tensor([3]), torch.tensor([2])))
    assert abs(loss(io) - loss(i0)) < 1e-4 and loss(i0) < 1e-3


def test_refiner_training_smoke_resume_export(tmp_path):
    from edge.vision.refiner import BoxRefiner

    data = voc_folder(tmp_path, n=4)
    out = tmp_path / "refiner"
    r = py("models.train.refiner", "--data", str(data), "--out", str(out), "--steps", "3", "--batch", "4", "--minutes", "2")
    assert "stopped at step 3" in r.stdout
    r = py("models.train.refiner", "--data", str(data), "--out", str(out), "--steps", "5", "--batch", "4", "--minutes", "2")
    assert "resumed from step 3" in r.stdout and "stopped at step 5" in r.stdout
    onnx_path = tmp_path / "plate_refiner.onnx"
    py("models.train.refiner", "--out", str(out), "--export", str(onnx_path))
    ref = BoxRefiner(onnx_path)
    assert ref.model.meta["train_steps"] == 5 and (ref.h, ref.w) == (64, 192)
    boxes = ref.refine(np.zeros((360, 640, 3), np.uint8), np.array([[100, 100, 200, 130], [300, 200, 380, 220]], np.float32))
    assert boxes.shape == (2, 4) and np.isfinite(boxes).all()
    for bad, msg in ((["--steps", "0"], "--steps: must be positive"), (["--data", str(tmp_path / "none")], "--data: no such folder")):
        p = subprocess.run([sys.executable, "-m", "models.train.refiner", "--out", str(tmp_path / "r2"), *bad], cwd=ROOT,
                           capture_output=True, text=True)
        assert p.returncode != 0 and msg in p.stderr and "Traceback" not in p.stderr


def test_reader_rebuilt_from_its_onnx_reads_alike_and_finetunes_with_frozen_batch_norms(tmp_path):
    import shutil

    import onnxruntime as ort
    import torch

    from models.train.reader import PlateReader as Net

    base, ft = tmp_path / "base", tmp_path / "ft"
    common = ["--data", str(tmp_path / "none"), "--pseudo", str(tmp_path / "none.tsv"), "--batch", "4", "--val-size", "4",
              "--backgrounds", "0"]
    py("models.train.reader", *common, "--out", str(base), "--steps", "3", "--widths", "8,16,24,32")
    py("models.train.reader", "--out", str(base), "--export", str(tmp_path / "r.onnx"))
    py("models.train.reader", "--out", str(tmp_path / "back"), "--from-onnx", str(tmp_path / "r.onnx"))
    st = torch.load(tmp_path / "back" / "ckpt.pt", map_location="cpu")
    assert st["frozen_bn"] and st["step"] == 3 and st["widths"] == [8, 16, 24, 32]
    net = Net(w=st["widths"])
    net.load_state_dict(st["model"])
    net.eval()
    x = np.random.default_rng(0).random((2, 3, 48, 160)).astype(np.float32)
    s = ort.InferenceSession(str(tmp_path / "r.onnx"), providers=["CPUExecutionProvider"])
    want = s.run(None, {s.get_inputs()[0].name: x})[0]
    got = torch.softmax(net(torch.from_numpy(x)), -1).detach().numpy()
    assert np.abs(got - want).max() < 1e-4  # the trained batch norms are folded into the rebuilt convolutions
    # a fine-tune of the rebuilt checkpoint keeps its (identity) batch-norm statistics and learns the rest
    ft.mkdir()
    shutil.copy(tmp_path / "back" / "ckpt.pt", ft / "ckpt.pt")
    r = py("models.train.reader", *common, "--out", str(ft), "--finetune", "--steps", "2", "--lr", "1e-3", "--more-fonts")
    assert "batch norms frozen" in r.stdout
    after = torch.load(ft / "ckpt.pt", map_location="cpu")
    assert after["frozen_bn"] and after["step"] == 5
    bn = "body.0.1"
    assert torch.equal(after["model"][f"{bn}.running_mean"], st["model"][f"{bn}.running_mean"])
    assert torch.equal(after["model"][f"{bn}.running_var"], st["model"][f"{bn}.running_var"])
    assert not torch.equal(after["model"]["cls.weight"], st["model"]["cls.weight"])
    # bad input: a missing file, and a model of another kind
    bad = subprocess.run([sys.executable, "-m", "models.train.reader", "--out", str(tmp_path / "m"), "--from-onnx",
                          str(tmp_path / "missing.onnx")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "no such file" in bad.stderr and not (tmp_path / "m").exists()
    bad = subprocess.run([sys.executable, "-m", "models.train.reader", "--out", str(tmp_path / "d"), "--from-onnx",
                          str(ROOT / "models" / "plate_detector.onnx")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "not a plate-reader" in bad.stderr


def test_more_fonts_are_opt_in_and_leave_the_default_plates_alone():
    from models.train import render

    rng = np.random.default_rng(7)
    before = [render.render_plate(rng).image for _ in range(3)]
    n = len(render.fonts())
    try:
        render.use_more_fonts()
        assert len(render.fonts()) > n
        assert all(f in render.fonts() for f in render._fonts_from(render.MORE_FONT_GLOBS))
    except RuntimeError as e:  # the packages are not installed here: the message names them
        assert "fonts-opendin" in str(e)
    finally:
        render._MORE_FONTS = False
        render.fonts.cache_clear()
    assert len(render.fonts()) == n
    rng = np.random.default_rng(7)
    assert all(np.array_equal(a, render.render_plate(rng).image) for a in before)


def test_review_replaces_or_drops_pseudo_labels_and_keeps_the_split(tmp_path):
    """Labels checked by eye replace a pseudo-label or drop its crop (-); --strict-ro restores an
    Ilfov plate's lost I and drops a Romanian label that fits no format; a photo whose crops are all
    dropped keeps its place, so the held-out photos stay the same; a malformed review is one line."""
    from models.train.reader import RealCrops, load_review, ro_label

    rows, review = [], ["# comment"]
    for i in range(40):
        src = "ro-dashcam-voc" if i % 2 else "openimages-plates"
        photo = f"/x/datasets/{src}/images/p{i}.jpg"
        text = ("F10KAX" if i % 4 == 1 else "TR95XM" if i % 4 == 3 else f"AB{i:03d}")
        rows.append("\t".join([photo, "10.0", "20.4", "60.6", "35.0", text, "0.99", "one", src]))
        if i % 4 == 0:
            review.append("\t".join([f"{src}/images/p{i}.jpg", "10.0", "20.4", "60.6", "35.0", "-" if i % 8 == 0 else "CD123"]))
    tsv = tmp_path / "p.tsv"
    tsv.write_text("\n".join(rows) + "\n")
    (tmp_path / "r.tsv").write_text("\n".join(review) + "\n")
    plain = RealCrops(tsv)
    rev = load_review(tmp_path / "r.tsv")
    assert len(rev) == 10
    kept = RealCrops(tsv, review=rev, strict_ro=True)
    texts = sorted(t[5] for t in kept.train + kept.val)
    assert texts == sorted(["CD123"] * 5 + [f"AB{i:03d}" for i in range(2, 40, 4)] + ["IF10KAX"] * 10) and kept.dropped == 15
    # the held-out photos are the same photos with or without the review
    assert {t[0] for t in kept.val} <= {t[0] for t in plain.val}
    assert {t[0] for t in kept.train} <= {t[0] for t in plain.train}
    # a crop labelled by eye that the pseudo-labels lack is added (its photo split by a hash of its path)
    (tmp_path / "r2.tsv").write_text("\n".join(review + ["us-plates-roboflow/images/q.jpg\t1.0\t2.0\t50.0\t20.0\tNEW1"]) + "\n")
    more = RealCrops(tsv, review=load_review(tmp_path / "r2.tsv"), strict_ro=True, root=tmp_path / "datasets")
    new = [t for t in more.train + more.val if t[5] == "NEW1"]
    assert more.added == 1 and len(new) == 1 and new[0][0] == str(tmp_path / "datasets" / "us-plates-roboflow/images/q.jpg")
    assert new[0][6] is True  # a US set's crop
    assert RealCrops(tsv, review=load_review(tmp_path / "r2.tsv")).added == 0  # without the datasets folder, nothing added
    assert ro_label("B123ABC") == "B123ABC" and ro_label("SB014882") == "SB014882" and ro_label("AGDIBKN") is None
    (tmp_path / "bad.tsv").write_text("ro-dashcam-voc/a.jpg\t1\t2\t3\t4\tab c\n")
    with pytest.raises(SystemExit, match="bad.tsv:1"):
        load_review(tmp_path / "bad.tsv")
    with pytest.raises(SystemExit, match="not found"):
        load_review(tmp_path / "missing.tsv")


def test_committed_review_file_is_well_formed():
    from models.train.reader import load_review

    path = ROOT / "models" / "train" / "reviewed_labels.tsv"
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    rev = load_review(path)
    assert len(rev) == len(lines) > 1400  # one entry per crop, no key twice
    assert 0.1 < sum(v is None for v in rev.values()) / len(rev) < 0.35
    assert all(k[0].split("/")[0] in ("openimages-plates", "us-plates-roboflow") for k in rev)
