// The upload page: POST /api/images per file (with the API key when one is kept), then follow each image until a worker has embedded it.
import { $, api, ApiError, el, errorBox, parseMetadata, write } from "/static/common.js";

const POLL_MS = 2000; // while any upload still waits for a worker
let files = [];
const watching = new Map(); // image id -> its rows (the same file twice in one batch: two rows, one image)
let timer = null;

function setFiles(list) {
  const media = (f) => !f.type || f.type.startsWith("image/") || f.type.startsWith("video/");
  files = [...list].filter(media);
  const left = [...list].filter((f) => !media(f)).map((f) => f.name);
  $("#drop-text").textContent = files.length
    ? `${files.length} file${files.length === 1 ? "" : "s"} chosen: ${files.map((f) => f.name).join(", ")}`
    : "Drop pictures or videos here, or";
  $("#upload-error").replaceChildren(...(left.length
    ? [el("p", { class: "notice", id: "files-left-out", role: "status",
      text: `Left out, not pictures or videos: ${left.join(", ")}` })]
    : []));
  $("#choose-files").textContent = files.length ? "Choose other files…" : "Choose files…";
  $("#upload-button").disabled = files.length === 0;
}

function badge(state, embedded) {
  const label = embedded ? "embedded" : state || "not queued";
  return el("span", { class: `badge ${embedded ? "done" : state || ""}`, text: label });
}

// A video's answer names its frames: the row links and follows its first one.
function row(file, answer) {
  const id = answer.video ? answer.frame_ids[0] : answer.id;
  const what = answer.video
    ? `video ${answer.video.id}, ${answer.frame_ids.length} frame${answer.frame_ids.length === 1 ? "" : "s"}`
    : `image ${id}`;
  const li = el("li", id === undefined ? {} : { dataset: { id } },
    el("span", { class: "thumb" }),
    el("div", { class: "what" },
      el("div", { class: "name", text: file.name }),
      el("div", { class: "small muted" },
        id === undefined ? what : el("a", { href: `/images/${id}`, text: what }),
        answer.created ? " · added" : " · already in the collection")),
    el("span", { class: "state" }, badge(answer.queue_state, answer.queue_state === "done")));
  return li;
}

async function upload(event) {
  event.preventDefault();
  $("#upload-error").replaceChildren();
  let metadata;
  try {
    metadata = parseMetadata($("#metadata").value);
  } catch (err) {
    $("#upload-error").replaceChildren(errorBox(err, "Check the metadata"));
    return;
  }
  const captions = $("#captions").value.split("\n").map((c) => c.trim()).filter(Boolean);
  $("#upload-button").disabled = true;
  $("#uploads-title").classList.remove("hidden");
  let left = [];
  for (const [index, file] of files.entries()) {
    const body = new FormData();
    body.append("file", file, file.name);
    body.append("captions", JSON.stringify(captions));
    body.append("metadata", JSON.stringify(metadata));
    try {
      const answer = await write("/api/images", { method: "POST", body });
      const li = row(file, answer);
      $("#uploads").prepend(li);
      if (li.dataset.id) {
        const id = Number(li.dataset.id);
        watching.set(id, [...(watching.get(id) || []), li]);
      }
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        // No (valid) key: every other file would be refused too. Keep them chosen for another try.
        $("#upload-error").replaceChildren(errorBox(err, "Not uploaded: this server needs an API key"));
        left = files.slice(index);
        break;
      }
      $("#uploads").prepend(el("li", {}, el("div", { class: "what" }, el("div", { class: "name", text: file.name }), errorBox(err, "Not added"))));
    }
  }
  setFiles(left);
  if (!left.length) $("#files").value = "";
  poll();
}

async function poll() {
  clearTimeout(timer);
  for (const [id, rows] of watching) {
    try {
      const d = await api(`/api/images/${id}`);
      for (const li of rows) {
        li.querySelector(".state").replaceChildren(badge(d.queue_state, d.embedded));
        if (d.embedded || d.queue_state === "failed") {
          if (d.thumbnail_url) li.querySelector(".thumb").replaceWith(el("img", { class: "thumb", src: d.thumbnail_url, alt: "" }));
          if (d.last_error) li.querySelector(".what").append(el("pre", { class: "last-error", text: d.last_error }));
        }
      }
      if (d.embedded || d.queue_state === "failed") watching.delete(id);
    } catch {
      watching.delete(id);
    }
  }
  await queueLine();
  if (watching.size) timer = setTimeout(poll, POLL_MS);
}

async function queueLine() {
  try {
    const status = await api("/api/status");
    const active = status.models.find((m) => m.model_state === "active") || status.models[0];
    if (!active) return;
    const c = active.counts;
    $("#queue-line").textContent = `Queue for ${active.model}: ${c.pending} pending, ${c.leased} being embedded, ${c.done} done, ${c.failed} failed.`;
  } catch (err) {
    $("#queue-line").textContent = `The queue could not be read: ${err.message}`;
  }
}

$("#upload-form").addEventListener("submit", upload);
$("#choose-files").addEventListener("click", () => $("#files").click());
$("#files").addEventListener("change", () => setFiles($("#files").files));
const zone = $("#dropzone");
for (const name of ["dragenter", "dragover"]) zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.add("over"); });
for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("over"));
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer) setFiles(e.dataTransfer.files);
});
queueLine();
