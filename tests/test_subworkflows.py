"""Sub-workflow steps and workflow outputs against real Redis and real Celery workers: a child
run per step, its result as the step's output, failure, cancel, pause and resume reaching
children, idempotent child creation, the depth limit, outputs and their errors."""

from __future__ import annotations

import time
import uuid

import pytest

from orchestrator import Client, Workflow
from orchestrator.errors import DefinitionError

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float = 30, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def first_child(client: Client, run):
    """The run's first child run, once it exists (it joins the children set just before)."""

    def ready():
        kids = run.children()
        return kids[0] if kids and client.state.status(kids[0].id) else None

    return wait_for(ready)


def child_wf(client: Client, wid: str, seconds: float = 0.0, fail: bool = False) -> str:
    """Register a 3-step child: echo -> sleep -> echo, with outputs."""
    wf = Workflow(wid, mode="sequential", inputs={"n": 0})
    wf = wf.step("first", "builtin", "echo", params={"n": "{{ inputs.n }}"})
    if fail:
        wf = wf.step("mid", "builtin", "fail", params={"message": "child broke"})
    else:
        wf = wf.step("mid", "builtin", "sleep", params={"seconds": seconds})
    wf = wf.step("last", "builtin", "echo", params={"double": "{{ steps.first.output.n * 2 }}"})
    wf = wf.outputs(doubled="{{ steps.last.output.double }}", n="{{ inputs.n }}")
    client.register(wf)
    return wid


def test_sub_workflow_step_completes_with_the_child_outputs(client: Client) -> None:
    child = child_wf(client, uid("child"))
    parent = (
        Workflow(uid("parent"))
        .step("a", "builtin", "echo", params={"n": 21})
        .subworkflow("sub", child, inputs={"n": "{{ steps.a.output.n }}"}, depends_on="a")
        .step(
            "after",
            "builtin",
            "echo",
            params={"got": "{{ steps.sub.output.doubled }}"},
            depends_on="sub",
        )
        .outputs(answer="{{ steps.after.output.got }}")
    )
    run = client.submit(parent)
    snap = run.wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("sub").output == {"doubled": 42, "n": 21}
    assert snap.result == {"answer": 42}
    assert run.result == {"answer": 42}
    kids = run.children()
    assert len(kids) == 1
    ksnap = kids[0].snapshot()
    assert ksnap.status == "COMPLETED"
    assert ksnap.parent_run == run.id and ksnap.parent_step == "sub"
    assert ksnap.result == {"doubled": 42, "n": 21}


def test_a_failed_child_fails_the_step_and_the_run_says_which_child(client: Client) -> None:
    child = child_wf(client, uid("broken"), fail=True)
    run = client.submit(Workflow(uid("parent")).subworkflow("sub", child, inputs={"n": 1}))
    snap = run.wait(60)
    assert snap.status == "FAILED"
    (kid,) = run.children()
    assert kid.status() == "FAILED"
    error = snap.step("sub").error
    assert kid.id in error and "ended FAILED" in error and "child broke" in error
    assert snap.failed_step == "sub"


def test_cancel_of_the_parent_compensates_inside_the_child_first_then_the_parent(
    client: Client,
) -> None:
    child = uid("slowchild")
    client.register(
        Workflow(child, mode="sequential")
        .step(
            "c1",
            "builtin",
            "echo",
            params={"x": 1},
            compensate={"plugin": "builtin", "method": "echo"},
        )
        .step("c2", "builtin", "sleep", params={"seconds": 30})
    )
    run = client.submit(
        Workflow(uid("parent"), mode="sequential")
        .step(
            "p1",
            "builtin",
            "echo",
            params={"y": 1},
            compensate={"plugin": "builtin", "method": "echo"},
        )
        .subworkflow("sub", child)
    )
    kid = first_child(client, run)
    wait_for(lambda: kid.snapshot().statuses["c2"] == "RUNNING")
    client.control.cancel(run.id, actor="test")
    snap = run.wait(60)
    assert snap.status == "CANCELLED", snap
    ksnap = kid.wait(30)
    assert ksnap.status == "CANCELLED"
    assert ksnap.statuses["c1"] == "COMPENSATED"
    assert snap.statuses["p1"] == "COMPENSATED"
    assert snap.statuses["sub"] == "CANCELLED"  # terminated with its run
    # The child's compensation ran before the parent's.
    child_comp = kid.snapshot().step("c1")
    parent_comp = snap.step("p1")
    assert child_comp.status == parent_comp.status == "COMPENSATED"
    times = {}
    for _, f in client.redis.xrange(client.keys.events):
        f = {k.decode(): v.decode() for k, v in f.items()}
        if f["type"] == "step_compensated" and f["run"] in (run.id, kid.id):
            times[f["run"]] = float(f["ts"])
    assert times[kid.id] < times[run.id]


