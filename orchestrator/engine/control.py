"""Operator actions on live runs: pause, resume, cancel, retry, clone, resolve.

Each action is one atomic Lua script in Redis (check the status against the transition table,
change it, bump the dispatch epoch when a new canvas is sent, append the event), so concurrent
actions leave one consistent outcome. Every action — refused ones included — is appended to the
event stream as ``operator_action`` and lands in the audit store's operator log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.engine import compiler
from orchestrator.engine.records import RunRecord, StepRecord
from orchestrator.engine.runstate import RunState
from orchestrator.engine.states import SETTLED_STEP_STATUSES, Move, RunStatus, StepStatus, sources
from orchestrator.errors import CanvasflowError, ControlError, UnknownRun
from orchestrator.model.definition import Definition, from_stored
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from orchestrator.engine.client import Client, Run

# Which statuses allow which action: the operator's moves of the transition table.
ALLOWED: dict[str, list[str]] = {
    str(m): sources(m)
    for m in (
        Move.PAUSE,
        Move.RESUME,
        Move.CANCEL,
        Move.RETRY,
        Move.RETRY_COMPENSATION,
        Move.RESOLVE,
    )
}
# Run fields that a retry clears.
RETRY_CLEARS = ["halt", "failed_step", "error", "finished_at", "compensate_target", "resolved_by"]


@dataclass(frozen=True)
class ActionResult:
    action: str
    run_id: str
    status_before: str
    status: str
    detail: Mapping[str, Any]


class Control:
    """The operator's verbs; ``actor`` and ``reason`` go to the audit log with the outcome."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.state = client.state

    # -- helpers ------------------------------------------------------------------------------

    def _audit(
        self,
        run_id: str,
        action: str,
        actor: str,
        reason: str | None,
        outcome: str,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        self.state.audit(
            run_id,
            {
                "action_id": uuid.uuid4().hex,
                "action": action,
                "actor": actor,
                "reason": reason or "",
                "outcome": outcome,
                "at": time.time(),
                **({"detail": dict(detail)} if detail else {}),
            },
        )

    def _refuse(
        self, action: str, run_id: str, status: str, actor: str, reason: str | None
    ) -> CanvasflowError:
        if not status:
            self._audit(run_id, action, actor, reason, "refused: unknown run")
            return UnknownRun(run_id)
        exc = ControlError(action.replace("_", " "), run_id, status, ALLOWED[action])
        self._audit(run_id, action, actor, reason, f"refused: {exc}")
        return exc

    def _load(
        self,
        run_id: str,
        action: str = "",
        actor: str = "",
        reason: str | None = None,
    ) -> tuple[RunRecord, dict[str, StepRecord], Definition]:
        data = self.state.read(run_id)
        if data is None:
            if (
                action
            ):  # an action on an unknown run is audited too (docs/design.md, Operator control)
                self._audit(run_id, action, actor, reason, "refused: unknown run")
            raise UnknownRun(run_id)
        run, steps, _ = data
        return run, steps, from_stored(run.definition)

    def _dispatch(
        self,
        run_id: str,
        epoch: int,
        run: RunRecord,
        defn: Definition,
        steps: Mapping[str, StepRecord],
        reset: Iterable[str] = (),
    ) -> None:
        dispatch_remaining(
            self.client.celery, self.client.settings, run_id, epoch, run, defn, steps, reset
        )

    # -- verbs --------------------------------------------------------------------------------

    def pause(self, run_id: str, *, actor: str = "api", reason: str | None = None) -> ActionResult:
        """No new step starts; running steps finish; the run goes PAUSING, then PAUSED."""
        ok, before = self.state.transition(
            run_id, Move.PAUSE, RunStatus.PAUSING, data={"action": "pause", "actor": actor}
        )
        if not ok:
            raise self._refuse("pause", run_id, before, actor, reason)
        self._audit(run_id, "pause", actor, reason, "ok")
        return ActionResult("pause", run_id, before, RunStatus.PAUSING, {})

    def resume(self, run_id: str, *, actor: str = "api", reason: str | None = None) -> ActionResult:
        """Continue a PAUSED run: compile what is left; no settled step runs again."""
        run, steps, defn = self._load(run_id, "resume", actor, reason)
        verdict, before, epoch = self.state.restart(
            run_id, Move.RESUME, RunStatus.RUNNING, data={"action": "resume", "actor": actor}
        )
        if verdict != "ok":
            raise self._refuse("resume", run_id, before, actor, reason)
        self._dispatch(run_id, epoch, run, defn, steps)
        self._audit(run_id, "resume", actor, reason, "ok", {"epoch": epoch})
        return ActionResult("resume", run_id, before, RunStatus.RUNNING, {"epoch": epoch})

    def cancel(
        self, run_id: str, *, actor: str = "api", reason: str | None = None, terminate: bool = True
    ) -> ActionResult:
        """Stop the run: queued steps never start, running ones are terminated (or, with
        ``terminate=False``, finish), then completed steps are compensated newest first."""
        verdict, before, epoch, task_ids = self.state.cancel(
            run_id,
            terminate=terminate,
            data={"action": "cancel", "actor": actor, "reason": reason or ""},
        )
        if verdict != "ok":
            raise self._refuse("cancel", run_id, before, actor, reason)
        if task_ids:
            self.client.celery.control.revoke(task_ids, terminate=True, signal="SIGTERM")
        (run,) = self.state.runs([run_id], "priority")
        ctx = compiler.RunContext(
            run_id,
            epoch,
            run.priority if run else "normal",
            queue=self.client.settings.default_queue,
        )
        compiler.compile_settle(ctx, app=self.client.celery).apply_async()
        self._audit(run_id, "cancel", actor, reason, "ok", {"terminated": task_ids})
        return ActionResult(
            "cancel", run_id, before, RunStatus.CANCELLING, {"terminated": task_ids}
        )

    def retry(
        self,
        run_id: str,
        *,
        from_step: str | None = None,
        from_start: bool = False,
        actor: str = "api",
        reason: str | None = None,
    ) -> ActionResult:
        """Run a finished run again from a step (default: the first failed one) or the start:
        that step and everything downstream run again, upstream outputs are kept, attempts are
        numbered on."""
        run, steps, defn = self._load(run_id, "retry", actor, reason)
        status = run.status
        if status not in ALLOWED["retry"]:
            raise self._refuse("retry", run_id, status, actor, reason)
        order = defn.step_ids
        if from_start:
            reset = list(order)
        else:
            if from_step is None:
                failed = [s for s in order if s in steps and steps[s].status == StepStatus.FAILED]
                if not failed:
                    exc = CanvasflowError(
                        f"run {run_id} has no failed step: name one with from_step "
                        f"(steps: {', '.join(order)}) or retry from the start"
                    )
                    self._audit(run_id, "retry", actor, reason, f"refused: {exc}")
                    raise exc
                from_step = failed[0]
            if from_step not in order:
                exc2 = CanvasflowError(
                    f"run {run_id} has no step '{from_step}' (steps: {', '.join(order)})"
                )
                self._audit(run_id, "retry", actor, reason, f"refused: {exc2}")
                raise exc2
            downstream = descendants(defn, from_step)
            unfinished = {
                s
                for s in order
                if s in steps
                and steps[s].status
                in (
                    StepStatus.CANCELLED,
                    StepStatus.PENDING,
                    StepStatus.RETRYING,
                    StepStatus.RUNNING,
                )
            }
            reset = [s for s in order if s == from_step or s in downstream or s in unfinished]
        verdict, before, epoch = self.state.restart(
            run_id,
            Move.RETRY,
            RunStatus.RUNNING,
            reset=reset,
            clear=RETRY_CLEARS,
            data={"action": "retry", "actor": actor, "from_step": from_step or "", "reset": reset},
        )
        if verdict != "ok":
            raise self._refuse("retry", run_id, before, actor, reason)
        self._dispatch(run_id, epoch, run, defn, steps, reset=reset)
        self._audit(
            run_id,
            "retry",
            actor,
            reason,
            "ok",
            {"from_step": from_step, "reset": reset, "epoch": epoch},
        )
        return ActionResult(
            "retry", run_id, before, RunStatus.RUNNING, {"reset": reset, "epoch": epoch}
        )

    def retry_compensation(
        self, run_id: str, *, actor: str = "api", reason: str | None = None
    ) -> ActionResult:
        """Run the compensations that have not succeeded yet, newest completion first."""
        run, steps, defn = self._load(run_id, "retry_compensation", actor, reason)
        target = run.compensate_target or RunStatus.FAILED
        verdict, before, epoch = self.state.restart(
            run_id,
            Move.RETRY_COMPENSATION,
            RunStatus.COMPENSATING,
            clear=["error"],
            data={"action": "retry_compensation", "actor": actor},
        )
        if verdict != "ok":
            raise self._refuse("retry_compensation", run_id, before, actor, reason)
        order = [
            s
            for s in reversed(self.state.completed_order(run_id))
            if s in steps and steps[s].status == StepStatus.COMPLETED and defn.step(s).compensate
        ]
        ctx = run_context(run_id, epoch, run, defn, self.client.settings)
        compiler.compile_compensation(
            defn, ctx, order, str(target), app=self.client.celery
        ).apply_async()
        self._audit(run_id, "retry_compensation", actor, reason, "ok", {"steps": order})
        return ActionResult(
            "retry_compensation", run_id, before, RunStatus.COMPENSATING, {"steps": order}
        )

    def resolve(
        self, run_id: str, *, actor: str = "api", reason: str | None = None, as_: str | None = None
    ) -> ActionResult:
        """Mark a COMPENSATION_FAILED run as handled by hand: it ends FAILED (or CANCELLED) —
        ``as_`` ("failed" / "cancelled") or, by default, what the compensation was for. (A run
        whose hot state was lost is resolved in the audit store: orchestrator/engine/lost.py.)"""
        (run,) = self.state.runs([run_id], "compensate_target")
        compensated_for = (run.compensate_target if run else None) or RunStatus.FAILED
        target = RunStatus(as_.upper() if as_ else compensated_for)
        ok, before = self.state.transition(
            run_id,
            Move.RESOLVE,
            target,
            fields={"resolved_by": actor},
            data={"action": "resolve", "actor": actor, "reason": reason or ""},
        )
        if not ok:
            raise self._refuse("resolve", run_id, before, actor, reason)
        self._audit(run_id, "resolve", actor, reason, "ok")
        return ActionResult("resolve", run_id, before, target, {})

    def clone(
        self,
        run_id: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        actor: str = "api",
        reason: str | None = None,
    ) -> Run:
        """A new run of the same definition version with the same inputs (optionally overridden)."""
        try:
            run, _, defn = self._load(run_id)
        except UnknownRun:
            self._audit(run_id, "clone", actor, reason, "refused: unknown run")
            raise
        merged = {**run.inputs, **(inputs or {})}
        new = self.client.submit(
            defn,
            inputs=merged,
            priority=run.priority,
            triggered_by=actor,
            trigger_type="clone",
            tags=run.tags,
            cloned_from=run_id,
        )
        self._audit(run_id, "clone", actor, reason, "ok", {"new_run": new.id})
        return new


def run_context(
    run_id: str, epoch: int, run: RunRecord, defn: Definition, settings: Settings
) -> compiler.RunContext:
    inputs = run.inputs
    return compiler.RunContext(
        run_id,
        epoch,
        run.priority,
        settings.hard_timeout_grace,
        defn.id,
        defn.version or "",
        inputs if compiler.uses_inputs(defn) else None,
        settings.default_queue,
    )


def dispatch_remaining(
    app: Any,
    settings: Settings,
    run_id: str,
    epoch: int,
    run: RunRecord,
    defn: Definition,
    steps: Mapping[str, StepRecord],
    reset: Iterable[str] = (),
) -> None:
    """Send the canvas for every step not settled (and not reset), seeded with the outcomes of
    the settled ones. Steps still running from an earlier dispatch are adopted when they end."""
    reset = set(reset)
    settled = {}
    for sid, step in steps.items():
        if sid in reset or step.status not in SETTLED_STEP_STATUSES:
            continue
        settled[sid] = (step.status, step.output)
    ctx = run_context(run_id, epoch, run, defn, settings)
    compiler.compile_run(defn, ctx, settled=settled, app=app).apply_async()


def redispatch(state: RunState, app: Any, settings: Settings, run_id: str, reason: str) -> bool:
    """Re-send what is left of a live run whose canvas was broken (a step's process was killed
    at its hard time limit, so Celery will not continue the chain or chord past it)."""
    data = state.read(run_id)
    if data is None:
        return False
    run, steps, _ = data
    status = run.status
    if status not in (RunStatus.RUNNING, RunStatus.PAUSING, RunStatus.PENDING):
        return False  # a cancel already sent its own settle; a final run needs nothing
    verdict, _, epoch = state.restart(
        run_id,
        Move.REDISPATCH,
        RunStatus(status),
        data={"action": "redispatch", "reason": reason},
    )
    if verdict != "ok":
        return False
    dispatch_remaining(app, settings, run_id, epoch, run, from_stored(run.definition), steps)
    return True


def descendants(defn: Definition, step_id: str) -> set[str]:
    """Every step that depends on ``step_id``, directly or not (list order in sequential mode)."""
    ids = defn.step_ids
    children: dict[str, list[str]] = {s: [] for s in ids}
    for s in defn.steps:
        for d in s.depends_on:
            children[d].append(s.id)
    if defn.mode == "sequential":
        for a, b in zip(ids, ids[1:], strict=False):
            children[a].append(b)
    out: set[str] = set()
    stack = list(children[step_id])
    while stack:
        n = stack.pop()
        if n not in out:
            out.add(n)
            stack.extend(children[n])
    return out
