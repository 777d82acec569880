// One task (Flower's task page): args, kwargs, result, every event time, family links and the
// canvasflow run and step it belongs to; operators revoke or terminate it, retry a failed step
// (the run's retry from that step) or send a plain Celery task again with the same arguments.
import { api, ApiError } from "./api.js";
import { $, $$, boot, confirmDialog, duration, esc, FINAL, refusal, statusBadge, taskState, time, toast } from "./util.js";
import { workerUrl } from "./workers.js";

const taskId = boot.taskId;
const UNFINISHED = new Set(["PENDING", "RECEIVED", "STARTED", "RETRY"]);
const RESENDABLE = new Set(["FAILURE", "REVOKED", "REJECTED", "SUCCESS"]);
const EVENTS = ["sent", "received", "started", "retried", "succeeded", "failed", "revoked", "rejected"];
const state = { t: null, run: null, step: null, timer: null };

const taskLink = (id) => (id ? `<a href="/tasks/${esc(id)}"><code>${esc(id)}</code></a>` : `<span class="muted">–</span>`);

/** A repr from the task's events, shown as it came (Celery sends reprs, not JSON). */
const repr = (v) => (v == null || v === "" ? `<span class="muted">none</span>` : `<pre class="repr">${esc(v)}</pre>`);

function renderTask(t) {
  $("#task-name").textContent = t.name || "?";
  $("#task-state").outerHTML = `<span id="task-state">${taskState(t.state)}</span>`;
  $("#task-meta").innerHTML = [
    `worker ${t.worker ? `<a id="task-worker" href="${workerUrl(t.worker)}">${esc(t.worker)}</a>` : "–"}`,
    `queue ${esc(t.queue || "–")}`, `retries <span id="task-retries">${esc(t.retries || 0)}</span>`,
    `runtime <span id="task-runtime">${t.runtime != null ? duration(t.runtime) : "–"}</span>`,
    t.eta ? `eta ${esc(t.eta)}` : "", t.expires ? `expires ${esc(t.expires)}` : "",
  ].filter(Boolean).map((m) => `<span>${m}</span>`).join("");
  const first = t.sent_at || t.ts;
  $("#task-times tbody").innerHTML = EVENTS.map((e) => {
    const ts = t[`${e}_at`];
    return `<tr id="time-${e}" data-ts="${ts ?? ""}"><th>${e}</th><td>${ts ? `${time(ts)} <small class="muted">${
      new Date(ts * 1000).toISOString()}${first && ts !== first ? ` · +${duration(ts - first)}` : ""}</small>` : `<span class="muted">–</span>`}</td></tr>`;
  }).join("") + `<tr id="time-first"><th>first seen</th><td>${time(t.ts)}</td></tr><tr><th>state since</th><td>${time(t.state_ts)}</td></tr>`;
  const kids = t.children || [];
  $("#task-family").innerHTML = `<ul class="family">
    <li>parent: <span id="task-parent">${taskLink(t.parent_id)}</span></li>
    <li>root: <span id="task-root">${t.root_id === t.uuid ? "this task" : taskLink(t.root_id)}</span></li>
    <li>children (${kids.length}): <span id="task-children">${kids.map(taskLink).join(", ") || "none"}</span></li></ul>`;
  $("#task-args").innerHTML = repr(t.args);
  $("#task-kwargs").innerHTML = repr(t.kwargs);
  $("#task-outcome").innerHTML = `${t.result != null ? `<h4>result</h4>${repr(t.result)}` : ""}
    ${t.exception ? `<h4>exception</h4><pre class="error" id="task-exception">${esc(t.exception)}</pre>` : ""}
    ${t.traceback ? `<details open><summary>traceback</summary><pre id="task-traceback">${esc(t.traceback)}</pre></details>` : ""}
    ${t.result == null && !t.exception ? `<p class="muted">no result yet${t.run_id ? " (a step keeps its output in the run: see the step)" : ""}</p>` : ""}`;
}

