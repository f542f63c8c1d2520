"""Choose the detector's default threshold on the held-out part of the training photos.

    python -m models.train.calibrate --detector models/plate_detector.onnx [--min-precision 0.8]

Scores the ONNX detector (as the runtime runs it) on the validation split that
models/train/detector.py holds out (same seed), prints recall/precision per threshold, and writes
the lowest threshold whose precision reaches --min-precision into the model's metadata. The reader
rejects most of the remaining false boxes (they read as nothing confident). The openalpr sets are
not used here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from edge.vision.detector import PlateDetector
from edge.vision.geometry import iou_matrix
from models.train.detector import Scenes


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--min-precision", type=float, default=0.6)
    ap.add_argument("--iou", type=float, default=0.3)
    a = ap.parse_args(argv)
    det = PlateDetector(a.detector)
    det.threshold = 0.05
    scenes = Scenes(a.data)
    rows = []
    for it in scenes.val_items:
        img = cv2.imread(str(it.path))
        d = det.detect(img)
        rows.append((d.boxes, d.scores, it.boxes))
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
    meta = {p.key: p.value for p in m.metadata_props}
    meta["threshold"] = json.dumps(chosen)
    meta["calibration"] = json.dumps({"split": "5% of the trainable photos held out by detector.py (seed 0)", "iou": a.iou,
                                      "min_precision": a.min_precision, "table": table})
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(a.detector))
    print(f"threshold {chosen} written into {a.detector}")


if __name__ == "__main__":
    main()
