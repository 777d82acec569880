"""Concurrency limits (issue 16 item 3): at most `limit` runs per key are active; `queue` starts
waiting runs in submit order (priority first), `cancel_newest` cancels the newcomer at once,
`cancel_in_progress` cancels (and compensates) the oldest; a slot never leaks. Real Redis, real
Celery worker processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from orchestrator import Client, Workflow
from orchestrator.engine.watchdog import Watchdog
from orchestrator.errors import CanvasflowError, DefinitionError
from orchestrator.model.definition import load_definition
from orchestrator.settings import Settings
from tests.audit_helpers import wait_for
from tests.conftest import make_settings

ACTIVE = {"RUNNING", "PAUSING", "PAUSED", "CANCELLING", "COMPENSATING"}


def wf_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def sleeper(wid: str, seconds: float, *, limit: int = 1, **conc: Any) -> Workflow:
    return (
        Workflow(wid)
        .step("nap", "builtin", "sleep", params={"seconds": seconds})
        .concurrency(limit, **conc)
    )


def status(client: Client, run_id: str) -> str:
    return client.snapshot(run_id).status


def waiting(client: Client, run_id: str) -> Any:
    return client.snapshot(run_id).waiting


# -- the definition field -------------------------------------------------------------------

BASE = {"id": "w", "steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}


@pytest.mark.parametrize(
    ("conc", "path", "message"),
    [
        ({"limit": 0}, "concurrency.limit", "must be an integer from 1 to 100000"),
        ({"limit": "2"}, "concurrency.limit", "must be a whole number"),
        ({"key": "x"}, "concurrency.limit", "required"),
        ({"limit": 2, "strategy": "drop"}, "concurrency.strategy", "must be one of queue"),
        ({"limit": 2, "key": "{{ steps.a.output }}"}, "concurrency.key", "may read only inputs"),
        ({"limit": 2, "key": "{{ inputs."}, "concurrency.key", "unclosed '{{'"),
        ({"limit": 2, "key": " "}, "concurrency.key", "may not be empty"),
        ({"limit": 2, "keys": "x"}, "concurrency.keys", "unknown field"),
        (3, "concurrency", "must be a mapping"),
    ],
)
def test_a_bad_concurrency_field_is_refused_with_its_path(
    conc: Any, path: str, message: str
) -> None:
    with pytest.raises(DefinitionError) as exc:
        load_definition({**BASE, "concurrency": conc})
    assert any(p == path and message in m for p, m in exc.value.problems), exc.value.problems


def test_the_concurrency_field_round_trips_and_the_builder_sets_it() -> None:
    defn = load_definition({**BASE, "concurrency": {"limit": 2, "key": "{{ inputs.customer }}"}})
    assert defn.concurrency is not None
    assert (defn.concurrency.limit, defn.concurrency.strategy) == (2, "queue")
    assert defn.concurrency.render_key({"customer": "acme"}) == "acme"
    assert load_definition(defn.to_dict()) == defn
    built = Workflow("w").step("a", "builtin", "echo").concurrency(3, strategy="cancel_newest")
    assert built.build().concurrency.to_dict() == {"limit": 3, "strategy": "cancel_newest"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "cannot render {{ inputs.customer }}"),
        ({"customer": ""}, "rendered to an empty key for these inputs"),
        ({"customer": "x" * 201}, "rendered to 201 characters (at most 200)"),
    ],
)
def test_a_key_that_renders_to_nothing_usable_is_refused_at_concurrency_key(
    inputs: dict[str, Any], message: str
) -> None:
    defn = load_definition({**BASE, "concurrency": {"limit": 1, "key": "{{ inputs.customer }}"}})
    assert defn.concurrency is not None
    with pytest.raises(DefinitionError) as exc:
        defn.concurrency.render_key(inputs)
    ((path, text),) = exc.value.problems
    assert path == "concurrency.key" and message in text, text


def test_no_key_can_name_another_groups_sets() -> None:
    from orchestrator.keys import Keys

    k = Keys("cf")
    plain = k.conc_group("w", "x")
    names = {k.conc_group("w", key) for key in ("x:active", "x:waiting", "1:x", "", ":", "x")} | {
        k.conc_active(plain),
        k.conc_waiting(plain),
        k.conc_index("w"),
        k.conc_seq,
    }
    assert len(names) == 10


def test_a_key_renders_any_input_value_to_text() -> None:
    defn = load_definition({**BASE, "concurrency": {"limit": 1, "key": "{{ inputs.c }}"}})
    assert defn.concurrency is not None
    assert defn.concurrency.render_key({"c": 7}) == "7"
    assert defn.concurrency.render_key({"c": {"a": [1]}}) == '{"a":[1]}'
    assert defn.concurrency.render_key({"c": "a:b{c}"}) == "a:b{c}"  # any text names a group


def test_a_key_that_cannot_render_refuses_the_submit_before_anything_is_written(
    client: Client,
) -> None:
    wid = wf_id("conc-badkey")
    wf = sleeper(wid, 0.1, key="{{ inputs.customer }}")
    with pytest.raises(DefinitionError) as exc:
        client.submit(wf, inputs={})
    assert exc.value.problems[0][0] == "concurrency.key"
    assert "customer" in exc.value.problems[0][1]
    assert client.list_runs(workflow=wid) == []


# -- strategies -----------------------------------------------------------------------------


@pytest.mark.brokers
def test_queue_runs_one_at_a_time_in_submit_order_and_says_how_many_are_ahead(
    client: Client,
) -> None:
    wid = wf_id("conc-queue")
    wf = sleeper(wid, 0.6)
    runs = [client.submit(wf) for _ in range(4)]
    wait_for(lambda: status(client, runs[0].id) == "RUNNING", 30, "the first run running")
    for i, run in enumerate(runs[1:]):
        assert status(client, run.id) == "PENDING"
        assert waiting(client, run.id) == {
            "key": wid,
            "ahead": i,
            "reason": f"waiting for a slot in {wid}: {i} ahead",
        }
    assert waiting(client, runs[0].id) is None
    (group,) = client.concurrency(wid)
    assert group["limit"] == 1 and group["active"] == [runs[0].id] and group["waiting"] == 3
    snaps = [r.wait(60) for r in runs]
    assert [s.status for s in snaps] == ["COMPLETED"] * 4
    # One at a time, in submit order: each started after the one before had ended.
    for before, after in zip(snaps, snaps[1:], strict=False):
        assert after.started_at is not None and before.finished_at is not None
        assert after.started_at >= before.finished_at
    assert client.concurrency(wid) == []  # nothing left holding or waiting


def test_a_key_makes_one_group_per_value(client: Client) -> None:
    wid = wf_id("conc-keyed")
    wf = sleeper(wid, 1.0, key="{{ inputs.customer }}")
    a1 = client.submit(wf, inputs={"customer": "acme"})
    b1 = client.submit(wf, inputs={"customer": "bolt"})
    a2 = client.submit(wf, inputs={"customer": "acme"})
    wait_for(
        lambda: {status(client, a1.id), status(client, b1.id)} == {"RUNNING"}, 30, "both keys run"
    )
    assert waiting(client, a2.id)["reason"] == "waiting for a slot in acme: 0 ahead"
    groups = {g["key"]: g for g in client.concurrency(wid)}
    assert groups["acme"]["in_use"] == 1 and groups["acme"]["waiting"] == 1
    assert groups["bolt"]["in_use"] == 1 and groups["bolt"]["waiting"] == 0
    assert a2.wait(60).status == "COMPLETED"


@pytest.mark.brokers
def test_cancel_newest_cancels_the_new_run_at_once_with_the_reason(client: Client) -> None:
    wid = wf_id("conc-newest")
    wf = sleeper(wid, 1.0, strategy="cancel_newest")
    first = client.submit(wf)
    second = client.submit(wf)
    snap = client.snapshot(second.id)  # no waiting: it ended within the submit
    assert snap.status == "CANCELLED"
    assert (
        snap.error == f"cancelled: every slot in {wid} is taken (1 active; strategy cancel_newest)"
    )
    assert snap.statuses == {"nap": "CANCELLED"}
    assert first.wait(60).status == "COMPLETED"
    third = client.submit(wf)  # the slot is free again
    assert third.wait(60).status == "COMPLETED"


@pytest.mark.brokers
def test_cancel_in_progress_cancels_and_compensates_the_oldest_then_starts_the_new_one(
    client: Client,
) -> None:
    wid = wf_id("conc-inprogress")
    wf = (
        Workflow(wid, mode="sequential")
        .step(
            "book",
            "builtin",
            "echo",
            params={"x": 1},
            compensate={"plugin": "builtin", "method": "echo", "params": {"undo": 1}},
        )  # fmt: skip
        .step("nap", "builtin", "sleep", params={"seconds": 5})
        .concurrency(1, strategy="cancel_in_progress")
    )
    old = client.submit(wf)
    wait_for(lambda: client.snapshot(old.id).step("nap").status == "RUNNING", 30, "old napping")
    new = client.submit(wf)
    old_snap = old.wait(60)
    assert old_snap.status == "CANCELLED"
    assert old_snap.statuses == {"book": "COMPENSATED", "nap": "CANCELLED"}
    new_snap = new.wait(60)
    assert new_snap.status == "COMPLETED"
    assert new_snap.started_at is not None and old_snap.finished_at is not None
    assert new_snap.started_at >= old_snap.finished_at  # never two active at once
    actions = [
        e for e in client.state.r.xrange(client.keys.events) if e[1][b"run"] == old.id.encode()
    ]
    assert any(b"cancel_in_progress" in f.get(b"data", b"") for _, f in actions)


def test_a_high_priority_run_goes_ahead_of_earlier_normal_and_low_ones(client: Client) -> None:
    wid = wf_id("conc-prio")
    wf = sleeper(wid, 0.8)
    holder = client.submit(wf)
    wait_for(lambda: status(client, holder.id) == "RUNNING", 30, "the holder running")
    low = client.submit(wf, priority="low")
    normal = client.submit(wf)
    high = client.submit(wf, priority="high")
    assert [waiting(client, r.id)["ahead"] for r in (high, normal, low)] == [0, 1, 2]
    snaps = [r.wait(60) for r in (high, normal, low)]
    assert snaps[0].started_at < snaps[1].started_at < snaps[2].started_at  # type: ignore[operator]


def test_a_paused_run_holds_its_slot_and_a_waiting_run_cannot_be_paused(client: Client) -> None:
    wid = wf_id("conc-pause")
    wf = (
        Workflow(wid, mode="sequential")
        .step("nap", "builtin", "sleep", params={"seconds": 1})
        .step("after", "builtin", "echo", params={"x": 1})
        .concurrency(1)
    )
    first = client.submit(wf)
    second = client.submit(wf)
    wait_for(lambda: status(client, first.id) == "RUNNING", 30, "first running")
    with pytest.raises(CanvasflowError, match="waiting for a concurrency slot"):
        client.control.pause(second.id)
    client.control.pause(first.id)
    assert first.wait(30).status == "PAUSED"
    (group,) = client.concurrency(wid)
    assert group["active"] == [first.id]  # paused, it holds its slot
    assert status(client, second.id) == "PENDING" and waiting(client, second.id)["ahead"] == 0
    client.control.resume(first.id)
    assert first.wait(30).status == "COMPLETED"
    assert second.wait(30).status == "COMPLETED"


def test_a_retry_takes_a_slot_again_or_is_refused_while_every_slot_is_taken(
    client: Client,
) -> None:
    wid = wf_id("conc-retry")
    wf = (
        Workflow(wid)
        .step("go", "builtin", "sleep", params={"seconds": "{{ inputs.seconds }}"})
        .concurrency(1)
    )
    failing = client.submit(wf, inputs={"seconds": "not a number"})
    assert failing.wait(30).status == "FAILED"
    holder = client.submit(wf, inputs={"seconds": 2})
    wait_for(lambda: status(client, holder.id) == "RUNNING", 30, "holder running")
    with pytest.raises(CanvasflowError, match="every concurrency slot in .* is taken"):
        client.control.retry(failing.id)
    assert holder.wait(30).status == "COMPLETED"
    client.control.retry(failing.id)
    (group,) = client.concurrency(wid)
    assert group["active"] == [failing.id]
    assert failing.wait(30).status == "FAILED"
    assert client.concurrency(wid) == []


# -- no slot leaks --------------------------------------------------------------------------


@pytest.fixture
def own(redis_url: str) -> Iterator[tuple[Settings, Client]]:
    """A fleet of the test's own (its own key prefix: no session worker takes its steps)."""
    settings = make_settings(redis_url, lease_ttl=2, visibility_timeout=4)
    c = Client(settings)
    yield settings, c
    c.close()


