// Users and API tokens (admins): list, create, change role, grant or withdraw submit_inline,
// disable, delete users; create (shown once) and revoke tokens; lift login lockouts. Every change
// goes through the REST API, which writes the audit log.
import { api, ApiError } from "./api.js";
import { $, boot, esc, isAdmin, time, toast } from "./util.js";

const ROLES = ["viewer", "operator", "admin", "publisher"];

function problem(err) {
  const lines = err instanceof ApiError ? err.details : [];
  return `<div class="error"><b>${esc(err.message)}</b>${lines.length
    ? `<ul>${lines.map((l) => `<li>${esc(l)}</li>`).join("")}</ul>` : ""}</div>`;
}

async function loadUsers() {
  const users = await api("/users");
  return () => {
    const me = boot.user.name;
    const can = isAdmin();
    $("#users-table tbody").innerHTML = users.map((u) => `<tr data-user="${esc(u.name)}">
      <td><b>${esc(u.name)}</b>${u.name === me ? ' <small class="muted">(you)</small>' : ""}</td>
      <td><select class="role" data-user="${esc(u.name)}" ${can && u.name !== me ? "" : "disabled"}
        title="${u.name === me ? "you cannot change your own role" : ""}">${ROLES.map((r) =>
        `<option ${r === u.role ? "selected" : ""}>${r}</option>`).join("")}</select></td>
      <td class="perms">${permissionCell(u, can)}</td>
      <td>${time(u.created_at)}</td>
      <td>${can && u.name !== me ? `<button class="toggle-disabled" data-user="${esc(u.name)}"
        data-disabled="${u.disabled ? "1" : ""}">${u.disabled ? "Enable" : "Disable"}</button>
        <button class="danger delete-user" data-user="${esc(u.name)}">Delete</button>` : ""}</td>
    </tr>`).join("");
    // Keep the user picked for a token across the reload after every change (it may land later).
    const picked = $("#token-user").value;
    const keep = users.some((u) => u.name === picked) ? picked : me;
    $("#token-user").innerHTML = users.map((u) => `<option ${u.name === keep ? "selected" : ""}>${esc(u.name)}</option>`).join("");
  };
}

function permissionCell(u, can) {
  if (u.role === "admin") return '<span class="muted" title="admins have every permission">all</span>';
  const has = (u.granted || []).includes("submit_inline");
  const label = has ? "submit_inline ✓" : "registered workflows only";
  if (!can) return esc(label);
  return `${esc(label)} <button class="toggle-inline" data-user="${esc(u.name)}" data-granted="${has ? "1" : ""}"
    title="${has ? "withdraw: the user may run registered workflows only" : "let the user submit inline definitions (code of their choosing)"}">${has ? "Withdraw" : "Allow inline"}</button>`;
}

async function loadLockouts() {
  const { lockouts } = await api("/auth/lockouts");
  return () => {
    $("#lockouts-table tbody").innerHTML = lockouts.map((l) => `<tr data-lockout="${esc(l.subject)}">
      <td>${l.scope === "user" ? "account" : "address"} <code>${esc(l.subject)}</code></td>
      <td>${l.failures}</td><td>${l.retry_after} s</td>
      <td>${isAdmin() ? `<button class="unlock" data-scope="${esc(l.scope)}" data-subject="${esc(l.subject)}">Unlock</button>` : ""}</td>
    </tr>`).join("") || `<tr><td colspan="4" class="muted">Nobody is locked out.</td></tr>`;
  };
}

async function loadTokens() {
  const tokens = await api("/auth/tokens");
  return () => {
    $("#tokens-table tbody").innerHTML = tokens.map((t) => `<tr data-token="${esc(t.id)}">
      <td><code>${esc(t.id)}</code></td><td>${esc(t.username)}</td><td>${esc(t.name)}</td>
      <td>${time(t.created_at)}</td><td>${t.last_used_at ? time(t.last_used_at) : "never"}</td>
      <td>${isAdmin() ? `<button class="danger revoke-token" data-token="${esc(t.id)}">Revoke</button>` : ""}</td>
    </tr>`).join("") || `<tr><td colspan="6" class="muted">No tokens.</td></tr>`;
  };
}

async function loadAudit() {
  const { actions } = await api("/audit/users");
  return () => {
    $("#audit-list").innerHTML = actions.map((a) => `<li>${time(a.ts)} <b>${esc(a.actor)}</b> ${esc(a.action)}
      ${esc(a.target_type)} <code>${esc(a.target_id)}</code> — ${esc(a.outcome)}
      ${a.detail ? `<small class="muted">${esc(JSON.stringify(a.detail))}</small>` : ""}</li>`).join("") ||
      "<li class='muted'>none yet</li>";
  };
}

// Fetch every section, then draw them all at once: a change shows in the tables and in the audit
// list together, never one before the other.
const reload = async () => {
  const draws = await Promise.all([loadUsers(), loadTokens(), loadLockouts(), loadAudit()]);
  for (const draw of draws) draw();
};

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
    const inline = ev.target.closest("button.toggle-inline");
    if (inline) {
      const name = inline.dataset.user;
      const grant = !inline.dataset.granted;
      if (grant && !window.confirm(`Let ${name} submit inline definitions? An inline definition runs code of the ` +
                                   "sender's choosing on the workers.")) return;
      const path = `/users/${encodeURIComponent(name)}/permissions/submit_inline`;
      if (await attempt(() => api(path, { method: grant ? "PUT" : "DELETE" }))) {
        toast(grant ? `${name} may submit inline definitions` : `${name} runs registered workflows only`);
      }
      return;
    }
    const dis = ev.target.closest("button.toggle-disabled");
    if (dis) {
      const name = dis.dataset.user;
      const disable = !dis.dataset.disabled;
      if (disable && !window.confirm(`Disable ${name}? Their sessions and API tokens stop working at once.`)) return;
      if (await attempt(() => api(`/users/${encodeURIComponent(name)}`, { method: "PATCH", body: { disabled: disable } }))) {
        toast(`${name} ${disable ? "disabled" : "enabled"}`);
      }
      return;
    }
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
  $("#lockouts-table").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button.unlock");
    if (!b) return;
    const key = b.dataset.scope === "user" ? "username" : "address";
    if (await attempt(() => api("/auth/lockouts/unlock", { method: "POST", body: { [key]: b.dataset.subject } }))) {
      toast(`${b.dataset.subject} unlocked`);
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
