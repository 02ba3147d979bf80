// The status page: GET /api/status, refreshed every few seconds while work is pending.
import { $, api, el, errorBox, fmtDateTime, setTitle } from "/static/common.js";

const BUSY_MS = 2000; // refresh interval while jobs are pending or leased
const IDLE_MS = 10000; // and when the queue is empty (new uploads still show up)
const STATES = ["pending", "leased", "done", "failed"];
let timer = null;

function eta(seconds, busy) {
  if (!busy) return "—";
  if (seconds === null || seconds === undefined) return "unknown";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function modelRow(m) {
  const total = STATES.reduce((sum, s) => sum + (m.counts[s] || 0), 0);
  const busy = (m.counts.pending || 0) + (m.counts.leased || 0) > 0;
  const done = total ? (100 * (m.counts.done || 0)) / total : 0;
  return el("tr", { dataset: { model: m.model } },
    el("td", {},
      el("strong", { text: m.model }), " ", el("span", { class: "muted small", text: m.pretrained }), " ",
      el("span", { class: `badge ${m.model_state}`, text: m.model_state }),
      el("div", { class: "bar", title: `${done.toFixed(0)} % done` }, el("div", { style: `width:${done}%` }))),
    ...STATES.map((s) => el("td", { class: "num", dataset: { state: s }, text: String(m.counts[s] || 0) })),
    el("td", { class: "num", text: String(m.done_last_minute) }),
    el("td", { class: "num", text: eta(m.eta_seconds, busy) }),
    el("td", { class: "small", text: fmtDateTime(m.oldest_pending) || "—" }));
}

function failureTable(failures) {
  if (!failures.length) return el("p", { class: "muted", id: "no-failures", text: "No failed jobs." });
  return el("table", { id: "failure-table" },
    el("thead", {}, el("tr", {}, ["image", "source", "model", "attempts", "reason", "when"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, failures.map((f) => el("tr", {},
      el("td", {}, el("a", { href: `/images/${f.image_id}`, text: `#${f.image_id}` })),
      el("td", { class: "small", text: f.source || "—" }),
      el("td", { text: f.model }),
      el("td", { class: "num", text: String(f.attempts) }),
      el("td", {}, el("pre", { class: "last-error", text: f.last_error || "(no reason recorded)" })),
      el("td", { class: "small", text: fmtDateTime(f.updated_at) })))));
}

// Read replicas (PGCLIP_READ_DATABASE_URLS): shown only where some are configured.
function replicaSection(replicas) {
  if (!replicas || !replicas.length) return [];
  const lag = (r) => (r.lag_bytes === null ? "unknown" : `${r.lag_seconds.toFixed(1)} s (${r.lag_bytes} bytes)`);
  return [
    el("h2", { text: "Read replicas" }),
    el("table", { id: "replica-table" },
      el("thead", {}, el("tr", {}, ["replica", "state", "lag", "problem"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, replicas.map((r) => el("tr", { dataset: { replica: r.id } },
        el("td", {}, el("strong", { text: r.id }), " ", el("span", { class: "muted small", text: r.name })),
        el("td", {}, el("span", { class: `badge ${r.in_use ? "active" : "failed"}`, text: r.in_use ? "in use" : "out of use" })),
        el("td", { class: "num", text: lag(r) }),
        el("td", { class: "small", text: r.error || "—" }))))),
  ];
}

function showReplicas(replicas) {
  let box = $("#replicas");
  if (!box) {
    box = el("section", { id: "replicas" });
    $("#failures").after(box);
  }
  box.replaceChildren(...replicaSection(replicas));
}

async function refresh() {
  clearTimeout(timer);
  let busy = false;
  try {
    const status = await api("/api/status");
    $("#error").replaceChildren();
    $("#models tbody").replaceChildren(...status.models.map(modelRow));
    $("#failures").replaceChildren(failureTable(status.failures));
    showReplicas(status.replicas);
    busy = status.models.some((m) => (m.counts.pending || 0) + (m.counts.leased || 0) > 0);
    const pending = status.models.reduce((sum, m) => sum + (m.counts.pending || 0) + (m.counts.leased || 0), 0);
    setTitle(busy ? `${pending} to embed · Queue status` : "Queue status");
    $("#updated").textContent = `Updated ${new Date().toLocaleTimeString()} · ${busy ? `work pending, refreshing every ${BUSY_MS / 1000} s` : "queue idle"}`;
  } catch (err) {
    $("#error").replaceChildren(errorBox(err, "Could not read the queue"));
    $("#updated").textContent = `Failed at ${new Date().toLocaleTimeString()}`;
  }
  timer = setTimeout(refresh, busy ? BUSY_MS : IDLE_MS);
}

$("#refresh").addEventListener("click", refresh);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refresh();
});
refresh();
