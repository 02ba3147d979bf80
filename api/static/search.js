// The search page: the form <-> the URL's query string <-> POST /api/search (or /api/search/image).
import { $, api, el, emptyBox, errorBox, parseMetadata, resultCard, setTitle } from "/static/common.js";
import { markFrame } from "/static/video.js";

const PAGE_SIZE = 24;
const MAX_TEXT = 1000; // characters of a search text or caption query (the API's limit, the fields' maxlength)
const IMAGE_KEY = "pgclip.queryImage"; // the query image survives a reload of this tab (a URL cannot carry it)
const IMAGE_KEEP_MAX = 4_000_000; // characters of data URL kept in sessionStorage
const MODE_HINTS = {
  vector: "CLIP similarity between your text and each picture",
  text: "caption words only",
  hybrid: "CLIP similarity and caption words, fused",
};

const form = $("#search-form");
const results = $("#results");
const more = $("#more");
const moreButton = $("#more-button");
const notice = $("#notice");
const flash = $("#flash"); // what the previous page did ("Image 12 was deleted"), until the next search

let queryImage = null; // {name, blob}
let cursor = null;
let loading = false;
let generation = 0; // a newer search makes older answers stale
let shownIds = [];
let shownSimilarities = []; // of the results on screen that have one (a text-only search has none)
let model = "";
let current = null; // the query whose pages are on screen ("More" continues it, not the edited form)

// --- the form and the URL -------------------------------------------------------------

function readForm() {
  return {
    q: $("#q").value.trim(),
    mode: form.elements.mode.value || "hybrid",
    order: $("#order").value,
    after: $("#after").value,
    before: $("#before").value,
    orientation: $("#orientation").value,
    formats: [...document.querySelectorAll("#formats input:checked")].map((c) => c.value),
    meta: $("#meta").value.trim(),
    words: $("#words").value.trim(),
    minSimilarity: $("#min-similarity").value.trim(),
    maxDrop: $("#max-drop").value.trim(),
    image: queryImage ? queryImage.name : "",
  };
}

function writeForm(query) {
  $("#q").value = query.q;
  for (const radio of form.elements.mode) radio.checked = radio.value === query.mode;
  $("#order").value = query.order;
  $("#after").value = query.after;
  $("#before").value = query.before;
  $("#orientation").value = query.orientation;
  for (const box of document.querySelectorAll("#formats input")) box.checked = query.formats.includes(box.value);
  $("#meta").value = query.meta;
  $("#words").value = query.words;
  $("#min-similarity").value = query.minSimilarity;
  $("#max-drop").value = query.maxDrop;
  updateChrome();
}

function toParams(query) {
  const p = new URLSearchParams();
  if (query.q) p.set("q", query.q);
  if (query.mode !== "hybrid") p.set("mode", query.mode);
  if (query.order !== "relevance") p.set("order", query.order);
  if (query.after) p.set("after", query.after);
  if (query.before) p.set("before", query.before);
  if (query.orientation) p.set("orientation", query.orientation);
  if (query.formats.length) p.set("format", query.formats.join(","));
  if (query.meta) p.set("meta", query.meta);
  if (query.words) p.set("words", query.words);
  if (query.minSimilarity) p.set("min_similarity", query.minSimilarity);
  if (query.maxDrop) p.set("max_drop", query.maxDrop);
  if (query.image) p.set("image", query.image);
  return p;
}

function fromParams(p) {
  const pick = (name, allowed, fallback) => (allowed.includes(p.get(name)) ? p.get(name) : fallback);
  const dropped = []; // name=value pairs of the URL that no field can show (a hand-edited link)
  const checked = (name, valid) => {
    const value = (p.get(name) || "").trim();
    if (value && !valid(value)) {
      dropped.push(`${name}=${value.slice(0, 40)}`);
      return "";
    }
    return value;
  };
  const cut = []; // texts longer than a search takes (a link can carry what the field's maxlength stops)
  const text = (name) => {
    const value = p.get(name) || "";
    if (value.length <= MAX_TEXT) return value;
    cut.push(name);
    return value.slice(0, MAX_TEXT);
  };
  const isDate = (v) => /^\d{4}-\d{2}-\d{2}$/.test(v) && !Number.isNaN(Date.parse(`${v}T00:00:00Z`));
  const isNumber = (v) => v !== "" && Number.isFinite(Number(v));
  return {
    q: text("q"),
    mode: pick("mode", ["vector", "text", "hybrid"], "hybrid"),
    order: pick("order", ["relevance", "newest", "oldest"], "relevance"),
    after: checked("after", isDate),
    before: checked("before", isDate),
    orientation: pick("orientation", ["landscape", "portrait", "square"], ""),
    formats: (p.get("format") || "").split(",").filter(Boolean),
    meta: p.get("meta") || "",
    words: text("words"),
    minSimilarity: checked("min_similarity", isNumber),
    maxDrop: checked("max_drop", isNumber),
    image: p.get("image") || "",
    dropped,
    cut,
  };
}

