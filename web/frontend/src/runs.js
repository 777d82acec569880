// The runs page: tabs, filters, keyset pages, live progress bars and ticking durations.
import { api, ApiError } from "./api.js";
import { getLive } from "./live.js";
import {
  $, $$, boot, canOperate, duration, esc, FINAL, lostBadge, now, progressBar, slaBadge, statusBadge, throttle, time,
  toast, triggerText,
} from "./util.js";

// Without ?view= the page lands on Active, or on All when nothing is active: after the demo (or
// a quiet night) the runs are there to see, not an empty tab.
const state = { view: boot.view || "active", landing: !boot.view, filters: {}, runs: new Map(), order: [], cursor: null };

function markTab() {
  for (const b of $$("#tabs button")) b.classList.toggle("on", b.dataset.view === state.view);
}

function row(r) {
  const actions = [];
  if (canOperate()) {
    if (r.can_pause) actions.push(`<button data-act="pause" data-run="${esc(r.id)}">Pause</button>`);
    if (r.can_resume) actions.push(`<button data-act="resume" data-run="${esc(r.id)}">Resume</button>`);
  }
  return `<tr data-run="${esc(r.id)}" data-status="${esc(r.status)}">
    <td><a href="/runs/${esc(r.id)}"><code>${esc(r.id)}</code></a>${r.parent_run
      ? `<br><small class="muted child-of">child of <a href="/runs/${esc(r.parent_run)}">${esc(r.parent_run)}</a> · ${esc(r.parent_step || "")}</small>` : ""}</td>
    <td><a href="/workflows/${esc(r.workflow.id)}">${esc(r.workflow.name || r.workflow.id)}</a>
        <small class="muted">${esc(r.workflow.version)}</small>
        ${r.tags.map((t) => `<span class="tag">${esc(t)}</span>`).join("")}</td>
    <td class="p">${progressBar(r.progress, r.status)}
        <small class="muted current">${esc(r.progress.current_steps.join(", "))}</small></td>
    <td class="d" data-started="${r.started_at ?? ""}" data-finished="${r.finished_at ?? ""}">${duration(r.duration)}</td>
    <td class="sla-cell">${slaBadge(r.sla)}</td>
    <td class="st">${statusBadge(r.status)}${lostBadge(r)}</td>
    <td>${esc(r.triggered_by || "–")} <small class="muted trigger">${esc(triggerText(r))}</small><br><small class="muted">${time(r.created_at)}</small></td>
    <td><span class="prio prio-${esc(r.priority)}">${esc(r.priority)}</span></td>
    <td class="quick">${actions.join(" ")}</td></tr>`;
}

function render() {
  const body = $("#runs-body");
  const rows = state.order.map((id) => state.runs.get(id)).filter(Boolean);
  body.innerHTML = rows.length ? rows.map(row).join("") : `<tr><td colspan="9" class="muted empty">No runs here.</td></tr>`;
  $("#more").hidden = !state.cursor;
}

function renderCounts(c) {
  for (const el of $$("[data-count]")) {
    const v = c[el.dataset.count];
    el.textContent = v ? `(${v})` : "";
  }
  const sla = c.sla_compliance_today == null ? "no SLA results today" : `${c.sla_compliance_today}% SLA compliance today`;
  $("#stats").textContent = `${c.active} active • ${c.pending} pending • ${c.completed_today} completed and ${c.failed_today} failed today • ${sla}`;
}

function query(cursor) {
  const f = state.filters;
  const toTs = (v) => (v ? new Date(v).getTime() / 1000 : undefined);
  return { view: state.view, limit: 50, cursor, search: f.search, workflow: f.workflow, tag: f.tag,
    triggered_by: f.triggered_by, trigger_type: f.trigger_type || undefined, since: toTs(f.since), until: toTs(f.until),
    children: f.children && f.children !== "hide" ? f.children : undefined, parent: f.parent || undefined };
}

