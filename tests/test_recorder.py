"""The recorder against a real Redis, real Celery workers and real databases: lossless, exactly once."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from orchestrator import Client, Workflow
from orchestrator.audit import AuditStore, Event
from orchestrator.audit import queries as q
from orchestrator.audit.models import events, step_attempts
from orchestrator.audit.recorder import Recorder
from orchestrator.engine.runstate import RunState
from orchestrator.keys import Keys
from orchestrator.records import RunRecord
from tests.audit_helpers import (
    RecorderProcess,
    assert_store_matches_redis,
    group_pending,
    sql_events,
    stream_events,
    wait_for,
)

pytest_plugins = ("tests.audit_fixtures",)


@pytest.fixture
def recorders(redis_url: str) -> Iterator[list[Recorder]]:
    """Recorders a test makes; their consumer groups are destroyed afterwards so that they
    never hold back trimming of the shared stream."""
    made: list[Recorder] = []
    yield made
    groups = {(r.stream, r.group) for r in made}
    client = redis.Redis.from_url(redis_url)
    for stream, group in groups:
        try:
            client.xgroup_destroy(stream, group)
        except redis.ResponseError:
            pass
    client.close()


def new_recorder(
    made: list[Recorder],
    store: AuditStore,
    client: redis.Redis,
    keys: Keys,
    group: str | None = None,
    start_id: str | None = None,
    **kw,
) -> Recorder:
    """A recorder on its own group that starts where the (shared) stream ends now."""
    if start_id is None:
        last = client.xrevrange(keys.events, count=1)
        start_id = last[0][0].decode() if last else "0"
    kw.setdefault("block", 0.1)
    rec = Recorder(
        store, client, keys, group=group or f"g-{uuid.uuid4().hex[:8]}", start_id=start_id, **kw
    )
    rec.setup()
    made.append(rec)
    return rec


def stream_end(client: redis.Redis, keys: Keys) -> str:
    last = client.xrevrange(keys.events, count=1)
    return last[0][0].decode() if last else "0"


def mixed_workflows() -> list[Workflow]:
    chatty = {"function": "tests.audit_steps:chatty", "kwargs": {"lines": 12}}
    return [
        Workflow("audit_ok", sla_seconds=60)
        .step("a", "builtin", "echo", params={"n": 1})
        .step("b", "builtin", "call", depends_on=["a"], params=chatty),
        Workflow("audit_retry").step(
            "f",
            "builtin",
            "fail",
            params={"times": 1, "message": "flaky"},
            retries=2,
            retry_delay=0.1,
        ),
        Workflow("audit_skip", mode="conditional")
        .step("a", "builtin", "echo", params={"n": 1})
        .step("no", "builtin", "echo", depends_on=["a"], when="steps.a.output.n > 5")
        .step("after", "builtin", "echo", depends_on=["no"]),
        Workflow("audit_fail")
        .step("a", "builtin", "echo")
        .step("bad", "builtin", "fail", depends_on=["a"], params={"message": "broken"})
        .step("never", "builtin", "echo", depends_on=["bad"]),
        Workflow("audit_tolerant")
        .step("a", "builtin", "fail", critical=False)
        .step("b", "builtin", "echo", depends_on=["a"]),
        Workflow("audit_saga")
        .step(
            "a",
            "builtin",
            "echo",
            params={"id": 7},
            compensate={"plugin": "builtin", "method": "echo", "params": {"undo": 7}},
        )
        .step("bad", "builtin", "fail", depends_on=["a"]),
    ]


def submit_all(client: Client, wfs: list[Workflow], times: int = 1) -> set[str]:
    handles = [
        client.submit(wf, triggered_by="audit-tests", tags=["audit"])
        for _ in range(times)
        for wf in wfs
    ]
    for h in handles:
        h.wait(60)
    return {h.id for h in handles}


def assert_complete(store: AuditStore, client: Client, run_ids: set[str]) -> None:
    """SQL agrees with Redis on every run and step, and holds every stream event exactly once."""
    assert_store_matches_redis(store, client.redis, client.keys, run_ids)
    assert sql_events(store, run_ids) == stream_events(client.redis, client.keys, run_ids)
    for rid in run_ids:
        snap = client.snapshot(rid)
        detail = q.run_detail(store, rid)
        for s in snap.steps:
            assert detail.step(s.id).output == (
                s.output if s.status in ("COMPLETED", "COMPENSATED") else None
            )
            assert len(detail.step(s.id).history) == len(s.history) or s.status == "RUNNING"


# -- live -----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_after_a_mixed_set_of_runs_sql_and_redis_agree_and_every_event_is_recorded_once(
    client: Client, store: AuditStore, recorders: list[Recorder]
) -> None:
    rec = new_recorder(recorders, store, client.redis, client.keys, trim=False)
    stop = threading.Event()
    thread = rec.start_thread(stop)
    try:
        run_ids = submit_all(client, mixed_workflows())
        wait_for(lambda: rec.lag().caught_up, 60, "the recorder to catch up")
    finally:
        stop.set()
        thread.join(10)
    assert_complete(store, client, run_ids)
    statuses = {
        r.workflow: r.status
        for r in q.list_runs(store, tags=["audit"], limit=100).items
        if r.id in run_ids
    }
    assert statuses == {
        "audit_ok": "COMPLETED",
        "audit_retry": "COMPLETED",
        "audit_skip": "COMPLETED",
        "audit_fail": "FAILED",
        "audit_tolerant": "COMPLETED",
        "audit_saga": "FAILED",
    }
    by_wf = {r.workflow: r.id for r in q.list_runs(store, limit=100).items if r.id in run_ids}
    ok = q.run_detail(store, by_wf["audit_ok"])
    assert ok.step("b").stats["items"] == 12 and "duration" in ok.step("b").stats
    assert ok.step("b").progress == 0.5 and ok.step("b").progress_message == "half way"
    lines = q.logs(store, ok.run.id, "b")
    assert [x.message for x in lines] == [f"line {i}" for i in range(12)]
    assert (lines[3].entity_tag, lines[3].entity_id, lines[3].entity_route) == ("row", "3", "/rows")
    retry = q.run_detail(store, by_wf["audit_retry"]).step("f")
    assert [a.status for a in retry.history] == ["RETRYING", "COMPLETED"]
    assert retry.history[0].error == "flaky" and retry.history[0].worker
    saga = q.run_detail(store, by_wf["audit_saga"])
    assert saga.step("a").status == "COMPENSATED" and saga.run.failed_step == "bad"
    assert saga.step("bad").history[-1].error == "failed"
    skip = q.run_detail(store, by_wf["audit_skip"])
    assert skip.step("no").reason.startswith("when is false")


# -- the recorder down, killed, or several at once ----------------------------------------------


@pytest.mark.integration
def test_recorder_down_while_runs_execute_catches_up_and_history_survives_restarts(
    client: Client, sqlite_store: AuditStore, recorders: list[Recorder]
) -> None:
    start = stream_end(client.redis, client.keys)
    group = f"g-{uuid.uuid4().hex[:8]}"
    wf = (
        Workflow("audit_batch")
        .step("a", "builtin", "echo", params={"x": 1})
        .step(
            "b",
            "builtin",
            "call",
            depends_on=["a"],
            params={"function": "tests.audit_steps:chatty", "kwargs": {"lines": 5}},
        )
    )
    run_ids = submit_all(client, [wf], times=50)  # nobody is recording yet

    relayed: list[tuple[str, int]] = []
    hooks = [lambda batch: relayed.extend(e.key for e in batch), lambda batch: 1 / 0]
    two = [
        new_recorder(
            recorders,
            sqlite_store,
            client.redis,
            client.keys,
            group=group,
            start_id=start,
            hooks=hooks,
            batch_size=100,
        )
        for _ in range(2)
    ]
    for r in two:  # each takes a first batch, then both run side by side
        assert r.run_once(block=0) == 100
    stop = threading.Event()
    threads = [r.start_thread(stop) for r in two]
    try:
        wait_for(lambda: two[0].lag().caught_up, 60, "two recorders to catch up")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert_complete(sqlite_store, client, run_ids)
    assert (
        len(relayed) == len(set(relayed)) == len(stream_events(client.redis, client.keys, run_ids))
    )

    before = (
        q.list_runs(sqlite_store, limit=100),
        [q.run_detail(sqlite_store, r) for r in sorted(run_ids)],
    )
    # Restart everything but Redis: a new store object and a new recorder in the same group.
    reopened = AuditStore(str(sqlite_store.url))
    again = new_recorder(
        recorders, reopened, client.redis, client.keys, group=group, start_id=start
    )
    assert again.drain() == 0
    after = (q.list_runs(reopened, limit=100), [q.run_detail(reopened, r) for r in sorted(run_ids)])
    assert after == before
    reopened.dispose()


@pytest.mark.integration
def test_recorder_killed_with_sigkill_mid_batch_then_restarted_loses_and_duplicates_nothing(
    client: Client,
    fleet_settings,
    sqlite_store: AuditStore,
    recorders: list[Recorder],
    tmp_path: Path,
) -> None:
    start = stream_end(client.redis, client.keys)
    group = f"g-{uuid.uuid4().hex[:8]}"
    wf = Workflow("audit_kill").step(
        "a",
        "builtin",
        "call",
        params={"function": "tests.audit_steps:chatty", "kwargs": {"lines": 20}},
    )
    run_ids = submit_all(client, [wf], times=15)
    url = str(sqlite_store.url)
    args = [
        "--group",
        group,
        "--start-id",
        start,
        "--batch-size",
        "50",
        "--claim-idle",
        "0.5",
        "--claim-interval",
        "0.2",
        "--lag-interval",
        "0.5",
        "--no-upgrade",
    ]
    watcher = new_recorder(
        recorders, sqlite_store, client.redis, client.keys, group=group, start_id=start
    )

    # Hold the SQLite write lock so that the recorder reads a batch and then blocks inside its
    # transaction: the SIGKILL lands mid-batch, after XREADGROUP and before any commit.
    lock = sqlite3.connect(sqlite_store.url.database, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    first = RecorderProcess(fleet_settings, url, *args, log_dir=tmp_path)
    try:
        wait_for(
            lambda: (
                group_pending(client.redis, client.keys, group) > 0 or first.proc.poll() is not None
            ),
            30,
            "the recorder to read a batch",
        )
        assert first.proc.poll() is None, first.log()
        first.kill()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    stranded = group_pending(client.redis, client.keys, group)
    assert stranded > 0
    with sqlite_store.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).select_from(events).where(events.c.run_id.in_(sorted(run_ids)))
            ).scalar_one()
            == 0
        )

    second = RecorderProcess(fleet_settings, url, *args, log_dir=tmp_path)
    try:
        wait_for(
            lambda: watcher.lag().caught_up or second.proc.poll() is not None,
            60,
            "the restarted recorder to catch up",
        )
    finally:
        code = second.stop()
    assert code == 0, second.log()
    assert "claimed" in second.log()
    assert_complete(sqlite_store, client, run_ids)


@pytest.mark.integration
def test_two_recorder_processes_on_one_group_write_every_event_and_attempt_exactly_once(
    client: Client,
    fleet_settings,
    store_url: str,
    store: AuditStore,
    recorders: list[Recorder],
    tmp_path: Path,
) -> None:
    """`canvasflow recorder` twice, as two hosts would run it (docs/operations.md, "Scaling
    out"): the consumer group shares the stream out between them, and neither writes what the
    other wrote — no event, run, step or attempt twice, and no duplicate even absorbed."""
    start = stream_end(client.redis, client.keys)
    group = f"g-{uuid.uuid4().hex[:8]}"
    # In the group, never reading: it measures the lag and destroys the group afterwards.
    watcher = new_recorder(recorders, store, client.redis, client.keys, group=group, start_id=start)
    args = ["--group", group, "--start-id", start, "--batch-size", "20", "--no-trim"]
    two = [
        RecorderProcess(fleet_settings, store_url, *args, "--no-upgrade", log_dir=tmp_path)
        for _ in range(2)
    ]
    try:
        for p in two:
            wait_for(
                lambda p=p: f"group {group}" in p.log() or p.proc.poll() is not None,
                60,
                "a recorder process to start",
            )
            assert p.proc.poll() is None, p.log()
        run_ids = submit_all(client, mixed_workflows(), times=4)
        wait_for(lambda: watcher.lag().caught_up, 60, "the two recorders to catch up")
    finally:
        codes = [p.stop() for p in two]
    assert codes == [0, 0], [p.log() for p in two]
    assert_complete(store, client, run_ids)
    done = []
    for p in two:
        m = re.search(r"stopped after (\d+) events \((\d+) duplicates", p.log())
        assert m, p.log()
        done.append((int(m[1]), int(m[2])))
    assert all(n > 0 for n, _ in done), f"one recorder took no share of the stream: {done}"
    assert [d for _, d in done] == [0, 0], f"an event was written twice: {done}"
    # Between them they recorded every entry the group was given (nothing else writes to this
    # test session's stream meanwhile), each once.
    entries = client.redis.xrange(client.keys.events, f"({start}", "+")
    assert sum(n for n, _ in done) == len(entries)


@pytest.mark.integration
def test_a_batch_committed_but_never_acknowledged_is_applied_again_without_duplicates(
    client: Client, sqlite_store: AuditStore, recorders: list[Recorder]
) -> None:
    start = stream_end(client.redis, client.keys)
    group = f"g-{uuid.uuid4().hex[:8]}"
    run_ids = submit_all(client, mixed_workflows()[:3])
    doomed = new_recorder(
        recorders, sqlite_store, client.redis, client.keys, group=group, start_id=start
    )
    # The doomed recorder reads everything and commits it, then "dies" before XACK.
    entries = client.redis.xreadgroup(group, "doomed", {client.keys.events: ">"}, count=100_000)[0][
        1
    ]
    batch = [Event.from_stream(i, f) for i, f in entries]
    assert len(sqlite_store.apply(batch, doomed.lookups(batch))) == len(batch)
    assert group_pending(client.redis, client.keys, group) == len(entries)

    heir = new_recorder(
        recorders,
        sqlite_store,
        client.redis,
        client.keys,
        group=group,
        start_id=start,
        claim_idle=0.0,
    )
    heir.drain()
    assert heir.stats.claimed == len(entries)
    assert heir.stats.duplicates == len(entries) and heir.stats.events == 0
    assert group_pending(client.redis, client.keys, group) == 0
    assert_complete(sqlite_store, client, run_ids)


# -- bad input from plugins -----------------------------------------------------------------------


@pytest.mark.integration
def test_bad_log_and_progress_input_from_a_plugin_is_clamped_and_the_run_completes(
    client: Client, sqlite_store: AuditStore, recorders: list[Recorder]
) -> None:
    rec = new_recorder(recorders, sqlite_store, client.redis, client.keys)
    wf = (
        Workflow("audit_bad_input")
        .step(
            "high",
            "builtin",
            "call",
            params={"function": "tests.audit_steps:log_badly", "args": [7.5]},
        )
        .step(
            "low",
            "builtin",
            "call",
            params={"function": "tests.audit_steps:log_badly", "args": [-3]},
        )
    )
    run_ids = submit_all(client, [wf])
    rec.drain()
    (rid,) = run_ids
    detail = q.run_detail(sqlite_store, rid)
    assert detail.run.status == "COMPLETED"
    assert detail.step("high").output == {"survived": True}
    assert detail.step("high").progress == 1.0 and detail.step("low").progress == 0.0
    lines = q.logs(sqlite_store, rid, "high")
    assert [x.message for x in lines[:2]] == ["12345", "{'nested': [1, 2]}"]
    assert lines[1].level == "INFO" and lines[1].entity_tag == "7"
    assert lines[2].level == "WARNING" and len(lines[2].message) <= 64 * 1024 + 100
    assert lines[2].message.endswith("[truncated from 1000000 characters]")
    assert lines[3].level == "ERROR" and "between 0 and 1" in lines[3].message
    assert_complete(sqlite_store, client, run_ids)


# -- trimming and poison entries (a private stream, no worker needed) -----------------------------


def test_stream_is_trimmed_only_below_what_every_group_acknowledged(
    redis_client: redis.Redis, sqlite_store: AuditStore, recorders: list[Recorder]
) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    state = RunState(redis_client, keys, state_ttl=60)
    for i in range(10):
        state.create(RunRecord.from_hash(f"r{i}", {"workflow": "w", "version": "1"}), ["s"])
        state.emit(f"r{i}", [["log", "s", "", "1.0", json.dumps({"message": "hi"})]])
    total = redis_client.xlen(keys.events)
    redis_client.xgroup_create(keys.events, "slow", id="0")
    slow = redis_client.xreadgroup("slow", "c", {keys.events: ">"}, count=5)[0][1]
    redis_client.xack(keys.events, "slow", slow[0][0], slow[1][0])
    redis_client.xadd(keys.events, {"junk": "no run here"})  # not an event: set aside, not fatal

    rec = new_recorder(recorders, sqlite_store, redis_client, keys, start_id="0")
    rec.drain()
    assert rec.lag().caught_up and rec.stats.dead == 1
    dead = redis_client.xrange(f"{keys.events}:dead")
    assert len(dead) == 1 and b"no run here" in dead[0][1][b"junk"]
    with sqlite_store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == total

    assert rec.trim() == 2  # "slow" still has three pending entries after its two acked ones
    redis_client.xack(keys.events, "slow", *[i for i, _ in slow[2:]])
    assert rec.trim() == 3  # up to what "slow" has read; the rest it has not seen yet
    redis_client.xgroup_destroy(keys.events, "slow")
    assert rec.trim() == total + 1 - 5
    assert redis_client.xlen(keys.events) == 0
    redis_client.delete(keys.events, f"{keys.events}:dead", keys.runs)


def test_a_projection_that_cannot_take_an_event_sets_only_that_event_aside(
    redis_client: redis.Redis,
    sqlite_store: AuditStore,
    recorders: list[Recorder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator.audit import projection

    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    for seq in range(1, 6):
        redis_client.xadd(
            keys.events,
            {
                "run": "r",
                "seq": seq,
                "type": "log",
                "step": "s",
                "status": "",
                "ts": "1.0",
                "data": json.dumps({"message": f"m{seq}"}),
            },
        )
    real = projection._Projection.step_event

    def explode_on_three(self, run, e):
        if e.seq == 3:
            raise RuntimeError("cannot project")
        return real(self, run, e)

    monkeypatch.setattr(projection._Projection, "step_event", explode_on_three)
    rec = new_recorder(recorders, sqlite_store, redis_client, keys, start_id="0")
    rec.drain()
    assert rec.lag().caught_up and rec.stats.dead == 1 and rec.stats.events == 4
    assert [x.seq for x in q.logs(sqlite_store, "r")] == [1, 2, 4, 5]
    (entry,) = redis_client.xrange(f"{keys.events}:dead")
    assert entry[1][b"seq"] == b"3" and b"cannot project" in entry[1][b"error"]
    with sqlite_store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(step_attempts)).scalar_one() == 0
    redis_client.delete(keys.events, f"{keys.events}:dead")


def test_an_embedded_recorder_records_in_a_thread_until_stopped(
    redis_url: str, tmp_path: Path
) -> None:
    from orchestrator.audit.recorder import embed
    from orchestrator.settings import Settings

    settings = Settings(
        redis_url=redis_url,
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        database_url=f"sqlite:///{tmp_path / 'embedded.db'}",
    )
    client = redis.Redis.from_url(redis_url)
    state = RunState(client, Keys(settings.key_prefix), state_ttl=60)
    seen: list[tuple[str, int]] = []
    rec, stop, thread = embed(
        settings, hooks=[lambda batch: seen.extend(e.key for e in batch)], block=0.1
    )
    try:
        state.create(RunRecord.from_hash("r1", {"workflow": "w", "version": "1"}), ["s"])
        state.emit("r1", [["log", "s", "", "1.0", json.dumps({"message": "hello"})]])
        wait_for(lambda: len(seen) == 2, 30, "the embedded recorder to record both events")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert seen == [("r1", 1), ("r1", 2)]
    assert [x.message for x in q.logs(rec.store, "r1")] == ["hello"]
    rec.store.dispose()
    client.delete(rec.stream, Keys(settings.key_prefix).run("r1"), Keys(settings.key_prefix).runs)
    client.close()


def test_a_recorder_restarted_under_its_fixed_name_takes_its_own_pending_entries_first(
    redis_client: redis.Redis, sqlite_store: AuditStore, recorders: list[Recorder]
) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    for seq in range(1, 4):
        redis_client.xadd(
            keys.events,
            {
                "run": "r",
                "seq": seq,
                "type": "log",
                "step": "s",
                "status": "",
                "ts": "1.0",
                "data": json.dumps({"message": f"m{seq}"}),
            },
        )
    redis_client.xgroup_create(keys.events, "fixed", id="0")
    redis_client.xreadgroup("fixed", "recorder-0", {keys.events: ">"})  # read, then "crashed"
    rec = new_recorder(
        recorders,
        sqlite_store,
        redis_client,
        keys,
        group="fixed",
        consumer="recorder-0",
        claim_idle=3600,
    )
    assert rec.run_once(block=0) == 3  # no claim needed: they were its own
    assert rec.lag().caught_up and rec.stats.claimed == 0
    assert [x.seq for x in q.logs(sqlite_store, "r")] == [1, 2, 3]
    redis_client.delete(keys.events)
