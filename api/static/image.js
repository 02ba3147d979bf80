// The image page: the picture, its captions, metadata and embedding state, "more like this",
// and the edits (PATCH /api/images/{id}) and deletion (DELETE) of the image.
import {
  $, api, el, emptyBox, errorBox, fmtBytes, fmtDateTime, openDialog, resultCard, setTitle, write,
} from "/static/common.js";
import { clock, framePlayer, markFrame } from "/static/video.js";

const SIMILAR_K = 12;
const POLL_MS = 2000; // while the image waits in the queue
const rawId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const imageId = /^\d{1,18}$/.test(rawId) ? Number(rawId) : null; // null: /images/abc, /images/1.5
const root = $("#image-root");

let shown = null; // the detail on screen
let busy = false; // one change at a time
let similarLoaded = false;

// --- showing ---------------------------------------------------------------------------

function facts(rows) {
  return el("dl", { class: "facts" }, rows.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

function metadataValue(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function titleOf(d) {
  return d.captions.length ? d.captions[0].text : d.source ? d.source.split("/").pop() : `Image ${d.id}`;
}

function section(id, title, ...children) {
  return el("section", { class: "detail-section", "aria-labelledby": `${id}-title` },
    el("h2", { id: `${id}-title`, text: title }), ...children);
}

/** The page's frame, built once; `show` fills it (and again after every change). */
function frame(d) {
  root.replaceChildren(
    el("h1", { text: `Image ${d.id}` }),
    el("div", { class: "image-layout" },
      d.video
        ? el("div", {}, framePlayer(d, titleOf(d)), el("img", { src: d.original_url, alt: titleOf(d), id: "original", hidden: true }))
        : el("div", { class: "original" }, el("img", { src: d.original_url, alt: titleOf(d), id: "original",
          onerror: (event) => withoutOriginal(event.target, d) })),
      el("div", { class: "panel", id: "details" },
        el("p", { id: "action-status", class: "visually-hidden", role: "status" }),
        el("div", { id: "edit-error" }),
        section("captions", "Captions", el("div", { id: "captions-box" }),
          el("form", { id: "caption-form", class: "inline-form", onsubmit: addCaption },
            el("input", { type: "text", id: "new-caption", name: "caption", required: true, maxlength: 10000,
              autocomplete: "off", placeholder: "a new caption", "aria-label": "New caption" }),
            el("button", { type: "submit", id: "add-caption", text: "Add caption" }))),
        section("embedding", "Embedding", el("div", { id: "embedding-box" })),
        section("metadata", "Metadata", el("div", { id: "metadata-box" })),
        section("taken", "Date taken",
          el("form", { id: "taken-form", class: "inline-form", onsubmit: saveTaken },
            el("input", { type: "datetime-local", id: "taken-at", name: "taken_at", "aria-label": "Date taken" }),
            el("button", { type: "submit", id: "save-taken", text: "Set date" }),
            el("button", { type: "button", id: "clear-taken", text: "Clear date", onclick: clearTaken }))),
        section("file", "File", el("div", { id: "file-box" })),
        section("delete", "Delete",
          el("p", { class: "muted small", text: "Removes the image with its captions, metadata and vectors." }),
          el("button", { type: "button", id: "delete-image", class: "danger", text: "Delete image…", onclick: deleteImage })),
      ),
    ),
  );
}

/** An image whose bytes are not stored here (it came from `pgclip import`): its thumbnail, and why. */
export function withoutOriginal(img, d) {
  if (img.dataset.fallback || !d.thumbnail_url) return;
  img.dataset.fallback = "thumbnail";
  img.src = d.thumbnail_url;
  img.after(el("p", { class: "small muted", id: "no-original",
    text: "The original is not stored in this database (an image from `pgclip import` comes without its bytes): its thumbnail is shown." }));
}

function captionList(d) {
  if (!d.captions.length) return el("p", { class: "muted", id: "captions", text: "No captions." });
  return el("ul", { class: "captions", id: "captions" }, d.captions.map((c) =>
    el("li", { dataset: { id: c.id } },
      el("span", { class: "caption-text", text: c.text }),
      el("button", { type: "button", class: "remove-caption link-button", "aria-label": `Remove caption “${c.text}”`,
        text: "Remove", onclick: () => removeCaption(c) }))));
}

function metadataView(d) {
  const entries = Object.entries(d.metadata || {});
  return [
    entries.length ? el("div", { id: "metadata" }, facts(entries.map(([k, v]) => [k, metadataValue(v)])))
      : el("p", { class: "muted", id: "metadata", text: "No metadata." }),
    el("button", { type: "button", id: "edit-metadata", text: "Edit metadata", onclick: openMetadataEditor }),
  ];
}

/** Fill the frame with `d`. `fresh`: after a load or a change (form fields take the new values). */
function show(d, { fresh = true } = {}) {
  shown = d;
  const title = titleOf(d);
  setTitle(`${title} · Image ${d.id}`);
  $("#original").alt = title;
  $("#captions-box").replaceChildren(captionList(d));
  const state = d.queue_state || (d.embedded ? "done" : "not queued");
  $("#embedding-box").replaceChildren(
    facts([
      ["model", el("span", { id: "model", text: d.model })],
      ["state", el("span", { class: `badge ${state}`, id: "queue-state", text: d.embedded ? "embedded" : state })],
      ["queue job", d.queue_state],
    ]),
    ...(d.last_error ? [el("pre", { class: "last-error", id: "last-error", text: d.last_error })] : []));
  if (fresh || !$("#metadata-form")) $("#metadata-box").replaceChildren(...metadataView(d));
  if (fresh) $("#taken-at").value = localInput(d.taken_at);
  $("#clear-taken").disabled = !d.taken_at;
  $("#file-box").replaceChildren(facts([
    ["source", d.source],
    ["video", d.video ? el("span", { id: "frame-of", text: `frame at ${clock(d.video.timestamp)} (${d.video.timestamp} s)` }) : null],
    ["size", `${d.width} × ${d.height} px`],
    ["format", `${d.format} (${d.mime})`],
    ["bytes", fmtBytes(d.byte_size)],
    ["taken", el("span", { id: "taken", text: fmtDateTime(d.taken_at) || "unknown" })],
    ["added", fmtDateTime(d.created_at)],
    ["sha256", el("code", { class: "small", text: d.sha256 })],
  ]));
}

// --- changing -------------------------------------------------------------------------

function announce(text) {
  $("#action-status").textContent = text;
}

function showError(err, title) {
  $("#edit-error").replaceChildren(errorBox(err, title));
}

/** PATCH the image; on success the page shows the answer and says `done`. */
async function edit(changes, done) {
  if (busy) return false;
  busy = true;
  $("#details").setAttribute("aria-busy", "true");
  $("#edit-error").replaceChildren();
  try {
    const d = await write(`/api/images/${imageId}`, {
      method: "PATCH",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(changes),
    });
    show(d);
    announce(done);
    return true;
  } catch (err) {
    showError(err, "The change was not saved");
    return false;
  } finally {
    busy = false;
    $("#details").setAttribute("aria-busy", "false");
  }
}

async function addCaption(event) {
  event.preventDefault();
  const input = $("#new-caption");
  const text = input.value.trim();
  if (!text) {
    showError(new Error("Type the caption first."), "Nothing to add");
    input.focus();
    return;
  }
  if (await edit({ captions_add: [text] }, `Caption “${text}” added.`)) {
    input.value = "";
    input.focus();
  }
}

async function removeCaption(caption) {
  const buttons = [...document.querySelectorAll("#captions .remove-caption")];
  const index = buttons.findIndex((b) => b.closest("li").dataset.id === String(caption.id));
  if (await edit({ captions_remove: [caption.id] }, `Caption “${caption.text}” removed.`)) {
    // Focus the caption that took its place (or the one before it, or the field to add one).
    const left = [...document.querySelectorAll("#captions .remove-caption")];
    (left[Math.min(index, left.length - 1)] || $("#new-caption")).focus();
  }
}

/** A metadata value as the editor shows it: plain text, or JSON where plain text would read back otherwise. */
function editorText(value) {
  if (typeof value !== "string") return JSON.stringify(value);
  return parseValue(value) === value ? value : JSON.stringify(value);
}

/** What a value field means: JSON when it reads as JSON (2020, true, "quoted", [1, 2]), else the
 * text. A number JSON cannot hold (1e999 is Infinity, which it would store as null) keeps the text. */
function parseValue(raw) {
  const text = raw.trim();
  if (text === "") return "";
  try {
    return JSON.parse(text, (_, v) => {
      if (typeof v === "number" && !Number.isFinite(v)) throw new RangeError("not a finite number");
      return v;
    });
  } catch {
    return text;
  }
}

function metadataRow(key = "", value = "") {
  const keyInput = el("input", { type: "text", class: "meta-key", value: key, autocomplete: "off" });
  const valueInput = el("input", { type: "text", class: "meta-value", value, autocomplete: "off" });
  const remove = el("button", { type: "button", class: "remove-key link-button", text: "Remove" });
  keyInput.addEventListener("input", renumber);
  const row = el("div", { class: "meta-row" }, keyInput, valueInput, remove);
  remove.addEventListener("click", () => {
    const at = [...document.querySelectorAll("#meta-rows .meta-row")].indexOf(row);
    row.remove();
    renumber();
    const rows = document.querySelectorAll("#meta-rows .meta-row");
    const next = rows[Math.min(at, rows.length - 1)];
    (next ? next.querySelector(".remove-key") : $("#add-key")).focus();
  });
  return row;
}

/** Accessible names of the editor's fields: "Key 2", "Value of tag", "Remove key tag". */
function renumber() {
  document.querySelectorAll("#meta-rows .meta-row").forEach((row, i) => {
    const key = row.querySelector(".meta-key").value.trim();
    const name = key ? `“${key}”` : `${i + 1}`;
    row.querySelector(".meta-key").setAttribute("aria-label", `Key ${i + 1}`);
    row.querySelector(".meta-value").setAttribute("aria-label", key ? `Value of ${name}` : `Value ${i + 1}`);
    row.querySelector(".remove-key").setAttribute("aria-label", `Remove key ${name}`);
  });
}

function openMetadataEditor() {
  const rows = el("div", { id: "meta-rows", class: "meta-rows" },
    Object.entries(shown.metadata || {}).map(([k, v]) => metadataRow(k, editorText(v))));
  const form = el("form", { id: "metadata-form", class: "metadata-form", onsubmit: saveMetadata, novalidate: true },
    el("div", { class: "meta-head", "aria-hidden": "true" }, el("span", { text: "key" }), el("span", { text: "value" })),
    rows,
    el("p", { class: "muted small", text: "Values that read as JSON (2020, true, \"text\", [1, 2]) keep that type; anything else is text." }),
    el("div", { class: "row" },
      el("button", { type: "button", id: "add-key", text: "Add a key", onclick: () => {
        const row = metadataRow();
        $("#meta-rows").append(row);
        renumber();
        row.querySelector(".meta-key").focus();
      } }),
      el("span", { class: "spacer" }),
      el("button", { type: "submit", class: "primary", id: "save-metadata", text: "Save metadata" }),
      el("button", { type: "button", id: "cancel-metadata", text: "Cancel", onclick: closeMetadataEditor })));
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      closeMetadataEditor();
    }
  });
  $("#metadata-box").replaceChildren(form);
  if (!rows.children.length) rows.append(metadataRow());
  renumber();
  rows.querySelector(".meta-key").focus();
}

