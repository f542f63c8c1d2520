"""Train the plate detector: a small CenterNet-style network (stride-4 heatmap + box size + offset).

    python -m models.train.detector --data ../shared/datasets --out runs/detector --minutes 60

Resumes from `OUT/ckpt.pt` when present; logs to `OUT/train.log`; `--export FILE.onnx` writes the
ONNX model with its metadata from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.train.boxdata import load_box_sets
from models.train.common import Logger, git_commit, save_onnx_with_meta

STRIDE = 4
CROP = 320
LONG_SIDE = 512  # runtime resizes the frame's long side to this


def conv_bn(cin, cout, k=3, s=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DW(nn.Module):
    """Depthwise-separable block, residual when shapes allow."""

    def __init__(self, cin, cout, s=1, k=3):
        super().__init__()
        self.dw = conv_bn(cin, cin, k, s, groups=cin)
        self.pw = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.res = s == 1 and cin == cout

    def forward(self, x):
        y = self.pw(self.dw(x))
        return F.relu(x + y) if self.res else F.relu(y)


class PlateDet(nn.Module):
    def __init__(self, w=(16, 32, 64, 96, 128), fpn=48):
        super().__init__()
        self.stem = conv_bn(3, w[0], 3, 2)  # /2
        self.s4 = nn.Sequential(DW(w[0], w[1], 2), DW(w[1], w[1]))  # /4
        self.s8 = nn.Sequential(DW(w[1], w[2], 2), DW(w[2], w[2]), DW(w[2], w[2]))  # /8
        self.s16 = nn.Sequential(DW(w[2], w[3], 2), DW(w[3], w[3], k=5), DW(w[3], w[3], k=5))  # /16
        self.s32 = nn.Sequential(DW(w[3], w[4], 2), DW(w[4], w[4], k=5), DW(w[4], w[4], k=5))  # /32
        self.l4 = nn.Conv2d(w[1], fpn, 1)
        self.l8 = nn.Conv2d(w[2], fpn, 1)
        self.l16 = nn.Conv2d(w[3], fpn, 1)
        self.l32 = nn.Conv2d(w[4], fpn, 1)
        self.smooth = nn.Sequential(DW(fpn, fpn, k=5), DW(fpn, fpn))
        self.head = nn.Conv2d(fpn, 5, 1)
        nn.init.constant_(self.head.bias, 0.0)
        with torch.no_grad():
            self.head.bias[0] = -4.0

    def forward(self, x):
        x = self.stem(x)
        c4 = self.s4(x)
        c8 = self.s8(c4)
        c16 = self.s16(c8)
        c32 = self.s32(c16)
        p = self.l32(c32)
        p = self.l16(c16) + F.interpolate(p, scale_factor=2.0, mode="nearest")
        p = self.l8(c8) + F.interpolate(p, scale_factor=2.0, mode="nearest")
        p = self.l4(c4) + F.interpolate(p, scale_factor=2.0, mode="nearest")
        y = self.head(self.smooth(F.relu(p)))
        # channel 0: heat logit -> sigmoid; 1,2: log(w,h / stride); 3,4: offset in cells
        return torch.cat([torch.sigmoid(y[:, :1]), y[:, 1:3], torch.sigmoid(y[:, 3:5])], 1)


# ---------------------------------------------------------------- data


class Scenes:
    def __init__(self, root: Path, seed=0, holdout=0.05):
        items = load_box_sets(root)
        rng = random.Random(seed)
        rng.shuffle(items)
        n_val = int(len(items) * holdout)
        self.val_items = items[:n_val]
        self.train_items = items[n_val:]
        self.cache: dict[Path, tuple[np.ndarray, float]] = {}

    def image(self, it):
        got = self.cache.get(it.path)
        if got is None:
            im = cv2.imread(str(it.path))
            s = min(1.0, 720.0 / max(im.shape[:2]))
            if s < 1.0:
                im = cv2.resize(im, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            got = (im, s)
            self.cache[it.path] = got
        return got


def add_vehicle(canvas: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic vehicle with a rendered plate (scene.py) where it hides no labelled plate;
    returns the new BGR canvas and the plate boxes with the new plate added."""
    from models.train.render import render_plate
    from models.train.scene import draw_vehicle

    H, W = canvas.shape[:2]
    plate_w = float(np.exp(rng.uniform(math.log(14), math.log(150))))
    vw = plate_w / 0.36
    vh = vw * 0.78
    if vw >= W - 2 or vh >= H - 2:
        return canvas, boxes
    for _try in range(8):
        cx = float(rng.uniform(vw / 2, W - vw / 2))
        bottom = float(rng.uniform(vh, H))
        x1, y1, x2, y2 = cx - vw / 2, bottom - vh, cx + vw / 2, bottom
        if len(boxes) and np.any((boxes[:, 0] < x2) & (boxes[:, 2] > x1) & (boxes[:, 1] < y2) & (boxes[:, 3] > y1)):
            continue
        rgb = canvas[..., ::-1].copy()
        night = rng.random() < 0.15
        placed = draw_vehicle(rgb, cx, bottom, vw, rng, render_plate(rng), yaw=float(rng.uniform(-0.1, 0.1)), night=night)
        if night:
            region = rgb[int(y1) : int(y2), int(x1) : int(x2)]
            region[:] = (region * 0.6).astype(np.uint8)
        sigma = float(rng.uniform(0.3, 1.2))
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
        nb = np.array([placed.box], np.float32).clip(0, [W, H, W, H])
        return rgb[..., ::-1].copy(), np.concatenate([boxes.reshape(-1, 4), nb])
    return canvas, boxes


