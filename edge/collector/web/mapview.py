"""Maps drawn on the server as SVG, with no tile server: camera sites and read positions on a Web
Mercator plane fitted to what is shown, with a graticule; a movement history's points joined in
time order. A deployment may name its own tile server (`--tiles URL` with {z}, {x}, {y}): its tiles
are then drawn underneath. The page's script reads the projection from data attributes to turn a
box dragged on the map into coordinates."""

from __future__ import annotations

import math
from html import escape

from markupsafe import Markup

W, H, TILE = 720, 420, 256


def _x(lon: float, z: float) -> float:
    return (lon + 180.0) / 360.0 * TILE * 2**z


def _y(lat: float, z: float) -> float:
    lat = max(-85.0, min(85.0, lat))
    r = math.radians(lat)
    return (1.0 - math.log(math.tan(r) + 1.0 / math.cos(r)) / math.pi) / 2.0 * TILE * 2**z


def svg_map(points: list[tuple[float, float, str, str]], cameras: list[tuple[str, str | None, float, float]], path: bool = False,
            interactive: bool = False, tiles: str | None = None, box: tuple[float, float, float, float] | None = None,
            near: tuple[float, float, float] | None = None) -> Markup:
    """points: (lat, lon, time, label); cameras: (id, site, lat, lon)."""
    lats = [p[0] for p in points] + [c[2] for c in cameras]
    lons = [p[1] for p in points] + [c[3] for c in cameras]
    if box:
        lats += [box[0], box[2]]
        lons += [box[1], box[3]]
    if near:
        d = near[2] / 111.0
        lats += [near[0] - d, near[0] + d]
        lons += [near[1] - d / max(0.05, math.cos(math.radians(near[0]))), near[1] + d / max(0.05, math.cos(math.radians(near[0])))]
    if not lats:
        lats, lons = [-60.0, 75.0], [-170.0, 170.0]
    lat_lo, lat_hi, lon_lo, lon_hi = min(lats), max(lats), min(lons), max(lons)
    pad_lat, pad_lon = max(0.005, (lat_hi - lat_lo) * 0.12), max(0.005, (lon_hi - lon_lo) * 0.12)
    lat_lo, lat_hi, lon_lo, lon_hi = lat_lo - pad_lat, lat_hi + pad_lat, lon_lo - pad_lon, lon_hi + pad_lon
    z = 18.0
    while z > 0 and (_x(lon_hi, z) - _x(lon_lo, z) > W or _y(lat_lo, z) - _y(lat_hi, z) > H):
        z -= 1
    z = int(z)
    cx, cy = (_x(lon_lo, z) + _x(lon_hi, z)) / 2, (_y(lat_lo, z) + _y(lat_hi, z)) / 2
    ox, oy = cx - W / 2, cy - H / 2

    def px(lat: float, lon: float) -> tuple[float, float]:
        return round(_x(lon, z) - ox, 1), round(_y(lat, z) - oy, 1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="map" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
           f'aria-label="map of {len(cameras)} camera site(s) and {len(points)} read(s)" data-z="{z}" data-ox="{ox:.3f}" '
           f'data-oy="{oy:.3f}"{" data-interactive=" + chr(34) + "1" + chr(34) if interactive else ""}>',
           f'<rect class="sea" x="0" y="0" width="{W}" height="{H}"/>']
    if tiles:
        n = 2**z
        for tx in range(int(ox // TILE), int((ox + W) // TILE) + 1):
            for ty in range(max(0, int(oy // TILE)), min(n - 1, int((oy + H) // TILE)) + 1):
                href = escape(tiles.replace("{z}", str(z)).replace("{x}", str(tx % n)).replace("{y}", str(ty)))
                out.append(f'<image href="{href}" x="{tx * TILE - ox:.1f}" y="{ty * TILE - oy:.1f}" width="{TILE}" height="{TILE}"/>')
    # a graticule at a round step, labelled
    span = max(lon_hi - lon_lo, lat_hi - lat_lo)
    step = next(s for s in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60) if span / s <= 8)
    dec = max(0, -math.floor(math.log10(step)))
    lon = math.floor(lon_lo / step) * step
    while lon <= lon_hi:
        x, _ = px(0, lon)
        out.append(f'<line class="grid" x1="{x}" y1="0" x2="{x}" y2="{H}"/><text class="gl" x="{x + 2}" y="{H - 4}">{lon:.{dec}f}°</text>')
        lon += step
    lat = math.floor(lat_lo / step) * step
    while lat <= lat_hi:
        _, y = px(lat, 0)
        out.append(f'<line class="grid" x1="0" y1="{y}" x2="{W}" y2="{y}"/><text class="gl" x="2" y="{y - 2}">{lat:.{dec}f}°</text>')
        lat += step
    if box:
        x1, y1 = px(box[2], box[1])
        x2, y2 = px(box[0], box[3])
        out.append(f'<rect class="box" x="{x1}" y="{y1}" width="{max(1, x2 - x1)}" height="{max(1, y2 - y1)}"/>')
    if near:
        x, y = px(near[0], near[1])
        _, y2 = px(near[0] + near[2] / 111.0, near[1])
        out.append(f'<circle class="near" cx="{x}" cy="{y}" r="{max(2.0, y - y2):.1f}"/>')
    for cam, site, la, lo in cameras:
        x, y = px(la, lo)
        out.append(f'<rect class="cam" x="{x - 5}" y="{y - 5}" width="10" height="10"><title>camera {escape(cam)}'
                   f'{" at " + escape(site) if site else ""}</title></rect>')
    ordered = sorted(points, key=lambda p: p[2])
    if path and len(ordered) > 1:
        out.append('<polyline class="path" points="' + " ".join(f"{x},{y}" for x, y in (px(p[0], p[1]) for p in ordered)) + '"/>')
    for i, (la, lo, t, label) in enumerate(ordered, 1):
        x, y = px(la, lo)
        out.append(f'<circle class="pt" cx="{x}" cy="{y}" r="5"><title>{escape(t)} {escape(label)}</title></circle>')
        if path:
            out.append(f'<text class="pl" x="{x + 6}" y="{y - 6}">{i}</text>')
    if interactive:
        out.append('<rect class="drawn" x="0" y="0" width="0" height="0"/>')
    out.append("</svg>")
    return Markup("".join(out))
