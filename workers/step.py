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
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Mapping
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, MaxRetriesExceededError, Reject, Retry, SoftTimeLimitExceeded

from orchestrator.engine import compiler
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.runstate import RunState, dumps
from orchestrator.engine.states import Move, RunStatus, StepStatus
from orchestrator.errors import EvaluationError, StepError, UnknownPlugin
from orchestrator.model import expressions
from orchestrator.model.definition import Definition, backoff_seconds, from_stored
from orchestrator.records import RunRecord
from orchestrator.settings import Settings
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
        # Set by workers.app: revoke(task_id) terminates a task of this app.
        self.revoke: Any = None
        self._method_info = {name: methods for name, methods in registry.catalog().items()}


def merge(incoming: Any, into: dict[str, list[Any]] | None = None) -> dict[str, list[Any]]:
    """Fold the outcome(s) a task receives (a dict, or a chord's list of them) into one dict."""
    known = {} if into is None else into
    if isinstance(incoming, Mapping):
        known.update(incoming)
    elif isinstance(incoming, list):
        for item in incoming:
            merge(item, known)
    return known


def join_verdict(spec: Mapping[str, Any], known: Mapping[str, list[Any]]) -> str:
    """Empty when the step may run, else why it is skipped (DESIGN.md join rules)."""
    deps = spec.get("deps")
    if not deps:
        return ""
    statuses = {d: (known.get(d) or ["PENDING"])[0] for d in deps}
    if spec.get("join") == "any":
        if any(s == StepStatus.COMPLETED for s in statuses.values()):
            return ""
        listing = ", ".join(f"{d}: {s}" for d, s in statuses.items())
        return f"join any: no dependency completed ({listing})"
    for d, s in statuses.items():
        if s in (StepStatus.SKIPPED, StepStatus.CANCELLED, StepStatus.PENDING):
            return f"dependency '{d}' was {s.lower()}"
    return ""


# In the outcomes that flow on: "an upstream step saw its run halting, paused or cancelled";
# downstream steps then take the careful path whatever their process has heard. Not a step id
# (those match [a-z0-9][a-z0-9_.-]*).
HALTING = "!"
NOT_STEPS = frozenset({HALTING, compiler.HEADER})


def scope_for(hdr: Mapping[str, Any], known: Mapping[str, list[Any]]) -> dict[str, Any]:
    return {
        "inputs": hdr.get("inputs", {}),
        "steps": {
            sid: {"status": v[0], "output": v[1]}
            for sid, v in known.items()
            if sid not in NOT_STEPS
        },
        "run": {"id": hdr["run"], "workflow": hdr.get("wf", ""), "version": hdr.get("version", "")},
    }


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


def describe_failure(exc: BaseException, spec: Mapping[str, Any]) -> tuple[str, str, bool]:
    """(error message, traceback text, retryable) for an exception raised by a step."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return (
            f"timeout: step '{spec['id']}' ran past its timeout of {spec.get('timeout')}s",
            "",
            True,
        )
    if isinstance(exc, StepError):
        return str(exc), "", exc.retryable
    if isinstance(exc, UnknownPlugin):
        return f"{exc} on worker {HOST}", "", False
    if isinstance(exc, EvaluationError):
        return str(exc), "", False
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}", tb, True


def retry_countdown(spec: Mapping[str, Any], attempt: int) -> float:
    delay, backoff, cap = spec.get("delay", [1.0, "fixed", 120.0])
    return backoff_seconds(delay, backoff, cap, attempt)


def _record(
    known: dict[str, list[Any]], spec: Mapping[str, Any], status: str, output: Any = None
) -> dict[str, list[Any]]:
    """Add this step's outcome to what flows on, if a later step looks at it."""
    if not spec.get("drop"):
        known[spec["id"]] = [status, output]
    return known


