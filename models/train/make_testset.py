"""Render the small project-owned test set committed under tests/data (deterministic, seeded).

    python -m models.train.make_testset --out tests/data

- scenes/synthetic/NNN.jpg + NNN.txt: still scenes in the openalpr-endtoend layout
- crops/NNN.png + groundtruth.csv: plate crops as the detector would cut them (reader alone)
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

from models.train.render import plate_crop_sample, render_plate
from models.train.scene import render_still

STYLES = ["us", "eu", "uk", "br", "mercosur", "two"]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("tests/data"))
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--crops", type=int, default=60)
    ap.add_argument("--seed", type=int, default=20261127)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    sd = a.out / "scenes" / "synthetic"
    sd.mkdir(parents=True, exist_ok=True)
    for i in range(a.scenes):
        img, plates = render_still(rng, 800, 450, style=STYLES[i % len(STYLES)])
        name = f"scene{i:03d}.jpg"
        cv2.imwrite(str(sd / name), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
        p = plates[0]
        x1, y1, x2, y2 = p.box
        (sd / f"scene{i:03d}.txt").write_text(f"{name}\t{int(x1)}\t{int(y1)}\t{int(x2 - x1)}\t{int(y2 - y1)}\t{p.text}\n")
    cd = a.out / "crops"
    cd.mkdir(parents=True, exist_ok=True)
    with open(cd / "groundtruth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "state", "text"])
        for i in range(a.crops):
            plate = render_plate(rng, STYLES[i % len(STYLES)])
            crop, text = plate_crop_sample(rng, 200, 80, None, plate)
            name = f"crop{i:03d}.jpg"
            cv2.imwrite(str(cd / name), crop[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            w.writerow([name, plate.style, text])
    print(f"wrote {a.scenes} scenes and {a.crops} crops under {a.out}")


if __name__ == "__main__":
    main()
