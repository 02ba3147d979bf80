// The map: GET /api/map drawn on one <canvas> (10k+ points, no DOM node per point).
// PCA or UMAP, coloured by a metadata key with a legend, thumbnails in place of dots once few
// points are on screen; the projection and the key live in the URL (?projection=umap&color=tag).
import { $, api, el, errorBox, setTitle } from "/static/common.js";

const GRID = 64; // cells per side of the hover index
const HOVER_PX = 8; // how close the cursor must be to a point
const CLICK_SLOP_PX = 4; // a press that moves more than this is a drag, not a click
const MAX_COMPARE = 25; // the heat-map takes at most this many images
const ROUND_DOTS_MAX = 5000; // beyond this many points, squares: a third of the drawing time of circles
const COLORS = { point: "rgba(47, 95, 208, 0.62)", selected: "#e8590c", hover: "#111", bg: "#ffffff", box: "rgba(232, 89, 12, 0.12)" };
// One colour per legend entry (the API names at most 12 values), then "no value" and "other values";
// no orange: that is the selection's colour.
const PALETTE = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22",
  "#393b79", "#637939", "#7b4173", "#f2b701"];
const MISSING_COLOR = "#9aa0a6"; // images without the key
const OTHER_COLOR = "#d4d7db"; // values outside the legend
const THUMBS_MAX_VISIBLE = 150; // at most this many points on screen: thumbnails instead of dots
const THUMBS_KEPT = 600; // decoded thumbnails kept (oldest forgotten first)

const canvas = $("#map-canvas");
const ctx = canvas.getContext("2d");
const tooltip = $("#tooltip");
const tooltipImg = $("#tooltip-img");

let ids = new Float64Array(0);
let groupOf = new Uint8Array(0); // each point's index into groups
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
let groups = null; // with a colour key: point indexes per legend entry ([...legend, other]); null: one colour
let groupColors = [];
let legendEntries = []; // [{value, count, color, indexes}]
let thumbsDrawn = 0;
const thumbs = new Map(); // image id -> HTMLImageElement (loading, loaded or failed)
const state = { projection: "pca", color: "" }; // mirrored in the URL
let loading = 0; // the number of the latest request: an older answer arriving late is dropped

// --- data -------------------------------------------------------------------------------

