"""Operator control of a mapped step mid-way, on real Redis and real Celery workers: pause lets
running items finish and starts no new one, resume runs the items not done; cancel stops the
items and compensates the completed ones newest first (one compensation each); a retry from the
mapped step re-runs only the items that did not complete."""

from __future__ import annotations

import json
import time

import pytest

from orchestrator import Client, Workflow
from orchestrator.keys import Keys
from tests.test_map_engine import events, items

pytestmark = pytest.mark.integration


def slow_map(n: int, seconds: float = 0.4, **fields: object) -> Workflow:
    return (
        Workflow("mapctl")
        .step("list", "builtin", "echo", params={"xs": list(range(n))})
        .step(
            "each",
            "builtin",
            "sleep",
            depends_on=["list"],
            map={"over": "{{ steps.list.output.xs }}", "max_parallel": 1},
            params={"seconds": seconds},
            **fields,
        )
    )


def wait_for(what, timeout: float = 30, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def count(client: Client, run_id: str, status: str) -> int:
    return sum(1 for v in items(client, run_id, "each").values() if v.get("status") == status)


def test_pause_finishes_running_items_and_resume_runs_the_rest(client: Client) -> None:
    run = client.submit(slow_map(6))
    wait_for(lambda: count(client, run.id, "COMPLETED") >= 1)
    client.control.pause(run.id)
    snap = run.wait(30)
    assert snap.status == "PAUSED", snap
    got = items(client, run.id, "each")
    statuses = [got[f"each[{i}]"]["status"] for i in range(6)]
    assert "RUNNING" not in statuses
    done = statuses.count("COMPLETED")
    assert 1 <= done < 6 and statuses[done:] == ["PENDING"] * (6 - done), statuses
    assert snap.step("each").status == "PENDING"
    client.control.resume(run.id)
    snap = run.wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("each").output == [{"slept": 0.4}] * 6
    got = items(client, run.id, "each")
    # none ran twice: each item has one attempt, and one step_started each
    assert [got[f"each[{i}]"]["attempts"] for i in range(6)] == ["1"] * 6
    started = [e["step"] for e in events(client, run.id) if e["type"] == "step_started"]
    assert sorted(s for s in started if s.startswith("each[")) == sorted(
        f"each[{i}]" for i in range(6)
    )


def test_cancel_stops_items_and_compensates_completed_ones_newest_first(client: Client) -> None:
    wf = slow_map(
        8,
        0.3,
        compensate={
            "plugin": "builtin",
            "method": "echo",
            "params": {
                "undo": "{{ item }}",
                "i": "{{ map.index }}",
                "out": "{{ steps.each.output }}",
            },
        },
    )
    run = client.submit(wf)
    wait_for(lambda: count(client, run.id, "COMPLETED") >= 3)
    client.control.cancel(run.id)
    snap = run.wait(60)
    assert snap.status == "CANCELLED", snap
    got = items(client, run.id, "each")
    statuses = {i: got[f"each[{i}]"]["status"] for i in range(8)}
    compensated = [i for i, st in statuses.items() if st == "COMPENSATED"]
    assert len(compensated) >= 3
    assert set(statuses.values()) <= {"COMPENSATED", "CANCELLED"}, statuses
    assert compensated == list(range(len(compensated)))  # one lane: the first ones completed
    evs = events(client, run.id)
    done_order = [
        e["step"] for e in evs if e["type"] == "step_completed" and e["step"].startswith("each[")
    ]
    comp = [e for e in evs if e["type"] == "step_compensated"]
    assert [e["step"] for e in comp] == list(reversed(done_order))  # newest first, one each
    # the items' compensations ran as one self-replacing link (their ids stored once), not as
    # one chain link each
    stored = [k for k in client.state.r.hkeys(Keys(client.settings.key_prefix).map_data(run.id))
              if k.startswith(b"@c")]  # fmt: skip
    assert len(stored) == len(compensated)
    for i in compensated:
        out = json.loads(got[f"each[{i}]"]["compensation_output"])
        assert out == {"undo": i, "i": i, "out": {"slept": 0.3}}


def test_retry_from_the_mapped_step_reruns_only_items_that_did_not_complete(client: Client) -> None:
    wf = (
        Workflow("mapretry")
        .step("list", "builtin", "echo", params={"xs": [0, 0, 1, 0]})
        .step(
            "each",
            "builtin",
            "fail",
            depends_on=["list"],
            map={"over": "{{ steps.list.output.xs }}"},
            params={"message": "bad item", "times": "{{ item }}"},
        )
    )
    run = client.submit(wf)
    snap = run.wait(60)
    assert snap.status == "FAILED"
    assert snap.step("each").status == "FAILED"
    assert "item each[2] failed: bad item" in snap.step("each").error
    client.control.retry(run.id, from_step="each")
    snap = run.wait(60)
    assert snap.status == "COMPLETED", snap
    got = items(client, run.id, "each")
    # the items that completed kept their first attempt; the failed one ran again
    assert [got[f"each[{i}]"]["attempts"] for i in range(4)] == ["1", "1", "2", "1"]
    assert snap.step("each").output == [
        {"attempt": 1},
        {"attempt": 1},
        {"attempt": 2},
        {"attempt": 1},
    ]


def test_a_clone_of_a_run_with_a_mapped_step_runs_it_again(client: Client) -> None:
    first = client.submit(slow_map(3, 0.01)).wait(30)
    assert first.status == "COMPLETED"
    again = client.clone(first.id).wait(30)
    assert again.status == "COMPLETED" and again.id != first.id
    assert again.step("each").output == [{"slept": 0.01}] * 3
    assert len(items(client, again.id, "each")) == 3


def test_retry_from_upstream_of_the_mapped_step_runs_every_item_again(client: Client) -> None:
    wf = (
        Workflow("mapup")
        .step("list", "builtin", "echo", params={"xs": [0, 0, 1]})
        .step(
            "each",
            "builtin",
            "fail",
            depends_on=["list"],
            map={"over": "{{ steps.list.output.xs }}"},
            params={"message": "bad", "times": "{{ item }}"},
        )
    )
    run = client.submit(wf)
    assert run.wait(60).status == "FAILED"
    client.control.retry(run.id, from_step="list")
    snap = run.wait(60)
    assert snap.status == "COMPLETED", snap
    got = items(client, run.id, "each")
    assert [got[f"each[{i}]"]["attempts"] for i in range(3)] == ["2", "2", "2"]


def test_a_when_that_reads_the_item_skips_single_items(client: Client) -> None:
    wf = (
        Workflow("mapwhen")
        .step("list", "builtin", "echo", params={"xs": [1, 2, 3, 4]})
        .step(
            "each",
            "builtin",
            "echo",
            depends_on=["list"],
            map={"over": "{{ steps.list.output.xs }}", "as": "x"},
            when="x % 2 == 0",
            params={"x": "{{ x }}"},
        )
    )
    snap = client.submit(wf).wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("each").output == [None, {"x": 2}, None, {"x": 4}]
    got = items(client, snap.id, "each")
    assert [got[f"each[{i}]"]["status"] for i in range(4)] == ["SKIPPED", "COMPLETED"] * 2
