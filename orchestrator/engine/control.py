"""Operator actions on live runs: pause, resume, cancel, retry, retry compensation, resolve.

Each action is one atomic Lua script in Redis (check the status against the transition table,
change it, bump the dispatch epoch when a new canvas is sent, append the event), so concurrent
actions leave one consistent outcome; the canvas it then needs is sent by the dispatcher. Every
action — refused ones included — is appended to the event stream as ``operator_action`` and
lands in the audit store's operator log. (Cloning a run submits a new one: ``Client.clone``.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.engine import children, slots
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.runstate import RunState
from orchestrator.engine.states import Move, RunStatus, StepStatus, sources
from orchestrator.errors import CanvasflowError, ControlError, UnknownRun
from orchestrator.keys import item_of
from orchestrator.model.definition import Definition, from_stored
from orchestrator.records import RunRecord, StepRecord

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
RETRY_CLEARS = [
    "halt",
    "failed_step",
    "error",
    "finished_at",
    "compensate_target",
    "resolved_by",
    "conc_evicted",  # cancel_in_progress may pick it again
]


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

    def _full(
        self, action: str, run_id: str, run: RunRecord, actor: str, reason: str | None
    ) -> CanvasflowError:
        name = slots.display(run.workflow, run.conc_key or "")
        exc = CanvasflowError(
            f"cannot {action.replace('_', ' ')} run {run_id}: every concurrency slot in {name} "
            "is taken; try again when one of its runs has ended"
        )
        self.audit(run_id, action, actor, reason, f"refused: {exc}")
        return exc

    def _load(
        self, run_id: str, action: str, actor: str, reason: str | None
    ) -> tuple[RunRecord, dict[str, StepRecord], Definition]:
        data = self.state.read(run_id)
        if data is None:
            # An action on an unknown run is audited too (docs/design.md, Operator control).
            self.audit(run_id, action, actor, reason, "refused: unknown run")
            raise UnknownRun(run_id)
        run, steps, _ = data
        return run, steps, from_stored(run.definition)

    # -- verbs --------------------------------------------------------------------------------

    def pause(self, run_id: str, *, actor: str = "api", reason: str | None = None) -> ActionResult:
        """No new step starts; running steps finish; the run goes PAUSING, then PAUSED. A run
        waiting for a concurrency slot is not paused (it has nothing running: cancel it)."""
        waiting = self.state.waiting(run_id)
        if waiting is not None:
            exc = CanvasflowError(
                f"run {run_id} is waiting for a concurrency slot ({waiting[2]} ahead): nothing "
                "of it runs yet; cancel it instead"
            )
            self.audit(run_id, "pause", actor, reason, f"refused: {exc}")
            raise exc
        ok, before = self.state.transition(
            run_id, Move.PAUSE, RunStatus.PAUSING, data={"action": "pause", "actor": actor}
        )
        if not ok:
            raise self._refuse("pause", run_id, before, actor, reason)
        self.audit(run_id, "pause", actor, reason, "ok")
        children.pause(self, run_id, actor)
        return ActionResult("pause", run_id, before, RunStatus.PAUSING, {})

    def resume(self, run_id: str, *, actor: str = "api", reason: str | None = None) -> ActionResult:
        """Continue a PAUSED run: compile what is left; no settled step runs again."""
        run, steps, defn = self._load(run_id, "resume", actor, reason)
        verdict, before, epoch = self.state.restart(
            run_id, Move.RESUME, RunStatus.RUNNING, data={"action": "resume", "actor": actor}
        )
        if verdict != "ok":
            raise self._refuse("resume", run_id, before, actor, reason)
        children.resume(self, run_id, actor)
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
            terminate=terminate,
            data={"action": "cancel", "actor": actor, "reason": reason or ""},
        )
        if verdict != "ok":
            raise self._refuse("cancel", run_id, before, actor, reason)
        if task_ids:
            self.dispatcher.revoke(task_ids)
        # Children first: each compensates inside itself, and its end lets the parent's
        # sub-workflow step end, before the parent's settle compensates the parent's steps.
        children.cancel(self, run_id, actor, terminate)
        (run,) = self.state.runs([run_id], "priority")
        self.dispatcher.settle(run_id, epoch, run.priority if run else "normal")
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
        numbered on. Steps whose compensation ran (COMPENSATED: their effects were undone) run
        again too, whichever step the retry starts from, and so does everything downstream of
        them: the retried run must not build on, or end COMPLETED with, work that was rolled
        back."""
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
                if s in steps
                and steps[s].status
                in (
                    StepStatus.CANCELLED,
                    StepStatus.PENDING,
                    StepStatus.RETRYING,
                    StepStatus.RUNNING,
                )
            }
            undone = {s for s in order if s in steps and steps[s].status == StepStatus.COMPENSATED}
            # What was built on undone work (a step without a compensation of its own, between
            # two that had one) must not be kept either: its output came from what was undone.
            for s in list(undone):
                undone |= defn.descendants(s)
            reset = [
                s
                for s in order
                if s == from_step or s in downstream or s in unfinished or s in undone
            ]
        # What the run page needs to tell an operator's retries from a step's own (Celery)
        # retries, and to show the first dispatch's SLA figure next to the retry's.
        before_attempts = {s: steps[s].attempts for s in reset if s in steps}
        # Mapped steps that run again: the one retried from re-runs its items that did not
        # complete; one downstream of it (or a retry from the start) runs every item again.
        items = {
            s: "unfinished" if s == from_step else "all"
            for s in reset
            if defn.step(s).map is not None
        }
        # The items of a mapped sub-workflow step that run again start fresh children too.
        subs = {s: how for s, how in items.items() if defn.step(s).workflow}
        item_children = [
            iid
            for iid, (status, _) in (self.state.items_live(run_id) if subs else {}).items()
            if (base := item_of(iid)) is not None
            and base[0] in subs
            and (subs[base[0]] == "all" or status != StepStatus.COMPLETED)
        ]
        verdict, before, epoch = self.state.restart(
            run_id,
            Move.RETRY,
            RunStatus.RUNNING,
            reset=reset,
            clear=RETRY_CLEARS,
            data={"action": "retry", "actor": actor, "from_step": from_step or "", "reset": reset},
            slot=slots.group_of_run(self.state, run, defn),
            items=items,
        )
        if verdict == "full":
            raise self._full("retry", run_id, run, actor, reason)
        if verdict != "ok":
            raise self._refuse("retry", run_id, before, actor, reason)
        # A reset sub-workflow step starts a fresh child (the old one stays a child of the run).
        self.state.forget_children(
            run_id, [s for s in reset if defn.step(s).workflow] + item_children
        )
        self.dispatcher.remaining(run_id, epoch, run, defn, steps, reset=reset)
        self.audit(
            run_id,
            "retry",
            actor,
            reason,
            "ok",
            {
                "from_step": from_step,
                "reset": reset,
                "epoch": epoch,
                "attempts_before": before_attempts,
                "ended_at": run.finished_at,
                "status_before": before,
            },
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
            slot=slots.group_of_run(self.state, run, defn),
        )
        if verdict == "full":
            raise self._full("retry_compensation", run_id, run, actor, reason)
        if verdict != "ok":
            raise self._refuse("retry_compensation", run_id, before, actor, reason)
        order = self.dispatcher.compensation_order(run_id, defn, steps)
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
        (run,) = self.state.runs([run_id], "compensate_target")
        planned = run.compensate_target if run else None
        target = RunStatus(as_.upper()) if as_ else RunStatus(planned or RunStatus.FAILED)
        ok, before = self.state.transition(
            run_id,
            Move.RESOLVE,
            target,
            fields={"resolved_by": actor},
            data={"action": "resolve", "actor": actor, "reason": reason or ""},
        )
        if not ok:
            raise self._refuse("resolve", run_id, before, actor, reason)
        self.audit(run_id, "resolve", actor, reason, "ok")
        return ActionResult("resolve", run_id, before, target, {})
