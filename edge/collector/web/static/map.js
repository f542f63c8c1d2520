// Drag on a search page's map to fill the box field with lat,lon,lat,lon (the map is drawn on the
// server: its Web Mercator projection is in the svg's data attributes). No other script runs.
(function () {
  const TILE = 256;
  function lonOf(x, z) { return x / (TILE * 2 ** z) * 360 - 180; }
  function latOf(y, z) { const n = Math.PI * (1 - 2 * y / (TILE * 2 ** z)); return Math.atan(Math.sinh(n)) * 180 / Math.PI; }
  function setup(svg) {
    const z = +svg.dataset.z, ox = +svg.dataset.ox, oy = +svg.dataset.oy;
    const drawn = svg.querySelector(".drawn"), field = document.getElementById("box");
    if (!drawn || !field) return;
    let start = null;
    function at(ev) {
      const r = svg.getBoundingClientRect(), vb = svg.viewBox.baseVal;
      return [(ev.clientX - r.left) * vb.width / r.width, (ev.clientY - r.top) * vb.height / r.height];
    }
    svg.addEventListener("pointerdown", (ev) => { start = at(ev); svg.setPointerCapture(ev.pointerId); });
    svg.addEventListener("pointermove", (ev) => {
      if (!start) return;
      const p = at(ev);
      drawn.setAttribute("x", Math.min(start[0], p[0])); drawn.setAttribute("y", Math.min(start[1], p[1]));
      drawn.setAttribute("width", Math.abs(p[0] - start[0])); drawn.setAttribute("height", Math.abs(p[1] - start[1]));
    });
    svg.addEventListener("pointerup", (ev) => {
      if (!start) return;
      const p = at(ev), a = start;
      start = null;
      if (Math.abs(p[0] - a[0]) < 4 || Math.abs(p[1] - a[1]) < 4) return;
      const lat1 = latOf(Math.max(a[1], p[1]) + oy, z), lat2 = latOf(Math.min(a[1], p[1]) + oy, z);
      const lon1 = lonOf(Math.min(a[0], p[0]) + ox, z), lon2 = lonOf(Math.max(a[0], p[0]) + ox, z);
      field.value = [lat1, lon1, lat2, lon2].map((v) => v.toFixed(5)).join(",");
    });
  }
  document.addEventListener("DOMContentLoaded", () => document.querySelectorAll("svg.map[data-interactive]").forEach(setup));
})();