def augment(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, crop=CROP, negatives: float = 0.0,
            synthetic: float = 0.0):
    """A training crop: random scale and window (biased to plates), flip, photometric changes; with
    probability `negatives`, signs and lettering pasted where no plate is (see distractors.py); with
    probability `synthetic`, a drawn vehicle carrying a rendered plate (a labelled positive)."""
    h, w = img.shape[:2]
    base = LONG_SIDE / max(h, w)
    s = base * float(np.exp(rng.uniform(math.log(0.45), math.log(1.6))))
    if len(boxes):
        # avoid making every plate microscopic or gigantic
        pw = float(np.median(boxes[:, 2] - boxes[:, 0])) * s
        if pw < 12:
            s *= 12 / max(pw, 1e-3) * rng.uniform(1.0, 1.5)
        if pw > 260:
            s *= 260 / pw
    im = cv2.resize(img, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    b = boxes * s
    H, W = im.shape[:2]
    # choose a crop window, biased to contain a plate
    if len(b) and rng.random() < 0.8:
        k = rng.integers(len(b))
        cx, cy = (b[k, 0] + b[k, 2]) / 2, (b[k, 1] + b[k, 3]) / 2
        x0 = int(cx - rng.uniform(0.15, 0.85) * crop)
        y0 = int(cy - rng.uniform(0.15, 0.85) * crop)
    else:
        x0 = int(rng.uniform(min(0, W - crop), max(0, W - crop) + 1))
        y0 = int(rng.uniform(min(0, H - crop), max(0, H - crop) + 1))
    canvas = np.full((crop, crop, 3), int(rng.integers(0, 255)), np.uint8)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(W, x0 + crop), min(H, y0 + crop)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = im[sy0:sy1, sx0:sx1]
    b = b - np.array([x0, y0, x0, y0], np.float32)
    # keep boxes mostly inside the crop
    if len(b):
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        cb = np.clip(b, 0, crop)
        carea = (cb[:, 2] - cb[:, 0]).clip(0) * (cb[:, 3] - cb[:, 1]).clip(0)
        keep = carea >= 0.6 * area
        ignore = (carea > 0) & ~keep
        b = cb[keep]
        ig = cb[ignore]
    else:
        ig = b
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1].copy()
        if len(b):
            b = np.stack([crop - b[:, 2], b[:, 1], crop - b[:, 0], b[:, 3]], 1)
        if len(ig):
            ig = np.stack([crop - ig[:, 2], ig[:, 1], crop - ig[:, 0], ig[:, 3]], 1)
    if negatives and rng.random() < negatives:
        from models.train.distractors import paint

        canvas = paint(canvas, np.concatenate([b.reshape(-1, 4), ig.reshape(-1, 4)]), rng)
    if synthetic and rng.random() < synthetic:
        n_real = len(b)
        canvas, both = add_vehicle(canvas, np.concatenate([b.reshape(-1, 4), ig.reshape(-1, 4)]), rng)
        if len(both) > n_real + len(ig):
            b = np.concatenate([b.reshape(-1, 4), both[-1:]])
    canvas = photometric(canvas, rng)
    return canvas, b.astype(np.float32), ig.astype(np.float32)