function closeMetadataEditor() {
  $("#metadata-box").replaceChildren(...metadataView(shown));
  $("#edit-metadata").focus();
}

async function saveMetadata(event) {
  event.preventDefault();
  const wanted = {};
  for (const row of document.querySelectorAll("#meta-rows .meta-row")) {
    const key = row.querySelector(".meta-key").value.trim();
    const raw = row.querySelector(".meta-value").value;
    if (!key && !raw.trim()) continue; // an empty row
    if (!key) {
      showError(new Error(`a value (${raw.trim().slice(0, 40)}) has no key`), "Check the metadata");
      row.querySelector(".meta-key").focus();
      return;
    }
    if (key in wanted) {
      showError(new Error(`the key “${key}” appears twice`), "Check the metadata");
      row.querySelector(".meta-key").focus();
      return;
    }
    wanted[key] = parseValue(raw);
  }
  const before = shown.metadata || {};
  const set = Object.fromEntries(Object.entries(wanted).filter(([k, v]) => !(k in before) || JSON.stringify(before[k]) !== JSON.stringify(v)));
  const unset = Object.keys(before).filter((k) => !(k in wanted));
  if (!Object.keys(set).length && !unset.length) {
    $("#edit-error").replaceChildren();
    closeMetadataEditor();
    announce("Metadata unchanged.");
    return;
  }
  const changes = { unset_metadata: unset };
  if (Object.keys(set).length) changes.metadata = set;
  if (await edit(changes, "Metadata saved.")) $("#edit-metadata").focus();
}

