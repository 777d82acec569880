"""SLA tracking: runs with ``sla_seconds`` get ``sla_warning`` at 90 % and ``sla_breached`` at
100 % of their target, as events (so they reach the audit store and live subscribers).

The monitor loop runs inside the recorder process; each check is one pipelined read of the
watched runs plus one Lua call per event emitted, and every event is emitted at most once.
"""

from __future__ import annotations

import time

from orchestrator.engine.runstate import RunState
from orchestrator.engine.states import FINAL_RUN_STATUSES
from orchestrator.records import text

WARNING_FRACTION = 0.9


def sla_status(elapsed: float, target: float | None) -> str | None:
    """on_track / at_risk / breached, or None when the run has no SLA."""
    if not target:
        return None
    if elapsed >= target:
        return "breached"
    if elapsed >= WARNING_FRACTION * target:
        return "at_risk"
    return "on_track"


def check_once(state: RunState, now: float | None = None) -> list[tuple[str, str]]:
    """Emit due SLA events for every watched run; returns the (run, kind) pairs emitted."""
    now = time.time() if now is None else now
    keys = state.keys
    ids = [text(i) for i in state.r.smembers(keys.sla_watch)]
    if not ids:
        return []
    emitted: list[tuple[str, str]] = []
    finals = {str(s) for s in FINAL_RUN_STATUSES}
    done: list[str] = []
    runs = state.runs(ids, "status", "sla_seconds", "created_at", "finished_at")
    for rid, run in zip(ids, runs, strict=True):
        if run is None:
            done.append(rid)
            continue
        target = run.sla_seconds or 0.0
        elapsed = (run.finished_at or now) - (run.created_at or 0.0)
        kind = sla_status(elapsed, target)
        data = {"elapsed": round(elapsed, 3), "sla_seconds": target}
        if kind in ("at_risk", "breached") and state.sla_mark(rid, "warning", data):
            emitted.append((rid, "sla_warning"))
        if kind == "breached" and state.sla_mark(rid, "breached", data):
            emitted.append((rid, "sla_breached"))
        if run.status in finals:
            done.append(rid)
    if done:
        state.r.srem(keys.sla_watch, *done)
    return emitted
