"""Sending a run's canvas: every message that starts or continues a run leaves from here.

A run is dispatched first when it is submitted, and again when an operator resumes, retries,
cancels or retries its compensation, when its settle starts compensations, when a step of it is
killed at its hard time limit or refused by the message guard, and when the watchdog finds it
stalled. Each case is one method of :class:`Dispatcher`: the compiler builds the canvas, the
dispatcher gives it the run's context (epoch, priority, header, queues) and sends it, so what
is sent in each case is decided in one place. Callers move the run (in Lua) before they ask
for a send; the dispatcher writes state only where the send decides it: a new run's record, a
first send that failed, and the claim of a broken run it re-sends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from orchestrator.engine import compiler, slots
from orchestrator.engine.itemstate import item_runs
from orchestrator.engine.runstate import RunState
from orchestrator.engine.slotstate import DUPLICATE, Admission, SlotGroup
from orchestrator.engine.states import SETTLED_STEP_STATUSES, Move, RunStatus, StepStatus
from orchestrator.keys import item_of
from orchestrator.model.definition import Definition, from_stored
from orchestrator.records import RunRecord, StepRecord
from orchestrator.settings import Settings

# A run in these statuses is running its steps: when its canvas breaks, they are sent again.
RUNNING_STATUSES = (RunStatus.RUNNING, RunStatus.PAUSING, RunStatus.PENDING)

log = logging.getLogger(__name__)


class Dispatcher:
    """Sends the canvas of runs through one Celery app."""

    def __init__(self, app: Any, settings: Settings, state: RunState) -> None:
        self.app = app
        self.settings = settings
        self.state = state

    def context(
        self, run_id: str, epoch: int, run: RunRecord, defn: Definition
    ) -> compiler.RunContext:
        """What every task of one dispatch carries, from the run's stored fields."""
        return self._context(
            run_id, epoch, run.priority, defn, run.inputs, compiler.uses_inputs(defn)
        )

    def _context(
        self,
        run_id: str,
        epoch: int,
        priority: str,
        defn: Definition,
        inputs: Mapping[str, Any],
        uses_inputs: bool,
    ) -> compiler.RunContext:
        return compiler.RunContext(
            run_id,
            epoch,
            priority,
            self.settings.hard_timeout_grace,
            defn.id,
            defn.version or "",
            inputs if uses_inputs else None,
            self.settings.default_queue,
            self.settings.broker_is_amqp,
        )

    # -- the cases ----------------------------------------------------------------------------

    def start(
        self,
        run: RunRecord,
        defn: Definition,
        inputs: Mapping[str, Any],
        *,
        prepared: compiler.Blueprint | None = None,
        claim: tuple[str, int] | None = None,
        fence: tuple[str, str] | None = None,
        slot: SlotGroup | None = None,
    ) -> Admission | None:
        """A new run: compile it (before anything is written: a definition that cannot compile
        leaves no run behind), record it PENDING, send it. A send that fails ends the run FAILED
        with why, and raises.

        With ``claim`` (key, ttl) the run is recorded only if no run holds the key yet: when one
        does, nothing is written or sent and the admission's verdict is DUPLICATE with that run's
        id as its one ``admitted``. ``fence``: the scheduler's (RunState.create). With a
        concurrency ``slot`` group the run is sent only once it holds a slot: the admission says
        whether it does, waits, or was cancelled."""
        bp = prepared or compiler.blueprint(defn)
        if defn.outputs and not run.has_outputs:
            run = replace(run, has_outputs="1")  # its settle evaluates them (workers/subrun.py)
        run_id = run.id
        ctx = self._context(run_id, 1, run.priority, defn, inputs, bp.uses_inputs)
        canvas = compiler.compile_run(defn, ctx, app=self.app, prepared=bp)
        held = self.state.create(run, defn.step_ids, claim=claim, fence=fence)
        if held is not None:
            return Admission(DUPLICATE, 0, "", [held])
        adm = None
        if slot is not None and defn.concurrency is not None:
            conc = defn.concurrency
            adm = self.state.admit(
                run_id,
                slot,
                strategy=conc.strategy,
                priority=run.priority,
                reason=f"cancelled: every slot in {slots.display(defn.id, slot.key)} is taken "
                f"({conc.limit} active; strategy cancel_newest)",
            )
            self.admitted([r for r in adm.admitted if r != run_id])
            if adm.verdict != "admitted":
                return adm
        try:
            canvas.apply_async()
        except Exception as exc:
            # The run is recorded but nothing was queued: say so instead of leaving it PENDING.
            self.state.transition(
                run_id,
                Move.ABANDON,
                RunStatus.FAILED,
                fields={"error": f"could not dispatch the run: {exc}"},
            )
            if claim is not None:
                # The caller sees the error and may send again with the same key: that must
                # start a run, not find this failed one (docs/design.md "Event triggers").
                self.state.release_claim(claim[0], run_id)
            raise
        return adm

    def readmit(self, run_id: str) -> Admission | None:
        """Ask again for the slot of a PENDING run that neither holds nor waits for one (its
        submit died between recording it and asking: the watchdog's repair); sends what it
        admits. None for a run without a group."""
        data = self.state.read(run_id)
        if data is None:
            return None
        run = data.run
        defn = from_stored(run.definition)
        group = slots.group_of_run(self.state, run, defn)
        if group is None or defn.concurrency is None:
            return None
        adm = self.state.admit(
            run_id,
            group,
            strategy=defn.concurrency.strategy,
            priority=run.priority,
            reason=f"cancelled: every slot in {slots.display(defn.id, group.key)} is taken "
            f"({group.limit} active; strategy cancel_newest)",
        )
        self.admitted(adm.admitted)
        return adm

    def admitted(self, run_ids: Iterable[str]) -> None:
        """Send runs just given a concurrency slot (they waited PENDING, nothing of them sent).
        One that cannot be sent keeps its slot and stays PENDING: the watchdog finds it stalled
        and sends it."""
        for rid in run_ids:
            try:
                data = self.state.read(rid)
                if data is None or data.run.status not in (RunStatus.PENDING, RunStatus.PAUSING):
                    continue
                run, steps, _ = data
                self.remaining(rid, run.epoch, run, from_stored(run.definition), steps)
            except Exception:
                log.exception("run %s got a concurrency slot but could not be sent", rid)

    def remaining(
        self,
        run_id: str,
        epoch: int,
        run: RunRecord,
        defn: Definition,
        steps: Mapping[str, StepRecord],
        reset: Iterable[str] = (),
    ) -> None:
        """Every step not settled (or ``reset``), seeded with the outcomes of the settled ones
        (resume, retry, re-dispatch). Steps still running from an earlier dispatch are adopted
        when they end."""
        reset = set(reset)
        settled = {}
        for sid, step in steps.items():
            if sid in reset or step.status not in SETTLED_STEP_STATUSES:
                continue
            settled[sid] = (step.status, step.output)
        ctx = self.context(run_id, epoch, run, defn)
        compiler.compile_run(defn, ctx, settled=settled, app=self.app).apply_async()

    def settle(self, run_id: str, epoch: int, priority: str) -> None:
        """A lone settle (cancel): it waits for running steps, closes what never started and
        compensates. It reads nothing but the run id and epoch from its header."""
        ctx = compiler.RunContext(
            run_id,
            epoch,
            priority,
            queue=self.settings.default_queue,
            amqp=self.settings.broker_is_amqp,
        )
        compiler.compile_settle(ctx, app=self.app).apply_async()

    def compensations(
        self,
        run_id: str,
        epoch: int,
        run: RunRecord,
        defn: Definition,
        order: list[str],
        target: str,
    ) -> None:
        """The compensations of ``order`` (newest completion first), one at a time, then the
        run moves to ``target``."""
        ctx = self.context(run_id, epoch, run, defn)
        sequences = {}
        for start, length in item_runs(order):
            name = f"c{epoch}.{start}"
            self.state.store_sequence(run_id, name, order[start : start + length])
            sequences[start] = (name, length)
        compiler.compile_compensation(
            defn, ctx, order, target, app=self.app, sequences=sequences
        ).apply_async()

    def redispatch(self, run_id: str, reason: str) -> bool:
        """Re-send what is left of a live run whose canvas broke (a step's process was killed at
        its hard time limit, or its message refused: Celery will not continue the chain or chord
        past it), with a new epoch. False when there is nothing to send."""
        data = self.state.read(run_id)
        if data is None:
            return False
        run, steps, _ = data
        status = run.status
        if status not in RUNNING_STATUSES:
            return False  # a cancel already sent its own settle; a final run needs nothing
        verdict, _, epoch = self.state.restart(
            run_id,
            Move.REDISPATCH,
            RunStatus(status),
            data={"action": "redispatch", "reason": reason},
        )
        if verdict != "ok":
            return False
        self.remaining(run_id, epoch, run, from_stored(run.definition), steps)
        return True

    def resend(
        self,
        run_id: str,
        epoch: int,
        status: str,
        run: RunRecord,
        defn: Definition,
        steps: Mapping[str, StepRecord],
    ) -> None:
        """What a stalled run in ``status`` was waiting for (the watchdog, after its claim)."""
        if status == RunStatus.CANCELLING:
            self.settle(run_id, epoch, run.priority)
        elif status == RunStatus.COMPENSATING:
            # A compensation that was running when the canvas was lost is run again.
            order = self.compensation_order(
                run_id, defn, steps, (StepStatus.COMPLETED, StepStatus.COMPENSATING)
            )
            target = run.compensate_target or RunStatus.FAILED
            self.compensations(run_id, epoch, run, defn, order, str(target))
        else:
            self.remaining(run_id, epoch, run, defn, steps)

    def compensation_order(
        self,
        run_id: str,
        defn: Definition,
        steps: Mapping[str, StepRecord],
        statuses: tuple[str, ...] = (StepStatus.COMPLETED,),
    ) -> list[str]:
        """Steps, and items of mapped steps, in one of ``statuses`` whose step declares a
        ``compensate``: newest completion first."""
        items = self.state.items_live(run_id) if any(s.map for s in defn.steps) else {}
        ids = set(defn.step_ids)
        order = []
        for sid in reversed(self.state.completed_order(run_id)):
            base = item_of(sid)
            step_id = base[0] if base else sid
            if step_id not in ids or not defn.step(step_id).compensate:
                continue
            status = (
                items.get(sid, ("",))[0] if base else (steps[sid].status if sid in steps else "")
            )
            if status in statuses:
                order.append(sid)
        return order

    def revoke(self, task_ids: list[str]) -> None:
        """Terminate running step tasks (SIGTERM to their pool processes): a cancel's first act."""
        self.app.control.revoke(task_ids, terminate=True, signal="SIGTERM")
