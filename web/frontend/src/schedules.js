// The Schedules page: every schedule trigger of the latest registered workflow versions with its
// next fire time, from /api/v1/schedules (polled), with pause / resume / run now for operators.
import { api, ApiError } from "./api.js";
import { $, confirmDialog, esc, refusal, toast } from "./util.js";

const POLL_MS = 3000;
const state = { schedules: [], schedulers: [], timer: null };

const iso = (v) => (v ? esc(v.replace("T", " ").replace("Z", " UTC")) : "–");
const key = (s) => `${s.workflow}/${s.name}`;

function actions(s) {
  const why = refusal("change schedules");
  const dis = why ? `disabled title="${esc(why)}"` : "";
  const toggle = s.paused
    ? `<button class="resume" data-action="resume" ${dis}>Resume</button>`
    : `<button class="pause" data-action="pause" ${dis}>Pause</button>`;
  return `${toggle} <button class="run-now" data-action="run-now" ${dis}>Run now</button>`;
}

function row(s) {
  const st = s.paused
    ? `<span class="status paused" title="${esc(s.reason || "")}">‖ paused${s.paused_by ? ` by ${esc(s.paused_by)}` : ""}</span>`
    : `<span class="status active">● active</span>`;
  const last = s.last_run_id ? `${iso(s.last_fire)} · <a href="/runs/${encodeURIComponent(s.last_run_id)}"><code>${esc(s.last_run_id)}</code></a>` : iso(s.last_fire);
  return `<tr data-schedule="${esc(key(s))}" data-workflow="${esc(s.workflow)}" data-name="${esc(s.name)}" data-paused="${s.paused ? "1" : "0"}">
    <td><a href="/workflows/${encodeURIComponent(s.workflow)}">${esc(s.workflow)}</a> <small class="muted">v${esc(s.version)}</small></td>
    <td><code>${esc(s.name)}</code></td><td>${esc(s.schedule)}${s.catchup ? ' <small class="muted">catchup</small>' : ""}</td>
    <td class="next-fire">${s.paused ? '<span class="muted">paused</span>' : iso(s.next_fire)}</td>
    <td class="last-fire">${last}</td><td class="state">${st}</td><td class="actions">${actions(s)}</td></tr>`;
}

function render() {
  const ss = state.schedules;
  $("#schedules-body").innerHTML = ss.length ? ss.map(row).join("")
    : `<tr><td colspan="7" class="muted empty">No registered workflow has a schedule. Add <code>triggers: [{schedule: {cron: "0 2 * * *"}}]</code> to a definition and register it.</td></tr>`;
  const paused = ss.filter((s) => s.paused).length;
  $("#schedules-stats").textContent = `${ss.length} schedule(s) • ${paused} paused • ${state.schedulers.length} scheduler(s) running`;
  $("#no-scheduler").hidden = state.schedulers.length > 0 || !ss.length;
}

async function load() {
  clearTimeout(state.timer);
  try {
    const data = await api("/schedules");
    state.schedules = data.schedules;
    state.schedulers = data.schedulers;
    render();
    $("#schedules-error").hidden = true;
    document.body.dataset.loaded = String(Date.now());
  } catch (err) {
    const el = $("#schedules-error");
    el.hidden = false;
    el.textContent = `Could not read the schedules (${err.message}). Retrying every ${POLL_MS / 1000} s.`;
  } finally {
    state.timer = setTimeout(load, document.hidden ? POLL_MS * 5 : POLL_MS);
  }
}

async function act(ev) {
  const btn = ev.target.closest("button[data-action]");
  if (!btn) return;
  const tr = btn.closest("tr");
  const { workflow, name } = tr.dataset;
  const action = btn.dataset.action;
  const titles = { pause: `Pause schedule ${name} of ${workflow}?`, resume: `Resume schedule ${name} of ${workflow}?`, "run-now": `Run ${workflow} now?` };
  const texts = {
    pause: "No run starts from it until it is resumed; fire times while paused are skipped.",
    resume: "It fires again from its next fire time (the fire times while paused are not caught up).",
    "run-now": "A run starts now with the schedule's inputs, whether or not the schedule is paused.",
  };
  const reason = await confirmDialog(titles[action], texts[action], action === "run-now" ? "Run now" : action[0].toUpperCase() + action.slice(1));
  if (reason === null) return;
  btn.disabled = true;
  try {
    const out = await api(`/schedules/${encodeURIComponent(workflow)}/${encodeURIComponent(name)}/${action}`, { method: "POST", body: { reason: reason || null } });
    if (action === "run-now") toast(`started run ${out.run_id}`);
    else toast(`${workflow}/${name} ${out.paused ? "paused" : "resumed"}`);
    load();
  } catch (err) {
    toast(err instanceof ApiError ? err.message : String(err), "error");
    btn.disabled = false;
  }
}

export async function init() {
  $("#schedules-body").addEventListener("click", act);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) load(); });
  await load();
}
