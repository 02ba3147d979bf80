// The map: GET /api/map drawn on one <canvas> (10k+ points, no DOM node per point).
import { $, api, errorBox, setTitle } from "/static/common.js";

const GRID = 64; // cells per side of the hover index
const HOVER_PX = 8; // how close the cursor must be to a point
const CLICK_SLOP_PX = 4; // a press that moves more than this is a drag, not a click
const MAX_COMPARE = 25; // the heat-map takes at most this many images
const ROUND_DOTS_MAX = 5000; // beyond this many points, squares: a third of the drawing time of circles
const COLORS = { point: "rgba(47, 95, 208, 0.62)", selected: "#e8590c", hover: "#111", bg: "#ffffff", box: "rgba(232, 89, 12, 0.12)" };

const canvas = $("#map-canvas");
const ctx = canvas.getContext("2d");
const tooltip = $("#tooltip");
const tooltipImg = $("#tooltip-img");

let ids = new Float64Array(0);
let us = new Float32Array(0); // x, normalised to [0, 1]
let vs = new Float32Array(0); // y, normalised to [0, 1] and flipped (screen-down)
let cells = []; // GRID * GRID arrays of point indexes
let view = { k: 1, tx: 0, ty: 0 }; // screen = normalised * k + t (CSS pixels)
let fitted = true; // the view follows resizes until the user moves it
let hovered = -1;
let selected = new Set();
let box = null; // the Shift-drag selection rectangle, in CSS pixels
let drag = null;
let frame = 0;

// --- data -------------------------------------------------------------------------------

function load(points) {
  const n = points.length;
  ids = new Float64Array(n);
  us = new Float32Array(n);
  vs = new Float32Array(n);
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (const p of points) {
    minX = Math.min(minX, p.x); maxX = Math.max(maxX, p.x);
    minY = Math.min(minY, p.y); maxY = Math.max(maxY, p.y);
  }
  const span = Math.max(maxX - minX, maxY - minY) || 1; // one scale for both axes: distances stay true
  const offX = (span - (maxX - minX)) / 2, offY = (span - (maxY - minY)) / 2;
  cells = Array.from({ length: GRID * GRID }, () => []);
  points.forEach((p, i) => {
    ids[i] = p.id;
    us[i] = (p.x - minX + offX) / span;
    vs[i] = 1 - (p.y - minY + offY) / span;
    cells[cellOf(us[i], vs[i])].push(i);
  });
}

function cellOf(u, v) {
  const cx = Math.min(GRID - 1, Math.max(0, Math.floor(u * GRID)));
  const cy = Math.min(GRID - 1, Math.max(0, Math.floor(v * GRID)));
  return cy * GRID + cx;
}

/** The index of the point nearest to a CSS-pixel position (within HOVER_PX), or -1. */
function pick(sx, sy) {
  const u = (sx - view.tx) / view.k, v = (sy - view.ty) / view.k, r = HOVER_PX / view.k;
  const x0 = Math.max(0, Math.floor((u - r) * GRID)), x1 = Math.min(GRID - 1, Math.floor((u + r) * GRID));
  const y0 = Math.max(0, Math.floor((v - r) * GRID)), y1 = Math.min(GRID - 1, Math.floor((v + r) * GRID));
  let best = -1, bestD = r * r;
  for (let cy = y0; cy <= y1; cy++) {
    for (let cx = x0; cx <= x1; cx++) {
      for (const i of cells[cy * GRID + cx]) {
        const d = (us[i] - u) ** 2 + (vs[i] - v) ** 2;
        if (d <= bestD) { bestD = d; best = i; }
      }
    }
  }
  return best;
}

// --- drawing --------------------------------------------------------------------------------

function size() {
  const rect = canvas.getBoundingClientRect();
  return { w: rect.width, h: rect.height };
}

function fit() {
  const { w, h } = size();
  const k = Math.max(10, Math.min(w, h) - 48);
  view = { k, tx: (w - k) / 2, ty: (h - k) / 2 };
  fitted = true;
}

function resize() {
  const { w, h } = size();
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  if (fitted) fit();
  draw();
}

function draw() {
  cancelAnimationFrame(frame);
  frame = requestAnimationFrame(paint);
}

let lastPaintMs = 0;

