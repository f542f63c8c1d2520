"""Label real plate crops from the trainable box sets with PaddleOCR's PP-OCRv4 recogniser.

PP-OCRv4 (Apache-2.0) ships inside the `rapidocr-onnxruntime` wheel; fetch it with
`pip download --no-deps rapidocr-onnxruntime==1.4.4` and unzip. Only crops whose reading is
confident (and, for two-line plates, whose halves are both confident) are kept.

    python -m models.train.pseudolabel --rec PATH/ch_PP-OCRv4_rec_infer.onnx --out runs/pseudo.tsv
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import cv2
import numpy as np

from models.train.boxdata import load_box_sets

ALNUM = re.compile(r"[^A-Z0-9]")


class PaddleRec:
    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        chars = self.s.get_modelmeta().custom_metadata_map["character"].splitlines()
        self.chars = ["<blank>"] + chars + [" "]

    def read(self, bgr: np.ndarray) -> tuple[str, list[float]]:
        h, w = bgr.shape[:2]
        tw = int(min(320, max(16, round(48 * w / h))))
        im = cv2.resize(bgr, (tw, 48)).astype(np.float32)
        x = np.zeros((1, 3, 48, max(tw, 48)), np.float32)
        x[0, :, :, :tw] = ((im / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
        p = self.s.run(None, {self.s.get_inputs()[0].name: x})[0][0]
        idx = p.argmax(1)
        text, conf, prev = [], [], 0
        for t, i in enumerate(idx):
            if i != 0 and i != prev:
                c = self.chars[i].upper()
                if len(c) == 1 and ALNUM.sub("", c):
                    text.append(c)
                    conf.append(float(p[t, i]))
            prev = i
        return "".join(text), conf


# The cuts of one box that self_label reads: the runtime's margins, more room on either side, more
# room above and below, and a slightly blurred copy. A reading that survives all of them is stable.
SELF_CUTS = ((0.04, 0.07, 0.04, 0.07, 0.0), (0.16, 0.07, 0.04, 0.07, 0.0), (0.04, 0.07, 0.16, 0.07, 0.0),
             (0.04, 0.2, 0.04, 0.2, 0.0), (0.04, 0.07, 0.04, 0.07, 0.7))


def self_label(reader, img: np.ndarray, box, min_conf: float = 0.9) -> tuple[str, float] | None:
    """(text, lowest confidence) when `reader` reads the same 2-10 characters, each cut at least
    `min_conf` sure, in every cut of SELF_CUTS (left, top, right, bottom margins as shares of the
    box, and a blur in reader-input pixels); else None."""
    H, W = img.shape[:2]
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    crops = []
    for ml, mt, mr, mb, blur in SELF_CUTS:
        c = img[max(0, int(y1 - mt * bh)) : min(H, int(y2 + mb * bh)), max(0, int(x1 - ml * bw)) : min(W, int(x2 + mr * bw))]
        if c.size == 0:
            return None
        if blur:
            c = cv2.GaussianBlur(c, (0, 0), blur * max(1.0, c.shape[1] / reader.w))
        crops.append(c)
    reads = reader.read(crops)
    texts = {r.text for r in reads}
    if len(texts) != 1 or not (2 <= len(reads[0].text) <= 10):
        return None
    low = min(r.confidence for r in reads)
    return (reads[0].text, low) if low >= min_conf else None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--rec", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/pseudo.tsv"))
    ap.add_argument("--min-conf", type=float, default=0.85)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--agree", type=Path, help="also keep less confident crops when this reader model reads the same text")
    ap.add_argument("--agree-min-conf", type=float, default=0.5)
    ap.add_argument("--self-reader", type=Path,
                    help="self-training: also keep crops PP-OCR does not read when this reader reads them alike, and "
                         "confidently, in every one of a few cuts of the same box (see self_label)")
    ap.add_argument("--self-min-conf", type=float, default=0.9)
    a = ap.parse_args(argv)
    rec = PaddleRec(a.rec)
    ours = selfr = None
    if a.agree or a.self_reader:
        from edge.vision.reader import PlateReader

        ours = PlateReader(a.agree) if a.agree else None
        selfr = PlateReader(a.self_reader) if a.self_reader else None
    items = load_box_sets(a.data)
    if a.limit:
        items = items[: a.limit]
    kept = total = 0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w") as f:
        for n, it in enumerate(items):
            img = cv2.imread(str(it.path))
            if img is None:
                continue
            H, W = img.shape[:2]
            for x1, y1, x2, y2 in it.boxes:
                total += 1
                bw, bh = x2 - x1, y2 - y1
                if bw < 40 or bh < 12:
                    continue
                mx, my = 0.04 * bw, 0.08 * bh
                c = img[max(0, int(y1 - my)) : min(H, int(y2 + my)), max(0, int(x1 - mx)) : min(W, int(x2 + mx))]
                if c.size == 0:
                    continue
                lines = "one"
                text, conf = rec.read(c)
                if bw / bh < 2.2:
                    # maybe a two-line plate: read the halves too and prefer them when both are confident
                    ch = c.shape[0]
                    t1, c1 = rec.read(c[: ch // 2 + ch // 10])
                    t2, c2 = rec.read(c[ch // 2 - ch // 10 :])
                    if len(t1) >= 2 and len(t2) >= 2 and min(c1 + c2) > min(conf or [0]):
                        text, conf, lines = t1 + t2, c1 + c2, "two"
                paddle_ok = 2 <= len(text) <= 10 and conf and float(np.mean(conf)) >= a.min_conf and min(conf) >= 0.5
                mine = self_label(selfr, img, (x1, y1, x2, y2), a.self_min_conf) if selfr is not None and not paddle_ok else None
                if mine is not None:
                    kept += 1
                    f.write(f"{it.path}\t{x1:.1f}\t{y1:.1f}\t{x2:.1f}\t{y2:.1f}\t{mine[0]}\t{mine[1]:.3f}\tself\t{it.source}\n")
                    continue
                if not (2 <= len(text) <= 10) or not conf:
                    continue
                if float(np.mean(conf)) < a.min_conf or min(conf) < 0.5:
                    # a second opinion: keep it when our own reader reads exactly the same
                    if ours is None or float(np.mean(conf)) < a.agree_min_conf:
                        continue
                    mine = ours.read([img[max(0, int(y1 - 0.07 * bh)) : min(H, int(y2 + 0.07 * bh)),
                                          max(0, int(x1 - 0.04 * bw)) : min(W, int(x2 + 0.04 * bw))]])[0]
                    if mine.text != text:
                        continue
                    lines += "+agree"
                kept += 1
                f.write(f"{it.path}\t{x1:.1f}\t{y1:.1f}\t{x2:.1f}\t{y2:.1f}\t{text}\t{np.mean(conf):.3f}\t{lines}\t{it.source}\n")
            if n % 200 == 0:
                print(f"{n}/{len(items)} images, kept {kept}/{total} plates", flush=True)
    print(f"done: kept {kept}/{total} plates -> {a.out}")


if __name__ == "__main__":
    main()
