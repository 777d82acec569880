"""Drill item 7: no message can kill a worker. A message nested too deep (or too big) is refused
before it runs: its step FAILED, the run final, the message dead-lettered and acknowledged."""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
import uuid

import pytest

from orchestrator import Client, Workflow
from orchestrator.engine import compiler
from orchestrator.engine.runstate import dumps
from orchestrator.model.definition import Definition, dump_definition
from orchestrator.records import RunRecord
from orchestrator.settings import Settings
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


def submit_unvalidated(client: Client, defn: Definition) -> str:
    """What Client.submit does after validation: record the run and send its canvas. Validation
    refuses such a definition (another layer); this is the message reaching a worker anyway."""
    run_id = secrets.token_hex(8)
    ctx = compiler.RunContext(
        run_id,
        1,
        "normal",
        client.settings.hard_timeout_grace,
        defn.id,
        "",
        None,
        client.settings.default_queue,
    )
    canvas = compiler.compile_run(defn, ctx, app=client.celery)
    shallow = dataclasses.replace(
        defn, steps=tuple(dataclasses.replace(s, params={}) for s in defn.steps)
    )
    client.state.create(
        RunRecord.from_hash(
            run_id,
            {
                "workflow": defn.id,
                "version": "",
                "name": defn.id,
                "definition": dumps(dump_definition(shallow)),
                "inputs": "{}",
                "priority": "normal",
                "tags": "[]",
            },
        ),
        defn.step_ids,
    )
    canvas.apply_async()
    return run_id


def with_params(defn: Definition, step_id: str, params: dict) -> Definition:
    return dataclasses.replace(
        defn,
        steps=tuple(
            dataclasses.replace(s, params=params) if s.id == step_id else s for s in defn.steps
        ),
    )


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('{"a": 1}', 1),
        ('[[{"a": [1, 2]}], {}]', 4),
        ('{"s": "[[[[{{{{"}', 1),  # brackets inside strings do not count
        ('{"s": "quote \\" [[[ \\\\", "t": [[]]}', 3),  # nor after escaped quotes and backslashes
        ("[]", 1),
        ("7", 0),
    ],
)
def test_the_guard_measures_nesting_from_the_raw_bytes(text: str, depth: int) -> None:
    from workers.guard import nesting

    assert json.loads(text) is not None or text == "null"
    assert nesting(text.encode()) == depth


def test_the_guard_passes_a_message_with_many_brackets_but_little_depth() -> None:
    from workers.guard import check

    wide = json.dumps(
        [[{f"s{i}": ["COMPLETED", None] for i in range(1000)}, ["j", "builtin", "echo", 1]], {}, {}]
    )
    assert check(wide.encode(), 200, 1 << 20) == ("", None)
    assert (
        "CANVASFLOW_MESSAGE_MAX_DEPTH" in check(json.dumps(nested(201)).encode(), 200, 1 << 20)[0]
    )
    assert check(json.dumps(nested(198)).encode(), 200, 1 << 20)[0] == ""
    assert "CANVASFLOW_MESSAGE_MAX_BYTES" in check(b"[" + b"1," * 100 + b"1]", 200, 100)[0]


@pytest.fixture
def guard_settings(redis_url: str) -> Settings:
    return make_settings(redis_url, lease_ttl=3)


def chain_of_two(wf_id: str) -> Definition:
    return (
        Workflow(wf_id, mode="sequential")
        .step("deep", plugin="builtin", method="echo", params={"x": 1})
        .step("after", plugin="builtin", method="echo", params={"y": 2})
        .build()
    )


def test_a_message_nested_500_levels_deep_fails_its_step_is_dead_lettered_and_the_worker_lives(
    guard_settings: Settings, start_worker
) -> None:
    worker = start_worker(guard_settings, concurrency=1)
    client = Client(guard_settings)
    try:
        run_id = submit_unvalidated(
            client, with_params(chain_of_two("deep_msg"), "deep", {"x": nested(500)})
        )
        snap = client.get_run(run_id).wait(60)
        assert snap.status == "FAILED", (snap, worker.log()[-3000:])
        assert snap.statuses == {"deep": "FAILED", "after": "CANCELLED"}
        assert "nested deeper than 200 levels" in snap.step("deep").error
        assert "CANVASFLOW_MESSAGE_MAX_DEPTH" in snap.step("deep").error
        dead = [json.loads(x) for x in client.redis.lrange(client.keys.dead_messages, 0, -1)]
        assert [(d["run"], d["step"], d["task"]) for d in dead] == [
            (run_id, "deep", "canvasflow.step")
        ]
        assert "nested deeper" in dead[0]["reason"]
        assert worker.proc.poll() is None, worker.log()[-3000:]
        # acknowledged, not redelivered: nothing is left in the broker's unacked set or queues
        time.sleep(0.5)
        assert len(client.redis.lrange(client.keys.dead_messages, 0, -1)) == 1
        ok = client.submit(chain_of_two("after_deep")).wait(60)
        assert ok.status == "COMPLETED"
        assert worker.proc.poll() is None
    finally:
        client.close()


