"""Drill item 4: a Redis restart while runs are in flight strands none of them and kills no worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import Client, Workflow
from tests.conftest import WorkerProcess, make_settings
from tests.restartable_redis import RestartableRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path).start()
    yield server
    server.stop()


def test_twenty_runs_in_flight_all_complete_across_a_three_second_redis_restart(
    own_redis: RestartableRedis,
) -> None:
    settings = make_settings(own_redis.url, lease_ttl=5, visibility_timeout=60)
    worker = WorkerProcess(settings, f"blip-{uuid.uuid4().hex[:6]}").wait_ready()
    client = Client(settings)
    try:
        wf = (
            Workflow("blip", mode="sequential")
            .step("a", plugin="builtin", method="sleep", params={"seconds": 0.2})
            .step("b", plugin="builtin", method="sleep", params={"seconds": 0.2})
            .step("c", plugin="builtin", method="echo", params={"x": 1})
            .build()
        )
        runs = [client.submit(wf) for _ in range(20)]
        time.sleep(1.0)  # some runs are mid-step, some queued, some done
        own_redis.stop()
        time.sleep(3.0)
        own_redis.start()
        client.close()
        client = Client(settings)
        final = {r.id: client.get_run(r.id).wait(90).status for r in runs}
        assert sorted(final.values()) == ["COMPLETED"] * 20, (final, worker.log()[-4000:])
        assert worker.proc.poll() is None, worker.log()[-4000:]
        # and the worker still takes new work
        assert client.submit(wf).wait(60).status == "COMPLETED"
    finally:
        client.close()
        worker.stop()


def test_a_step_whose_redis_outage_outlasts_the_retry_budget_hands_its_message_back_and_completes_later(
    own_redis: RestartableRedis,
) -> None:
    settings = make_settings(
        own_redis.url, lease_ttl=3, visibility_timeout=5, redis_retry_seconds=2
    )
    worker = WorkerProcess(settings, f"budget-{uuid.uuid4().hex[:6]}", concurrency=1).wait_ready()
    client = Client(settings)
    try:
        wf = (
            Workflow("outlasted", mode="sequential")
            .step("long", plugin="builtin", method="sleep", params={"seconds": 2})
            .step("after", plugin="builtin", method="echo", params={"x": 1})
            .build()
        )
        run = client.submit(wf)
        deadline = time.monotonic() + 30
        while (
            client.snapshot(run.id).step("long").status != "RUNNING" and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        own_redis.stop()
        time.sleep(6.0)  # the step ends meanwhile and retries its finish for 2 s only
        own_redis.start()
        client.close()
        client = Client(settings)
        snap = client.get_run(run.id).wait(90)
        assert snap.status == "COMPLETED", worker.log()[-4000:]
        assert snap.statuses == {"long": "COMPLETED", "after": "COMPLETED"}
        assert "handing its message back" in worker.log()
        assert worker.proc.poll() is None
    finally:
        client.close()
        worker.stop()


def test_an_idle_worker_survives_repeated_redis_restarts_and_takes_new_work(
    own_redis: RestartableRedis,
) -> None:
    settings = make_settings(own_redis.url, lease_ttl=3)
    worker = WorkerProcess(settings, f"idle-{uuid.uuid4().hex[:6]}").wait_ready()
    try:
        for pause in (0.5, 3.0, 0.1):
            own_redis.stop()
            time.sleep(pause)
            own_redis.start()
            time.sleep(1.0)
            assert worker.proc.poll() is None, worker.log()[-4000:]
        client = Client(settings)
        try:
            wf = (
                Workflow("after_restarts")
                .step("a", plugin="builtin", method="echo", params={"x": 1})
                .build()
            )
            assert client.submit(wf).wait(60).status == "COMPLETED"
        finally:
            client.close()
        assert "Unrecoverable error" not in worker.log()
    finally:
        worker.stop()


def test_a_step_whose_broker_is_away_past_the_budget_still_continues_its_canvas_and_runs_once(
    own_redis: RestartableRedis, redis_url: str
) -> None:
    # The broker is its own Redis here: run state stays reachable, only publishing fails.
    settings = make_settings(
        redis_url,
        broker_url=own_redis.url,
        lease_ttl=3,
        visibility_timeout=5,
        redis_retry_seconds=2,
    )
    worker = WorkerProcess(settings, f"pub-{uuid.uuid4().hex[:6]}", concurrency=1).wait_ready()
    client = Client(settings)
    try:
        wf = (
            Workflow("unpublished", mode="sequential")
            .step("first", plugin="builtin", method="sleep", params={"seconds": 1.5})
            .step("second", plugin="builtin", method="echo", params={"x": 1})
            .build()
        )
        run = client.submit(wf)
        deadline = time.monotonic() + 30
        while (
            client.snapshot(run.id).step("first").status != "RUNNING"
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        own_redis.stop()
        deadline = time.monotonic() + 30
        while (
            client.snapshot(run.id).step("first").status != "COMPLETED"
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        time.sleep(4.0)  # the step recorded its end; publishing 'second' cannot succeed now
        assert client.snapshot(run.id).step("second").status == "PENDING"
        own_redis.start()
        snap = client.get_run(run.id).wait(90)
        assert snap.status == "COMPLETED", worker.log()[-4000:]
        assert snap.statuses == {"first": "COMPLETED", "second": "COMPLETED"}
        assert snap.step("first").attempts == 1  # sent on, not run again
        assert worker.proc.poll() is None
    finally:
        client.close()
        worker.stop()