function renderRun(t) {
  const el = $("#task-run");
  if (!t.run_id) { el.innerHTML = `<span class="muted">not part of a canvasflow run</span>`; return; }
  const stepLink = t.step_id ? ` step <a id="task-step-link" href="/runs/${esc(t.run_id)}#step-${esc(t.step_id)}"><b>${esc(t.step_id)}</b></a>` : "";
  if (state.run === undefined) {
    el.innerHTML = `run <a id="task-run-link" href="/runs/${esc(t.run_id)}"><code>${esc(t.run_id)}</code></a>${stepLink} <span class="muted">(the run is no longer in the history)</span>`;
    return;
  }
  const r = state.run;
  el.innerHTML = `canvasflow run <a id="task-run-link" href="/runs/${esc(t.run_id)}"><code>${esc(t.run_id)}</code></a>
    ${r ? `<span id="run-status">${statusBadge(r.status)}</span> (${esc(r.workflow.name || r.workflow.id)})` : ""}
    ${stepLink}${state.step ? ` <span id="step-status">${statusBadge(state.step.status)}</span>` : ""}
    ${state.step && state.step.status === "FAILED" && t.state === "SUCCESS" ? `<div class="hint">The Celery task succeeded: a canvasflow step records its failure as data, so the step's status is what counts.</div>` : ""}
    ${r?.error ? `<div class="error">${esc(r.failed_step ? `step ${r.failed_step}: ` : "")}${esc(r.error)}</div>` : ""}`;
}

function renderActions(t) {
  const why = refusal("revoke, retry or send tasks");
  const show = {
    "retry-step": Boolean(t.run_id && t.step_id && state.run?.can_retry),
    resend: !t.run_id && RESENDABLE.has(t.state) && Boolean(t.resend) && t.name,
    revoke: UNFINISHED.has(t.state),
    terminate: UNFINISHED.has(t.state),
  };
  for (const btn of $$("#task-actions button")) {
    btn.hidden = !show[btn.dataset.taskAction];
    btn.disabled = Boolean(why);
    btn.title = why;
  }
  const rs = $("#task-actions button[data-task-action='retry-step']");
  rs.textContent = state.step?.status === "FAILED" ? `Retry the run from failed step ${t.step_id}` : `Retry the run from step ${t.step_id}`;
  const notes = [];
  if (t.run_id && t.step_id && UNFINISHED.has(t.state)) notes.push("For a step, cancelling its run (run page) is usually better than revoking: compensations then run.");
  if (t.run_id && t.step_id && state.run && !state.run.can_retry && !FINAL.has(state.run.status)) notes.push(`The run is ${state.run.status}: it can be retried once it has finished.`);
  if (!t.run_id && RESENDABLE.has(t.state) && !t.resend) notes.push("Its arguments were cut short by Celery or are not plain values: it cannot be sent again from here.");
  $("#task-actions-note").innerHTML = [...notes, ...(state.sent ? [`Sent again as ${taskLink(state.sent)}.`] : [])].join(" ");
  const banner = $("#controls-refused");
  banner.hidden = !why || !Object.values(show).some(Boolean);
  banner.textContent = why ? `Actions are off: ${why}` : "";
}

async function loadRun(t) {
  if (!t.run_id) return;
  try {
    const g = await api(`/runs/${encodeURIComponent(t.run_id)}/graph`);
    state.run = g.run;
    state.step = g.nodes.find((n) => n.id === t.step_id) || null;
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) state.run = undefined;
    else throw err;
  }
}

async function load() {
  clearTimeout(state.timer);
  try {
    const t = await api(`/inspect/tasks/${encodeURIComponent(taskId)}`);
    state.t = t;
    await loadRun(t);
    renderTask(t);
    renderRun(t);
    renderActions(t);
    document.body.dataset.loaded = String(Date.now());
  } catch (err) {
    toast(`Could not read the task: ${err.message}`, "error");
  } finally {
    const live = UNFINISHED.has(state.t?.state) || (state.run && !FINAL.has(state.run.status) && state.run.status !== "COMPENSATION_FAILED");
    state.timer = setTimeout(load, live ? 1500 : 10000);
  }
}

async function act(action) {
  const t = state.t;
  try {
    if (action === "retry-step") {
      const res = await api(`/runs/${encodeURIComponent(t.run_id)}/retry`, { method: "POST", body: { from_step: t.step_id, reason: `retried from task ${t.uuid}` } });
      toast(`run ${t.run_id}: ${res.message}`);
    } else if (action === "resend") {
      const res = await api("/inspect/tasks/send", { method: "POST", body: { name: t.name, ...t.resend, queue: t.queue || null, reason: `sent again from task ${t.uuid}` } });
      state.sent = res.task;
      toast(`sent ${t.name} again as ${res.task}`);
    } else {
      let reason = null;
      if (action === "terminate") {
        reason = await confirmDialog(`Terminate task ${t.uuid}?`,
          "The worker kills the process running it (SIGTERM): the task stops half-way. If it is a canvasflow step, cancel its run instead so that compensations run.", "Terminate");
        if (reason === null) return;
      }
      await api(`/inspect/tasks/${encodeURIComponent(t.uuid)}/${action}`, { method: "POST", body: { reason: reason || null } });
      toast(`${action} sent for ${t.uuid}: a worker that has it discards it${action === "terminate" ? " or kills it" : ""}`);
    }
  } catch (err) {
    const extra = err instanceof ApiError && err.payload.current_status ? ` (run is ${err.payload.current_status})` : "";
    toast(`${err.message}${extra}`, "error");
  }
  load();
}

export async function init() {
  $("#task-actions").addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-task-action]");
    if (btn && !btn.disabled) act(btn.dataset.taskAction);
  });
  await load();
}
