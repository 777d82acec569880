// Outgoing notifications (admins): webhook endpoints (add, with the secret shown once; send a
// test; remove), the delivery log with every attempt, and the replay of dead letters. Every change
// goes through the REST API (/api/v1/notifications), which writes the audit log.
import { api, ApiError } from "./api.js";
import { $, esc, isAdmin, time, toast } from "./util.js";

const EVENTS = ["completed", "failed", "cancelled", "compensation_failed", "sla_warning", "sla_breached"];
const DEFAULT_EVENTS = new Set(["failed", "compensation_failed", "sla_breached"]);
const POLL_MS = 3000;
const opened = new Set(); // deliveries whose attempts are shown

function problem(err) {
  const lines = err instanceof ApiError ? err.details : [];
  return `<div class="error"><b>${esc(err.message)}</b>${lines.length
    ? `<ul>${lines.map((l) => `<li>${esc(l)}</li>`).join("")}</ul>` : ""}</div>`;
}

const names = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

async function drawEndpoints() {
  const { endpoints } = await api("/notifications/endpoints");
  $("#endpoints-table tbody").innerHTML = endpoints.map((e) => `<tr data-endpoint="${esc(e.id)}" data-enabled="${e.enabled ? "1" : ""}">
    <td><code>${esc(e.id)}</code>${e.enabled ? "" : ' <small class="muted">(disabled)</small>'}</td><td class="url">${esc(e.url)}</td><td>${esc(e.events.join(", "))}</td>
    <td>${esc(e.workflows.join(", ") || "all")}</td><td>${esc(e.tags.join(", ") || "any")}</td>
    <td>${esc(e.format)}</td><td>${time(e.created_at)}</td>
    <td>${isAdmin() ? `<button class="test-endpoint" data-endpoint="${esc(e.id)}">Send test</button>
      <button class="toggle-endpoint" data-endpoint="${esc(e.id)}" data-enabled="${e.enabled ? "1" : ""}">${e.enabled ? "Disable" : "Enable"}</button>
      <button class="danger remove-endpoint" data-endpoint="${esc(e.id)}">Remove</button>` : ""}</td>
  </tr>`).join("") || `<tr><td colspan="8" class="muted">No endpoints: nothing is sent.</td></tr>`;
}

async function drawDeliveries() {
  const status = $("#delivery-status").value;
  const { deliveries } = await api(`/notifications/deliveries?limit=200${status ? `&status=${status}` : ""}`);
  const details = await Promise.all(deliveries.filter((d) => opened.has(d.id))
    .map((d) => api(`/notifications/deliveries/${encodeURIComponent(d.id)}`)));
  const attempts = Object.fromEntries(details.map((d) => [d.id, d.attempt_log]));
  $("#deliveries-table tbody").innerHTML = deliveries.map((d) => {
    const last = d.last_error || (d.last_status_code ? `HTTP ${d.last_status_code}` : "—");
    const row = `<tr data-delivery="${esc(d.id)}" data-status="${esc(d.status)}">
      <td><code>${esc(d.id)}</code></td><td><code>${esc(d.endpoint)}</code></td>
      <td><a href="/runs/${encodeURIComponent(d.run)}">${esc(d.run)}</a></td><td>${esc(d.event)}</td>
      <td><span class="status d-${esc(d.status)}">${esc(d.status)}</span></td>
      <td>${d.attempts}/${d.attempt_limit}${d.replays ? ` <small class="muted">(${d.replays} replay${d.replays > 1 ? "s" : ""})</small>` : ""}</td>
      <td>${esc(last.slice(0, 120))}</td><td>${time(d.updated_at)}</td>
      <td><button class="show-attempts" data-delivery="${esc(d.id)}">${opened.has(d.id) ? "Hide" : "Attempts"}</button>
        ${d.status === "dead" && isAdmin() ? `<button class="primary replay" data-delivery="${esc(d.id)}">Replay</button>` : ""}</td>
    </tr>`;
    const log = attempts[d.id];
    if (!log) return row;
    return row + `<tr class="attempts" data-attempts-of="${esc(d.id)}"><td colspan="9"><ol>${log.map((a) =>
      `<li>${time(a.at)} — ${a.status_code ? `HTTP ${a.status_code}` : "no answer"} in ${a.duration.toFixed(2)} s${a.error ? `: ${esc(a.error)}` : ""}</li>`)
      .join("") || "<li class='muted'>not attempted yet</li>"}</ol></td></tr>`;
  }).join("") || `<tr><td colspan="9" class="muted">No deliveries${status ? ` with status ${esc(status)}` : ""}.</td></tr>`;
}

