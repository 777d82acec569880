"""Operator control against real workers: pause, resume, cancel, retry, clone, export, SLA,
priorities, and concurrent actions."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis

from orchestrator import Client, ControlError, UnknownRun, Workflow
from orchestrator.engine.export import export_run
from orchestrator.engine.sla import check_once
from orchestrator.errors import CanvasflowError
from orchestrator.settings import Settings

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float = 20, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def events_of(client: Client, run_id: str, etype: str | None = None) -> list[dict]:
    out = []
    for _, f in client.redis.xrange(client.keys.events):
        f = {k.decode(): v.decode() for k, v in f.items()}
        if f["run"] == run_id and (etype is None or f["type"] == etype):
            f["data"] = json.loads(f["data"] or "{}")
            out.append(f)
    return out


def chain_of(n: int, seconds: float) -> Workflow:
    wf = Workflow(f"chain{n}", mode="sequential")
    for i in range(n):
        wf = wf.step(f"s{i}", "builtin", "sleep", params={"seconds": seconds})
    return wf


@pytest.mark.brokers
def test_pause_in_a_chain_lets_the_running_step_finish_and_resume_runs_each_step_once(
    client: Client,
) -> None:
    run = client.submit(chain_of(10, 0.3))
    wait_for(lambda: client.snapshot(run.id).statuses["s2"] == "RUNNING")
    client.control.pause(run.id, actor="alice", reason="maintenance")
    paused = run.wait(20)
    assert paused.status == "PAUSED"
    done = [s.id for s in paused.steps if s.status == "COMPLETED"]
    assert "s2" in done and len(done) < 10
    frozen = paused.statuses
    time.sleep(3)
    assert client.snapshot(run.id).statuses == frozen  # nothing started while paused
    client.control.resume(run.id, actor="alice")
    final = run.wait(30)
    assert final.status == "COMPLETED"
    assert all(s.attempts == 1 for s in final.steps)
    starts = [events_of(client, run.id, "step_started")]
    assert len(starts[0]) == 10


@pytest.mark.brokers
def test_pause_during_a_fan_out_then_resume_runs_the_join_once_after_all_branches(
    client: Client,
) -> None:
    wf = Workflow("fan20").step("start", "builtin", "echo")
    for i in range(20):
        wf = wf.step(f"b{i}", "builtin", "sleep", depends_on=["start"], params={"seconds": 0.2})
    wf = wf.step("join", "builtin", "echo", depends_on=[f"b{i}" for i in range(20)])
    run = client.submit(wf)
    wait_for(lambda: sum(s.status == "COMPLETED" for s in client.snapshot(run.id).steps) >= 4)
    client.control.pause(run.id)
    paused = run.wait(20)
    assert paused.status == "PAUSED"
    assert paused.statuses["join"] == "PENDING"
    assert any(v == "PENDING" for k, v in paused.statuses.items() if k.startswith("b"))
    client.control.resume(run.id)
    final = run.wait(30)
    assert final.status == "COMPLETED"
    join = final.step("join")
    assert join.attempts == 1
    assert join.started_at >= max(final.step(f"b{i}").finished_at for i in range(20))
    assert len(events_of(client, run.id, "step_started")) == 22


@pytest.mark.brokers
def test_cancel_terminates_a_long_step_and_compensates_newest_first(client: Client) -> None:
    wf = (
        Workflow("cancelme", mode="sequential")
        .step(
            "one",
            "builtin",
            "echo",
            compensate={"plugin": "builtin", "method": "echo", "params": {"undo": 1}},
        )
        .step(
            "two",
            "builtin",
            "echo",
            compensate={"plugin": "builtin", "method": "echo", "params": {"undo": 2}},
        )
        .step("long", "builtin", "sleep", params={"seconds": 60})
        .step("never", "builtin", "echo")
    )
    run = client.submit(wf)
    wait_for(lambda: client.snapshot(run.id).statuses["long"] == "RUNNING")
    client.control.cancel(run.id, actor="bob", reason="wrong inputs")
    final = run.wait(15)  # the 60 s step was terminated, not waited for
    assert final.status == "CANCELLED"
    assert final.statuses == {
        "one": "COMPENSATED",
        "two": "COMPENSATED",
        "long": "CANCELLED",
        "never": "CANCELLED",
    }
    order = [e["step"] for e in events_of(client, run.id, "step_compensated")]
    assert order == ["two", "one"]
    actions = [e["data"] for e in events_of(client, run.id, "operator_action")]
    assert [(a["action"], a["actor"], a["reason"], a["outcome"]) for a in actions] == [
        ("cancel", "bob", "wrong inputs", "ok")
    ]


def test_failing_compensation_waits_for_an_operator_and_its_retry_completes(
    client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "fixed"
    wf = (
        Workflow("compfail", mode="sequential")
        .step(
            "make",
            "builtin",
            "echo",
            compensate={
                "plugin": "builtin",
                "method": "call",
                "params": {"function": "tests.helpers:fail_unless_exists", "args": [str(marker)]},
            },
        )
        .step("boom", "builtin", "fail", params={"message": "bad deploy"})
    )
    run = client.submit(wf)
    snap = run.wait(20)
    assert snap.status == "COMPENSATION_FAILED"
    assert "compensation of 'make'" in snap.error and "not fixed yet" in snap.error
    with pytest.raises(ControlError, match="it is COMPENSATION_FAILED"):
        client.control.retry(run.id)
    marker.write_text("ok")
    client.control.retry_compensation(run.id, actor="carol")
    final = run.wait(20)
    assert final.status == "FAILED"
    assert final.statuses == {"make": "COMPENSATED", "boom": "FAILED"}


@pytest.mark.brokers
def test_retry_from_the_failed_step_reruns_only_it_and_its_descendants(client: Client) -> None:
    wf = (
        Workflow("retryfrom")
        .step("a", "builtin", "echo", params={"v": 1})
        .step("side", "builtin", "echo", depends_on=["a"])
        .step(
            "flaky",
            "builtin",
            "fail",
            depends_on=["a"],
            params={"times": 1, "message": "first time"},
        )
        .step(
            "after", "builtin", "echo", depends_on=["flaky"], params={"v": "{{ steps.a.output.v }}"}
        )
    )
    run = client.submit(wf)
    first = run.wait(20)
    assert first.status == "FAILED"
    assert first.statuses == {
        "a": "COMPLETED",
        "side": "COMPLETED",
        "flaky": "FAILED",
        "after": "CANCELLED",
    }
    result = client.control.retry(run.id, actor="dave")
    assert result.detail["reset"] == ["flaky", "after"]
    final = run.wait(20)
    assert final.status == "COMPLETED"
    assert final.step("a").attempts == 1 and final.step("side").attempts == 1
    assert final.step("flaky").attempts == 2  # numbered on
    assert final.step("after").output == {"v": 1}  # upstream output kept


def saga(wid: str) -> Workflow:
    """backup -> migrate -> deploy (each with a compensation) -> verify, which fails once."""
    wf = Workflow(wid, mode="sequential")
    for sid in ("backup", "migrate", "deploy"):
        wf = wf.step(
            sid,
            "builtin",
            "echo",
            params={"did": sid},
            compensate={"plugin": "builtin", "method": "echo", "params": {"undo": sid}},
        )
    return wf.step("verify", "builtin", "fail", params={"times": 1, "message": "smoke test"})


def test_retrying_a_compensated_saga_reruns_the_steps_whose_effects_were_undone(
    client: Client,
) -> None:
    run = client.submit(saga("saga_retry"))
    first = run.wait(30)
    assert first.status == "FAILED"
    assert first.statuses == {
        "backup": "COMPENSATED",
        "migrate": "COMPENSATED",
        "deploy": "COMPENSATED",
        "verify": "FAILED",
    }
    result = client.control.retry(run.id, actor="erin")  # from the failed step, verify
    assert result.detail["reset"] == ["backup", "migrate", "deploy", "verify"]
    final = run.wait(30)
    assert final.status == "COMPLETED"
    assert set(final.statuses.values()) == {"COMPLETED"}
    for sid in ("backup", "migrate", "deploy"):
        assert final.step(sid).attempts == 2 and final.step(sid).output == {"did": sid}
    assert final.step("verify").attempts == 2  # numbered on: fail(times=1) passes
    begun = [e["step"] for e in events_of(client, run.id, "step_started")]
    assert begun == ["backup", "migrate", "deploy", "verify"] * 2  # in order, from the earliest
    retry = [
        e["data"]
        for e in events_of(client, run.id, "operator_action")
        if e["data"].get("action") == "retry"
    ][-1]
    assert retry["detail"]["attempts_before"] == {
        "backup": 1,
        "migrate": 1,
        "deploy": 1,
        "verify": 1,
    }
    assert retry["detail"]["status_before"] == "FAILED" and retry["detail"]["ended_at"]


def test_a_retry_reruns_what_was_built_on_a_compensated_step_even_without_a_compensation(
    client: Client,
) -> None:
    # plan has no compensation: it stays COMPLETED through the rollback, but its output was
    # computed from backup's, which was undone and is made again by the retry.
    undo = {"plugin": "builtin", "method": "echo", "params": {"undo": 1}}
    wf = (
        Workflow("saga_between", mode="parallel")
        .step("backup", "builtin", "echo", params={"id": "{{ run.id }}"}, compensate=undo)
        .step("plan", "builtin", "echo", depends_on=["backup"], params={"of": "backup"})
        .step("deploy", "builtin", "echo", depends_on=["plan"], compensate=undo)
        .step("verify", "builtin", "fail", depends_on=["deploy"], params={"times": 1})
    )
    run = client.submit(wf)
    assert run.wait(30).statuses == {
        "backup": "COMPENSATED",
        "plan": "COMPLETED",
        "deploy": "COMPENSATED",
        "verify": "FAILED",
    }
    result = client.control.retry(run.id, actor="erin")  # from verify
    assert result.detail["reset"] == ["backup", "plan", "deploy", "verify"]
    final = run.wait(30)
    assert final.status == "COMPLETED"
    assert {s.id: s.attempts for s in final.steps} == {
        "backup": 2,
        "plan": 2,
        "deploy": 2,
        "verify": 2,
    }


def test_an_event_of_an_unexpected_shape_does_not_break_the_export(client: Client) -> None:
    run = client.submit(Workflow("odd_events").step("a", "builtin", "echo"))
    assert run.wait(20).status == "COMPLETED"
    # Events another version (or anyone who can write to Redis) appended for this run: data
    # that is not an object, a log batch whose columns do not line up.
    odd = [
        ("log", "5"),
        ("log", '{"n": "x", "ts": 1, "message": 2}'),
        ("log", '{"n": 2, "ts": [1, 2], "message": ["only one"]}'),
        ("progress", "[1, 2]"),
        ("stats", '"text"'),
        ("step_completed", "null"),
    ]
    first = client.redis.hincrby(client.keys.run(run.id), "seq", len(odd)) - len(odd) + 1
    for seq, (etype, data) in enumerate(odd, first):
        client.redis.xadd(
            client.keys.events,
            {"run": run.id, "seq": seq, "type": etype, "step": "a", "ts": 1.0, "data": data},
        )
    doc = export_run(client, run.id)
    assert [e["seq"] for e in doc["events"]][-len(odd) :] == list(range(first, first + len(odd)))
    (step,) = doc["steps"]
    assert step["status"] == "COMPLETED" and step["output"] == {}
    unreadable = [x["message"] for x in step["logs"] if x["message"].startswith("unreadable")]
    assert len(unreadable) == 2  # the two batches that do not line up, as the store records them


def test_illegal_actions_are_refused_with_the_current_state_and_audited(client: Client) -> None:
    run = client.submit(Workflow("done").step("a", "builtin", "echo"))
    run.wait(20)
    with pytest.raises(ControlError) as exc:
        client.control.pause(run.id, actor="eve")
    assert "cannot pause run" in str(exc.value) and "it is COMPLETED" in str(exc.value)
    assert "RUNNING" in str(exc.value)  # says when it would be allowed
    with pytest.raises(ControlError, match="cannot resume"):
        client.control.resume(run.id)
    with pytest.raises(UnknownRun):
        client.control.cancel("no-such-run")
    refused = [e["data"]["outcome"] for e in events_of(client, run.id, "operator_action")]
    assert all(o.startswith("refused") for o in refused) and len(refused) == 2
    with pytest.raises(CanvasflowError, match="has no failed step"):
        client.control.retry(run.id)


@pytest.mark.parametrize("first,second", [("pause", "cancel"), ("cancel", "cancel")])
def test_concurrent_actions_leave_one_consistent_outcome(
    client: Client, first: str, second: str
) -> None:
    run = client.submit(chain_of(6, 0.3))
    wait_for(lambda: client.snapshot(run.id).statuses["s1"] == "RUNNING")
    results: list[object] = []
    barrier = threading.Barrier(2)

    def act(name: str) -> None:
        barrier.wait()
        try:
            results.append(getattr(client.control, name)(run.id))
        except ControlError as exc:
            results.append(exc)

    threads = [threading.Thread(target=act, args=(n,)) for n in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = run.wait(30)
    assert final.status == "CANCELLED"
    assert all(s.attempts <= 1 for s in final.steps)
    if first == second:
        assert sum(isinstance(r, ControlError) for r in results) == 1


@pytest.mark.brokers
def test_two_resumes_at_once_dispatch_once(client: Client) -> None:
    run = client.submit(chain_of(5, 0.4))
    wait_for(lambda: client.snapshot(run.id).statuses["s1"] == "RUNNING")
    client.control.pause(run.id)
    assert run.wait(20).status == "PAUSED"
    results: list[object] = []
    barrier = threading.Barrier(2)

    def resume() -> None:
        barrier.wait()
        try:
            results.append(client.control.resume(run.id))
        except ControlError as exc:
            results.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, ControlError) for r in results) == 1
    final = run.wait(30)
    assert final.status == "COMPLETED"
    assert all(s.attempts == 1 for s in final.steps)


def test_clone_starts_the_same_version_with_overridden_inputs(client: Client) -> None:
    wf = Workflow("clonable", inputs={"n": 1, "m": 2}).step(
        "a", "builtin", "echo", params={"n": "{{ inputs.n }}", "m": "{{ inputs.m }}"}
    )
    run = client.submit(wf)
    run.wait(20)
    new = client.clone(run.id, inputs={"n": 10}, actor="frank")
    snap = new.wait(20)
    assert snap.status == "COMPLETED"
    assert snap.step("a").output == {"n": 10, "m": 2}
    assert client.redis.hget(client.keys.run(new.id), "cloned_from").decode() == run.id


def test_export_holds_definition_attempts_logs_events_and_actions(client: Client) -> None:
    wf = (
        Workflow("exportme")
        .step("a", "builtin", "fail", params={"times": 1}, retries=1, retry_delay=0.1)
        .step("b", "builtin", "sleep", depends_on=["a"], params={"seconds": 0.3})
    )
    run = client.submit(wf)
    run.wait(20)
    with pytest.raises(ControlError):
        client.control.pause(run.id, actor="gina")
    doc = export_run(client, run.id)
    assert doc["format"] == "canvasflow.trace/1"
    assert doc["definition"]["id"] == "exportme"
    a = next(s for s in doc["steps"] if s["id"] == "a")
    assert [x["status"] for x in a["attempts"]] == ["RETRYING", "COMPLETED"]
    b = next(s for s in doc["steps"] if s["id"] == "b")
    assert b["progress"]["fraction"] == 1.0 and b["stats"]["duration"] > 0
    assert [e["seq"] for e in doc["events"]] == sorted({e["seq"] for e in doc["events"]})
    assert doc["operator_actions"][0]["actor"] == "gina"


def test_sla_warning_and_breach_are_emitted_once(client: Client) -> None:
    wf = Workflow("slow_sla", sla_seconds=1).step("s", "builtin", "sleep", params={"seconds": 1.5})
    run = client.submit(wf)
    wait_for(lambda: client.snapshot(run.id).statuses["s"] == "RUNNING")
    time.sleep(1.1)
    emitted = check_once(client.state)
    assert (run.id, "sla_warning") in emitted and (run.id, "sla_breached") in emitted
    assert check_once(client.state) == [] or all(r != run.id for r, _ in check_once(client.state))
    run.wait(20)
    assert len(events_of(client, run.id, "sla_breached")) == 1
    assert len(events_of(client, run.id, "sla_warning")) == 1


@pytest.fixture
def solo(redis_url: str, broker_url: str) -> Settings:
    url = redis_url.rsplit("/", 1)[0] + "/10"
    r = redis.Redis.from_url(url)
    r.flushdb()
    r.close()
    return Settings(redis_url=url, key_prefix="prio", broker_url=broker_url)


@pytest.mark.brokers
def test_high_priority_runs_overtake_queued_low_priority_ones(solo: Settings, start_worker) -> None:
    start_worker(solo, "one-at-a-time", concurrency=1)
    client = Client(solo)
    slow = Workflow("low").step("s", "builtin", "sleep", params={"seconds": 0.3})
    lows = [client.submit(slow, priority="low") for _ in range(6)]
    high = client.submit(Workflow("high").step("s", "builtin", "echo"), priority="high")
    snaps = [r.wait(30) for r in lows] + [high.wait(30)]
    high_start = snaps[-1].step("s").started_at
    overtaken = sum(1 for s in snaps[:-1] if s.step("s").started_at > high_start)
    assert overtaken >= 3, [s.step("s").started_at - high_start for s in snaps[:-1]]


@pytest.mark.brokers
def test_worker_killed_while_a_paused_run_resumes_does_not_strand_it(
    redis_url: str, broker_url: str, start_worker
) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(url).flushdb()
    settings = Settings(
        redis_url=url, key_prefix="pk", visibility_timeout=4, lease_ttl=2, broker_url=broker_url
    )
    first = start_worker(settings, "first")
    client = Client(settings)
    run = client.submit(chain_of(4, 1.0))
    wait_for(lambda: client.snapshot(run.id).statuses["s0"] == "RUNNING")
    client.control.pause(run.id)
    assert run.wait(20).status == "PAUSED"
    client.control.resume(run.id)
    wait_for(lambda: client.snapshot(run.id).statuses["s1"] == "RUNNING")
    first.kill()
    start_worker(settings, "second")
    final = run.wait(60)
    assert final.status == "COMPLETED"
    assert final.step("s1").attempts == 2


def test_a_run_paused_before_any_step_began_starts_when_it_is_resumed(
    client: Client, fleet_settings: Settings, start_worker
) -> None:
    # Found by the scale-out tests: a run paused while PENDING went PAUSED -> RUNNING and never
    # got a start, so it finished with started_at None and no duration. Its step waits on a
    # queue no worker reads until the pause is in; the worker started then finds the run
    # pausing and settles it PAUSED without beginning the step.
    wf = Workflow("unstarted").step("a", "builtin", "echo", queue="later")
    run = client.submit(wf)
    client.control.pause(run.id, actor="alice")
    start_worker(fleet_settings, "later", queues="later")
    paused = wait_for(lambda: (s := client.snapshot(run.id)).status == "PAUSED" and s, timeout=60)
    assert paused.started_at is None and paused.steps[0].attempts == 0
    client.control.resume(run.id, actor="alice")
    final = run.wait(60)
    assert final.status == "COMPLETED"
    assert final.started_at is not None and final.started_at >= paused.created_at
    assert final.duration is not None