def test_pause_and_resume_of_the_parent_reach_the_child_and_it_runs_each_step_once(
    client: Client,
) -> None:
    child = uid("pchild")
    client.register(
        Workflow(child, mode="sequential")
        .step("c1", "builtin", "sleep", params={"seconds": 1})
        .step("c2", "builtin", "sleep", params={"seconds": 0.1})
        .step("c3", "builtin", "echo", params={"ok": True})
        .outputs(ok="{{ steps.c3.output.ok }}")
    )
    run = client.submit(
        Workflow(uid("parent"), mode="sequential")
        .subworkflow("sub", child)
        .step("after", "builtin", "echo", params={"v": "{{ steps.sub.output.ok }}"})
    )
    kid = first_child(client, run)
    wait_for(lambda: kid.snapshot().statuses["c1"] == "RUNNING")
    client.control.pause(run.id, actor="test")
    assert run.wait(30).status == "PAUSED"
    ksnap = kid.snapshot()
    assert ksnap.status == "PAUSED"
    assert ksnap.statuses["c1"] == "COMPLETED" and ksnap.statuses["c2"] == "PENDING"
    client.control.resume(run.id, actor="test")
    snap = run.wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("after").output == {"v": True}
    assert [k.id for k in run.children()] == [kid.id]  # attached again, no second child
    assert all(s.attempts == 1 for s in kid.snapshot().steps)


def test_outputs_with_a_template_error_fail_the_run_with_the_path_of_the_entry(
    client: Client,
) -> None:
    run = client.submit(
        Workflow(uid("outs"))
        .step("a", "builtin", "echo", params={"n": 1})
        .outputs(fine="{{ steps.a.output.n }}", thumbnails="{{ steps.a.output.missing }}")
    )
    snap = run.wait(30)
    assert snap.status == "FAILED"
    assert snap.error.startswith("outputs.thumbnails: "), snap.error
    assert snap.result is None


def test_a_run_without_outputs_has_no_result(client: Client) -> None:
    run = client.submit(Workflow(uid("plain")).step("a", "builtin", "echo", params={"n": 1}))
    assert run.wait(30).status == "COMPLETED"
    assert run.result is None


def test_submit_with_an_unknown_child_workflow_or_version_names_what_is_registered(
    client: Client,
) -> None:
    child = child_wf(client, uid("known"))
    with pytest.raises(DefinitionError) as info:
        client.submit(Workflow(uid("p")).subworkflow("sub", "no-such-workflow"))
    text = str(info.value)
    assert "steps[0].workflow: workflow 'no-such-workflow' is not registered" in text
    assert child in text
    with pytest.raises(DefinitionError) as info:
        client.submit(Workflow(uid("p")).subworkflow("sub", child, version="7"))
    assert f"steps[0].version: workflow '{child}' has no version 7 (registered: 1)" in str(
        info.value
    )


def test_the_child_version_is_pinned_at_submit(client: Client) -> None:
    child = child_wf(client, uid("pinned"))
    run = client.submit(Workflow(uid("p")).subworkflow("sub", child, inputs={"n": 2}))
    assert run.wait(30).status == "COMPLETED"
    (kid,) = run.children()
    assert kid.snapshot().version == "1"


