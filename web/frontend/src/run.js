// The run page: header with live progress and actions, the step timeline (expandable input,
// output, logs, errors, attempts, compensation), parallel branches, and the Gantt / DAG views.
import { api, ApiError } from "./api.js";
import { loadItems, mapBody, mapHead, onItemsClick, onItemsFilter } from "./items.js";
import { getLive, logLines } from "./live.js";
import {
  $, $$, boot, canOperate, confirmDialog, duration, esc, FINAL, json, LOST_EXPLANATION, lostBadge, now, progressBar, slaBadge,
  statusBadge, throttle, time, toast, triggerText,
} from "./util.js";

const runId = boot.runId;
const state = {
  run: null, expanded: new Set(), offset: 0, view: boot.view || "timeline", showAllBranches: new Set(),
  liveLogs: new Map(), // step id -> lines that arrived live and the last fetch did not have yet
  // While a run is followed, its step events are applied here rather than refetched (GET
  // /runs/{id} of a 200-step run is the web process's longest request). What the events do not
  // carry (outputs, compensations, the run's own fields) is fetched when it is needed.
  applied: [], // events applied since the last fetch: one that read the run before them gets them again
  stale: new Set(), // steps changed by events since the last fetch: their output is not known yet
  statuses: new Map(), // step id -> status: the page's steps from each fetch, any step from events
  branchesOf: new Map(), // step id -> the parallel branches it belongs to
  children: [], // the child runs of its sub-workflow steps (GET /runs/{id}/children)
};
const LIVE_LOG_MAX = 500; // lines kept per step between fetches
const APPLIED_MAX = 5000;
const CURRENT = new Set(["RUNNING", "RETRYING", "COMPENSATING"]); // the header's "running: …"
const STEP_EVENTS = new Set(["step_started", "step_completed", "step_failed", "step_retrying", "step_skipped"]);
// Events that change nothing the page shows, or only what they carry themselves.
const SELF_CONTAINED = new Set([...STEP_EVENTS, "progress", "stats", "step_discarded", "log"]);
let chart = null; // the Gantt or DAG module once loaded

const ACTIONS = {
  pause: { path: "pause", when: (r) => r.can_pause },
  resume: { path: "resume", when: (r) => r.can_resume },
  cancel: { path: "cancel", when: (r) => r.can_cancel, confirm: true },
  retry: { path: "retry", when: (r) => r.can_retry && r.steps_failed, body: {} },
  "retry-start": { path: "retry", when: (r) => r.can_retry, body: { from_start: true } },
  "retry-compensation": { path: "retry", when: (r) => r.can_retry_compensation, body: { compensation: true } },
  resolve: { path: "resolve", when: (r) => r.can_resolve && !r.state_lost },
  // A run whose state Redis lost: only a resolution by hand ends it (with a reason, audited).
  "resolve-failed": { path: "resolve", when: (r) => r.state_lost, lost: "failed" },
  "resolve-cancelled": { path: "resolve", when: (r) => r.state_lost, lost: "cancelled" },
  clone: { path: "clone", when: () => true },
};

function syncAllowed(r) {
  // Live events change the status before the next fetch; the buttons follow the status at once.
  if (r.state_lost) return; // its status is stale: only the resolve buttons apply
  const allowed = boot.allowed || {};
  for (const [action, key] of [["pause", "can_pause"], ["resume", "can_resume"], ["cancel", "can_cancel"],
    ["retry", "can_retry"], ["retry_compensation", "can_retry_compensation"], ["resolve", "can_resolve"]]) {
    if (allowed[action]) r[key] = allowed[action].includes(r.status);
  }
  // Waiting for a concurrency slot, nothing of it runs: it can be cancelled, not paused.
  if (r.waiting && r.status === "PENDING") r.can_pause = false;
}

