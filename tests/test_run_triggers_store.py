"""How a run started, in the audit store on SQLite and PostgreSQL: the recorder projects
trigger_type, trigger_name and trigger_ref from the run's hot state; lists filter on the type;
/metrics' totals count started runs per trigger; migration 0010 adds the columns to a store
made at 0007 and takes them away again."""

from __future__ import annotations

import sqlalchemy as sa

from orchestrator.audit import AuditStore, queries
from orchestrator.audit.events import Lookups
from orchestrator.records import RunRecord
from tests.audit_helpers import RunEvents, run_meta
from tests.test_audit_web_tables import downgrade

pytest_plugins = ("tests.audit_fixtures",)

STARTS = [
    ("r_event", "event", "files.uploaded", "k-1"),
    ("r_sched", "schedule", "nightly", "2026-12-04T02:00:00Z"),
    ("r_cli", "cli", None, None),
]


def _record(store: AuditStore) -> None:
    lk = Lookups()
    evs = []
    for i, (rid, kind, name, ref) in enumerate(STARTS):
        r = RunEvents(rid, 1_000_000.0 + i).created("trig")
        meta = {**run_meta("trig", ["a"]), "trigger_type": kind}
        meta.update({k: v for k, v in (("trigger_name", name), ("trigger_ref", ref)) if v})
        lk.runs[rid] = RunRecord.from_hash(rid, meta)
        r.status("RUNNING").step("a").status("COMPLETED")
        evs.extend(r.events)
    store.apply(evs, lk)


def test_the_store_keeps_how_each_run_started_and_filters_on_it(store: AuditStore) -> None:
    _record(store)
    got = {
        r.id: (r.trigger_type, r.trigger_name, r.trigger_ref)
        for r in queries.list_runs(store).items
    }
    assert got == {rid: (kind, name, ref) for rid, kind, name, ref in STARTS}
    assert [r.id for r in queries.list_runs(store, trigger_type="event").items] == ["r_event"]
    assert queries.list_runs(store, trigger_type="api").items == ()
    page = queries.run_list_page(
        store, queries.RunSelection(trigger_type="schedule"), limit=10, now=2_000_000.0
    )
    assert [(r["id"], r["trigger_name"], r["trigger_ref"]) for r in page.rows] == [
        ("r_sched", "nightly", "2026-12-04T02:00:00Z")
    ]
    detail = queries.get_run(store, "r_event")
    assert (detail.trigger_name, detail.trigger_ref) == ("files.uploaded", "k-1")
    totals = queries.metric_totals(store, run_bounds=(1.0,), step_bounds=(1.0,))
    started = {t.trigger: t.started for t in totals.runs}
    assert started == {"event": 1, "schedule": 1, "cli": 1}


def test_migration_0010_adds_the_trigger_columns_and_downgrade_removes_them(
    store_url: str,
) -> None:
    store = AuditStore(store_url)
    try:
        store.upgrade("0007")
        cols = {c["name"] for c in sa.inspect(store.engine).get_columns("cf_runs")}
        assert "trigger_name" not in cols and "trigger_type" in cols
        store.upgrade()
        cols = {c["name"] for c in sa.inspect(store.engine).get_columns("cf_runs")}
        assert {"trigger_name", "trigger_ref"} <= cols
        _record(store)
        assert queries.get_run(store, "r_sched").trigger_name == "nightly"
        downgrade(store, "0007")
        cols = {c["name"] for c in sa.inspect(store.engine).get_columns("cf_runs")}
        assert "trigger_name" not in cols and "trigger_ref" not in cols
    finally:
        store.dispose()
