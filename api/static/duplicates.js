// The duplicates page: GET /api/duplicates?threshold=T, one row of thumbnails per group of
// near-identical images. The threshold lives in the URL (?threshold=0.95).
import { $, api, el, emptyBox, errorBox, fmtBytes, setTitle } from "/static/common.js";

const DEFAULT_THRESHOLD = 0.95;
const GROUPS_PER_PAGE = 50; // groups drawn at once; "Show more" draws the next ones
const SLIDE_MS = 300; // the slider (or typing) asks the API once it rests this long

const form = $("#threshold-form");
const range = $("#threshold-range");
const number = $("#threshold");
const root = $("#dup-root");
const summary = $("#dup-summary");

let generation = 0; // a newer request makes older answers stale
let groups = [];
let drawn = 0;
let slideTimer = null;

/** 0.95 -> "0.95", 0.955 -> "0.955". */
function fmtThreshold(t) {
  return Math.abs(t * 100 - Math.round(t * 100)) < 1e-9 ? t.toFixed(2) : String(t);
}

function fromUrl() {
  const raw = new URLSearchParams(location.search).get("threshold");
  const value = raw === null || raw.trim() === "" ? NaN : Number(raw);
  return Number.isFinite(value) ? value : DEFAULT_THRESHOLD;
}

function setControls(t) {
  number.value = fmtThreshold(t);
  range.value = String(Math.min(Number(range.max), Math.max(Number(range.min), t)));
  range.setAttribute("aria-valuetext", `similarity at least ${fmtThreshold(t)}`);
}

/** Each image's size and format, fetched when its group scrolls into view. */
const details = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    details.unobserve(entry.target);
    for (const link of entry.target.querySelectorAll(".dup-thumb")) describe(link);
  }
}, { rootMargin: "200px" });

async function describe(link) {
  const id = link.dataset.id;
  try {
    const d = await api(`/api/images/${id}`);
    link.querySelector(".dup-facts").textContent = `${d.width}×${d.height} ${d.format} · ${fmtBytes(d.byte_size)}`;
    link.setAttribute("aria-label", `Image ${id}, ${d.width} × ${d.height} ${d.format}, ${fmtBytes(d.byte_size)}`);
  } catch {
    /* the id alone is shown */
  }
}

function similarityText(g) {
  const lo = g.min_similarity.toFixed(3);
  const hi = g.max_similarity.toFixed(3);
  return lo === hi ? `similarity ${hi}` : `similarity ${lo}–${hi}`;
}

function groupView(g, index) {
  const titleId = `group-${index + 1}-title`;
  return el("section", { class: "dup-group panel", dataset: { ids: g.ids.join(",") }, "aria-labelledby": titleId },
    el("div", { class: "dup-head" },
      el("h2", { id: titleId, text: `Group ${index + 1}: ${g.ids.length} images` }),
      el("span", { class: "dup-sim", text: similarityText(g), title: "cosine similarity of the matched pairs (lowest–highest)" }),
      el("span", { class: "spacer" }),
      el("a", { href: `/similarity?ids=${g.ids.slice(0, 25).join(",")}`, class: "small", text: "Compare in a heat-map",
        "aria-label": `Compare group ${index + 1} in a heat-map` })),
    el("ul", { class: "dup-row" }, g.ids.map((id) => el("li", {},
      el("a", { href: `/images/${id}`, class: "dup-thumb", dataset: { id }, "aria-label": `Image ${id}` },
        el("img", { src: `/api/images/${id}/thumbnail`, alt: "", loading: "lazy", width: 140, height: 140 }),
        el("span", { class: "dup-label", text: `#${id}` }),
        el("span", { class: "dup-facts" }))))));
}

function drawMore() {
  const list = $("#dup-groups");
  const next = groups.slice(drawn, drawn + GROUPS_PER_PAGE);
  next.forEach((g, i) => {
    const view = groupView(g, drawn + i);
    list.append(view);
    details.observe(view);
  });
  drawn += next.length;
  $("#dup-more").classList.toggle("hidden", drawn >= groups.length);
}

async function load(threshold) {
  const mine = ++generation;
  setControls(threshold);
  setTitle(`Near-duplicates ≥ ${fmtThreshold(threshold)}`);
  root.setAttribute("aria-busy", "true");
  summary.textContent = "Looking for near-duplicates…";
  let answer;
  try {
    answer = await api(`/api/duplicates?threshold=${encodeURIComponent(fmtThreshold(threshold))}`);
  } catch (err) {
    if (mine !== generation) return;
    summary.textContent = "";
    root.replaceChildren(errorBox(err, "Could not look for near-duplicates"));
    root.setAttribute("aria-busy", "false");
    return;
  }
  if (mine !== generation) return;
  root.setAttribute("aria-busy", "false");
  details.disconnect();
  groups = answer.groups;
  drawn = 0;
  const images = groups.reduce((n, g) => n + g.ids.length, 0);
  const at = `at similarity ≥ ${fmtThreshold(answer.threshold)} (model ${answer.model})`;
  if (!groups.length) {
    summary.textContent = `No groups ${at}.`;
    root.replaceChildren(emptyBox("No near-duplicates at this threshold",
      threshold > 0.5 ? "Lower the threshold to find looser copies." : "Every image is distinct enough at this setting."));
    return;
  }
  summary.textContent = `${groups.length} group${groups.length === 1 ? "" : "s"} of ${images} images ${at}, largest first.`;
  root.replaceChildren(
    el("div", { id: "dup-groups", class: "dup-groups" }),
    el("div", { class: "more hidden", id: "dup-more" },
      el("button", { type: "button", id: "dup-more-button", text: "Show more groups", onclick: drawMore })));
  drawMore();
}

/** Put `t` in the URL (replacing: the threshold is a setting, not a place) and show its groups. */
function apply(t) {
  const params = new URLSearchParams(location.search);
  params.set("threshold", fmtThreshold(t));
  history.replaceState(null, "", `${location.pathname}?${params}`);
  load(t);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(slideTimer);
  const t = Number(number.value);
  if (number.value.trim() === "" || !Number.isFinite(t)) {
    summary.textContent = "";
    root.replaceChildren(errorBox(new Error("type a similarity between 0.50 and 1.00"), "No threshold"));
    return;
  }
  apply(t);
});
range.addEventListener("input", () => {
  number.value = fmtThreshold(Number(range.value));
  clearTimeout(slideTimer);
  slideTimer = setTimeout(() => apply(Number(range.value)), SLIDE_MS);
});
number.addEventListener("input", () => {
  const t = Number(number.value);
  clearTimeout(slideTimer);
  if (number.value.trim() === "" || !Number.isFinite(t)) return;
  range.value = String(t);
  slideTimer = setTimeout(() => apply(t), SLIDE_MS);
});

load(fromUrl());
