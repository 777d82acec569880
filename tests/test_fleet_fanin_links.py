"""Issue 17 item 10: the task history links the tasks of fan-in steps (Celery chord bodies) to
their run and step, stores NULL rather than the text 'None' when it cannot, and migration 0006
repairs the rows older versions wrote — on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from orchestrator.audit import AuditStore
from orchestrator.audit.models import celery_tasks, step_attempts
from orchestrator.audit.store import HEAD
from orchestrator.fleet.events import link_step_tasks, merge_event, run_and_step, write_batch
from tests.conftest import WorkerProcess, make_settings
from tests.test_fleet_inspect import make_app
from tests.web_helpers import VIEWER, Api, wait_for, wait_recorded

pytest_plugins = ("tests.audit_fixtures",)

# A chord body's arguments as Celery's task events show them: the branches' outcomes as one list
# (the run header "@" rides in them), then the step's spec.
CHORD_BODY = (
    "([{'@': ['r9', 1, 'media'], 'images': ['COMPLETED', {'n': 5}]}, "
    "{'@': ['r9', 1, 'media'], 'videos': ['COMPLETED', {'n': 3}]}], "
    "['build_manifest', 'manifest', 'build', 0, {'deps': ['images', 'videos']}])"
)


def test_a_fan_in_steps_arguments_name_its_run_and_step() -> None:
    assert run_and_step(CHORD_BODY) == ("r9", "build_manifest")


def test_a_missing_id_is_none_never_the_text_none() -> None:
    assert run_and_step("({'@': ['None', 1]}, ['None', 'p', 'm', 0])") == (None, None)
    assert run_and_step("({'run': 'None', 'x': 1") == (None, None)  # a cut repr
    row = merge_event(
        None, {"type": "task-received", "uuid": "u1", "args": "({'run': None},)"}, 1.0
    )
    assert row["run_id"] is None and row["step_id"] is None


def test_a_step_task_whose_repr_was_cut_takes_its_run_and_step_from_the_recorded_attempt(
    store: AuditStore,
) -> None:
    cut = CHORD_BODY[:60] + "..."  # Celery cut the repr before the spec
    with store.begin() as conn:
        conn.execute(
            insert(step_attempts),
            {
                "run_id": "r9",
                "step_id": "build_manifest",
                "attempt": 1,
                "status": "COMPLETED",
                "task_id": "t-cut",
            },
        )
    ev = {
        "type": "task-received",
        "uuid": "t-cut",
        "name": "canvasflow.step",
        "args": cut,
        "timestamp": time.time(),
    }
    assert write_batch(store.engine, [ev]) == 1
    with store.connect() as conn:
        got = conn.execute(
            select(celery_tasks.c.run_id, celery_tasks.c.step_id).where(
                celery_tasks.c.uuid == "t-cut"
            )
        ).one()
    assert tuple(got) == ("r9", "build_manifest")


def test_a_step_task_written_before_its_attempt_was_recorded_is_linked_later(
    store: AuditStore,
) -> None:
    ev = {
        "type": "task-succeeded",
        "uuid": "t-late",
        "name": "canvasflow.step",
        "timestamp": time.time(),
    }
    received = {**ev, "type": "task-received", "args": CHORD_BODY[:60] + "..."}
    write_batch(store.engine, [received, ev])
    assert link_step_tasks(store.engine, time.time() - 60) == 0  # nothing recorded yet
    with store.begin() as conn:
        conn.execute(
            insert(step_attempts),
            {
                "run_id": "r9",
                "step_id": "fh_manifest",
                "attempt": 1,
                "status": "COMPLETED",
                "task_id": "t-late",
            },
        )
    assert link_step_tasks(store.engine, time.time() - 60) == 1
    with store.connect() as conn:
        got = conn.execute(
            select(celery_tasks.c.run_id, celery_tasks.c.step_id).where(
                celery_tasks.c.uuid == "t-late"
            )
        ).one()
    assert tuple(got) == ("r9", "fh_manifest")


# ---------------------------------------------------------------------------------------------
# A real worker runs a fan-in workflow; every step task's row names its run and step
# ---------------------------------------------------------------------------------------------

BIG = "x" * 1500  # outputs this long make Celery cut the chord body's args repr at 1 KB


def fan_in_wf(wid: str, big: bool) -> dict[str, Any]:
    out = {"blob": BIG} if big else {"n": 1}
    return {
        "id": wid,
        "steps": [
            {"id": "src", "plugin": "builtin", "method": "echo", "params": {"x": 1}},
            {
                "id": "left",
                "plugin": "builtin",
                "method": "echo",
                "params": out,
                "depends_on": ["src"],
            },
            {
                "id": "right",
                "plugin": "builtin",
                "method": "echo",
                "params": out,
                "depends_on": ["src"],
            },
            {
                "id": "build_manifest",
                "plugin": "builtin",
                "method": "echo",
                "depends_on": ["left", "right"],
                "params": {"l": "{{ steps.left.output }}", "r": "{{ steps.right.output }}"},
            },
            {
                "id": "report",
                "plugin": "builtin",
                "method": "echo",
                "depends_on": ["build_manifest"],
                "params": {"m": "{{ steps.build_manifest.output }}"},
            },
        ],
    }


@pytest.fixture(scope="module")
def fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from orchestrator import Client

    tmp: Path = tmp_path_factory.mktemp("fanin")
    settings = make_settings(
        redis_url,
        key_prefix=f"fn{uuid.uuid4().hex[:8]}",
        database_url=f"sqlite:///{tmp / 'audit.db'}",
    )
    app = make_app(settings)
    wait_for(lambda: app.extensions["canvasflow_fleet"].monitor.connected, 20, "event receiver")
    worker = WorkerProcess(settings, f"fn{uuid.uuid4().hex[:4]}", concurrency=2, log_dir=tmp)
    client = Client(settings)
    try:
        worker.wait_ready()
        yield app, client
    finally:
        worker.stop()
        client.close()
        app.extensions["canvasflow"].stop()


@pytest.mark.integration
@pytest.mark.parametrize("big", [False, True], ids=["short-args", "args-cut-at-1kb"])
def test_the_task_rows_of_steps_after_a_fan_in_carry_their_run_and_step(fleet, big) -> None:
    app, client = fleet
    rid = client.submit(fan_in_wf(f"fanin_{int(big)}", big)).id
    wait_recorded(app.extensions["canvasflow"].store, rid, {"COMPLETED", "FAILED"}, timeout=90)
    api = Api(app, VIEWER)
    want = {"src", "left", "right", "build_manifest", "report"}

    def linked() -> Any:
        rows = api.get(f"/inspect/tasks?run={rid}&limit=50").json["tasks"]
        return {t["step_id"] for t in rows if t["state"] == "SUCCESS"} >= want and rows

    rows = wait_for(linked, 60, "every step task linked to the run")
    fan_in = [t for t in rows if t["step_id"] in ("build_manifest", "report")]
    assert fan_in and all(t["run_id"] == rid and t["name"] == "canvasflow.step" for t in fan_in)
    # and nothing of this fleet is stored as the text 'None'
    with app.extensions["canvasflow"].store.connect() as conn:
        bad = conn.execute(
            select(celery_tasks.c.uuid).where(
                (celery_tasks.c.run_id == "None") | (celery_tasks.c.step_id == "None")
            )
        ).all()
    assert bad == []


# ---------------------------------------------------------------------------------------------
# Migration 0006 repairs the rows older versions wrote (SQLite and PostgreSQL: store_url)
# ---------------------------------------------------------------------------------------------


def task_row(uid: str, **extra: Any) -> dict[str, Any]:
    return {
        "uuid": uid,
        "name": "canvasflow.step",
        "state": "SUCCESS",
        "state_ts": 1.0,
        "ts": 1.0,
        "retries": 0,
        "updated_at": 1.0,
        **extra,
    }


def test_migration_0006_turns_none_text_into_null_and_fills_recoverable_links(
    store_url: str,
) -> None:
    s = AuditStore(store_url)
    try:
        assert s.upgrade("0005") == "0005"
        with s.begin() as conn:
            conn.execute(
                insert(celery_tasks),
                [
                    # a chord body the old reader could not link: its args name both
                    task_row("t-body", args=CHORD_BODY, run_id="None", step_id="build_manifest"),
                    # its repr was cut before the spec: the attempt recorded under its id knows
                    task_row("t-cut", args=CHORD_BODY[:60] + "...", run_id="None", step_id="None"),
                    # nothing to recover it from: NULL, not 'None'
                    task_row("t-lost", args="(...)", run_id="None", step_id="None"),
                    # a linked row and a task of another app stay as they are
                    task_row("t-ok", args="x", run_id="r1", step_id="a"),
                    task_row("t-other", name="app.add", args="(1, 2)", run_id=None, step_id=None),
                ],
            )
            conn.execute(
                insert(step_attempts),
                {
                    "run_id": "r9",
                    "step_id": "report",
                    "attempt": 1,
                    "status": "COMPLETED",
                    "task_id": "t-cut",
                },
            )
        assert s.upgrade() == HEAD
        with s.connect() as conn:
            got = {
                r.uuid: (r.run_id, r.step_id)
                for r in conn.execute(
                    select(celery_tasks.c.uuid, celery_tasks.c.run_id, celery_tasks.c.step_id)
                )
            }
        assert got == {
            "t-body": ("r9", "build_manifest"),
            "t-cut": ("r9", "report"),
            "t-lost": (None, None),
            "t-ok": ("r1", "a"),
            "t-other": (None, None),
        }
    finally:
        s.dispose()


def test_migration_0006_reads_a_big_task_table_a_page_at_a_time(store_url: str) -> None:
    from sqlalchemy import event

    n = 1_250  # more than two of the migration's pages (500 rows)
    s = AuditStore(store_url)
    selects: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        flat = " ".join(statement.split()).lower()
        if flat.startswith("select") and "from cf_celery_tasks" in flat:
            selects.append(flat)

    try:
        assert s.upgrade("0005") == "0005"
        with s.begin() as conn:
            conn.execute(
                insert(celery_tasks),
                [
                    task_row(f"t{i:05d}", args=CHORD_BODY, run_id="None", step_id="None")
                    for i in range(n)
                ],
            )
        # This store's engine only: in the full suite other stores in the process (a dashboard
        # fixture's task writer) read cf_celery_tasks of their own databases meanwhile.
        event.listen(s.engine, "before_cursor_execute", seen)
        try:
            assert s.upgrade() == HEAD
        finally:
            event.remove(s.engine, "before_cursor_execute", seen)
        with s.connect() as conn:
            got = conn.execute(
                select(celery_tasks.c.run_id, celery_tasks.c.step_id).distinct()
            ).all()
        assert got == [("r9", "build_manifest")]  # every page repaired, across page ends
        # Never the whole table in one read: each read of it is one bounded page.
        assert len(selects) >= 3 and all(" limit " in q for q in selects), selects
    finally:
        s.dispose()