function renderHead(r) {
  syncAllowed(r);
  $("#run-workflow").textContent = r.workflow.name || r.workflow.id;
  $("#run-status").outerHTML = `<span id="run-status">${statusBadge(r.status)}${lostBadge(r)}</span>`;
  const lost = $("#lost-banner");
  lost.hidden = !r.state_lost;
  if (r.state_lost) lost.textContent = `State lost: ${LOST_EXPLANATION}`;
  const meta = [
    `workflow <a href="/workflows/${esc(r.workflow.id)}">${esc(r.workflow.id)}</a> ${esc(r.workflow.version)}`,
    // A run no worker has begun says so: its creation time labelled "started" read as if it ran.
    r.started_at ? `started ${time(r.started_at)}` : `created ${time(r.created_at)} · not started yet`,
    `duration <span id="run-duration" data-started="${r.started_at ?? ""}" data-final="${FINAL.has(r.status) ? 1 : ""}">${duration(r.duration)}</span>`,
    `SLA ${r.sla.target ? duration(r.sla.target) : "none"} ${slaBadge(r.sla)}`,
    ...slaRetry(r.sla),
    `triggered by ${esc(r.triggered_by || "–")} (<span id="run-trigger">${esc(triggerText(r))}</span>)`,
    `priority ${esc(r.priority)}`,
  ];
  if (r.cloned_from) meta.push(`clone of <a href="/runs/${esc(r.cloned_from)}">${esc(r.cloned_from)}</a>`);
  if (r.parent_run) {
    // A child run of a sub-workflow step: breadcrumbs up to its parent's step.
    meta.unshift(`<nav class="breadcrumbs" aria-label="parent run"><a class="crumb-parent" href="/runs/${esc(r.parent_run)}">run ${esc(r.parent_run)}</a>` +
      ` › <a class="crumb-step" href="/runs/${esc(r.parent_run)}#step-${esc(r.parent_step || "")}">step ${esc(r.parent_step || "")}</a> › this run</nav>`);
  }
  if (state.children.length) meta.push(`<a class="children-link" href="/runs?parent=${esc(runId)}">${state.children.length} child run(s)</a>`);
  if (r.result != null) meta.push(`result <code class="run-result">${esc(JSON.stringify(r.result)).slice(0, 300)}</code>`);
  if (r.tags.length) meta.push(r.tags.map((t) => `<span class="tag">${esc(t)}</span>`).join(" "));
  $("#run-meta").innerHTML = meta.map((m) => `<span>${m}</span>`).join("");
  const p = r.progress;
  $("#run-bar").style.width = `${p.percent}%`;
  $("#run-bar").className = `bar s-${r.status}`;
  $("#run-bar").parentElement.dataset.percent = String(p.percent);
  $("#run-progress-text").textContent = `${p.settled}/${p.total} steps (${Math.round(p.percent)}%)` +
    (p.current_steps.length ? ` — running: ${p.current_steps.join(", ")}` : "");
  const err = $("#run-error");
  err.hidden = !r.error;
  err.textContent = r.error ? `${r.failed_step ? `step ${r.failed_step}: ` : ""}${r.error}` : "";
  if (Array.isArray(r.warnings)) {
    // The detail's warnings: no live worker on a queue the run needs (while it is not over),
    // Redis unreachable, audit store missing. Live events carry none: the last fetch's stay.
    $("#run-warnings").innerHTML = r.warnings.map((w) => `<p class="banner">${esc(w)}</p>`).join("");
  }
  // Held back by its workflow's concurrency limit (the detail's "waiting"; live events carry
  // none, and a status past PENDING means it got its slot).
  const wait = $("#waiting-banner");
  wait.hidden = !(r.waiting && (r.status === "PENDING" || r.status === "PAUSING"));
  wait.textContent = wait.hidden ? "" : r.waiting.reason;
  const sla = $("#sla-banner");
  sla.hidden = !(r.sla.status === "at_risk" || r.sla.status === "breached");
  if (!sla.hidden) {
    const over = r.sla.elapsed - r.sla.target;
    sla.className = `banner sla-${r.sla.status}`;
    sla.textContent = r.sla.status === "breached"
      ? `SLA breached: target ${duration(r.sla.target)}, now ${duration(r.sla.elapsed)} (+${duration(over)})`
      : `SLA at risk: ${Math.round((100 * r.sla.elapsed) / r.sla.target)}% of the ${duration(r.sla.target)} target used`;
  }
  const operate = canOperate();
  for (const btn of $$("#actions button[data-action]")) {
    const a = ACTIONS[btn.dataset.action];
    btn.hidden = !a.when(r);
    btn.disabled = !operate;
    btn.title = operate ? "" : (boot.readOnly ? "the dashboard is read-only" : `your role (${boot.user.role}) cannot change runs`);
  }
}

