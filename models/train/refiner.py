"""Train the box refiner: from a rough plate box (as a detector gives) to the labelled plate box.

Each sample is a labelled plate of the trainable box sets (models/train/boxdata.py) seen through a
box drawn around it the way detector boxes miss: edges scattered a few percent, cut into the plate
(a lost first or last character), or loose by up to 40%. The network sees that box with context
(edge.vision.refiner.context_crop: the same code the runtime runs) and predicts how far each edge
must move, in box widths and heights, to reach the label. The detector's held-out 5% of the photos
are held out here too; the log reports the mean IoU with the label before and after refining.

    python -m models.train.refiner --out runs/refiner --minutes 40
    python -m models.train.refiner --out runs/refiner --export models/plate_refiner.onnx
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.vision.refiner import apply_shifts, context_crop
from models.train.common import Logger, git_commit, save_onnx_with_meta
from models.train.detector import Scenes

IN_H, IN_W = 64, 192
CONTEXT_X, CONTEXT_Y = 0.25, 0.5
MAX_SHIFT = 0.5
REGION_X, REGION_Y = 1.2, 2.0  # cached around each plate (box widths/heights each side): room for every jitter
REGION_MAX_W = 640  # a cached region wider than this is downscaled (the input is 192 wide)


def cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Refiner(nn.Module):
    def __init__(self, w=(16, 32, 64, 96, 128)):
        super().__init__()
        self.body = nn.Sequential(
            cbr(3, w[0]), nn.MaxPool2d(2),  # 32x96
            cbr(w[0], w[1]), nn.MaxPool2d(2),  # 16x48
            cbr(w[1], w[2]), nn.MaxPool2d(2),  # 8x24
            cbr(w[2], w[3]), nn.MaxPool2d(2),  # 4x12
            cbr(w[3], w[4]),
            nn.Conv2d(w[4], 32, 1), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * (IN_H // 16) * (IN_W // 16), 128), nn.ReLU(inplace=True),
                                  nn.Linear(128, 4))

    def forward(self, x):
        return self.head(self.body(x))


# ------------------------------------------------------------------ data


class Plates:
    """Each labelled plate's surroundings, cut once from its photo, with the box in that cut."""

    def __init__(self, root: Path, min_w: float = 12.0):
        # the detector's own split (its held-out 5% of photos, seed 0): calibrate.py scores the whole
        # system on those photos, which the refiner must not have trained on either
        scenes = Scenes(root)
        self.train: list[tuple[np.ndarray, np.ndarray]] = []
        self.val: list[tuple[np.ndarray, np.ndarray]] = []
        for items, dest in ((scenes.train_items, self.train), (scenes.val_items, self.val)):
            for bi in items:
                keep = [b for b in bi.boxes if b[2] - b[0] >= min_w and b[3] - b[1] >= 4]
                img = cv2.imread(str(bi.path), cv2.IMREAD_COLOR) if keep else None
                if img is not None:
                    dest.extend(self._region(img, b) for b in keep)

    @staticmethod
    def _region(img, b):
        h, w = img.shape[:2]
        bw, bh = b[2] - b[0], b[3] - b[1]
        x1, y1 = int(max(0, b[0] - REGION_X * bw)), int(max(0, b[1] - REGION_Y * bh))
        x2, y2 = int(min(w, b[2] + REGION_X * bw)), int(min(h, b[3] + REGION_Y * bh))
        reg = img[y1:y2, x1:x2]
        box = np.array([b[0] - x1, b[1] - y1, b[2] - x1, b[3] - y1], np.float32)
        if reg.shape[1] > REGION_MAX_W:
            s = REGION_MAX_W / reg.shape[1]
            reg = cv2.resize(reg, (REGION_MAX_W, max(1, round(reg.shape[0] * s))), interpolation=cv2.INTER_AREA)
            box *= s
        return np.ascontiguousarray(reg), box