def run_step(
    task: Task, rt: Runtime, incoming: Any, wire: Any, hdr: Mapping[str, Any] | None = None
) -> Any:
    """Run one step; the step that ends the canvas (``settle`` in its spec) settles the run too.

    ``wire`` is the spec as the compiler sends it (compiler.wire_spec); the run header comes in
    the incoming outcomes (``"@"``), or as ``hdr`` from messages of older versions.
    """
    spec = compiler.read_spec(wire)
    if hdr is None:
        incoming = merge(incoming)
        hdr = compiler.read_header(incoming[compiler.HEADER])
    else:
        hdr = dict(hdr)
    try:
        known = _run_step(task, rt, incoming, spec, hdr)
    except Ignore:
        if spec.get("settle"):
            safe_settle(
                task, rt, hdr
            )  # a redelivered copy: its first may have died before settling
        raise
    except BaseException as exc:
        if not unexpected(exc):
            raise
        # Whatever broke (a template result too big to encode, a bug, a bad record), the step
        # fails with the error and the run goes on to its end: never a stranded run.
        known = fail_step(task, rt, spec, hdr, merge(incoming), exc)
    if spec.get("settle"):
        safe_settle(task, rt, hdr)
    return known


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
    known: dict[str, list[Any]],
    exc: BaseException,
) -> dict[str, list[Any]]:
    """Record ``exc``, raised on the step path outside the plugin, as the step's failure (if the
    step is not settled already) and return the outcome that flows on."""
    run_id, sid, epoch = hdr["run"], spec["id"], int(hdr["epoch"])
    error = f"step '{sid}' failed on worker {HOST} outside its plugin: {_text(exc)}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-16384:]
    log.error("canvasflow: %s/%s: %s\n%s", run_id, sid, error, tb)
    current = rt.state.step(run_id, sid, "status", "attempts", "attempt_started_at")
    running = current.status == StepStatus.RUNNING
    request = task.request
    finished = time.time()
    record = {
        "step": sid,
        "attempt": current.attempts + (not running),
        "status": "FAILED",
        "started_at": current.attempt_started_at
        if running and current.attempt_started_at
        else finished,
        "finished_at": finished,
        "worker": request.hostname or HOST,
        "task_id": request.id or None,
        "error": error,
        "traceback": tb,
    }
    if rt.state.fail_killed_step(
        run_id, sid, epoch, error=error, critical=spec.get("critical", True), attempt=record
    ):
        if spec.get("critical", True):
            rt.watch.touch(run_id)
            known[HALTING] = 1
        return _record(known, spec, StepStatus.FAILED)
    # Settled already (the error came after the outcome was written): that outcome flows on.
    return _record(known, spec, rt.state.step(run_id, sid, "status").status)


def safe_settle(task: Task, rt: Runtime, hdr: Mapping[str, Any]) -> str:
    """``settle``, and if it breaks on anything but an outage, the run still ends: FAILED with why."""
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
        return RunStatus.FAILED if done else before


def _fast_path(
    task: Task, rt: Runtime, spec: Mapping[str, Any], known: Mapping[str, Any], run_id: str
) -> bool:
    """Whether this step may run before telling Redis (module docstring)."""
    if not rt.fast_steps or spec.get("comp") or HALTING in known:
        return False
    request = task.request
    if request.retries or (request.delivery_info or {}).get("redelivered"):
        return False
    return rt.watch.clean(run_id)


