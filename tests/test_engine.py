"""The core engine against a real Redis and real Celery worker processes (no eager mode)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from orchestrator import Client, DefinitionError, Workflow
from orchestrator.cli.demo import write_sample_csv
from orchestrator.settings import Settings
from tests.conftest import TEST_CALL_ALLOW

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def run(client: Client, wf: Workflow, timeout: float = 30, **kw):
    return client.submit(wf, **kw).wait(timeout)


# -- the four examples --------------------------------------------------------------------------


@pytest.mark.brokers
def test_data_processing_example_completes_every_step_on_real_files(
    client: Client, tmp_path: Path
) -> None:
    sample = tmp_path / "in.csv"
    write_sample_csv(sample, rows=120)
    out = tmp_path / "out" / "final.csv"
    snap = client.submit(
        EXAMPLES / "data_processing.yaml",
        inputs={
            "input_path": str(sample),
            "work_dir": str(tmp_path / "work"),
            "output_path": str(out),
        },
    ).wait(60)
    assert snap.status == "COMPLETED", snap
    assert set(snap.statuses.values()) == {"COMPLETED"}
    assert list(snap.statuses) == [
        "load_data",
        "validate_data",
        "clean_data",
        "transform_data",
        "save_results",
    ]
    assert out.exists() and out.read_text().count("\n") > 50
    assert snap.step("load_data").output["rows"] == 120
    # sequential: each step started after the previous one finished
    steps = snap.steps
    for before, after in zip(steps, steps[1:], strict=False):
        assert after.started_at >= before.finished_at


@pytest.mark.brokers
def test_parallel_media_example_fans_out_then_joins(client: Client) -> None:
    snap = client.submit(EXAMPLES / "parallel_media.yaml").wait(60)
    assert snap.status == "COMPLETED"
    media = [snap.step(s) for s in ("process_images", "process_videos", "process_audio")]
    manifest, archive = snap.step("build_manifest"), snap.step("archive")
    assert manifest.started_at >= max(m.finished_at for m in media)
    assert archive.started_at >= manifest.finished_at
    # the branches overlapped in time (concurrency 2)
    starts = sorted(m.started_at for m in media)
    ends = sorted(m.finished_at for m in media)
    assert starts[1] < ends[0]


@pytest.mark.brokers
def test_conditional_example_takes_one_branch_and_or_join_reports(client: Client) -> None:
    snap = client.submit(EXAMPLES / "conditional_analysis.yaml").wait(60)
    assert snap.status == "COMPLETED"
    assert snap.statuses == {
        "inspect": "COMPLETED",
        "process_small": "COMPLETED",
        "process_large": "SKIPPED",
        "viz_small": "COMPLETED",
        "viz_large": "SKIPPED",
        "report": "COMPLETED",
    }
    big = client.submit(EXAMPLES / "conditional_analysis.yaml", inputs={"rows": 5000}).wait(60)
    assert (
        big.statuses["process_small"] == "SKIPPED" and big.statuses["process_large"] == "COMPLETED"
    )
    assert big.statuses["report"] == "COMPLETED"


@pytest.mark.brokers
def test_transactional_example_fails_and_compensates_newest_first(client: Client) -> None:
    snap = client.submit(EXAMPLES / "transactional_update.yaml").wait(60)
    assert snap.status == "FAILED"
    assert snap.failed_step == "verify"
    assert "verification failed" in snap.error
    assert snap.statuses["verify"] == "FAILED"
    assert snap.statuses["commit"] == "CANCELLED"
    for sid in ("backup", "migrate", "deploy"):
        assert snap.statuses[sid] == "COMPENSATED"
    events = client.redis.xrange(client.keys.events)
    compensated = [
        e[1][b"step"].decode()
        for e in events
        if e[1][b"run"].decode() == snap.id and e[1][b"type"] == b"step_compensated"
    ]
    assert compensated == ["deploy", "migrate", "backup"]


# -- retries, timeouts, criticality -----------------------------------------------------------------


@pytest.mark.brokers
def test_step_failing_twice_succeeds_on_third_attempt_and_records_three(client: Client) -> None:
    wf = Workflow("flaky").step(
        "f", "builtin", "fail", params={"times": 2, "message": "flaky"}, retries=2, retry_delay=0.1
    )
    snap = run(client, wf)
    step = snap.step("f")
    assert snap.status == "COMPLETED"
    assert step.attempts == 3
    assert [a.status for a in step.history] == ["RETRYING", "RETRYING", "COMPLETED"]
    assert [a.error for a in step.history[:2]] == ["flaky", "flaky"]
    assert step.output == {"attempt": 3}


def test_exponential_backoff_spaces_retries(client: Client) -> None:
    wf = Workflow("backoff").step(
        "f",
        "builtin",
        "fail",
        params={"times": 2},
        retries=2,
        retry_delay=0.2,
        retry_backoff="exponential",
    )
    h = run(client, wf).step("f").history
    gap1 = h[1].started_at - h[0].finished_at
    gap2 = h[2].started_at - h[1].finished_at
    assert gap1 >= 0.2 and gap2 >= 0.4


@pytest.mark.brokers
def test_step_past_its_timeout_fails_with_a_timeout_error(client: Client) -> None:
    wf = Workflow("slow").step("s", "builtin", "sleep", params={"seconds": 5}, timeout=1)
    snap = run(client, wf)
    assert snap.status == "FAILED"
    assert snap.step("s").status == "FAILED"
    assert snap.step("s").error.startswith("timeout:")
    assert snap.step("s").duration < 5


def test_non_critical_failure_lets_the_run_complete(client: Client) -> None:
    wf = (
        Workflow("tolerant")
        .step(
            "a", "builtin", "fail", params={"message": "optional enrichment down"}, critical=False
        )
        .step("b", "builtin", "echo", depends_on=["a"], params={"saw": "{{ steps.a.status }}"})
    )
    snap = run(client, wf)
    assert snap.status == "COMPLETED"
    assert snap.statuses == {"a": "FAILED", "b": "COMPLETED"}
    assert snap.step("b").output == {"saw": "FAILED"}
    assert snap.step("a").error == "optional enrichment down"


@pytest.mark.brokers
def test_critical_failure_stops_everything_downstream(client: Client) -> None:
    wf = (
        Workflow("failfast")
        .step("a", "builtin", "echo")
        .step(
            "bad",
            "builtin",
            "call",
            depends_on=["a"],
            # 1.5 s: long enough for the second slot to have started 'slow' on a loaded machine
            params={"function": "tests.helpers:fail_after", "args": [1.5]},
        )
        .step("slow", "builtin", "sleep", depends_on=["a"], params={"seconds": 3})
        .step("after_bad", "builtin", "echo", depends_on=["bad"])
        .step("join", "builtin", "echo", depends_on=["bad", "slow"])
        .step("last", "builtin", "echo", depends_on=["join"])
    )
    snap = run(client, wf)
    assert snap.status == "FAILED"
    assert snap.error == "boom" and snap.failed_step == "bad"
    assert snap.statuses["slow"] == "COMPLETED"  # already running: it finishes
    assert {snap.statuses[s] for s in ("after_bad", "join", "last")} == {"CANCELLED"}


# -- conditions and joins ---------------------------------------------------------------------------


def test_when_false_skips_and_the_skip_propagates_by_join_rules(client: Client) -> None:
    wf = (
        Workflow("cond", mode="conditional")
        .step("a", "builtin", "echo", params={"n": 1})
        .step("no", "builtin", "echo", depends_on=["a"], when="steps.a.output.n > 5")
        .step("yes", "builtin", "echo", depends_on=["a"], when="steps.a.output.n == 1")
        .step("all_join", "builtin", "echo", depends_on=["no", "yes"])
        .step("any_join", "builtin", "echo", depends_on=["no", "yes"], join="any")
        .step("after_skip", "builtin", "echo", depends_on=["no"], join="any")
    )
    snap = run(client, wf)
    assert snap.status == "COMPLETED"
    assert snap.statuses == {
        "a": "COMPLETED",
        "no": "SKIPPED",
        "yes": "COMPLETED",
        "all_join": "SKIPPED",
        "any_join": "COMPLETED",
        "after_skip": "SKIPPED",
    }
    assert "when is false" in snap.step("no").error


def test_or_join_runs_after_one_branch(client: Client) -> None:
    wf = (
        Workflow("orjoin")
        .step("fast", "builtin", "echo")
        .step("never", "builtin", "echo", when="inputs.go")
        .step("either", "builtin", "echo", depends_on=["fast", "never"], join="any")
    )
    snap = run(client, wf, inputs={"go": False})
    assert snap.statuses == {"fast": "COMPLETED", "never": "SKIPPED", "either": "COMPLETED"}


def test_sequential_mode_runs_next_step_after_a_skipped_one(client: Client) -> None:
    wf = (
        Workflow("seq", mode="sequential")
        .step("a", "builtin", "echo", when="false")
        .step("b", "builtin", "echo")
    )
    assert run(client, wf).statuses == {"a": "SKIPPED", "b": "COMPLETED"}


def test_template_passes_an_integer_as_an_integer(client: Client) -> None:
    wf = (
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
        )
    )
    snap = run(client, wf, inputs={"n": 21})
    out = snap.step("b").output
    assert out["rows"] == 42 and isinstance(out["rows"], int)
    assert out["label"] == "rows=42"
    assert out["run"] == snap.id
    assert out["n"] == 42


def test_not_series_parallel_dag_respects_every_dependency(client: Client) -> None:
    wf = (
        Workflow("ndag")
        .step("a", "builtin", "sleep", params={"seconds": 0.1})
        .step("b", "builtin", "sleep", params={"seconds": 0.1})
        .step("c", "builtin", "echo", depends_on=["a", "b"])
        .step("d", "builtin", "echo", depends_on=["b"])
    )
    snap = run(client, wf)
    assert snap.status == "COMPLETED"
    for step, deps in {"c": ["a", "b"], "d": ["b"]}.items():
        for dep in deps:
            assert snap.step(step).started_at >= snap.step(dep).finished_at


# -- bad input ------------------------------------------------------------------------------------


def test_non_json_output_fails_the_step_and_the_worker_keeps_running(client: Client) -> None:
    wf = Workflow("nonjson").step(
        "s", "builtin", "call", params={"function": "tests.helpers:returns_a_set"}
    )
    snap = run(client, wf)
    assert snap.status == "FAILED"
    assert "not JSON" in snap.step("s").error
    assert run(client, Workflow("after").step("e", "builtin", "echo")).status == "COMPLETED"


def test_plugin_raising_an_unexpected_exception_records_type_and_traceback(client: Client) -> None:
    wf = Workflow("raises").step(
        "s", "builtin", "call", params={"function": "tests.helpers:divide_by_zero"}
    )
    step = run(client, wf).step("s")
    assert step.status == "FAILED"
    assert "ZeroDivisionError" in step.error


def test_unknown_plugin_is_refused_at_submit_naming_what_exists(client: Client) -> None:
    wf = Workflow("typo").step("s", "csv_lodaer", "load_file")
    with pytest.raises(DefinitionError) as exc:
        client.submit(wf)
    assert "steps[0].plugin: no plugin 'csv_lodaer' (did you mean 'csv_loader'?)" in str(exc.value)


def test_missing_required_parameter_is_refused_at_submit(client: Client) -> None:
    wf = Workflow("missing").step("s", "csv_loader", "load_file", params={})
    with pytest.raises(
        DefinitionError, match=r"steps\[0\]\.params: missing required parameter 'file_path'"
    ):
        client.submit(wf)


def test_when_that_fails_at_run_time_fails_the_step_with_the_expression(client: Client) -> None:
    wf = (
        Workflow("badwhen")
        .step("a", "builtin", "echo", params={"x": 1})
        .step("b", "builtin", "echo", depends_on=["a"], when="steps.a.output.missing > 1")
    )
    step = run(client, wf).step("b")
    assert step.status == "FAILED"
    assert "has no key 'missing'" in step.error


# -- worker loss ----------------------------------------------------------------------------------


@pytest.fixture
def isolated(redis_url: str, broker_url: str) -> Settings:
    """Own Redis database (own broker queues; on AMQP its own virtual host) so the session worker
    cannot take the steps."""
    url = redis_url.rsplit("/", 1)[0] + "/12"
    r = redis.Redis.from_url(url)
    r.flushdb()
    r.close()
    return Settings(
        redis_url=url,
        key_prefix="iso",
        broker_url=broker_url,
        visibility_timeout=4,
        lease_ttl=2,
        call_allow=TEST_CALL_ALLOW,
    )


@pytest.mark.brokers
def test_worker_killed_mid_step_reruns_the_step_on_a_second_worker(
    isolated: Settings, start_worker
) -> None:
    first = start_worker(isolated, "doomed")
    client = Client(isolated)
    r = client.submit(
        Workflow("survive")
        .step("long", "builtin", "sleep", params={"seconds": 2})
        .step("after", "builtin", "echo", depends_on=["long"])
    )
    deadline = time.monotonic() + 20
    while client.snapshot(r.id).step("long").status != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.kill()
    second = start_worker(isolated, "rescuer")
    snap = r.wait(60)
    assert snap.status == "COMPLETED", snap
    long = snap.step("long")
    assert long.attempts == 2
    assert long.worker == second.hostname
    assert snap.step("after").status == "COMPLETED"


def test_step_longer_than_the_visibility_timeout_runs_once(
    isolated: Settings, start_worker
) -> None:
    start_worker(isolated, "patient")
    client = Client(isolated)
    snap = client.submit(
        Workflow("long").step("s", "builtin", "sleep", params={"seconds": 7})
    ).wait(60)
    assert snap.status == "COMPLETED"
    assert snap.step("s").attempts == 1


@pytest.mark.brokers
def test_plugin_that_hangs_past_the_soft_limit_is_killed_and_the_run_settles(
    isolated: Settings, start_worker
) -> None:
    start_worker(isolated.with_(hard_timeout_grace=1), "reaper")
    client = Client(isolated.with_(hard_timeout_grace=1))
    wf = (
        Workflow("hang")
        .step(
            "hangs",
            "builtin",
            "call",
            timeout=1,
            params={"function": "tests.helpers:ignores_soft_timeout", "args": [30]},
        )
        .step("side", "builtin", "sleep", params={"seconds": 0.5})
        .step("after", "builtin", "echo", depends_on=["hangs", "side"])
    )
    snap = client.submit(wf).wait(30)
    assert snap.status == "FAILED"
    assert snap.statuses == {"hangs": "FAILED", "side": "COMPLETED", "after": "CANCELLED"}
    assert "killed at the hard limit" in snap.step("hangs").error


def test_non_critical_step_killed_at_its_hard_limit_lets_the_rest_run(
    isolated: Settings, start_worker
) -> None:
    settings = isolated.with_(hard_timeout_grace=1)
    start_worker(settings, "reaper2")
    client = Client(settings)
    wf = (
        Workflow("hang2")
        .step(
            "hangs",
            "builtin",
            "call",
            timeout=1,
            critical=False,
            params={"function": "tests.helpers:ignores_soft_timeout", "args": [30]},
        )
        .step("slow", "builtin", "sleep", params={"seconds": 3})
        .step("after", "builtin", "echo", depends_on=["hangs", "slow"])
    )
    snap = client.submit(wf).wait(30)
    assert snap.status == "COMPLETED"
    assert snap.statuses == {"hangs": "FAILED", "slow": "COMPLETED", "after": "COMPLETED"}


def test_a_definition_validated_once_is_checked_again_when_the_fleet_catalog_changes(
    redis_url, redis_client
) -> None:
    import json

    from orchestrator.keys import Keys
    from tests.conftest import make_settings

    settings = make_settings(redis_url)
    keys = Keys(settings.key_prefix)
    echo = {"params": [], "required": [], "accepts_any": True}

    def publish(methods: dict) -> None:
        redis_client.hset(keys.catalog, "w1@test", json.dumps({"plugins": {"builtin": methods}}))
        redis_client.set(keys.worker_alive("w1@test"), "1")

    wf = {"id": "cached", "steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}
    client = Client(settings)
    try:
        publish({"echo": echo, "sleep": echo})
        client.submit(wf)
        client.submit(wf)  # the second submit reuses the validated definition
        publish({"sleep": echo})  # the fleet no longer has builtin.echo
        with pytest.raises(DefinitionError, match="echo"):
            client.submit(wf)
        publish({"echo": echo})
        assert client.submit(wf).status() == "PENDING"  # no worker consumes this prefix
    finally:
        client.close()
        redis_client.delete(*redis_client.keys(f"{settings.key_prefix}:*"))