def test_registering_a_cycle_of_sub_workflows_is_refused_naming_it(client: Client) -> None:
    a, b = uid("cyc-a"), uid("cyc-b")
    client.register(Workflow(a).step("x", "builtin", "echo"))
    client.register(Workflow(b).subworkflow("to_a", a))
    with pytest.raises(DefinitionError) as info:
        client.register(Workflow(a).subworkflow("to_b", b))  # version 2 of a would close it
    assert f"sub-workflow cycle: {a} -> {b} -> {a}" in str(info.value)
    with pytest.raises(DefinitionError) as info:
        client.register(Workflow(b).subworkflow("me", b))
    assert f"sub-workflow cycle: {b} -> {b}" in str(info.value)
    assert client.versions(a) == ["1"] and client.versions(b) == ["1"]


def test_nesting_past_the_depth_limit_fails_the_step_that_would_start_the_child(
    client: Client,
) -> None:
    # Eleven levels under the top run: the default limit (10) stops the eleventh.
    names = [uid(f"lvl{i}") for i in range(12)]
    client.register(Workflow(names[0]).step("leaf", "builtin", "echo"))
    for i in range(1, 12):
        client.register(Workflow(names[i]).subworkflow("down", names[i - 1]))
    run = client.submit(names[11])
    snap = run.wait(60)
    assert snap.status == "FAILED"
    run_ = run
    for _ in range(1, 11):
        (run_,) = run_.children()
        assert client.snapshot(run_.id).status == "FAILED"
    deepest = client.snapshot(run_.id)  # depth 10: its step would start depth 11
    assert run_.children() == []
    error = deepest.step("down").error
    assert "nested 11 runs deep: the limit is 10 (CANVASFLOW_MAX_WORKFLOW_DEPTH)" in error


def test_retry_from_a_failed_sub_workflow_step_starts_a_fresh_child(client: Client) -> None:
    child = child_wf(client, uid("flaky"), fail=True)
    run = client.submit(Workflow(uid("p")).subworkflow("sub", child))
    assert run.wait(30).status == "FAILED"
    (first,) = run.children()
    client.control.retry(run.id, from_step="sub", actor="test")
    wait_for(lambda: len(run.children()) == 2)
    assert run.wait(30).status == "FAILED"
    ids = {k.id for k in run.children()}
    assert first.id in ids and len(ids) == 2
    assert all(k.status() == "FAILED" for k in run.children())


def test_worker_killed_while_starting_the_child_starts_exactly_one_child(
    redis_url: str, start_worker
) -> None:
    from tests.conftest import TEST_CALL_ALLOW, make_settings

    settings = make_settings(
        redis_url, lease_ttl=2, call_allow=(*TEST_CALL_ALLOW, "tests.subrun_faults")
    )
    start_worker(settings, concurrency=1)
    client = Client(settings)
    try:
        child = child_wf(client, uid("killchild"))
        run = client.submit(
            Workflow(uid("p"), mode="sequential")
            .step("arm", "builtin", "call", params={"function": "tests.subrun_faults:arm_kill"})
            .subworkflow("sub", child, inputs={"n": 5})
        )
        snap = run.wait(90)
        assert snap.status == "COMPLETED", snap
        assert snap.step("sub").output == {"doubled": 10, "n": 5}
        (kid,) = run.children()
        assert kid.snapshot().status == "COMPLETED"
        assert snap.step("sub").attempts == 2  # the killed attempt, then the one that attached
        assert all(s.attempts == 1 for s in kid.snapshot().steps)
    finally:
        client.close()