def _run_step(
    task: Task, rt: Runtime, incoming: Any, spec: dict[str, Any], hdr: dict[str, Any]
) -> Any:
    run_id, epoch, sid = hdr["run"], hdr["epoch"], spec["id"]
    known = merge(incoming)
    request = task.request
    task_id = request.id or ""
    worker = request.hostname or HOST
    owner = f"{HOST}:{os.getpid()}:{task_id}"

    if spec.get("deps") == "@":
        spec = {**spec, "deps": rt.state.step_deps(run_id, sid)}
    skip = join_verdict(spec, known)
    when_error: str | None = None
    scope: dict[str, Any] | None = None
    if not skip and spec.get("when"):
        scope = scope_for(hdr, known)
        try:
            if not expressions.parse(spec["when"]).evaluate(scope):
                skip = f"when is false: {spec['when']}"
        except EvaluationError as exc:
            when_error = f"when: {exc}"

    if not skip and _fast_path(task, rt, spec, known, run_id):
        attempt = 1  # as far as anyone can know: a first delivery of an untouched run's step
        ctx = StepContext(run_id, sid, attempt, hdr.get("wf", ""))
        ctx.run_fresh()

        def begin_late() -> tuple[str, ...]:
            return rt.state.begin_step(
                run_id,
                sid,
                epoch,
                intent="late",
                owner=owner,
                lease_ttl=rt.lease_ttl,
                task_id=task_id,
                worker=worker,
                started=ctx.started,
            )

        def terminate() -> None:
            if rt.revoke is not None:
                rt.revoke(task_id)

        rt.heartbeat.add(ctx, owner, begin=begin_late, terminate=terminate)
    else:
        verdict, info, *rest = rt.state.begin_step(
            run_id,
            sid,
            epoch,
            intent="skip" if skip else "run",
            owner=owner,
            lease_ttl=rt.lease_ttl,
            task_id=task_id,
            worker=worker,
            reason=skip,
        )
        if verdict != "go":
            return _not_begun(task, rt, spec, known, verdict, info, rest)
        attempt = int(info)
        ctx = StepContext(run_id, sid, attempt, hdr.get("wf", ""))
        rt.heartbeat.add(ctx, owner)

    params = spec.get("params") or {}
    rendered: Any = None
    started = ctx.started
    output = "null"
    error = tb = ""
    retryable = False
    status = StepStatus.COMPLETED
    try:
        if when_error:
            raise StepError(when_error, retryable=False)
        if params:
            params = expressions.render_value(params, scope or scope_for(hdr, known))
            rendered = params
        output = call_plugin(rt, spec, params, ctx)
    except Retry:
        raise
    except BaseException as exc:  # a plugin may raise anything; SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        error, tb, retryable = describe_failure(exc, spec)
        status = StepStatus.FAILED
    finally:
        phase = rt.heartbeat.remove(ctx)

    attempt = ctx.attempt
    retries = spec.get("retries", 0)
    if status is StepStatus.FAILED and retryable and attempt <= retries:
        status = StepStatus.RETRYING
    finished = time.time()
    record: dict[str, Any] = {
        "step": sid,
        "status": str(status),
        "started_at": started,
        "finished_at": finished,
        "duration": round(finished - started, 6),
        "worker": worker,
        "task_id": task_id,
        "error": error or None,
        "stats": ctx.final_stats(),
    }
    if tb:
        record["traceback"] = tb[:16384]
    if rendered is not None:
        # The rendered input, for the audit store and the dashboard (capped: it rides in an event).
        text = dumps(rendered)
        record["input"] = text if len(text) <= 8192 else text[:8192] + "…"
    batch = ctx.drain()
    if ctx.has_counters:
        # The attempt record carries the stats too; a step that set counters also gets a
        # "stats" event (the live dashboard's per-step summary).
        batch.append(["stats", sid, "", f"{finished:.6f}", dumps(record["stats"])])
    common = {
        "status": str(status),
        "output": output,
        "error": error,
        "traceback": tb,
        "critical": spec.get("critical", True),
        "batch": batch,
    }

    if phase == FRESH:
        verdict, *info = rt.state.run_once(
            run_id,
            sid,
            epoch,
            started=started,
            attempt=record,
            worker=worker,
            task_id=task_id,
            **common,
        )
        if verdict != "ok":
            _discard(rt, run_id, sid, record, verdict)
        attempt = int(info[0])
        if info[1] not in (RunStatus.RUNNING, RunStatus.PENDING) or info[2]:
            # Paused, cancelled or failing while this step ran: what follows asks Redis first.
            rt.watch.touch(run_id)
            known[HALTING] = 1
    elif phase == BEGUN:
        result = rt.state.finish_step(
            run_id, sid, epoch, owner=owner, attempt={"attempt": attempt, **record}, **common
        )
        if result != "ok":
            raise Ignore()  # another copy took the step over after our lease lapsed
    else:  # the late begin was refused, or the run was cancelled before Redis knew of the step
        verdict, info_, *rest = ctx.verdict
        if verdict == "adopt":
            return _not_begun(task, rt, spec, known, verdict, info_, rest)
        _discard(rt, run_id, sid, record, verdict)
    if status is StepStatus.RETRYING:
        raise task.retry(countdown=retry_countdown(spec, attempt), max_retries=None)
    return _record(
        known,
        spec,
        str(status),
        json.loads(output) if spec.get("keep") and status is StepStatus.COMPLETED else None,
    )


