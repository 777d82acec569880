"""Sub-workflow steps and workflow outputs against real Redis and real Celery workers: a child
run per step, its result as the step's output, failure, cancel, pause and resume reaching
children, idempotent child creation, the depth limit, outputs and their errors."""

from __future__ import annotations

import time
import uuid

import pytest

from orchestrator import Client, Workflow

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