/** A retried run: its SLA clock was not restarted (the badge above is the whole run's); the first
 * dispatch's figure and the latest retry's are shown beside it. */
function slaRetry(sla) {
  if (!sla.target || !sla.first || !sla.retry) return [];
  const fig = (f) => `${duration(f.elapsed)} ${slaBadge({ ...f, target: sla.target })}`;
  return [
    `<span id="sla-first" title="from the run's start to the end it reached before the first operator retry">first run ${fig(sla.first)}</span>`,
    `<span id="sla-retry" title="from the latest operator retry (${sla.retry.count} in all)">retry ${fig(sla.retry)}</span>`,
  ];
}

/** An operator's retries of a step, and its attempt within the latest dispatch out of 1 + its
 * configured retries (Celery retries): two different counts, never one "retry n/m". */
function retryLabels(s) {
  const op = s.operator_retries
    ? `<span class="op-retries" title="the run was retried by an operator with this step among those run again">operator retry ${s.operator_retries}</span>` : "";
  const own = s.attempt > 1
    ? `<span class="retries" title="attempt in this dispatch, of 1 + the step's retries: ${s.max_retries}">attempt ${s.attempt}/${s.attempts_allowed}</span>` : "";
  return `${op} ${own}`;
}

/** The step's lines from the last fetch plus the newer ones that arrived live since. */
function stepLogs(s) {
  const live = state.liveLogs.get(s.id);
  if (!live || !live.length) return s.logs;
  const fetched = s.logs.reduce((m, l) => Math.max(m, l.seq), 0);
  return s.logs.concat(live.filter((l) => l.seq > fetched));
}

