"""The step core (orchestrator/engine/stepcore.py): every rule a step, a settle and a compensation
decide, as tables of cases, without Redis or Celery. Each expected decision is computed here
from the rule as docs/definition-reference.md and docs/design.md state it, not copied from what
the implementation returns."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine import compiler
from orchestrator.engine import stepcore as core
from orchestrator.engine.states import RunStatus, StepStatus
from orchestrator.errors import EvaluationError, StepError, UnknownPlugin
from orchestrator.model.definition import Compensation, Step

ROOT = Path(__file__).resolve().parents[1]
HDR = {"run": "r1", "epoch": 1, "wf": "wf", "version": "1.0", "inputs": {"n": 3}}

# What an upstream outcome can say, and "absent": a dependency whose outcome did not reach
# this step (it never ran). PENDING is what a step that found its run paused passes on.
UPSTREAM = ("COMPLETED", "FAILED", "SKIPPED", "CANCELLED", "PENDING", "absent")
JOINS = ("all", "any")


def spec_of(step: Step, keep: bool = False, forward: bool = True) -> dict[str, Any]:
    """The spec exactly as a step task reads it: compiled, sent in wire form, read back."""
    return compiler.read_spec(compiler.wire_spec(compiler.step_spec(step, keep, forward)))


def outcomes(deps: tuple[str, ...], mix: tuple[str, ...], critical: bool = False) -> dict:
    """The outcomes a step receives when its dependencies ended with ``mix``. A critical
    failure upstream halts the run, and the step that saw it says so (``HALTING``)."""
    known: dict[str, Any] = {core.HEADER: ["r1", 1, "wf"]}
    for dep, status in zip(deps, mix, strict=True):
        if status != "absent":
            known[dep] = [status, {"from": dep} if status == "COMPLETED" else None]
    if critical and "FAILED" in mix:
        known[core.HALTING] = 1
    return known


def documented_join(join: str, deps: tuple[str, ...], mix: tuple[str, ...]) -> str:
    """docs/definition-reference.md, "Join rules": '' (runs) or the reason it is SKIPPED."""
    seen = {d: ("PENDING" if s == "absent" else s) for d, s in zip(deps, mix, strict=True)}
    if join == "any":
        if "COMPLETED" in seen.values():
            return ""
        return (
            "join any: no dependency completed ("
            + ", ".join(f"{d}: {s}" for d, s in seen.items())
            + ")"
        )
    for d, s in seen.items():  # the first dependency that did not run or was skipped names it
        if s in ("SKIPPED", "CANCELLED", "PENDING"):
            return f"dependency '{d}' was {s.lower()}"
    return ""  # every dependency COMPLETED or FAILED non-critically


# -- folding outcomes -------------------------------------------------------------------------


def test_outcomes_fold_from_a_dict_a_chord_list_and_nested_lists_later_ones_winning() -> None:
    assert core.merge({"a": ["COMPLETED", 1]}) == {"a": ["COMPLETED", 1]}
    parts = [{"a": ["COMPLETED", 1]}, [{"b": ["SKIPPED", None]}, {"a": ["FAILED", None]}], None]
    assert core.merge(parts) == {"a": ["FAILED", None], "b": ["SKIPPED", None]}
    into = {"z": ["COMPLETED", 0]}
    assert core.merge([{"a": ["COMPLETED", 1]}], into) is into and set(into) == {"z", "a"}
    assert core.merge(None) == {} and core.merge("junk") == {}


@pytest.mark.parametrize("drop", [False, True], ids=["read_later", "dropped"])
@pytest.mark.parametrize("always", [False, True], ids=["own", "always"])
def test_an_outcome_flows_on_only_if_a_later_step_reads_it_or_it_must(drop, always) -> None:
    spec = spec_of(Step("s", "builtin", "echo"), forward=not drop)
    known = core.flow_on({}, spec, "COMPLETED", 5, always=always)
    assert known == ({} if drop and not always else {"s": ["COMPLETED", 5]})


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("status", [s.value for s in StepStatus])
def test_only_a_completed_steps_output_travels_and_only_when_someone_reads_it(keep, status):
    spec = spec_of(Step("s", "builtin", "echo"), keep=keep)
    expected = {"rows": 3} if keep and status == "COMPLETED" else None
    assert core.kept_output(spec, status, '{"rows":3}') == expected


# -- join rules: every rule x every upstream mix ----------------------------------------------

JOIN_CASES = [
    (join, deps, mix)
    for join in JOINS
    for deps in (("a",), ("a", "b"), ("a", "b", "c"))
    for mix in itertools.product(UPSTREAM, repeat=len(deps))
]


@pytest.mark.parametrize(
    ("join", "deps", "mix"), JOIN_CASES, ids=[f"{j}-{'-'.join(m)}" for j, _, m in JOIN_CASES]
)
def test_join_rule_decides_from_each_dependencys_status(join, deps, mix) -> None:
    spec = spec_of(Step("x", "builtin", "echo", depends_on=deps, join=join))
    expected = documented_join(join, deps, mix)
    assert core.join_verdict(spec, outcomes(deps, mix)) == expected
    assert core.admit(spec, HDR, outcomes(deps, mix)) == (
        core.Skip(expected) if expected else core.Go()
    )


def test_a_step_without_dependencies_always_passes_the_join() -> None:
    assert core.join_verdict(spec_of(Step("x", "builtin", "echo")), {}) == ""


# -- one step, start to end: join x upstream mix x critical upstream x own critical x retries --

FAILURE = core.Failure("boom", "", retryable=True)
STEP_CASES = [
    (join, mix, upstream_critical, critical, retries_left)
    for join in JOINS
    for mix in itertools.product(UPSTREAM, repeat=2)
    for upstream_critical in (False, True)
    for critical in (True, False)
    for retries_left in (True, False)
]


@pytest.mark.parametrize(
    ("join", "mix", "upstream_critical", "critical", "retries_left"),
    STEP_CASES,
    ids=[
        f"{j}-{'-'.join(m)}-{'crit' if u else 'noncrit'}_up-{'crit' if c else 'noncrit'}-"
        f"{'retries_left' if r else 'no_retries'}"
        for j, m, u, c, r in STEP_CASES
    ],
)
def test_a_step_is_skipped_run_retried_or_failed_as_documented(
    join, mix, upstream_critical, critical, retries_left
) -> None:
    deps = ("a", "b")
    step = Step(
        "x", "builtin", "echo", depends_on=deps, join=join, critical=critical, retries=1,
        retry_delay=2.0, retry_backoff="exponential", retry_delay_max=60.0,
    )  # fmt: skip
    spec = spec_of(step)
    known = outcomes(deps, mix, critical=upstream_critical)
    attempt = 1 if retries_left else 2  # one retry: attempt 1 has one left, attempt 2 none

    entry = core.admit(spec, HDR, known)
    skipped = documented_join(join, deps, mix)
    assert entry == (core.Skip(skipped) if skipped else core.Go())
    # A run halted by a critical failure upstream is never run before asking Redis (which
    # then cancels the step: see the not-begun table); a tolerated failure changes nothing.
    halted = upstream_critical and "FAILED" in mix
    assert core.may_run_first(spec, known, enabled=True, first_delivery=True) is not halted
    if skipped:
        return
    # the plugin raised a retryable error: another attempt while retries are left, else the
    # step FAILED; only a critical failure halts the run
    end = core.conclude(FAILURE, spec, attempt)
    if retries_left:
        assert end == core.Retry(2.0) and end.status is StepStatus.RETRYING
    else:
        assert end == core.Fail("boom", critical) and end.status is StepStatus.FAILED
    assert core.conclude(None, spec, attempt) == core.Done()


# -- when -------------------------------------------------------------------------------------

WHEN_CASES = [
    ("steps.a.output.rows > 2", True),
    ("steps.a.output.rows > 5", False),
    ("inputs.n == 3 and run.workflow == 'wf' and run.version == '1.0'", True),
    ("steps.a.status == 'COMPLETED' and steps.b.status == 'FAILED'", True),
    ("steps.b.output", False),  # a failed step's output is null
    ("run.id == 'r2'", False),
    ("0 or ''", False),
    ("[1]", True),
]


@pytest.mark.parametrize(("when", "truthy"), WHEN_CASES)
def test_when_runs_the_step_if_true_and_skips_it_if_false(when, truthy) -> None:
    spec = spec_of(Step("x", "builtin", "echo", depends_on=("a", "b"), when=when))
    known = {"a": ["COMPLETED", {"rows": 3}], "b": ["FAILED", None], core.HEADER: [], "!": 1}
    entry = core.admit(spec, HDR, known)
    if truthy:
        assert isinstance(entry, core.Go) and entry.error == ""
        # the scope it built is kept for the templates: the markers are not steps
        assert entry.scope == {
            "inputs": {"n": 3},
            "steps": {
                "a": {"status": "COMPLETED", "output": {"rows": 3}},
                "b": {"status": "FAILED", "output": None},
            },
            "run": {"id": "r1", "workflow": "wf", "version": "1.0"},
        }
    else:
        assert entry == core.Skip(f"when is false: {when}")


@pytest.mark.parametrize(
    "when", ["steps.a.output.rows > 'x'", "steps.a.output.missing", "inputs.n / 0 > 1"]
)
def test_a_when_that_cannot_be_evaluated_fails_the_step_without_retrying(when) -> None:
    spec = spec_of(Step("x", "builtin", "echo", depends_on=("a",), when=when, retries=3))
    entry = core.admit(spec, HDR, {"a": ["COMPLETED", {"rows": 3}]})
    assert isinstance(entry, core.Go) and entry.error.startswith("when: ")
    # the shell raises it as a StepError that is not retryable: the step fails at once
    failure = core.describe_failure(StepError(entry.error, retryable=False), spec, host="h")
    assert core.conclude(failure, spec, 1) == core.Fail(entry.error, True)


def test_when_is_not_looked_at_when_the_join_already_skips_the_step() -> None:
    spec = spec_of(Step("x", "builtin", "echo", depends_on=("a",), when="steps.a.output.x"))
    assert core.admit(spec, HDR, {"a": ["SKIPPED", None]}) == core.Skip(
        "dependency 'a' was skipped"
    )


# -- the fast path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enabled", "first", "compensable", "halting"),
    list(itertools.product([True, False], repeat=4)),
)
def test_a_step_runs_before_asking_only_on_a_first_delivery_without_compensation_or_halt(
    enabled, first, compensable, halting
) -> None:
    comp = Compensation("builtin", "echo") if compensable else None
    spec = spec_of(Step("x", "builtin", "echo", compensate=comp))
    known = {core.HALTING: 1} if halting else {}
    expected = enabled and first and not compensable and not halting
    assert core.may_run_first(spec, known, enabled=enabled, first_delivery=first) is expected


@pytest.mark.parametrize(
    ("run_status", "halt"), list(itertools.product([s.value for s in RunStatus], ["", "failed"]))
)
def test_a_step_that_saw_its_run_paused_cancelled_or_failing_says_so_downstream(run_status, halt):
    expected = run_status not in ("RUNNING", "PENDING") or halt == "failed"
    assert core.halting(run_status, halt) is expected


# -- failures and retries ---------------------------------------------------------------------


def test_each_kind_of_exception_is_described_as_the_failure_it_stands_for() -> None:
    spec = spec_of(Step("x", "p", "m", timeout=5))
    assert core.describe_failure(RuntimeError("x"), spec, host="h", timed_out=True) == (
        core.Failure("timeout: step 'x' ran past its timeout of 5s", "", True)
    )
    assert core.describe_failure(StepError("no"), spec, host="h") == core.Failure("no", "", True)
    assert core.describe_failure(StepError("no", retryable=False), spec, host="h") == (
        core.Failure("no", "", False)
    )
    unknown = UnknownPlugin("p", ["builtin"])
    assert core.describe_failure(unknown, spec, host="w1") == core.Failure(
        f"{unknown} on worker w1"
    )
    assert core.describe_failure(EvaluationError("bad"), spec, host="h") == core.Failure("bad")
    try:
        raise KeyError("k")
    except KeyError as exc:
        failure = core.describe_failure(exc, spec, host="h")
    assert failure.error == "KeyError: 'k'" and failure.retryable
    assert failure.traceback.startswith("Traceback") and "raise KeyError" in failure.traceback


RETRY_CASES = list(
    itertools.product(["fixed", "exponential"], [0.0, 1.5, 4.0], [3.0, 300.0], [1, 2, 3, 6])
)


@pytest.mark.parametrize(("backoff", "delay", "cap", "attempt"), RETRY_CASES)
def test_the_wait_before_a_retry_follows_the_documented_backoff(backoff, delay, cap, attempt):
    step = Step("x", "p", retries=9, retry_delay=delay, retry_backoff=backoff, retry_delay_max=cap)
    # docs/definition-reference.md: fixed waits min(delay, max); exponential waits
    # min(delay * 2**(n-1), max) after attempt n
    expected = min(delay * 2 ** (attempt - 1) if backoff == "exponential" else delay, cap)
    assert core.retry_countdown(spec_of(step), attempt) == expected
    assert core.conclude(FAILURE, spec_of(step), attempt) == core.Retry(expected)


CONCLUDE_CASES = list(itertools.product([None, True, False], [0, 1, 2], [1, 2, 3], [True, False]))


@pytest.mark.parametrize(("retryable", "retries", "attempt", "critical"), CONCLUDE_CASES)
def test_an_attempt_is_retried_while_retries_are_left_and_the_failure_allows_it(
    retryable, retries, attempt, critical
) -> None:
    spec = spec_of(Step("x", "p", retries=retries, critical=critical))
    failure = None if retryable is None else core.Failure("e", "", retryable)
    end = core.conclude(failure, spec, attempt)
    if failure is None:
        assert end == core.Done() and end.status is StepStatus.COMPLETED
    elif retryable and attempt <= retries:  # "retries: extra attempts after the first"
        assert isinstance(end, core.Retry) and end.countdown == 1.0
    else:
        assert end == core.Fail("e", critical)


def test_the_attempt_record_carries_what_the_audit_store_shows_capped() -> None:
    spec = spec_of(Step("x", "p"))
    failure = core.Failure("E", "t" * 20000, True)
    record = core.attempt_record(
        spec, StepStatus.RETRYING, started=10.0, finished=10.25, worker="w", task_id="t1",
        failure=failure, stats={"n": 1}, rendered={"blob": "b" * 9000},
    )  # fmt: skip
    assert list(record) == [
        "step", "status", "started_at", "finished_at", "duration", "worker", "task_id", "error",
        "stats", "traceback", "input",
    ]  # fmt: skip
    assert record["status"] == "RETRYING" and record["duration"] == 0.25
    assert record["error"] == "E" and len(record["traceback"]) == 16384
    assert len(record["input"]) == 8192 + 1 and record["input"].endswith("…")
    ok = core.attempt_record(
        spec, StepStatus.COMPLETED, started=1.0, finished=2.0, worker="w", task_id="t",
        failure=None, stats={}, rendered={"a": 1},
    )  # fmt: skip
    assert ok["error"] is None and "traceback" not in ok and ok["input"] == '{"a":1}'
    bare = core.attempt_record(
        spec, "COMPLETED", started=1.0, finished=2.0, worker="w", task_id="t", failure=None,
        stats={},
    )  # fmt: skip
    assert "input" not in bare


@pytest.mark.parametrize("status", ["RUNNING", "PENDING", "RETRYING", ""])
def test_a_step_broken_outside_its_plugin_is_recorded_as_the_attempt_it_was_in(status) -> None:
    record = core.broken_record(
        "x", status, "2" if status else "", "5.5", now=9.0, worker="w", task_id="", error="E",
        tb="T",
    )  # fmt: skip
    running = status == "RUNNING"
    attempts = 2 if status else 0
    assert record["attempt"] == (attempts if running else attempts + 1)
    assert record["started_at"] == (5.5 if running else 9.0)
    assert record["task_id"] is None and record["status"] == "FAILED"


def test_a_step_killed_at_its_hard_limit_is_recorded_with_what_redis_knew() -> None:
    spec = spec_of(Step("x", "p", timeout=2))
    error = core.hard_timeout_error(spec, 2.5)
    assert error == (
        "timeout: step 'x' did not stop at its timeout of 2s and was killed at the hard limit (2.5s)"
    )
    known = core.killed_record("x", "3", "10", "w", "t", now=12.5, error=error)
    assert (known["attempt"], known["duration"], known["worker"], known["killed"]) == (
        3,
        2.5,
        "w",
        True,
    )
    unknown = core.killed_record("x", "", "", "", "", now=12.5, error=error)
    assert (unknown["attempt"], unknown["started_at"], unknown["worker"]) == (1, None, None)


# -- when Redis says the step may not run -----------------------------------------------------

NOT_BEGUN_CASES = [
    # verdict, info, rest, task id, redelivered, keep -> expected
    ("skipped", "RUNNING", [], "t", False, False, core.Flow("SKIPPED")),
    ("cancelled", "CANCELLING", [], "t", False, False, core.Flow("CANCELLED")),
    ("paused", "PAUSED", [], "t", False, False, core.Flow("PENDING")),
    ("adopt", "COMPLETED", ['{"v":1}'], "t", False, True, core.Flow("COMPLETED", {"v": 1}, True)),
    ("adopt", "COMPLETED", ['{"v":1}'], "t", False, False, core.Flow("COMPLETED", None, True)),
    ("adopt", "FAILED", ["null"], "t", False, True, core.Flow("FAILED", None, True)),
    ("leased", "host:1:t0", [], "t", True, False, core.Retry(5.0)),  # lease TTL 10: half
    (
        "settled",
        "COMPLETED",
        ['{"v":1}', "t"],
        "t",
        True,
        True,
        core.Flow("COMPLETED", {"v": 1}, True),
    ),
    ("settled", "COMPLETED", ['{"v":1}', "t"], "t", False, True, core.Drop()),  # not redelivered
    ("settled", "COMPLETED", ['{"v":1}', "t0"], "t", True, True, core.Drop()),  # another task
    ("settled", "COMPLETED", ['{"v":1}', ""], "", True, True, core.Drop()),  # nobody recorded
    ("settled", "COMPLETED", ['{"v":1}'], "t", True, True, core.Drop()),
    ("stale", "RUNNING", [], "t", False, False, core.Drop()),
    ("gone", "", [], "t", False, False, core.Drop()),
]


@pytest.mark.parametrize(
    ("verdict", "info", "rest", "task_id", "redelivered", "keep", "expected"), NOT_BEGUN_CASES
)
def test_what_a_step_does_when_redis_says_it_may_not_run(
    verdict, info, rest, task_id, redelivered, keep, expected
) -> None:
    spec = spec_of(Step("x", "p"), keep=keep)
    assert (
        core.not_begun(
            verdict, info, rest, spec, lease_ttl=10, task_id=task_id, redelivered=redelivered
        )
        == expected
    )


def test_a_leased_copy_looks_again_after_at_least_a_second() -> None:
    spec = spec_of(Step("x", "p"))
    assert core.not_begun("leased", "h", [], spec, lease_ttl=1, task_id="t", redelivered=True) == (
        core.Retry(1.0)
    )


# -- settle -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (None, "gone"),
        (("RUNNING", "2", ""), "stale"),
        (("RUNNING", "1", ""), "complete"),
        (("PENDING", "1", ""), "complete"),
        (("RUNNING", "1", "failed"), "read"),
        (("PAUSING", "1", ""), "read"),
        (("CANCELLING", "1", ""), "read"),
        (("COMPLETED", "1", ""), "read"),
    ],
)
def test_settle_completes_an_untouched_run_from_its_head_alone(head, expected) -> None:
    assert core.settle_head(head, 1) == expected


SETTLE_STEPS = ("COMPLETED", "FAILED", "SKIPPED", "PENDING", "RETRYING", "RUNNING", "COMPENSATED")
SETTLE_CASES = [
    (status, halt, mix)
    for status in ("RUNNING", "PENDING", "PAUSING", "CANCELLING")
    for halt in ("", "failed", "cancelled")
    for mix in itertools.product(SETTLE_STEPS, repeat=2)
]


def documented_settle(status: str, halt: str, steps: dict[str, str]) -> core.SettlePlan:
    """docs/design.md and the brief: a RUNNING step nobody holds lost its worker (CANCELLED); a
    pause without a failure ends PAUSED; a cancel ends CANCELLED and a critical failure FAILED,
    after the steps that never started are CANCELLED and the COMPLETED steps with a compensation
    are compensated newest completion first; anything else (tolerated failures included) ends
    COMPLETED."""
    lost = tuple(s for s, st in steps.items() if st == "RUNNING")
    if status == "PAUSING" and not halt:
        return core.SettlePlan(RunStatus.PAUSED, lost)
    if status == "CANCELLING" or halt == "cancelled":
        final = RunStatus.CANCELLED
    elif halt:
        final = RunStatus.FAILED
    else:
        return core.SettlePlan(RunStatus.COMPLETED, lost)
    cancel = tuple((s, st) for s, st in steps.items() if st in ("PENDING", "RETRYING"))
    compensate = tuple(s for s in ("b", "a") if steps[s] == "COMPLETED")  # b completed last
    return core.SettlePlan(final, lost, cancel, compensate)


@pytest.mark.parametrize(
    ("status", "halt", "mix"),
    SETTLE_CASES,
    ids=[f"{s}-{h or 'nohalt'}-{'-'.join(m)}" for s, h, m in SETTLE_CASES],
)
def test_settle_plans_how_the_run_ends_from_its_status_and_steps(status, halt, mix) -> None:
    steps = {"a": mix[0], "b": mix[1], "c": "COMPLETED"}  # c has no compensation
    completed = [s for s in ("c", "a", "b") if steps[s] in ("COMPLETED", "COMPENSATED")]
    plan = core.settle_plan(
        status, halt, steps, alive=(), completed=completed, compensable={"a", "b"}
    )
    assert plan == documented_settle(status, halt, steps)
    assert isinstance(plan, core.SettlePlan)
    assert plan.status is (RunStatus.COMPENSATING if plan.compensate else plan.final)


@pytest.mark.parametrize("status", ["RUNNING", "PAUSING", "CANCELLING"])
def test_settle_waits_while_a_step_of_an_older_dispatch_still_runs(status) -> None:
    steps = {"a": "RUNNING", "b": "RUNNING", "c": "PENDING"}
    assert core.settle_plan(status, "", steps, alive=["b"]) == core.Wait(0.5)


def test_settle_completes_a_run_whose_steps_all_completed() -> None:
    steps = {"a": "COMPLETED", "b": "COMPLETED"}
    plan = core.settle_plan("RUNNING", "", steps, completed=["a", "b"], compensable={"a"})
    assert plan == core.SettlePlan(RunStatus.COMPLETED) and plan.status is RunStatus.COMPLETED


def test_a_critical_failure_compensates_completed_steps_newest_first_then_fails() -> None:
    steps = {"load": "COMPLETED", "clean": "COMPLETED", "index": "COMPLETED", "push": "FAILED",
             "report": "PENDING", "mail": "RETRYING", "skipped": "SKIPPED"}  # fmt: skip
    plan = core.settle_plan(
        "RUNNING", "failed", steps, completed=["load", "index", "clean"],
        compensable={"load", "clean", "index", "report"},
    )  # fmt: skip
    assert plan == core.SettlePlan(
        RunStatus.FAILED,
        cancel=(("report", "PENDING"), ("mail", "RETRYING")),
        compensate=("clean", "index", "load"),
    )
    assert plan.status is RunStatus.COMPENSATING


def test_a_tolerated_failure_does_not_stop_the_run_from_completing() -> None:
    steps = {"a": "COMPLETED", "b": "FAILED", "c": "COMPLETED"}
    plan = core.settle_plan("RUNNING", "", steps, completed=["a", "c"], compensable={"a", "c"})
    assert plan == core.SettlePlan(RunStatus.COMPLETED)


def test_a_cancel_closes_what_never_started_and_what_lost_its_worker_then_compensates() -> None:
    steps = {"a": "COMPLETED", "b": "RUNNING", "c": "PENDING", "d": "COMPENSATED"}
    plan = core.settle_plan(
        "CANCELLING", "", steps, alive=(), completed=["d", "a"], compensable={"a", "d"}
    )
    assert plan == core.SettlePlan(
        RunStatus.CANCELLED, lost=("b",), cancel=(("c", "PENDING"),), compensate=("a",)
    )


def test_fail_fast_without_compensations_ends_failed_at_once() -> None:
    steps = {"a": "COMPLETED", "b": "FAILED", "c": "PENDING", "d": "PENDING"}
    plan = core.settle_plan("RUNNING", "failed", steps, completed=["a"], compensable=())
    assert plan == core.SettlePlan(RunStatus.FAILED, cancel=(("c", "PENDING"), ("d", "PENDING")))
    assert plan.status is RunStatus.FAILED


@pytest.mark.parametrize(
    ("status", "halt", "expected"),
    [
        ("RUNNING", "", None),
        ("PAUSING", "", None),
        ("PENDING", "", None),
        ("CANCELLING", "", RunStatus.CANCELLED),
        ("CANCELLING", "failed", RunStatus.CANCELLED),
        ("RUNNING", "failed", RunStatus.FAILED),
        ("PAUSING", "failed", RunStatus.FAILED),
        ("RUNNING", "cancelled", RunStatus.CANCELLED),
    ],
)
def test_a_run_winds_down_after_a_cancel_or_a_critical_failure(status, halt, expected) -> None:
    assert core.unwind_target(status, halt) is expected


# -- compensation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retryable", "retries", "attempt"), list(itertools.product([True, False], [0, 2], [1, 2, 3]))
)
def test_a_failed_compensation_is_retried_after_a_second_then_waits_for_an_operator(
    retryable, retries, attempt
) -> None:
    spec = {"id": "load", "plugin": "db", "method": "undo", "retries": retries}
    end = core.conclude_compensation(core.Failure("E", "", retryable), spec, attempt)
    if retryable and attempt <= retries:
        assert end == core.Retry(1.0)
    else:
        assert end == core.Fail("compensation of 'load' (db.undo) failed: E", True)


# -- the core stays I/O-free ------------------------------------------------------------------


def test_the_step_core_imports_no_io_and_reads_no_clock() -> None:
    tree = ast.parse((ROOT / "orchestrator/engine/stepcore.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    roots = {m.split(".")[0] for m in imported}
    assert not roots & {"celery", "kombu", "redis", "workers", "time", "datetime", "socket", "os"}
    # within orchestrator: the model, the statuses and the errors, nothing that does I/O
    assert {m for m in imported if m.startswith("orchestrator")} <= {
        "orchestrator.engine.states",
        "orchestrator.errors",
        "orchestrator.model",
        "orchestrator.model.definition",
    }
