"""What a step decides, without I/O: the rules of the step runtime as pure functions.

``workers/step.py`` is the shell around this module: it loads (the message, the run's hot
state), asks these functions, and writes (RunState calls, Celery retries and sends). Nothing
here touches Redis or Celery or reads the clock (times are passed in), so every rule is tested
by a table of cases (tests/test_step_core.py) and any runner of steps can reuse it.

The data are the ones that travel: the outcomes ``{step: [status, output]}`` that flow
through the canvas, the compact spec of a step (compiler.wire_spec / read_spec) and the run
header (compiler.read_header).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from orchestrator.engine.states import RunStatus, StepStatus
from orchestrator.errors import EvaluationError, StepError, UnknownPlugin
from orchestrator.model import expressions
from orchestrator.model.definition import backoff_seconds

Outcomes = dict[str, Any]  # {step: [status, output]}, and the markers below

# Keys of the outcomes that are not step ids (those match [A-Za-z0-9][A-Za-z0-9_.-]*).
HEADER = "@"  # the run header, riding once in the outcomes (compiler.wire_header)
# "An upstream step saw its run halting, paused or cancelled": downstream steps then take the
# careful path whatever their process has heard.
HALTING = "!"
NOT_STEPS = frozenset({HALTING, HEADER})

TRACEBACK_CAP = 16384  # characters of a traceback kept in an attempt record
INPUT_CAP = (
    8192  # characters of the rendered input kept in an attempt record (it rides in an event)
)


# -- outcomes ---------------------------------------------------------------------------------


def merge(incoming: Any, into: Outcomes | None = None) -> Outcomes:
    """Fold the outcome(s) a task receives (a dict, or a chord's list of them) into one dict."""
    known = {} if into is None else into
    if isinstance(incoming, Mapping):
        known.update(incoming)
    elif isinstance(incoming, list):
        for item in incoming:
            merge(item, known)
    return known


def flow_on(
    known: Outcomes,
    spec: Mapping[str, Any],
    status: str,
    output: Any = None,
    *,
    always: bool = False,
) -> Outcomes:
    """Add this step's outcome to what flows on, if a later step looks at it (no ``drop``) or
    ``always``."""
    if always or not spec.get("drop"):
        known[spec["id"]] = [status, output]
    return known


def kept_output(spec: Mapping[str, Any], status: str, output: str) -> Any:
    """The output (JSON text) that travels with the outcome: only a completed step's, and only
    if some template or ``when`` reads it (``keep``)."""
    return json.loads(output) if spec.get("keep") and status == StepStatus.COMPLETED else None


def halting(run_status: str, halt: str) -> bool:
    """Whether a step that just ended saw its run paused, cancelled or failing."""
    return run_status not in (RunStatus.RUNNING, RunStatus.PENDING) or bool(halt)


# -- whether the step runs --------------------------------------------------------------------


def join_verdict(spec: Mapping[str, Any], known: Mapping[str, list[Any]]) -> str:
    """Empty when the step may run, else why it is skipped (docs/definition-reference.md)."""
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


def scope_for(hdr: Mapping[str, Any], known: Mapping[str, list[Any]]) -> dict[str, Any]:
    """The names a ``when`` or a template of a step may read."""
    return {
        "inputs": hdr.get("inputs", {}),
        "steps": {
            sid: {"status": v[0], "output": v[1]}
            for sid, v in known.items()
            if sid not in NOT_STEPS
        },
        "run": {"id": hdr["run"], "workflow": hdr.get("wf", ""), "version": hdr.get("version", "")},
    }


@dataclass(frozen=True)
class Go:
    """The step runs. ``scope`` is kept when the ``when`` built it; ``error``: the ``when``
    could not be evaluated, so the step begins and fails with it (not retryable)."""

    scope: Mapping[str, Any] | None = None
    error: str = ""


@dataclass(frozen=True)
class Skip:
    """The step is SKIPPED, for ``reason``."""

    reason: str


def admit(
    spec: Mapping[str, Any], hdr: Mapping[str, Any], known: Mapping[str, list[Any]]
) -> Go | Skip:
    """The join rule, then the ``when`` (only if the join lets the step run)."""
    reason = join_verdict(spec, known)
    if reason:
        return Skip(reason)
    when = spec.get("when")
    if not when:
        return Go()
    scope = scope_for(hdr, known)
    try:
        if not expressions.parse(when).evaluate(scope):
            return Skip(f"when is false: {when}")
    except EvaluationError as exc:
        return Go(scope, f"when: {exc}")
    return Go(scope)


def may_run_first(
    spec: Mapping[str, Any], known: Mapping[str, Any], *, enabled: bool, first_delivery: bool
) -> bool:
    """Whether the message allows the fast path (run, then tell Redis): it is turned on, this
    is the first delivery, the step has no compensation (whether a compensable step ran must
    be known before it runs) and no upstream step saw the run halting. The shell adds what
    only its process knows: that the run is untouched (its control watch)."""
    return (
        enabled
        and first_delivery
        and not spec.get("comp")
        and not spec.get("wf")  # a sub-workflow step's child must be known before it starts
        and HALTING not in known
    )


# -- how an attempt ends ----------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, and whether another attempt may help."""

    error: str
    traceback: str = ""
    retryable: bool = False


def describe_failure(
    exc: BaseException, spec: Mapping[str, Any], *, host: str, timed_out: bool = False
) -> Failure:
    """The failure an exception raised by a step stands for; ``timed_out``: it is the soft
    time limit (Celery's exception, which the shell recognises)."""
    if timed_out:
        return Failure(
            f"timeout: step '{spec['id']}' ran past its timeout of {spec.get('timeout')}s",
            retryable=True,
        )
    if isinstance(exc, StepError):
        return Failure(str(exc), retryable=exc.retryable)
    if isinstance(exc, UnknownPlugin):
        return Failure(f"{exc} on worker {host}")
    if isinstance(exc, EvaluationError):
        return Failure(str(exc))
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Failure(f"{type(exc).__name__}: {exc}", tb, retryable=True)


def retry_countdown(spec: Mapping[str, Any], attempt: int) -> float:
    """Seconds before the attempt after ``attempt`` (the spec's delay, backoff and cap)."""
    delay, backoff, cap = spec.get("delay", [1.0, "fixed", 120.0])
    return backoff_seconds(delay, backoff, cap, attempt)


@dataclass(frozen=True)
class Done:
    """The attempt completed."""

    status: ClassVar[StepStatus] = StepStatus.COMPLETED


@dataclass(frozen=True)
class Retry:
    """Try again after ``countdown`` seconds (Celery's own retry, so Flower sees it)."""

    countdown: float
    status: ClassVar[StepStatus] = StepStatus.RETRYING


@dataclass(frozen=True)
class Fail:
    """The step failed for good; a critical failure halts the run (fail fast)."""

    error: str
    critical: bool
    status: ClassVar[StepStatus] = StepStatus.FAILED


End = Done | Retry | Fail


def conclude(failure: Failure | None, spec: Mapping[str, Any], attempt: int) -> End:
    """Attempt ``attempt`` (1-based) ended with ``failure`` (None: it returned): retry it while
    ``retries`` are left and the failure is retryable, else the step is settled."""
    if failure is None:
        return Done()
    if failure.retryable and attempt <= spec.get("retries", 0):
        return Retry(retry_countdown(spec, attempt))
    return Fail(failure.error, bool(spec.get("critical", True)))


def attempt_record(
    spec: Mapping[str, Any],
    status: str,
    *,
    started: float,
    finished: float,
    worker: str,
    task_id: str,
    failure: Failure | None,
    stats: Mapping[str, Any],
    rendered: Any = None,
) -> dict[str, Any]:
    """The attempt as the audit store and the dashboard see it (its key order is the event's)."""
    record: dict[str, Any] = {
        "step": spec["id"],
        "status": str(status),
        "started_at": started,
        "finished_at": finished,
        "duration": round(finished - started, 6),
        "worker": worker,
        "task_id": task_id,
        "error": failure.error if failure and failure.error else None,
        "stats": stats,
    }
    if failure and failure.traceback:
        record["traceback"] = failure.traceback[:TRACEBACK_CAP]
    if rendered is not None:
        text = json.dumps(rendered, separators=(",", ":"))
        record["input"] = text if len(text) <= INPUT_CAP else text[:INPUT_CAP] + "…"
    return record


def broken_record(
    sid: str,
    status: str,
    attempts: int,
    started: float | None,
    *,
    now: float,
    worker: str,
    task_id: str,
    error: str,
    tb: str,
) -> dict[str, Any]:
    """The attempt of a step that broke outside its plugin, from the step's fields in Redis
    (its status, attempts so far, when its attempt started): the attempt it is in if it is
    RUNNING, else the one that never began."""
    running = status == StepStatus.RUNNING
    return {
        "step": sid,
        "attempt": attempts + (not running),
        "status": "FAILED",
        "started_at": started if started and running else now,
        "finished_at": now,
        "worker": worker,
        "task_id": task_id or None,
        "error": error,
        "traceback": tb,
    }


def hard_timeout_error(spec: Mapping[str, Any], limit: float) -> str:
    return (
        f"timeout: step '{spec['id']}' did not stop at its timeout of {spec.get('timeout')}s and "
        f"was killed at the hard limit ({limit:g}s)"
    )


def killed_record(
    sid: str,
    attempts: int,
    started: float | None,
    worker: str | None,
    task_id: str | None,
    *,
    now: float,
    error: str,
) -> dict[str, Any]:
    """The attempt of a step whose pool process was killed at its hard time limit."""
    return {
        "step": sid,
        "attempt": attempts or 1,
        "status": "FAILED",
        "started_at": started,
        "finished_at": now,
        "duration": round(now - started, 6) if started else None,
        "worker": worker or None,
        "task_id": task_id or None,
        "error": error,
        "killed": True,
    }


# -- when Redis says no -----------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """The step does not run; this outcome flows on. ``always``: even for a step nobody reads
    (an adopted or re-sent outcome is passed on as recorded)."""

    status: str
    output: Any = None
    always: bool = False


@dataclass(frozen=True)
class Drop:
    """Nothing flows on: a duplicate, a task of an earlier dispatch, a deleted run."""


def not_begun(
    verdict: str,
    info: str,
    rest: Sequence[str],
    spec: Mapping[str, Any],
    *,
    lease_ttl: float,
    task_id: str,
    redelivered: bool,
) -> Flow | Retry | Drop:
    """What a step does when ``begin_step`` said it may not (or need not) run."""
    if verdict == "skipped":
        return Flow(StepStatus.SKIPPED)
    if verdict == "cancelled":
        return Flow(StepStatus.CANCELLED)
    if verdict == "paused":
        return Flow(StepStatus.PENDING)
    if verdict == "adopt":
        # Settled by an older dispatch that is still running: carry on with what it recorded.
        return Flow(info, kept_output(spec, info, rest[0]), always=True)
    if verdict == "leased":
        # Delivered again while the first copy still runs (visibility timeout): look again
        # later; if the holder dies its lease expires and this copy takes over.
        return Retry(max(1.0, lease_ttl / 2))
    if verdict == "settled" and len(rest) > 1 and rest[1] and rest[1] == task_id and redelivered:
        # The very task that settled the step, delivered again: its first run may have recorded
        # the outcome but failed to publish what follows (Redis away past the retry budget, the
        # worker killed in between). Its outcome flows on again; a copy of what follows is
        # dropped like any duplicate (and Celery counts a chord part once per task id).
        return Flow(info, kept_output(spec, info, rest[0]), always=True)
    # 'settled': a duplicate of a step that already finished and continued the canvas;
    # 'stale'/'gone': a task from an earlier dispatch of the run, or a deleted run.
    return Drop()


# -- settle -----------------------------------------------------------------------------------


def settle_head(head: tuple[str, str, str] | None, epoch: Any) -> str:
    """From (status, epoch, halt): 'gone', 'stale' (another dispatch settles), 'complete' (the
    common end, a running run with nothing to wind down) or 'read' (look at its steps)."""
    if head is None:
        return "gone"
    status, run_epoch, halt = head
    if run_epoch != str(epoch):
        return "stale"
    if status in (RunStatus.RUNNING, RunStatus.PENDING) and not halt:
        return "complete"
    return "read"


def running(steps: Mapping[str, str]) -> list[str]:
    """The steps of ``{step: status}`` that are RUNNING (their lease says if the worker lives)."""
    return [sid for sid, status in steps.items() if status == StepStatus.RUNNING]


def unwind_target(status: str, halt: str) -> RunStatus | None:
    """The status a run winds down to — CANCELLED after a cancel, FAILED after a critical
    failure — or None when it does not wind down."""
    if status == RunStatus.CANCELLING or halt:
        if status == RunStatus.CANCELLING or halt == "cancelled":
            return RunStatus.CANCELLED
        return RunStatus.FAILED
    return None


@dataclass(frozen=True)
class Wait:
    """Steps of an old dispatch still run (after a cancel): settle again after ``countdown``."""

    countdown: float = 0.5


@dataclass(frozen=True)
class SettlePlan:
    """What a settle does, in this order: close ``lost`` RUNNING steps (their worker died) and
    ``cancel`` the steps that never started, each (step, the status it has) as CANCELLED; run
    ``compensate`` (newest completion first) if any; the run ends ``final``."""

    final: RunStatus
    lost: tuple[str, ...] = ()
    cancel: tuple[tuple[str, str], ...] = ()
    compensate: tuple[str, ...] = ()

    @property
    def status(self) -> RunStatus:
        """The status the settle moves the run to now."""
        return RunStatus.COMPENSATING if self.compensate else self.final


def settle_plan(
    status: str,
    halt: str,
    steps: Mapping[str, str],
    *,
    alive: Collection[str] = (),
    completed: Sequence[str] = (),
    compensable: Collection[str] = (),
) -> Wait | SettlePlan:
    """How a run ends (or pauses), from its status, ``halt`` flag and ``{step: status}``.

    ``alive``: RUNNING steps whose lease is held; ``completed``: steps in completion order
    (oldest first); ``compensable``: steps that declare a ``compensate``. The last two are
    needed only when the run winds down (``unwind_target``).
    """
    if alive:
        return Wait()
    lost = tuple(running(steps))
    target = unwind_target(status, halt)
    if status == RunStatus.PAUSING and not halt:
        return SettlePlan(RunStatus.PAUSED, lost)
    if target is None:
        return SettlePlan(RunStatus.COMPLETED, lost)
    never_started = (StepStatus.PENDING, StepStatus.RETRYING)
    cancel = tuple((sid, st) for sid, st in steps.items() if st in never_started)
    order = tuple(
        sid
        for sid in reversed(completed)
        if steps.get(sid) == StepStatus.COMPLETED and sid in compensable
    )
    return SettlePlan(target, lost, cancel, order)


# -- compensation -----------------------------------------------------------------------------


def conclude_compensation(failure: Failure, spec: Mapping[str, Any], attempt: int) -> Retry | Fail:
    """A failed compensation is retried after a fixed second while ``retries`` are left; for
    good, it stops the chain and leaves the run COMPENSATION_FAILED with this error."""
    if failure.retryable and attempt <= spec.get("retries", 0):
        return Retry(1.0)
    method = f"{spec['plugin']}.{spec.get('method', 'run')}"
    return Fail(f"compensation of '{spec['id']}' ({method}) failed: {failure.error}", True)