function stepRow(s) {
  const open = state.expanded.has(s.id);
  const logLines = stepLogs(s);
  const running = s.status === "RUNNING" || s.status === "RETRYING";
  const dur = s.duration != null ? duration(s.duration) : s.status;
  const retries = retryLabels(s);
  const comp = s.compensation;
  const compBadge = comp?.status ? `<span class="comp comp-${esc(comp.status)}">compensation ${esc(comp.status)}</span>` : "";
  const prog = s.progress && running
    ? `<div class="step-progress"><div class="progress"><div class="bar s-RUNNING" style="width:${Math.round(100 * s.progress.fraction)}%"></div>` +
      `<span>${Math.round(100 * s.progress.fraction)}%</span></div> <small>${esc(s.progress.message || "")}</small></div>` : "";
  const lastLog = running && logLines.length ? `<div class="last-log">└ ${esc(logLines[logLines.length - 1].message)}</div>` : "";
  let body = "";
  if (open && s.map) body = mapBody(s); // a mapped step lists its items, paged
  else if (open) {
    const attempts = s.history.map((a) => `<li class="attempt s-${esc(a.status)}">attempt ${a.attempt ?? "?"}: ${statusBadge(a.status)}
      ${a.started_at ? time(a.started_at) : ""} ${a.duration != null ? `(${duration(a.duration)})` : ""}
      ${a.worker ? `<small class="muted">on ${esc(a.worker)}</small>` : ""}
      ${a.error ? `<div class="error">${esc(a.error)}</div>` : ""}
      ${a.input != null ? `<details class="attempt-input"><summary>input</summary>${json(a.input)}</details>` : ""}</li>`).join("");
    const logs = logLines.map((l) => `<li class="log l-${esc(l.level)}" data-seq="${l.seq}"><small>${time(l.ts)}</small> <b>${esc(l.level)}</b> <span class="msg">${esc(l.message)}</span>` +
      `${l.entity_tag || l.entity_id ? ` <small class="muted">${esc([l.entity_type, l.entity_tag, l.entity_id, l.entity_route].filter(Boolean).join(" · "))}</small>` : ""}</li>`).join("");
    const retryBtn = canOperate() && state.run.can_retry
      ? `<button data-retry-from="${esc(s.id)}">Retry from this step</button>` : "";
    body = `<div class="step-body">
      <div class="cols">
        <div class="step-input" data-rendered="${s.input_rendered ? 1 : 0}"><h4>Input <small class="muted">${s.input_rendered
          ? "rendered, as the plugin got it" : "params as written (the step has not run)"}</small></h4>${json(s.input)}</div>
        <div><h4>Output</h4>${json(s.output)}</div>
      </div>
      ${s.error ? `<h4>Error</h4><pre class="error">${esc(s.error)}</pre>` : ""}
      ${s.traceback ? `<details><summary>Traceback</summary><pre>${esc(s.traceback)}</pre></details>` : ""}
      ${s.reason ? `<p class="muted">Skipped: ${esc(s.reason)}</p>` : ""}
      ${comp ? `<h4>Compensation</h4><p>${esc(comp.plugin)}.${esc(comp.method)} — ${esc(comp.status || "not run")}</p>
        ${comp.error ? `<pre class="error">${esc(comp.error)}</pre>` : ""}` : ""}
      <h4>Attempts</h4><ol class="attempts">${attempts || "<li class='muted'>none yet</li>"}</ol>
      <h4>Logs</h4><ul class="logs">${logs || "<li class='muted'>none</li>"}</ul>
      <p class="muted">${esc(s.plugin)}.${esc(s.method)} · queue ${esc(s.queue)}${s.critical ? "" : " · non-critical"}
        ${s.depends_on.length ? ` · after ${esc(s.depends_on.join(", "))}` : ""}${s.when ? ` · when <code>${esc(s.when)}</code>` : ""}
        ${s.worker ? ` · worker ${esc(s.worker)}` : ""}</p>
      ${retryBtn}
    </div>`;
  }
  return `<li class="step s-${esc(s.status)} ${comp?.status ? "compensated" : ""} ${open ? "open" : ""}" id="step-${esc(s.id)}" data-step="${esc(s.id)}" data-status="${esc(s.status)}">
    <div class="step-head" role="button" tabindex="0">
      <span class="num">${s.number}.</span> ${statusBadge(s.status)}
      <span class="name">${esc(s.name)}</span> ${retries} ${compBadge}${s.map ? mapHead(s.map) : ""} ${childLinks(s)}
      <span class="when">${s.started_at ? time(s.started_at) : ""}${s.finished_at ? ` → ${time(s.finished_at)}` : ""}</span>
      <span class="dur" data-started="${running ? s.started_at ?? "" : ""}">${running ? `RUNNING – ${duration(s.duration)}` : dur}</span>
    </div>${prog}${lastLog}${body}</li>`;
}

/** Links from a sub-workflow step to the child runs it started (the newest last). */
function childLinks(s) {
  const kids = state.children.filter((c) => c.parent_step === s.id);
  return kids.map((c) => `<a class="child-run" data-child="${esc(c.id)}" href="/runs/${esc(c.id)}">child run ${esc(c.id)}</a> ${statusBadge(c.status)}`).join(" ");
}

async function loadChildren() {
  try {
    state.children = (await api(`/runs/${runId}/children`)).children;
  } catch (err) {
    state.children = [];
  }
}

