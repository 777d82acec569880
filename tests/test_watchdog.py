"""The watchdog re-dispatches stalled runs: real Redis, real worker processes, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from orchestrator import Client, Workflow
from orchestrator.engine.watchdog import Watchdog
from orchestrator.fleet.inspect import broker_prefix
from orchestrator.settings import Settings
from tests.conftest import ROOT, TEST_CALL_ALLOW, make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(redis_url: str) -> Settings:
    # Own key prefix = own broker queues: the session worker never takes these steps.
    return make_settings(redis_url, lease_ttl=2, visibility_timeout=300, call_allow=TEST_CALL_ALLOW)


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    c = Client(settings)
    yield c
    c.close()


@pytest.fixture
def watchdogs(settings: Settings) -> Iterator[object]:
    """Start `canvasflow watchdog` processes as an operator would; all stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **settings.as_env(), "PYTHONPATH": str(ROOT)}
        p = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "watchdog", *args],
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def lose_broker_messages(r: redis.Redis, settings: Settings) -> None:
    """What a Redis restart without persistence (or a purge) does to queued and unacked messages."""
    keys = list(r.scan_iter(match=broker_prefix(settings.key_prefix) + "*"))
    messages = [
        k
        for k in keys
        if not k.decode().endswith(("_kombu.binding.default", "_kombu.binding.io"))
        and "binding" not in k.decode()
        and r.type(k) in (b"list", b"hash", b"zset")
    ]
    if messages:
        r.delete(*messages)


def redispatch_events(r: redis.Redis, settings: Settings, run_id: str) -> list[dict[bytes, bytes]]:
    stream = f"{settings.key_prefix}:events"
    return [
        f
        for _, f in r.xrange(stream)
        if f[b"run"] == run_id.encode() and f[b"type"] == b"run_redispatched"
    ]


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def two_steps(name: str) -> Workflow:
    return (
        Workflow(name)
        .step("long", "builtin", "sleep", params={"seconds": 2})
        .step("after", "builtin", "echo", params={"x": 1}, depends_on=["long"])
    )


def test_run_whose_worker_died_with_its_message_is_redispatched_by_the_watchdog_and_completes(
    settings: Settings, client: Client, start_worker, watchdogs
) -> None:
    doomed = start_worker(settings, "doomed")
    run = client.submit(two_steps("stall_killed"))
    wait_until(
        lambda: client.snapshot(run.id).step("long").status == "RUNNING", what="the step to run"
    )
    doomed.kill()
    lose_broker_messages(client.redis, settings)  # the unacked message will never come back now
    rescuer = start_worker(settings, "rescuer")
    watchdogs("--stall-seconds", "3", "--interval", "0.3")
    snap = run.wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("long").attempts == 2
    assert snap.step("long").worker == rescuer.hostname
    assert snap.step("after").status == "COMPLETED"
    events = redispatch_events(client.redis, settings, run.id)
    assert len(events) == 1
    assert b"no lease, no queued message" in events[0][b"data"]
    assert (
        client.redis.zscore(client.keys.live, run.id) is None
    )  # a finished run leaves the live set


def test_two_watchdogs_at_once_redispatch_a_stalled_run_once(
    settings: Settings, client: Client, start_worker, watchdogs
) -> None:
    run = client.submit(two_steps("stall_twice"))
    lose_broker_messages(client.redis, settings)  # submitted, then its first message vanished
    watchdogs("--stall-seconds", "1", "--interval", "0.1")
    watchdogs("--stall-seconds", "1", "--interval", "0.1")
    wait_until(lambda: redispatch_events(client.redis, settings, run.id), what="a re-dispatch")
    start_worker(settings, "late")
    snap = run.wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("long").attempts == 1
    assert len(redispatch_events(client.redis, settings, run.id)) == 1


def test_of_two_watchdogs_judging_the_same_stall_only_the_first_claim_redispatches(
    settings: Settings, client: Client
) -> None:
    run = client.submit(two_steps("stall_claim"))
    lose_broker_messages(client.redis, settings)
    status, seq = (v.decode() for v in client.redis.hmget(client.keys.run(run.id), "status", "seq"))
    first, second = (
        Watchdog(client, stall_seconds=1, name="a"),
        Watchdog(client, stall_seconds=1, name="b"),
    )
    assert first.redispatch(run.id, status, seq, 5.0) is True
    assert second.redispatch(run.id, status, seq, 5.0) is False
    assert [
        e[b"data"].count(b'"watchdog":"a"')
        for e in redispatch_events(client.redis, settings, run.id)
    ] == [1]
    assert client.redis.hget(client.keys.run(run.id), "epoch") == b"2"


