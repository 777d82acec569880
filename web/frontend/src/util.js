// Formatting and DOM helpers shared by every page.

export const boot = JSON.parse(document.getElementById("cf-boot")?.textContent || "{}");

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

// Server time minus browser time (seconds), set from the Socket.IO hello; durations tick with it.
let clockOffset = 0;
export const setServerTime = (t) => { clockOffset = t - Date.now() / 1000; };
export const now = () => Date.now() / 1000 + clockOffset;

/** 0.4s, 12s, 3:05, 1:02:03 — a step over an hour shows hours. */
export function duration(seconds) {
  if (seconds == null || Number.isNaN(seconds)) return "–";
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.round(s)}s`;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
}

export function time(ts) {
  if (!ts) return "–";
  const d = new Date(ts * 1000);
  const today = new Date();
  const t = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return d.toDateString() === today.toDateString() ? t : `${d.toLocaleDateString()} ${t}`;
}

// Glyphs every DejaVu/Liberation install has (no emoji font needed).
export const ICONS = {
  PENDING: "○", RUNNING: "◔", RETRYING: "↻", COMPLETED: "✓", FAILED: "✗", SKIPPED: "↷",
  CANCELLED: "⊘", COMPENSATING: "↺", COMPENSATED: "↺", PAUSING: "‖", PAUSED: "‖",
  CANCELLING: "⊘", COMPENSATION_FAILED: "✗",
};
export const statusBadge = (s) => `<span class="status s-${esc(s)}" data-status="${esc(s)}">${ICONS[s] || ""} ${esc(s)}</span>`;

export const FINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
export const LIVE = new Set(["RUNNING", "PAUSING", "CANCELLING", "COMPENSATING"]);

export function slaBadge(sla) {
  if (!sla || !sla.target) return `<span class="muted">–</span>`;
  if (!sla.status) return `<span class="muted" title="not judged">–</span>`;
  const label = { on_track: "on track", at_risk: "at risk", breached: "breached", met: "met", missed: "missed" }[sla.status] || sla.status;
  return `<span class="sla sla-${esc(sla.status)}" title="${esc(duration(sla.elapsed))} of ${esc(duration(sla.target))}">${esc(label)}</span>`;
}

export function progressBar(p, status) {
  const pct = Math.max(0, Math.min(100, p?.percent ?? 0));
  return `<div class="progress" data-percent="${pct}"><div class="bar s-${esc(status)}" style="width:${pct}%"></div>` +
    `<span>${p?.settled ?? 0}/${p?.total ?? 0} (${Math.round(pct)}%)</span></div>`;
}

export function json(value) {
  if (value === undefined || value === null) return `<span class="muted">none</span>`;
  return `<pre class="json">${esc(JSON.stringify(value, null, 2))}</pre>`;
}

let toastTimer = null;
export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = message;
  el.className = `toast show ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = "toast"; }, 5000);
}

/** Call fn at most once per `wait` ms, trailing: bursts of events become one refresh. */
export function throttle(fn, wait) {
  let timer = null, last = 0, pending = false;
  return function run() {
    const since = Date.now() - last;
    if (timer) { pending = true; return; }
    const delay = Math.max(0, wait - since);
    timer = setTimeout(async () => {
      last = Date.now();
      try { await fn(); } finally {
        timer = null;
        if (pending) { pending = false; run(); }
      }
    }, delay);
  };
}

export const canOperate = () => !boot.readOnly && ["operator", "admin"].includes(boot.user?.role);
export const isAdmin = () => !boot.readOnly && boot.user?.role === "admin";

/** Why this user cannot change anything here ("" when they can): shown as the title of the
 * disabled buttons and in the page's refusal banner. */
export function refusal(what) {
  if (boot.readOnly) return `the dashboard is read-only: ${what} is refused (restart it without --read-only to allow it)`;
  if (canOperate()) return "";
  return `your role (${boot.user?.role}) cannot ${what}: it needs the operator role. Ask an admin to change your role, or log in as an operator.`;
}

/** The page's <dialog id="confirm">: resolves to the reason typed in, or null when declined. */
export function confirmDialog(title, text, yes = "Confirm", no = "Keep it") {
  const dlg = document.getElementById("confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-yes").textContent = yes;
  $("#confirm-no").textContent = no;
  $("#confirm-reason").value = "";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok" ? $("#confirm-reason").value : null), { once: true });
    dlg.showModal();
  });
}

/** A Celery task state (PENDING, STARTED, SUCCESS, FAILURE, …) as a badge. */
export const taskState = (s) => `<span class="status t-${esc(s)}" data-state="${esc(s)}">${esc(s)}</span>`;

/** A key/value table of a flat-ish object; nested values are shown as JSON. */
export function kvTable(obj, id = "") {
  if (!obj || typeof obj !== "object" || !Object.keys(obj).length) return `<p class="muted">nothing reported</p>`;
  const rows = Object.keys(obj).sort().map((k) => {
    const v = obj[k];
    const shown = v !== null && typeof v === "object" ? `<code>${esc(JSON.stringify(v))}</code>` : esc(v);
    return `<tr data-key="${esc(k)}"><th>${esc(k)}</th><td>${shown}</td></tr>`;
  }).join("");
  return `<table class="grid kv"${id ? ` id="${esc(id)}"` : ""}><tbody>${rows}</tbody></table>`;
}

/** The "state lost" badge: the audit store shows the run live, Redis no longer knows it. */
export const LOST_EXPLANATION = "Redis no longer knows this run (it restarted without persistence, or its data was " +
  "lost) while the audit store still shows it unfinished: nothing will ever run or end it. " +
  "An operator resolves it as failed or cancelled, with a reason.";
export const lostBadge = (r) => (r.state_lost
  ? ` <span class="status state-lost" data-state-lost="1" title="${esc(LOST_EXPLANATION)}">state lost</span>` : "");

// How a run started: "event files.uploaded (key k1)", "schedule nightly (2026-12-04T02:00:00Z)", "api".
export function triggerText(r) {
  const head = [r.trigger_type || "–", r.trigger_name].filter(Boolean).join(" ");
  return r.trigger_ref ? `${head} (${r.trigger_type === "event" ? "key " : ""}${r.trigger_ref})` : head;
}
