// The Workers page: the fleet and its queues from /api/v1/inspect, polled every few seconds (the
// web process pushes no fleet events over Socket.IO), with "forget" for offline workers.
import { api, ApiError } from "./api.js";
import { $, confirmDialog, esc, refusal, time, toast } from "./util.js";

const POLL_MS = 3000;
const state = { workers: [], queues: {}, timer: null };

const num = (v) => (v === null || v === undefined ? "–" : esc(v));
const chips = (xs) => `<span class="chips">${(xs || []).map((x) => `<span class="chip">${esc(x)}</span>`).join("")}</span>`;

export const workerUrl = (name) => `/workers/${encodeURIComponent(name)}`;

export function poolText(pool) {
  if (!pool || !pool.implementation) return "–";
  const impl = String(pool.implementation).replace(/^celery\.concurrency\.|:TaskPool$/g, "");
  const auto = pool.autoscaler ? ` (autoscale ${pool.autoscaler.min ?? "?"}–${pool.autoscaler.max ?? "?"})` : "";
  return `${esc(impl)} · <span class="concurrency">${num(pool.concurrency)}</span>${esc(auto)}`;
}

function row(w) {
  const forget = w.online ? "" : `<button class="forget" data-worker="${esc(w.name)}" ${refusal("forget workers") ? `disabled title="${esc(refusal("forget workers"))}"` : ""}>Forget</button>`;
  return `<tr data-worker="${esc(w.name)}" data-status="${esc(w.status)}" class="${w.online ? "" : "offline"}">
    <td><a href="${workerUrl(w.name)}"><code>${esc(w.name)}</code></a></td>
    <td><span class="status w-${esc(w.status)}">${w.online ? "● online" : "○ offline"}</span></td>
    <td class="active">${num(w.active)}</td><td class="processed">${num(w.processed)}</td>
    <td class="succeeded">${num(w.succeeded)}</td><td class="failed">${num(w.failed)}</td>
    <td>${(w.loadavg || []).map((x) => Number(x).toFixed(2)).join(" ") || "–"}</td>
    <td class="pool">${poolText(w.pool)}</td><td>${num(w.prefetch_count)}</td>
    <td class="queues">${chips(w.queues)}</td><td class="plugins">${chips(w.plugins)}</td>
    <td>${time(w.last_heartbeat)}</td><td>${forget}</td></tr>`;
}

function render() {
  const ws = state.workers;
  $("#workers-body").innerHTML = ws.length ? ws.map(row).join("")
    : `<tr><td colspan="13" class="muted empty">No worker has been seen yet. Start one: <code>celery -A workers.app worker -Q default</code> (with the same CANVASFLOW_* settings).</td></tr>`;
  const online = ws.filter((w) => w.online).length;
  $("#fleet-stats").textContent = `${online} online • ${ws.length - online} offline • ${ws.reduce((n, w) => n + (w.active || 0), 0)} tasks active`;
  const consumers = {};
  for (const w of ws) if (w.online) for (const q of w.queues || []) (consumers[q] ||= []).push(w.name);
  const names = Object.keys(state.queues).sort();
  $("#queues-body").innerHTML = names.map((q) => {
    const v = state.queues[q];
    const by = Object.entries(v.by_priority || {}).map(([p, n]) => `${esc(p)}: ${esc(n)}`).join(", ") || "–";
    const who = consumers[q] || [];
    return `<tr data-queue="${esc(q)}"><td><code>${esc(q)}</code></td><td class="total">${esc(v.total)}</td><td>${by}</td>
      <td>${who.length ? who.map((n) => `<a href="${workerUrl(n)}">${esc(n)}</a>`).join(", ") : `<span class="error">none online</span>`}</td></tr>`;
  }).join("");
}

async function load() {
  clearTimeout(state.timer);
  try {
    const [ws, qs] = await Promise.all([api("/inspect/workers"), api("/inspect/queues")]);
    state.workers = ws.workers;
    state.queues = qs.queues;
    render();
    $("#fleet-error").hidden = true;
    $("#fleet-updated").textContent = `updated ${time(Date.now() / 1000)}`;
    document.body.dataset.loaded = String(Date.now());
  } catch (err) {
    const el = $("#fleet-error");
    el.hidden = false;
    el.textContent = `Could not read the fleet (${err.message}). Retrying every ${POLL_MS / 1000} s; check that the web process reaches Redis.`;
  } finally {
    state.timer = setTimeout(load, document.hidden ? POLL_MS * 5 : POLL_MS);
  }
}

async function forget(ev) {
  const btn = ev.target.closest("button.forget");
  if (!btn) return;
  const name = btn.dataset.worker;
  const reason = await confirmDialog(`Forget worker ${name}?`,
    "It leaves the list now (an offline worker is otherwise purged after CANVASFLOW_WEB_WORKER_PURGE_AFTER). If it comes back online it is listed again; its task history stays.", "Forget");
  if (reason === null) return;
  btn.disabled = true;
  try {
    await api(`/inspect/workers/${encodeURIComponent(name)}`, { method: "DELETE" });
    toast(`forgot worker ${name}`);
    load();
  } catch (err) {
    toast(err instanceof ApiError && err.status === 409 ? `${err.message}: only an offline worker can be forgotten` : err.message, "error");
    btn.disabled = false;
  }
}

export async function init() {
  $("#workers-body").addEventListener("click", forget);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) load(); });
  await load();
}