def rough_box(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """A box around the labelled one, missing it as detector boxes do."""
    bw, bh = gt[2] - gt[0], gt[3] - gt[1]
    kind = rng.random()
    if kind < 0.45:  # scattered edges
        d = rng.normal(0, 1, 4) * np.array([0.06, 0.12, 0.06, 0.12])
    elif kind < 0.75:  # loose: every edge out, some far
        d = -rng.uniform(0.0, 0.4, 4) * np.array([1, 1.5, -1, -1.5])
        d = np.array([-abs(d[0]), -abs(d[1]), abs(d[2]), abs(d[3])])
    else:  # cut into one end (a lost character), the rest scattered
        d = rng.normal(0, 1, 4) * np.array([0.04, 0.08, 0.04, 0.08])
        if rng.random() < 0.5:
            d[0] = rng.uniform(0.05, 0.2)
        else:
            d[2] = -rng.uniform(0.05, 0.2)
    d = np.clip(d, -0.45, 0.45)
    # a common shift of the whole box too
    d[[0, 2]] += rng.normal(0, 0.04)
    d[[1, 3]] += rng.normal(0, 0.08)
    return np.array([gt[0] + d[0] * bw, gt[1] + d[1] * bh, gt[2] + d[2] * bw, gt[3] + d[3] * bh], np.float32)


def target(rough: np.ndarray, gt: np.ndarray) -> np.ndarray:
    bw, bh = rough[2] - rough[0], rough[3] - rough[1]
    return ((gt - rough) / np.array([bw, bh, bw, bh], np.float32)).astype(np.float32)


def photometric(rng: np.random.Generator, im: np.ndarray) -> np.ndarray:
    im = im.astype(np.float32)
    if rng.random() < 0.2:
        im = np.repeat(im.mean(2, keepdims=True), 3, 2)  # IR / greyscale
    im = im * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40)
    if rng.random() < 0.3:
        k = int(rng.choice([3, 5]))
        im = cv2.GaussianBlur(im, (k, k), 0)
    if rng.random() < 0.3:
        im = im + rng.normal(0, rng.uniform(2, 12), im.shape)
    im = np.clip(im, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        ok, enc = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 80))])
        if ok:
            im = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    return im


def sample(rng: np.random.Generator | None, item, seed_rng: np.random.Generator | None = None):
    reg, gt = item
    r = rng if rng is not None else seed_rng
    rough = rough_box(r, gt)
    if rng is not None and rng.random() < 0.5:  # mirror: the plate's edges mirror with it
        w = reg.shape[1]
        reg = reg[:, ::-1]
        gt = np.array([w - gt[2], gt[1], w - gt[0], gt[3]], np.float32)
        rough = np.array([w - rough[2], rough[1], w - rough[0], rough[3]], np.float32)
    crop = context_crop(np.ascontiguousarray(reg), rough, CONTEXT_X, CONTEXT_Y, IN_W, IN_H)
    if rng is not None:
        crop = photometric(rng, crop)
    return crop[..., ::-1], target(rough, gt), rough, gt


def to_tensor(imgs) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(imgs))).permute(0, 3, 1, 2).float() / 255.0


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def evaluate(model, val) -> dict:
    model.eval()
    with torch.no_grad():
        shifts = np.concatenate([model(to_tensor([v[0] for v in val[i:i + 128]])).numpy() for i in range(0, len(val), 128)])
    model.train()
    rough = np.stack([v[2] for v in val])
    gt = np.stack([v[3] for v in val])
    before, after = iou(rough, gt), iou(apply_shifts(rough, shifts, MAX_SHIFT), gt)
    return {"val_iou_before": round(float(before.mean()), 4), "val_iou_after": round(float(after.mean()), 4),
            "val_iou80_before": round(float((before >= 0.8).mean()), 4), "val_iou80_after": round(float((after >= 0.8).mean()), 4)}


