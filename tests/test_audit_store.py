"""The audit store's contract, run on SQLite and on PostgreSQL alike (the ``store`` fixture)."""

from __future__ import annotations

import json
import random
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from orchestrator.audit import AuditStore, StoreNotReady, StoreUnavailable
from orchestrator.audit import queries as q
from orchestrator.audit.models import (
    events,
    metadata,
    run_tags,
    runs,
    step_attempts,
    step_logs,
    steps,
)
from orchestrator.audit.store import HEAD, VERSION_TABLE
from orchestrator.errors import StoreError, UnknownRun
from tests.audit_helpers import RunEvents, dump_tables, mixed_runs

pytest_plugins = ("tests.audit_fixtures",)


# -- schema -----------------------------------------------------------------------------------


def test_upgrade_creates_the_schema_that_the_models_declare(store):
    assert store.revision() == HEAD
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        assert compare_metadata(ctx, metadata) == []


def test_upgrade_is_idempotent_and_keeps_data(store):
    evs, lk = mixed_runs(2)
    store.apply(evs, lk)
    assert store.upgrade() == HEAD
    assert q.get_run(store, "run000").status == "COMPLETED"


def test_a_store_that_was_never_upgraded_says_to_run_db_upgrade(store_url):
    fresh = AuditStore(store_url)
    with pytest.raises(StoreNotReady, match="canvasflow db upgrade"):
        fresh.check()
    with pytest.raises(StoreNotReady, match="canvasflow db upgrade"):
        q.list_runs(fresh)
    fresh.dispose()


def test_an_unreachable_database_names_the_url_with_the_password_masked():
    s = AuditStore("postgresql://canvas:s3cret@127.0.0.1:1/nowhere", connect_timeout=2)
    with pytest.raises(StoreUnavailable) as info:
        s.check()
    msg = str(info.value)
    assert "postgresql+psycopg://canvas:***@127.0.0.1:1/nowhere" in msg
    assert "s3cret" not in msg
    assert "CANVASFLOW_DATABASE_URL" in msg


def test_a_url_that_is_not_a_database_url_is_a_clear_error():
    with pytest.raises(StoreError, match="not a database URL"):
        AuditStore("no-scheme-here")
    with pytest.raises(StoreError, match="only sqlite and postgresql"):
        AuditStore("mysql://u@h/db")


# -- idempotency and ordering -----------------------------------------------------------------


def test_applying_the_same_batch_twice_changes_nothing(store):
    evs, lk = mixed_runs()
    first = store.apply(evs, lk)
    before = dump_tables(store)
    again = store.apply(evs, lk)
    assert len(first) == len(evs)
    assert again == []
    assert dump_tables(store) == before


def test_a_batch_with_an_event_twice_records_it_once(store):
    evs, lk = mixed_runs(1)
    new = store.apply(evs + evs[:5], lk)
    assert len(new) == len(evs)
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == len(evs)


def test_events_redelivered_while_their_run_has_gaps_are_recognised_as_recorded(store):
    # The store knows a run's recorded events from last_seq/event_count without reading
    # cf_events, except while some seq below last_seq is missing: then it must look them up.
    evs, lk = mixed_runs(1)
    odd = [e for e in evs if e.seq % 2]
    assert len(store.apply(odd, lk)) == len(odd)
    new = store.apply(evs, lk)
    assert sorted(e.seq for e in new) == sorted(e.seq for e in evs if e.seq % 2 == 0)
    assert store.apply(evs, lk) == []
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == len(evs)
        assert conn.execute(select(runs.c.event_count, runs.c.last_seq)).one() == (
            len(evs),
            len(evs),
        )


def test_events_applied_in_any_order_and_batching_give_the_same_tables(store, tmp_path):
    evs, lk = mixed_runs()
    reference = AuditStore(f"sqlite:///{tmp_path / 'reference.db'}")
    reference.upgrade()
    reference.apply(evs, lk)
    shuffled = evs[:]
    random.Random(7).shuffle(shuffled)
    for i in range(0, len(shuffled), 7):
        store.apply(shuffled[i : i + 7], lk)
    assert dump_tables(store) == dump_tables(reference)
    reference.dispose()


def test_concurrent_writers_with_overlapping_batches_record_every_event_once(store):
    evs, lk = mixed_runs(8)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        mine = evs[:]
        random.Random(seed).shuffle(mine)
        try:
            for i in range(0, len(mine), 25):
                store.apply(mine[i : i + 25], lk)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == len(evs)
        counts = dict(conn.execute(select(runs.c.id, runs.c.event_count)).all())
        last = dict(conn.execute(select(runs.c.id, runs.c.last_seq)).all())
    assert counts == last


