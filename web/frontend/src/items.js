// A mapped step on the run page (issue 15): ONE row with its items' counts by status and a bar
// of their progress; expanded, its items a page at a time (server-side paging and a status
// filter: 10,000 items stay usable), each item openable like a step (input, output, attempts,
// logs). Items are read from /runs/{id}/steps/{step}/items; counts come with the run detail
// (`map: {total, counts}`) and with every page.
import { api } from "./api.js";
import { duration, esc, json, statusBadge, time, toast } from "./util.js";

export const PAGE = 50;
const SETTLED = ["COMPLETED", "FAILED", "SKIPPED", "CANCELLED", "COMPENSATED"];
const ORDER = ["COMPLETED", "FAILED", "RUNNING", "RETRYING", "PENDING", "CANCELLED", "SKIPPED", "COMPENSATING", "COMPENSATED"];
const views = new Map(); // step id -> {status, offset, page, open, detail, loading, error}

function view(stepId) {
  let v = views.get(stepId);
  if (!v) { v = { status: "", offset: 0, page: null, open: null, detail: null, loading: false, error: null }; views.set(stepId, v); }
  return v;
}

/** The counts as badges and the bar of settled items (completed in green, failed in red). */
export function mapHead(map) {
  const c = map.counts || {};
  const total = map.total || 0;
  const parts = ORDER.filter((s) => c[s]).map((s) => `<span class="map-count s-${s}" data-status="${s}">${c[s].toLocaleString()} ${s}</span>`);
  const settled = SETTLED.reduce((n, s) => n + (c[s] || 0), 0);
  const pct = total ? (100 * settled) / total : 100;
  const ok = total ? (100 * (c.COMPLETED || 0)) / total : 0;
  const bad = total ? (100 * (c.FAILED || 0)) / total : 0;
  return `<span class="map-badge" title="a mapped step: one item per element">map ${(c.COMPLETED || 0).toLocaleString()}/${total.toLocaleString()}</span>
    <span class="map-counts">${parts.join(" · ") || "<span class='muted'>not expanded yet</span>"}</span>
    <div class="progress map-bar" data-percent="${pct.toFixed(1)}" data-total="${total}">
      <div class="bar s-COMPLETED" style="width:${ok}%"></div><div class="bar s-FAILED" style="width:${bad}%;position:absolute;left:${ok}%;top:0"></div>
      <span>${settled.toLocaleString()}/${total.toLocaleString()} items (${Math.round(pct)}%)</span></div>`;
}

function itemRow(stepId, it, open) {
  const detail = open ? itemBody(view(stepId).detail) : "";
  return `<li class="item s-${esc(it.status)} ${open ? "open" : ""}" data-item="${it.index}" data-status="${esc(it.status)}">
    <div class="item-head" role="button" tabindex="0"><span class="num">[${it.index}]</span> ${statusBadge(it.status)}
      ${it.attempts > 1 ? `<span class="retries">attempt ${it.attempts}</span>` : ""}
      <span class="when">${it.started_at ? time(it.started_at) : ""}</span>
      <span class="dur">${it.duration != null ? duration(it.duration) : ""}</span>
      ${it.error ? `<span class="error-line">${esc(String(it.error).slice(0, 120))}</span>` : ""}</div>${detail}</li>`;
}

function itemBody(d) {
  if (!d) return `<div class="item-body muted">loading…</div>`;
  const attempts = (d.history || []).map((a) => `<li class="attempt s-${esc(a.status)}">attempt ${a.attempt}: ${statusBadge(a.status)}
    ${a.started_at ? time(a.started_at) : ""} ${a.duration != null ? `(${duration(a.duration)})` : ""}
    ${a.worker ? `<small class="muted">on ${esc(a.worker)}</small>` : ""}${a.error ? `<div class="error">${esc(a.error)}</div>` : ""}</li>`).join("");
  const logs = (d.logs || []).map((l) => `<li class="log l-${esc(l.level)}"><small>${time(l.ts)}</small> <b>${esc(l.level)}</b> <span class="msg">${esc(l.message)}</span></li>`).join("");
  return `<div class="item-body" data-item-id="${esc(d.id)}">
    <div class="cols"><div class="item-input"><h4>Input</h4>${json(d.input)}</div><div class="item-output"><h4>Output</h4>${json(d.output)}</div></div>
    ${d.error ? `<h4>Error</h4><pre class="error">${esc(d.error)}</pre>` : ""}
    ${d.traceback ? `<details><summary>Traceback</summary><pre>${esc(d.traceback)}</pre></details>` : ""}
    <h4>Attempts</h4><ol class="attempts">${attempts || "<li class='muted'>none yet</li>"}</ol>
    <h4>Logs</h4><ul class="logs">${logs || "<li class='muted'>none</li>"}</ul></div>`;
}

