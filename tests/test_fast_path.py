"""The step runtime's fast path (workers/step.py): a step of an untouched run runs first and
records its start and end in one round trip; anything an operator or a failure did to the run
sends its steps back to asking Redis first. Real Redis, real worker processes."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from orchestrator import Client, Workflow
from orchestrator.cli.embedded import EmbeddedRedis
from orchestrator.engine.runstate import RunState
from orchestrator.keys import Keys
from orchestrator.records import RunRecord
from tests.conftest import TEST_CALL_ALLOW, WorkerProcess, make_settings
from tests.web_helpers import wait_for

pytestmark = pytest.mark.integration


class ScriptCalls:
    """Counts calls of the run state's Lua scripts on a Redis server while the block runs.

    MONITOR, not INFO commandstats: the server's total also counts the broker's own scripts
    (kombu's periodic binding sweep), which land in the window now and then. The block's end
    is marked with an ECHO, read back from the monitor stream, so no command is missed."""

    def __init__(self, r: redis.Redis, state: RunState) -> None:
        self.r = r
        self.shas = {v.sha for v in vars(state).values() if isinstance(v, Script)}
        self.calls = 0

    def __enter__(self) -> ScriptCalls:
        self.monitor = self.r.monitor()
        self.monitor.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        marker = f"cf-count-end-{uuid.uuid4().hex}"
        self.r.echo(marker)
        try:
            while True:
                args = self.monitor.next_command()["command"].split()
                if args[:1] == ["ECHO"] and marker in args[-1]:
                    return
                # redis-py's Script always calls EVALSHA (after SCRIPT LOAD if Redis lost it)
                if args[0].upper() == "EVALSHA" and args[1].strip('"') in self.shas:
                    self.calls += 1
        finally:
            self.monitor.__exit__(None, None, None)


def watchers(r: redis.Redis, keys: Keys) -> int:
    """How many worker processes' control watches are subscribed (workers/watch.py)."""
    # On a cluster each node counts its own subscribers, and redis-py asks a random node.
    where = {"target_nodes": RedisCluster.ALL_NODES} if isinstance(r, RedisCluster) else {}
    return int(dict(r.pubsub_numsub(keys.control_channel, **where))[keys.control_channel.encode()])


def echo_chain(name: str, n: int, **step: object) -> Workflow:
    wf = Workflow(name, mode="sequential")
    for i in range(n):
        wf = wf.step(f"s{i}", "builtin", "echo", params={"i": i}, **step)
    return wf


def events_of(client: Client, run_id: str) -> list[dict]:
    out = []
    for _, f in client.redis.xrange(client.keys.events):
        f = {k.decode(): v.decode() for k, v in f.items()}
        if f["run"] == run_id:
            f["data"] = json.loads(f["data"] or "{}")
            out.append(f)
    return out


@pytest.fixture
def private_redis():
    server = EmbeddedRedis().start()
    yield server.url
    server.stop()


@pytest.mark.parametrize("fast", [True, False], ids=["fast_steps", "fast_steps_off"])
def test_a_step_of_an_untouched_run_costs_one_script_call_and_asking_first_costs_two(
    private_redis, fast
):
    settings = make_settings(private_redis, fast_steps=fast)
    worker = WorkerProcess(settings, f"fp-{uuid.uuid4().hex[:6]}", concurrency=1).wait_ready()
    client = Client(settings)
    try:
        warm = client.submit(echo_chain("warm", 3))
        assert warm.wait(30).status == "COMPLETED"
        # with fast_steps off no process watches (nothing would ask it)
        wait_for(
            lambda: watchers(client.redis, client.keys) == int(fast),
            what="the pool process's control watch",
        )
        with ScriptCalls(client.redis, client.state) as scripts:
            run = client.submit(echo_chain("counted", 10))
            snap = run.wait(30)
        assert snap.status == "COMPLETED"
        assert [s.output for s in snap.steps] == [{"i": i} for i in range(10)]
        assert all(s.attempts == 1 and s.started_at <= s.finished_at for s in snap.steps)
        # ten steps, plus the run's final transition (settled by the last step) and the
        # snapshot wait() returns (RunState.read is one script)
        assert scripts.calls == (10 if fast else 20) + 2
        types = [e["type"] for e in events_of(client, run.id) if e["step"] == "s4"]
        assert types == ["step_started", "step_completed"]
    finally:
        client.close()
        worker.stop()


@pytest.mark.brokers
def test_a_long_fast_path_step_is_shown_running_and_leased_while_it_runs(client: Client) -> None:
    wf = Workflow("long_fast").step("nap", "builtin", "sleep", params={"seconds": 1.5})
    run = client.submit(wf)
    wait_for(lambda: client.snapshot(run.id).statuses["nap"] == "RUNNING", what="nap RUNNING")
    assert client.redis.get(client.keys.lease(run.id, "nap")) is not None
    snap = run.wait(30)
    assert snap.status == "COMPLETED" and snap.step("nap").attempts == 1
    started = [e for e in events_of(client, run.id) if e["type"] == "step_started"]
    assert len(started) == 1 and started[0]["data"]["attempt"] == 1
    assert float(started[0]["ts"]) <= snap.step("nap").started_at + 0.001


def blocked_then_fanout(
    name: str, redis_url: str, release: str, trace: str, queue: str = "default"
) -> Workflow:
    wf = Workflow(name, mode="parallel").step(
        "gate",
        "builtin",
        "call",
        queue="io",
        params={
            "function": "tests.helpers:wait_for_key",
            "kwargs": {"redis_url": redis_url, "key": release},
        },
    )
    for i in range(6):
        wf = wf.step(
            f"f{i}",
            "builtin",
            "call",
            depends_on=["gate"],
            queue=queue,
            params={
                "function": "tests.helpers:record_call",
                "kwargs": {"redis_url": redis_url, "key": trace, "tag": f"f{i}"},
            },
        )
    return wf


@pytest.mark.brokers
def test_steps_queued_after_a_cancel_never_run_their_plugins(
    client: Client, redis_url: str
) -> None:
    release, trace = f"release:{uuid.uuid4().hex}", f"trace:{uuid.uuid4().hex}"
    run = client.submit(blocked_then_fanout("cancel_fanout", redis_url, release, trace))
    wait_for(lambda: client.snapshot(run.id).statuses["gate"] == "RUNNING", what="the gate running")
    client.control.cancel(run.id, actor="test", terminate=False)
    # The plugins' side channel is the plain test Redis (client.redis may be a cluster).
    side = redis.Redis.from_url(redis_url)
    side.set(release, "1")  # the gate finishes; its chord sends the six steps
    snap = run.wait(30)
    assert snap.status == "CANCELLED"
    assert snap.step("gate").status == "COMPLETED"
    assert {snap.step(f"f{i}").status for i in range(6)} == {"CANCELLED"}
    time.sleep(0.5)  # give any wrongly started plugin the time to leave its trace
    assert side.lrange(trace, 0, -1) == []


@pytest.mark.brokers
def test_a_worker_process_that_starts_after_a_cancel_still_knows_of_it(
    client: Client, redis_url: str, start_worker
) -> None:
    release, trace = f"release:{uuid.uuid4().hex}", f"trace:{uuid.uuid4().hex}"
    run = client.submit(
        blocked_then_fanout("cancel_late_worker", redis_url, release, trace, queue="late")
    )
    wait_for(lambda: client.snapshot(run.id).statuses["gate"] == "RUNNING", what="the gate running")
    client.control.cancel(run.id, actor="test", terminate=False)
    # A worker for the fan-out's queue that never heard the cancel on the channel: its control
    # watch must learn it from the controlled set when it subscribes.
    subscribed = watchers(client.redis, client.keys)
    start_worker(client.settings, queues="late", concurrency=1)
    warm = client.submit(echo_chain("warm_late", 2, queue="late"))
    assert warm.wait(30).status == "COMPLETED"
    wait_for(
        lambda: watchers(client.redis, client.keys) > subscribed,
        what="the new worker's control watch",
    )
    side = redis.Redis.from_url(redis_url)  # the plugins' side channel: the plain test Redis
    side.set(release, "1")
    snap = run.wait(30)
    assert snap.status == "CANCELLED"
    time.sleep(0.5)
    assert side.lrange(trace, 0, -1) == []


def test_a_step_cancelled_before_redis_knew_it_ran_is_terminated(
    redis_url: str, start_worker
) -> None:
    # Late begin effectively off: the step stays on the fast path for its whole run.
    settings = make_settings(redis_url, fast_step_begin_ms=600_000, call_allow=TEST_CALL_ALLOW)
    worker = start_worker(settings, concurrency=1)
    client = Client(settings)
    trace = f"trace:{uuid.uuid4().hex}"
    try:
        assert client.submit(echo_chain("warm_term", 2)).wait(30).status == "COMPLETED"
        wait_for(
            lambda: watchers(client.redis, client.keys) == 1,
            what="the pool process's control watch",
        )
        wf = Workflow("term_fresh").step(
            "nap",
            "builtin",
            "call",
            params={
                "function": "tests.helpers:record_then_sleep",
                "kwargs": {"redis_url": redis_url, "key": trace, "tag": "nap", "seconds": 60},
            },
        )
        run = client.submit(wf)
        wait_for(lambda: client.redis.lrange(trace, 0, -1) == [b"nap"], what="the step running")
        assert (
            client.snapshot(run.id).statuses["nap"] == "PENDING"
        )  # running, but Redis was not told
        client.control.cancel(run.id, actor="test", terminate=True)
        snap = run.wait(30)
        assert snap.status == "CANCELLED" and snap.step("nap").status == "CANCELLED"
        wait_for(
            lambda: "Terminating" in worker.log(), what="the worker terminating the step's task"
        )
        assert client.redis.lrange(trace, 0, -1) == [b"nap"]  # it never reached its end
        # the pool process was replaced and the worker still runs steps
        assert client.submit(echo_chain("after_term", 2)).wait(30).status == "COMPLETED"
    finally:
        client.close()


def test_run_once_records_nothing_for_a_run_that_moved_on(redis_client: redis.Redis) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    state = RunState(redis_client, keys, state_ttl=60)
    state.create(RunRecord.from_hash("r1", {"workflow": "w"}), ["a", "b"])
    record = {"step": "a", "status": "COMPLETED", "started_at": 1.0, "finished_at": 2.0}
    common = {
        "status": "COMPLETED",
        "started": 1.0,
        "attempt": record,
        "worker": "w1",
        "task_id": "t1",
        "output": '{"x":1}',
    }
    assert state.run_once("r1", "a", 2, **common)[0] == "stale"  # another epoch
    ok = state.run_once("r1", "a", 1, **common)
    assert ok[:3] == ("ok", "1", "RUNNING")
    # another delivery of the step (its own start time) changes nothing...
    assert state.run_once("r1", "a", 1, **{**common, "started": 1.5})[0] == "settled"
    # ...and the very same write again (retried after its reply was lost) is that attempt: 'ok', no-op
    assert state.run_once("r1", "a", 1, **common)[:2] == ("ok", "1")
    run, steps, attempts = state.read("r1")
    assert run.status == "RUNNING" and run.settled == 1
    assert steps["a"].status == "COMPLETED" and steps["a"].output_json == '{"x":1}'
    assert attempts == [{"attempt": 1, **record}]
    types = [f[b"type"].decode() for _, f in redis_client.xrange(keys.events)]
    assert types == ["run_created", "run_status_changed", "step_started", "step_completed"]
    failed = state.run_once("r1", "b", 1, **{**common, "status": "FAILED", "error": "boom"})
    assert failed[3] == "failed"  # a critical failure halts the run...
    assert (
        redis_client.zscore(keys.controlled, "r1") is not None
    )  # ...and marks it for every worker
    redis_client.delete(*redis_client.keys(f"{keys.prefix}:*"))