function paint() {
  const started = performance.now();
  const { w, h } = size();
  const dpr = window.devicePixelRatio || 1;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = COLORS.bg;
  ctx.fillRect(0, 0, w, h);
  // Dots: big when there are few, small when there are thousands; a little bigger as you zoom in.
  const zoom = view.k / Math.max(10, Math.min(w, h) - 48);
  const r = Math.min(10, Math.max(1.4, 5.6 - Math.log10(Math.max(1, us.length)) * 1.1) + Math.log2(Math.max(1, zoom)) * 0.7);
  const round = us.length <= ROUND_DOTS_MAX;
  const dots = (indexes, radius) => {
    ctx.beginPath();
    for (const i of indexes) {
      const x = us[i] * view.k + view.tx, y = vs[i] * view.k + view.ty;
      if (x < -radius || y < -radius || x > w + radius || y > h + radius) continue;
      if (round) {
        ctx.moveTo(x + radius, y);
        ctx.arc(x, y, radius, 0, Math.PI * 2);
      } else {
        ctx.rect(x - radius, y - radius, radius * 2, radius * 2);
      }
    }
    ctx.fill();
  };
  ctx.fillStyle = COLORS.point;
  dots(us.keys(), r);
  if (selected.size) {
    ctx.fillStyle = COLORS.selected;
    dots(selected, r + 1);
  }
  if (hovered >= 0) {
    ctx.strokeStyle = COLORS.hover;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(us[hovered] * view.k + view.tx, vs[hovered] * view.k + view.ty, r + 4, 0, Math.PI * 2);
    ctx.stroke();
  }
  if (box) {
    ctx.fillStyle = COLORS.box;
    ctx.strokeStyle = COLORS.selected;
    ctx.lineWidth = 1;
    ctx.fillRect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0);
    ctx.strokeRect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0);
  }
  lastPaintMs = performance.now() - started;
}

// --- hover and tooltip ------------------------------------------------------------------------

function showTooltip(i, sx, sy) {
  const id = ids[i];
  const src = `/api/images/${id}/thumbnail`;
  if (tooltipImg.getAttribute("src") !== src) tooltipImg.src = src;
  $("#tooltip-label").textContent = `#${id}`;
  tooltip.dataset.id = String(id);
  tooltip.classList.remove("hidden");
  const { w, h } = size();
  const tw = tooltip.offsetWidth, th = tooltip.offsetHeight;
  const x = sx + 16 + tw > w ? sx - 16 - tw : sx + 16;
  const y = sy + 16 + th > h ? sy - 16 - th : sy + 16;
  tooltip.style.left = `${Math.max(0, x)}px`;
  tooltip.style.top = `${Math.max(0, y)}px`;
}

function hideTooltip() {
  tooltip.classList.add("hidden");
  delete tooltip.dataset.id;
}

function setHover(i, sx, sy) {
  if (i !== hovered) {
    hovered = i;
    canvas.style.cursor = i >= 0 ? "pointer" : "crosshair";
    draw();
  }
  if (i >= 0) showTooltip(i, sx, sy);
  else hideTooltip();
}

function local(event) {
  const rect = canvas.getBoundingClientRect();
  return { x: event.clientX - rect.left, y: event.clientY - rect.top };
}

// --- interaction ---------------------------------------------------------------------------------

function zoomAt(factor, sx, sy) {
  const k = Math.min(view.k * 400, Math.max(20, view.k * factor));
  const f = k / view.k;
  view = { k, tx: sx - (sx - view.tx) * f, ty: sy - (sy - view.ty) * f };
  fitted = false;
  draw();
}

function updateSelectionButtons() {
  const n = selected.size;
  $("#compare").disabled = n < 2;
  $("#clear-selection").disabled = n === 0;
  $("#compare").textContent = n ? `Compare selected (${Math.min(n, MAX_COMPARE)}${n > MAX_COMPARE ? ` of ${n}` : ""})` : "Compare selected";
}

canvas.addEventListener("pointerdown", (event) => {
  const p = local(event);
  canvas.setPointerCapture(event.pointerId);
  drag = { x: p.x, y: p.y, tx: view.tx, ty: view.ty, moved: false, select: event.shiftKey };
});

