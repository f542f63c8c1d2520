"""Train the plate text reader: a small CNN with CTC over a two-row sequence.

The CNN squeezes the crop to two rows of 40 columns; the output sequence is row 0 then row 1,
so a one-line plate is read along one row and a two-line plate top row first. CTC picks the
alignment. Outputs per-step class probabilities (blank = 0).

    python -m models.train.reader --out runs/reader --minutes 60 [--pseudo runs/pseudo.tsv]
    python -m models.train.reader --out runs/reader_ft --finetune ...        (continue a copied checkpoint)
    python -m models.train.reader --out runs/reader_avg --average runs/reader/ckpt.pt runs/reader_ft/ckpt.pt
    python -m models.train.reader --out runs/reader_shipped --from-onnx models/plate_reader.onnx

--from-onnx rebuilds a checkpoint from an exported reader (the export folds each batch norm into
its convolution: the checkpoint's batch norms are identities carrying the folded bias, so a
fine-tune of it must keep them frozen, --freeze-bn, which it then does by default).

--average writes the weight average of two checkpoints of the same network (a base and its
fine-tune: "WiSE-FT", Wortsman et al. 2022), which keeps what the base knew while taking in what
the fine-tune learned; it is scored on both validation sets and exported like any checkpoint.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import multiprocessing as mp
import random
import re
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.train.boxdata import load_box_sets
from models.train.common import Logger, git_commit, save_onnx_with_meta
from models.train.render import degrade, loose_edges, plate_crop_sample, use_more_fonts

CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
IN_H, IN_W = 48, 160


def cbr(cin, cout, k=3, s=1, p=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PlateReader(nn.Module):
    def __init__(self, n_classes=len(CHARSET) + 1, w=(32, 64, 96, 128)):
        super().__init__()
        self.widths = tuple(int(x) for x in w)
        self.body = nn.Sequential(
            cbr(3, w[0]),  # 48x160
            nn.MaxPool2d(2),  # 24x80
            cbr(w[0], w[1]),
            nn.MaxPool2d(2),  # 12x40
            cbr(w[1], w[2]),
            cbr(w[2], w[2]),
            nn.MaxPool2d((2, 1)),  # 6x40
            cbr(w[2], w[3]),
            cbr(w[3], w[3]),
            cbr(w[3], w[3], k=(3, 1), s=(3, 1), p=0),  # 2x40
        )
        self.ctx = nn.Sequential(cbr(w[3], w[3], k=(1, 5), p=(0, 2)), nn.Dropout(0.1))
        self.cls = nn.Conv2d(w[3], n_classes, 1)

    def forward(self, x):
        y = self.cls(self.ctx(self.body(x)))  # N, C, 2, 40
        n, c, r, t = y.shape
        return y.permute(0, 2, 3, 1).reshape(n, r * t, c)  # N, T=80, C (logits)


# ------------------------------------------------------------------ data


def from_onnx(path: Path) -> tuple[PlateReader, dict]:
    """A PlateReader whose function is that of an exported reader ONNX file, and the file's metadata.

    The export folded each batch norm into the convolution before it (weights scaled, a bias added);
    here the convolutions take the folded weights and each batch norm becomes an identity (mean 0,
    variance 1 - eps, scale 1) whose shift is the folded bias."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    meta = {p.key: json.loads(p.value) for p in m.metadata_props}
    if meta.get("kind") != "plate-reader":
        raise SystemExit(f"--from-onnx {path}: not a plate-reader model (metadata kind={meta.get('kind')!r})")
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    convs = [(init[n.input[1]], init[n.input[2]] if len(n.input) > 2 else None) for n in m.graph.node if n.op_type == "Conv"]
    model = PlateReader(w=meta.get("widths", (32, 64, 96, 128)))
    mods = [mod for mod in model.modules() if isinstance(mod, (nn.Conv2d, nn.BatchNorm2d))]
    pairs = []  # (conv, batch norm or None)
    for i, mod in enumerate(mods):
        if isinstance(mod, nn.Conv2d):
            bn = mods[i + 1] if i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d) else None
            pairs.append((mod, bn))
    if len(pairs) != len(convs):
        raise SystemExit(f"--from-onnx {path}: {len(convs)} convolutions, the network has {len(pairs)}")
    with torch.no_grad():
        for (conv, bn), (w, b) in zip(pairs, convs):
            if tuple(conv.weight.shape) != w.shape:
                raise SystemExit(f"--from-onnx {path}: a convolution of shape {w.shape}, the network's is {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(np.array(w)))
            bias = torch.from_numpy(np.array(b)) if b is not None else torch.zeros(w.shape[0])
            if bn is None:
                conv.bias.copy_(bias)
            else:
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.weight.fill_(1.0)
                bn.bias.copy_(bias)
    return model, meta


def freeze_batch_norms(model: nn.Module) -> None:
    """Batch norms in evaluation mode (their statistics fixed) while the rest trains."""
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eval()


def to_tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0


BOX_SETS = ("ro-dashcam-voc", "openimages-plates", "us-plates-roboflow")
# Romanian registrations: county code and two digits (Bucharest: B and two or three) and three letters,
# or a temporary plate's county code and six digits. A pseudo-label of a ro-dashcam-voc crop that
# fits none of these is wrong; 'F' and two digits is an Ilfov plate (IF) whose narrow I was dropped.
RO_FORMAT = re.compile(r"^(B\d{2,3}[A-Z]{3}|[A-Z]{2}\d{2}[A-Z]{3}|[A-Z]{1,2}\d{6})$")
RO_ILFOV_DROPPED = re.compile(r"^F\d{2}[A-Z]{3}$")


def photo_key(path: str, box) -> tuple[str, int, int, int, int]:
    """A crop's key in a review file: the photo's path from its box set's folder on, and its box."""
    for s in BOX_SETS:
        k = path.find(s + "/")
        if k >= 0:
            path = path[k:]
            break
    return (path, *(int(round(float(v))) for v in box))


def load_review(path: Path | None) -> dict:
    """Labels checked by eye (models/train/reviewed_labels.tsv): crop key -> text, or None where the
    pseudo-label was wrong and the plate cannot be read with certainty. The photo's path and box are
    kept too (`review_additions`)."""
    out = ReviewLabels()
    if path is None:
        return out
    if not path.exists():
        raise SystemExit(f"--review: {path} not found")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split("\t")
        if len(f) != 6 or not (f[5] == "-" or re.fullmatch(r"[A-Z0-9]{1,10}", f[5])):
            raise SystemExit(f"--review: {path}:{n}: expected photo, x1, y1, x2, y2 and a text of A-Z0-9 or -")
        key = photo_key(f[0], f[1:5])
        out[key] = None if f[5] == "-" else f[5]
        out.boxes[key] = (f[0], tuple(float(v) for v in f[1:5]))
    return out


class ReviewLabels(dict):
    """crop key -> text (None: drop the crop), and crop key -> (photo under the datasets folder, box)."""

    def __init__(self):
        super().__init__()
        self.boxes: dict = {}


def review_additions(review: dict | None, seen: set, root: Path) -> list[list[str]]:
    """Pseudo-label rows (pseudolabel.py's columns, kind 'review') for the crops labelled by eye that
    the pseudo-label file does not hold: plates the labelling did not keep."""
    rows = []
    for key, text in (review or {}).items():
        if text is None or key in seen:
            continue
        rel, box = review.boxes[key]
        source = rel.split("/")[0]
        rows.append([str(root / rel), *(f"{v:.1f}" for v in box), text, "1.000", "review", source])
    return rows


def held_out_by_hash(photo: str, val_frac: float) -> bool:
    """The held-out split of a photo added by the review: by a hash of its path, so that adding it
    moves no other photo between the splits."""
    return zlib.crc32(photo.encode()) % 1000 < val_frac * 1000


def ro_label(text: str) -> str | None:
    """A ro-dashcam-voc pseudo-label made to fit a Romanian format (see RO_FORMAT), or None."""
    if RO_ILFOV_DROPPED.match(text):
        text = "I" + text
    return text if RO_FORMAT.match(text) else None


def reviewed_text(photo: str, box, text: str, review: dict | None, strict_ro: bool) -> str | None:
    """A pseudo-label after the review (load_review) and, with strict_ro, the Romanian formats; None: drop it."""
    if review:
        text = review.get(photo_key(photo, box), text)
    if text and strict_ro and "ro-dashcam-voc" in photo:
        text = ro_label(text)
    return text or None


class RealCrops:
    """Pseudo-labelled crops of real photos (see pseudolabel.py), cut with a jittered box.

    `review`: labels checked by eye (load_review) replace the pseudo-labels of the crops they name,
    and drop the crops they mark as wrong; `strict_ro`: ro-dashcam-voc labels must fit a Romanian
    format (ro_label)."""

    def __init__(self, tsv: Path | None, val_frac=0.08, seed=0, review: dict | None = None, strict_ro: bool = False,
                 root: Path | None = None):
        self.train: list[tuple] = []
        self.val: list[tuple] = []
        self.cache: dict[str, np.ndarray] = {}
        self.dropped = self.added = 0
        if tsv is None or not tsv.exists():
            return
        rng = random.Random(seed)
        by_img: dict[str, list] = {}
        lines = [line.split("\t") for line in tsv.read_text().splitlines()]
        if review and root is not None:  # root: the datasets folder, where the review's photos are
            seen = {photo_key(f[9] if len(f) > 9 else f[0], f[1:5]) for f in lines if len(f) >= 6}
            lines += review_additions(review, seen, root)
        added: list[tuple] = []
        for f in lines:
            if len(f) < 6:
                continue
            text = f[5]
            # column 10, where present (a packed copy, pack.py), names the photo the crop was cut from
            photo = f[9] if len(f) > 9 else f[0]
            if len(f) > 9:  # a packed copy (pack.py) was reviewed when it was packed: - marks a dropped crop
                text = None if text == "-" else text
            else:
                text = reviewed_text(photo, f[1:5], text, review, strict_ro)
            # a photo whose crops are all dropped keeps its place in the split; one added by the review takes none
            group = added if len(f) > 7 and f[7] == "review" else by_img.setdefault(photo, [])
            if not text:
                self.dropped += 1
                continue
            us = "us-plates-roboflow" in f[0] or (len(f) > 8 and f[8] == "us-plates-roboflow")
            if us:
                text = text.replace("O", "0")  # a US set: US plates draw O and 0 alike and records write 0
            group.append((f[0], *map(float, f[1:5]), text, us, photo))
        keys = sorted(by_img)
        rng.shuffle(keys)
        nval = int(len(keys) * val_frac)
        for i, k in enumerate(keys):
            (self.val if i < nval else self.train).extend(it[:7] for it in by_img[k])
        for it in added:
            (self.val if held_out_by_hash(it[7], val_frac) else self.train).append(it[:7])
        self.added = len(added)

    def image(self, path: str) -> np.ndarray:
        im = self.cache.get(path)
        if im is None:
            im = cv2.imread(path)[..., ::-1].copy()
            self.cache[path] = im
        return im

    def sample(self, item, rng: np.random.Generator | None, strength: float = 1.0, loose: float = 0.0):
        path, x1, y1, x2, y2, text, _ = item
        im = self.image(path)
        H, W = im.shape[:2]
        bw, bh = x2 - x1, y2 - y1
        if rng is None:
            j = np.array([0.03, 0.06, 0.03, 0.06]) * [bw, bh, bw, bh]
        else:
            # a real detector's boxes are often 10-20% short, and (loose) sometimes far too long
            j = loose_edges(rng, loose, -0.08, 0.14) * [bw, bh, bw, bh]
        c = im[max(0, int(y1 - j[1])) : min(H, int(y2 + j[3])), max(0, int(x1 - j[0])) : min(W, int(x2 + j[2]))]
        if rng is not None:
            if rng.random() < 0.3:
                s = rng.uniform(0.4, 0.9)
                c = cv2.resize(c, (max(8, int(c.shape[1] * s)), max(4, int(c.shape[0] * s))), interpolation=cv2.INTER_AREA)
            c = degrade(c, rng, strength=0.5 * strength)
        return cv2.resize(c, (IN_W, IN_H), interpolation=cv2.INTER_LINEAR), text


def backgrounds(root: Path, n=200, seed=0) -> list[np.ndarray]:
    """n real photos (long side 320) to put behind rendered plates: from the box sets under root, or
    from a folder of images (a copy made by `pack.py` for a machine without the datasets)."""
    if root.is_dir() and not any((root / s).exists() for s in ("ro-dashcam-voc", "openimages-plates", "us-plates-roboflow")):
        paths = sorted(p for p in root.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    else:
        paths = [it.path for it in load_box_sets(root)]
    random.Random(seed).shuffle(paths)
    out = []
    for path in paths[:n]:
        im = cv2.imread(str(path))
        if im is not None:
            s = 320 / max(im.shape[:2])
            out.append(cv2.resize(im, None, fx=s, fy=s)[..., ::-1].copy())
    return out


def sign_crop_sample(rng: np.random.Generator, out_w: int, out_h: int, background: np.ndarray | None = None,
                     strength: float = 1.0) -> tuple[np.ndarray, str]:
    """A negative: part of a road/shop sign or of vehicle lettering (distractors.py) cut as a detector
    box that fired on it would be, labelled "" (a plate box with no registration in it reads as
    nothing, so the runtime drops it: text is only read off plates)."""
    from models.train.distractors import sign

    im = sign(rng, float(rng.uniform(0.8, 2.0)))
    rgba = np.asarray(im.convert("RGBA"))
    H, W = rgba.shape[:2]
    if background is not None and background.shape[0] > 10 and rng.random() < 0.5:
        bh, bw = background.shape[:2]
        sx, sy = int(rng.integers(0, max(1, bw - 64))), int(rng.integers(0, max(1, bh - 32)))
        canvas = cv2.resize(background[sy : sy + max(32, bh // 3), sx : sx + max(64, bw // 3)], (W + 40, H + 40))
    else:  # a vehicle body or a wall: a plain, mostly light colour
        canvas = np.full((H + 40, W + 40, 3), rng.integers(90, 256, 3) if rng.random() < 0.8 else rng.integers(0, 256, 3), np.uint8)
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    region = canvas[20 : 20 + H, 20 : 20 + W]
    canvas[20 : 20 + H, 20 : 20 + W] = (rgba[..., :3] * a + region * (1 - a)).astype(np.uint8)
    # the detector's box: a plate-shaped window over part or all of the sign
    bw = W * rng.uniform(0.4, 1.0)
    bh = min(H * rng.uniform(0.5, 1.1), bw / rng.uniform(1.5, 5.0))
    x1 = 20 + rng.uniform(-0.1 * bw, max(0.0, W - bw) + 0.1 * bw)
    y1 = 20 + rng.uniform(-0.15 * bh, max(0.0, H - bh) + 0.15 * bh)
    x1, y1 = int(max(0, x1)), int(max(0, y1))
    crop = canvas[y1 : int(min(canvas.shape[0], y1 + bh)) + 1, x1 : int(min(canvas.shape[1], x1 + bw)) + 1]
    target_w = float(np.exp(rng.uniform(np.log(40), np.log(260))))
    sc = target_w / max(crop.shape[1], 1)
    if sc < 1:
        crop = cv2.resize(crop, (max(8, int(crop.shape[1] * sc)), max(4, int(crop.shape[0] * sc))), interpolation=cv2.INTER_AREA)
    crop = degrade(crop, rng, strength)
    return cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_LINEAR), ""


def rejected(model, samples, min_len: int = 4, min_conf: float = 0.5) -> float:
    """Share of samples the runtime would drop (fewer than min_len characters or a confidence under
    min_conf): for negatives, higher is better."""
    n = 0
    for text, conf in read_all(model, samples):
        g = float(np.exp(np.mean(np.log(np.maximum(conf, 1e-6))))) if conf else 0.0
        n += len(text) < min_len or g < min_conf
    return n / max(1, len(samples))


def negatives_for_validation(a, bgs) -> list:
    nrng = np.random.default_rng(54321)
    return [sign_crop_sample(nrng, IN_W, IN_H, bgs[int(nrng.integers(len(bgs)))] if bgs else None) for _ in range(a.neg_val)]


def encode(texts: list[str]):
    flat = [CHARSET.index(c) + 1 for t in texts for c in t]
    return torch.tensor(flat, dtype=torch.long), torch.tensor([len(t) for t in texts], dtype=torch.long)


def greedy(probs: np.ndarray) -> tuple[str, list[float]]:
    idx = probs.argmax(-1)
    out, conf, prev = [], [], 0
    for t, i in enumerate(idx):
        if i != 0 and i != prev:
            out.append(CHARSET[i - 1])
            conf.append(float(probs[t, i]))
        prev = i
    return "".join(out), conf


def read_all(model, samples) -> list[tuple[str, list[float]]]:
    """Greedy reads (text, per-character confidences) of (image, text) samples, in batches of 128."""
    model.eval()
    out = []
    dev = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(samples), 128):
            chunk = samples[i : i + 128]
            p = torch.softmax(model(to_tensor([s[0] for s in chunk]).to(dev)), -1).cpu().numpy()
            out.extend(greedy(p[k]) for k in range(len(chunk)))
    model.train()
    return out


def accuracy(model, samples) -> float:
    """Exact reads of (image, text) or (image, text, us) samples; a US sample's O is scored as 0 (the
    runtime writes the US glyph for O and 0 as 0: edge.vision.reader.REGION_GLYPHS)."""
    reads = read_all(model, samples)
    return sum((r[0].replace("O", "0") if len(s) > 2 and s[2] else r[0]) == s[1] for r, s in zip(reads, samples)) / max(1, len(samples))


def o_zero_merged(lp: torch.Tensor, us: list[bool]) -> torch.Tensor:
    """CTC log-probabilities (T, N, C) in which, for the US samples, the label 0 is emitted with the
    probability of O plus that of 0: US plates draw the two with one glyph and their labels write 0,
    so the loss leaves the split between O and 0 to the other regions' plates (where a format or the
    glyph tells them apart) instead of teaching that an O-shaped glyph is 0."""
    if not any(us):
        return lp
    i0, io = CHARSET.index("0") + 1, CHARSET.index("O") + 1
    m = torch.tensor(us, dtype=torch.bool, device=lp.device)
    out = lp.clone()
    out[:, m, i0] = torch.logaddexp(lp[:, m, i0], lp[:, m, io])
    return out


# Training batches are drawn by make_batch, in this process or in worker processes (--workers) that
# inherit _DATA by fork; a batch depends only on its step number and the seed, so a resumed run and
# a run with workers draw alike.
_DATA: dict = {}


def make_batch(step: int):
    a, real, bgs = _DATA["args"], _DATA["real"], _DATA["bgs"]
    rng = np.random.default_rng([a.seed, step])
    # curriculum: clean, large plates first; full degradation and the real crops' share ramp up
    strength = 1.0 if a.finetune else min(1.0, 0.15 + step / a.ramp_steps)
    real_frac = a.real_frac if a.finetune else a.real_frac * min(1.0, 0.3 + step / a.ramp_steps)
    imgs, texts, us = [], [], []
    for _ in range(a.batch):
        real_us = False
        if a.neg_frac and rng.random() < a.neg_frac:
            im, t = sign_crop_sample(rng, IN_W, IN_H, bgs[int(rng.integers(len(bgs)))] if bgs else None, strength=strength)
        elif real.train and rng.random() < real_frac:
            item = real.train[int(rng.integers(len(real.train)))]
            im, t = real.sample(item, rng, strength, loose=a.loose)
            real_us = item[6]
        else:
            im, t = plate_crop_sample(rng, IN_W, IN_H, bgs[int(rng.integers(len(bgs)))] if bgs else None, strength=strength,
                                      extras=a.us_extras, crisp=a.crisp, loose=a.loose)
        imgs.append(im)
        texts.append(t)
        us.append(real_us)
    return np.stack(imgs), texts, us


def batches(first_step: int, workers: int):
    """Yield (step, images, texts) from first_step on; with workers, up to 4 batches per worker ahead."""
    if workers <= 0:
        step = first_step
        while True:
            yield (step, *make_batch(step))
            step += 1
    ctx = mp.get_context("fork")
    with ctx.Pool(workers) as pool:
        pending = collections.deque()
        nxt = first_step
        while True:
            while len(pending) < 4 * workers:
                pending.append((nxt, pool.apply_async(make_batch, (nxt,))))
                nxt += 1
            step, res = pending.popleft()
            yield (step, *res.get())


def checkpoint(model, opt, step, metrics, spent, start_step, light: bool, frozen_bn: bool = False) -> dict:
    st = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "widths": list(model.widths),
          "step": step, "metrics": metrics, "spent": spent, "finetune_from": start_step or None}
    if frozen_bn:
        st["frozen_bn"] = True
    if not light and opt is not None:
        st["opt"] = opt.state_dict()
    return st


def export(model, path: Path, meta: dict):
    class WithSoftmax(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return torch.softmax(self.m(x), -1)

    w = WithSoftmax(model).eval()
    save_onnx_with_meta(
        w,
        torch.zeros(1, 3, IN_H, IN_W),
        path,
        input_names=["crop"],
        output_names=["probs"],
        dynamic_axes={"crop": {0: "n"}, "probs": {0: "n"}},
        meta=meta,
    )


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--pseudo", type=Path, default=Path("runs/pseudo.tsv"))
    ap.add_argument("--review", type=Path,
                    help="labels checked by eye (models/train/reviewed_labels.tsv): they replace the pseudo-labels of the "
                         "crops they name and drop those they mark -")
    ap.add_argument("--strict-ro", action="store_true",
                    help="drop ro-dashcam-voc pseudo-labels that fit no Romanian format (an 'F' county is IF with its I lost)")
    ap.add_argument("--out", type=Path, default=Path("runs/reader"))
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--real-frac", type=float, default=0.35)
    ap.add_argument("--neg-frac", type=float, default=0.0,
                    help="share of samples that are signs or vehicle lettering labelled as no text (negatives)")
    ap.add_argument("--neg-val", type=int, default=200, help="negatives in the validation (share the runtime would drop)")
    ap.add_argument("--us-extras", action="store_true",
                    help="US plates carry stacked type letters, pictograms and emblems that are not the registration")
    ap.add_argument("--us-o-zero", choices=("label", "merge"), default="label",
                    help="real US crops (labels write the one O/0 glyph as 0): 'label' trains the glyph as 0; 'merge' lets "
                         "the label 0 be emitted as O or 0 (see o_zero_merged), so other regions' letter O is not unlearned")
    ap.add_argument("--crisp", type=float, default=0.0, help="share of synthetic plates seen large and sharp")
    ap.add_argument("--loose", type=float, default=0.0,
                    help="share of crop edges (synthetic and real) cut loose, up to 35%% outside the plate (see render.loose_edges)")
    ap.add_argument("--ramp-steps", type=int, default=2000, help="curriculum: steps until full augmentation")
    ap.add_argument("--finetune", action="store_true", help="continue from the checkpoint with a fresh schedule (--lr, --minutes)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="processes drawing training batches (0: in this process)")
    ap.add_argument("--device", default="cpu", help="torch device for the network (cpu, cuda)")
    ap.add_argument("--widths", default="32,64,96,128", help="channel widths of the four stages (a new network only)")
    ap.add_argument("--light-ckpt", action="store_true", help="checkpoints without the optimiser state (smaller)")
    ap.add_argument("--more-fonts", action="store_true",
                    help="synthetic plates also in the plate-like fonts of render.MORE_FONT_GLOBS (DIN, routed gothic, condensed)")
    ap.add_argument("--from-onnx", type=Path, help="write OUT/ckpt.pt rebuilt from an exported reader (see from_onnx)")
    ap.add_argument("--freeze-bn", action="store_true",
                    help="keep batch-norm statistics fixed while training (on by default for a checkpoint made by --from-onnx)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", type=Path)
    ap.add_argument("--val-size", type=int, default=400, help="synthetic validation samples")
    ap.add_argument("--backgrounds", type=int, default=200, help="real photos used as plate surroundings")
    ap.add_argument("--average", type=Path, nargs=2, metavar=("BASE", "FINETUNED"),
                    help="write the weight average of two checkpoints to OUT/ckpt.pt (see --alpha)")
    ap.add_argument("--alpha", default="0.5",
                    help="--average: weight of FINETUNED; a comma list (0.3,0.5,0.7) keeps the one that scores best on the "
                         "training-side validation (mean of synthetic and held-out real crops)")
    a = ap.parse_args(argv)
    for name in ("real_frac", "neg_frac", "crisp", "loose"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            raise SystemExit(f"--{name.replace('_', '-')}: a share, expected 0..1, got {getattr(a, name)}")
    if a.average:
        return average(a)
    if a.from_onnx:
        if not a.from_onnx.is_file():
            raise SystemExit(f"--from-onnx {a.from_onnx}: no such file")
        model, meta = from_onnx(a.from_onnx)
        a.out.mkdir(parents=True, exist_ok=True)
        metrics = dict(meta.get("metrics") or {})
        step = int(meta.get("train_steps", metrics.get("step", 0)))
        st = checkpoint(model, None, step, metrics, 0.0, 0, True, frozen_bn=True)  # folded identities: a fine-tune keeps them so
        st["from_onnx"] = str(a.from_onnx)
        torch.save(st, a.out / "ckpt.pt")
        Logger(a.out / "train.log")(f"rebuilt from {a.from_onnx} (step {step}, widths {list(model.widths)})")
        return
    if a.more_fonts:
        try:
            use_more_fonts()
        except RuntimeError as e:
            raise SystemExit(f"--more-fonts: {e}") from None
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    log = Logger(a.out / "train.log")
    ck = a.out / "ckpt.pt"
    st = torch.load(ck, map_location="cpu") if ck.exists() else None
    try:
        widths = st["widths"] if st and "widths" in st else (32, 64, 96, 128) if st else [int(x) for x in a.widths.split(",")]
    except ValueError:
        raise SystemExit(f"--widths: expected four integers separated by commas, got {a.widths!r}") from None
    if len(widths) != 4 or min(widths) < 1:
        raise SystemExit(f"--widths: expected four positive integers, got {a.widths!r}")
    model = PlateReader(w=widths)
    try:
        dev = torch.device(a.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available here")
    except (RuntimeError, AssertionError) as e:
        raise SystemExit(f"--device {a.device}: {e}") from None
    step, metrics, spent = 0, {}, 0.0
    frozen_bn = a.freeze_bn or bool(st and st.get("frozen_bn"))
    if st:
        model.load_state_dict(st["model"])
        step, metrics, spent = st["step"], st.get("metrics", {}), st.get("spent", 0.0)
        log(f"resumed from step {step}" + (" (batch norms frozen)" if frozen_bn else ""))
    start_step = 0
    if a.finetune and not ck.exists():
        raise SystemExit(f"--finetune needs a checkpoint in {a.out}")
    if a.finetune:
        start_step = step if not st.get("finetune_from") else st["finetune_from"]
        spent = 0.0 if not st.get("finetune_from") else spent
        a.steps = start_step + a.steps
        log(f"fine-tuning from step {start_step} for up to {a.steps - start_step} steps / {a.minutes} min at lr {a.lr}")
    if a.export:
        meta = {
            "kind": "plate-reader",
            "version": "2",  # 2: the network's widths are a choice (--widths) and written below
            "widths": list(model.widths),
            "parameters": sum(p.numel() for p in model.parameters()),
            "input": "RGB float32 0..1, NCHW, crop resized (stretched) to height x width",
            "height": IN_H,
            "width": IN_W,
            "charset": CHARSET,
            "blank": 0,
            "decode": "ctc-greedy; output sequence is row 0 then row 1 of a two-row grid",
            "rows": 2,
            "max_len": 10,
            "crop_margin_x": 0.04,
            "crop_margin_y": 0.07,
            "train_steps": step,
            "training_commit": git_commit(),
            "metrics": metrics,
        }
        export(model, a.export, meta)
        log(f"exported {a.export}")
        return
    bgs = backgrounds(a.data, a.backgrounds) if a.data.exists() and a.backgrounds else []
    real = RealCrops(a.pseudo, review=load_review(a.review), strict_ro=a.strict_ro, root=a.data)
    log(f"real crops train {len(real.train)} val {len(real.val)}; backgrounds {len(bgs)}"
        + (f"; review: {real.dropped} pseudo-labels dropped, {real.added} crops added" if a.review or a.strict_ro else ""))
    vrng = np.random.default_rng(12345)
    val_syn = [plate_crop_sample(vrng, IN_W, IN_H, bgs[int(vrng.integers(len(bgs)))] if bgs else None) for _ in range(a.val_size)]
    val_real = [(*real.sample(it, None), it[6]) for it in real.val]
    val_neg = negatives_for_validation(a, bgs)
    _DATA.update(args=a, real=real, bgs=bgs)
    feed = batches(step, a.workers)
    first = next(feed)  # the batch workers fork before the device is touched
    feed_all = itertools.chain([first], feed)
    model.to(dev)  # the optimiser is made after the move, so its loaded state lands on the device too
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    if st and "opt" in st:
        opt.load_state_dict(st["opt"])
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    budget = a.minutes * 60
    t_start = time.time() - spent
    t0 = time.time()
    log(f"network widths {list(model.widths)}, {sum(p.numel() for p in model.parameters())} parameters, on {dev}; "
        f"batch {a.batch}, {a.workers} batch workers")
    while step < a.steps and time.time() - t_start < budget:
        progress = min(1.0, max((step - start_step) / max(1, a.steps - start_step), (time.time() - t_start) / budget))
        warm = step - start_step
        lr = a.lr * 0.5 * (1 + math.cos(math.pi * progress)) if warm > 100 else a.lr * (warm + 1) / 100
        for g in opt.param_groups:
            g["lr"] = lr
        bstep, imgs, texts, us = next(feed_all)
        assert bstep == step
        x = torch.from_numpy(imgs).to(dev).permute(0, 3, 1, 2).float() / 255.0
        if frozen_bn:
            freeze_batch_norms(model)  # (the validation's read_all puts the whole model back in training mode)
        logits = model(x)
        lp = F.log_softmax(logits.float(), -1).permute(1, 0, 2)  # T, N, C
        if a.us_o_zero == "merge":
            lp = o_zero_merged(lp, us)
        tg, tl = encode(texts)
        loss = ctc(lp, tg.to(dev), torch.full((len(texts),), lp.shape[0], dtype=torch.long, device=dev), tl.to(dev))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            log(f"step {step} loss {loss.item():.3f} lr {lr:.5f} {(time.time() - t0) / 50:.2f}s/step")
            t0 = time.time()
        if step % 500 == 0 or step == a.steps:
            metrics = {"val_synthetic_exact": round(accuracy(model, val_syn), 4), "step": step}
            if val_real:
                metrics["val_pseudo_real_exact"] = round(accuracy(model, val_real), 4)
            if val_neg:
                metrics["val_negative_rejected"] = round(rejected(model, val_neg), 4)
            log(f"eval {json.dumps(metrics)}")
            torch.save(checkpoint(model, opt, step, metrics, time.time() - t_start, start_step, a.light_ckpt, frozen_bn), ck)
    feed.close()
    torch.save(checkpoint(model, opt, step, metrics, time.time() - t_start, start_step, a.light_ckpt, frozen_bn), ck)
    log(f"stopped at step {step}")


def average(a) -> None:
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    log = Logger(a.out / "train.log")
    base, ft = (torch.load(p, map_location="cpu") for p in a.average)
    if set(base["model"]) != set(ft["model"]):
        raise SystemExit("--average: the checkpoints are not of the same network")
    try:
        alphas = [float(x) for x in str(a.alpha).split(",")]
    except ValueError:
        raise SystemExit(f"--alpha: expected numbers separated by commas, got {a.alpha!r}") from None
    if not alphas or not all(0.0 <= x <= 1.0 for x in alphas):
        raise SystemExit(f"--alpha: each weight must lie in 0..1, got {a.alpha!r}")
    bgs = backgrounds(a.data, a.backgrounds) if a.data.exists() and a.backgrounds else []
    real = RealCrops(a.pseudo, review=load_review(a.review), strict_ro=a.strict_ro, root=a.data)
    vrng = np.random.default_rng(12345)
    val_syn = [plate_crop_sample(vrng, IN_W, IN_H, bgs[int(vrng.integers(len(bgs)))] if bgs else None) for _ in range(a.val_size)]
    val_real = [(*real.sample(it, None), it[6]) for it in real.val]
    val_neg = negatives_for_validation(a, bgs)
    best = None
    for alpha in alphas:
        sd = {}
        for k, v in base["model"].items():
            w = ft["model"][k]
            sd[k] = (v.float() * (1 - alpha) + w.float() * alpha).to(v.dtype) if v.is_floating_point() else w
        model = PlateReader(w=base.get("widths", (32, 64, 96, 128)))
        model.load_state_dict(sd)
        metrics = {"val_synthetic_exact": round(accuracy(model, val_syn), 4), "step": ft["step"],
                   "averaged": f"{1 - alpha:g} x step {base['step']} + {alpha:g} x step {ft['step']}"}
        if val_real:
            metrics["val_pseudo_real_exact"] = round(accuracy(model, val_real), 4)
        if val_neg:
            metrics["val_negative_rejected"] = round(rejected(model, val_neg), 4)
        # negatives rejected are logged, not scored: a reader that blanks signs can blank real plates too
        # (CHANGELOG.md, release 11), and these validation sets would not show it
        score = float(np.mean([metrics["val_synthetic_exact"], metrics.get("val_pseudo_real_exact", metrics["val_synthetic_exact"])]))
        log(f"averaged {a.average[0]} and {a.average[1]} (alpha {alpha:g}): {json.dumps(metrics)}")
        if best is None or score > best[0]:
            best = (score, alpha, sd, metrics)
    _, alpha, sd, metrics = best
    if len(alphas) > 1:
        log(f"kept alpha {alpha:g} (best mean of the two validation sets)")
    out = {"model": sd, "widths": list(base.get("widths", (32, 64, 96, 128))), "step": ft["step"], "metrics": metrics, "spent": 0.0}
    if base.get("frozen_bn") or ft.get("frozen_bn"):
        out["frozen_bn"] = True
    if "opt" in ft:
        out["opt"] = ft["opt"]
    torch.save(out, a.out / "ckpt.pt")


if __name__ == "__main__":
    main()