function renderBranches(r) {
  const groups = r.parallel_branches || [];
  $("#branches").innerHTML = groups.map((g) => {
    const all = state.showAllBranches.has(g.group);
    const shown = all ? g.branches : g.branches.slice(0, 5);
    const more = g.branches.length - shown.length;
    return `<div class="branch-group" data-group="${g.group}"><h4>Parallel group ${g.group} · ${g.branches.length} branches</h4>
      <div class="branch-cols">${shown.map((b) => `<div class="branch s-${esc(b.status)}" data-branch="${esc(b.branch)}">
        <b class="branch-name" title="${esc(b.steps.join(" → "))}">${esc(b.name || b.steps.join(" → "))}</b> ${statusBadge(b.status)}<ul>${b.steps.map((s) => `<li><a href="#step-${esc(s)}">${esc(s)}</a></li>`).join("")}</ul></div>`).join("")}
      ${more > 0 ? `<button class="expand-branches" data-group="${g.group}">+${more} more branches</button>` : ""}
      ${all && g.branches.length > 5 ? `<button class="collapse-branches" data-group="${g.group}">collapse</button>` : ""}</div></div>`;
  }).join("");
}

function renderTimeline(r) {
  $("#timeline").innerHTML = r.steps.map(stepRow).join("");
  const pages = Math.ceil(r.steps_total / boot.stepsPage);
  const pager = $("#steps-pager");
  if (pages > 1) {
    const page = Math.floor(r.steps_offset / boot.stepsPage) + 1;
    pager.innerHTML = `<button data-page="-1" ${page === 1 ? "disabled" : ""}>‹ Previous</button>
      <span>steps ${r.steps_offset + 1}–${r.steps_offset + r.steps.length} of ${r.steps_total} (page ${page}/${pages})</span>
      <button data-page="1" ${page === pages ? "disabled" : ""}>Next ›</button>`;
  } else pager.innerHTML = "";
  $("#operator-actions").innerHTML = (r.operator_actions || []).map((a) =>
    `<li>${time(a.ts)} <b>${esc(a.actor)}</b> ${esc(a.action)} — ${esc(a.outcome)}${a.reason ? `: “${esc(a.reason)}”` : ""}</li>`).join("") || "<li class='muted'>none</li>";
}

async function load() {
  try {
    const [r] = await Promise.all([
      api(`/runs/${runId}`, { query: { steps_offset: state.offset, steps_limit: boot.stepsPage } }),
      loadChildren(),
    ]);
    r.steps_failed = (r.step_counts.FAILED || 0) > 0;
    for (const s of r.steps) s.attempt_base = Math.max(0, s.attempts - (s.attempt ?? s.attempts));
    state.statuses = new Map(r.steps.map((s) => [s.id, s.status]));
    state.branchesOf = new Map();
    for (const g of r.parallel_branches || []) {
      for (const b of g.branches) for (const id of b.steps) (state.branchesOf.get(id) || state.branchesOf.set(id, []).get(id)).push(b);
    }
    // r is the run as of its event r.seq (read in one step): what came after is applied again.
    state.applied = state.applied.filter((e) => e.seq > r.seq);
    state.stale = new Set();
    for (const e of state.applied) applyEvent(r, e);
    state.run = r;
    renderHead(r);
    renderTimeline(r);
    renderBranches(r);
    document.body.dataset.seq = String(r.seq);
    for (const s of r.steps) if (s.map && state.expanded.has(s.id)) loadItems(runId, s, (m) => itemsLoaded(s, m));
    // Its place in the queue moves with other runs' events, not its own: look again.
    if (r.waiting) setTimeout(() => refresh(), 3000);
    return r;
  } catch (err) {
    toast(err.message, "error");
    return null;
  }
}

const refresh = throttle(async () => {
  await load();
  if (chart) await chart.refresh();
}, 1000); // when an event needs the full detail (see applyEvent), at most once a second

