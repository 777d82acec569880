"""Export a run's whole trace as one JSON document (schema: docs/api.md "Trace format")."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UnknownRun
from orchestrator.logbatch import log_lines
from orchestrator.records import StepRecord, text

if TYPE_CHECKING:
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
    "sla_seconds",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "failed_step",
    "cloned_from",
    "resolved_by",
    "epoch",
)


def _events_from_stream(client: Client, run_id: str) -> list[dict[str, Any]]:
    """The run's events from the Redis stream (what the recorder has not trimmed yet)."""
    out = []
    last = "-"
    while True:
        batch = client.redis.xrange(client.keys.events, min=last, count=5000)
        if last != "-" and batch:
            batch = batch[1:]
        if not batch:
            break
        for _entry_id, fields in batch:
            f = {text(k): text(v) for k, v in (fields or {}).items()}
            if f.get("run") == run_id:
                out.append(
                    {
                        "seq": int(f["seq"]),
                        "type": f["type"],
                        "step": f.get("step") or None,
                        "status": f.get("status") or None,
                        "ts": float(f["ts"]),
                        "data": json.loads(f.get("data") or "{}"),
                    }
                )
        last = text(batch[-1][0])
    return sorted(out, key=lambda e: (e["seq"], e["ts"]))


def export_run(
    client: Client, run_id: str, events: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Definition, inputs, every step attempt, logs, progress, events and operator actions."""
    data = client.state.read(run_id)
    if data is None:
        raise UnknownRun(run_id)
    run, steps, attempts = data
    if events is None:
        events = _events_from_stream(client, run_id)
    by_step: dict[str, dict[str, Any]] = {}
    for sid in run.step_ids:
        step = steps.get(sid) or StepRecord(sid)
        by_step[sid] = {
            "id": sid,
            "status": step.status,
            "attempts": [],
            "started_at": step.started_at,
            "finished_at": step.finished_at,
            "output": step.output,
            "error": step.error,
            "traceback": step.traceback,
            "compensation_error": step.compensation_error,
            "logs": [],
            "progress": None,
            "stats": None,
        }
    for a in attempts:
        if a.get("step") in by_step:
            by_step[a["step"]]["attempts"].append(a)
    for e in events:
        entry = by_step.get(e.get("step") or "")
        if entry is None:
            continue
        if e["type"] == "log":
            entry["logs"].extend(
                {**line, "ts": line["ts"] or e["ts"]} for line in log_lines(e["data"])
            )
        elif e["type"] == "progress":
            entry["progress"] = e["data"]
        elif e["type"] == "stats":
            entry["stats"] = e["data"]
        elif (
            e["type"] in ("step_completed", "step_failed", "step_retrying") and "stats" in e["data"]
        ):
            entry["stats"] = e["data"]["stats"]
    return {
        "format": TRACE_FORMAT,
        "exported_at": time.time(),
        "run": {"id": run_id, **{k: getattr(run, k) or None for k in RUN_FIELDS}},
        "definition": run.definition,
        "inputs": run.inputs,
        "tags": run.tags,
        "steps": list(by_step.values()),
        "events": events,
        "operator_actions": [e["data"] for e in events if e["type"] == "operator_action"],
    }