/** An ISO timestamp as a datetime-local value in this browser's time zone ("2024-05-01T13:45"). */
function localInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  const seconds = d.getSeconds() ? `:${pad(d.getSeconds())}` : "";
  const year = String(d.getFullYear()).padStart(4, "0"); // the input wants four digits: 0800, not 800
  return `${year}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}${seconds}`;
}

async function saveTaken(event) {
  event.preventDefault();
  const value = $("#taken-at").value;
  const when = value ? new Date(value) : null;
  if (!when || Number.isNaN(when.getTime())) {
    showError(new Error("choose a date and time, or use “Clear date”"), "No date to set");
    $("#taken-at").focus();
    return;
  }
  if (await edit({ taken_at: when.toISOString() }, `Date taken set to ${fmtDateTime(when.toISOString())}.`)) $("#taken-at").focus();
}

async function clearTaken() {
  if (await edit({ taken_at: null }, "Date taken cleared.")) $("#taken-at").focus();
}

/** Where to go after a deletion: the search this page was opened from, else the search page. */
function afterDeletion() {
  let target = new URL("/", location.origin);
  if (document.referrer) {
    const from = new URL(document.referrer);
    if (from.origin === location.origin && from.pathname === "/") target = from;
  }
  target.searchParams.set("deleted", String(imageId));
  return target.pathname + target.search;
}