function onLog(e) {
  // One event per flushed batch: every line of it is shown at once, without a refetch.
  const lines = state.liveLogs.get(e.step) || [];
  lines.push(...logLines(e));
  if (lines.length > LIVE_LOG_MAX) lines.splice(0, lines.length - LIVE_LOG_MAX);
  state.liveLogs.set(e.step, lines);
  dirty.rows.add(e.step);
  redraw();
}

/** What a step_* event says about its step, as the next fetch would show it (web/detail.py). */
function applyStep(s, e) {
  const d = e.data || {};
  s.status = e.status;
  // The placeholder of the attempt that was running (the server adds one the same way).
  const history = s.history.filter((a) => !(a.status === "RUNNING" && a.finished_at == null));
  if (e.type === "step_started") {
    s.attempts = d.attempt ?? s.attempts + 1;
    if (s.attempts === 1 || s.started_at == null) s.started_at = e.ts;
    s.finished_at = null;
    if (d.worker) s.worker = d.worker;
    history.push({ attempt: s.attempts, status: "RUNNING", started_at: e.ts, finished_at: null, duration: null,
      worker: d.worker ?? null, error: null, input: null });
  } else if (e.type === "step_skipped") {
    s.finished_at = e.ts;
    s.reason = d.reason ?? null;
    s.error = d.reason ?? null;
  } else { // completed, failed, retrying: the data is the attempt record
    let input = d.input ?? null;
    if (typeof input === "string") { try { input = JSON.parse(input); } catch { /* cut short: shown as text */ } }
    history.push({ attempt: d.attempt ?? s.attempts, status: e.status, started_at: d.started_at ?? null,
      finished_at: d.finished_at ?? null, duration: d.duration ?? null, worker: d.worker ?? null,
      error: d.error ?? null, input });
    if (input != null) { s.input = input; s.input_rendered = true; }
    if (d.worker) s.worker = d.worker;
    s.error = d.error ?? null;
    s.traceback = d.traceback ?? null;
    if (e.type !== "step_retrying") s.finished_at = e.ts;
  }
  s.history = history;
  s.retry_count = Math.max(0, s.attempts - 1);
  s.attempt = Math.max(0, s.attempts - (s.attempt_base ?? 0));
  s.duration = s.started_at != null && s.status !== "PENDING" ? (s.finished_at ?? now()) - s.started_at : null;
}

/** The status of a parallel branch from its steps' (the rule of web/detail.py branch_status); null if one is unknown. */
function branchStatus(ids) {
  const st = ids.map((id) => state.statuses.get(id));
  if (st.some((x) => x === undefined)) return null;
  if (st.some((x) => CURRENT.has(x))) return "RUNNING";
  if (st.includes("FAILED")) return "FAILED";
  const settled = ["COMPLETED", "FAILED", "SKIPPED", "CANCELLED", "COMPENSATED"];
  if (!st.length || !st.every((x) => settled.includes(x))) return "PENDING";
  if (st.every((x) => x === st[0])) return st[0];
  for (const x of ["COMPENSATED", "CANCELLED"]) if (st.includes(x)) return x;
  return "COMPLETED";
}

/** Apply one event to the run `r`; returns what changed: {step, branches, fetch} (fetch: the page
 * cannot show it without the full detail). */