function activeFilters(query) {
  return [query.after, query.before, query.orientation, query.formats.length, query.meta, query.words,
    query.minSimilarity, query.maxDrop].filter(Boolean).length;
}

function updateChrome() {
  const query = readForm();
  $("#mode-hint").textContent = MODE_HINTS[query.mode];
  const n = activeFilters(query);
  $("#filter-count").textContent = n ? `(${n} active)` : "";
  const chosen = Boolean(queryImage);
  $("#drop-empty").classList.toggle("hidden", chosen);
  $("#choose-file").classList.toggle("hidden", chosen);
  $("#drop-chosen").classList.toggle("hidden", !chosen);
  if (chosen) $("#drop-name").textContent = queryImage.name;
}

// --- the request ------------------------------------------------------------------------

function nextDay(date) {
  const d = new Date(`${date}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString().slice(0, 10);
}

/** A threshold as the API takes it: a number, or null when left empty. Its bounds are the API's
 * to check (its 400 names them), so only what is not a number at all is refused here. */
function threshold(name, value) {
  if (!value) return null;
  const number = Number(value);
  if (!Number.isFinite(number)) throw new Error(`${name} must be a number, got ${JSON.stringify(value)}`);
  return number;
}

/** The API request for a query: {text, caption_query, filters, order, k, min_similarity, max_drop}.
 * Throws on bad metadata or a threshold that is not a number. */
function buildRequest(query) {
  const filters = {};
  if (query.after) filters.taken_after = `${query.after}T00:00:00`;
  if (query.before) filters.taken_before = `${nextDay(query.before)}T00:00:00`; // "on or before": the whole day
  if (query.orientation) filters.orientation = query.orientation;
  if (query.formats.length) filters.format = query.formats;
  const metadata = parseMetadata(query.meta);
  if (Object.keys(metadata).length) filters.metadata = metadata;
  // Vector only: the text is a CLIP query. Text only: caption words. Hybrid: the text is both.
  const text = query.mode !== "text" && query.q ? query.q : null;
  const captionParts = [query.mode !== "vector" ? query.q : "", query.words].filter(Boolean);
  const request = { filters, order: query.order, k: PAGE_SIZE };
  const minSimilarity = threshold("min_similarity", query.minSimilarity);
  const maxDrop = threshold("max_drop", query.maxDrop);
  if (minSimilarity !== null) request.min_similarity = minSimilarity;
  if (maxDrop !== null) request.max_drop = maxDrop;
  if (captionParts.length) request.caption_query = captionParts.join(" ");
  return { text, request };
}

function hasQuery(query) {
  return Boolean(query.q || query.words || queryImage);
}

async function fetchPage(query, pageCursor) {
  const { text, request } = buildRequest(query);
  if (pageCursor) request.cursor = pageCursor;
  if (queryImage) {
    const body = new FormData();
    body.append("file", queryImage.blob, queryImage.name);
    if (text) body.append("text", text);
    body.append("options", JSON.stringify(request));
    return api("/api/search/image", { method: "POST", body });
  }
  if (text) request.text = text;
  return api("/api/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request) });
}

function renderSummary(count) {
  results.querySelector(".summary").replaceChildren(...[
    el("span", { id: "result-count", text: `${count} result${count === 1 ? "" : "s"}${cursor ? " so far" : ""}` }),
    el("span", { text: `model ${model}` }),
    count > 1 ? el("a", { href: `/similarity?ids=${shownIds.slice(0, 25).join(",")}`, text: `Similarity heat-map of the first ${Math.min(count, 25)}` }) : null,
  ].filter(Boolean));
}

/** The similarities of the results on screen as ticks on one axis, with where each cut falls
 * (min_similarity, and the best similarity less max_drop): what a user reads to pick a cut-off. */
function renderStrip(query) {
  const strip = results.querySelector("#sim-strip");
  if (!strip) return;
  strip.classList.toggle("hidden", !shownSimilarities.length);
  if (!shownSimilarities.length) return strip.replaceChildren();
  const best = Math.max(...shownSimilarities);
  const cuts = [];
  const minSimilarity = Number(query.minSimilarity);
  const maxDrop = Number(query.maxDrop);
  if (query.minSimilarity && Number.isFinite(minSimilarity)) {
    cuts.push({ id: "cut-min", at: minSimilarity, label: `minimum ${minSimilarity}` });
  }
  if (query.maxDrop && Number.isFinite(maxDrop)) {
    cuts.push({ id: "cut-drop", at: best - maxDrop, label: `best ${best.toFixed(3)} − ${maxDrop} = ${(best - maxDrop).toFixed(3)}` });
  }
  const values = [...shownSimilarities, ...cuts.map((c) => c.at)];
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi - lo < 1e-6) [lo, hi] = [lo - 0.01, hi + 0.01];
  const left = (value) => `${(((value - lo) / (hi - lo)) * 100).toFixed(2)}%`;
  const axis = el("div", { class: "axis" },
    ...shownSimilarities.map((s) => el("span", { class: "tick", style: `left:${left(s)}`, title: `similarity ${s.toFixed(3)}`, dataset: { similarity: s } })),
    ...cuts.map((c) => el("span", { class: "cut", id: c.id, style: `left:${left(c.at)}`, title: `cut: ${c.label}`, dataset: { at: c.at } })));
  strip.replaceChildren(
    el("span", { class: "label", text: `Similarity of these ${shownSimilarities.length}` }),
    el("span", { class: "end", text: lo.toFixed(3) }),
    axis,
    el("span", { class: "end", text: hi.toFixed(3) }),
    ...(cuts.length ? [el("span", { class: "label", text: cuts.map((c) => `cut at ${c.at.toFixed(3)} (${c.id === "cut-min" ? "minimum" : "drop"})`).join(", ") })] : []),
  );
  strip.setAttribute("aria-label", `Similarities from ${lo.toFixed(3)} to ${hi.toFixed(3)}`);
}

async function run(query, { append = false } = {}) {
  const mine = append ? generation : ++generation;
  if (!append) {
    current = query;
    cursor = null;
    shownIds = [];
    shownSimilarities = [];
    notice.replaceChildren();
  }
  if (!hasQuery(query)) {
    results.replaceChildren(emptyBox("Find pictures by what they show", "Type a description or drop a picture to search."));
    results.setAttribute("aria-busy", "false");
    more.classList.add("hidden");
    loading = false; // an answer still in flight is stale now (its generation has passed)
    return;
  }
  loading = true;
  results.setAttribute("aria-busy", "true");
  moreButton.disabled = true;
  try {
    const page = await fetchPage(query, append ? cursor : null);
    if (mine !== generation) return;
    model = page.model;
    cursor = page.next_cursor;
    let grid = results.querySelector(".grid");
    if (!append || !grid) {
      grid = el("div", { class: "grid", id: "grid" });
      results.replaceChildren(el("div", { class: "summary" }), el("div", { class: "simstrip hidden", id: "sim-strip", role: "img" }), grid);
    }
    for (const r of page.results) {
      shownIds.push(r.id);
      if (typeof r.similarity === "number") shownSimilarities.push(r.similarity);
      grid.append(markFrame(resultCard(r), r)); // a frame of a video shows its time in it
    }
    if (!shownIds.length) {
      results.replaceChildren(emptyBox("No results", "Try other words, fewer filters, or another mode."));
    } else {
      renderSummary(shownIds.length);
      renderStrip(query);
    }
    more.classList.toggle("hidden", !cursor);
  } catch (err) {
    if (mine !== generation) return;
    const box = errorBox(err, "The search failed");
    if (append) notice.replaceChildren(box);
    else results.replaceChildren(box);
    more.classList.add("hidden");
  } finally {
    if (mine === generation) {
      loading = false;
      results.setAttribute("aria-busy", "false");
      moreButton.disabled = false;
    }
  }
}

function titleFor(query) {
  if (query.q) return `“${query.q}” · Search`;
  if (queryImage) return `${queryImage.name} · Search`;
  if (query.words) return `“${query.words}” · Search`;
  return "Search";
}

/** Put the form's query in the URL (a new history entry) and run it. */
function submit() {
  flash.replaceChildren();
  const query = readForm();
  try {
    buildRequest(query); // a malformed metadata filter is reported before anything else
  } catch (err) {
    results.replaceChildren(errorBox(err, "Check the filters"));
    more.classList.add("hidden");
    return;
  }
  const params = toParams(query).toString();
  const url = `${location.pathname}${params ? `?${params}` : ""}`;
  if (url !== `${location.pathname}${location.search}`) history.pushState(null, "", url);
  setTitle(titleFor(query));
  run(query);
}

// --- the query image --------------------------------------------------------------------

function dataUrlToBlob(dataUrl) {
  const [head, data] = dataUrl.split(",", 2);
  const type = (head.match(/^data:([^;]+)/) || [])[1] || "application/octet-stream";
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function setImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    stopPaging(); // the results it replaces must not page on under the error
    results.replaceChildren(errorBox(new Error(`${file.name} is not an image`), "Cannot search by this file"));
    return;
  }
  queryImage = { name: file.name || "image", blob: file };
  const reader = new FileReader();
  reader.onload = () => {
    $("#drop-preview").src = reader.result;
    try {
      if (reader.result.length <= IMAGE_KEEP_MAX) sessionStorage.setItem(IMAGE_KEY, JSON.stringify({ name: queryImage.name, data: reader.result }));
      else sessionStorage.removeItem(IMAGE_KEY);
    } catch {
      sessionStorage.removeItem(IMAGE_KEY);
    }
  };
  reader.readAsDataURL(file);
  updateChrome();
  submit();
}

/** Forget the search on screen: its answers in flight are stale, and "More" has nothing to continue. */
function stopPaging() {
  ++generation;
  current = null;
  cursor = null;
  loading = false;
  more.classList.add("hidden");
}

function clearImage() {
  queryImage = null;
  $("#file").value = "";
  $("#drop-preview").removeAttribute("src");
  sessionStorage.removeItem(IMAGE_KEY);
  updateChrome();
  submit();
}

/** An image named in the URL comes back from this tab's sessionStorage, if it is there; else
 * the notice that says why the search runs without it (null when there is nothing to say). */
function restoreImage(name) {
  queryImage = null;
  if (!name) return null;
  try {
    const kept = JSON.parse(sessionStorage.getItem(IMAGE_KEY) || "null");
    if (kept && kept.name === name) {
      queryImage = { name, blob: dataUrlToBlob(kept.data) };
      $("#drop-preview").src = kept.data;
      return null;
    }
  } catch {
    /* fall through to the notice */
  }
  return `This link searched by a picture (${name}) that links cannot carry: drop it again to repeat that search.`;
}

function loadFromUrl() {
  const query = fromParams(new URLSearchParams(location.search));
  const said = [restoreImage(query.image), query.dropped.length
    ? `This link had values the page cannot read, left out: ${query.dropped.join(", ")}.` : null,
  query.cut.length ? `This link's search text was longer than ${MAX_TEXT} characters, the most a search takes: `
    + `searched by its first ${MAX_TEXT}.` : null].filter(Boolean);
  writeForm(query);
  if (activeFilters(query)) $("#filters").open = true;
  setTitle(titleFor(query));
  run(query); // without a query: the empty page, and any answer still in flight is stale
  if (said.length) notice.replaceChildren(...said.map((text) => el("div", { class: "notice", role: "status", text })));
}

