// One worker (Flower's worker page): tabs Pool, Broker, Queues, Tasks, Limits, Config, System
// from GET /api/v1/inspect/workers/<name>, polled, and the remote-control forms for operators.
import { api, ApiError } from "./api.js";
import { $, $$, boot, confirmDialog, duration, esc, kvTable, refusal, time, toast } from "./util.js";
import { poolText } from "./workers.js";

const name = boot.workerName;
const base = `/inspect/workers/${encodeURIComponent(name)}`;
const POLL_MS = 5000;
const TABS = ["pool", "broker", "queues", "tasks", "limits", "config", "system"];
const state = { w: null, timer: null, fast: 0, registered: "" };

const short = (v, n = 80) => { const s = typeof v === "string" ? v : JSON.stringify(v); return s && s.length > n ? `${s.slice(0, n)}…` : (s ?? ""); };

function taskTable(kind, items) {
  if (!items || !items.length) return `<p class="muted">no ${kind} tasks</p>`;
  const rows = items.map((t) => {
    if (typeof t === "string") return `<tr data-task="${esc(t)}"><td><a href="/tasks/${esc(t)}"><code>${esc(t)}</code></a></td><td colspan="4"></td></tr>`;
    const r = t.request || t; // scheduled tasks wrap the request with eta and priority
    const when = t.eta ? `eta ${esc(t.eta)}` : r.time_start ? `started ${time(r.time_start)}` : "";
    return `<tr data-task="${esc(r.id)}"><td><a href="/tasks/${esc(r.id)}"><code>${esc(r.id)}</code></a></td>
      <td>${esc(r.name || r.type)}</td><td class="args"><code>${esc(short(r.args))}</code></td>
      <td>${esc(r.delivery_info?.routing_key || "")}${t.priority != null ? ` · priority ${esc(t.priority)}` : ""}</td><td>${when}</td></tr>`;
  }).join("");
  return `<table class="grid" id="tasks-${kind}"><thead><tr><th>Task</th><th>Name</th><th>Args</th><th>Queue</th><th>When</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function render(w) {
  const refused = refusal("control workers");
  $("#worker-status").outerHTML = `<span id="worker-status" class="status w-${esc(w.status)}" data-status="${esc(w.status)}">${w.online ? "● online" : "○ offline"}</span>`;
  const sw = w.software || {};
  const stats = w.stats || {};
  $("#worker-meta").innerHTML = [
    `pid ${esc(w.pid ?? stats.pid ?? "–")}`, `last heartbeat ${time(w.last_heartbeat)}`,
    `started ${time(w.started_at)}`, `uptime ${stats.uptime != null ? duration(stats.uptime) : "–"}`,
    `active ${esc(w.active ?? "–")} · processed ${esc(w.processed ?? "–")} · succeeded ${esc(w.succeeded)} · failed ${esc(w.failed)}`,
    sw.ident ? `${esc(sw.ident)} ${esc(sw.version)} (${esc(sw.system)})` : "",
  ].filter(Boolean).map((m) => `<span>${m}</span>`).join("");
  const err = $("#worker-error");
  err.hidden = w.answered_inspect;
  err.textContent = w.online
    ? "The worker did not answer inspect within the timeout: the tabs show no details. It may be busy (a blocked prefork pool) or overloaded; the page asks again every few seconds."
    : "This worker is offline: its heartbeats stopped. The details below are empty; start it again, or forget it from the Workers page.";
  const pd = w.pool_detail || {};
  const concurrency = Array.isArray(pd.processes) ? pd.processes.length : pd["max-concurrency"];
  $("#pool-data").innerHTML = `<p class="pool-summary">${poolText({ implementation: pd.implementation, concurrency, autoscaler: stats.autoscaler })}
      — <b>concurrency <span id="pool-concurrency">${esc(concurrency ?? "–")}</span></b>, max ${esc(pd["max-concurrency"] ?? "–")},
      prefetch <span id="pool-prefetch">${esc(stats.prefetch_count ?? "–")}</span></p>${kvTable(pd, "pool-table")}
      ${stats.autoscaler ? `<h4>Autoscaler</h4>${kvTable(stats.autoscaler)}` : ""}`;
  $("#broker-data").innerHTML = kvTable(w.broker, "broker-table");
  const aq = w.active_queues || [];
  $("#queues-data").innerHTML = aq.length ? `<table class="grid" id="active-queues"><thead><tr><th>Queue</th><th>Exchange</th><th>Routing key</th><th>Durable</th><th>Auto delete</th><th></th></tr></thead><tbody>${
    aq.map((q) => `<tr data-queue="${esc(q.name)}"><td><code>${esc(q.name)}</code></td><td>${esc(q.exchange?.name)} (${esc(q.exchange?.type)})</td>
      <td>${esc(q.routing_key)}</td><td>${esc(q.durable)}</td><td>${esc(q.auto_delete)}</td>
      <td><button class="cancel-consumer" data-queue="${esc(q.name)}" ${refused ? `disabled title="${esc(refused)}"` : ""}>Cancel consumer</button></td></tr>`).join("")
  }</tbody></table>` : `<p class="muted">no queues reported</p>`;
  const t = w.tasks || {};
  const n = (k) => (Array.isArray(t[k]) ? t[k].length : 0);
  $("#tasks-count").textContent = w.answered_inspect ? `(${n("active")}/${n("reserved")}/${n("scheduled")})` : "";
  $("#tasks-data").innerHTML = ["active", "reserved", "scheduled", "revoked"].map((k) =>
    `<h3>${k[0].toUpperCase()}${k.slice(1)} <span class="count">(${n(k)})</span></h3>${taskTable(k, t[k])}`).join("") +
    `<p class="hint">Reserved: prefetched by the worker, not started. Scheduled: waiting for an ETA or countdown. Revoked: ids this worker will discard.</p>`;
  const names = (w.registered || []).map((x) => String(x).split(" ")[0]).sort();
  $("#registered-data").innerHTML = names.length ? `<ul class="chips" id="registered">${(w.registered || []).map((x) => `<li class="chip">${esc(x)}</li>`).join("")}</ul>` : `<p class="muted">none reported</p>`;
  const key = names.join(",");
  if (key !== state.registered) { // keep the user's choice unless the list changed
    state.registered = key;
    for (const sel of $$("select.task-names")) sel.innerHTML = names.map((x) => `<option>${esc(x)}</option>`).join("");
  }
  $("#config-data").innerHTML = kvTable(w.conf, "config-table");
  $("#system-data").innerHTML = `<h4>Resource usage (rusage)</h4>${kvTable(w.rusage, "rusage-table")}
    <h4>Process</h4>${kvTable({ pid: stats.pid, clock: stats.clock, uptime: stats.uptime, loadavg: w.loadavg, total: w.total })}`;
}

async function load() {
  clearTimeout(state.timer);
  try {
    state.w = await api(base);
    render(state.w);
    $("#worker-updated").textContent = `updated ${time(Date.now() / 1000)}`;
    document.body.dataset.loaded = String(Date.now());
  } catch (err) {
    const el = $("#worker-error");
    el.hidden = false;
    el.textContent = err instanceof ApiError && err.status === 404
      ? `${err.message}: it has been forgotten or purged. Go back to the Workers page.`
      : `Could not read the worker (${err.message}); retrying.`;
  } finally {
    // Right after a control action the worker changes asynchronously (a pool grows in the background).
    const wait = state.fast > 0 ? 1000 : document.hidden ? POLL_MS * 5 : POLL_MS;
    state.fast = Math.max(0, state.fast - 1);
    state.timer = setTimeout(load, wait);
  }
}

const EXPLAIN = {
  pool_restart: "restart requested", shutdown: "shutdown sent: the worker finishes its running tasks and goes offline",
};

async function control(action, body = {}) {
  try {
    const res = await api(`${base}/${action}`, { method: "POST", body });
    const reply = res.reply && typeof res.reply === "object" ? (res.reply.ok || JSON.stringify(res.reply)) : res.reply;
    toast(`${name}: ${EXPLAIN[action] || action.replace("_", " ")} — ${reply}`);
    state.fast = 8;
    load();
    return true;
  } catch (err) {
    let msg = err.message;
    if (err instanceof ApiError && err.status === 504) msg += ". The worker may be busy or gone: try again, or check its log.";
    if (err instanceof ApiError && err.status === 409) msg = `the worker refused ${action.replace("_", " ")}: ${msg}`;
    if (err instanceof ApiError && err.details.length) msg += ` (${err.details.join("; ")})`;
    toast(msg, "error");
    return false;
  }
}

function formBody(form) {
  const body = {};
  for (const [k, v] of new FormData(form).entries()) {
    const input = form.elements[k];
    if (input?.type === "number") body[k] = v === "" ? null : Number(v);
    else if (v !== "") body[k] = v;
  }
  return body;
}

function showTab(tab) {
  if (!TABS.includes(tab)) tab = "pool";
  for (const t of TABS) $(`#tab-${t}`).hidden = t !== tab;
  for (const b of $$("#worker-tabs button")) b.classList.toggle("on", b.dataset.tab === tab);
}

