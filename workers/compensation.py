"""Compensations on the workers: the task that undoes one completed step (or item of a mapped
step) with its ``compensate`` call, and the task that ends a run's compensation chain. A failed
compensation stops the chain: the run waits for an operator in COMPENSATION_FAILED.
docs/design.md, "Compensation"."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Retry

from orchestrator.engine import stepcore as core
from orchestrator.engine.states import Move, RunStatus, StepStatus
from orchestrator.keys import is_item
from orchestrator.model import expressions
from workers import step as shell
from workers import subrun
from workers.context import StepContext

log = logging.getLogger(__name__)


def safe_compensate(
    task: Task, rt: shell.Runtime, prev: Any, spec: dict[str, Any], hdr: dict[str, Any]
) -> Any:
    """``compensate``; if it breaks outside the plugin (an outage aside), the run waits for an
    operator in COMPENSATION_FAILED with why, as when the compensation itself fails."""
    try:
        return compensate(task, rt, prev, spec, hdr)
    except Exception as exc:
        if not shell.unexpected(exc):
            raise
        message = f"compensation of '{spec['id']}' broke on worker {shell.HOST} outside its plugin: {shell._text(exc)}"
        log.exception("canvasflow: run %s: %s", hdr["run"], message)
        rt.state.transition(
            hdr["run"], Move.COMPENSATED, RunStatus.COMPENSATION_FAILED, fields={"error": message}
        )
        return {"failed": True, "step": spec["id"], "error": message}


def compensate(
    task: Task, rt: shell.Runtime, prev: Any, spec: dict[str, Any], hdr: dict[str, Any]
) -> Any:
    if isinstance(prev, Mapping) and prev.get("failed"):
        return prev  # an earlier compensation failed: the rest wait for an operator
    run_id, sid = hdr["run"], spec["id"]
    data = rt.state.read(run_id)
    if data is None or data.run.epoch != int(hdr["epoch"]):
        raise Ignore()
    run, steps, _ = data
    rt.state.set_step(run_id, sid, StepStatus.COMPENSATING, "step_compensating")
    scope = {
        "inputs": run.inputs,
        "steps": {s: {"status": step.status, "output": step.output} for s, step in steps.items()},
        "run": {"id": run_id, "workflow": run.workflow, "version": run.version},
    }
    if is_item(sid):
        rt.mapped.item_compensation_scope(rt, run_id, sid, spec.get("as", "item"), scope)
    attempt = task.request.retries + 1
    ctx = StepContext(run_id, sid, attempt, run.workflow)
    try:
        params = expressions.render_value(spec.get("params") or {}, scope)
        output = shell.call_plugin(rt, spec, params, ctx)
    except Retry:
        raise
    except Exception as exc:
        failure = shell._failure(exc, spec)
        rt.state.emit(run_id, ctx.drain())
        end = core.conclude_compensation(failure, spec, attempt)
        if isinstance(end, core.Retry):
            raise task.retry(countdown=end.countdown, max_retries=None) from None
        message, tb = end.error, failure.traceback
        rt.state.set_step(
            run_id,
            sid,
            StepStatus.COMPLETED,
            "step_compensation_failed",
            fields={"compensation_error": message, "compensation_traceback": tb},
            data={"error": message},
        )
        rt.state.transition(
            run_id, Move.COMPENSATED, RunStatus.COMPENSATION_FAILED, fields={"error": message}
        )
        return {"failed": True, "step": sid, "error": message}
    rt.state.emit(run_id, ctx.drain())
    rt.state.set_step(
        run_id,
        sid,
        StepStatus.COMPENSATED,
        "step_compensated",
        fields={"compensation_output_json": output},
    )
    if spec.get("seq"):
        rt.mapped.next_compensation(task, rt, spec, hdr)  # the next item of its run, if any
    return {"ok": True}


def compensated(
    rt: shell.Runtime, prev: Any, hdr: Mapping[str, Any], target: str, app: Any = None
) -> str:
    if isinstance(prev, Mapping) and prev.get("failed"):
        status = str(RunStatus.COMPENSATION_FAILED)
    else:
        rt.state.transition(hdr["run"], Move.COMPENSATED, RunStatus(target))
        status = target
    if app is not None:
        subrun.notify(rt, app, hdr["run"], status)
    return status