// --- wiring -------------------------------------------------------------------------------

form.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});
// Toggles and pickers apply at once when there is something to search for; text fields wait for Enter.
for (const control of form.querySelectorAll('input[type="radio"], input[type="checkbox"], input[type="date"], select')) {
  control.addEventListener("change", () => {
    updateChrome();
    if (hasQuery(readForm())) submit();
  });
}
form.addEventListener("input", updateChrome);
$("#clear-filters").addEventListener("click", () => {
  writeForm({ ...readForm(), after: "", before: "", orientation: "", formats: [], meta: "", words: "", minSimilarity: "", maxDrop: "" });
  if (hasQuery(readForm())) submit();
});
$("#choose-file").addEventListener("click", () => $("#file").click());
$("#file").addEventListener("change", () => setImage($("#file").files[0]));
$("#clear-file").addEventListener("click", clearImage);

const zone = $("#dropzone");
for (const name of ["dragenter", "dragover"]) {
  zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
}
for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("over"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  event.stopPropagation();
  setImage(event.dataTransfer.files[0]);
});
// A picture dropped anywhere else on the page would open it in place of the page: route it here.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer && event.dataTransfer.files[0]) setImage(event.dataTransfer.files[0]);
});

function loadMore() {
  if (!loading && cursor && current) run(current, { append: true });
}
moreButton.addEventListener("click", loadMore);
// Infinite scroll: the "More" button loads by itself when it scrolls into view.
new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadMore();
}, { rootMargin: "400px" }).observe(more);

/** The image page sends here with ?deleted=ID after a deletion: say so once, and drop it from the URL. */
function showDeletion() {
  const params = new URLSearchParams(location.search);
  const id = params.get("deleted");
  if (id === null) return;
  params.delete("deleted");
  const rest = params.toString();
  history.replaceState(history.state, "", `${location.pathname}${rest ? `?${rest}` : ""}`);
  if (/^\d+$/.test(id)) {
    flash.replaceChildren(el("div", { class: "notice success", role: "status", id: "deleted-notice" },
      `Image ${id} was deleted.`));
  }
}

window.addEventListener("popstate", loadFromUrl);
showDeletion();
loadFromUrl();
