// Helpers shared by every page: calling the JSON API, building elements, the result grid.

/** An API answer that was not 2xx; `detail` is the API's own message. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

/** fetch + JSON; throws ApiError with the API's `detail` on any non-2xx answer. */
export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" }, ...options });
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message})`);
  }
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