/** The expanded mapped step: the status filter, the pager and the page of items. */
export function mapBody(s) {
  const v = view(s.id);
  const counts = s.map?.counts || {};
  const options = ["", ...ORDER.filter((st) => counts[st] || st === v.status)].map((st) =>
    `<option value="${st}" ${st === v.status ? "selected" : ""}>${st ? `${st} (${(counts[st] || 0).toLocaleString()})` : "all statuses"}</option>`).join("");
  const p = v.page;
  const total = p ? p.total : 0;
  const from = p && p.items.length ? v.offset + 1 : 0;
  const to = p ? v.offset + p.items.length : 0;
  const pager = `<div class="items-pager">
    <label>items <select class="items-status" data-step="${esc(s.id)}">${options}</select></label>
    <button data-items-page="-1" data-step="${esc(s.id)}" ${v.offset <= 0 ? "disabled" : ""}>‹ Previous</button>
    <span class="items-range">${p ? `${from.toLocaleString()}–${to.toLocaleString()} of ${total.toLocaleString()}` : "loading…"}</span>
    <button data-items-page="1" data-step="${esc(s.id)}" ${!p || to >= total ? "disabled" : ""}>Next ›</button></div>`;
  const list = p ? p.items.map((it) => itemRow(s.id, it, v.open === it.index)).join("") : "";
  return `<div class="step-body map-body" data-step="${esc(s.id)}">${pager}
    ${v.error ? `<p class="error">${esc(v.error)}</p>` : ""}
    <ul class="items" data-step="${esc(s.id)}">${list || (p ? "<li class='muted'>no items</li>" : "")}</ul>
    ${s.error ? `<h4>Error</h4><pre class="error">${esc(s.error)}</pre>` : ""}</div>`;
}

/** Fetch the step's current page (and its counts); `done(map)` redraws the row. */
export async function loadItems(runId, s, done) {
  const v = view(s.id);
  if (v.loading) { v.again = true; return; }
  v.loading = true;
  try {
    const page = await api(`/runs/${runId}/steps/${encodeURIComponent(s.id)}/items`,
      { query: { status: v.status, offset: v.offset, limit: PAGE } });
    v.page = page;
    v.error = null;
    if (v.open != null && !page.items.some((it) => it.index === v.open)) { v.open = null; v.detail = null; }
    done(page.map);
  } catch (err) {
    v.error = err.message;
    done(null);
  } finally {
    v.loading = false;
    if (v.again) { v.again = false; loadItems(runId, s, done); }
  }
}

async function openItem(runId, stepId, index, done) {
  const v = view(stepId);
  if (v.open === index) { v.open = null; v.detail = null; done(null); return; }
  v.open = index;
  v.detail = null;
  done(null);
  try {
    v.detail = await api(`/runs/${runId}/steps/${encodeURIComponent(stepId)}/items/${index}`);
  } catch (err) {
    toast(err.message, "error");
    v.open = null;
  }
  done(null);
}

/** A click inside an expanded mapped step; true when it was one of ours. */
export function onItemsClick(ev, runId, stepOf, done) {
  const pageBtn = ev.target.closest("button[data-items-page]");
  if (pageBtn) {
    const s = stepOf(pageBtn.dataset.step);
    const v = view(s.id);
    v.offset = Math.max(0, v.offset + Number(pageBtn.dataset.itemsPage) * PAGE);
    loadItems(runId, s, (m) => done(s, m));
    return true;
  }
  const head = ev.target.closest(".item-head");
  if (head) {
    const li = head.parentElement;
    const s = stepOf(li.closest("ul.items").dataset.step);
    openItem(runId, s.id, Number(li.dataset.item), () => done(s, null));
    return true;
  }
  return Boolean(ev.target.closest(".map-body"));
}

/** The status filter changed: back to its first page. */
export function onItemsFilter(ev, runId, stepOf, done) {
  const sel = ev.target.closest("select.items-status");
  if (!sel) return false;
  const s = stepOf(sel.dataset.step);
  const v = view(s.id);
  v.status = sel.value;
  v.offset = 0;
  loadItems(runId, s, (m) => done(s, m));
  return true;
}

export const hasPage = (stepId) => Boolean(views.get(stepId)?.page);
