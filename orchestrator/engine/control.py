"""Operator actions on live runs: pause, resume, cancel, retry, retry compensation, resolve.

Each action is one atomic Lua script in Redis (check the status against the transition table,
change it, bump the dispatch epoch when a new canvas is sent, append the event), so concurrent
actions leave one consistent outcome; the canvas it then needs is sent by the dispatcher. Every
action — refused ones included — is appended to the event stream as ``operator_action`` and
lands in the audit store's operator log. (Cloning a run submits a new one: ``Client.clone``.)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.runstate import RunState
from orchestrator.engine.states import RunStatus, StepStatus, sources_of
from orchestrator.errors import CanvasflowError, ControlError, UnknownRun
from orchestrator.model.definition import Definition, from_stored

# Which statuses allow which action; derived from the one transition table where it can be.
ALLOWED: dict[str, list[str]] = {
    "pause": [s for s in sources_of(RunStatus.PAUSING)],
    "resume": [RunStatus.PAUSED],
    "cancel": [s for s in sources_of(RunStatus.CANCELLING)],
    "retry": [RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.COMPLETED],
    "retry_compensation": [RunStatus.COMPENSATION_FAILED],
    "resolve": [RunStatus.COMPENSATION_FAILED],
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

    def __init__(self, state: RunState, dispatcher: Dispatcher) -> None:
        self.state = state
        self.dispatcher = dispatcher

    def audit(
        self,
        run_id: str,
        action: str,
        actor: str,
        reason: str | None,
        outcome: str,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an operator action, taken or refused, to the run's events (the audit log)."""
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

    # -- helpers ------------------------------------------------------------------------------

    def _refuse(
        self, action: str, run_id: str, status: str, actor: str, reason: str | None
    ) -> CanvasflowError:
        if not status:
            self.audit(run_id, action, actor, reason, "refused: unknown run")
            return UnknownRun(run_id)
        exc = ControlError(action.replace("_", " "), run_id, status, ALLOWED[action])
        self.audit(run_id, action, actor, reason, f"refused: {exc}")
        return exc

    def _load(
        self, run_id: str, action: str, actor: str, reason: str | None
    ) -> tuple[dict[str, str], dict[str, dict[str, str]], Definition]:
        data = self.state.read(run_id)
        if data is None:
            # An action on an unknown run is audited too (docs/design.md, Operator control).
            self.audit(run_id, action, actor, reason, "refused: unknown run")
            raise UnknownRun(run_id)
        run, steps, _ = data
        return run, steps, from_stored(json.loads(run["definition"]))

    # -- verbs --------------------------------------------------------------------------------

    def pause(self, run_id: str, *, actor: str = "api", reason: str | None = None) -> ActionResult:
        """No new step starts; running steps finish; the run goes PAUSING, then PAUSED."""
        ok, before = self.state.transition(
            run_id,
            RunStatus.PAUSING,
            sources=ALLOWED["pause"],
            data={"action": "pause", "actor": actor},
        )
        if not ok:
            raise self._refuse("pause", run_id, before, actor, reason)
        self.audit(run_id, "pause", actor, reason, "ok")
        return ActionResult("pause", run_id, before, RunStatus.PAUSING, {})

    def resume(self, run_id: str, *, actor: str = "api", reason: str | None = None) -> ActionResult:
        """Continue a PAUSED run: compile what is left; no settled step runs again."""
        run, steps, defn = self._load(run_id, "resume", actor, reason)
        verdict, before, epoch = self.state.restart(
            run_id,
            RunStatus.RUNNING,
            sources=ALLOWED["resume"],
            data={"action": "resume", "actor": actor},
        )
        if verdict != "ok":
            raise self._refuse("resume", run_id, before, actor, reason)
        self.dispatcher.remaining(run_id, epoch, run, defn, steps)
        self.audit(run_id, "resume", actor, reason, "ok", {"epoch": epoch})
        return ActionResult("resume", run_id, before, RunStatus.RUNNING, {"epoch": epoch})

    def cancel(
        self, run_id: str, *, actor: str = "api", reason: str | None = None, terminate: bool = True
    ) -> ActionResult:
        """Stop the run: queued steps never start, running ones are terminated (or, with
        ``terminate=False``, finish), then completed steps are compensated newest first."""
        verdict, before, epoch, task_ids = self.state.cancel(
            run_id,
            sources=ALLOWED["cancel"],
            terminate=terminate,
            data={"action": "cancel", "actor": actor, "reason": reason or ""},
        )
        if verdict != "ok":
            raise self._refuse("cancel", run_id, before, actor, reason)
        if task_ids:
            self.dispatcher.revoke(task_ids)
        (priority,) = self.state.run_fields(run_id, "priority")
        self.dispatcher.settle(run_id, epoch, priority or "normal")
        self.audit(run_id, "cancel", actor, reason, "ok", {"terminated": task_ids})
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
        status = run["status"]
        if status not in ALLOWED["retry"]:
            raise self._refuse("retry", run_id, status, actor, reason)
        order = defn.step_ids
        if from_start:
            reset = list(order)
        else:
            if from_step is None:
                failed = [s for s in order if steps.get(s, {}).get("status") == StepStatus.FAILED]
                if not failed:
                    exc = CanvasflowError(
                        f"run {run_id} has no failed step: name one with from_step "
                        f"(steps: {', '.join(order)}) or retry from the start"
                    )
                    self.audit(run_id, "retry", actor, reason, f"refused: {exc}")
                    raise exc
                from_step = failed[0]
            if from_step not in order:
                exc2 = CanvasflowError(
                    f"run {run_id} has no step '{from_step}' (steps: {', '.join(order)})"
                )
                self.audit(run_id, "retry", actor, reason, f"refused: {exc2}")
                raise exc2
            downstream = defn.descendants(from_step)
            unfinished = {
                s
                for s in order
                if steps.get(s, {}).get("status")
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
            RunStatus.RUNNING,
            sources=ALLOWED["retry"],
            reset=reset,
            clear=RETRY_CLEARS,
            data={"action": "retry", "actor": actor, "from_step": from_step or "", "reset": reset},
        )
        if verdict != "ok":
            raise self._refuse("retry", run_id, before, actor, reason)
        self.dispatcher.remaining(run_id, epoch, run, defn, steps, reset=reset)
        self.audit(
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
        target = run.get("compensate_target") or RunStatus.FAILED
        verdict, before, epoch = self.state.restart(
            run_id,
            RunStatus.COMPENSATING,
            sources=ALLOWED["retry_compensation"],
            clear=["error"],
            data={"action": "retry_compensation", "actor": actor},
        )
        if verdict != "ok":
            raise self._refuse("retry_compensation", run_id, before, actor, reason)
        order = [
            s
            for s in reversed(self.state.completed_order(run_id))
            if steps.get(s, {}).get("status") == StepStatus.COMPLETED and defn.step(s).compensate
        ]
        self.dispatcher.compensations(run_id, epoch, run, defn, order, str(target))
        self.audit(run_id, "retry_compensation", actor, reason, "ok", {"steps": order})
        return ActionResult(
            "retry_compensation", run_id, before, RunStatus.COMPENSATING, {"steps": order}
        )

    def resolve(
        self, run_id: str, *, actor: str = "api", reason: str | None = None, as_: str | None = None
    ) -> ActionResult:
        """Mark a COMPENSATION_FAILED run as handled by hand: it ends FAILED (or CANCELLED) —
        ``as_`` ("failed" / "cancelled") or, by default, what the compensation was for. (A run
        whose hot state was lost is resolved in the audit store: orchestrator/engine/lost.py.)"""
        (planned,) = self.state.run_fields(run_id, "compensate_target")
        target = RunStatus(as_.upper()) if as_ else RunStatus(planned or RunStatus.FAILED)
        ok, before = self.state.transition(
            run_id,
            target,
            sources=ALLOWED["resolve"],
            fields={"resolved_by": actor},
            data={"action": "resolve", "actor": actor, "reason": reason or ""},
        )
        if not ok:
            raise self._refuse("resolve", run_id, before, actor, reason)
        self.audit(run_id, "resolve", actor, reason, "ok")
        return ActionResult("resolve", run_id, before, target, {})