# -- projection -------------------------------------------------------------------------------


def test_a_run_with_retries_skips_and_failures_is_projected_into_runs_steps_and_attempts(store):
    evs, lk = mixed_runs(4)
    store.apply(evs, lk)

    ok = q.run_detail(store, "run000")
    assert ok.run.status == "COMPLETED" and ok.run.complete
    assert (
        ok.run.tags == ("nightly",) and ok.run.triggered_by == "tests" and ok.run.sla_seconds == 5.0
    )
    assert ok.inputs == {"n": 1} and ok.definition["id"] == "report"
    assert [s.id for s in ok.steps] == ["load", "check", "save"]
    assert {s.status for s in ok.steps} == {"COMPLETED"}
    load = ok.step("load")
    assert load.output == {"step": "load", "rows": 0}
    assert load.history[0].output_size == len(json.dumps({"step": "load", "rows": 0}))
    assert load.progress == 1.0 and load.stats == {"items": 1, "duration": 1.0}
    assert load.queue == "default" and load.history[0].queue == "default"
    assert [line.message for line in ok.logs] == ["load line 0", "load line 1", "load line 2"]
    assert ok.logs[0].entity_tag == "item"

    retried = q.run_detail(store, "run001")
    load = retried.step("load")
    assert load.attempts == 3 and [a.status for a in load.history] == [
        "RETRYING",
        "RETRYING",
        "COMPLETED",
    ]
    assert [a.error for a in load.history] == ["boom 1", "boom 2", None]
    assert load.error is None and load.duration == pytest.approx(
        retried.step("load").finished_at - load.started_at
    )
    assert (
        retried.step("save").status == "SKIPPED" and retried.step("save").reason == "when is false"
    )

    failed = q.run_detail(store, "run002")
    assert failed.run.status == "FAILED"
    assert failed.run.error == "boom 2" and failed.run.failed_step == "check"
    check = failed.step("check")
    assert check.status == "FAILED" and check.error == "boom 2" and check.output is None
    assert check.history[-1].traceback == "Traceback: boom"
    assert failed.step("save").status == "CANCELLED"

    cancelled = q.run_detail(store, "run003")
    assert cancelled.run.status == "CANCELLED" and cancelled.run.finished_at is not None
    assert cancelled.run.duration == pytest.approx(
        cancelled.run.finished_at - cancelled.run.started_at
    )


def test_bad_log_and_progress_values_are_clamped_not_fatal(store):
    r = RunEvents("bad").created()
    r.emit("log", "s", message={"not": "a string"}, level="loud")
    r.emit("log", "s", message="x" * 1_000_000, level="error")
    r.emit("log", "s", message="nul\x00byte", entity_tag="t" * 500)
    r.emit("progress", "s", fraction=7)
    r.emit("progress", "s", fraction="junk")
    store.apply(r.events)
    lines = q.logs(store, "bad")
    assert lines[0].message == '{"not": "a string"}' and lines[0].level == "INFO"
    assert lines[1].level == "ERROR" and len(lines[1].message) < 70_000
    assert lines[1].message.endswith("[truncated from 1000000 characters]")
    assert lines[2].message == "nul\ufffdbyte" and len(lines[2].entity_tag) == 200
    assert q.run_detail(store, "bad").step("s").progress == 1.0


def test_events_of_a_run_after_a_sequence_number_come_back_in_order(store):
    evs, lk = mixed_runs(1)
    store.apply(evs, lk)
    got = q.events_after(store, "run000", after_seq=5, limit=4)
    assert [e["seq"] for e in got] == [6, 7, 8, 9]
    assert got[0]["type"] == evs[5].type and got[0]["data"] == evs[5].data
    assert q.events_after(store, "run000", after_seq=len(evs)) == []


def test_logs_page_by_sequence_and_filter_by_step(store):
    r = RunEvents("logs").created()
    for i in range(30):
        r.emit("log", "a" if i % 2 else "b", message=f"m{i}")
    store.apply(r.events)
    first = q.logs(store, "logs", limit=10)
    second = q.logs(store, "logs", after_seq=first[-1].seq, limit=10)
    assert [x.message for x in first + second] == [f"m{i}" for i in range(20)]
    assert {x.step for x in q.logs(store, "logs", "a", limit=100)} == {"a"}
    assert q.run_detail(store, "logs", log_limit=5).logs_total == 30
    assert [x.message for x in q.run_detail(store, "logs", log_limit=3).logs] == [
        "m27",
        "m28",
        "m29",
    ]


def test_an_unknown_run_is_an_unknown_run_error(store):
    with pytest.raises(UnknownRun):
        q.run_detail(store, "nope")