def test_a_message_over_the_size_limit_is_refused_the_same_way(
    redis_url: str, start_worker
) -> None:
    settings = make_settings(redis_url, lease_ttl=3, message_max_bytes=20_000)
    worker = start_worker(settings, concurrency=1)
    client = Client(settings)
    try:
        wf = with_params(chain_of_two("big_msg"), "deep", {"x": "a" * 50_000})
        run_id = submit_unvalidated(client, wf)
        snap = client.get_run(run_id).wait(60)
        assert snap.status == "FAILED"
        assert snap.statuses == {"deep": "FAILED", "after": "CANCELLED"}
        assert "CANVASFLOW_MESSAGE_MAX_BYTES" in snap.step("deep").error
        dead = [json.loads(x) for x in client.redis.lrange(client.keys.dead_messages, 0, -1)]
        assert [d["run"] for d in dead] == [run_id]
        assert (
            dead[0]["size"] > 20_000 and "a" * 50_000 in dead[0]["body"]
        )  # kept whole: under 1 MiB
        assert worker.proc.poll() is None
        assert client.submit(chain_of_two("after_big")).wait(60).status == "COMPLETED"
    finally:
        client.close()


def test_a_non_critical_step_refused_by_the_guard_lets_the_run_go_on(
    guard_settings: Settings, start_worker
) -> None:
    start_worker(guard_settings, concurrency=1)
    client = Client(guard_settings)
    try:
        defn = with_params(chain_of_two(f"soft_{uuid.uuid4().hex[:4]}"), "deep", {"x": nested(300)})
        defn = dataclasses.replace(
            defn, steps=(dataclasses.replace(defn.steps[0], critical=False), defn.steps[1])
        )
        snap = client.get_run(submit_unvalidated(client, defn)).wait(60)
        assert snap.status == "COMPLETED"
        assert snap.statuses == {"deep": "FAILED", "after": "COMPLETED"}
    finally:
        client.close()


def spec_and_header(canvas: object, step_id: str) -> tuple[object, object]:
    """The wire spec of ``step_id`` and the run's wire header, from a compiled canvas (chains,
    groups and chords walked): what an item task of that mapped step carries."""
    spec, header, todo = None, None, [canvas]
    while todo:
        sig = todo.pop()
        for arg in getattr(sig, "args", ()) or ():
            if isinstance(arg, dict) and compiler.HEADER in arg:
                header = arg[compiler.HEADER]
            if getattr(sig, "task", None) == compiler.STEP_TASK and isinstance(arg, list):
                try:
                    if compiler.read_spec(arg)["id"] == step_id:
                        spec = arg
                except (KeyError, IndexError, TypeError, ValueError):
                    pass
        for part in (getattr(sig, "tasks", None), getattr(sig, "body", None)):
            if isinstance(part, list | tuple):
                todo.extend(part)
            elif part is not None:
                todo.append(part)
    assert spec is not None and header is not None, canvas
    return spec, header


def test_an_item_message_nested_too_deep_fails_its_mapped_step_and_the_worker_lives(
    guard_settings: Settings, start_worker
) -> None:
    # The guard once covered the step, settle and compensation tasks only: an item of a mapped
    # step (canvasflow.item) nested 500 deep reached the prefork pool's pickler and killed the
    # worker's main process, and the next worker after it.
    worker = start_worker(guard_settings, concurrency=1)
    client = Client(guard_settings)
    try:
        wf = (
            Workflow(f"deep_item_{uuid.uuid4().hex[:4]}", mode="sequential")
            .step("list", "builtin", "echo", params={"files": ["a", "b", "c"]})
            .step(
                "each",
                "builtin",
                "sleep",
                map={"over": "{{ steps.list.output.files }}", "max_parallel": 1},
                params={"seconds": 3},  # a wide window for the crafted message
            )
        )
        run = client.submit(wf)
        defn = wf.build()
        wait = time.monotonic() + 30
        while client.state.step(run.id, "each", "status").status != "RUNNING":
            assert time.monotonic() < wait, "the mapped step never started"
            time.sleep(0.05)
        ctx = compiler.RunContext(run.id, 1, "normal", 10, defn.id, "", None, "default")
        wire, hdr = spec_and_header(compiler.compile_run(defn, ctx, app=client.celery), "each")
        client.celery.signature(
            compiler.ITEM_TASK, args=(wire, hdr, 1, -1, {"deep": nested(500)})
        ).apply_async(queue="default")
        snap = run.wait(60)
        assert worker.proc.poll() is None, worker.log()[-3000:]
        assert snap.status == "FAILED", snap
        assert snap.step("each").status == "FAILED"
        error = snap.step("each").error
        assert "refused the message of item 1" in error and "CANVASFLOW_MESSAGE_MAX_DEPTH" in error
        dead = [json.loads(x) for x in client.redis.lrange(client.keys.dead_messages, 0, -1)]
        assert [(d["run"], d["step"], d["item"], d["task"]) for d in dead] == [
            (run.id, "each", 1, "canvasflow.item")
        ]
        assert client.submit(chain_of_two("after_deep_item")).wait(60).status == "COMPLETED"
        assert worker.proc.poll() is None
    finally:
        client.close()