def test_a_run_whose_state_expired_frees_its_slot(
    own: tuple[Settings, Client], start_worker: Any, redis_client: redis.Redis
) -> None:
    settings, client = own
    wid = wf_id("conc-expired")
    wf = sleeper(wid, 0.2)
    lost = client.submit(wf)  # no worker yet: it holds the slot, PENDING
    queued = client.submit(wf)
    assert waiting(client, queued.id)["ahead"] == 0
    # Its state expires (or Redis loses it): nothing will ever end it.
    redis_client.delete(client.keys.run(lost.id), client.keys.steps(lost.id))
    report = Watchdog(client, stall_seconds=60).check_once()
    assert queued.id not in report.candidates  # waiting is not stalled
    (group,) = client.concurrency(wid)
    assert group["active"] == [queued.id]  # the stale slot was reclaimed, the waiter admitted
    start_worker(settings, concurrency=1)
    assert queued.wait(60).status == "COMPLETED"
    # A stale slot is also reclaimed when a new run asks for one.
    third = client.submit(wf)
    redis_client.delete(client.keys.run(third.id))
    fourth = client.submit(wf)
    assert fourth.wait(60).status == "COMPLETED"


def test_a_worker_killed_mid_run_frees_the_slot_through_the_lost_attempt_path(
    own: tuple[Settings, Client], start_worker: Any
) -> None:
    settings, client = own
    wid = wf_id("conc-killed")
    wf = sleeper(wid, 3)
    first_worker = start_worker(settings, concurrency=1)
    holder = client.submit(wf)
    queued = client.submit(wf)
    wait_for(
        lambda: client.snapshot(holder.id).step("nap").status == "RUNNING", 30, "holder napping"
    )
    first_worker.kill()
    start_worker(settings, concurrency=1)  # its restore sweep brings the message back
    held = holder.wait(90)
    assert held.status == "COMPLETED" and held.step("nap").attempts == 2
    after = queued.wait(90)
    assert after.status == "COMPLETED"
    assert after.started_at >= held.finished_at  # type: ignore[operator]
    assert client.concurrency(wid) == []


