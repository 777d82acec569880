"""Drill item 12a: the attempt a SIGKILLed worker was running is closed as LOST in the audit store
(an ``attempt_lost`` event) when another attempt takes the step over; it never stays RUNNING."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import select

from orchestrator import Client, Workflow
from orchestrator.audit import AuditStore
from orchestrator.audit.models import step_attempts
from orchestrator.audit.recorder import Recorder
from orchestrator.engine.runstate import RunState
from orchestrator.keys import Keys
from orchestrator.records import RunRecord
from tests.audit_helpers import wait_for
from tests.conftest import make_settings

pytest_plugins = ("tests.audit_fixtures",)


def events_of(r: redis.Redis, keys: Keys, run_id: str) -> list[dict[str, str]]:
    out = []
    for _, f in r.xrange(keys.events):
        e = {k.decode(): v.decode() for k, v in f.items()}
        if e["run"] == run_id:
            out.append(e)
    return out


def test_a_new_attempt_of_a_step_whose_lease_lapsed_reports_the_old_one_lost_once(
    redis_client: redis.Redis,
) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    state = RunState(redis_client, keys, state_ttl=60)
    state.create(RunRecord.from_hash("r1", {"workflow": "w"}), ["a"])
    go = dict(intent="run", lease_ttl=30, worker="w1", task_id="t1")
    assert state.begin_step("r1", "a", 1, owner="first", **go)[:2] == ("go", "1")
    # the same owner again (its reply lost, or its message handed back to it): same attempt
    assert state.begin_step("r1", "a", 1, owner="first", **go)[:2] == ("go", "1")
    assert state.begin_step("r1", "a", 1, owner="second", **go)[0] == "leased"
    redis_client.delete(keys.lease("r1", "a"))  # the first worker died: its lease lapsed
    assert state.begin_step(
        "r1", "a", 1, owner="second", **{**go, "worker": "w2", "task_id": "t1"}
    )[:2] == ("go", "2")
    lost = [e for e in events_of(redis_client, keys, "r1") if e["type"] == "attempt_lost"]
    assert len(lost) == 1
    data = json.loads(lost[0]["data"])
    assert (lost[0]["step"], data["attempt"], data["worker"]) == ("a", 1, "w1")
    assert "lease" in data["reason"]
    # finishing twice (the reply of the first finish lost) is one transition
    finish = dict(status="COMPLETED", owner="second", attempt={"attempt": 2}, output='{"ok":1}')
    assert state.finish_step("r1", "a", 1, **finish) == "ok"
    assert state.finish_step("r1", "a", 1, **finish) == "ok"
    types = [e["type"] for e in events_of(redis_client, keys, "r1")]
    assert types.count("step_completed") == 1 and types.count("attempt_lost") == 1
    run, _, attempts = state.read("r1")
    assert run.settled == 1 and len(attempts) == 1
    assert state.finish_step("r1", "a", 1, **{**finish, "owner": "first"}) == "lost"
    redis_client.delete(*redis_client.keys(f"{keys.prefix}:*"))


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for r in made:
        try:
            r.r.xgroup_destroy(r.stream, r.group)
        except (redis.ResponseError, AttributeError):
            pass


@pytest.mark.integration
@pytest.mark.brokers
def test_the_attempt_of_a_sigkilled_worker_is_closed_lost_in_the_audit_store(
    redis_url: str, broker_url: str, store: AuditStore, start_worker, recorders: list[Recorder]
) -> None:
    settings = make_settings(redis_url, lease_ttl=2, visibility_timeout=4, broker_url=broker_url)
    first = start_worker(settings, concurrency=1)
    client = Client(settings)
    try:
        run = client.submit(
            Workflow("killed_mid_step").step("s", "builtin", "sleep", params={"seconds": 3})
        )
        wait_for(
            lambda: client.snapshot(run.id).step("s").status == "RUNNING", 30, "the step running"
        )
        first.kill()
        start_worker(settings, concurrency=1)  # its restore sweep brings the message back
        snap = run.wait(90)
        assert snap.status == "COMPLETED"
        assert snap.step("s").attempts == 2

        rec = Recorder(
            store,
            client.redis,
            client.keys,
            group=f"g-{uuid.uuid4().hex[:8]}",
            start_id="0",
            block=0.1,
        )
        rec.setup()
        recorders.append(rec)
        rec.drain()
        a = step_attempts.c
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(a.attempt, a.status, a.error, a.worker, a.finished_at)
                .where(a.run_id == run.id)
                .order_by(a.attempt)
            ).all()
        assert [(r.attempt, r.status) for r in rows] == [(1, "LOST"), (2, "COMPLETED")]
        assert "lease" in rows[0].error and rows[0].finished_at is not None
        assert rows[0].worker == first.hostname
    finally:
        client.close()