# -- listing ----------------------------------------------------------------------------------


def test_list_runs_filters_combine_and_keyset_pages_cover_every_run_once(store):
    evs, lk = mixed_runs(12)
    store.apply(evs, lk)
    everything = q.list_runs(store, limit=100).items
    assert [r.id for r in everything] == [f"run{i:03d}" for i in reversed(range(12))]

    seen, cursor = [], None
    while True:
        page = q.list_runs(store, limit=5, cursor=cursor)
        seen.extend(r.id for r in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [r.id for r in everything]

    assert {r.id for r in q.list_runs(store, status="FAILED").items} == {
        "run002",
        "run006",
        "run010",
    }
    assert {r.status for r in q.list_runs(store, status=["failed", "CANCELLED"]).items} == {
        "FAILED",
        "CANCELLED",
    }
    assert {r.workflow for r in q.list_runs(store, workflow="etl").items} == {"etl"}
    assert {r.id for r in q.list_runs(store, tags=["nightly"]).items} == {
        "run000",
        "run003",
        "run006",
        "run009",
    }
    assert {r.id for r in q.list_runs(store, tags=["nightly"], workflow="etl").items} == {
        "run003",
        "run009",
    }
    assert q.list_runs(store, triggered_by="nobody").items == ()
    t0 = 1_000_000.0
    assert {r.id for r in q.list_runs(store, since=t0 + 300, until=t0 + 500).items} == {
        "run003",
        "run004",
    }
    assert {r.id for r in q.list_runs(store, search="run010").items} == {"run010"}
    assert len(q.list_runs(store, search="REPO").items) == 6  # workflow "report", name "Report"
    hexed = [
        RunEvents(rid, 2_000_000.0).created("other") for rid in ("9f3a01", "9f3b02", "9fff03", "a0")
    ]
    store.apply([e for r in hexed for e in r.events])
    assert {r.id for r in q.list_runs(store, search="9F3").items} == {"9f3a01", "9f3b02"}
    assert {r.id for r in q.list_runs(store, search="9f").items} == {"9f3a01", "9f3b02", "9fff03"}
    assert {r.id for r in q.list_runs(store, search="9fff").items} == {"9fff03"}
    with pytest.raises(StoreError, match="invalid cursor"):
        q.list_runs(store, cursor="garbage!")


# -- analytics --------------------------------------------------------------------------------


def test_analytics_report_sla_failure_rates_durations_slow_steps_retries_and_throughput(store):
    evs, lk = mixed_runs(8)
    store.apply(evs, lk)
    a = q.analytics(store, since=0, until=2_000_000)
    assert a.runs == 8
    # kinds per run i: 0 completed, 1 completed after retries, 2 failed, 3 cancelled
    assert a.ended == 6 and a.failed == 2 and a.failure_rate == pytest.approx(2 / 6)
    with store.connect() as conn:
        durations = dict(conn.execute(select(runs.c.id, runs.c.duration)).all())
    met = sum(1 for i in (0, 1, 4, 5) if durations[f"run{i:03d}"] <= 5.0)
    assert a.sla_met == met and a.sla_breached == 6 - met
    etl = next(w for w in a.by_workflow if w.workflow == "etl")  # runs 1, 3, 5, 7
    etl_d = sorted(durations[f"run{i:03d}"] for i in (1, 3, 5, 7))
    assert etl.runs == 4 and etl.failed == 0 and etl.failure_rate == 0.0
    assert etl.avg_duration == pytest.approx(sum(etl_d) / 4)
    assert etl.p95_duration == pytest.approx(q.percentile(etl_d, 0.95))
    assert a.slowest_steps[0].step == "load" and a.slowest_steps[0].workflow == "etl"
    assert a.slowest_steps[0].avg_duration == pytest.approx((2.0 + 2.0 + 9.0 + 9.0) / 4)
    top = a.retries_by_step[0]
    assert (top.workflow, top.step, top.retry_rate) == ("etl", "load", 0.5)
    assert sum(n for _, n in a.runs_per_hour) == 8
    assert all(h % 3600 == 0 for h, _ in a.runs_per_hour)
    assert q.analytics(store, since=0, until=1).runs == 0


def test_percentile_interpolates_like_postgresql():
    assert q.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert q.percentile([10], 0.95) == 10
    assert q.percentile([], 0.95) is None


# -- retention and audit log ------------------------------------------------------------------


def test_prune_removes_old_finished_runs_and_all_their_rows_in_batches(store):
    evs, lk = mixed_runs(12)
    r = RunEvents("still-running", 1_000_000.0).created()
    r.status("RUNNING").step("load")
    store.apply(evs + r.events, lk)
    assert q.prune(store, 60, now=2_000_000, dry_run=True).runs == 12
    res = q.prune(store, 60, now=2_000_000, batch_size=5)
    assert res.runs == 12 and res.batches == 3
    with store.connect() as conn:
        assert list(conn.execute(select(runs.c.id)).scalars()) == ["still-running"]
        for table in (events, step_logs, step_attempts, steps):
            ids = set(conn.execute(select(table.c.run_id)).scalars())
            assert ids <= {"still-running"}, table.name
        assert conn.execute(select(func.count()).select_from(run_tags)).scalar_one() == 0
    assert q.prune(store, 60, now=2_000_000).runs == 0


def test_prune_keeps_runs_that_finished_recently(store):
    evs, lk = mixed_runs(4)
    store.apply(evs, lk)
    assert q.prune(store, 86400 * 30, now=1_000_000 + 3600).runs == 0
    assert len(q.list_runs(store).items) == 4


def test_operator_actions_are_recorded_with_actor_reason_and_outcome(store):
    first = store.record_action(
        actor="alice", action="cancel", target_id="run1", reason="wrong inputs", ts=100.0
    )
    store.record_action(
        actor="bob",
        action="retry",
        target_id="run1",
        outcome="refused",
        detail={"status": "RUNNING"},
        ts=200.0,
    )
    store.record_action(actor="bob", action="pause", target_id="run2", ts=300.0)
    got = q.audit_entries(store, "run1")
    assert [(e["actor"], e["action"], e["outcome"]) for e in got] == [
        ("bob", "retry", "refused"),
        ("alice", "cancel", "ok"),
    ]
    assert got[1]["id"] == first and got[1]["reason"] == "wrong inputs"
    assert got[0]["detail"] == {"status": "RUNNING"}
    assert len(q.audit_entries(store)) == 3


def test_parse_duration_reads_units():
    assert q.parse_duration("30d") == 30 * 86400
    assert q.parse_duration("90m") == 5400
    assert q.parse_duration("45") == 45
    with pytest.raises(ValueError, match="like 30d"):
        q.parse_duration("soon")


def test_operator_actions_sent_through_the_event_stream_are_recorded_once(store):
    r = RunEvents("acted").created()
    r.emit(
        "operator_action",
        actor="carol",
        action="cancel",
        reason="stuck",
        outcome="ok",
        detail={"from": "RUNNING"},
    )
    store.apply(r.events)
    store.apply(r.events)
    (entry,) = q.audit_entries(store, "acted")
    assert (entry["actor"], entry["action"], entry["reason"], entry["outcome"]) == (
        "carol",
        "cancel",
        "stuck",
        "ok",
    )
    assert entry["detail"] == {"from": "RUNNING"} and entry["ts"] == r.events[-1].ts


def test_a_batch_of_log_lines_is_one_event_and_pages_line_by_line(store):
    import dataclasses

    from orchestrator.logbatch import log_event_data

    r = RunEvents("batched").created()
    for first in (0, 7):  # two flushed batches of 7 lines, as the step context sends them
        rows = [
            (
                1_000_000_000_000 + i,
                f"m{i}",
                "INFO" if i % 3 else "warning",
                "row",
                None,
                str(i),
                None,
            )
            for i in range(first, first + 7)
        ]
        r.events[-1:] = [dataclasses.replace(r.emit("log", "s"), data_json=log_event_data(rows))]
    store.apply(r.events)
    store.apply(r.events)  # applied twice: nothing changes
    assert len(q.events_after(store, "batched")) == 3  # run_created + two log events
    lines = q.logs(store, "batched", limit=100)
    assert [x.message for x in lines] == [f"m{i}" for i in range(14)]
    assert [(x.seq, x.line) for x in lines[5:9]] == [(2, 5), (2, 6), (3, 0), (3, 1)]
    assert lines[3].level == "WARNING" and lines[4].level == "INFO"
    assert (lines[4].entity_tag, lines[4].entity_id, lines[4].entity_route) == ("row", "4", None)
    assert lines[0].ts == pytest.approx(1_000_000.0)
    # A page may end inside a batch: the (seq, line) cursor resumes exactly there.
    page, seen = q.logs(store, "batched", limit=4), []
    while page:
        seen += page
        page = q.logs(store, "batched", after_seq=page[-1].seq, after_line=page[-1].line, limit=4)
    assert [x.message for x in seen] == [f"m{i}" for i in range(14)]
    assert q.run_detail(store, "batched", log_limit=3).logs_total == 14
    assert [x.message for x in q.run_detail(store, "batched", log_limit=3).logs] == [
        "m11",
        "m12",
        "m13",
    ]