def test_a_submit_that_died_before_asking_for_a_slot_is_admitted_by_the_watchdog(
    own: tuple[Settings, Client], start_worker: Any
) -> None:
    settings, client = own
    wid = wf_id("conc-halfsubmit")
    wf = sleeper(wid, 0.2)
    admit = client.state.admit
    client.state.admit = lambda *a, **k: (_ for _ in ()).throw(ConnectionError("died"))  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        client.submit(wf)
    client.state.admit = admit  # type: ignore[method-assign]
    (run,) = client.list_runs(workflow=wid)
    assert run.status == "PENDING" and run.waiting is None
    dog = Watchdog(client, stall_seconds=0)
    now = time.time()
    dog.check_once(at=now)  # first sight
    report = dog.check_once(at=now + 1)
    assert report.redispatched == [run.id]
    start_worker(settings, concurrency=1)
    assert client.get_run(run.id).wait(60).status == "COMPLETED"


def test_a_waiting_run_that_is_cancelled_leaves_the_queue_and_the_next_moves_up(
    client: Client,
) -> None:
    wid = wf_id("conc-cancel-waiting")
    holder = client.submit(sleeper(wid, 60))
    first, second = client.submit(sleeper(wid, 0.1)), client.submit(sleeper(wid, 0.1))
    assert waiting(client, second.id)["ahead"] == 1
    client.control.cancel(first.id)
    assert first.wait(30).status == "CANCELLED"
    assert client.snapshot(first.id).statuses == {"nap": "CANCELLED"}
    assert waiting(client, second.id)["ahead"] == 0
    (group,) = client.concurrency(wid)
    assert group["active"] == [holder.id] and group["waiting"] == 1
    client.control.cancel(holder.id)
    assert second.wait(30).status == "COMPLETED"
    assert holder.wait(30).status == "CANCELLED"