function applyEvent(r, e) {
  const out = { step: null, branches: false, fetch: !SELF_CONTAINED.has(e.type) };
  if (e.run_state) {
    r.status = e.run_state.status;
    r.progress.settled = e.run_state.settled;
    r.progress.total = e.run_state.total;
    r.progress.percent = e.run_state.total ? (100 * e.run_state.settled) / e.run_state.total : 0;
  } else if (e.type === "run_status_changed" && e.status) r.status = e.status;
  if (!e.step) return out;
  const s = r.steps.find((x) => x.id === e.step);
  if (e.type === "progress") {
    if (s) { s.progress = { fraction: e.data?.fraction ?? 0, message: e.data?.message ?? null }; out.step = s; }
    return out;
  }
  if (!e.status) return out;
  state.statuses.set(e.step, e.status);
  const current = new Set(r.progress.current_steps);
  if (CURRENT.has(e.status)) current.add(e.step); else current.delete(e.step);
  r.progress.current_steps = [...current].sort();
  if (e.status === "FAILED") r.steps_failed = true;
  for (const b of state.branchesOf.get(e.step) || []) {
    const status = branchStatus(b.steps);
    if (status === null) out.fetch = true; else b.status = status;
    out.branches = true;
  }
  if (s) {
    if (STEP_EVENTS.has(e.type)) applyStep(s, e); else s.status = e.status;
    state.stale.add(s.id);
    out.step = s;
    // An open step shows its output and traceback, which no event carries.
    if (state.expanded.has(s.id) && e.type !== "step_started") out.fetch = true;
  }
  return out;
}

// What events changed, drawn once per frame however many came (a batch may carry dozens, and
// drawing each one held the next batch up; a page without frames, hidden, draws on the timer).
const dirty = { rows: new Set(), branches: false, head: false, scheduled: false };

function draw() {
  if (!dirty.scheduled) return;
  dirty.scheduled = false;
  const r = state.run;
  for (const id of dirty.rows) {
    const s = r.steps.find((x) => x.id === id);
    const li = s && $(`#step-${CSS.escape(id)}`);
    if (li) li.outerHTML = stepRow(s);
  }
  if (dirty.branches) renderBranches(r);
  if (dirty.head) renderHead(r);
  dirty.rows.clear();
  dirty.branches = dirty.head = false;
}

function redraw() {
  if (dirty.scheduled) return;
  dirty.scheduled = true;
  requestAnimationFrame(draw);
  setTimeout(draw, 250);
}

function onEvent(e) {
  const r = state.run;
  if (!r) return;
  if (e.type === "log" && e.step) { onLog(e); return; }
  state.applied.push(e);
  if (state.applied.length > APPLIED_MAX) state.applied.splice(0, state.applied.length - APPLIED_MAX);
  const changed = applyEvent(r, e);
  if (changed.step) dirty.rows.add(changed.step.id);
  dirty.branches ||= changed.branches;
  dirty.head = true;
  redraw();
  if (e.type === "sla_warning" || e.type === "sla_breached") toast(`${e.type.replace("_", " ")}: run ${runId}`, "warn");
  // The Gantt and the DAG are drawn from their own endpoints: they follow every step event.
  if (changed.fetch || (chart && e.step)) refresh();
}

/** A mapped step's page of items arrived (with its counts): redraw its row. */
function itemsLoaded(s, map) {
  const cur = state.run?.steps.find((x) => x.id === s.id);
  if (!cur) return;
  if (map) cur.map = map;
  dirty.rows.add(cur.id);
  redraw();
}

const stepOf = (id) => state.run.steps.find((x) => x.id === id);

async function act(name, extra = {}) {
  const a = ACTIONS[name];
  let body = { ...(a.body || {}), ...extra };
  if (a.lost) {
    const reason = await confirmDialog(`Resolve run ${runId} as ${a.lost}?`,
      `${LOST_EXPLANATION} Resolving ends it as ${a.lost.toUpperCase()} in the audit store; the reason goes to the audit log.`,
      `Resolve as ${a.lost}`, "Leave it");
    if (reason === null) return;
    if (!reason.trim()) { toast("a reason is required to resolve a run whose state was lost", "error"); return; }
    body = { as: a.lost, reason };
  } else if (a.confirm) {
    const reason = await confirmDialog(`Cancel run ${runId}?`,
      "Steps that have not started will not run, running steps are stopped, and completed steps are compensated (rolled back) newest first.",
      "Cancel the run", "Keep running");
    if (reason === null) return;
    body = { ...body, reason: reason || "cancelled from the dashboard" };
  }
  try {
    const res = await api(`/runs/${runId}/${a.path}`, { method: "POST", body });
    toast(res.message);
    if (name === "clone") { window.location.href = `/runs/${res.run_id}`; return; }
    refresh();
  } catch (err) {
    const extraInfo = err instanceof ApiError && err.payload.current_status ? ` (run is ${err.payload.current_status})` : "";
    toast(`${err.message}${extraInfo}`, "error");
  }
}

