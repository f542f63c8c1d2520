"""`edge eval`: run the plate stage over labelled images and score it.

Folder layout (openalpr-endtoend): DIR/<region>/<image> with DIR/<region>/<image-stem>.txt holding
one tab-separated line `file x y w h TEXT`. Scoring rules (shared with the project's checker):
a prediction matches the truth plate when IoU >= 0.1 or it contains the truth box's centre;
an image is read when a matching prediction has exactly the truth text (A-Z0-9 only); a prediction
matching no truth box is a false positive.
"""

from __future__ import annotations

import csv
import json
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import cv2

from edge.eval_sheet import Sheet
from edge.plates import REGION_CODES, fold, region_of, rules_for
from edge.tracking import edit_distance, iou

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")


class EvalError(Exception):
    """A problem with the evaluation input that stops the run."""


def normalize(text: str, lenient: bool = False) -> str:
    """A-Z0-9 only; lenient: the look-alikes the collector's fuzzy search folds read alike too (edge.plates.fold)."""
    t = _NOT_ALNUM.sub("", text.upper())
    return fold(t) if lenient else t


def matches(pred_box, truth_box) -> bool:
    cx, cy = (truth_box[0] + truth_box[2]) / 2, (truth_box[1] + truth_box[3]) / 2
    inside = pred_box[0] <= cx <= pred_box[2] and pred_box[1] <= cy <= pred_box[3]
    return inside or iou(pred_box, truth_box) >= 0.1


@dataclass
class Truth:
    key: str  # "<region>/<file>"
    image: Path
    box: tuple[float, float, float, float]
    text: str


def load_truth(root: Path, warn: TextIO = sys.stderr) -> list[Truth]:
    if not root.exists():
        raise EvalError(f"evaluation folder not found: {root}")
    if not root.is_dir():
        raise EvalError(f"not a folder: {root} (expected DIR/<region>/<image> with <image-stem>.txt labels)")
    labels = sorted(root.glob("*/*.txt"))
    if not labels:
        raise EvalError(f"no labels in {root}: expected DIR/<region>/<image-stem>.txt files (openalpr-endtoend layout)")
    out = []
    for lab in labels:
        fields = lab.read_text(errors="replace").strip().split("\t")
        try:
            name = fields[0]
            x, y, w, h = (float(v) for v in fields[1:5])
            text = normalize(fields[5])
        except (IndexError, ValueError):
            print(f"warning: skipping {lab}: expected 'file<TAB>x<TAB>y<TAB>w<TAB>h<TAB>TEXT'", file=warn)
            continue
        img = lab.parent / name
        if not img.exists():
            print(f"warning: skipping {lab}: image {name} not found", file=warn)
            continue
        out.append(Truth(f"{lab.parent.name}/{name}", img, (x, y, x + w, y + h), text))
    if not out:
        raise EvalError(f"no usable labels in {root}")
    return out


