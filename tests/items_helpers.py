"""Events of a run with a mapped step, shaped as the engine emits them (the contract of issue 15:
items emit the ordinary step events with the step ``resize[i]``, the mapped step one
``step_mapped`` event ``{"step", "total"}``). Used by the items tests and
benchmarks/bench_items_api.py to fill the audit store through the recorder's projection."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from orchestrator.audit import Event, Lookups
from orchestrator.records import RunRecord
from tests.audit_helpers import RunEvents

MAPPED_DEFINITION: dict[str, Any] = {
    "id": "media_batch",
    "version": "1",
    "mode": "sequential",
    "steps": [
        {"id": "list_files", "plugin": "builtin", "method": "echo"},
        {
            "id": "resize",
            "plugin": "builtin",
            "method": "echo",
            "depends_on": ["list_files"],
            "map": {"over": "{{ steps.list_files.output.files }}", "as": "item"},
            "params": {"path": "{{ item }}"},
            "retries": 2,
        },
        {"id": "publish", "plugin": "builtin", "method": "echo", "depends_on": ["resize"]},
    ],
}


def default_outcome(i: int) -> tuple[str, int]:
    """(final status, attempts) of item ``i``: every 7th failed after 3 attempts, every 5th
    retried once then completed, the rest completed at once."""
    if i % 7 == 3:
        return "FAILED", 3
    if i % 5 == 1:
        return "COMPLETED", 2
    return "COMPLETED", 1


def run_meta(run_id: str, definition: dict[str, Any] | None = None) -> RunRecord:
    body = definition or MAPPED_DEFINITION
    return RunRecord.from_hash(
        run_id,
        {
            "workflow": body["id"],
            "version": "1",
            "name": "Media batch",
            "definition": json.dumps(body),
            "inputs": json.dumps({"files": 3}),
            "priority": "normal",
            "tags": "[]",
            "triggered_by": "tests",
            "trigger_type": "manual",
        },
    )


def mapped_run(
    run_id: str,
    n: int,
    *,
    outcome: Callable[[int], tuple[str, int]] = default_outcome,
    running: int = 0,
    finish: bool = True,
    logs_every: int = 0,
    t0: float = 2_000_000.0,
    announce: bool = True,
) -> tuple[list[Event], Lookups]:
    """A run whose step ``resize`` maps over ``n`` items. The last ``running`` items have only
    started (the run is still RUNNING then); every ``logs_every``-th item writes two log lines."""
    lk = Lookups()
    lk.runs[run_id] = run_meta(run_id)
    r = RunEvents(run_id, t0).created("media_batch")
    r.status("RUNNING")
    r.step("list_files")
    lk.outputs[(run_id, "list_files")] = json.dumps(
        {"files": [f"f{i}.png" for i in range(min(n, 50))]}
    )
    r.emit(
        "step_started", "resize", "RUNNING", attempt=1, worker="w1@host", task_id=f"{run_id}-resize"
    )
    if announce:
        r.emit("step_mapped", "resize", "", step="resize", total=n)
    for i in range(n):
        item = f"resize[{i}]"
        if i >= n - running:
            r.emit(
                "step_started",
                item,
                "RUNNING",
                dt=0.001,
                attempt=1,
                worker="w2@host",
                task_id=f"t{i}",
            )
            continue
        status, attempts = outcome(i)
        r.step(
            item,
            status,
            attempts=attempts,
            seconds=0.01,
            logs=2 if logs_every and i % logs_every == 0 else 0,
            worker=f"w{i % 2 + 1}@host",
        )
        if status == "COMPLETED":
            lk.outputs[(run_id, item)] = json.dumps({"path": f"f{i}.png", "index": i})
    if finish and not running:
        failed = any(outcome(i)[0] == "FAILED" for i in range(n))
        r.emit(
            "step_failed" if failed else "step_completed",
            "resize",
            "FAILED" if failed else "COMPLETED",
            attempt=1,
            error="an item failed" if failed else None,
        )
        if failed:
            r.cancelled("publish").status("FAILED")
            lk.run_errors[run_id] = ("an item failed", "resize")
        else:
            r.step("publish").status("COMPLETED")
    return r.events, lk