async function deleteImage() {
  if (busy) return;
  const answer = await openDialog({
    id: "delete-dialog",
    title: `Delete image ${imageId}?`,
    message: "The picture, its thumbnail, captions, metadata and vectors are removed for good. This cannot be undone.",
    submitLabel: "Delete image",
    danger: true,
    focus: "cancel",
  });
  if (!answer) return;
  busy = true;
  $("#edit-error").replaceChildren();
  try {
    await write(`/api/images/${imageId}`, { method: "DELETE" });
  } catch (err) {
    showError(err, "The image was not deleted");
    $("#delete-image").focus();
    return;
  } finally {
    busy = false;
  }
  location.assign(afterDeletion());
}

// --- loading --------------------------------------------------------------------------

async function loadSimilar() {
  const box = $("#similar");
  $("#similar-section").classList.remove("hidden");
  try {
    const page = await api(`/api/images/${imageId}/similar?k=${SIMILAR_K}`);
    box.replaceChildren(page.results.length
      ? el("div", { class: "grid", id: "similar-grid" }, page.results.map((r) => markFrame(resultCard(r), r)))
      : emptyBox("No similar images", "This is the only embedded image so far."));
  } catch (err) {
    box.replaceChildren(errorBox(err, "Could not load similar images"));
  }
}

async function load() {
  if (imageId === null) {
    setTitle("Image not found");
    root.replaceChildren(el("h1", { text: "Image" }),
      errorBox(new Error(`“${rawId.slice(0, 60)}” is not an image id (a whole number, as in /images/12)`), "No such image"));
    return;
  }
  let detail;
  try {
    detail = await api(`/api/images/${imageId}`);
  } catch (err) {
    if (shown) return; // a poll that failed: keep what is on screen
    setTitle(err.status === 404 ? "Image not found" : "Image");
    root.replaceChildren(el("h1", { text: `Image ${imageId}` }), errorBox(err, err.status === 404 ? "No such image" : "Could not load this image"));
    return;
  }
  if (shown) {
    show(detail, { fresh: false }); // a poll: fields being typed in keep their text
  } else {
    frame(detail);
    show(detail);
  }
  if (detail.embedded) {
    if (!similarLoaded) {
      similarLoaded = true;
      loadSimilar();
    }
  } else {
    $("#similar-section").classList.remove("hidden");
    const waiting = ["pending", "leased"].includes(detail.queue_state);
    $("#similar").replaceChildren(el("div", { class: "notice", role: "status" }, waiting
      ? "This image waits for a worker to embed it; similar images appear here once it is done."
      : "This image has no vector, so there is nothing to compare it with."));
    if (waiting) setTimeout(load, POLL_MS);
  }
}

if (document.referrer && new URL(document.referrer).origin === location.origin && history.length > 1) {
  $("#back").textContent = "← Back";
  $("#back").addEventListener("click", (event) => {
    event.preventDefault();
    history.back();
  });
}
load();