def photometric(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    im = im.astype(np.float32)
    if rng.random() < 0.15:  # infrared-like greyscale
        g = im.mean(2, keepdims=True)
        im = np.repeat(g, 3, 2)
    a = rng.uniform(0.6, 1.4)
    c = rng.uniform(-40, 40)
    im = im * a + c
    if rng.random() < 0.3:
        im = im * rng.uniform(0.85, 1.15, size=(1, 1, 3))
    if rng.random() < 0.25:
        k = int(rng.choice([3, 5]))
        im = cv2.GaussianBlur(im, (k, k), 0)
    if rng.random() < 0.3:
        im = im + rng.normal(0, rng.uniform(2, 10), im.shape)
    im = np.clip(im, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        q = int(rng.integers(30, 90))
        im = cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)
    return im


def make_target(boxes: np.ndarray, ignore: np.ndarray, size=CROP):
    g = size // STRIDE
    heat = np.zeros((g, g), np.float32)
    reg = np.zeros((4, g, g), np.float32)
    mask = np.zeros((g, g), np.float32)
    weight = np.ones((g, g), np.float32)
    ys, xs = np.mgrid[0:g, 0:g].astype(np.float32)
    for x1, y1, x2, y2 in ignore:
        weight[int(y1 // STRIDE) : int(math.ceil(y2 / STRIDE)), int(x1 // STRIDE) : int(math.ceil(x2 / STRIDE))] = 0
    for x1, y1, x2, y2 in boxes:
        bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ix, iy = min(int(cx), g - 1), min(int(cy), g - 1)
        sx = max(bw / STRIDE / 6, 0.6)
        sy = max(bh / STRIDE / 6, 0.6)
        gauss = np.exp(-((xs - ix) ** 2) / (2 * sx * sx) - ((ys - iy) ** 2) / (2 * sy * sy))
        heat = np.maximum(heat, gauss)
        heat[iy, ix] = 1.0
        reg[:, iy, ix] = [math.log(bw / STRIDE), math.log(bh / STRIDE), cx - ix, cy - iy]
        mask[iy, ix] = 1
    return heat, reg, mask, weight


def batch(scenes: Scenes, items, rng: np.random.Generator, n: int, negatives: float = 0.0, synthetic: float = 0.0):
    ims, heats, regs, masks, weights = [], [], [], [], []
    for _ in range(n):
        it = items[int(rng.integers(len(items)))]
        img, s = scenes.image(it)
        im, b, ig = augment(img, it.boxes * s, rng, negatives=negatives, synthetic=synthetic)
        h, r, m, w = make_target(b, ig)
        ims.append(im)
        heats.append(h)
        regs.append(r)
        masks.append(m)
        weights.append(w)
    x = torch.from_numpy(np.stack(ims)[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255.0
    return (
        x,
        torch.from_numpy(np.stack(heats))[:, None],
        torch.from_numpy(np.stack(regs)),
        torch.from_numpy(np.stack(masks))[:, None],
        torch.from_numpy(np.stack(weights))[:, None],
    )


def loss_fn(out, heat, reg, mask, weight):
    p = out[:, :1].clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    neg = (1 - pos) * weight
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - heat) ** 4 * neg).sum()
    npos = pos.sum().clamp(min=1)
    hl = (pos_loss + neg_loss) / npos
    m = mask.expand(-1, 4, -1, -1)
    rl = (F.smooth_l1_loss(out[:, 1:5], reg, reduction="none", beta=0.1) * m).sum() / npos
    return hl + rl, hl.item(), rl.item()


def evaluate(model, scenes: Scenes, n=150):
    """Recall/precision at IoU 0.5 on held-out images at the runtime scale."""
    from edge.vision.detector import decode_heads
    from edge.vision.geometry import letterbox_params

    model.eval()
    tp = fp = fn = 0
    with torch.no_grad():
        for it in scenes.val_items[:n]:
            img, s = scenes.image(it)
            lb = letterbox_params(img.shape[1], img.shape[0], LONG_SIDE, 32)
            x = cv2.resize(img, (lb.new_w, lb.new_h), interpolation=cv2.INTER_AREA)
            canvas = np.zeros((lb.pad_h, lb.pad_w, 3), np.uint8)
            canvas[: lb.new_h, : lb.new_w] = x
            t = torch.from_numpy(canvas[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
            o = model(t)[0].numpy()
            dets = decode_heads(o, STRIDE, 0.4, lb)
            gt = it.boxes * s
            used = set()
            for d in dets:
                best, bi = 0.0, -1
                for j, gb in enumerate(gt):
                    iou = box_iou(d[:4], gb)
                    if iou > best:
                        best, bi = iou, j
                if best >= 0.5 and bi not in used:
                    tp += 1
                    used.add(bi)
                else:
                    fp += 1
            fn += len(gt) - len(used)
    model.train()
    return tp / max(tp + fn, 1), tp / max(tp + fp, 1)


def box_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


def export(model: nn.Module, path: Path, meta: dict):
    model.eval()
    x = torch.zeros(1, 3, 288, 512)
    save_onnx_with_meta(
        model,
        x,
        path,
        input_names=["image"],
        output_names=["heads"],
        dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "heads": {0: "n", 2: "gh", 3: "gw"}},
        meta=meta,
    )


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--out", type=Path, default=Path("runs/detector"))
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", type=Path, help="write ONNX from the checkpoint and exit")
    ap.add_argument("--limit", type=int, default=0, help="use only N images (smoke runs)")
    ap.add_argument("--negatives", type=float, default=0.0,
                    help="share of crops given pasted signs/lettering as hard negatives (distractors.py)")
    ap.add_argument("--synthetic", type=float, default=0.0,
                    help="share of crops given a drawn vehicle with a rendered plate (scene.py) as an extra positive")
    ap.add_argument("--init", type=Path,
                    help="with --finetune and no checkpoint in --out yet: start from this checkpoint with a fresh schedule")
    ap.add_argument("--finetune", action="store_true",
                    help="continue from the checkpoint in --out with a fresh schedule (--lr, --minutes, --steps more)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    log = Logger(a.out / "train.log")
    model = PlateDet()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    step, best, spent = 0, {}, 0.0
    ck = a.out / "ckpt.pt"
    if a.init and not ck.exists():
        if not a.finetune:
            raise SystemExit("--init needs --finetune")
        if not a.init.exists():
            raise SystemExit(f"--init: no checkpoint at {a.init}")
        st = torch.load(a.init, map_location="cpu")
        st["finetune_from"], st["spent"] = None, 0.0
        torch.save(st, ck)
    if ck.exists():
        st = torch.load(ck, map_location="cpu")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, best, spent = st["step"], st.get("metrics", {}), st.get("spent", 0.0)
        log(f"resumed from step {step}")
    start = 0
    if a.finetune:
        if not ck.exists():
            raise SystemExit(f"--finetune needs a checkpoint in {a.out}")
        start = st.get("finetune_from") or step
        if not st.get("finetune_from"):
            spent = 0.0
        a.steps = start + a.steps
        log(f"fine-tuning from step {start} for up to {a.steps - start} steps / {a.minutes} min at lr {a.lr}, negatives {a.negatives}, synthetic {a.synthetic}")
    if a.export:
        meta = {
            "kind": "plate-detector",
            "version": "1",
            "input": "RGB float32 0..1, NCHW, letterboxed top-left, padded with 0",
            "long_side": LONG_SIDE,
            "pad_multiple": 32,
            "stride": STRIDE,
            "threshold": 0.35,
            "outputs": "heads[0]=heat sigmoid, [1:3]=log(w/stride, h/stride), [3:5]=center offset in cells",
            "train_steps": step,
            "training_commit": git_commit(),
            "metrics": best,
        }
        export(model, a.export, meta)
        log(f"exported {a.export}")
        return
    scenes = Scenes(a.data, seed=a.seed)
    if a.limit:
        scenes.train_items = scenes.train_items[: a.limit]
        scenes.val_items = scenes.val_items[: max(2, a.limit // 4)]
    log(f"train images {len(scenes.train_items)} val {len(scenes.val_items)}")
    rng = np.random.default_rng(a.seed + step)
    budget = a.minutes * 60
    t_start = time.time() - spent
    t0 = time.time()
    while step < a.steps and time.time() - t_start < budget:
        # cosine schedule over whichever runs out first: steps or the time budget
        progress = min(1.0, max((step - start) / max(1, a.steps - start), (time.time() - t_start) / budget))
        warm = step - start
        lr = a.lr * 0.5 * (1 + math.cos(math.pi * progress)) if warm > 200 else a.lr * (warm + 1) / 200
        for g in opt.param_groups:
            g["lr"] = lr
        x, h, r, m, w = batch(scenes, scenes.train_items, rng, a.batch, a.negatives, a.synthetic)
        out = model(x)
        loss, hl, rl = loss_fn(out, h, r, m, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            log(f"step {step} loss {loss.item():.3f} heat {hl:.3f} reg {rl:.3f} lr {lr:.5f} {(time.time() - t0) / 25:.2f}s/step")
            t0 = time.time()
        if step % 250 == 0 or step == a.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "metrics": best, "spent": time.time() - t_start,
                        "finetune_from": start or None}, ck)
            rec, prec = evaluate(model, scenes)
            best = {"val_recall_iou50": round(rec, 4), "val_precision_iou50": round(prec, 4), "step": step}
            log(f"eval {json.dumps(best)}")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "metrics": best, "spent": time.time() - t_start,
                        "finetune_from": start or None}, ck)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "metrics": best, "spent": time.time() - t_start,
                        "finetune_from": start or None}, ck)
    log(f"stopped at step {step}")


if __name__ == "__main__":
    main()