function load(points, legend, hasColor) {
  const n = points.length;
  colourBy(points, legend, hasColor);
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

/** Points grouped by the legend's values: legend entry g gets PALETTE[g] (grey for "no value"),
 *  and one more group holds the values outside the legend. */
function colourBy(points, legend, hasColor) {
  if (!hasColor) {
    groups = null;
    legendEntries = [];
    groupOf = new Uint8Array(points.length);
    return;
  }
  const index = new Map(legend.map((entry, g) => [entry.value, g]));
  groupColors = [];
  let next = 0;
  for (const entry of legend) groupColors.push(entry.value === null ? MISSING_COLOR : PALETTE[next++ % PALETTE.length]);
  groupColors.push(OTHER_COLOR);
  groups = groupColors.map(() => []);
  groupOf = new Uint8Array(points.length);
  points.forEach((p, i) => {
    const g = index.has(p.value ?? null) ? index.get(p.value ?? null) : legend.length;
    groupOf[i] = g;
    groups[g].push(i);
  });
  legendEntries = legend.map((entry, g) => ({ ...entry, color: groupColors[g], indexes: groups[g] }));
  if (groups[legend.length].length) {
    legendEntries.push({ value: undefined, count: groups[legend.length].length, color: OTHER_COLOR, indexes: groups[legend.length] });
  }
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

function thumbOf(id) {
  let img = thumbs.get(id);
  if (img) return img;
  if (thumbs.size >= THUMBS_KEPT) thumbs.delete(thumbs.keys().next().value);
  img = new Image();
  img.decoding = "async";
  img.addEventListener("load", draw);
  img.addEventListener("error", () => { img.dataset.failed = "1"; });
  img.src = `/api/images/${id}/thumbnail`;
  thumbs.set(id, img);
  return img;
}

/** Each visible point's thumbnail centred on it, framed in its colour (a dot until it loads). */
function paintThumbs(visible, zoom) {
  const side = Math.min(96, Math.max(28, 28 * Math.sqrt(zoom)));
  let drawn = 0;
  for (const i of visible) {
    const img = thumbOf(ids[i]);
    if (!img.complete || !img.naturalWidth) continue;
    const scale = side / Math.max(img.naturalWidth, img.naturalHeight);
    const tw = img.naturalWidth * scale, th = img.naturalHeight * scale;
    const x = us[i] * view.k + view.tx - tw / 2, y = vs[i] * view.k + view.ty - th / 2;
    ctx.drawImage(img, x, y, tw, th);
    ctx.lineWidth = selected.has(i) ? 3 : 2;
    ctx.strokeStyle = selected.has(i) ? COLORS.selected : groups ? groupColors[groupOf[i]] : "#fff";
    ctx.strokeRect(x, y, tw, th);
    drawn++;
  }
  return drawn;
}

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
  const visible = [];
  for (let i = 0; i < us.length && visible.length <= THUMBS_MAX_VISIBLE; i++) {
    const x = us[i] * view.k + view.tx, y = vs[i] * view.k + view.ty;
    if (x >= 0 && y >= 0 && x <= w && y <= h) visible.push(i);
  }
  const withThumbs = us.length > 0 && visible.length <= THUMBS_MAX_VISIBLE;
  if (groups) {
    groups.forEach((indexes, g) => { ctx.fillStyle = groupColors[g]; dots(indexes, r); });
  } else {
    ctx.fillStyle = COLORS.point;
    dots(us.keys(), r);
  }
  if (selected.size) {
    ctx.fillStyle = COLORS.selected;
    dots(selected, r + 1);
  }
  thumbsDrawn = withThumbs ? paintThumbs(visible, zoom) : 0;
  canvas.dataset.thumbnailsDrawn = String(thumbsDrawn);
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
  const counted = n ? ` (${Math.min(n, MAX_COMPARE)}${n > MAX_COMPARE ? ` of ${n}` : ""})` : "";
  $("#compare").disabled = n < 2;
  $("#compare-captions").disabled = n === 0;
  $("#clear-selection").disabled = n === 0;
  $("#compare").textContent = `Compare selected${counted}`;
  $("#compare-captions").textContent = `Compare with captions${counted}`;
  for (const item of document.querySelectorAll("#legend button")) {
    const entry = legendEntries[Number(item.dataset.index)];
    item.setAttribute("aria-pressed", String(entry.indexes.length > 0 && entry.indexes.every((i) => selected.has(i))));
  }
}

/** The selection, left to right across the map (neighbours on the map stay neighbours in the heat-map). */
function chosenIds() {
  return [...selected].sort((a, b) => us[a] - us[b]).slice(0, MAX_COMPARE).map((i) => ids[i]);
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
$("#compare").addEventListener("click", () => { location.href = `/similarity?ids=${chosenIds().join(",")}`; });
// Images x their first captions: the heat-map's images x texts view.
$("#compare-captions").addEventListener("click", () => {
  location.href = `/similarity?ids=${chosenIds().join(",")}&captions=true`;
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
  selectedIds: () => [...selected].map((i) => ids[i]).sort((a, b) => a - b),
  thumbnailsDrawn: () => thumbsDrawn,
  /** Zoom by `factor` around a point (its id) or the canvas's centre. */
  zoomOn(id, factor) {
    const i = Array.prototype.indexOf.call(ids, id);
    const { w, h } = size();
    if (i >= 0) view = { ...view, tx: w / 2 - us[i] * view.k, ty: h / 2 - vs[i] * view.k };
    zoomAt(factor, w / 2, h / 2);
  },
  lastPaintMs: () => lastPaintMs,
};

// --- the legend, the controls and the URL ------------------------------------------------------

function renderLegend(data) {
  const root = $("#legend");
  if (!data.color) {
    root.replaceChildren();
    root.hidden = true;
    return;
  }
  root.hidden = false;
  const label = (entry) => (entry.value === undefined ? "other values" : entry.value === null ? "(no value)" : entry.value);
  root.replaceChildren(
    el("span", { class: "legend-title", text: `${data.color}:` }),
    ...legendEntries.map((entry, g) => el("button", {
      type: "button", class: "legend-item", title: `Select the ${entry.count} image${entry.count === 1 ? "" : "s"} (Shift: add to the selection)`,
      "aria-pressed": "false", dataset: { index: String(g), value: entry.value === undefined ? "" : String(entry.value ?? ""), kind: entry.value === undefined ? "other" : entry.value === null ? "missing" : "value" },
      onclick: (event) => {
        if (!event.shiftKey) selected = new Set();
        for (const i of entry.indexes) selected.add(i);
        updateSelectionButtons();
        draw();
      },
    }, el("span", { class: "swatch", style: `background:${entry.color}` }), el("span", { class: "legend-value", text: label(entry) }),
    el("span", { class: "legend-count", text: entry.count.toLocaleString() }))));
  if (legendEntries.length === 1 && legendEntries[0].value === null) {
    root.append(el("span", { class: "muted small", text: `no image has “${data.color}” in its metadata` }));
  }
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  state.projection = params.get("projection") || "pca";
  state.color = params.get("color") || "";
  $("#projection").value = ["pca", "umap"].includes(state.projection) ? state.projection : "pca";
  $("#color").value = state.color;
}

function writeUrl() {
  const params = new URLSearchParams();
  if (state.projection !== "pca") params.set("projection", state.projection);
  if (state.color) params.set("color", state.color);
  const query = params.toString();
  history.pushState(null, "", query ? `/map?${query}` : "/map");
}

async function main() {
  const mine = ++loading;
  const keep = new Set([...selected].map((i) => ids[i])); // the selection survives a new projection or colour
  const params = new URLSearchParams({ projection: state.projection });
  if (state.color) params.set("color", state.color);
  canvas.dataset.loading = "true";
  $("#map-error").replaceChildren();
  $("#map-summary").textContent = state.projection === "umap" ? "Computing UMAP… (the first time takes a while)" : "Loading the projection…";
  try {
    const [data, status] = await Promise.all([api(`/api/map?${params}`), api("/api/status").catch(() => null)]);
    if (mine !== loading) return;
    const points = data.points;
    const active = status && status.models.find((m) => m.model_state === "active");
    const reprojected = canvas.dataset.method !== data.method || canvas.dataset.points !== String(points.length);
    load(points, data.legend || [], Boolean(data.color));
    selected = new Set();
    points.forEach((p, i) => { if (keep.has(p.id)) selected.add(i); });
    if (reprojected) fit();
    resize();
    renderLegend(data);
    $("#color-keys").replaceChildren(...data.keys.map((key) => el("option", { value: key })));
    updateSelectionButtons();
    canvas.dataset.points = String(points.length);
    canvas.dataset.method = data.method;
    canvas.dataset.color = data.color || "";
    const n = points.length;
    const method = data.method === "umap" ? "UMAP" : "PCA";
    $("#map-summary").textContent = n
      ? `${n.toLocaleString()} image${n === 1 ? "" : "s"} · ${method}${active ? ` · model ${active.model}` : ""}${data.total > n ? ` (a sample of ${data.total.toLocaleString()})` : ""}${data.note ? ` · ${data.note}` : ""}`
      : "Nothing is embedded yet: add images and run a worker.";
    setTitle(n ? `Map of ${n.toLocaleString()} images` : "Map");
  } catch (err) {
    if (mine !== loading) return;
    $("#map-summary").textContent = "";
    $("#map-error").replaceChildren(errorBox(err, "Could not load the map"));
  } finally {
    if (mine === loading) delete canvas.dataset.loading;
  }
}

$("#projection").addEventListener("change", () => {
  state.projection = $("#projection").value;
  writeUrl();
  main();
});
$("#color-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.color = $("#color").value.trim();
  writeUrl();
  main();
});
window.addEventListener("popstate", () => { readUrl(); main(); });

readUrl();
updateSelectionButtons();
main();
