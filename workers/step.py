"""The step runtime: the Celery tasks that run plugin steps, settle runs and compensate.

Outcomes flow through the canvas as data: every step task returns ``{step: [status, output]}``
for itself and everything upstream, so a failure or a skip never raises into a chord, and the
settle task at the end of the canvas always runs. Nothing here relies on Celery's chord error
propagation.

Two paths run a step. The careful one asks Redis first (``begin_step``: is the run still
running, is this a duplicate, take the lease), runs the plugin, then records the end
(``finish_step``): two round trips. The fast path runs the plugin at once and records start and
end together (``run_once``): one round trip, the most a no-op step costs in Redis. It is taken
only when nothing can have changed the answer of ``begin_step``: the run is untouched as far as
this process's control watch knows (workers/watch.py: no pause, cancel, retry, resume or
failed critical step), the step has no compensation, and this is the first delivery of its
message. A fast-path step still running after a moment is begun late by the heartbeat, so long
steps are visible and leased as before. docs/design.md "The fast path" has the trade-offs.

This module is the shell: it loads (the message, the run's hot state), asks the step core
(orchestrator/engine/stepcore.py: join, when, retry or fail, the settle plan) and writes
(RunState calls, Celery retries and sends). The rules live in the core, tested without I/O.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Mapping
from typing import Any, NamedTuple, NoReturn

from celery import Task
from celery.exceptions import Ignore, MaxRetriesExceededError, Reject, Retry, SoftTimeLimitExceeded

from orchestrator.engine import compiler
from orchestrator.engine import stepcore as core
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.runstate import RunState, dumps
from orchestrator.engine.states import Move, RunStatus, StepStatus
from orchestrator.errors import StepError
from orchestrator.keys import is_item, item_of
from orchestrator.model import expressions
from orchestrator.model.definition import Definition, from_stored
from orchestrator.records import RunRecord
from orchestrator.settings import Settings
from workers import subrun
from workers.broker import is_transient
from workers.context import BEGUN, FRESH, Heartbeat, StepContext
from workers.plugins import Registry
from workers.watch import ControlWatch

log = logging.getLogger(__name__)
HOST = socket.gethostname()


class Runtime:
    """What the tasks of one worker process share: state access, plugins, heartbeat."""

    def __init__(
        self, state: RunState, registry: Registry, settings: Settings, dispatcher: Dispatcher
    ) -> None:
        self.state = state
        self.dispatcher = dispatcher
        self.registry = registry
        self.settings = settings
        self.lease_ttl = settings.lease_ttl
        self.hard_timeout_grace = settings.hard_timeout_grace
        # The heartbeat loops anyway: it takes the state as it is, not the patient stand-in
        # (workers/broker.py) that retries each call through a Redis outage.
        self.heartbeat = Heartbeat(
            getattr(state, "target", state), self.lease_ttl, settings.fast_step_begin_ms / 1000
        )
        self.fast_steps = settings.fast_steps
        self.watch = ControlWatch(state.r, state.keys)
        self.watch.listen(self.heartbeat.on_control)
        # Set by workers.app: revoke(task_id) terminates a task of this app; ``mapped`` is
        # workers/mapstep.py (mapped steps: it builds on this module, so it is handed in).
        self.revoke: Any = None
        self.mapped: Any = None
        self._method_info = {name: methods for name, methods in registry.catalog().items()}


def check_params(rt: Runtime, plugin: str, method: str, params: Mapping[str, Any]) -> None:
    info = rt._method_info.get(plugin, {}).get(method)
    if info is None:
        rt.registry.method(plugin, method)  # raises UnknownPlugin naming what exists
        return
    missing = [p for p in info["required"] if p not in params]
    if missing:
        raise StepError(
            f"{plugin}.{method}: missing required parameter(s) {', '.join(missing)}",
            retryable=False,
        )
    if not info["accepts_any"]:
        extra = [p for p in params if p not in info["params"]]
        if extra:
            raise StepError(
                f"{plugin}.{method}: unknown parameter(s) {', '.join(extra)} "
                f"(takes: {', '.join(info['params']) or 'none'})",
                retryable=False,
            )


def call_plugin(
    rt: Runtime, spec: Mapping[str, Any], params: Mapping[str, Any], ctx: StepContext
) -> str:
    """Run the plugin method; returns its output as JSON text (a non-JSON output is an error)."""
    plugin, method = spec["plugin"], spec.get("method", "run")
    check_params(rt, plugin, method, params)
    fn = rt.registry.method(plugin, method)
    output = fn(ctx, **params)
    try:
        return json.dumps(output, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StepError(
            f"output of {plugin}.{method} is not JSON: {exc}", retryable=False
        ) from None


def run_body(
    rt: Runtime, spec: Mapping[str, Any], params: Mapping[str, Any], ctx: StepContext
) -> str:
    """The body of a step (or of an item of one): call its plugin, or, for a sub-workflow
    step, start or find its child run (which raises ``subrun.Waiting``). Returns the output JSON."""
    if subrun.is_sub_step(spec):
        subrun.start_child(rt, spec, params, ctx.run_id, ctx.step_id)
    return call_plugin(rt, spec, params, ctx)


def run_step(
    task: Task, rt: Runtime, incoming: Any, wire: Any, hdr: Mapping[str, Any] | None = None
) -> Any:
    """Run one step; the step that ends the canvas (``settle`` in its spec) settles the run too.

    ``wire`` is the spec as the compiler sends it (compiler.wire_spec); the run header comes in
    the incoming outcomes (``"@"``), or as ``hdr`` from messages of older versions.
    """
    spec = compiler.read_spec(wire)
    if hdr is None:
        incoming = core.merge(incoming)
        hdr = compiler.read_header(incoming[core.HEADER])
    else:
        hdr = dict(hdr)
    try:
        known = _run_step(task, rt, incoming, spec, hdr)
    except Ignore as exc:
        if spec.get("settle") and not isinstance(exc, subrun.Parked):
            safe_settle(
                task, rt, hdr
            )  # a redelivered copy: its first may have died before settling
        raise
    except BaseException as exc:
        if not unexpected(exc):
            raise
        # Whatever broke (a template result too big to encode, a bug, a bad record), the step
        # fails with the error and the run goes on to its end: never a stranded run.
        known = fail_step(task, rt, spec, hdr, core.merge(incoming), exc)
    if spec.get("settle"):
        safe_settle(task, rt, hdr)
    return known


def join_child(
    task: Task,
    rt: Runtime,
    known: Any,
    wire: Any,
    child_id: str,
    owner: str,
    attempt: int,
    started: float,
) -> Any:
    """The join task of a sub-workflow step (workers/subrun.py): record the step's outcome from
    its child and continue the canvas; the step that ends the canvas settles the run too."""
    spec = compiler.read_spec(wire)
    if is_item(spec["id"]):  # an item of a mapped sub-workflow step: its lane goes on
        return rt.mapped.item_joined(task, rt, known, wire, child_id, owner, attempt, started)
    hdr = compiler.read_header(core.merge(known)[core.HEADER])
    try:
        flows = subrun.joined(task, rt, known, wire, child_id, owner, attempt, started)
    except Ignore:
        if spec.get("settle"):
            safe_settle(task, rt, hdr)
        raise
    if spec.get("settle"):
        safe_settle(task, rt, hdr)
    return flows


def unexpected(exc: BaseException) -> bool:
    """An exception that is a failure of the step, not Celery's control flow (retry, ignore,
    reject, a retry refused past max_retries: Celery's business as before), a Redis outage (the
    message goes back, workers/broker.py) or a shutdown (SystemExit when the pool process is
    told to stop: its message is not acknowledged and runs again)."""
    return (
        isinstance(exc, Exception)
        and not isinstance(exc, Retry | Ignore | Reject | MaxRetriesExceededError)
        and not is_transient(exc)
    )


def _text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises: its type must do
        text = ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "…"


def fail_step(
    task: Task,
    rt: Runtime,
    spec: Mapping[str, Any],
    hdr: Mapping[str, Any],
    known: core.Outcomes,
    exc: BaseException,
) -> core.Outcomes:
    """Record ``exc``, raised on the step path outside the plugin, as the step's failure (if the
    step is not settled already) and return the outcome that flows on."""
    run_id, sid, epoch = hdr["run"], spec["id"], int(hdr["epoch"])
    error = f"step '{sid}' failed on worker {HOST} outside its plugin: {_text(exc)}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-16384:]
    log.error("canvasflow: %s/%s: %s\n%s", run_id, sid, error, tb)
    request = task.request
    current = rt.state.step(run_id, sid, "status", "attempts", "attempt_started_at")
    record = core.broken_record(
        sid,
        current.status,
        current.attempts,
        current.attempt_started_at,
        now=time.time(),
        worker=request.hostname or HOST,
        task_id=request.id or "",
        error=error,
        tb=tb,
    )
    if rt.state.fail_killed_step(
        run_id, sid, epoch, error=error, critical=spec.get("critical", True), attempt=record
    ):
        if spec.get("critical", True):
            rt.watch.touch(run_id)
            known[core.HALTING] = 1
        return core.flow_on(known, spec, StepStatus.FAILED)
    # Settled already (the error came after the outcome was written): that outcome flows on.
    return core.flow_on(known, spec, rt.state.step(run_id, sid, "status").status)


def safe_settle(task: Task, rt: Runtime, hdr: Mapping[str, Any]) -> str:
    """``settle``, and if it breaks on anything but an outage, the run still ends: FAILED with why.
    A child run that ended (or paused with its parent) then continues its parent (``settle``
    does that itself, knowing whether the run has a parent: a top-level run pays nothing)."""
    try:
        return settle(task, rt, hdr)
    except BaseException as exc:
        if not unexpected(exc):
            raise
        error = f"canvasflow could not settle the run on worker {HOST}: {_text(exc)}"
        log.exception("canvasflow: run %s: %s", hdr["run"], error)
        done, before = rt.state.transition(
            hdr["run"], Move.ABANDON, RunStatus.FAILED, fields={"error": error}
        )
        status = RunStatus.FAILED if done else before
    subrun.notify(rt, task.app, hdr["run"], status)
    return status


def complete(rt: Runtime, run_id: str, has_outputs: str | None) -> tuple[bool, str]:
    """Move the run to COMPLETED with its result (its outputs evaluated), or FAILED when an
    entry of its outputs cannot be evaluated: (done, the status)."""
    fields, error = subrun.result_fields(rt, run_id) if has_outputs else ({}, "")
    if error:
        done, _ = rt.state.transition(
            run_id, Move.SETTLE, RunStatus.FAILED, fields={"error": error}
        )
        return done, RunStatus.FAILED
    data = {"result": json.loads(fields["result_json"])} if fields else None
    done, _ = rt.state.transition(
        run_id, Move.SETTLE, RunStatus.COMPLETED, fields=fields, data=data
    )
    return done, RunStatus.COMPLETED


def _may_run_first(
    task: Task, rt: Runtime, spec: Mapping[str, Any], known: Mapping[str, Any], run_id: str
) -> bool:
    """Whether this step may run before telling Redis (module docstring)."""
    request = task.request
    first = not request.retries and not (request.delivery_info or {}).get("redelivered")
    return core.may_run_first(
        spec, known, enabled=rt.fast_steps, first_delivery=first
    ) and rt.watch.clean(run_id)


class _Who(NamedTuple):
    """Who runs this attempt: the Celery task, its worker, and the owner its begin and lease
    carry (so the same process asking again is recognised)."""

    task_id: str
    worker: str
    owner: str


def _who(task: Task) -> _Who:
    request = task.request
    task_id = request.id or ""
    return _Who(task_id, request.hostname or HOST, f"{HOST}:{os.getpid()}:{task_id}")


def _run_step(
    task: Task, rt: Runtime, incoming: Any, spec: dict[str, Any], hdr: dict[str, Any]
) -> Any:
    run_id, sid = hdr["run"], spec["id"]
    known = core.merge(incoming)
    who = _who(task)
    if spec.get("deps") == "@":
        spec = {**spec, "deps": rt.state.step_deps(run_id, sid)}
    if spec.get("map"):
        return rt.mapped.expand(task, rt, spec, hdr, known, who)  # into items: workers/mapstep.py
    return execute(task, rt, spec, hdr, known, core.admit(spec, hdr, known), who)


def execute(
    task: Task,
    rt: Runtime,
    spec: dict[str, Any],
    hdr: dict[str, Any],
    known: core.Outcomes,
    entry: core.Go | core.Skip,
    who: _Who,
) -> Any:
    """The body of a step: begin, render, call the plugin, record the end, retry or flow on.
    A plain step and each item of a mapped step (workers/mapstep.py: the item's id, its scope
    in ``entry``) go through this one function."""
    run_id, epoch, sid = hdr["run"], hdr["epoch"], spec["id"]
    ctx = _begin(task, rt, spec, hdr, known, entry, who)
    if not isinstance(ctx, StepContext):
        return ctx  # Redis said the step may not (or need not) run: what flows on instead
    go = entry if isinstance(entry, core.Go) else core.Go()  # begin_step never says go to a skip

    started = ctx.started
    try:
        rendered, output, failure, phase = _attempt(rt, spec, hdr, known, go, ctx)
    except subrun.Waiting as waiting:
        known.setdefault(core.HEADER, compiler.wire_header(hdr))
        subrun.wait_for_child(
            task, rt, spec, known, waiting.child_id, who.owner, ctx.attempt, started
        )
    end = core.conclude(failure, spec, ctx.attempt)
    finished = time.time()
    record = core.attempt_record(
        spec,
        end.status,
        started=started,
        finished=finished,
        worker=who.worker,
        task_id=who.task_id,
        failure=failure,
        stats=ctx.final_stats(),
        rendered=rendered,
    )
    batch = ctx.drain()
    if ctx.has_counters:
        # The attempt record carries the stats too; a step that set counters also gets a
        # "stats" event (the live dashboard's per-step summary).
        batch.append(["stats", sid, "", f"{finished:.6f}", dumps(record["stats"])])
    common = {
        "status": str(end.status),
        "output": output,
        "error": failure.error if failure else "",
        "traceback": failure.traceback if failure else "",
        "critical": spec.get("critical", True),
        "batch": batch,
    }

    if phase == FRESH:
        end = _record_fresh(rt, spec, hdr, known, ctx, end, record, common, who)
    elif phase == BEGUN:
        result = rt.state.finish_step(
            run_id,
            sid,
            epoch,
            owner=who.owner,
            attempt={"attempt": ctx.attempt, **record},
            **common,
        )
        if result != "ok":
            raise Ignore()  # another copy took the step over after our lease lapsed
    else:  # the late begin was refused, or the run was cancelled before Redis knew of the step
        verdict, info, *rest = ctx.verdict
        if verdict == "adopt":
            return _not_begun(task, rt, spec, known, verdict, info, rest)
        _discard(rt, run_id, sid, record, verdict)
    if isinstance(end, core.Retry):
        raise task.retry(countdown=end.countdown, max_retries=None)
    return core.flow_on(known, spec, str(end.status), core.kept_output(spec, end.status, output))


def _begin(
    task: Task,
    rt: Runtime,
    spec: Mapping[str, Any],
    hdr: Mapping[str, Any],
    known: core.Outcomes,
    entry: core.Go | core.Skip,
    who: _Who,
) -> StepContext | core.Outcomes:
    """Start the step: on the fast path at once, else by asking Redis (``begin_step``, which
    also records a skip). Returns its context, or what flows on when Redis said no."""
    run_id, sid = hdr["run"], spec["id"]
    if isinstance(entry, core.Go) and _may_run_first(task, rt, spec, known, run_id):
        return _start_first(rt, hdr, sid, who)
    reason = entry.reason if isinstance(entry, core.Skip) else ""
    verdict, info, *rest = rt.state.begin_step(
        run_id,
        sid,
        hdr["epoch"],
        intent="skip" if reason else "run",
        owner=who.owner,
        lease_ttl=rt.lease_ttl,
        task_id=who.task_id,
        worker=who.worker,
        reason=reason,
    )
    if verdict != "go":
        return _not_begun(task, rt, spec, known, verdict, info, rest)
    ctx = StepContext(run_id, sid, int(info), hdr.get("wf", ""))
    rt.heartbeat.add(ctx, who.owner)
    return ctx


def _record_fresh(
    rt: Runtime,
    spec: Mapping[str, Any],
    hdr: Mapping[str, Any],
    known: core.Outcomes,
    ctx: StepContext,
    end: core.End,
    record: Mapping[str, Any],
    common: Mapping[str, Any],
    who: _Who,
) -> core.End:
    """Record a fast-path attempt, start and end in one script (``run_once``)."""
    run_id, sid = hdr["run"], spec["id"]
    verdict, *answer = rt.state.run_once(
        run_id,
        sid,
        hdr["epoch"],
        started=ctx.started,
        attempt=record,
        worker=who.worker,
        task_id=who.task_id,
        **common,
    )
    if verdict != "ok":
        _discard(rt, run_id, sid, record, verdict)
    attempt = int(answer[0])
    if isinstance(end, core.Retry) and attempt != ctx.attempt:
        # Redis numbered the attempt (a step retried long after its run was last touched counts
        # on): the wait follows that number, as after begin_step.
        end = core.Retry(core.retry_countdown(spec, attempt))
    if core.halting(answer[1], answer[2]):
        # Paused, cancelled or failing while this step ran: what follows asks Redis first.
        rt.watch.touch(run_id)
        known[core.HALTING] = 1
    return end


def _start_first(rt: Runtime, hdr: Mapping[str, Any], sid: str, who: _Who) -> StepContext:
    """Put a step on the fast path: as far as anyone can know, this is attempt 1 (a first
    delivery of an untouched run's step); the heartbeat begins it late if it runs long."""
    run_id, epoch = hdr["run"], hdr["epoch"]
    ctx = StepContext(run_id, sid, 1, hdr.get("wf", ""))
    ctx.run_fresh()

    def begin_late() -> tuple[str, ...]:
        return rt.state.begin_step(
            run_id,
            sid,
            epoch,
            intent="late",
            owner=who.owner,
            lease_ttl=rt.lease_ttl,
            task_id=who.task_id,
            worker=who.worker,
            started=ctx.started,
        )

    def terminate() -> None:
        if rt.revoke is not None:
            rt.revoke(who.task_id)

    rt.heartbeat.add(ctx, who.owner, begin=begin_late, terminate=terminate)
    return ctx


def _attempt(
    rt: Runtime,
    spec: Mapping[str, Any],
    hdr: Mapping[str, Any],
    known: Mapping[str, list[Any]],
    go: core.Go,
    ctx: StepContext,
) -> tuple[Any, str, core.Failure | None, int]:
    """Render the params and call the plugin: (rendered params or None, output JSON, failure
    or None, the phase the step ends in)."""
    params = spec.get("params") or {}
    rendered: Any = None
    try:
        if go.error:
            raise StepError(go.error, retryable=False)
        if params:
            params = expressions.render_value(params, go.scope or core.scope_for(hdr, known))
            rendered = params
        output, failure = run_body(rt, spec, params, ctx), None
    except (Retry, subrun.Waiting):
        raise
    except BaseException as exc:  # a plugin may raise anything; SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        output, failure = "null", _failure(exc, spec)
    finally:
        phase = rt.heartbeat.remove(ctx)
    return rendered, output, failure, phase


def _failure(exc: BaseException, spec: Mapping[str, Any]) -> core.Failure:
    timed_out = isinstance(exc, SoftTimeLimitExceeded)
    return core.describe_failure(exc, spec, host=HOST, timed_out=timed_out)


def _not_begun(
    task: Task,
    rt: Runtime,
    spec: Mapping[str, Any],
    known: core.Outcomes,
    verdict: str,
    info: str,
    rest: list[str],
) -> core.Outcomes:
    """What a step does when Redis said it may not (or need not) run."""
    request = task.request
    then = core.not_begun(
        verdict,
        info,
        rest,
        spec,
        lease_ttl=rt.lease_ttl,
        task_id=request.id or "",
        redelivered=bool((request.delivery_info or {}).get("redelivered")),
    )
    if isinstance(then, core.Flow):
        return core.flow_on(known, spec, then.status, then.output, always=then.always)
    if isinstance(then, core.Retry):
        raise task.retry(countdown=then.countdown, max_retries=None)
    raise Ignore()


def _discard(
    rt: Runtime, run_id: str, sid: str, record: Mapping[str, Any], verdict: str
) -> NoReturn:
    """A fast-path step ran, but its run had moved on (another dispatch, a cancel) or another
    copy owns the step: nothing is recorded as its outcome; the attempt is kept as an event."""
    log.warning(
        "canvasflow: step '%s' of run %s ran but its outcome is dropped (%s)", sid, run_id, verdict
    )
    if verdict != "gone":
        try:
            rt.state.emit(
                run_id,
                [
                    [
                        "step_discarded",
                        sid,
                        "",
                        f"{time.time():.6f}",
                        dumps({**record, "reason": verdict}),
                    ]
                ],
            )
        except Exception:
            log.warning(
                "canvasflow: could not record the dropped attempt of %s/%s",
                run_id,
                sid,
                exc_info=True,
            )
    raise Ignore()


def on_hard_timeout(rt: Runtime, args: Any, limit: float) -> None:
    """In the worker's main process, after Celery killed a step's pool process at its hard time
    limit: record the failure, and re-send what is left (Celery will not continue the canvas)."""
    try:
        incoming, wire, *old = args
        spec = compiler.read_spec(wire)
        hdr = compiler.read_header(old[0] if old else core.merge(incoming)[core.HEADER])
        run_id, sid, epoch = hdr["run"], spec["id"], hdr["epoch"]
    except (TypeError, ValueError, KeyError, IndexError):
        return  # not a step task's arguments
    fail_at_hard_limit(rt, run_id, sid, int(epoch), spec, limit, "step")


def fail_at_hard_limit(
    rt: Runtime, run_id: str, sid: str, epoch: int, spec: Mapping[str, Any], limit: float, what: str
) -> None:
    """Record the killed attempt of step (or item) ``sid`` FAILED with the time limit's error
    and, if that failed it, re-send what is left of the run. ``spec``: the step's (an item's has
    its own timeout); ``what``: "step" or "item", for the reason."""
    error = core.hard_timeout_error(spec, limit)
    current = rt.state.step(run_id, sid, "attempts", "attempt_started_at", "worker", "task_id")
    record = core.killed_record(
        sid,
        current.attempts,
        current.attempt_started_at,
        current.worker,
        current.task_id,
        now=time.time(),
        error=error,
    )
    if rt.state.fail_killed_step(
        run_id, sid, epoch, error=error, critical=spec.get("critical", True), attempt=record
    ):
        rt.dispatcher.redispatch(run_id, reason=f"{what} '{sid}' killed at its hard time limit")


def load_run_definition(run: RunRecord) -> Definition:
    return from_stored(run.definition)


def compensable(defn: Definition, items: Mapping[str, Any] = {}) -> set[str]:  # noqa: B006
    """Steps that declare a ``compensate``, and the items of such steps when they are mapped."""
    steps = {s.id for s in defn.steps if s.compensate}
    return steps | {iid for iid in items if (item_of(iid) or ("",))[0] in steps}


def settle(task: Task, rt: Runtime, hdr: Mapping[str, Any]) -> str:
    """The last task of every dispatch: decide how the run ends (or pauses)."""
    run_id, epoch = hdr["run"], hdr["epoch"]
    # The common end, a running run with nothing to wind down, needs three fields, not the
    # whole state (a 1000-step run's steps and attempts are ~1 MB).
    head = rt.state.settle_head(run_id)
    at_once = core.settle_head(head[:3] if head else None, epoch)
    if at_once in ("gone", "stale"):
        return at_once
    if at_once == "complete":
        done, ended = complete(rt, run_id, head[3] if head else None)
        if done:
            if head and head[4]:  # a child run: its parent's step waits for it
                subrun.notify(rt, task.app, run_id, ended)
            return ended
    data = rt.state.read(run_id)
    if data is None:
        return "gone"
    run, steps, _ = data
    if run.epoch != int(epoch):
        return "stale"
    status, halt = run.status, run.halt or ""
    statuses = {sid: step.status for sid, step in steps.items()}
    # After a cancel (a lone settle with a new epoch) steps of the old dispatch may still be
    # running: the plan waits for them; a RUNNING step without a lease has lost its worker.
    alive = [sid for sid in core.running(statuses) if rt.state.lease_holder(run_id, sid)]
    # The items of mapped steps count as steps here: a running one is waited for, one that never
    # started is cancelled, a completed one is compensated (workers/mapstep.py).
    items = rt.state.items_live(run_id)
    alive += [iid for iid, (_, live) in items.items() if live]
    statuses.update((iid, st) for iid, (st, _) in items.items())
    if not alive and core.unwind_target(status, halt) and subrun.children_active(rt, run_id):
        # Children wind down first (a cancel reached them): their compensations run before the
        # parent's own.
        raise task.retry(countdown=core.Wait().countdown, max_retries=None)
    defn = load_run_definition(run) if not alive and core.unwind_target(status, halt) else None
    plan = core.settle_plan(
        status,
        halt,
        statuses,
        alive=alive,
        completed=rt.state.completed_order(run_id) if defn else (),
        compensable=compensable(defn, items) if defn else (),
    )
    if isinstance(plan, core.Wait):
        raise task.retry(countdown=plan.countdown, max_retries=None)
    ended = _carry_out(rt, run_id, int(epoch), run, defn, plan)
    if run.parent_run:
        subrun.notify(rt, task.app, run_id, ended)
    return ended


def _carry_out(
    rt: Runtime,
    run_id: str,
    epoch: int,
    run: RunRecord,
    defn: Definition | None,
    plan: core.SettlePlan,
) -> str:
    """Write what the settle plan says, in its order."""
    lost_items = [sid for sid in plan.lost if is_item(sid)]
    if plan.final is not RunStatus.PAUSED:
        # Items that never started (or lost their worker) end CANCELLED, in bulk; after a pause
        # they stay as they are and the resume runs them.
        never = [sid for sid, _ in plan.cancel if is_item(sid)] + lost_items
        rt.state.close_items(run_id, never, reason="its run was cancelled or failed", lost=True)
    for sid in plan.lost:
        if is_item(sid):
            continue
        # only if still RUNNING: the step may have finished since the read above
        rt.state.set_step(
            run_id,
            sid,
            StepStatus.CANCELLED,
            "step_cancelled",
            expect=StepStatus.RUNNING,
            fields={"error": "its worker was lost while the run was being cancelled"},
        )
    if plan.final is RunStatus.PAUSED:
        rt.state.transition(run_id, Move.SETTLE, RunStatus.PAUSED)
        return RunStatus.PAUSED
    if plan.final is RunStatus.COMPLETED:
        return complete(rt, run_id, run.has_outputs)[1]
    for sid, before in plan.cancel:
        if not is_item(sid):
            rt.state.set_step(run_id, sid, StepStatus.CANCELLED, "step_cancelled", expect=before)
    if plan.compensate and defn is not None:
        done, _ = rt.state.transition(
            run_id,
            Move.SETTLE,
            RunStatus.COMPENSATING,
            fields={"compensate_target": str(plan.final)},
        )
        if done:
            rt.dispatcher.compensations(
                run_id, epoch, run, defn, list(plan.compensate), str(plan.final)
            )
        return RunStatus.COMPENSATING
    rt.state.transition(run_id, Move.SETTLE, plan.final)
    return plan.final