function lockControls() {
  const why = refusal("control workers");
  if (!why) return;
  for (const b of $$("#worker-actions button, .control-form button")) { b.disabled = true; b.title = why; }
  const banner = $("#controls-refused");
  banner.hidden = false;
  banner.textContent = `Controls are off: ${why}`;
}

export async function init() {
  showTab(location.hash.replace("#", ""));
  for (const b of $$("#worker-tabs button")) {
    b.addEventListener("click", () => { history.replaceState(null, "", `#${b.dataset.tab}`); showTab(b.dataset.tab); });
  }
  for (const form of $$("form.control-form")) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const btn = form.querySelector("button[type=submit]");
      btn.disabled = true;
      try { await control(form.dataset.control, formBody(form)); } finally { btn.disabled = false; }
    });
  }
  $("#pool-shrink").addEventListener("click", (ev) => {
    const form = ev.target.closest("form");
    if (form.reportValidity()) control("pool_shrink", formBody(form));
  });
  $("#worker-actions").addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-control]");
    if (!btn) return;
    if (btn.dataset.control === "shutdown") {
      const reason = await confirmDialog(`Shut down ${name}?`,
        "The worker stops taking tasks, finishes the running ones (warm shutdown) and exits. Nothing restarts it from here: start it again on its host or let your supervisor do it.", "Shut down");
      if (reason === null) return;
      control("shutdown", { reason: reason || "shut down from the dashboard" });
    } else {
      control(btn.dataset.control, {});
    }
  });
  $("#tab-queues").addEventListener("click", (ev) => {
    const btn = ev.target.closest("button.cancel-consumer");
    if (btn) control("cancel_consumer", { queue: btn.dataset.queue });
  });
  lockControls();
  await load();
}
