// Helpers shared by every page: calling the JSON API, building elements, the result grid.

/** An API answer that was not 2xx; `detail` is the API's own message. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

// Read-your-writes (README "Read replicas"): the newest X-Pgclip-Lsn a write answered with is
// kept for this tab and sent as X-Pgclip-Min-Lsn with every request, so that a read after an
// upload, edit, delete or activation sees it even where a read replica answers.
const LSN_KEY = "pgclip-lsn";
const LSN = /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/;

function lsnValue(text) {
  const [high, low] = text.split("/");
  return (BigInt(`0x${high}`) << 32n) + BigInt(`0x${low}`);
}

function storedLsn() {
  try {
    const lsn = sessionStorage.getItem(LSN_KEY);
    return lsn && LSN.test(lsn) ? lsn : null;
  } catch {
    return null; // storage refused (a privacy setting): reads just may not see the newest writes
  }
}

function rememberLsn(response) {
  const lsn = response.headers.get("X-Pgclip-Lsn");
  if (!lsn || !LSN.test(lsn)) return;
  const known = storedLsn();
  try {
    if (!known || lsnValue(lsn) > lsnValue(known)) sessionStorage.setItem(LSN_KEY, lsn);
  } catch {
    // as above
  }
}

/** fetch + JSON; throws ApiError with the API's `detail` on any non-2xx answer. */
export async function api(path, options = {}) {
  let response;
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const lsn = storedLsn();
  if (lsn) headers["X-Pgclip-Min-Lsn"] = lsn;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message})`);
  }
  rememberLsn(response);
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, String(detail));
  }
  return body;
}

/** el("a", {href: "/x", class: "y"}, "text", child): a small DOM builder. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** An ISO timestamp as a local date ("2024-05-01"), or "" for none. */
export function fmtDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

export function fmtDateTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** An error box showing the API's message (role=alert, so screen readers announce it). */
export function errorBox(err, title = "Something went wrong") {
  const detail = err instanceof ApiError ? err.detail : String(err && err.message ? err.message : err);
  return el("div", { class: "error", role: "alert" }, el("strong", { text: title }), el("span", { class: "detail", text: detail }));
}

export function emptyBox(title, hint) {
  return el("div", { class: "empty", role: "status" }, el("strong", { text: title }), hint ? el("span", { text: hint }) : null);
}

/** One search result as a link card: thumbnail, score, first caption, date. */
export function resultCard(r) {
  const score = el("div", { class: "score" },
    el("span", {}, "score ", el("b", { text: r.score.toFixed(4) })),
    r.similarity !== null && r.similarity !== undefined ? el("span", { title: "cosine similarity", text: `sim ${r.similarity.toFixed(3)}` }) : null);
  const caption = r.caption
    ? el("div", { class: "caption", text: r.caption, title: r.caption })
    : el("div", { class: "caption none", text: "no caption" });
  const label = r.caption ? `Image ${r.id}: ${r.caption}` : `Image ${r.id}`;
  return el("a", { class: "card", href: `/images/${r.id}`, dataset: { id: r.id }, "aria-label": label },
    el("div", { class: "thumb" },
      r.thumbnail_url ? el("img", { src: r.thumbnail_url, alt: "", loading: "lazy", width: 256, height: 256 }) : el("span", { class: "muted small", text: "no thumbnail" })),
    el("div", { class: "meta" }, score, caption, el("div", { class: "date", text: fmtDate(r.taken_at) || "no date" })));
}

/**
 * "tag = animal, year = 2020, name = \"a, b\"" -> {tag: "animal", year: 2020, name: "a, b"}.
 * Values that read as JSON (numbers, true/false, quoted strings) keep their JSON type;
 * anything else is a string. Throws on a pair without "=".
 */
export function parseMetadata(text) {
  const out = {};
  const source = (text || "").trim();
  if (!source) return out;
  const pair = /\s*([^=,]+?)\s*=\s*("(?:[^"\\]|\\.)*"|[^,]*?)\s*(?:,|$)/y;
  let index = 0;
  while (index < source.length) {
    pair.lastIndex = index;
    const m = pair.exec(source);
    if (!m || m[0] === "") throw new Error(`metadata: expected key = value pairs separated by commas, near "${source.slice(index, index + 20)}"`);
    const raw = m[2];
    let value = raw;
    try {
      value = raw === "" ? "" : JSON.parse(raw);
    } catch {
      value = raw;
    }
    out[m[1]] = value;
    index = pair.lastIndex;
  }
  return out;
}

/** The page's <title>: "what · pgclip". */
export function setTitle(text) {
  document.title = `${text} · pgclip`;
}

// --- writes and the API key ------------------------------------------------------------

const KEY_STORE = "pgclip-api-key";
let pageKey = ""; // where storage is disabled, the key lasts as long as this page

/** The API key this browser keeps for writes, or "" for none. */
export function storedApiKey() {
  try {
    return localStorage.getItem(KEY_STORE) || "";
  } catch {
    return pageKey;
  }
}

export function storeApiKey(key) {
  pageKey = key;
  try {
    localStorage.setItem(KEY_STORE, key);
  } catch {
    /* storage disabled: pageKey holds it */
  }
  refreshKeyControl();
}

export function forgetApiKey() {
  pageKey = "";
  try {
    localStorage.removeItem(KEY_STORE);
  } catch {
    /* nothing kept */
  }
  refreshKeyControl();
}

/**
 * A modal dialog (native <dialog>: focus stays inside, Esc cancels, focus comes back after).
 * `fields` are elements placed in its form; resolves with the form's FormData on submit, or
 * null when cancelled.
 */
export function openDialog({ id, title, message, fields = [], submitLabel, danger = false, focus = null }) {
  document.getElementById(id)?.remove();
  return new Promise((resolve) => {
    const previous = document.activeElement;
    const cancel = el("button", { type: "button", class: "cancel", text: "Cancel" });
    const submit = el("button", { type: "submit", class: danger ? "danger" : "primary", text: submitLabel });
    const form = el("form", { method: "dialog", class: "modal-form" },
      el("h2", { id: `${id}-title`, text: title }),
      message ? el("p", { id: `${id}-message`, class: "modal-message" }, message) : null,
      ...fields,
      el("div", { class: "modal-buttons" }, submit, cancel));
    const dialog = el("dialog", { id, class: "modal", "aria-labelledby": `${id}-title`,
      "aria-describedby": message ? `${id}-message` : null }, form);
    let result = null;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      result = new FormData(form);
      dialog.close();
    });
    cancel.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (previous && previous.isConnected && typeof previous.focus === "function") previous.focus();
      resolve(result);
    });
    document.body.append(dialog);
    dialog.showModal();
    const first = focus === "cancel" ? cancel : form.querySelector("input, textarea, select") || submit;
    first.focus();
  });
}

let asking = null; // one key dialog at a time, however many writes were refused

/** Ask for an API key (`reason`: why); resolves with it, stored, or "" when cancelled. */
export function askApiKey(reason) {
  if (!asking) {
    const input = el("input", { type: "password", id: "api-key-input", name: "key", required: true,
      autocomplete: "off", spellcheck: "false" });
    asking = openDialog({
      id: "api-key-dialog",
      title: "API key needed",
      message: [el("span", { class: "detail", text: reason }),
        " Enter one of the server's API keys (PGCLIP_API_KEYS). This browser keeps it until you forget it."],
      fields: [el("label", {}, "API key", input)],
      submitLabel: "Use this key",
    }).then((form) => {
      asking = null;
      const key = form ? String(form.get("key") || "").trim() : "";
      if (key) storeApiKey(key);
      return key;
    });
  }
  return asking;
}

function withKey(options) {
  const key = storedApiKey();
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  return { ...options, headers };
}

/**
 * A request that changes data (upload, edit, delete): sends the stored API key; on 401 asks
 * for a key, stores it and tries once more. A key refused on that retry is forgotten.
 */
export async function write(path, options = {}) {
  try {
    return await api(path, withKey(options));
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
    if (storedApiKey()) forgetApiKey(); // the server refused it
    const key = await askApiKey(`The server refused this change: ${err.detail}.`);
    if (!key) throw err;
    try {
      return await api(path, withKey(options));
    } catch (again) {
      if (again instanceof ApiError && again.status === 401) forgetApiKey();
      throw again;
    }
  }
}

/** The header's key button: "Set API key" (asks now) or "Forget API key". */
function refreshKeyControl() {
  const button = document.getElementById("key-button");
  if (!button) return;
  const has = Boolean(storedApiKey());
  button.textContent = has ? "Forget API key" : "Set API key";
  button.dataset.state = has ? "set" : "none";
  button.title = has ? "Remove the API key this browser sends with changes" : "Enter an API key for changes (uploads, edits, deletions)";
}

function installKeyControl() {
  const header = document.querySelector("header.top");
  if (!header || document.getElementById("key-button")) return;
  const status = el("span", { id: "key-status", class: "visually-hidden", role: "status" });
  const button = el("button", { type: "button", id: "key-button", class: "key-button small" });
  button.addEventListener("click", async () => {
    if (storedApiKey()) {
      forgetApiKey();
      status.textContent = "API key forgotten.";
      return;
    }
    const key = await askApiKey("A server with PGCLIP_API_KEYS set accepts uploads, edits and deletions only with a key.");
    status.textContent = key ? "API key kept for changes." : "";
  });
  header.append(button, status);
  refreshKeyControl();
}

installKeyControl();
window.addEventListener("storage", (event) => {
  if (event.key === KEY_STORE || event.key === null) refreshKeyControl(); // another tab set or forgot it
});
