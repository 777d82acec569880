"""The in-process runner (workers/testing.py): the semantics of a run, with no server at all.

The held-in workflows (docs/examples and the workflows of tests/test_engine.py) run both on
real workers and inline in tests/test_inline_parity.py; here each semantic is checked inline.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import threading
import tomllib
import weakref
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Settings, StepError, Workflow
from orchestrator.errors import CanvasflowError, ConfigurationError, DefinitionError, PluginError
from workers.testing import InlineRunner, run_inline

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"

# What the plugins below did, in order: inline, plugins run in the test's own process.
CALLS: list[tuple[str, ...]] = []


class Ledger:
    """A plugin with side effects to undo, and ways to fail."""

    def write(self, ctx: Any, key: str, value: Any = None) -> dict:
        CALLS.append(("write", key))
        return {"key": key, "value": value, "attempt": ctx.attempt}

    def undo(self, ctx: Any, key: str) -> dict:
        CALLS.append(("undo", key))
        return {"undone": key}

    def undo_badly(self, ctx: Any, key: str) -> dict:
        raise StepError(f"cannot undo {key}", retryable=False)

    def refuse(self, ctx: Any) -> dict:
        raise StepError("bad input", retryable=False)

    def explode(self, ctx: Any) -> dict:
        return {"ratio": 1 / 0}

    def flaky(self, ctx: Any, failures: int) -> dict:
        CALLS.append(("flaky", str(ctx.attempt)))
        if ctx.attempt <= failures:
            raise StepError(f"attempt {ctx.attempt} failed")
        return {"attempt": ctx.attempt}


PLUGINS = {"ledger": Ledger}


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    CALLS.clear()


@pytest.fixture(scope="module")
def runner() -> Any:
    with InlineRunner(PLUGINS) as r:
        yield r


# -- what it accepts --------------------------------------------------------------------------


def test_every_form_of_a_definition_runs(runner: InlineRunner, tmp_path: Path) -> None:
    body = {"id": "forms", "steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}
    path = tmp_path / "forms.json"
    path.write_text(json.dumps(body))
    yaml_text = "id: forms\nsteps:\n  - {id: a, plugin: builtin, method: echo, params: {n: 1}}\n"
    wf = Workflow("forms").step("a", "builtin", "echo")
    forms = [body, path, str(path), json.dumps(body), yaml_text, wf, runner.client.load(wf)]
    assert [runner(form).statuses for form in forms] == [{"a": "COMPLETED"}] * len(forms)
    runner.client.register(wf)
    assert runner("forms").workflow == "forms"  # a registered id, as Client.submit takes it


def test_run_inline_returns_the_snapshot_the_client_shows(runner: InlineRunner) -> None:
    snap = run_inline(
        Workflow("snap").step("a", "builtin", "echo", params={"n": "{{ inputs.n }}"}),
        inputs={"n": 7},
        tags=["unit"],
    )
    assert snap.status == "COMPLETED"
    assert snap.inputs == {"n": 7} and snap.tags == ("unit",)
    assert snap.step("a").output == {"n": 7} and snap.step("a").attempts == 1
    assert snap.settled == snap.total == 1


def test_an_invalid_definition_is_refused_before_anything_runs(runner: InlineRunner) -> None:
    wf = (
        Workflow("typos")
        .step("a", "ledgr", "write", params={"key": "k"})
        .step("b", "ledger", "write", params={})
    )
    with pytest.raises(DefinitionError) as exc:
        runner(wf)
    text = str(exc.value)
    assert "steps[0].plugin: no plugin 'ledgr' (did you mean 'ledger'?)" in text
    assert "steps[1].params: missing required parameter 'key'" in text
    assert CALLS == []


def test_a_sub_workflow_step_is_refused_at_once_with_what_to_do(runner: InlineRunner) -> None:
    # Before: the child ran, then the parent's step task parked (Ignore) and the runner failed
    # with "task canvasflow.step ended IGNORED when run inline: Parked()".
    runner.client.register(Workflow("kid").step("a", "builtin", "echo", params={"x": 1}))
    wf = (
        Workflow("parent_of_kid")
        .subworkflow("one", "kid")
        .step("after", "builtin", "echo", params={"x": 2}, depends_on=["one"])
    )
    before = runner.client.state.r.zcard(runner.client.keys.runs)
    with pytest.raises(CanvasflowError) as exc:
        runner(wf)
    assert "sub-workflow step(s) one of 'parent_of_kid' cannot run inline" in str(exc.value)
    assert "run the child workflow on its own with run_inline" in str(exc.value)
    assert runner.client.state.r.zcard(runner.client.keys.runs) == before  # nothing started


def test_plugins_passed_as_classes_need_a_registered_name() -> None:
    with pytest.raises(PluginError, match=r"decorate it with @plugin\('name'\)"):
        InlineRunner([Ledger])


def test_without_plugins_it_has_what_a_worker_discovers() -> None:
    with InlineRunner() as r:
        plugins = r.client.catalog() or {}
    assert {"builtin", "csv_loader", "deployment"} <= set(plugins)


def test_no_server_is_contacted(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    snap = run_inline(
        Workflow("offline")
        .step(
            "a",
            "ledger",
            "write",
            params={"key": "k"},
            compensate={"plugin": "ledger", "method": "undo", "params": {"key": "k"}},
        )
        .step("b", "ledger", "explode", depends_on=["a"]),
        plugins=PLUGINS,
    )
    assert snap.status == "FAILED" and snap.statuses == {"a": "COMPENSATED", "b": "FAILED"}


def test_missing_lua_support_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "lupa", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'canvasflow\[testing\]'"):
        InlineRunner()


def test_closing_the_runner_ends_its_threads_and_lets_its_app_go() -> None:
    before = set(threading.enumerate())
    with InlineRunner(PLUGINS) as r:
        r(Workflow("threads").step("a", "builtin", "sleep", params={"seconds": 0.2}))
        mine = [t for t in set(threading.enumerate()) - before if t.name.startswith("canvasflow-")]
        # no control watch: inline, every step asks Redis first (no fast path to warn)
        assert {t.name for t in mine} == {"canvasflow-heartbeat"}
        kept = [weakref.ref(r.app), weakref.ref(r.redis)]
    del r
    for t in mine:
        t.join(10)
    assert [t for t in mine if t.is_alive()] == []
    gc.collect()
    assert [ref() for ref in kept] == [None, None]


# -- failures, retries, timeouts ----------------------------------------------------------------


def test_a_plugin_that_raises_fails_its_step_with_the_type_and_traceback(
    runner: InlineRunner,
) -> None:
    snap = runner(Workflow("boom").step("s", "ledger", "explode"))
    step = snap.step("s")
    assert snap.status == "FAILED" and snap.failed_step == "s"
    assert step.status == "FAILED" and step.error == "ZeroDivisionError: division by zero"
    assert "in explode" in step.traceback


def test_retries_count_every_attempt_and_do_not_wait_by_default(runner: InlineRunner) -> None:
    # An hour between attempts: the test would time out if the runner waited for it.
    wf = Workflow("flaky").step(
        "f", "ledger", "flaky", params={"failures": 2}, retries=3, retry_delay=3600
    )
    step = runner(wf).step("f")
    assert step.status == "COMPLETED" and step.attempts == 3
    assert [a.status for a in step.history] == ["RETRYING", "RETRYING", "COMPLETED"]
    assert [a.error for a in step.history] == ["attempt 1 failed", "attempt 2 failed", None]
    assert step.output == {"attempt": 3}
    assert CALLS == [("flaky", "1"), ("flaky", "2"), ("flaky", "3")]


def test_a_step_that_runs_out_of_retries_fails_the_run(runner: InlineRunner) -> None:
    wf = Workflow("out").step("f", "ledger", "flaky", params={"failures": 5}, retries=1)
    snap = runner(wf)
    assert snap.status == "FAILED" and snap.error == "attempt 2 failed"
    assert snap.step("f").attempts == 2


def test_retry_delays_can_be_waited_out_as_on_a_worker() -> None:
    wf = Workflow("backoff").step(
        "f",
        "builtin",
        "fail",
        params={"times": 2},
        retries=2,
        retry_delay=0.2,
        retry_backoff="exponential",
    )
    history = run_inline(wf, retry_delays=True).step("f").history
    assert history[1].started_at - history[0].finished_at >= 0.2
    assert history[2].started_at - history[1].finished_at >= 0.4


def test_a_non_retryable_error_is_not_retried(runner: InlineRunner) -> None:
    step = runner(Workflow("final").step("s", "ledger", "refuse", retries=3)).step("s")
    assert step.status == "FAILED" and step.attempts == 1 and step.error == "bad input"


def test_builtin_call_is_held_to_the_allow_list_at_submit(runner: InlineRunner) -> None:
    wf = Workflow("call").step("s", "builtin", "call", params={"function": "os:getcwd"})
    with pytest.raises(DefinitionError, match="CANVASFLOW_CALL_ALLOW is empty"):
        runner(wf)
    with InlineRunner(settings=Settings(call_allow=("os",))) as allowed:
        assert allowed(wf).step("s").status == "FAILED"  # os:getcwd lives in posix


def test_a_step_past_its_timeout_fails_with_a_timeout_error(runner: InlineRunner) -> None:
    wf = Workflow("slow").step("s", "builtin", "sleep", params={"seconds": 60}, timeout=1)
    step = runner(wf).step("s")
    assert step.status == "FAILED"
    assert step.error == "timeout: step 's' ran past its timeout of 1.0s"
    assert step.output is None


def test_a_timeout_is_retryable_and_each_attempt_has_its_own_limit(
    runner: InlineRunner,
) -> None:
    wf = Workflow("slow2").step(
        "s", "builtin", "sleep", params={"seconds": 60}, timeout=1, retries=1
    )
    step = runner(wf).step("s")
    assert [a.status for a in step.history] == ["RETRYING", "FAILED"]
    assert {a.error for a in step.history} == {"timeout: step 's' ran past its timeout of 1.0s"}


def test_timeouts_hold_outside_the_main_thread_too(runner: InlineRunner) -> None:
    wf = Workflow("slow3").step("s", "builtin", "sleep", params={"seconds": 60}, timeout=1)
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(runner(wf)))
    thread.start()
    thread.join(30)
    assert out and out[0].step("s").error.startswith("timeout:")


def test_a_steps_time_limit_leaves_out_the_compensations_its_settle_runs(
    runner: InlineRunner,
) -> None:
    # 'last' ends the canvas, so it settles the run: inline, the compensations run inside its
    # task, but on a worker they would run after it, not within its 1 s.
    slow_undo = {"plugin": "builtin", "method": "sleep", "params": {"seconds": 1.5}}
    wf = (
        Workflow("late", mode="sequential")
        .step("a", "ledger", "write", params={"key": "a"}, compensate=slow_undo)
        .step("bad", "ledger", "explode")
        .step("last", "builtin", "echo", timeout=1)
    )
    snap = runner(wf)
    assert snap.status == "FAILED"
    assert snap.statuses == {"a": "COMPENSATED", "bad": "FAILED", "last": "CANCELLED"}


# -- criticality, fail fast, compensation -------------------------------------------------------


def test_a_non_critical_failure_lets_the_run_complete(runner: InlineRunner) -> None:
    wf = (
        Workflow("tolerant")
        .step("a", "ledger", "explode", critical=False)
        .step("b", "builtin", "echo", depends_on=["a"], params={"saw": "{{ steps.a.status }}"})
    )
    snap = runner(wf)
    assert snap.status == "COMPLETED" and snap.error is None
    assert snap.statuses == {"a": "FAILED", "b": "COMPLETED"}
    assert snap.step("b").output == {"saw": "FAILED"}


def test_a_critical_failure_cancels_every_step_that_had_not_started(
    runner: InlineRunner,
) -> None:
    # Parallel branches run one at a time inline, in canvas order: 'later' had not started.
    wf = (
        Workflow("failfast")
        .step("a", "builtin", "echo")
        .step("bad", "ledger", "explode", depends_on=["a"])
        .step("later", "ledger", "write", depends_on=["a"], params={"key": "later"})
        .step("after_bad", "builtin", "echo", depends_on=["bad"])
        .step("join", "builtin", "echo", depends_on=["bad", "later"])
    )
    snap = runner(wf)
    assert snap.status == "FAILED" and snap.failed_step == "bad"
    assert snap.statuses == {
        "a": "COMPLETED",
        "bad": "FAILED",
        "later": "CANCELLED",
        "after_bad": "CANCELLED",
        "join": "CANCELLED",
    }
    assert CALLS == []


def _saga(last_undo: str = "undo") -> Workflow:
    wf = Workflow("saga", mode="sequential")
    for key in ("first", "second", "third"):
        undo = last_undo if key == "third" else "undo"
        wf = wf.step(
            key,
            "ledger",
            "write",
            params={"key": key},
            compensate={"plugin": "ledger", "method": undo, "params": {"key": key}},
        )
    return wf.step("check", "ledger", "explode").step("never", "builtin", "echo")


def test_compensations_run_newest_first_then_the_run_fails(runner: InlineRunner) -> None:
    snap = runner(_saga())
    assert snap.status == "FAILED" and snap.failed_step == "check"
    assert snap.statuses == {
        "first": "COMPENSATED",
        "second": "COMPENSATED",
        "third": "COMPENSATED",
        "check": "FAILED",
        "never": "CANCELLED",
    }
    writes = [("write", k) for k in ("first", "second", "third")]
    assert CALLS == writes + [("undo", "third"), ("undo", "second"), ("undo", "first")]


def test_a_failed_compensation_stops_there_for_an_operator(runner: InlineRunner) -> None:
    snap = runner(_saga(last_undo="undo_badly"))
    assert snap.status == "COMPENSATION_FAILED"
    assert snap.error == ("compensation of 'third' (ledger.undo_badly) failed: cannot undo third")
    third = snap.step("third")
    assert third.status == "COMPLETED" and third.compensation_error == snap.error
    assert snap.statuses["second"] == snap.statuses["first"] == "COMPLETED"
    assert ("undo", "second") not in CALLS
    done = runner.client.control.resolve(snap.id, reason="undone by hand")
    assert done.status == "FAILED"


def test_a_failed_run_can_be_retried_through_the_client(
    runner: InlineRunner, tmp_path: Path
) -> None:
    marker = tmp_path / "fixed"
    wf = (
        Workflow("fixable")
        .step(
            "f",
            "builtin",
            "call",
            params={"function": "tests.helpers:fail_unless_exists", "args": [str(marker)]},
        )
        .step("g", "builtin", "echo", depends_on=["f"])
    )
    with InlineRunner(settings=Settings(call_allow=("tests.helpers",))) as r:
        snap = r(wf)
        assert snap.statuses == {"f": "FAILED", "g": "CANCELLED"}
        marker.touch()
        r.client.control.retry(snap.id)
        again = r.client.snapshot(snap.id)
    assert again.status == "COMPLETED"
    assert [(s.status, s.attempts) for s in again.steps] == [("COMPLETED", 2), ("COMPLETED", 1)]


# -- conditions, joins, templates, outputs ------------------------------------------------------


def test_when_false_skips_and_the_skip_propagates_by_join_rules(runner: InlineRunner) -> None:
    wf = (
        Workflow("cond", mode="conditional")
        .step("a", "builtin", "echo", params={"n": 1})
        .step("no", "builtin", "echo", depends_on=["a"], when="steps.a.output.n > 5")
        .step("yes", "builtin", "echo", depends_on=["a"], when="steps.a.output.n == 1")
        .step("all_join", "builtin", "echo", depends_on=["no", "yes"])
        .step("any_join", "builtin", "echo", depends_on=["no", "yes"], join="any")
        .step("after_skip", "builtin", "echo", depends_on=["no"], join="any")
    )
    snap = runner(wf)
    assert snap.status == "COMPLETED"
    assert snap.statuses == {
        "a": "COMPLETED",
        "no": "SKIPPED",
        "yes": "COMPLETED",
        "all_join": "SKIPPED",
        "any_join": "COMPLETED",
        "after_skip": "SKIPPED",
    }
    assert snap.step("no").error == "when is false: steps.a.output.n > 5"
    assert snap.step("all_join").error == "dependency 'no' was skipped"


def test_join_any_skips_when_no_dependency_completed(runner: InlineRunner) -> None:
    wf = (
        Workflow("anyjoin")
        .step("a", "ledger", "explode", critical=False)
        .step("b", "builtin", "echo", when="false")
        .step("j", "builtin", "echo", depends_on=["a", "b"], join="any")
    )
    snap = runner(wf)
    assert snap.statuses == {"a": "FAILED", "b": "SKIPPED", "j": "SKIPPED"}
    assert snap.step("j").error == "join any: no dependency completed (a: FAILED, b: SKIPPED)"


def test_a_when_that_cannot_be_evaluated_fails_the_step(runner: InlineRunner) -> None:
    wf = (
        Workflow("badwhen")
        .step("a", "builtin", "echo", params={"x": 1})
        .step("b", "builtin", "echo", depends_on=["a"], when="steps.a.output.missing > 1")
    )
    step = runner(wf).step("b")
    assert step.status == "FAILED" and "has no key 'missing'" in step.error


def test_templates_keep_types_and_outputs_flow_downstream(runner: InlineRunner) -> None:
    wf = (
        Workflow("types")
        .step("a", "ledger", "write", params={"key": "k", "value": {"rows": 42}})
        .step(
            "b",
            "builtin",
            "echo",
            depends_on=["a"],
            params={
                "rows": "{{ steps.a.output.value.rows }}",
                "label": "rows={{ steps.a.output.value.rows }}",
                "run": "{{ run.id }}",
                "n": "{{ inputs.n * 2 }}",
            },
        )
    )
    snap = runner(wf, inputs={"n": 21})
    assert snap.step("a").output == {"key": "k", "value": {"rows": 42}, "attempt": 1}
    assert snap.step("b").output == {"rows": 42, "label": "rows=42", "run": snap.id, "n": 42}


def test_a_non_json_output_fails_the_step_without_a_retry(runner: InlineRunner) -> None:
    wf = Workflow("nonjson").step(
        "s", "builtin", "call", params={"function": "tests.helpers:returns_a_set"}, retries=2
    )
    with InlineRunner(settings=Settings(call_allow=("tests.helpers",))) as r:
        step = r(wf).step("s")
    assert step.status == "FAILED" and step.attempts == 1 and "not JSON" in step.error


def test_the_saga_example_compensates_newest_first() -> None:
    with InlineRunner() as runner:  # the demo plugins, as a worker discovers them
        snap = runner(EXAMPLES / "transactional_update.yaml")
        events = runner.client.redis.xrange(runner.client.keys.events)
    assert snap.status == "FAILED" and snap.failed_step == "verify"
    compensated = [
        e[1][b"step"].decode()
        for e in events
        if e[1][b"run"].decode() == snap.id and e[1][b"type"] == b"step_compensated"
    ]
    assert compensated == ["deploy", "migrate", "backup"]


# -- the user guide's example, with the pytest fixture ------------------------------------------


def test_the_user_guides_testing_example_runs_as_a_user_runs_it() -> None:
    """docs/examples/testing is a plugin author's project: its tests run in their own pytest, with
    the fixture from the distribution's pytest11 entry point (or, before canvasflow is installed
    again with it, the same module named with -p)."""
    example = EXAMPLES / "testing"
    installed = any(ep.value == "workers.pytest_plugin" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "workers.pytest_plugin"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, str(example)],
        cwd=example,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_user_guide_shows_the_example_as_it_runs() -> None:
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    for name in ("test_greet.py", "greet.yaml", "acme_plugins/greeter.py"):
        text = (EXAMPLES / "testing" / name).read_text()
        if name == "greet.yaml":
            text = text.split("\n", 1)[1]  # the guide says where the file is instead
        assert text in guide, name


def test_the_distribution_registers_the_fixture_and_its_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"canvasflow": "workers.pytest_plugin"}
    assert project["optional-dependencies"]["testing"] == ["fakeredis[lua]>=2.20"]
    assert "canvasflow[testing]" in project["optional-dependencies"]["test"]