def _not_begun(
    task: Task,
    rt: Runtime,
    spec: Mapping[str, Any],
    known: dict[str, list[Any]],
    verdict: str,
    info: str,
    rest: list[str],
) -> Any:
    """What a step does when Redis said it may not (or need not) run."""
    sid = spec["id"]
    if verdict == "skipped":
        return _record(known, spec, StepStatus.SKIPPED)
    if verdict == "cancelled":
        return _record(known, spec, StepStatus.CANCELLED)
    if verdict == "paused":
        return _record(known, spec, StepStatus.PENDING)
    if verdict == "adopt":
        known[sid] = [
            info,
            json.loads(rest[0]) if spec.get("keep") and info == StepStatus.COMPLETED else None,
        ]
        return known
    if verdict == "leased":
        # Delivered again while the first copy still runs (visibility timeout): look again
        # later; if the holder dies its lease expires and this copy takes over.
        raise task.retry(countdown=max(1.0, rt.lease_ttl / 2), max_retries=None)
    if (
        verdict == "settled"
        and len(rest) > 1
        and rest[1]
        and rest[1] == task.request.id
        and (task.request.delivery_info or {}).get("redelivered")
    ):
        # The very task that settled the step, delivered again: its first run may have recorded
        # the outcome but failed to publish what follows (Redis away past the retry budget, the
        # worker killed in between). Its outcome flows on again; a copy of what follows is
        # dropped like any duplicate (and Celery counts a chord part once per task id).
        known[sid] = [
            info,
            json.loads(rest[0]) if spec.get("keep") and info == StepStatus.COMPLETED else None,
        ]
        return known
    # 'settled': a duplicate of a step that already finished and continued the canvas;
    # 'stale'/'gone': a task from an earlier dispatch of the run, or a deleted run.
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
        hdr = compiler.read_header(old[0] if old else merge(incoming)[compiler.HEADER])
        run_id, sid, epoch = hdr["run"], spec["id"], hdr["epoch"]
    except (TypeError, ValueError, KeyError, IndexError):
        return  # not a step task's arguments
    error = (
        f"timeout: step '{sid}' did not stop at its timeout of {spec.get('timeout')}s and was "
        f"killed at the hard limit ({limit:g}s)"
    )
    current = rt.state.step(run_id, sid, "attempts", "attempt_started_at", "worker", "task_id")
    started = current.attempt_started_at
    finished = time.time()
    record = {
        "step": sid,
        "attempt": current.attempts or 1,
        "status": "FAILED",
        "started_at": started,
        "finished_at": finished,
        "duration": round(finished - started, 6) if started else None,
        "worker": current.worker,
        "task_id": current.task_id,
        "error": error,
        "killed": True,
    }
    if rt.state.fail_killed_step(
        run_id, sid, int(epoch), error=error, critical=spec.get("critical", True), attempt=record
    ):
        rt.dispatcher.redispatch(run_id, reason=f"step '{sid}' killed at its hard time limit")


def load_run_definition(run: RunRecord) -> Definition:
    return from_stored(run.definition)