@dataclass
class Tally:
    n: int = 0
    detected: int = 0
    exact: int = 0
    lenient: int = 0
    cer: float = 0.0
    fp: int = 0
    ms: list[float] = field(default_factory=list)

    def add(self, truth: Truth, plates: list[dict], ms: float | None) -> None:
        self.n += 1
        if ms is not None:
            self.ms.append(ms)
        over = [p for p in plates if matches(p["box"], truth.box)]
        self.fp += len(plates) - len(over)
        self.detected += bool(over)
        texts = [normalize(p["text"]) for p in over]
        self.exact += truth.text in texts
        self.lenient += normalize(truth.text, True) in [normalize(t, True) for t in texts]
        best = min((edit_distance(t, truth.text) for t in texts), default=len(truth.text))
        self.cer += min(1.0, best / max(1, len(truth.text)))

    def merge(self, o: Tally) -> None:
        self.n += o.n
        self.detected += o.detected
        self.exact += o.exact
        self.lenient += o.lenient
        self.cer += o.cer
        self.fp += o.fp
        self.ms += o.ms

    def summary(self) -> dict:
        n = max(1, self.n)
        return {
            "images": self.n,
            "detected": round(self.detected / n, 4),
            "exact": round(self.exact / n, 4),
            "lenient": round(self.lenient / n, 4),
            "cer": round(self.cer / n, 4),
            "fp_per_image": round(self.fp / n, 3),
            "ms_median": round(statistics.median(self.ms), 1) if self.ms else None,
        }


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal, else occasional lines)."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr):
        self.total, self.label, self.stream = total, label, stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()
        self.last = -1

    def update(self, done: int) -> None:
        pct = int(100 * done / max(1, self.total))
        if self.tty:
            bar = "#" * (pct // 4) + "." * (25 - pct // 4)
            rate = done / max(1e-6, time.monotonic() - self.t0)
            self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {rate:.1f} img/s")
            if done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif pct // 10 != self.last // 10 or done == self.total:
            self.stream.write(f"{self.label}: {done}/{self.total}\n")
            self.stream.flush()
        self.last = pct


def format_table(rows: dict[str, dict]) -> str:
    head = f"{'region':8} {'images':>6} {'detected':>8} {'exact':>6} {'lenient':>7} {'CER':>6} {'FP/img':>6} {'ms(med)':>8}"
    lines = [head, "-" * len(head)]
    for k, v in rows.items():
        lines.append(
            f"{k:8} {v['images']:6d} {v['detected']:8.3f} {v['exact']:6.3f} {v['lenient']:7.3f} {v['cer']:6.3f} "
            f"{v['fp_per_image']:6.3f} {v['ms_median'] if v['ms_median'] is not None else float('nan'):8.1f}"
        )
    return "\n".join(lines)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_eval(root: Path, out: Path, stage, stream: TextIO = sys.stdout, region_from_folder: bool = False) -> dict:
    """Each image through the plate stage (edge.vision.stage), as any still is read.
    `region_from_folder`: a sub-folder named after a known region (br, eu, uk, us) reads with its plate
    formats and glyph conventions, as OpenALPR is run with -c per country."""
    truths = load_truth(root)
    base = stage.rules
    if region_from_folder:
        known = sorted({t.key.split("/")[0] for t in truths} & set(REGION_CODES))
        if known:
            print(f"reading {', '.join(k + '/' for k in known)} with that region's plate conventions (--no-region-from-folder: off)",
                  file=stream)
    tallies: dict[str, Tally] = {}
    sheet = Sheet(out)
    prog = Progress(len(truths), "eval")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for i, t in enumerate(truths, 1):
            frame = cv2.imread(str(t.image), cv2.IMREAD_COLOR)
            rec: dict = {"image": t.key, "plates": [], "ms": None}
            if region_from_folder:
                folder = t.key.split("/")[0]
                stage.rules = rules_for((folder,)) if folder in REGION_CODES else base
            if frame is None:
                print(f"warning: cannot decode {t.image}; counted as not read", file=sys.stderr)
                rec["error"] = "cannot decode image"
            else:
                t0 = time.perf_counter()
                plates = stage.recognize(frame)
                rec["ms"] = round((time.perf_counter() - t0) * 1000, 2)
                rec["plates"] = [
                    {"text": p.text, "box": [round(v, 1) for v in p.box], "confidence": round(p.confidence, 4)} for p in plates
                ]
            f.write(json.dumps(rec) + "\n")
            tallies.setdefault(t.key.split("/")[0], Tally()).add(t, rec["plates"], rec["ms"])
            _sheet_add(sheet, t, frame, rec["plates"])
            prog.update(i)
    stage.rules = base
    rows = {k: v.summary() for k, v in sorted(tallies.items())}
    total = Tally()
    for v in tallies.values():
        total.merge(v)
    rows["all"] = total.summary()
    print(format_table(rows), file=stream)
    print("\n".join(sheet.reliability_lines()), file=stream)
    print(f"peak memory {peak_rss_mb():.0f} MB; predictions in {out}; misread sheet {sheet.write(f'edge eval {root}')}",
          file=stream)
    return rows


def _sheet_add(sheet: Sheet, t: Truth, frame, plates: list[dict]) -> None:
    """One image's errors and (confidence, right) pairs, scored as Tally scores them."""
    over = [p for p in plates if matches(p["box"], t.box)]
    for p in plates:
        if p not in over:
            sheet.score(p["confidence"], False)
            sheet.add(t.key, frame, "false positive", "", p["text"], p["confidence"], tuple(p["box"]))
    for p in over:
        sheet.score(p["confidence"], normalize(p["text"]) == t.text)
    if not over:
        sheet.add(t.key, frame, "missed", t.text, "", None, t.box)
    elif t.text not in [normalize(p["text"]) for p in over]:
        best = max(over, key=lambda p: p["confidence"])
        sheet.add(t.key, frame, "misread", t.text, best["text"], best["confidence"], tuple(best["box"]))


def run_crops_eval(root: Path, reader, out: Path | None = None, stream: TextIO = sys.stdout,
                   region_from_state: bool = False) -> dict:
    """Score the reader alone. `region_from_state`: a crop whose `state` column names a US state is
    read with the us region's conventions (as OpenALPR is run with -c us)."""
    gt = root / "groundtruth.csv"
    if not gt.exists():
        raise EvalError(f"{gt} not found: --crops expects a folder with groundtruth.csv (filename,state,text)")
    with open(gt, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"filename", "text"} <= set(rows[0]):
        raise EvalError(f"{gt}: expected a header 'filename,state,text'")
    tally = Tally()
    base = reader.rules
    if region_from_state and any(region_of(r.get("state") or "") for r in rows):
        print("reading crops whose state column names a US state or a known region with that region's conventions "
              "(--no-region-from-folder: off)", file=stream)
    prog = Progress(len(rows), "eval crops")
    sheet = Sheet(out) if out else None
    sink = open(out, "w") if out else None
    try:
        for i, r in enumerate(rows, 1):
            img = cv2.imread(str(root / r["filename"]), cv2.IMREAD_COLOR)
            truth = normalize(r["text"])
            if img is None:
                print(f"warning: cannot decode {root / r['filename']}; counted as not read", file=sys.stderr)
                text, ms, conf = "", None, None
            else:
                region = region_of(r.get("state") or "") if region_from_state else None
                reader.rules = rules_for((region,)) if region else base
                t0 = time.perf_counter()
                res = reader.read([img])[0]
                ms = (time.perf_counter() - t0) * 1000
                text, conf = res.text, res.confidence
            tally.n += 1
            tally.exact += text == truth
            tally.lenient += normalize(text, True) == normalize(truth, True)
            tally.cer += min(1.0, edit_distance(text, truth) / max(1, len(truth)))
            tally.detected += 1
            if ms is not None:
                tally.ms.append(ms)
            if sink:
                sink.write(json.dumps({"image": r["filename"], "text": text, "truth": truth, "ms": round(ms or 0, 2),
                                       "confidence": None if conf is None else round(conf, 4)}) + "\n")
            if sheet is not None:
                if text and conf is not None:
                    sheet.score(conf, text == truth)
                if text != truth:
                    sheet.add(r["filename"], img, "misread" if text else "missed", truth, text, conf)
            prog.update(i)
    finally:
        reader.rules = base
        if sink:
            sink.close()
    s = tally.summary()
    print(f"{'crops':8} {'images':>6} {'exact':>6} {'lenient':>7} {'CER':>6} {'ms(med)':>8}", file=stream)
    print(f"{root.name[:8]:8} {s['images']:6d} {s['exact']:6.3f} {s['lenient']:7.3f} {s['cer']:6.3f} {s['ms_median'] or 0:8.2f}", file=stream)
    if sheet is not None:
        print("\n".join(sheet.reliability_lines()), file=stream)
        print(f"misread sheet {sheet.write(f'edge eval --crops {root}')}", file=stream)
    print(f"peak memory {peak_rss_mb():.0f} MB", file=stream)
    return s