def export(model, path: Path, meta: dict) -> None:
    save_onnx_with_meta(model.eval(), torch.zeros(1, 3, IN_H, IN_W), path, input_names=["view"], output_names=["shifts"],
                        dynamic_axes={"view": {0: "n"}, "shifts": {0: "n"}}, meta=meta)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--out", type=Path, default=Path("runs/refiner"))
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="use at most this many photos' plates (smoke runs)")
    ap.add_argument("--export", type=Path)
    a = ap.parse_args(argv)
    for name in ("minutes", "steps", "batch", "lr"):
        if getattr(a, name) <= 0:
            raise SystemExit(f"--{name}: must be positive, got {getattr(a, name)}")
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    log = Logger(a.out / "train.log")
    ck = a.out / "ckpt.pt"
    model = Refiner()
    st = torch.load(ck, map_location="cpu") if ck.exists() else None
    step, metrics, spent = 0, {}, 0.0
    if st:
        model.load_state_dict(st["model"])
        step, metrics, spent = st["step"], st.get("metrics", {}), st.get("spent", 0.0)
        log(f"resumed from step {step}")
    if a.export:
        if not st:
            raise SystemExit(f"--export: no checkpoint in {a.out}")
        export(model, a.export, {
            "kind": "plate-refiner", "version": "1", "height": IN_H, "width": IN_W,
            "input": "RGB float32 0..1, NCHW: the box grown by context_x/context_y of its size, stretched (edge pixels repeat)",
            "output": "shift of x1, y1, x2, y2 in box widths/heights", "context_x": CONTEXT_X, "context_y": CONTEXT_Y,
            "max_shift": MAX_SHIFT, "parameters": sum(p.numel() for p in model.parameters()), "train_steps": step,
            "training_commit": git_commit(), "metrics": metrics})
        log(f"exported {a.export}")
        return
    if not a.data.exists():
        raise SystemExit(f"--data: no such folder {a.data}")
    plates = Plates(a.data)
    if a.limit:
        plates.train, plates.val = plates.train[: a.limit], plates.val[: max(8, a.limit // 10)]
    if not plates.val and len(plates.train) > 1:  # a small folder may hold no photo of the held-out 5%
        plates.val = [plates.train.pop()]
    if not plates.train or not plates.val:
        raise SystemExit(f"--data {a.data}: no labelled plates found in the trainable sets")
    vr = np.random.default_rng(12345)
    val = [sample(None, it, vr) for it in plates.val for _ in range(2)]
    log(f"plates: train {len(plates.train)}, held out {len(plates.val)} ({len(val)} validation views)")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    if st and "opt" in st:
        opt.load_state_dict(st["opt"])
    budget, t_start, t0 = a.minutes * 60, time.time() - spent, time.time()
    if not metrics:
        metrics = evaluate(model, val)
        log(f"eval {json.dumps(metrics)}")
    while step < a.steps and time.time() - t_start < budget:
        progress = min(1.0, max(step / a.steps, (time.time() - t_start) / budget))
        lr = a.lr * 0.5 * (1 + math.cos(math.pi * progress)) if step > 200 else a.lr * (step + 1) / 200
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([a.seed, step])
        batch = [sample(rng, plates.train[int(rng.integers(len(plates.train)))]) for _ in range(a.batch)]
        x = to_tensor([b[0] for b in batch])
        y = torch.from_numpy(np.stack([b[1] for b in batch]))
        loss = F.smooth_l1_loss(model(x) * 10, y * 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            log(f"step {step} loss {loss.item():.4f} lr {lr:.5f} {(time.time() - t0) / 50:.2f}s/step")
            t0 = time.time()
        if step % 500 == 0 or step == a.steps:
            metrics = {**evaluate(model, val), "step": step}
            log(f"eval {json.dumps(metrics)}")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "metrics": metrics,
                        "spent": time.time() - t_start}, ck)
    metrics = {**evaluate(model, val), "step": step}
    log(f"eval {json.dumps(metrics)}")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "metrics": metrics,
                "spent": time.time() - t_start}, ck)
    log(f"stopped at step {step}")


if __name__ == "__main__":
    main()
