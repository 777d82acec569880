"""The reads the dashboard makes through orchestrator.audit.queries (the web's only way into the
audit store), on SQLite and on PostgreSQL alike (the ``store`` fixture): the run list page and
its tab counts, a run's newest logs and progress, recorded events with their stream position,
the users' audit log, analytics' overall retry rate and the totals of /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from orchestrator.audit import AuditStore
from orchestrator.audit import queries as q
from orchestrator.records import RunRecord
from tests.audit_helpers import RunEvents, mixed_runs, run_meta

pytest_plugins = ("tests.audit_fixtures",)

T0 = 1_000_000.0
NOW = T0 + 2_000.0  # the same UTC day as every run below
SLOW = 0.9


@pytest.fixture
def history(store: AuditStore) -> AuditStore:
    """Eight finished runs (mixed_runs) plus a RUNNING and a PENDING one, all with a 5 s SLA."""
    evs, lk = mixed_runs(8, t0=T0)
    live = RunEvents("live0000", T0 + 1_000).created("etl")
    live.status("RUNNING").step("load")
    lk.runs["live0000"] = RunRecord.from_hash(
        "live0000", run_meta("etl", ["load", "check", "save"], tags=["nightly"], sla=5.0)
    )
    waiting = RunEvents("wait0000", T0 + 1_100).created("report")
    lk.runs["wait0000"] = RunRecord.from_hash(
        "wait0000", run_meta("report", ["load"], sla=5.0, triggered_by="cron")
    )
    store.apply([*evs, *live.events, *waiting.events], lk)
    return store


def every_run(store: AuditStore) -> list[q.RunSummary]:
    return list(q.list_runs(store, limit=1000).items)


@contextmanager
def statements(store: AuditStore) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.split()[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def expected_counts(runs: list[q.RunSummary]) -> dict[str, Any]:
    """The tab counts, worked out in Python from the runs as list_runs reads them."""
    day = NOW - NOW % 86400
    live = [r for r in runs if r.status in q.ACTIVE + q.PENDING]
    today = [r for r in runs if r.finished_at is not None and r.finished_at >= day]
    judged = [r for r in today if r.sla_seconds and r.status in q.ENDED]
    met = [r for r in judged if r.status == "COMPLETED" and r.finished_at - r.created_at <= 5.0]
    return {
        "active": sum(r.status in q.ACTIVE for r in runs),
        "pending": sum(r.status in q.PENDING for r in runs),
        "slow": sum((NOW - r.created_at) >= SLOW * r.sla_seconds for r in live),
        "completed_today": sum(r.status == "COMPLETED" for r in today),
        "failed_today": sum(r.status in q.UNSUCCESSFUL for r in today),
        "sla_compliance_today": round(100.0 * len(met) / len(judged), 1),
    }


def walk(store: AuditStore, selection: q.RunSelection, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = None
    while True:
        page = q.run_list_page(store, selection, limit=limit, after=after, now=NOW)
        rows += page.rows
        if not page.more:
            return rows
        after = (rows[-1]["created_at"], rows[-1]["id"])


# -- the run list page ------------------------------------------------------------------------


def test_a_run_list_page_with_its_step_counts_newest_run_and_tab_counts_is_one_statement(history):
    runs = every_run(history)
    with statements(history) as seen:
        page = q.run_list_page(history, q.RunSelection(), limit=4, now=NOW, counts_slow=SLOW)
    assert len(seen) == 1
    assert [r["id"] for r in page.rows] == [r.id for r in runs[:4]] and page.more
    assert page.newest == max(r.created_at for r in runs)
    assert page.counts == expected_counts(runs) == q.tab_counts(history, NOW, SLOW)
    live = page.rows[1]
    assert live["id"] == "live0000" and live["status"] == "RUNNING"
    assert (live["total"], live["settled"]) == (3, 1)  # load COMPLETED, check and save PENDING
    assert live["workflow"] == "etl" and live["tags"] == ["nightly"] and live["sla_seconds"] == 5.0
    assert live["seq"] == q.get_run(history, "live0000").last_seq
    assert q.run_list_page(history, q.RunSelection(), limit=4, now=NOW).counts is None


def test_an_empty_page_still_says_the_newest_run_and_the_tab_counts(history):
    runs = every_run(history)
    with statements(history) as seen:
        page = q.run_list_page(
            history, q.RunSelection(search="nothing-like-it"), limit=5, now=NOW, counts_slow=SLOW
        )
    assert len(seen) == 2
    assert page.rows == [] and not page.more
    assert page.newest == max(r.created_at for r in runs)
    assert page.counts == expected_counts(runs)


def test_keyset_pages_cover_every_selected_run_once_newest_first(history):
    runs = every_run(history)
    assert [r["id"] for r in walk(history, q.RunSelection(), 3)] == [r.id for r in runs]
    cases = {
        q.RunSelection(statuses=("COMPLETED", "RUNNING")): lambda r: (
            r.status in ("COMPLETED", "RUNNING")
        ),
        q.RunSelection(statuses=()): lambda r: False,
        q.RunSelection(workflow="etl", tags=("nightly",)): lambda r: (
            r.workflow == "etl" and "nightly" in r.tags
        ),
        q.RunSelection(triggered_by="cron"): lambda r: r.triggered_by == "cron",
        q.RunSelection(since=T0 + 200, until=T0 + 500): lambda r: (
            T0 + 200 <= r.created_at < T0 + 500
        ),
        q.RunSelection(ids=("run001", "wait0000", "nope")): lambda r: (
            r.id in ("run001", "wait0000")
        ),
        q.RunSelection(search="RUN00"): lambda r: r.id.startswith("run00"),
        q.RunSelection(search="Repo"): lambda r: r.workflow == "report",
        q.RunSelection(slow=SLOW): lambda r: (
            ((r.finished_at or NOW) - r.created_at) >= SLOW * r.sla_seconds
        ),
    }
    for selection, wanted in cases.items():
        expected = [r.id for r in runs if wanted(r)]
        assert [r["id"] for r in walk(history, selection, 2)] == expected, selection


# -- one run ----------------------------------------------------------------------------------


def test_recent_logs_are_the_newest_lines_oldest_first_with_the_total(store):
    r = RunEvents("logs").created()
    for i in range(30):
        r.emit("log", "a" if i % 2 else "b", message=f"m{i}", entity_tag="item")
    store.apply(r.events)
    lines, total = q.recent_logs(store, "logs", 3)
    assert [x.message for x in lines] == ["m27", "m28", "m29"] and total == 30
    assert lines[0].step == "a" and lines[0].entity_tag == "item"
    assert q.recent_logs(store, "logs", 0) == ((), 30)
    assert q.recent_logs(store, "nothing", 5) == ((), 0)


def test_step_progress_is_reported_for_the_steps_that_reported_it(store):
    r = RunEvents("prog").created()
    r.emit("progress", "a", fraction=0.25, message="a quarter")
    r.emit("progress", "b", fraction=1.0)
    store.apply(r.events)
    assert q.step_progress(store, "prog") == {"a": (0.25, "a quarter"), "b": (1.0, None)}
    assert q.step_progress(store, "nothing") == {}


def test_recorded_events_say_where_in_the_stream_the_unrecorded_rest_begins(store):
    evs, lk = mixed_runs(1, t0=T0)
    store.apply(evs, lk)
    got = q.recorded_events(store, "run000", 5, limit=4)
    assert [e["seq"] for e in got.events] == [6, 7, 8, 9]
    assert got.events == q.events_after(store, "run000", 5, limit=4)
    assert got.stream_id == evs[8].stream_id
    caught_up = q.recorded_events(store, "run000", len(evs))
    assert caught_up.events == [] and caught_up.stream_id == evs[-1].stream_id
    assert q.recorded_events(store, "nothing", 0) == q.RecordedEvents([], None)


def test_audit_entries_can_be_limited_to_kinds_of_target(store):
    store.record_action(
        actor="ann", action="user_create", target_id="bob", target_type="user", ts=1
    )
    store.record_action(actor="ann", action="cancel", target_id="run1", ts=2)
    store.record_action(
        actor="ann", action="token_create", target_id="t1", target_type="token", ts=3
    )
    got = q.audit_entries(store, target_types=("user", "token"), limit=10)
    assert [(e["action"], e["target_id"]) for e in got] == [
        ("token_create", "t1"),
        ("user_create", "bob"),
    ]
    assert len(q.audit_entries(store, target_types=("user", "token"), limit=1)) == 1


# -- aggregates -------------------------------------------------------------------------------


def test_analytics_say_how_many_steps_ran_and_how_many_of_them_more_than_once(history):
    a = q.analytics(history, since=0, until=NOW)
    steps = [
        s for r in every_run(history) for s in q.run_detail(history, r.id).steps if s.attempts >= 1
    ]
    assert a.steps_started == len(steps)
    assert a.steps_retried == sum(s.attempts > 1 for s in steps) > 0
    assert a.retry_rate == a.steps_retried / a.steps_started
    assert q.analytics(history, since=0, until=1).retry_rate is None


def test_metric_totals_count_runs_durations_retries_and_failures_over_the_history(history):
    runs = every_run(history)
    details = [q.run_detail(history, r.id) for r in runs]
    bounds = (1.0, 5.0, 60.0)
    totals = q.metric_totals(history, run_bounds=bounds, step_bounds=bounds)

    tallies = {(t.workflow, t.status): t for t in totals.runs}
    assert sum(t.runs for t in totals.runs) == len(runs)
    for r in runs:
        assert tallies[(r.workflow, r.status)].runs >= 1
    assert sum(t.started for t in totals.runs) == sum(r.started_at is not None for r in runs)
    breached = [
        r
        for r in runs
        if r.duration is not None
        and r.status != "CANCELLED"
        and (r.status != "COMPLETED" or r.duration > r.sla_seconds)
    ]
    assert sum(t.sla_breached for t in totals.runs) == len(breached) > 0

    for h in totals.run_durations:
        (workflow,) = h.labels
        durations = [
            r.duration
            for r in runs
            if r.workflow == workflow and r.duration is not None and r.finished_at is not None
        ]
        assert (h.count, h.total) == (len(durations), pytest.approx(sum(durations)))
        assert h.at_most == tuple(sum(d <= b for d in durations) for b in bounds)

    attempts = [a for d in details for s in d.steps for a in s.history]
    (step_h,) = totals.step_durations
    assert step_h.labels == ("builtin", "echo")
    assert step_h.count == sum(a.duration is not None for a in attempts)
    assert totals.attempts == {
        ("builtin", "echo"): (
            sum(a.number > 1 for a in attempts),
            sum(a.status == "FAILED" for a in attempts),
        )
    }
    failed_steps = sum(s.status == "FAILED" for d in details for s in d.steps)
    assert totals.failed_steps == {("builtin", "echo"): failed_steps}
    assert failed_steps > 0
