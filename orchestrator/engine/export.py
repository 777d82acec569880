"""Export a run's whole trace as one JSON document (schema: docs/api.md "Trace format").

The one export of the project: ``canvasflow export`` and ``GET /api/v1/runs/{id}/export`` both
call :func:`export_run`, so the file a user downloads and the one the CLI prints hold the same
fields from the same sources. Events come from the audit store (what the recorder wrote: the
stream is trimmed behind it) and from the Redis stream (what it has not recorded yet); steps and
attempts come from the hot state while Redis has the run, else from the audit store.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import redis

from orchestrator.audit import queries
from orchestrator.engine.runevents import all_events, recorded_events
from orchestrator.errors import UnknownRun
from orchestrator.logbatch import log_lines
from orchestrator.records import StepRecord

if TYPE_CHECKING:
    from orchestrator.audit.store import AuditStore
    from orchestrator.engine.client import Client

TRACE_FORMAT = "canvasflow.trace/1"
RUN_FIELDS = (
    "workflow",
    "version",
    "name",
    "status",
    "priority",
    "triggered_by",
    "trigger_type",
    "trigger_name",
    "trigger_ref",
    "sla_seconds",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "failed_step",
    "cloned_from",
    "resolved_by",
    "epoch",
    "parent_run",  # a child run's parent (a sub-workflow step's), and its step
    "parent_step",
    "result",  # the definition's outputs, evaluated when the run completed
)
ATTEMPT_FIELDS = (
    "step",
    "attempt",
    "status",
    "started_at",
    "finished_at",
    "duration",
    "worker",
    "task_id",
    "error",
    "traceback",
    "input",
    "stats",
)
EVENT_FIELDS = ("seq", "type", "step", "status", "ts", "data")
ITEMS_PAGE = 1000  # items of a mapped step read per query
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
REDIS_UNREACHABLE = (
    "Redis is unreachable: the trace is rebuilt from the audit store alone, without the events "
    "the recorder had not written yet"
)


def _decoded(v: Any) -> Any:
    """An attempt's rendered input, which the hot state keeps as JSON text."""
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except ValueError:
        return v  # cut short at INPUT_CAP: the text as it is


def _step(sid: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "status": fields.get("status") or "PENDING",
        "attempts": fields.get("attempts") or [],
        "started_at": fields.get("started_at"),
        "finished_at": fields.get("finished_at"),
        "output": fields.get("output"),
        "error": fields.get("error"),
        "traceback": fields.get("traceback"),
        "compensation_error": fields.get("compensation_error"),
        "logs": [],
        "progress": None,
        "stats": fields.get("stats"),
    }


def _from_hot(client: Client, run_id: str) -> dict[str, Any] | None:
    """The run, its steps and attempts from the hot state; None when Redis no longer has it."""
    data = client.state.read(run_id)
    if data is None:
        return None
    run, steps, attempts = data
    by_step: dict[str, dict[str, Any]] = {}
    for sid in run.step_ids:
        s = steps.get(sid) or StepRecord(sid)
        by_step[sid] = _step(
            sid,
            status=s.status,
            started_at=s.started_at,
            finished_at=s.finished_at,
            output=s.output,
            error=s.error,
            traceback=s.traceback,
            compensation_error=s.compensation_error,
        )
    for a in attempts:
        entry = by_step.get(a.get("step") or "")
        if entry is not None:
            att = {k: a.get(k) for k in ATTEMPT_FIELDS}
            att["input"] = _decoded(att["input"])
            entry["attempts"].append(att)
    return {
        "source": "hot",
        "run": {"id": run_id, **{k: getattr(run, k) or None for k in RUN_FIELDS}},
        "definition": run.definition,
        "inputs": run.inputs,
        "tags": list(run.tags),
        "steps": by_step,
    }


def _from_store(store: AuditStore, run_id: str) -> dict[str, Any]:
    """The same from the audit store, for a run that left the hot state (or with Redis down)."""
    d = queries.run_detail(store, run_id, log_limit=0)
    r = d.run
    recorded = {s.id: s for s in d.steps}
    order = [s["id"] for s in (d.definition or {}).get("steps") or []] or list(recorded)
    by_step: dict[str, dict[str, Any]] = {}
    for sid in order + [s for s in recorded if s not in order]:
        s = recorded.get(sid)
        if s is None:
            by_step[sid] = _step(sid)
            continue
        by_step[sid] = _step(
            sid,
            status=s.status,
            started_at=s.started_at,
            finished_at=s.finished_at,
            output=s.output,
            error=s.error,
            traceback=s.history[-1].traceback if s.history else None,
            compensation_error=s.compensation_error,
            attempts=[
                {
                    "step": sid,
                    "attempt": a.number,
                    "status": a.status,
                    "started_at": a.started_at,
                    "finished_at": a.finished_at,
                    "duration": a.duration,
                    "worker": a.worker,
                    "task_id": a.task_id,
                    "error": a.error,
                    "traceback": a.traceback,
                    "input": a.input,
                    "stats": a.stats,
                }
                for a in s.history
            ],
        )
    fields = {k: getattr(r, k, None) for k in RUN_FIELDS}
    fields["workflow"] = r.workflow
    return {
        "source": "audit",
        "run": {"id": run_id, **{k: v if v != "" else None for k, v in fields.items()}},
        "definition": d.definition,
        "inputs": d.inputs or {},
        "tags": list(r.tags),
        "steps": by_step,
    }