def test_run_with_a_queued_message_or_a_live_lease_is_not_stalled(
    settings: Settings, client: Client
) -> None:
    run = client.submit(two_steps("stall_queued"))  # no worker: the message waits in its queue
    dog = Watchdog(client, stall_seconds=5)
    t = time.time()
    assert dog.check_once(at=t).redispatched == []
    later = dog.check_once(at=t + 60)
    assert later.candidates == [run.id]  # no event for a minute ...
    assert later.redispatched == []  # ... but its message is still queued
    # A step whose worker holds its lease is progress too, whatever the queue says.
    lose_broker_messages(client.redis, settings)
    client.redis.hset(client.keys.steps(run.id), "long|status", "RUNNING")
    client.redis.set(client.keys.lease(run.id, "long"), "someone", ex=30)
    assert dog.check_once(at=t + 120).redispatched == []
    assert redispatch_events(client.redis, settings, run.id) == []


def test_runs_are_in_the_live_set_until_they_end_and_again_when_retried(
    settings: Settings, client: Client, start_worker
) -> None:
    first = start_worker(settings, "plain")
    run = client.submit(
        Workflow("live_set").step("a", "builtin", "fail", params={"message": "no", "times": 1})
    )
    assert client.redis.zscore(client.keys.live, run.id) is not None
    assert run.wait(30).status == "FAILED"
    assert client.redis.zscore(client.keys.live, run.id) is None
    first.stop()  # so that the retried run is still live when we look
    client.control.retry(run.id)
    assert client.redis.zscore(client.keys.live, run.id) is not None
    start_worker(settings, "second")
    assert run.wait(30).status == "COMPLETED"
    assert client.redis.zscore(client.keys.live, run.id) is None


def test_live_runs_from_before_the_live_set_are_added_to_it_when_a_watchdog_starts(
    settings: Settings, client: Client
) -> None:
    run = client.submit(two_steps("stall_seed"))  # no worker: stays PENDING
    client.redis.zrem(client.keys.live, run.id)
    assert Watchdog(client).seed_live() == 1
    assert client.redis.zscore(client.keys.live, run.id) is not None
    assert Watchdog(client).seed_live() == 0


def test_a_run_that_cannot_be_redispatched_does_not_keep_the_others_stalled(
    settings: Settings, client: Client, start_worker
) -> None:
    broken, fine = client.submit(two_steps("stall_broken")), client.submit(two_steps("stall_fine"))
    lose_broker_messages(client.redis, settings)
    client.redis.hset(client.keys.run(broken.id), "definition", "{not json")
    dog, t = Watchdog(client, stall_seconds=5), time.time()
    dog.check_once(at=t)
    report = dog.check_once(at=t + 60)
    assert report.failed == [broken.id] and report.redispatched == [fine.id]
    start_worker(settings, "after_broken")
    assert fine.wait(60).status == "COMPLETED"


def test_watchdog_setting_must_be_positive() -> None:
    from orchestrator.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="CANVASFLOW_WATCHDOG_STALL_SECONDS"):
        Settings.from_env({"CANVASFLOW_WATCHDOG_STALL_SECONDS": "0"})


def test_on_a_redis_cluster_the_watchdog_sees_a_message_queued_in_the_separate_broker(
    redis_url: str, redis_cluster: Any
) -> None:
    # The state on a Redis Cluster, Celery's broker on the plain test Redis: the queue the
    # watchdog must read is not in the state Redis.
    settings = make_settings(
        redis_cluster.url,
        key_prefix=f"{{t{uuid.uuid4().hex[:8]}}}",
        redis_cluster=True,
        broker_url=redis_url,
        result_backend=redis_url,
        lease_ttl=2,
        visibility_timeout=300,
    )
    client = Client(settings)
    try:
        run = client.submit(two_steps("stall_queued_cluster"))  # no worker: it stays queued
        dog = Watchdog(client, stall_seconds=5)
        t = time.time()
        assert dog.check_once(at=t).redispatched == []
        later = dog.check_once(at=t + 60)
        assert later.candidates == [run.id]  # no event for a minute ...
        assert later.redispatched == []  # ... but its message is still queued, in the broker
    finally:
        client.close()
        plain = redis.Redis.from_url(redis_url)
        for key in plain.scan_iter(f"{broker_prefix(settings.key_prefix)}*", count=1000):
            plain.delete(key)
