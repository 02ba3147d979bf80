// The image page: the picture, its captions, metadata and embedding state, and "more like this".
import { $, api, el, emptyBox, errorBox, fmtBytes, fmtDateTime, resultCard, setTitle } from "/static/common.js";

const SIMILAR_K = 12;
const POLL_MS = 2000; // while the image waits in the queue
const imageId = Number(location.pathname.split("/").filter(Boolean).pop());
const root = $("#image-root");

function facts(rows) {
  return el("dl", { class: "facts" }, rows.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

function metadataValue(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function render(d) {
  const title = d.captions.length ? d.captions[0].text : d.source ? d.source.split("/").pop() : `Image ${d.id}`;
  setTitle(`${title} · Image ${d.id}`);
  const state = d.queue_state || (d.embedded ? "done" : "not queued");
  const captions = d.captions.length
    ? el("ul", { class: "captions", id: "captions" }, d.captions.map((c) => el("li", { text: c.text })))
    : el("p", { class: "muted", id: "captions", text: "No captions." });
  const metaEntries = Object.entries(d.metadata || {});
  const metadata = metaEntries.length
    ? facts(metaEntries.map(([k, v]) => [k, metadataValue(v)]))
    : el("p", { class: "muted", text: "No metadata." });
  root.replaceChildren(
    el("h1", { text: `Image ${d.id}` }),
    el("div", { class: "image-layout" },
      el("div", { class: "original" }, el("img", { src: d.original_url, alt: title, id: "original" })),
      el("div", { class: "panel" },
        el("h2", { style: "margin-top:0", text: "Captions" }), captions,
        el("h2", { text: "Embedding" }),
        facts([
          ["model", el("span", { id: "model", text: d.model })],
          ["state", el("span", { class: `badge ${state}`, id: "queue-state", text: d.embedded ? "embedded" : state })],
          ["queue job", d.queue_state],
        ]),
        d.last_error ? el("pre", { class: "last-error", id: "last-error", text: d.last_error }) : null,
        el("h2", { text: "Metadata" }), metadata,
        el("h2", { text: "File" }),
        facts([
          ["source", d.source],
          ["size", `${d.width} × ${d.height} px`],
          ["format", `${d.format} (${d.mime})`],
          ["bytes", fmtBytes(d.byte_size)],
          ["taken", fmtDateTime(d.taken_at)],
          ["added", fmtDateTime(d.created_at)],
          ["sha256", el("code", { class: "small", text: d.sha256 })],
        ]),
      ),
    ),
  );
}

async function loadSimilar() {
  const box = $("#similar");
  $("#similar-section").classList.remove("hidden");
  try {
    const page = await api(`/api/images/${imageId}/similar?k=${SIMILAR_K}`);
    box.replaceChildren(page.results.length
      ? el("div", { class: "grid", id: "similar-grid" }, page.results.map(resultCard))
      : emptyBox("No similar images", "This is the only embedded image so far."));
  } catch (err) {
    box.replaceChildren(errorBox(err, "Could not load similar images"));
  }
}

async function load() {
  let detail;
  try {
    detail = await api(`/api/images/${imageId}`);
  } catch (err) {
    setTitle(err.status === 404 ? "Image not found" : "Image");
    root.replaceChildren(el("h1", { text: `Image ${imageId}` }), errorBox(err, err.status === 404 ? "No such image" : "Could not load this image"));
    return;
  }
  render(detail);
  if (detail.embedded) {
    loadSimilar();
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
