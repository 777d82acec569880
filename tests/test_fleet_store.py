"""The Celery task history table (fleet inspection) as part of the audit store: its migration,
its writes and pages, and its pruning, on SQLite and on PostgreSQL alike (the ``store`` fixture)."""

from __future__ import annotations

import time

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import MetaData, func, insert, inspect, select

from orchestrator.audit import AuditStore
from orchestrator.audit.models import celery_tasks, metadata
from orchestrator.audit.store import HEAD, VERSION_TABLE, prune_celery_tasks
from orchestrator.fleet.events import (
    MERGE_CHUNK,
    TaskQuery,
    get_task,
    list_tasks,
    merge_event,
    write_batch,
)

pytest_plugins = ("tests.audit_fixtures",)


def row(uuid: str, ts: float, **extra: object) -> dict[str, object]:
    return {
        "uuid": uuid,
        "name": "t",
        "state": "SUCCESS",
        "state_ts": ts,
        "ts": ts,
        "retries": 0,
        "updated_at": ts,
        **extra,
    }


def count(store: AuditStore) -> int:
    with store.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(celery_tasks)).scalar_one())


def test_the_task_history_table_comes_with_the_migrations(store: AuditStore) -> None:
    assert store.revision() == HEAD
    insp = inspect(store.engine)
    assert insp.has_table("cf_celery_tasks")
    assert {ix["name"] for ix in insp.get_indexes("cf_celery_tasks")} >= {
        "ix_cf_celery_tasks_ts",
        "ix_cf_celery_tasks_state_ts",
        "ix_cf_celery_tasks_worker_state",
        "ix_cf_celery_tasks_run",
    }


def test_upgrade_keeps_a_task_history_table_that_an_older_web_process_created(
    store_url: str,
) -> None:
    s = AuditStore(store_url)
    try:
        s.upgrade("0001")
        # before 0002 the web process created the table itself (create_all, no naming convention)
        old = MetaData()
        celery_tasks.to_metadata(old)
        old.create_all(s.engine)
        with s.begin() as conn:
            conn.execute(insert(celery_tasks), [row("kept", 1.0)])
        assert s.upgrade() == HEAD
        assert count(s) == 1
        with s.engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            assert compare_metadata(ctx, metadata) == []
    finally:
        s.dispose()


def test_events_are_folded_into_rows_and_paged_newest_first(store: AuditStore) -> None:
    sent = [
        {
            "type": "task-sent",
            "uuid": f"u{i}",
            "timestamp": 100.0 + i,
            "name": "canvasflow.merge",
            "args": "({}, {})",
            "kwargs": "{}",
            "queue": "default",
        }
        for i in range(5)
    ]
    done = [
        {
            "type": "task-succeeded",
            "uuid": f"u{i}",
            "timestamp": 200.0 + i,
            "hostname": "w@h",
            "result": "{}",
            "runtime": 0.01,
        }
        for i in range(3)
    ]
    assert write_batch(store.writer, sent, now=300.0) == 5
    assert write_batch(store.writer, done, now=301.0) == 3  # updates of rows written before
    first, cursor = list_tasks(store.engine, TaskQuery(limit=2))
    assert [t["uuid"] for t in first] == ["u4", "u3"] and cursor
    rest, end = list_tasks(store.engine, TaskQuery(limit=10, cursor=cursor))
    assert [t["uuid"] for t in rest] == ["u2", "u1", "u0"] and end is None
    ok, _ = list_tasks(store.engine, TaskQuery(state=["SUCCESS"], worker="w@h"))
    assert {t["uuid"] for t in ok} == {"u0", "u1", "u2"}
    detail = get_task(store.engine, "u1")
    assert detail is not None and (detail["state"], detail["sent_at"], detail["succeeded_at"]) == (
        "SUCCESS",
        101.0,
        201.0,
    )


def test_a_batch_keeps_every_value_exactly_as_merged_on_insert_and_on_update(
    store: AuditStore,
) -> None:
    # PostgreSQL receives a batch as one JSON document (fleet_events._PG_INSERT / _PG_UPDATE):
    # quotes, backslashes, non-ASCII text, NULLs and floats must come back as merged in Python.
    args = "({'@': ['run\\x', 1]}, ['st\"ep', 'p', 'm', 0])  — é ✓ 'quoted'"
    sent = [
        {
            "type": "task-sent",
            "uuid": f"v{i}",
            "timestamp": 1_700_000_000.123456 + i / 7,
            "name": "canvasflow.step",
            "args": args,
            "kwargs": "{'k': None}",
            "queue": "io",
            "retries": i,
            "eta": None,
        }
        for i in range(120)
    ]
    done = [
        {
            "type": "task-succeeded",
            "uuid": f"v{i}",
            "timestamp": 1_700_000_100.000001 + i,
            "hostname": "w@h",
            "result": "{'out': \"\\n\"}",
            "runtime": 0.1 + i / 3,
        }
        for i in range(0, 120, 2)
    ]
    expected: dict[str, dict[str, object]] = {}
    for ev in sent + done:
        expected[ev["uuid"]] = merge_event(expected.get(ev["uuid"]), ev, 5.0)
    pauses: list[int] = []
    assert write_batch(store.writer, sent, now=5.0, pause=lambda: pauses.append(1)) == 120
    assert write_batch(store.writer, done, now=5.0) == 60
    assert len(pauses) == 120 // MERGE_CHUNK
    with store.connect() as conn:
        got = {r.uuid: dict(r._mapping) for r in conn.execute(select(celery_tasks))}
    assert got == expected


def test_prune_removes_task_history_older_than_the_cutoff_in_batches(store: AuditStore) -> None:
    with store.begin() as conn:
        conn.execute(
            insert(celery_tasks),
            [row(f"old{i}", 100.0 + i) for i in range(7)]
            + [row("new0", 10_000.0), row("new1", 10_001.0)],
        )
    assert prune_celery_tasks(store.writer, 1_000.0, dry_run=True) == 7
    assert count(store) == 9
    assert prune_celery_tasks(store.writer, 1_000.0, batch_size=3) == 7
    with store.connect() as conn:
        assert sorted(conn.execute(select(celery_tasks.c.uuid)).scalars()) == ["new0", "new1"]
    assert prune_celery_tasks(store.writer, 1_000.0) == 0


def test_canvasflow_prune_older_than_also_prunes_the_task_history(tmp_path) -> None:
    from orchestrator.cli.main import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    s = AuditStore(url)
    s.upgrade()
    now = time.time()
    with s.begin() as conn:
        conn.execute(
            insert(celery_tasks),
            [row(f"old{i}", now - 3 * 86400) for i in range(3)] + [row("new", now)],
        )
    s.dispose()
    runner = CliRunner()
    dry = runner.invoke(
        main,
        ["prune", "--older-than", "1d", "--dry-run"],
        env={"CANVASFLOW_DATABASE_URL": url},
        catch_exceptions=False,
    )
    assert (
        dry.exit_code == 0 and "3 Celery tasks" in dry.output and "would be removed" in dry.output
    )
    res = runner.invoke(
        main,
        ["prune", "--older-than", "1d", "--batch-size", "2"],
        env={"CANVASFLOW_DATABASE_URL": url},
        catch_exceptions=False,
    )
    assert res.exit_code == 0 and "removed 3 Celery tasks" in res.output, res.output
    s = AuditStore(url)
    with s.connect() as conn:
        assert list(conn.execute(select(celery_tasks.c.uuid)).scalars()) == ["new"]
    s.dispose()