def settle(task: Task, rt: Runtime, hdr: Mapping[str, Any]) -> str:
    """The last task of every dispatch: decide how the run ends (or pauses)."""
    run_id, epoch = hdr["run"], hdr["epoch"]
    # The common end, a running run with nothing to wind down, needs three fields, not the
    # whole state (a 1000-step run's steps and attempts are ~1 MB).
    head = rt.state.head(run_id)
    if head is None:
        return "gone"
    if head[1] != str(epoch):
        return "stale"
    if head[0] in (RunStatus.RUNNING, RunStatus.PENDING) and not head[2]:
        done, _ = rt.state.transition(run_id, Move.SETTLE, RunStatus.COMPLETED)
        if done:
            return RunStatus.COMPLETED
    data = rt.state.read(run_id)
    if data is None:
        return "gone"
    run, steps, _ = data
    if run.epoch != int(epoch):
        return "stale"
    status, halt = run.status, run.halt
    # After a cancel (a lone settle with a new epoch) steps of the old dispatch may still be
    # running: wait for them; a RUNNING step without a lease has lost its worker.
    running = [sid for sid, step in steps.items() if step.status == StepStatus.RUNNING]
    alive = [sid for sid in running if rt.state.lease_holder(run_id, sid)]
    if alive:
        raise task.retry(countdown=0.5, max_retries=None)
    for sid in running:
        # only if still RUNNING: the step may have finished since the read above
        rt.state.set_step(
            run_id,
            sid,
            StepStatus.CANCELLED,
            "step_cancelled",
            expect=StepStatus.RUNNING,
            fields={"error": "its worker was lost while the run was being cancelled"},
        )
    if status == RunStatus.PAUSING and not halt:
        rt.state.transition(run_id, Move.SETTLE, RunStatus.PAUSED)
        return RunStatus.PAUSED
    if status in (RunStatus.CANCELLING,) or halt:
        target = (
            RunStatus.CANCELLED
            if status == RunStatus.CANCELLING or halt == "cancelled"
            else RunStatus.FAILED
        )
        for sid, step in steps.items():
            if step.status in (StepStatus.PENDING, StepStatus.RETRYING):
                rt.state.set_step(
                    run_id, sid, StepStatus.CANCELLED, "step_cancelled", expect=step.status
                )
        defn = load_run_definition(run)
        order = [
            sid
            for sid in reversed(rt.state.completed_order(run_id))
            if sid in steps
            and steps[sid].status == StepStatus.COMPLETED
            and defn.step(sid).compensate
        ]
        if order:
            done, _ = rt.state.transition(
                run_id,
                Move.SETTLE,
                RunStatus.COMPENSATING,
                fields={"compensate_target": str(target)},
            )
            if done:
                rt.dispatcher.compensations(run_id, int(epoch), run, defn, order, str(target))
            return RunStatus.COMPENSATING
        rt.state.transition(run_id, Move.SETTLE, target)
        return target
    rt.state.transition(run_id, Move.SETTLE, RunStatus.COMPLETED)
    return RunStatus.COMPLETED


def safe_compensate(
    task: Task, rt: Runtime, prev: Any, spec: dict[str, Any], hdr: dict[str, Any]
) -> Any:
    """``compensate``; if it breaks outside the plugin (an outage aside), the run waits for an
    operator in COMPENSATION_FAILED with why, as when the compensation itself fails."""
    try:
        return compensate(task, rt, prev, spec, hdr)
    except Exception as exc:
        if not unexpected(exc):
            raise
        message = f"compensation of '{spec['id']}' broke on worker {HOST} outside its plugin: {_text(exc)}"
        log.exception("canvasflow: run %s: %s", hdr["run"], message)
        rt.state.transition(
            hdr["run"],
            Move.COMPENSATED,
            RunStatus.COMPENSATION_FAILED,
            fields={"error": message},
        )
        return {"failed": True, "step": spec["id"], "error": message}


def compensate(
    task: Task, rt: Runtime, prev: Any, spec: dict[str, Any], hdr: dict[str, Any]
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
    attempt = task.request.retries + 1
    ctx = StepContext(run_id, sid, attempt, run.workflow)
    try:
        params = expressions.render_value(spec.get("params") or {}, scope)
        output = call_plugin(rt, spec, params, ctx)
    except Retry:
        raise
    except Exception as exc:
        error, tb, retryable = describe_failure(exc, spec)
        rt.state.emit(run_id, ctx.drain())
        if retryable and attempt <= spec.get("retries", 0):
            raise task.retry(countdown=1.0, max_retries=None) from None
        message = f"compensation of '{sid}' ({spec['plugin']}.{spec.get('method', 'run')}) failed: {error}"
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
    return {"ok": True}


def compensated(rt: Runtime, prev: Any, hdr: Mapping[str, Any], target: str) -> str:
    if isinstance(prev, Mapping) and prev.get("failed"):
        return RunStatus.COMPENSATION_FAILED
    rt.state.transition(hdr["run"], Move.COMPENSATED, RunStatus(target))
    return target