const reload = () => Promise.all([drawEndpoints(), drawDeliveries()]).catch((err) => toast(err.message, "error"));

async function attempt(fn, errorsEl) {
  if (errorsEl) errorsEl.innerHTML = "";
  try {
    await fn();
    return true;
  } catch (err) {
    if (errorsEl) errorsEl.innerHTML = problem(err);
    else toast(err.message, "error");
    return false;
  } finally {
    await reload();
  }
}

export async function init() {
  $("#endpoint-events").innerHTML += EVENTS.map((e) => `<label class="check"><input type="checkbox" name="events"
    value="${e}" ${DEFAULT_EVENTS.has(e) ? "checked" : ""}> ${e}</label>`).join("");
  if (!isAdmin()) {
    for (const el of document.querySelectorAll("#endpoint-form button")) {
      el.disabled = true;
      el.title = "the dashboard is read-only";
    }
  }
  $("#endpoint-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = {
      url: f.url.value.trim(),
      events: Array.from(f.querySelectorAll("input[name=events]:checked")).map((i) => i.value),
      workflows: names(f.workflows.value),
      tags: names(f.tags.value),
      format: f.format.value,
    };
    if (f.secret.value) body.secret = f.secret.value;
    let created = null;
    const ok = await attempt(async () => {
      created = await api("/notifications/endpoints", { method: "POST", body });
    }, $("#endpoint-errors"));
    if (ok) {
      $("#new-secret").hidden = false;
      $("#new-secret-value").textContent = created.secret;
      $("#new-secret").dataset.endpoint = created.id;
      toast(`endpoint ${created.id} added`);
      f.url.value = "";
      f.secret.value = "";
    }
  });
  $("#endpoints-table").addEventListener("click", async (ev) => {
    const test = ev.target.closest("button.test-endpoint");
    if (test) {
      const id = test.dataset.endpoint;
      let res = null;
      await attempt(async () => {
        res = await api(`/notifications/endpoints/${encodeURIComponent(id)}/test`, { method: "POST" });
      });
      if (res) toast(res.error ? `${id}: ${res.error}` : `${id} answered HTTP ${res.status_code}`, res.error ? "error" : "info");
      return;
    }
    const toggle = ev.target.closest("button.toggle-endpoint");
    if (toggle) {
      const id = toggle.dataset.endpoint;
      const enabled = !toggle.dataset.enabled;
      const path = `/notifications/endpoints/${encodeURIComponent(id)}`;
      if (await attempt(() => api(path, { method: "PATCH", body: { enabled } }))) {
        toast(`endpoint ${id} ${enabled ? "enabled" : "disabled"}`);
      }
      return;
    }
    const rm = ev.target.closest("button.remove-endpoint");
    if (!rm) return;
    const id = rm.dataset.endpoint;
    if (!window.confirm(`Remove endpoint ${id}? Its delivery log goes with it.`)) return;
    if (await attempt(() => api(`/notifications/endpoints/${encodeURIComponent(id)}`, { method: "DELETE" }))) {
      toast(`endpoint ${id} removed`);
    }
  });
  $("#deliveries-table").addEventListener("click", async (ev) => {
    const show = ev.target.closest("button.show-attempts");
    if (show) {
      const id = show.dataset.delivery;
      if (opened.has(id)) opened.delete(id); else opened.add(id);
      await reload();
      return;
    }
    const replay = ev.target.closest("button.replay");
    if (!replay) return;
    const id = replay.dataset.delivery;
    if (await attempt(() => api(`/notifications/deliveries/${encodeURIComponent(id)}/replay`, { method: "POST" }))) {
      toast(`replaying ${id}`);
    }
  });
  $("#delivery-status").addEventListener("change", reload);
  await reload();
  setInterval(() => { if (!document.hidden) reload(); }, POLL_MS);
  document.body.dataset.loaded = "1";
}
