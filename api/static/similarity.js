// The heat-map: GET /api/similarity?ids=… as a colour grid with thumbnails on both axes.
// Images of one kind form bright blocks along the diagonal (the figure of "CLIP on a personal computer").
// With texts (typed, or each image's first caption) it is images × texts: rows the images, columns the texts.
import { $, api, el, emptyBox, errorBox, setTitle } from "/static/common.js";

// Viridis, sampled: dark = least similar of this set, yellow = most similar.
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const root = $("#heat-root");
const form = $("#ids-form");
let data = null;

function colour(t) {
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
  const c = RAMP[i].map((a, j) => Math.round(a + (RAMP[i + 1][j] - a) * f));
  return `rgb(${c.join(",")})`;
}

/** A greedy chain: start at the image with the most similar neighbours, then always step to the
 *  most similar image not yet placed. Enough to bring each group's rows together. */
function grouped(matrix) {
  const n = matrix.length;
  const left = new Set(matrix.keys());
  let current = [...left].reduce((best, i) => (matrix[i].reduce((a, b) => a + b) > matrix[best].reduce((a, b) => a + b) ? i : best), 0);
  const order = [current];
  left.delete(current);
  while (order.length < n) {
    let next = -1;
    for (const j of left) if (next < 0 || matrix[current][j] > matrix[current][next]) next = j;
    order.push(next);
    left.delete(next);
    current = next;
  }
  return order;
}

function thumb(id) {
  return el("a", { class: "axis", href: `/images/${id}`, title: `Image ${id}` },
    el("img", { src: `/api/images/${id}/thumbnail`, alt: `Image ${id}`, loading: "lazy" }));
}

/** Images × texts: thumbnails down the rows, the texts over the columns, the value in each cell. */
function renderTexts() {
  const { ids, matrix, model, texts } = data;
  const owners = data.caption_of; // with captions: the image of each column (an image without a caption has none)
  const label = (j) => (owners ? `#${owners[j]}: ${texts[j]}` : texts[j]);
  const values = matrix.flat();
  const lo = Math.min(...values), hi = Math.max(...values);
  const scale = (v) => (hi > lo ? (v - lo) / (hi - lo) : 1);
  const grid = el("div", { class: "heat heat-texts", id: "heat", role: "table", "aria-label": "Cosine similarity of each image and text",
    style: `grid-template-columns: 44px repeat(${texts.length}, 64px)` });
  grid.append(el("div", { class: "axis", role: "presentation" }));
  texts.forEach((t, j) => grid.append(el("div", { class: "axis text-axis", role: "columnheader", title: label(j), text: label(j) })));
  ids.forEach((id, i) => {
    grid.append(thumb(id));
    texts.forEach((t, j) => {
      const v = matrix[i][j];
      grid.append(el("div", { class: "cell", role: "cell", style: `background:${colour(scale(v))};color:${scale(v) > 0.5 ? "#000" : "#fff"}`,
        title: `#${id} × “${label(j)}”: ${v.toFixed(3)}`, text: v.toFixed(2), dataset: { value: v.toFixed(4) } }));
    });
  });
  root.replaceChildren(
    el("div", { class: "legend" },
      el("span", { text: lo.toFixed(3) }), el("span", { class: "ramp", style: `background:${rampCss()}` }), el("span", { text: hi.toFixed(3) }),
      el("span", { text: `cosine similarity of image and text · ${ids.length} images × ${texts.length} ${owners ? "captions" : "texts"} · model ${model}` }),
      owners && owners.length < ids.length
        ? el("span", { class: "muted", id: "uncaptioned", text: `no caption: #${ids.filter((id) => !owners.includes(id)).join(", #")} (a row, no column)` })
        : ""),
    el("div", { class: "panel heat-wrap" }, grid));
}

function rampCss() {
  return `linear-gradient(to right, ${RAMP.map((c, k) => `rgb(${c.join(",")}) ${(100 * k) / (RAMP.length - 1)}%`).join(", ")})`;
}

function render() {
  if (data.kind === "texts") return renderTexts();
  const { ids, matrix, model } = data;
  const n = ids.length;
  const order = form.elements.order.value === "grouped" ? grouped(matrix) : [...ids.keys()];
  const off = [];
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (i !== j) off.push(matrix[i][j]);
  const lo = off.length ? Math.min(...off) : 0, hi = off.length ? Math.max(...off) : 1;
  const scale = (v) => (hi > lo ? (v - lo) / (hi - lo) : 1);
  const grid = el("div", { class: "heat", id: "heat", role: "table", "aria-label": "Cosine similarity of each pair of images",
    style: `grid-template-columns: repeat(${n + 1}, 44px)` });
  grid.append(el("div", { class: "axis", role: "presentation" }));
  for (const i of order) grid.append(thumb(ids[i]));
  for (const i of order) {
    grid.append(thumb(ids[i]));
    for (const j of order) {
      const v = matrix[i][j];
      grid.append(el("div", { class: "cell", role: "cell", style: `background:${colour(scale(v))}`,
        title: `#${ids[i]} × #${ids[j]}: ${v.toFixed(3)}`, dataset: { value: v.toFixed(4) } }));
    }
  }
  const ramp = `linear-gradient(to right, ${RAMP.map((c, k) => `rgb(${c.join(",")}) ${(100 * k) / (RAMP.length - 1)}%`).join(", ")})`;
  root.replaceChildren(
    el("div", { class: "legend" },
      el("span", { text: lo.toFixed(3) }), el("span", { class: "ramp", style: `background:${ramp}` }), el("span", { text: hi.toFixed(3) }),
      el("span", { text: `cosine similarity between different images · ${n} images · model ${model} · hover a cell for its value` })),
    el("div", { class: "panel heat-wrap" }, grid));
}

async function load() {
  const params = new URLSearchParams(location.search);
  const raw = params.get("ids") || "";
  const texts = params.get("texts");
  const captions = params.get("captions") === "true";
  $("#ids").value = raw;
  try {
    $("#texts").value = texts ? JSON.parse(texts).join("\n") : "";
  } catch {
    $("#texts").value = "";
  }
  if (!raw.trim()) {
    setTitle("Similarity heat-map");
    root.replaceChildren(emptyBox("Choose images to compare",
      "Give up to 25 image ids above, or select points on the map, or follow the link under a search's results."));
    return;
  }
  root.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  try {
    let url = `/api/similarity?ids=${encodeURIComponent(raw)}`;
    if (captions) url += "&captions=true";
    else if (texts) url += `&texts=${encodeURIComponent(texts)}`;
    data = await api(url);
    setTitle(data.kind === "texts" ? `Similarity of ${data.ids.length} images and ${data.texts.length} texts`
      : `Similarity of ${data.ids.length} images`);
    render();
  } catch (err) {
    setTitle("Similarity heat-map");
    root.replaceChildren(errorBox(err, "Could not compare these images"));
  }
}

function go(captions) {
  const ids = $("#ids").value.replace(/\s+/g, "");
  const texts = $("#texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const query = new URLSearchParams();
  if (ids) query.set("ids", ids);
  if (captions) query.set("captions", "true");
  else if (texts.length) query.set("texts", JSON.stringify(texts));
  history.pushState(null, "", ids ? `/similarity?${query}` : "/similarity");
  load();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  go(false);
});
$("#use-captions").addEventListener("click", () => go(true));
for (const radio of form.elements.order) radio.addEventListener("change", () => data && render());
window.addEventListener("popstate", load);
load();
