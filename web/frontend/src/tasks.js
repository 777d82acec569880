// The Tasks page: the persistent Celery task history (GET /api/v1/inspect/tasks) with filters,
// field:value search, sort by column and keyset pages; every task links to its run and step.
// The filters live in the URL, so a filtered list is a link.
import { api } from "./api.js";
import { $, $$, duration, esc, taskState, time, toast } from "./util.js";
import { workerUrl } from "./workers.js";

const POLL_MS = 5000;
const FIELDS = ["q", "state", "worker", "name", "run", "received_after", "received_before"];
const state = { filters: {}, sort: "-ts", limit: 50, cursor: null, pages: [], next: null, timer: null };

const toTs = (v) => (v ? new Date(v).getTime() / 1000 : undefined);

function runCell(t) {
  if (!t.run_id) return `<span class="muted">–</span>`;
  const step = t.step_id ? ` · <a class="step-link" href="/runs/${esc(t.run_id)}#step-${esc(t.step_id)}">${esc(t.step_id)}</a>` : "";
  return `<a class="run-link" href="/runs/${esc(t.run_id)}"><code>${esc(t.run_id)}</code></a>${step}`;
}

function row(t) {
  return `<tr data-task="${esc(t.uuid)}" data-state="${esc(t.state)}" data-run="${esc(t.run_id || "")}" data-step="${esc(t.step_id || "")}">
    <td class="uuid"><a href="/tasks/${esc(t.uuid)}"><code>${esc(t.uuid.slice(0, 8))}…</code></a></td>
    <td class="name">${esc(t.name || "?")}</td><td>${taskState(t.state)}</td><td>${runCell(t)}</td>
    <td>${t.worker ? `<a href="${workerUrl(t.worker)}">${esc(t.worker)}</a>` : "–"}</td><td>${esc(t.queue || "–")}</td>
    <td>${time(t.received_at)}</td><td>${time(t.started_at)}</td>
    <td>${t.runtime != null ? duration(t.runtime) : "–"}</td><td>${esc(t.retries || 0)}</td><td>${time(t.ts)}</td></tr>`;
}

function query() {
  const f = state.filters;
  return { q: f.q, state: f.state, worker: f.worker, name: f.name, run: f.run,
    received_after: toTs(f.received_after), received_before: toTs(f.received_before),
    sort: state.sort, limit: state.limit, cursor: state.cursor || undefined };
}

function syncUrl() {
  const qs = new URLSearchParams();
  for (const k of FIELDS) if (state.filters[k]) qs.set(k, state.filters[k]);
  if (state.sort !== "-ts") qs.set("sort", state.sort);
  if (state.limit !== 50) qs.set("limit", state.limit);
  const s = qs.toString();
  history.replaceState(null, "", `/tasks${s ? `?${s}` : ""}`);
}

async function load() {
  clearTimeout(state.timer);
  try {
    const page = await api("/inspect/tasks", { query: query() });
    const body = $("#tasks-body");
    body.innerHTML = page.tasks.length ? page.tasks.map(row).join("")
      : `<tr><td colspan="11" class="muted empty">No task matches. Clear the filters, or check the search terms (field:value, e.g. <code>name:canvasflow.step</code>, <code>step:load</code>, <code>state:FAILURE</code>).</td></tr>`;
    state.next = page.next_cursor;
    $("#next-page").hidden = !state.next;
    $("#first-page").hidden = !state.cursor;
    $("#page-info").textContent = `page ${state.pages.length + 1} · ${page.count} task${page.count === 1 ? "" : "s"}${state.cursor ? "" : " · newest first, refreshing"}`;
    const mon = page.monitor;
    const warn = $("#monitor-warning");
    warn.hidden = !mon || (mon.connected && !mon.dropped);
    if (mon && !mon.connected) warn.textContent = "This web process is not receiving Celery events right now (reconnecting): new tasks are missing from the list until it reconnects. Check that Redis is reachable.";
    else if (mon?.dropped) warn.textContent = `${mon.dropped} task events were dropped because the history could not keep up: some tasks may be missing or stale.`;
    for (const a of $$("th a[data-sort]")) {
      const on = state.sort.replace("-", "") === a.dataset.sort;
      a.classList.toggle("on", on);
      a.textContent = a.textContent.replace(/ [▲▼]$/, "") + (on ? (state.sort.startsWith("-") ? " ▼" : " ▲") : "");
    }
    document.body.dataset.loaded = String(Date.now());
  } catch (err) {
    toast(`Could not list the tasks: ${err.message}`, "error");
  } finally {
    // Only the first page follows new tasks; a later page stays put while it is read.
    if (!state.cursor) state.timer = setTimeout(load, document.hidden ? POLL_MS * 5 : POLL_MS);
  }
}

async function loadPending() {
  try {
    const { queues } = await api("/inspect/queues");
    const names = Object.keys(queues).sort();
    const total = names.reduce((n, q) => n + queues[q].total, 0);
    $("#pending-summary").textContent = `${total} message${total === 1 ? "" : "s"} waiting in ${names.length} queue${names.length === 1 ? "" : "s"}`;
    $("#pending-queues tbody").innerHTML = names.map((q) => `<tr data-queue="${esc(q)}"><td><code>${esc(q)}</code></td><td>${esc(queues[q].total)}</td>
      <td>${Object.entries(queues[q].by_priority || {}).map(([p, n]) => `${esc(p)}: ${esc(n)}`).join(", ") || "–"}</td></tr>`).join("");
  } catch (err) {
    $("#pending-summary").textContent = `unknown (${err.message})`;
  }
}

function fromUrl(form) {
  const qs = new URLSearchParams(location.search);
  for (const k of FIELDS) {
    const v = qs.get(k);
    if (v) { state.filters[k] = v; if (form.elements[k]) form.elements[k].value = v; }
  }
  state.sort = qs.get("sort") || "-ts";
  state.limit = Math.min(1000, Math.max(1, Number(qs.get("limit")) || 50));
}

export async function init() {
  const form = $("#task-filters");
  fromUrl(form);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.filters = Object.fromEntries([...new FormData(form).entries()].filter(([, v]) => v !== ""));
    state.cursor = null; state.pages = [];
    syncUrl();
    load();
  });
  form.addEventListener("reset", () => {
    state.filters = {}; state.cursor = null; state.pages = [];
    setTimeout(() => { syncUrl(); load(); }, 0);
  });
  for (const a of $$("th a[data-sort]")) {
    a.addEventListener("click", (ev) => {
      ev.preventDefault();
      const key = a.dataset.sort;
      state.sort = state.sort === `-${key}` ? key : `-${key}`;
      state.cursor = null; state.pages = [];
      syncUrl();
      load();
    });
  }
  $("#next-page").addEventListener("click", () => { state.pages.push(state.cursor); state.cursor = state.next; load(); });
  $("#first-page").addEventListener("click", () => { state.cursor = null; state.pages = []; load(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && !state.cursor) load(); });
  api("/inspect/workers", { query: { refresh: 0 } }).then(({ workers }) => {
    const sel = form.elements.worker;
    for (const w of workers) sel.insertAdjacentHTML("beforeend", `<option value="${esc(w.name)}">${esc(w.name)}${w.online ? "" : " (offline)"}</option>`);
    if (state.filters.worker) sel.value = state.filters.worker;
  }).catch(() => {});
  api("/inspect/task-types").then((r) => {
    $("#task-types").innerHTML = r["task-types"].map((n) => `<option value="${esc(n)}">`).join("");
  }).catch(() => {});
  loadPending();
  setInterval(loadPending, POLL_MS * 2);
  await load();
}