def test_compensation_failed_frees_the_slot_and_its_retry_waits_for_one(client: Client) -> None:
    wid = wf_id("conc-compfail")
    broken = (
        Workflow(wid, mode="sequential")
        .step(
            "book",
            "builtin",
            "echo",
            params={"x": 1},
            compensate={"plugin": "builtin", "method": "fail", "params": {"message": "no undo"}},
        )  # fmt: skip
        .step("boom", "builtin", "fail", params={"message": "{{ inputs.why }}"})
        .concurrency(1)
    )
    failed = client.submit(broken, inputs={"why": "boom"})
    assert failed.wait(30).status == "COMPENSATION_FAILED"
    # It waits for an operator, not for a worker: its slot went to the next run.
    holder = client.submit(sleeper(wid, 60))
    wait_for(lambda: status(client, holder.id) == "RUNNING", 30, "the next run running")
    with pytest.raises(CanvasflowError, match="every concurrency slot"):
        client.control.retry_compensation(failed.id)
    client.control.cancel(holder.id)
    assert holder.wait(30).status == "CANCELLED"
    client.control.resolve(failed.id, as_="failed")
    assert client.snapshot(failed.id).status == "FAILED"
    assert client.concurrency(wid) == []


def test_a_limited_workflow_runs_inline() -> None:
    from workers.testing import InlineRunner

    wf = Workflow("inline-limited").step("a", "builtin", "echo", params={"x": 1})
    with InlineRunner() as runner:
        for strategy in ("queue", "cancel_newest", "cancel_in_progress"):
            snap = runner.run(wf.concurrency(1, strategy=strategy))
            assert snap.status == "COMPLETED", strategy
        assert runner.client.concurrency("inline-limited") == []


def test_the_watchdog_never_takes_a_waiting_run_for_stalled(
    own: tuple[Settings, Client], start_worker: Any
) -> None:
    settings, client = own
    wid = wf_id("conc-dog")
    wf = sleeper(wid, 0.2)
    holder = client.submit(wf)  # no worker yet: its message waits in the queue
    waiter = client.submit(wf)
    dog = Watchdog(client, stall_seconds=0)
    now = time.time()
    for i in range(3):
        report = dog.check_once(at=now + i)
        assert waiter.id not in report.candidates and waiter.id not in report.redispatched
    assert waiting(client, waiter.id)["ahead"] == 0  # still waiting: nothing of it was sent
    (group,) = client.concurrency(wid)
    assert group["active"] == [holder.id]
    start_worker(settings, concurrency=2)
    assert holder.wait(60).status == "COMPLETED"
    after = waiter.wait(60)
    assert after.status == "COMPLETED" and after.step("nap").attempts == 1
