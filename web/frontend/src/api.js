// fetch() wrapper for /api/v1: JSON in and out, the CSRF header, errors as ApiError.
import { connState } from "./conn.js";
import { boot } from "./util.js";

export class ApiError extends Error {
  constructor(status, payload) {
    super(payload?.message || `HTTP ${status}`);
    this.status = status;
    this.payload = payload || {};
  }
  /** Every per-field message as "field: message" lines. */
  get details() {
    const out = [];
    for (const p of this.payload.problems || []) out.push(p.path ? `${p.path}: ${p.message}` : p.message);
    if (!out.length) {
      for (const [, fields] of Object.entries(this.payload.errors || {})) {
        for (const [field, msgs] of Object.entries(fields || {})) {
          for (const m of [].concat(msgs)) out.push(`${field}: ${typeof m === "string" ? m : JSON.stringify(m)}`);
        }
      }
    }
    return out;
  }
}

export async function api(path, { method = "GET", body, query } = {}) {
  let url = `/api/v1${path}`;
  if (query) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null || v === "") continue;
      for (const item of [].concat(v)) qs.append(k, item);
    }
    const s = qs.toString();
    if (s) url += `?${s}`;
  }
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (boot.csrf) headers["X-CSRF-Token"] = boot.csrf;
  }
  let resp;
  try {
    resp = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  } catch (err) {
    connState("poll", false, "the server does not answer");
    throw new ApiError(0, { message: `the server does not answer (${err.message})` });
  }
  // A gateway's 502/504: the dashboard behind it is gone. (A 503 comes from the dashboard itself.)
  connState("poll", resp.status !== 502 && resp.status !== 504, `HTTP ${resp.status}`);
  let payload = null;
  if (resp.status !== 204) {
    try { payload = await resp.json(); } catch { payload = null; }
  }
  if (resp.status === 401 && boot.page && boot.page !== "login") {
    window.location.href = `/login?next=${encodeURIComponent(window.location.pathname)}`;
  }
  if (!resp.ok) throw new ApiError(resp.status, payload);
  return payload;
}