canvas.addEventListener("pointermove", (event) => {
  const p = local(event);
  if (drag) {
    if (Math.hypot(p.x - drag.x, p.y - drag.y) > CLICK_SLOP_PX) drag.moved = true;
    if (drag.moved && drag.select) {
      box = { x0: Math.min(drag.x, p.x), y0: Math.min(drag.y, p.y), x1: Math.max(drag.x, p.x), y1: Math.max(drag.y, p.y) };
      draw();
    } else if (drag.moved) {
      view = { ...view, tx: drag.tx + p.x - drag.x, ty: drag.ty + p.y - drag.y };
      fitted = false;
      hideTooltip();
      draw();
    }
    return;
  }
  setHover(pick(p.x, p.y), p.x, p.y);
});

canvas.addEventListener("pointerup", (event) => {
  const p = local(event);
  const was = drag;
  drag = null;
  if (!was) return;
  if (box) {
    const u0 = (box.x0 - view.tx) / view.k, u1 = (box.x1 - view.tx) / view.k;
    const v0 = (box.y0 - view.ty) / view.k, v1 = (box.y1 - view.ty) / view.k;
    for (let i = 0; i < us.length; i++) if (us[i] >= u0 && us[i] <= u1 && vs[i] >= v0 && vs[i] <= v1) selected.add(i);
    box = null;
    updateSelectionButtons();
    draw();
    return;
  }
  if (!was.moved) {
    const i = pick(p.x, p.y);
    if (i >= 0) location.href = `/images/${ids[i]}`;
  }
});

canvas.addEventListener("pointerleave", () => {
  if (!drag) setHover(-1);
});

canvas.addEventListener("wheel", (event) => {
  event.preventDefault();
  const p = local(event);
  zoomAt(Math.exp(-event.deltaY * 0.0015), p.x, p.y);
  setHover(pick(p.x, p.y), p.x, p.y);
}, { passive: false });

canvas.addEventListener("keydown", (event) => {
  const { w, h } = size();
  const step = 60;
  const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
  if (moves[event.key]) {
    view = { ...view, tx: view.tx + moves[event.key][0], ty: view.ty + moves[event.key][1] };
    fitted = false;
    draw();
  } else if (event.key === "+" || event.key === "=") zoomAt(1.4, w / 2, h / 2);
  else if (event.key === "-") zoomAt(1 / 1.4, w / 2, h / 2);
  else if (event.key === "0") { fit(); draw(); }
  else return;
  event.preventDefault();
});

$("#zoom-in").addEventListener("click", () => { const { w, h } = size(); zoomAt(1.4, w / 2, h / 2); });
$("#zoom-out").addEventListener("click", () => { const { w, h } = size(); zoomAt(1 / 1.4, w / 2, h / 2); });
$("#reset").addEventListener("click", () => { fit(); draw(); });
$("#clear-selection").addEventListener("click", () => { selected = new Set(); updateSelectionButtons(); draw(); });
$("#compare").addEventListener("click", () => {
  // Left to right across the map, so neighbours on the map are neighbours in the heat-map.
  const chosen = [...selected].sort((a, b) => us[a] - us[b]).slice(0, MAX_COMPARE).map((i) => ids[i]);
  location.href = `/similarity?ids=${chosen.join(",")}`;
});
tooltipImg.addEventListener("error", () => tooltipImg.removeAttribute("src"));
new ResizeObserver(resize).observe(canvas);

/** For tests and the curious: where a point is on screen (viewport coordinates). */
window.pgclipMap = {
  screenPoint(id) {
    const i = Array.prototype.indexOf.call(ids, id);
    if (i < 0) return null;
    const rect = canvas.getBoundingClientRect();
    return { x: rect.left + us[i] * view.k + view.tx, y: rect.top + vs[i] * view.k + view.ty };
  },
  ids: () => Array.from(ids),
  lastPaintMs: () => lastPaintMs,
};

async function main() {
  try {
    const [points, status] = await Promise.all([api("/api/map"), api("/api/status").catch(() => null)]);
    const active = status && status.models.find((m) => m.model_state === "active");
    load(points);
    fit();
    resize();
    canvas.dataset.points = String(points.length);
    const n = points.length;
    $("#map-summary").textContent = n
      ? `${n.toLocaleString()} image${n === 1 ? "" : "s"}${active ? ` · model ${active.model}` : ""}${n >= 20000 ? " (a sample)" : ""}`
      : "Nothing is embedded yet: add images and run a worker.";
    setTitle(n ? `Map of ${n.toLocaleString()} images` : "Map");
  } catch (err) {
    $("#map-summary").textContent = "";
    $("#map-error").replaceChildren(errorBox(err, "Could not load the map"));
  }
}

updateSelectionButtons();
main();
