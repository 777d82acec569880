"""The held-in workflows, run both ways: on real Celery workers and inline (workers/testing.py).

The held-in set is docs/examples and the workflows tests/test_engine.py runs on real workers
(its worker-loss and hard-limit drills aside: inline there is no worker to kill). Each must end
the same way in both: the run's status, error and failed step, and per step its status, its
number of attempts and their statuses, its output and its error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Client, DefinitionError, RunSnapshot, Settings, Workflow
from orchestrator.cli.demo import write_sample_csv
from tests.conftest import TEST_CALL_ALLOW
from workers.testing import InlineRunner

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"

Case = Callable[[Path], tuple[Any, dict[str, Any]]]


def _data_processing(d: Path) -> tuple[Any, dict[str, Any]]:
    d.mkdir(parents=True)
    write_sample_csv(d / "in.csv", rows=120)
    inputs = {
        "input_path": str(d / "in.csv"),
        "work_dir": str(d / "work"),
        "output_path": str(d / "out" / "final.csv"),
    }
    return EXAMPLES / "data_processing.yaml", inputs


def _example(name: str, **inputs: Any) -> Case:
    return lambda d: (EXAMPLES / f"{name}.yaml", inputs)


def _workflow(wf: Workflow, **inputs: Any) -> Case:
    return lambda d: (wf, inputs)


def _call(step: str, function: str, *args: Any, **fields: Any) -> Workflow:
    return Workflow(f"call_{step}").step(
        step, "builtin", "call", params={"function": function, "args": list(args)}, **fields
    )


CASES: dict[str, Case] = {
    "data_processing": _data_processing,
    "parallel_media": _example("parallel_media"),
    "conditional_small": _example("conditional_analysis"),
    "conditional_large": _example("conditional_analysis", rows=5000),
    "saga_fails_and_compensates": _example("transactional_update"),
    "saga_completes": _example("transactional_update", healthy=True),
    "flaky": _workflow(
        Workflow("flaky").step(
            "f",
            "builtin",
            "fail",
            params={"times": 2, "message": "flaky"},
            retries=2,
            retry_delay=0.1,
        )
    ),
    "backoff": _workflow(
        Workflow("backoff").step(
            "f",
            "builtin",
            "fail",
            params={"times": 2},
            retries=2,
            retry_delay=0.2,
            retry_backoff="exponential",
        )
    ),
    "timeout": _workflow(
        Workflow("slow").step("s", "builtin", "sleep", params={"seconds": 5}, timeout=1)
    ),
    "non_critical": _workflow(
        Workflow("tolerant")
        .step(
            "a", "builtin", "fail", params={"message": "optional enrichment down"}, critical=False
        )
        .step("b", "builtin", "echo", depends_on=["a"], params={"saw": "{{ steps.a.status }}"})
    ),
    "fail_fast": _workflow(
        Workflow("failfast")
        .step("a", "builtin", "echo")
        .step(
            "bad",
            "builtin",
            "call",
            depends_on=["a"],
            params={"function": "tests.helpers:fail_after", "args": [0.3]},
        )
        .step("slow", "builtin", "sleep", depends_on=["a"], params={"seconds": 1})
        .step("after_bad", "builtin", "echo", depends_on=["bad"])
        .step("join", "builtin", "echo", depends_on=["bad", "slow"])
        .step("last", "builtin", "echo", depends_on=["join"])
    ),
    "when_and_joins": _workflow(
        Workflow("cond", mode="conditional")
        .step("a", "builtin", "echo", params={"n": 1})
        .step("no", "builtin", "echo", depends_on=["a"], when="steps.a.output.n > 5")
        .step("yes", "builtin", "echo", depends_on=["a"], when="steps.a.output.n == 1")
        .step("all_join", "builtin", "echo", depends_on=["no", "yes"])
        .step("any_join", "builtin", "echo", depends_on=["no", "yes"], join="any")
        .step("after_skip", "builtin", "echo", depends_on=["no"], join="any")
    ),
    "or_join": _workflow(
        Workflow("orjoin")
        .step("fast", "builtin", "echo")
        .step("never", "builtin", "echo", when="inputs.go")
        .step("either", "builtin", "echo", depends_on=["fast", "never"], join="any"),
        go=False,
    ),
    "sequential_after_skip": _workflow(
        Workflow("seq", mode="sequential")
        .step("a", "builtin", "echo", when="false")
        .step("b", "builtin", "echo")
    ),
    "templates": _workflow(
        Workflow("types")
        .step("a", "builtin", "echo", params={"rows": 42, "name": "x"})
        .step(
            "b",
            "builtin",
            "echo",
            depends_on=["a"],
            params={
                "rows": "{{ steps.a.output.rows }}",
                "label": "rows={{ steps.a.output.rows }}",
                "run": "{{ run.id }}",
                "n": "{{ inputs.n * 2 }}",
            },
        ),
        n=21,
    ),
    "not_series_parallel": _workflow(
        Workflow("ndag")
        .step("a", "builtin", "sleep", params={"seconds": 0.1})
        .step("b", "builtin", "sleep", params={"seconds": 0.1})
        .step("c", "builtin", "echo", depends_on=["a", "b"])
        .step("d", "builtin", "echo", depends_on=["b"])
    ),
    "non_json_output": _workflow(_call("s", "tests.helpers:returns_a_set")),
    "plugin_raises": _workflow(_call("s", "tests.helpers:divide_by_zero")),
    "when_fails_at_run_time": _workflow(
        Workflow("badwhen")
        .step("a", "builtin", "echo", params={"x": 1})
        .step("b", "builtin", "echo", depends_on=["a"], when="steps.a.output.missing > 1")
    ),
}

# A fleet runs parallel branches at once; inline runs them one after the other, in canvas order.
# So a step that a fleet had already started when a critical step failed (and lets finish) had
# not started inline (and is cancelled): its status is the one thing that differs.
CONCURRENT = {"fail_fast": {"slow"}}

REFUSED: dict[str, Workflow] = {
    "unknown_plugin": Workflow("typo").step("s", "csv_lodaer", "load_file"),
    "missing_parameter": Workflow("missing").step("s", "csv_loader", "load_file", params={}),
    "call_not_allowed": _call("s", "os:getcwd"),
}


@pytest.fixture(scope="module")
def inline() -> Iterator[InlineRunner]:
    # The session worker's plugins (what a worker discovers) and allow-list.
    with InlineRunner(settings=Settings(call_allow=TEST_CALL_ALLOW)) as runner:
        yield runner


def summary(snap: RunSnapshot, root: Path, leave_out: set[str]) -> dict[str, Any]:
    """What must be the same both ways, with this run's own ids and directories blanked."""

    def norm(value: Any) -> Any:
        if isinstance(value, str):
            text = value.replace(str(root), "<dir>").replace(snap.id, "<run>")
            return re.sub(r"[0-9a-f]{10}", "<id>", text)  # the demo plugins' run-derived ids
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value

    return {
        "status": snap.status,
        "error": norm(snap.error),
        "failed_step": snap.failed_step,
        "steps": {
            s.id: {
                "status": s.status,
                "attempts": s.attempts,
                "history": [a.status for a in s.history],
                "output": norm(s.output),
                "error": norm(s.error),
            }
            for s in snap.steps
            if s.id not in leave_out
        },
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_held_in_workflow_ends_the_same_inline_as_on_real_workers(
    name: str, client: Client, inline: InlineRunner, tmp_path: Path
) -> None:
    definition, inputs = CASES[name](tmp_path / "workers")
    on_workers = client.submit(definition, inputs=inputs).wait(60)
    definition, inputs = CASES[name](tmp_path / "inline")
    here = inline(definition, inputs=inputs)
    leave_out = CONCURRENT.get(name, set())
    expected = summary(on_workers, tmp_path / "workers", leave_out)
    assert summary(here, tmp_path / "inline", leave_out) == expected
    assert set(here.statuses) == set(on_workers.statuses)


def test_the_fail_fast_difference_is_only_the_branch_a_fleet_had_started(
    client: Client, inline: InlineRunner
) -> None:
    # 'bad' fails after 2 s: long enough for a worker with two slots to have started 'slow'.
    wf = (
        Workflow("failfast_wide")
        .step("a", "builtin", "echo")
        .step(
            "bad",
            "builtin",
            "call",
            depends_on=["a"],
            params={"function": "tests.helpers:fail_after", "args": [2]},
        )
        .step("slow", "builtin", "sleep", depends_on=["a"], params={"seconds": 0.5})
        .step("join", "builtin", "echo", depends_on=["bad", "slow"])
    )
    on_workers, here = client.submit(wf).wait(60), inline(wf)
    assert on_workers.statuses == {**here.statuses, "slow": "COMPLETED"}
    assert here.statuses["slow"] == "CANCELLED"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_held_in_definition_is_refused_the_same_way_inline(
    name: str, client: Client, inline: InlineRunner
) -> None:
    with pytest.raises(DefinitionError) as on_workers:
        client.submit(REFUSED[name])
    with pytest.raises(DefinitionError) as here:
        inline(REFUSED[name])
    assert str(here.value) == str(on_workers.value)
