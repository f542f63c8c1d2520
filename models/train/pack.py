"""Copy what reader training reads into one folder, for a machine without the datasets or fonts.

    python -m models.train.pack --pseudo runs/pseudo2.tsv --out .gpu

writes OUT/fonts (the renderer's fonts), OUT/bg (real photos, long side 320, as plate
surroundings), OUT/crops and OUT/pseudo.tsv (each pseudo-labelled plate cut from its photo with a
wide margin, the box moved into the cut, the photo's path kept in a tenth column so that the
held-out split stays by photo). Then, on the other machine:

    PLATE_FONTS=OUT/fonts python -m models.train.reader --data OUT/bg --pseudo OUT/pseudo.tsv ...
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2

from models.train.reader import backgrounds, load_review, photo_key, review_additions, reviewed_text
from models.train.render import fonts


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--pseudo", type=Path, default=Path("runs/pseudo2.tsv"))
    ap.add_argument("--out", type=Path, default=Path(".gpu"))
    ap.add_argument("--backgrounds", type=int, default=200)
    ap.add_argument("--review", type=Path, help="labels checked by eye (reader.py --review): applied here, as the packed copy "
                    "moves the boxes; a dropped crop is written with the text - so that its photo keeps its place in the split")
    ap.add_argument("--strict-ro", action="store_true", help="as reader.py --strict-ro, applied here")
    a = ap.parse_args(argv)
    review = load_review(a.review) if a.review else None
    if not a.pseudo.is_file():
        raise SystemExit(f"--pseudo: no such file: {a.pseudo}")
    for sub in ("fonts", "bg", "crops"):
        (a.out / sub).mkdir(parents=True, exist_ok=True)
    for f in fonts():
        shutil.copy(f, a.out / "fonts" / Path(f).name)
    for i, im in enumerate(backgrounds(a.data, a.backgrounds)):
        cv2.imwrite(str(a.out / "bg" / f"{i:04d}.jpg"), im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    rows = [line.split("\t") for line in a.pseudo.read_text().splitlines()]
    rows = [f for f in rows if len(f) >= 6]
    rows += review_additions(review, {photo_key(f[0], f[1:5]) for f in rows}, a.data)  # crops labelled by eye only
    lines = []
    for n, f in enumerate(rows):
        im = cv2.imread(f[0])
        if im is None:
            raise SystemExit(f"{a.pseudo}: cannot read image {f[0]}")
        H, W = im.shape[:2]
        x1, y1, x2, y2 = map(float, f[1:5])
        mx, my = 0.3 * (x2 - x1), 0.5 * (y2 - y1)  # training jitters the box by at most 14% / 8%
        cx, cy = int(max(0, x1 - mx)), int(max(0, y1 - my))
        cut = im[cy : int(min(H, y2 + my)), cx : int(min(W, x2 + mx))]
        s = min(1.0, 320 / max(1.0, x2 - x1))  # the reader's input is 160 wide: keep at most twice that
        if s < 1.0:
            cut = cv2.resize(cut, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        path = a.out / "crops" / f"{n:05d}.jpg"
        cv2.imwrite(str(path), cut, [cv2.IMWRITE_JPEG_QUALITY, 95])
        rest = f[5:9] + [""] * (4 - len(f[5:9]))
        rest[0] = reviewed_text(f[0], f[1:5], f[5], review, a.strict_ro) or "-"
        box = [(x1 - cx) * s, (y1 - cy) * s, (x2 - cx) * s, (y2 - cy) * s]
        lines.append("\t".join([str(path), *(f"{v:.1f}" for v in box), *rest, f[0]]))
    (a.out / "pseudo.tsv").write_text("\n".join(lines) + "\n")
    size = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    print(f"packed {len(fonts())} fonts, {len(list((a.out / 'bg').iterdir()))} backgrounds, {len(lines)} crops into {a.out} "
          f"({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
