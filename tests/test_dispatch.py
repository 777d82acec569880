"""Specs for the dispatcher: what is sent, for each case, read back from the broker's queues.

No worker: a real Redis holds the run state and the broker's queues under a prefix of this test
alone, so every message the dispatcher sends stays queued and is decoded here as a worker would
receive it (task name, arguments, the chain still to run, priority).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from orchestrator.engine import compiler
from orchestrator.engine.celery_app import create_celery
from orchestrator.engine.compiler import COMPENSATE_TASK, COMPENSATED_TASK, SETTLE_TASK, STEP_TASK
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.runstate import RunState, dumps
from orchestrator.engine.states import RunStatus
from orchestrator.errors import CanvasflowError
from orchestrator.fleet.inspect import queue_keys
from orchestrator.keys import Keys
from orchestrator.model.definition import Definition, Workflow, dump_definition
from orchestrator.records import RunRecord, StepRecord
from orchestrator.settings import Settings
from tests.conftest import make_settings


@dataclass(frozen=True)
class Message:
    """One queued task message as a worker would receive it."""

    task: str
    args: list[Any]
    chain: list[str]  # the tasks still to run after this one, in order
    chain_args: list[list[Any]]  # and their arguments
    priority: int

    @property
    def header(self) -> dict[str, Any]:
        """The run header: in the outcomes for step tasks, an argument for canvasflow's own."""
        if self.task == STEP_TASK:
            return compiler.read_header(self.args[0][compiler.HEADER])
        return next(a for a in self.args if isinstance(a, dict) and "run" in a)


@dataclass
class Env:
    settings: Settings
    state: RunState
    dispatcher: Dispatcher
    redis: redis.Redis

    def sent(self, queue: str = "default") -> list[Message]:
        """Every message queued on ``queue`` (all priorities), taken off the queue."""
        out = []
        for priority, key in queue_keys(self.settings.key_prefix, queue):
            for raw in self.redis.lrange(key, 0, -1):
                msg = json.loads(raw)
                args, _, embed = json.loads(base64.b64decode(msg["body"]))
                rest = list(reversed(embed.get("chain") or []))
                out.append(
                    Message(
                        msg["headers"]["task"],
                        args,
                        [s["task"] for s in rest],
                        [list(s["args"]) for s in rest],
                        priority,
                    )
                )
            self.redis.delete(key)
        return out

    def new_run(self, defn: Definition, inputs: dict[str, Any] | None = None, **fields: str) -> str:
        run_id = secrets.token_hex(8)
        self.dispatcher.start(run_record(run_id, defn, inputs, **fields), defn, inputs or {})
        return run_id


def run_record(
    run_id: str, defn: Definition, inputs: dict[str, Any] | None, **extra: str
) -> RunRecord:
    fields = {
        "workflow": defn.id,
        "version": defn.version or "",
        "definition": dumps(dump_definition(defn)),
        "inputs": json.dumps(inputs or {}),
        "priority": "normal",
        **extra,
    }
    return RunRecord.from_hash(run_id, fields)


def step_records(steps: dict[str, dict[str, str]]) -> dict[str, StepRecord]:
    return {sid: StepRecord.from_hash(sid, fields) for sid, fields in steps.items()}


@pytest.fixture
def env(redis_url: str) -> Iterator[Env]:
    settings = make_settings(redis_url)
    r = redis.Redis.from_url(redis_url)
    state = RunState(r, Keys(settings.key_prefix), state_ttl=settings.state_ttl)
    yield Env(settings, state, Dispatcher(create_celery(settings, sender=True), settings, state), r)
    for key in r.scan_iter(f"{settings.key_prefix}:*", count=1000):
        r.delete(key)
    r.close()


def three_links() -> Definition:
    """extract -> transform -> load; transform reads extract's output, load has a rollback."""
    return (
        Workflow("etl", version="2")
        .step("extract", "builtin", "echo", params={"rows": 3})
        .step(
            "transform",
            "builtin",
            "echo",
            depends_on="extract",
            params={"rows": "{{ steps.extract.output.rows }}", "mode": "{{ inputs.mode }}"},
            compensate={"plugin": "builtin", "method": "echo", "params": {"undo": "transform"}},
        )
        .step(
            "load",
            "builtin",
            "echo",
            depends_on="transform",
            compensate={"plugin": "builtin", "method": "echo", "params": {"undo": "load"}},
        )
        .build()
    )


def test_a_new_run_is_recorded_pending_and_its_chain_sent_with_epoch_one(env: Env) -> None:
    run_id = env.new_run(three_links(), {"mode": "fast"})
    assert env.state.status(run_id) == RunStatus.PENDING
    (first,) = env.sent()
    assert first.task == STEP_TASK and compiler.read_spec(first.args[1])["id"] == "extract"
    assert first.chain == [STEP_TASK, STEP_TASK]
    # The header rides in the seed: inputs only because a template reads them.
    assert first.header == {
        "run": run_id,
        "epoch": 1,
        "wf": "etl",
        "version": "2",
        "inputs": {"mode": "fast"},
    }


def test_a_new_run_at_high_priority_is_sent_to_the_high_sub_queue(env: Env) -> None:
    env.new_run(three_links(), priority="high")
    (first,) = env.sent()
    assert first.priority == 0


