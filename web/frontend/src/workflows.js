// Workflows: the registered definitions with their versions, YAML and DAG; a "run with inputs"
// form (validation errors shown per field) and, for admins, registering a new version.
import { api, ApiError } from "./api.js";
import { $, boot, canOperate, esc, isAdmin, toast } from "./util.js";

let current = boot.workflowId || null;

function errorsHtml(err) {
  const lines = err instanceof ApiError ? err.details : [];
  return `<div class="error" id="form-errors"><b>${esc(err.message)}</b>${lines.length
    ? `<ul>${lines.map((l) => `<li>${esc(l)}</li>`).join("")}</ul>` : ""}</div>`;
}

async function list() {
  const { workflows } = await api("/workflows");
  $("#workflow-list").innerHTML = workflows.map((w) => `<li class="${w.id === current ? "on" : ""}">
    <a href="/workflows/${esc(w.id)}" data-wf="${esc(w.id)}"><b>${esc(w.name || w.id)}</b></a>
    <small class="muted">${esc(w.id)} · v${esc(w.latest)} · ${w.steps} steps · ${esc(w.mode)}</small></li>`).join("") ||
    `<li class="muted">No workflow registered yet.</li>`;
  $("#new-workflow").hidden = !isAdmin();
  if (!current && workflows.length) current = workflows[0].id;
}

async function show(id, version) {
  current = id;
  const w = await api(`/workflows/${encodeURIComponent(id)}`, { query: { version } });
  const el = $("#workflow-detail");
  el.innerHTML = `<h2>${esc(w.name || w.id)} <small class="muted">${esc(w.id)}</small></h2>
    <p>${esc(w.description || "")}</p>
    <p class="muted">mode ${esc(w.mode)} · ${w.steps} steps · SLA ${w.sla_seconds ?? "none"} ·
      version <select id="versions">${w.versions.map((v) => `<option ${v === w.version ? "selected" : ""}>${esc(v)}</option>`).join("")}</select>
      ${w.tags.map((t) => `<span class="tag">${esc(t)}</span>`).join("")}</p>
    <form id="run-form" class="card">
      <h3>Run with inputs</h3>
      <label>Inputs (JSON)<textarea name="inputs" rows="5" spellcheck="false">${esc(JSON.stringify(w.inputs || {}, null, 2))}</textarea></label>
      <label>Priority <select name="priority"><option value="">default</option><option>high</option><option>normal</option><option>low</option></select></label>
      <label>Tags <input name="tags" placeholder="comma,separated"></label>
      <button type="submit" class="primary" ${canOperate() ? "" : "disabled title='needs the operator role'"}>Run</button>
      <div id="run-errors"></div>
    </form>
    <div id="wf-concurrency"></div>
    <div id="wf-dag"></div>
    <details open><summary>YAML</summary><pre id="wf-yaml">${esc(w.yaml)}</pre></details>
    ${isAdmin() ? `<form id="register-form" class="card"><h3>Register a new version</h3>
      <textarea name="yaml" rows="14" spellcheck="false">${esc(w.yaml)}</textarea>
      <button type="submit">Validate and register</button><div id="register-errors"></div></form>` : ""}`;
  $("#versions").addEventListener("change", (ev) => show(id, ev.target.value));
  $("#run-form").addEventListener("submit", (ev) => submit(ev, w));
  $("#register-form")?.addEventListener("submit", (ev) => register(ev, id));
  const { drawDag } = await import("./dag.js");
  drawDag($("#wf-dag"), w.graph, null);
  await concurrency(id);
  await list();
}

// Its concurrency limit and, per key, the slots in use and the runs waiting for one.
async function concurrency(id) {
  const c = await api(`/workflows/${encodeURIComponent(id)}/concurrency`);
  const el = $("#wf-concurrency");
  if (!el) return;
  if (!c.concurrency && !c.groups.length) { el.innerHTML = ""; return; }
  const limit = c.concurrency
    ? `limit ${c.concurrency.limit} per ${c.concurrency.key ? `key <code>${esc(c.concurrency.key)}</code>` : "workflow"} · ${esc(c.concurrency.strategy || "queue")}`
    : "";
  el.innerHTML = `<div class="card" id="concurrency-slots"><h3>Concurrency</h3><p class="muted">${limit}</p>
    ${c.groups.length ? `<table class="grid slots"><thead><tr><th>Key</th><th>Slots in use</th><th>Waiting</th><th>Runs holding a slot</th></tr></thead><tbody>
    ${c.groups.map((g) => `<tr data-key="${esc(g.key)}"><td>${esc(g.key || c.workflow)}</td><td>${g.in_use} / ${g.limit}</td><td>${g.waiting}</td>
      <td>${g.active.map((r) => `<a href="/runs/${esc(r)}">${esc(r)}</a>`).join(" ")}</td></tr>`).join("")}</tbody></table>`
    : `<p class="muted">no slot in use</p>`}</div>`;
}

async function submit(ev, w) {
  ev.preventDefault();
  const form = ev.target;
  const out = $("#run-errors");
  let inputs;
  try {
    inputs = JSON.parse(form.inputs.value || "{}");
  } catch (err) {
    out.innerHTML = `<div class="error" id="form-errors"><b>inputs: not valid JSON</b> (${esc(err.message)})</div>`;
    return;
  }
  const tags = form.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
  try {
    const run = await api("/runs", { method: "POST", body: { workflow: w.id, version: w.version, inputs,
      priority: form.priority.value || null, tags } });
    window.location.href = `/runs/${run.id}`;
  } catch (err) {
    out.innerHTML = errorsHtml(err);
  }
}

async function register(ev, id) {
  ev.preventDefault();
  const out = $("#register-errors");
  try {
    const w = await api(`/workflows/${encodeURIComponent(id)}`, { method: "PUT", body: { yaml: ev.target.yaml.value } });
    toast(`registered ${w.id} version ${w.version}`);
    await show(w.id, w.version);
  } catch (err) {
    out.innerHTML = errorsHtml(err);
  }
}

export async function init() {
  await list();
  $("#new-workflow").addEventListener("click", () => {
    $("#workflow-detail").innerHTML = `<form id="register-form" class="card"><h3>Register a workflow</h3>
      <label>Workflow id <input name="id" required pattern="[a-z0-9][a-z0-9_.-]*"></label>
      <textarea name="yaml" rows="14" spellcheck="false">mode: sequential\nsteps:\n  - id: hello\n    plugin: builtin\n    method: echo\n    params: {message: hi}\n</textarea>
      <button type="submit">Validate and register</button><div id="register-errors"></div></form>`;
    $("#register-form").addEventListener("submit", (ev) => register(ev, ev.target.id.value));
  });
  if (current) await show(current);
}