def test_the_export_carries_the_result_and_the_parent(client: Client) -> None:
    from orchestrator.engine.export import export_run

    child = child_wf(client, uid("expchild"))
    run = client.submit(
        Workflow(uid("exp"))
        .subworkflow("sub", child, inputs={"n": 4})
        .outputs(got="{{ steps.sub.output.doubled }}")
    )
    assert run.wait(30).status == "COMPLETED"
    trace = export_run(client, run.id)
    assert trace["run"]["result"] == {"got": 8} and trace["run"]["parent_run"] is None
    (kid,) = run.children()
    child_trace = export_run(client, kid.id)
    assert child_trace["run"]["parent_run"] == run.id
    assert child_trace["run"]["parent_step"] == "sub"
    assert child_trace["run"]["result"] == {"doubled": 8, "n": 4}


def test_child_inputs_over_the_size_limit_fail_the_step_not_the_worker(
    redis_url: str, start_worker
) -> None:
    from orchestrator.model.limits import Limits
    from tests.conftest import make_settings

    settings = make_settings(redis_url, limits=Limits(max_inputs_bytes=200))
    start_worker(settings, concurrency=1)
    client = Client(settings)
    try:
        child = child_wf(client, uid("bigin"))
        run = client.submit(
            Workflow(uid("p"))
            .step("big", "builtin", "echo", params={"blob": "x" * 150})
            .subworkflow(
                "sub",
                child,
                inputs={
                    "n": 1,
                    "blob": "{{ steps.big.output.blob }}",
                    "again": "{{ steps.big.output.blob }}",
                },
                depends_on="big",
            )
        )
        snap = run.wait(60)
        assert snap.status == "FAILED"
        error = snap.step("sub").error
        assert error.startswith(f"inputs of sub-workflow '{child}': inputs: ") and "bytes" in error
        assert snap.step("sub").attempts == 1 and run.children() == []
    finally:
        client.close()


def test_a_child_paused_alone_keeps_its_parent_waiting_until_the_parent_pauses_too(
    client: Client,
) -> None:
    child = uid("alonechild")
    client.register(
        Workflow(child, mode="sequential")
        .step("c1", "builtin", "sleep", params={"seconds": 0.5})
        .step("c2", "builtin", "echo", params={"done": True})
        .outputs(done="{{ steps.c2.output.done }}")
    )
    run = client.submit(Workflow(uid("parent")).subworkflow("sub", child))
    kid = first_child(client, run)
    wait_for(lambda: kid.snapshot().statuses["c1"] == "RUNNING")
    client.control.pause(kid.id, actor="test")
    assert kid.wait(30).status == "PAUSED"
    snap = run.snapshot()
    assert snap.status == "RUNNING" and snap.statuses["sub"] == "RUNNING"  # still waiting on it
    client.control.pause(run.id, actor="test")
    paused = run.wait(30)
    assert paused.status == "PAUSED"
    client.control.resume(run.id, actor="test")  # resumes the child too, and attaches to it
    done = run.wait(60)
    assert done.status == "COMPLETED" and done.step("sub").output == {"done": True}
    assert [k.id for k in run.children()] == [kid.id]


def test_cancel_without_terminating_lets_the_child_wind_down_and_fails_the_step(
    client: Client,
) -> None:
    child = uid("softchild")
    client.register(
        Workflow(child, mode="sequential")
        .step("c1", "builtin", "sleep", params={"seconds": 0.5})
        .step("c2", "builtin", "sleep", params={"seconds": 30})
    )
    run = client.submit(Workflow(uid("parent")).subworkflow("sub", child))
    kid = first_child(client, run)
    wait_for(lambda: kid.snapshot().statuses["c1"] == "RUNNING")
    client.control.cancel(run.id, actor="test", terminate=False)
    snap = run.wait(60)
    assert snap.status == "CANCELLED"
    ksnap = kid.wait(30)
    assert ksnap.status == "CANCELLED"
    # builtin.sleep stops at a cancel on its own (cooperatively); c2 never started
    assert ksnap.statuses["c1"] in ("COMPLETED", "FAILED") and ksnap.statuses["c2"] == "CANCELLED"
    assert snap.statuses["sub"] == "FAILED"
    assert f"child run {kid.id}" in snap.step("sub").error and "CANCELLED" in snap.step("sub").error
