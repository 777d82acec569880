// Users and API tokens (admins): list, create, change role, delete users; create (shown once)
// and revoke tokens. Every change goes through the REST API, which writes the audit log.
import { api, ApiError } from "./api.js";
import { $, boot, esc, isAdmin, time, toast } from "./util.js";

const ROLES = ["viewer", "operator", "admin"];

function problem(err) {
  const lines = err instanceof ApiError ? err.details : [];
  return `<div class="error"><b>${esc(err.message)}</b>${lines.length
    ? `<ul>${lines.map((l) => `<li>${esc(l)}</li>`).join("")}</ul>` : ""}</div>`;
}

async function loadUsers() {
  const users = await api("/users");
  const me = boot.user.name;
  const can = isAdmin();
  $("#users-table tbody").innerHTML = users.map((u) => `<tr data-user="${esc(u.name)}">
    <td><b>${esc(u.name)}</b>${u.name === me ? ' <small class="muted">(you)</small>' : ""}</td>
    <td><select class="role" data-user="${esc(u.name)}" ${can && u.name !== me ? "" : "disabled"}
      title="${u.name === me ? "you cannot change your own role" : ""}">${ROLES.map((r) =>
      `<option ${r === u.role ? "selected" : ""}>${r}</option>`).join("")}</select></td>
    <td>${time(u.created_at)}</td>
    <td>${can && u.name !== me ? `<button class="danger delete-user" data-user="${esc(u.name)}">Delete</button>` : ""}</td>
  </tr>`).join("");
  // Keep the user picked for a token across the reload after every change (it may land later).
  const picked = $("#token-user").value;
  const keep = users.some((u) => u.name === picked) ? picked : me;
  $("#token-user").innerHTML = users.map((u) => `<option ${u.name === keep ? "selected" : ""}>${esc(u.name)}</option>`).join("");
}

async function loadTokens() {
  const tokens = await api("/auth/tokens");
  $("#tokens-table tbody").innerHTML = tokens.map((t) => `<tr data-token="${esc(t.id)}">
    <td><code>${esc(t.id)}</code></td><td>${esc(t.username)}</td><td>${esc(t.name)}</td>
    <td>${time(t.created_at)}</td><td>${t.last_used_at ? time(t.last_used_at) : "never"}</td>
    <td>${isAdmin() ? `<button class="danger revoke-token" data-token="${esc(t.id)}">Revoke</button>` : ""}</td>
  </tr>`).join("") || `<tr><td colspan="6" class="muted">No tokens.</td></tr>`;
}

async function loadAudit() {
  const { actions } = await api("/audit/users");
  $("#audit-list").innerHTML = actions.map((a) => `<li>${time(a.ts)} <b>${esc(a.actor)}</b> ${esc(a.action)}
    ${esc(a.target_type)} <code>${esc(a.target_id)}</code> — ${esc(a.outcome)}
    ${a.detail ? `<small class="muted">${esc(JSON.stringify(a.detail))}</small>` : ""}</li>`).join("") ||
    "<li class='muted'>none yet</li>";
}

const reload = () => Promise.all([loadUsers(), loadTokens(), loadAudit()]);

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
    await reload().catch((err) => toast(err.message, "error"));
  }
}

export async function init() {
  if (boot.readOnly) {
    for (const el of document.querySelectorAll("#user-form button, #token-form button")) {
      el.disabled = true;
      el.title = "the dashboard is read-only";
    }
  }
  $("#user-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = { name: f.name.value.trim(), password: f.password.value, role: f.role.value };
    if (await attempt(() => api("/users", { method: "POST", body }), $("#user-errors"))) {
      toast(`user ${body.name} added as ${body.role}`);
      f.reset();
    }
  });
  $("#users-table").addEventListener("change", async (ev) => {
    const sel = ev.target.closest("select.role");
    if (!sel) return;
    const name = sel.dataset.user;
    if (await attempt(() => api(`/users/${encodeURIComponent(name)}`, { method: "PATCH", body: { role: sel.value } }))) {
      toast(`${name} is now ${sel.value}`);
    }
  });
  $("#users-table").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button.delete-user");
    if (!b) return;
    const name = b.dataset.user;
    if (!window.confirm(`Delete user ${name}? Their API tokens stop working at once.`)) return;
    if (await attempt(() => api(`/users/${encodeURIComponent(name)}`, { method: "DELETE" }))) toast(`user ${name} deleted`);
  });
  $("#token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = { username: f.username.value, name: f.name.value.trim() || "api" };
    let created = null;
    if (await attempt(async () => { created = await api("/auth/tokens", { method: "POST", body }); }, $("#token-errors"))) {
      $("#new-token").hidden = false;
      $("#new-token-value").textContent = created.token;
      $("#new-token").dataset.token = created.id;
    }
  });
  $("#tokens-table").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button.revoke-token");
    if (!b) return;
    const id = b.dataset.token;
    if (!window.confirm(`Revoke token ${id}? Scripts using it get 401 at once.`)) return;
    if (await attempt(() => api(`/auth/tokens/${encodeURIComponent(id)}`, { method: "DELETE" }))) toast(`token ${id} revoked`);
  });
  await reload();
  document.body.dataset.loaded = "1";
}
