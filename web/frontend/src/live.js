// The Socket.IO connection: authenticated by the session cookie, reconnecting with backoff, and
// re-synchronising after every (re)connect: per-run subscribers get every event after the last
// seq they applied (the server replays them in the subscribe acknowledgement); "all" subscribers
// are told to refetch. Live events come in batches (one `events` message per room and relay
// window, in stream order); each event is applied in seq order exactly once.
import { io } from "socket.io-client";
import { connState, updatesBy } from "./conn.js";
import { setServerTime } from "./util.js";

const CHATTY = new Set(["log", "progress", "stats", "step.items"]); // not sent to the "all" room

class Live {
  constructor() {
    this.runs = new Map(); // run id -> {lastSeq, handlers:Set, joined, resyncing, pending}
    this.allHandlers = new Set();
    this.resyncHandlers = new Set();
    this.connected = false;
    updatesBy("socket");
    this.socket = io({
      transports: ["websocket", "polling"],
      reconnection: true, reconnectionDelay: 500, reconnectionDelayMax: 5000, randomizationFactor: 0.5,
    });
    this.socket.on("connect", () => this._onConnect());
    this.socket.on("disconnect", () => this._status(false));
    this.socket.on("connect_error", (err) => this._status(false, err?.message));
    this.socket.on("hello", (h) => { setServerTime(h.server_time); });
    this.socket.on("events", (batch) => this._batch(batch));
    window.__cfLive = this; // tests and benchmarks look at it
    this.received = 0;
    this.connects = 0; // 1 + reconnects
    this.replayed = 0; // events applied from a subscribe acknowledgement (missed while away)
    this.batches = 0; // `events` messages received
  }

  _status(ok, why) {
    this.connected = ok;
    connState("socket", ok, why);
  }

  _onConnect() {
    this.connects += 1;
    this._status(true);
    // A resync cut short by the disconnect never gets its acknowledgement; this subscribe replays
    // everything after each run's last applied seq, the buffered events included.
    for (const sub of this.runs.values()) { sub.resyncing = false; sub.pending = []; }
    this._subscribe([...this.runs.keys()], this.allHandlers.size > 0);
    for (const fn of this.resyncHandlers) fn();
  }

  _subscribe(ids, all) {
    if (!this.socket.connected) return;
    const after = {};
    for (const id of ids) after[id] = this.runs.get(id)?.lastSeq ?? 0;
    this.socket.emit("subscribe", { runs: ids, all, after }, (ack) => {
      if (!ack || ack.error) return;
      for (const id of ack.subscribed || []) if (this.runs.has(id)) this.runs.get(id).joined = true; // in its room
      for (const e of ack.events || []) this._event(e, true);
    });
  }

  /** A batch from one room, in stream order (so each run's events in seq order). */
  _batch(batch) {
    this.batches += 1;
    for (const e of Array.isArray(batch) ? batch : [batch]) this._event(e);
  }

  _event(e, replayed = false, resynced = false) {
    this.received += 1;
    e.receivedAt = Date.now();
    // Benchmarks: the latency of live events only; a replayed one happened before we asked.
    if (window.__cfLatencies && !replayed && !e.receivedBefore) {
      window.__cfLatencies.push(e.receivedAt / 1000 - e.ts);
      if (e.relayed_at) (window.__cfRelayed ||= []).push(e.relayed_at - e.ts); // of which: stream -> relay
      if (window.__cfEvents) window.__cfEvents.push([e.run, e.seq, e.type, e.ts, e.relayed_at ?? null, e.receivedAt / 1000]);
    }
    e.receivedBefore = true;
    const sub = this.runs.get(e.run);
    if (sub) {
      // While a gap is being filled, later events wait and are applied after the replay, in order.
      if (sub.resyncing) { sub.pending.push(e); return; }
      if (e.seq <= sub.lastSeq) return; // already applied
      // (Right after a resync the server has sent all it has: a gap left then is not asked again.)
      // A `step.items` summary stands for the item events first_seq..seq (web/itemlive.py).
      const first = e.first_seq ?? e.seq;
      if (sub.lastSeq > 0 && first > sub.lastSeq + 1 && !resynced) { this._resync(e.run, sub, e); return; }
      if (replayed) this.replayed += 1;
      sub.lastSeq = e.seq;
      for (const fn of sub.handlers) fn(e);
    }
    if (!CHATTY.has(e.type)) for (const fn of this.allHandlers) fn(e);
  }

  /** A gap (a dropped message): ask for what is missing, then apply it and what came meanwhile. */
  _resync(runId, sub, first) {
    sub.resyncing = true;
    sub.pending = [first];
    this.socket.emit("subscribe", { runs: [runId], after: { [runId]: sub.lastSeq } }, (ack) => {
      if (!sub.resyncing) return; // a reconnect took over
      sub.resyncing = false;
      const pending = sub.pending.sort((a, b) => a.seq - b.seq);
      sub.pending = [];
      for (const m of ack?.events || []) this._event(m, true);
      for (const m of pending) this._event(m, false, true);
    });
  }

  /** Follow one run from `lastSeq`; returns an unsubscribe function. */
  followRun(runId, lastSeq, handler) {
    let sub = this.runs.get(runId);
    if (!sub) { sub = { lastSeq, handlers: new Set(), resyncing: false, pending: [] }; this.runs.set(runId, sub); }
    sub.lastSeq = Math.max(sub.lastSeq, lastSeq);
    sub.handlers.add(handler);
    this._subscribe([runId], this.allHandlers.size > 0);
    return () => {
      sub.handlers.delete(handler);
      if (!sub.handlers.size) { this.runs.delete(runId); this.socket.emit("unsubscribe", { runs: [runId] }); }
    };
  }

  /** Every run's status and step events; `resync` runs after each reconnect. */
  followAll(handler, resync) {
    this.allHandlers.add(handler);
    if (resync) this.resyncHandlers.add(resync);
    this._subscribe([], true);
  }
}

let live = null;
export const getLive = () => (live ||= new Live());

/** The lines of a `log` event as {ts, level, message, entity_*} objects. The server sends
 * `data.lines` rows ([ts, level, message, entity_tag, entity_route, entity_id, entity_type]);
 * the one-line shape of older producers ({message, level, entity_*}) is read too. */
export function logLines(e) {
  const d = e.data || {};
  const rows = Array.isArray(d.lines) ? d.lines
    : [[d.ts ?? e.ts, d.level, d.message, d.entity_tag, d.entity_route, d.entity_id, d.entity_type]];
  return rows.map(([ts, level, message, tag, route, id, type]) => ({
    seq: e.seq, step: e.step, ts: ts ?? e.ts, level: level || "INFO", message: message ?? "",
    entity_tag: tag ?? null, entity_route: route ?? null, entity_id: id ?? null, entity_type: type ?? null,
  }));
}