async function load(append = false) {
  try {
    let page = await api("/runs", { query: query(append ? state.cursor : undefined) });
    if (state.landing) {
      state.landing = false;
      if (state.view === "active" && !page.runs.length) {
        state.view = "all";
        markTab();
        page = await api("/runs", { query: query(undefined) });
      }
    }
    if (!append) { state.runs.clear(); state.order = []; }
    for (const r of page.runs) {
      if (!state.runs.has(r.id)) state.order.push(r.id);
      state.runs.set(r.id, r);
    }
    state.cursor = page.next_cursor;
    renderCounts(page.counts);
    $("#warnings").innerHTML = page.warnings.map((w) => `<p class="banner">${esc(w)}</p>`).join("");
    render();
    document.body.dataset.loaded = String(Date.now());
  } catch (err) {
    toast(err.message, "error");
  }
}

const reload = throttle(() => load(false), 1000);

function onEvent(e) {
  const r = state.runs.get(e.run);
  if (!r) {
    if (e.type === "run_created" || e.type === "run_status_changed") reload();
    return;
  }
  if (e.run_state) {
    const st = e.run_state;
    r.status = st.status;
    r.progress = { ...r.progress, settled: st.settled, total: st.total,
      percent: st.total ? (100 * st.settled) / st.total : 0 };
  }
  if (e.type === "step_started") r.progress.current_steps = [...new Set([...r.progress.current_steps, e.step])];
  if (["step_completed", "step_failed", "step_skipped", "step_cancelled"].includes(e.type)) {
    r.progress.current_steps = r.progress.current_steps.filter((s) => s !== e.step);
  }
  if (e.type === "run_status_changed" && e.status === "RUNNING" && !r.started_at) r.started_at = e.ts;
  if (e.type === "run_status_changed" && FINAL.has(e.status)) r.finished_at = e.ts;
  const tr = $(`tr[data-run="${CSS.escape(e.run)}"]`);
  if (tr) tr.outerHTML = row(r);
  if (e.type === "run_status_changed" || e.type.startsWith("sla_")) reload();
}

function tick() {
  for (const td of $$("#runs-body td.d")) {
    const started = parseFloat(td.dataset.started);
    if (!started || td.dataset.finished) continue;
    td.textContent = duration(now() - started);
  }
}

async function quick(ev) {
  const btn = ev.target.closest("button[data-act]");
  if (!btn) return;
  btn.disabled = true;
  try {
    await api(`/runs/${btn.dataset.run}/${btn.dataset.act}`, { method: "POST", body: {} });
    toast(`${btn.dataset.act} requested for ${btn.dataset.run}`);
    reload();
  } catch (err) {
    toast(err instanceof ApiError ? err.message : String(err), "error");
  } finally { btn.disabled = false; }
}

export async function init() {
  markTab();
  for (const b of $$("#tabs button")) {
    b.addEventListener("click", () => {
      state.view = b.dataset.view;
      state.landing = false;
      markTab();
      history.replaceState(null, "", `/runs?view=${state.view}`);
      load(false);
    });
  }
  const form = $("#filters");
  // /runs?parent=<id>: the children of a run (the run page links here).
  const parent = new URLSearchParams(location.search).get("parent");
  if (parent) {
    form.querySelector("input[name=parent]").value = parent;
    state.filters = { parent };
    if (!boot.view) { state.view = "all"; state.landing = false; markTab(); }
  }
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.filters = Object.fromEntries(new FormData(form).entries());
    load(false);
  });
  form.addEventListener("reset", () => { state.filters = {}; setTimeout(() => load(false), 0); });
  $("#more").addEventListener("click", () => load(true));
  $("#runs-body").addEventListener("click", quick);
  api("/workflows").then((w) => {
    const sel = form.querySelector("select[name=workflow]");
    for (const wf of w.workflows) sel.insertAdjacentHTML("beforeend", `<option value="${esc(wf.id)}">${esc(wf.name || wf.id)}</option>`);
  }).catch(() => {});
  await load(false);
  getLive().followAll(onEvent, reload);
  setInterval(tick, 1000);
}