async function showView(view) {
  state.view = view;
  for (const v of ["timeline", "gantt", "dag"]) $(`#view-${v}`).hidden = v !== view;
  for (const a of $$(".tabs.views a")) a.classList.toggle("on", a.dataset.view === view);
  if (view === "gantt") chart = await import("./gantt.js").then((m) => m.mount($("#gantt"), runId, openStep));
  else if (view === "dag") chart = await import("./dag.js").then((m) => m.mount($("#dag"), runId, openStep));
  else { chart?.dispose?.(); chart = null; }
}

function openStep(stepId, number) {
  history.pushState(null, "", `/runs/${runId}#step-${stepId}`);
  state.expanded.add(stepId);
  if (number) state.offset = Math.floor((number - 1) / boot.stepsPage) * boot.stepsPage;
  showView("timeline").then(async () => {
    await load();
    $(`#step-${CSS.escape(stepId)}`)?.scrollIntoView({ block: "center" });
  });
}

function tick() {
  const d = $("#run-duration");
  if (d && d.dataset.started && !d.dataset.final) d.textContent = duration(now() - parseFloat(d.dataset.started));
  for (const el of $$("#timeline .dur[data-started]")) {
    const started = parseFloat(el.dataset.started);
    if (started) el.textContent = `RUNNING – ${duration(now() - started)}`;
  }
}

export async function init() {
  if (location.hash.startsWith("#step-")) state.expanded.add(decodeURIComponent(location.hash.slice(6)));
  $("#timeline").addEventListener("click", (ev) => {
    const retryFrom = ev.target.closest("button[data-retry-from]");
    if (retryFrom) { act("retry", { from_step: retryFrom.dataset.retryFrom }); return; }
    if (onItemsClick(ev, runId, stepOf, itemsLoaded)) return;
    const head = ev.target.closest(".step-head");
    if (!head) return;
    const id = head.parentElement.dataset.step;
    if (state.expanded.has(id)) state.expanded.delete(id); else state.expanded.add(id);
    renderTimeline(state.run);
    const mapped = stepOf(id);
    if (mapped?.map && state.expanded.has(id)) { loadItems(runId, mapped, (m) => itemsLoaded(mapped, m)); return; }
    if (state.expanded.has(id) && state.stale.has(id)) refresh(); // its output came after the last fetch
  });
  $("#timeline").addEventListener("change", (ev) => { onItemsFilter(ev, runId, stepOf, itemsLoaded); });
  $("#branches").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-group]");
    if (!b) return;
    const g = Number(b.dataset.group);
    if (state.showAllBranches.has(g)) state.showAllBranches.delete(g); else state.showAllBranches.add(g);
    renderBranches(state.run);
  });
  $("#steps-pager").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-page]");
    if (!b) return;
    state.offset = Math.max(0, state.offset + Number(b.dataset.page) * boot.stepsPage);
    load();
  });
  for (const btn of $$("#actions button[data-action]")) btn.addEventListener("click", () => act(btn.dataset.action));
  for (const a of $$(".tabs.views a")) {
    a.addEventListener("click", (ev) => {
      ev.preventDefault();
      history.pushState(null, "", a.getAttribute("href"));
      showView(a.dataset.view);
    });
  }
  const r = await load();
  if (!r) return;
  getLive().followRun(runId, r.seq, onEvent);
  if (state.view !== "timeline") await showView(state.view);
  if (state.expanded.size) $(`#step-${CSS.escape([...state.expanded][0])}`)?.scrollIntoView({ block: "center" });
  setInterval(tick, 1000);
}
