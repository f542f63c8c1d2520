"""What `edge eval` writes for people to look at: a misread sheet (an HTML page with the crop, truth,
read and confidence of every miss and false positive) and a reliability table and plot (how often a
read of each confidence is right), beside the JSON lines."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

BIN = 0.05  # reliability bins of this width of confidence
CROP_MARGIN = 0.25  # a crop on the sheet shows this share of the box's size around it
CROP_HEIGHT = 64  # pixels


@dataclass
class Entry:
    image: str
    kind: str  # misread | missed | false positive
    truth: str
    read: str
    confidence: float | None
    crop: str  # file name in the sheet's folder


@dataclass
class Sheet:
    """Collects the errors and the (confidence, right) pairs of one evaluation, then writes them."""

    out: Path  # the predictions file: the sheet is <stem>-misreads.html, its crops in <stem>-misreads/
    entries: list[Entry] = field(default_factory=list)
    scored: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def page(self) -> Path:
        return self.out.with_name(self.out.stem + "-misreads.html")

    @property
    def folder(self) -> Path:
        return self.out.with_name(self.out.stem + "-misreads")

    def add(self, image_key: str, img: np.ndarray | None, kind: str, truth: str, read: str, confidence: float | None,
            box: tuple[float, float, float, float] | None = None) -> None:
        name = f"{len(self.entries):04d}.jpg"
        if img is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            crop = img if box is None else _crop(img, box)
            h, w = crop.shape[:2]
            if h and w:
                crop = cv2.resize(crop, (max(1, round(w * CROP_HEIGHT / h)), CROP_HEIGHT), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(self.folder / name), crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
        self.entries.append(Entry(image_key, kind, truth, read, confidence, name))

    def score(self, confidence: float, right: bool) -> None:
        self.scored.append((float(confidence), bool(right)))

    def bins(self) -> list[tuple[float, float, int, float]]:
        """(low, high, reads, share right) per confidence bin that holds reads."""
        out = []
        for k in range(int(round(1 / BIN))):
            lo, hi = k * BIN, (k + 1) * BIN
            got = [r for c, r in self.scored if lo <= c < hi or (hi >= 1.0 and c >= 1.0 and lo <= c)]
            if got:
                out.append((round(lo, 2), round(hi, 2), len(got), sum(got) / len(got)))
        return out

    def reliability_lines(self) -> list[str]:
        lines = ["reliability (confidence -> share of reads right):"]
        for lo, hi, n, right in self.bins():
            lines.append(f"  {lo:.2f}-{hi:.2f}  {n:5d} read(s)  {right:.3f} right")
        return lines

    def write(self, title: str) -> Path:
        rows = []
        for e in self.entries:
            conf = "-" if e.confidence is None else f"{e.confidence:.2f}"
            img = f'<img src="{html.escape(self.folder.name)}/{e.crop}" alt="">' if (self.folder / e.crop).exists() else ""
            rows.append(f"<tr><td>{img}</td><td>{html.escape(e.kind)}</td><td><code>{html.escape(e.truth or '-')}</code></td>"
                        f"<td><code>{html.escape(e.read or '-')}</code></td><td>{conf}</td><td>{html.escape(e.image)}</td></tr>")
        counts = {k: sum(e.kind == k for e in self.entries) for k in ("misread", "missed", "false positive")}
        summary = ", ".join(f"{n} {k}" for k, n in counts.items())
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}: misreads</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;
padding:4px 8px;text-align:left;vertical-align:middle}}code{{font-size:1.1em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{summary}. Reads as scored: a misread is a detected plate read wrong, missed a plate with no box over it,
a false positive a box over no labelled plate.</p>
<h2>Reliability</h2>
{self.svg()}
<h2>Every miss and false positive</h2>
<table><tr><th>crop</th><th>kind</th><th>truth</th><th>read</th><th>confidence</th><th>image</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
        self.page.parent.mkdir(parents=True, exist_ok=True)
        self.page.write_text(page)
        return self.page

    def svg(self, w: int = 360, h: int = 260, pad: int = 40) -> str:
        """Share of reads right against confidence, with the diagonal a calibrated reader would follow."""
        def x(c: float) -> float:
            return pad + c * (w - 2 * pad)

        def y(a: float) -> float:
            return h - pad - a * (h - 2 * pad)

        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="reliability plot">',
                 f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" fill="none" stroke="#888"/>',
                 f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#bbb" stroke-dasharray="4 3"/>']
        for v in (0.0, 0.5, 1.0):
            parts.append(f'<text x="{x(v)}" y="{h - pad + 16}" font-size="11" text-anchor="middle">{v:.1f}</text>')
            parts.append(f'<text x="{pad - 6}" y="{y(v) + 4}" font-size="11" text-anchor="end">{v:.1f}</text>')
        parts.append(f'<text x="{w / 2}" y="{h - 6}" font-size="12" text-anchor="middle">confidence</text>')
        parts.append(f'<text x="12" y="{h / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 12 {h / 2})">share right</text>')
        pts = []
        for lo, hi, n, right in self.bins():
            cx, cy = x((lo + hi) / 2), y(right)
            pts.append(f"{cx:.1f},{cy:.1f}")
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{min(9, 2 + n ** 0.5 / 2):.1f}" fill="#1f6feb" fill-opacity="0.7">'
                         f"<title>{lo:.2f}-{hi:.2f}: {n} read(s), {right:.3f} right</title></circle>")
        if len(pts) > 1:
            parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="#1f6feb"/>')
        parts.append("</svg>")
        return "\n".join(parts)


def _crop(img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x1, y1, x2, y2 = box
    mx, my = CROP_MARGIN * (x2 - x1), CROP_MARGIN * (y2 - y1)
    hh, ww = img.shape[:2]
    a, b = max(0, int(x1 - mx)), max(0, int(y1 - my))
    c, d = min(ww, int(x2 + mx)), min(hh, int(y2 + my))
    return img[b:d, a:c] if c > a and d > b else img[:1, :1]
