"""Drill item 6: any exception anywhere on the step path is that step's recorded failure; the run
always reaches a final status (real worker processes, faults injected inside them)."""

from __future__ import annotations

import pytest

from orchestrator import Client, Workflow
from orchestrator.settings import Settings
from tests.conftest import TEST_CALL_ALLOW, make_settings

pytestmark = pytest.mark.integration


def test_a_template_result_too_large_to_encode_fails_its_step_and_the_run_ends(
    client: Client,
) -> None:
    wf = (
        Workflow("huge_template", mode="sequential")
        .step("square", plugin="builtin", method="echo", params={"x": "{{ inputs.a * inputs.a }}"})
        .step("after", plugin="builtin", method="echo", params={"y": 1})
        .build()
    )
    snap = client.submit(wf, inputs={"a": 10**2500}).wait(60)
    assert snap.status == "FAILED", snap
    assert snap.statuses == {"square": "FAILED", "after": "CANCELLED"}
    assert snap.failed_step == "square"
    assert "ValueError" in snap.step("square").error


@pytest.fixture
def fault_settings(redis_url: str) -> Settings:
    return make_settings(redis_url, lease_ttl=3, call_allow=(*TEST_CALL_ALLOW, "tests.faults"))


def faulty(stage: str, *, careful: bool) -> Workflow:
    """arm (breaks ``stage`` in this worker process) -> victim -> after."""
    victim = {"compensate": {"plugin": "builtin", "method": "echo"}} if careful else {}
    return (
        Workflow(f"fault_{stage}", mode="sequential")
        .step(
            "arm",
            plugin="builtin",
            method="call",
            params={"function": "tests.faults:arm", "kwargs": {"stage": stage}},
        )
        .step("victim", plugin="builtin", method="echo", params={"x": 1}, **victim)
        .step("after", plugin="builtin", method="echo", params={"y": 2})
        .build()
    )


@pytest.mark.parametrize(
    ("stage", "careful"),
    [
        ("begin_step", True),  # the careful path asks Redis before the plugin runs
        ("finish_step", True),  # ... and records the end after it
        ("run_once", False),  # the fast path records start and end in one write
    ],
)
def test_a_fault_while_recording_a_step_fails_that_step_and_the_run(
    stage: str, careful: bool, fault_settings: Settings, start_worker
) -> None:
    start_worker(fault_settings, concurrency=1)
    client = Client(fault_settings)
    try:
        snap = client.submit(faulty(stage, careful=careful)).wait(60)
    finally:
        client.close()
    assert snap.status == "FAILED", snap
    assert snap.statuses == {"arm": "COMPLETED", "victim": "FAILED", "after": "CANCELLED"}
    assert f"injected fault: {stage}" in snap.step("victim").error
    assert "outside its plugin" in snap.step("victim").error


@pytest.mark.parametrize("stage", ["settle", "transition"])
def test_a_fault_while_settling_still_ends_the_run_with_the_reason(
    stage: str, fault_settings: Settings, start_worker
) -> None:
    start_worker(fault_settings, concurrency=1)
    client = Client(fault_settings)
    try:
        snap = client.submit(faulty(stage, careful=False)).wait(60)
    finally:
        client.close()
    assert snap.status == "FAILED", snap
    assert set(snap.statuses.values()) == {"COMPLETED"}
    assert f"injected fault: {stage}" in snap.error
    assert "could not settle" in snap.error


def test_a_fault_while_compensating_leaves_the_run_waiting_in_compensation_failed_with_why(
    fault_settings: Settings, start_worker
) -> None:
    start_worker(fault_settings, concurrency=1)
    client = Client(fault_settings)
    wf = (
        Workflow("fault_compensate", mode="sequential")
        .step(
            "arm",
            plugin="builtin",
            method="call",
            params={"function": "tests.faults:arm", "kwargs": {"stage": "set_step"}},
        )
        .step(
            "victim",
            plugin="builtin",
            method="echo",
            params={"x": 1},
            compensate={"plugin": "builtin", "method": "echo"},
        )
        .step("boom", plugin="builtin", method="fail", params={"message": "boom"})
        .build()
    )
    try:
        snap = client.submit(wf).wait(60)
    finally:
        client.close()
    assert snap.status == "COMPENSATION_FAILED", snap
    assert "injected fault: set_step" in snap.error
    assert "outside its plugin" in snap.error