def test_a_run_whose_send_fails_ends_failed_with_why(redis_url: str) -> None:
    settings = make_settings(redis_url)
    r = redis.Redis.from_url(redis_url)
    state = RunState(r, Keys(settings.key_prefix), state_ttl=settings.state_ttl)
    app = create_celery(settings, sender=True)
    # A broker nobody listens on, and no retries: the send raises at once.
    app.conf.update(
        broker_url="redis://127.0.0.1:1/0",
        task_publish_retry=False,
        broker_connection_retry=False,
        broker_connection_timeout=1,
    )
    defn = three_links()
    with pytest.raises(Exception) as raised:
        Dispatcher(app, settings, state).start(run_record("feedfeedfeedfeed", defn, {}), defn, {})
    assert not isinstance(raised.value, CanvasflowError)  # the broker's own error, unchanged
    run = state.read("feedfeedfeedfeed")
    assert run is not None
    assert run.run.status == RunStatus.FAILED
    assert run.run.error.startswith("could not dispatch the run: ")
    for key in r.scan_iter(f"{settings.key_prefix}:*"):
        r.delete(key)
    r.close()


def test_remaining_sends_the_unsettled_steps_seeded_with_the_settled_outcomes(env: Env) -> None:
    defn = three_links()
    run = run_record("r1", defn, {"mode": "slow"})
    # A run paused after its first step (resume), or retried from it (reset).
    steps = step_records(
        {
            "extract": {"status": "COMPLETED", "output": '{"rows": 3}'},
            "transform": {"status": "PENDING"},
            "load": {"status": "PENDING"},
        }
    )
    env.dispatcher.remaining("r1", 4, run, defn, steps)
    (first,) = env.sent()
    assert compiler.read_spec(first.args[1])["id"] == "transform"
    assert first.args[0]["extract"] == ["COMPLETED", {"rows": 3}]  # templates downstream see it
    assert first.header["epoch"] == 4 and first.header["inputs"] == {"mode": "slow"}
    assert first.chain == [STEP_TASK]

    env.dispatcher.remaining("r1", 5, run, defn, steps, reset=["extract"])
    (first,) = env.sent()
    assert compiler.read_spec(first.args[1])["id"] == "extract"
    assert first.chain == [STEP_TASK, STEP_TASK]


def test_a_lone_settle_carries_the_run_and_epoch_only(env: Env) -> None:
    env.dispatcher.settle("r2", 7, "low")
    (msg,) = env.sent()
    assert (msg.task, msg.args, msg.chain, msg.priority) == (
        SETTLE_TASK,
        [None, {"run": "r2", "epoch": 7}],
        [],
        8,
    )


def test_compensations_run_one_at_a_time_in_the_order_given_then_end_the_run(env: Env) -> None:
    defn = three_links()
    env.dispatcher.compensations(
        "r3", 2, run_record("r3", defn, {"mode": "x"}), defn, ["load", "transform"], "CANCELLED"
    )
    (msg,) = env.sent()
    assert msg.task == COMPENSATE_TASK and msg.args[1]["id"] == "load"
    assert msg.header["epoch"] == 2
    assert msg.chain == [COMPENSATE_TASK, COMPENSATED_TASK]
    assert msg.chain_args[0][0]["id"] == "transform" and msg.chain_args[1][-1] == "CANCELLED"


def test_redispatch_claims_a_running_run_with_a_new_epoch_and_sends_what_is_left(
    env: Env,
) -> None:
    run_id = env.new_run(three_links())
    env.sent()
    assert env.dispatcher.redispatch(run_id, reason="a step was killed") is True
    (first,) = env.sent()
    assert first.header["epoch"] == 2
    assert compiler.read_spec(first.args[1])["id"] == "extract"
    assert env.state.head(run_id) == (RunStatus.PENDING, "2", "")


def test_redispatch_sends_nothing_for_an_unknown_or_cancelling_run(env: Env) -> None:
    assert env.dispatcher.redispatch("0000000000000000", reason="test") is False
    run_id = env.new_run(three_links())
    env.sent()
    verdict, *_ = env.state.cancel(run_id, terminate=False)
    assert verdict == "ok"
    assert env.dispatcher.redispatch(run_id, reason="test") is False
    assert env.sent() == []


@pytest.mark.parametrize(
    ("status", "first_task"),
    [
        (RunStatus.RUNNING, STEP_TASK),
        (RunStatus.PAUSING, STEP_TASK),
        (RunStatus.CANCELLING, SETTLE_TASK),
        (RunStatus.COMPENSATING, COMPENSATE_TASK),
    ],
)
def test_resend_sends_what_a_stalled_run_in_each_status_waits_for(
    env: Env, status: str, first_task: str
) -> None:
    defn = three_links()
    run_id = env.new_run(defn)
    env.sent()
    # load completed last, then transform's compensation began when the canvas was lost.
    env.redis.rpush(env.state.keys.completed(run_id), "extract", "transform", "load")
    steps = step_records(
        {
            "extract": {"status": "COMPLETED", "output": '{"rows": 3}'},
            "transform": {"status": "COMPENSATING"},
            "load": {"status": "COMPENSATED" if status == RunStatus.COMPENSATING else "PENDING"},
        }
    )
    run = run_record(run_id, defn, {}, compensate_target="CANCELLED")
    env.dispatcher.resend(run_id, 3, status, run, defn, steps)
    (msg,) = env.sent()
    assert msg.task == first_task and msg.header["epoch"] == 3
    if status == RunStatus.COMPENSATING:
        assert msg.args[1]["id"] == "transform"  # load's rollback is done; transform's again
        assert msg.chain == [COMPENSATED_TASK]
        assert msg.chain_args[-1][-1] == "CANCELLED"  # where the run ends after its rollback