def export_items(
    store: AuditStore, run_id: str, by_step: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each mapped step's ``items`` (in item order, like steps: status, attempts, timings,
    output, error; logs folded in from the events after) from the audit store, read a page of
    ITEMS_PAGE at a time; returns {item id: its entry}. The trace is one JSON document, so it
    holds every item: memory grows with the item count, not with the page."""
    out: dict[str, dict[str, Any]] = {}
    for sid, counts in queries.item_counts(store, run_id).items():
        entry = by_step.get(sid)
        if entry is None:
            continue
        entry["map"] = counts.as_dict()
        entry["items"] = []
        offset = 0
        while True:
            page = queries.items(store, run_id, sid, offset=offset, limit=ITEMS_PAGE)
            attempts = queries.attempts_of(store, run_id, [i.id for i in page.items])
            for i in page.items:
                item = _step(
                    i.id,
                    status=i.status,
                    started_at=i.started_at,
                    finished_at=i.finished_at,
                    output=i.output,
                    error=i.error,
                    attempts=[
                        {
                            "step": i.id,
                            "attempt": a.number,
                            **{k: getattr(a, k) for k in ATTEMPT_FIELDS[2:]},
                        }
                        for a in attempts.get(i.id, ())
                    ],
                )
                item["index"] = i.index
                entry["items"].append(item)
                out[i.id] = item
            offset += len(page.items)
            if len(page.items) < ITEMS_PAGE:
                break
    return out


def export_run(client: Client, run_id: str, store: AuditStore | None = None) -> dict[str, Any]:
    """Definition, inputs, every step attempt, logs, progress, events and operator actions.

    ``store`` is the audit store (None: the fleet has none, and only what the Redis stream still
    holds is exported). Raises UnknownRun when neither Redis nor the store knows the run, and
    StoreError when the store cannot be read (a trace without its events must not pass for one).
    """
    warnings: list[str] = []
    try:
        events = all_events(client.state, store, run_id)
        src = _from_hot(client, run_id)
    except REDIS_DOWN:
        if store is None:
            raise
        events, src = recorded_events(store, run_id), None
        warnings.append(REDIS_UNREACHABLE)
    if src is None:
        if store is None:
            raise UnknownRun(run_id)
        src = _from_store(store, run_id)
    by_step = src["steps"]
    by_item = export_items(store, run_id, by_step) if store is not None else {}
    for e in events:
        sid = e.get("step") or ""
        entry = by_step.get(sid) or by_item.get(sid)
        if entry is None or not isinstance(e["data"], dict):
            continue  # an event of another shape stays in "events" as it is, folded nowhere
        if e["type"] == "log":
            try:
                lines = log_lines(e["data"])
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                # As the audit store's projection records it (its raw event is exported too).
                lines = [
                    {
                        "ts": None,
                        "level": "ERROR",
                        "message": f"unreadable log event ({type(exc).__name__}: {exc})",
                    }
                ]
            entry["logs"].extend({**line, "ts": line.get("ts") or e["ts"]} for line in lines)
        elif e["type"] == "progress":
            entry["progress"] = e["data"]
        elif e["type"] == "stats":
            entry["stats"] = e["data"]
        elif (
            e["type"] in ("step_completed", "step_failed", "step_retrying") and "stats" in e["data"]
        ):
            entry["stats"] = e["data"]["stats"]
    events = [{k: e.get(k) for k in EVENT_FIELDS} for e in events]
    return {
        "format": TRACE_FORMAT,
        "exported_at": time.time(),
        "source": src["source"],
        "warnings": warnings,
        "run": src["run"],
        "definition": src["definition"],
        "inputs": src["inputs"],
        "tags": src["tags"],
        "steps": list(by_step.values()),
        "events": events,
        "operator_actions": [e["data"] for e in events if e["type"] == "operator_action"],
    }
