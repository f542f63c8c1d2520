"""Choose the detector's default threshold on the held-out part of the training photos.

    python -m models.train.calibrate --detector models/plate_detector.onnx [--min-precision 0.8]
    python -m models.train.calibrate --detector models/plate_detector.onnx --reader models/plate_reader.onnx

Scores the ONNX detector (as the runtime runs it) on the validation split that
models/train/detector.py holds out (same seed), prints recall/precision per threshold, and writes
the lowest threshold whose precision reaches --min-precision into the model's metadata. The reader
rejects most of the remaining false boxes (they read as nothing confident). The openalpr sets are
not used here.

With --reader it also chooses the verify rule: boxes scored below the threshold but at least
`verify_threshold` count as plates when the reader reads them (4-10 characters) with at least
`verify_confidence`. Plates the detector under-scores are often ones the reader reads perfectly;
junk boxes rarely read as a confident plate. Among the candidate pairs it takes the one with the
highest recall of the whole detector+reader system whose precision stays within --verify-slack of
the system without the rule and which reads at most --verify-reads extra boxes per image (the
Pi's time); ties go to the stricter pair. A rule may also read only the highest-scored 1, 2 or 3
band boxes of an image (`verify_max_boxes`), which bounds the reads a busy frame costs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edge.vision.detector import PlateDetector
from edge.vision.geometry import iou_matrix
from models.train.common import read_meta, write_meta
from models.train.detector import Scenes


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--min-precision", type=float, default=0.6)
    ap.add_argument("--iou", type=float, default=0.3)
    ap.add_argument("--reader", type=Path, help="also choose the verify rule with this reader")
    ap.add_argument("--verify-slack", type=float, default=0.0, help="precision the verify rule may cost (default: none)")
    ap.add_argument("--verify-reads", type=float, default=4.0, help="most extra reads per image the rule may cost")
    ap.add_argument("--refiner", type=Path, help="read each box as the runtime does with this box refiner (plate_refiner.onnx)")
    a = ap.parse_args(argv)
    det = PlateDetector(a.detector)
    det.threshold = 0.05
    scenes = Scenes(a.data)
    reader = None
    if a.reader:
        from edge.vision.reader import PlateReader

        reader = PlateReader(a.reader)
    refiner = None
    if a.refiner:
        from edge.vision.refiner import BoxRefiner

        refiner = BoxRefiner(a.refiner)
    rows, reads = [], []
    for it in scenes.val_items:
        img = cv2.imread(str(it.path))
        d = det.detect(img)
        rows.append((d.boxes, d.scores, it.boxes))
        if reader is not None:
            reads.append(read_boxes(reader, img, d.boxes, d.scores >= 0.1, refiner))
    table = []
    for th in np.arange(0.1, 0.6, 0.05):
        tp = fp = fn = 0
        for boxes, scores, gt in rows:
            keep = boxes[scores >= th]
            if len(gt) == 0:
                fp += len(keep)
                continue
            m = iou_matrix(keep, gt) if len(keep) else np.zeros((0, len(gt)))
            matched = set()
            for i in range(len(keep)):
                j = int(np.argmax(m[i])) if m.shape[1] else -1
                if j >= 0 and m[i, j] >= a.iou and j not in matched:
                    matched.add(j)
                    tp += 1
                else:
                    fp += 1
            fn += len(gt) - len(matched)
        rec, prec = tp / max(1, tp + fn), tp / max(1, tp + fp)
        table.append((round(float(th), 2), round(rec, 4), round(prec, 4)))
        print(f"threshold {th:.2f}: recall {rec:.3f} precision {prec:.3f}")
    ok = [t for t in table if t[2] >= a.min_precision]
    chosen = min(ok)[0] if ok else 0.35
    import onnx

    m = onnx.load(str(a.detector))
    meta = read_meta(m)
    meta["threshold"] = chosen
    meta["calibration"] = {"split": "5% of the trainable photos held out by detector.py (seed 0)", "iou": a.iou,
                                      "min_precision": a.min_precision, "table": table}
    meta.pop("verify_threshold", None)
    meta.pop("verify_confidence", None)
    meta.pop("verify_calibration", None)
    meta.pop("verify_max_boxes", None)
    if reader is not None:
        base = system_score(rows, reads, chosen, None, None, a.iou)
        print(f"system at threshold {chosen}: recall {base[0]:.3f} precision {base[1]:.3f}")
        vtable, best = [], None
        for low in (0.1, 0.15, 0.2, 0.25):
            if low >= chosen:
                continue
            for vc in (0.99, 0.98, 0.95, 0.9, 0.85, 0.8):
                for cap in (None, 3, 2, 1):  # at most this many band boxes read per image (None: all)
                    rec, prec, extra = system_score(rows, reads, chosen, low, vc, a.iou, max_boxes=cap)
                    vtable.append((low, vc, cap, round(rec, 4), round(prec, 4), round(extra, 2)))
                    print(f"verify {low:.2f} conf {vc:.2f} at most {cap or 'all'} boxes: recall {rec:.3f} precision {prec:.3f} "
                          f"extra reads/image {extra:.2f}")
                    if prec >= base[1] - a.verify_slack and extra <= a.verify_reads and rec > base[0]:
                        key = (round(rec, 6), prec, vc, low, -(cap or 99))  # ties: the stricter rule, the fewer reads
                        if best is None or key > best[0]:
                            best = (key, low, vc, cap)
        if best is not None:
            meta["verify_threshold"] = best[1]
            meta["verify_confidence"] = best[2]
            meta.pop("verify_max_boxes", None)
            if best[3] is not None:
                meta["verify_max_boxes"] = best[3]
            print(f"verify rule: boxes scored {best[1]}..{chosen} (at most {best[3] or 'all'} per image, highest first) "
                  f"count when read with confidence >= {best[2]}")
        else:
            print("verify rule: no pair gains recall within the limits; off")
        meta["verify_calibration"] = {"reader": a.reader.name, "refiner": a.refiner.name if a.refiner else None,
                                                 "slack": a.verify_slack,
                                                 "max_extra_reads": a.verify_reads, "base": [round(v, 4) for v in base[:2]],
                                                 "table": vtable}
    write_meta(m, meta)
    onnx.save(m, str(a.detector))
    print(f"threshold {chosen} written into {a.detector}")


def read_boxes(reader, img, boxes, mask, refiner=None) -> list:
    """The reader's (text, confidence) for each box where mask is set, else None; with a refiner,
    each box is moved onto the plate first, as the runtime does."""
    from edge.vision.geometry import expand_box

    h, w = img.shape[:2]
    idx = [i for i in range(len(boxes)) if mask[i]]
    cut = refiner.refine(img, boxes[idx]) if refiner is not None and idx else boxes[idx] if idx else []
    crops = []
    for b in cut:
        x1, y1, x2, y2 = expand_box(b, w, h, reader.margin_x, reader.margin_y)
        crops.append(img[y1:y2, x1:x2])
    out: list = [None] * len(boxes)
    for i, r in zip(idx, reader.read(crops) if crops else []):
        out[i] = (r.text, r.confidence)
    return out


def system_score(rows, reads, threshold, low, vconf, iou, min_conf=0.5, min_len=4, max_len=10, max_boxes=None):
    """Recall and precision of detector+reader on the held-out photos (a kept box is a plate when it
    overlaps a labelled one by `iou`), and the extra boxes read per image for the verify rule (of
    which at most `max_boxes` per image, the highest scored, as the runtime's verify_max_boxes)."""
    tp = fp = fn = extra = 0
    for (boxes, scores, gt), rd in zip(rows, reads):
        keep = []
        band = [i for i in range(len(boxes)) if low is not None and low <= scores[i] < threshold]
        band = set(sorted(band, key=lambda i: -float(scores[i]))[:max_boxes])
        for i in range(len(boxes)):
            r = rd[i]
            ok = r is not None and min_len <= len(r[0]) <= max_len and r[1] >= min_conf
            if scores[i] >= threshold:
                keep.append(ok)
            elif i in band:
                extra += 1
                keep.append(ok and r[1] >= vconf)
            else:
                keep.append(False)
        kb = boxes[np.array(keep, bool)] if len(boxes) else boxes
        m = iou_matrix(kb, gt) if len(kb) and len(gt) else np.zeros((len(kb), len(gt)))
        matched = set()
        for i in range(len(kb)):
            j = int(np.argmax(m[i])) if m.shape[1] else -1
            if j >= 0 and m[i, j] >= iou and j not in matched:
                matched.add(j)
                tp += 1
            else:
                fp += 1
        fn += len(gt) - len(matched)
    return tp / max(1, tp + fn), tp / max(1, tp + fp), extra / max(1, len(rows))


if __name__ == "__main__":
    main()
