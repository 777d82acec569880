"""The run list (web/runs.py RunViews) composed from the audit store and the Redis hot state, on
SQLite and PostgreSQL: which runs, in which order, with which live fields, page after page.

The runs are written straight into Redis and SQL (no worker, no recorder), so each source's part
is known: finished runs only in SQL, runs in both whose hot state is newer than their row, and
runs submitted after the newest row the recorder wrote (only in Redis).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import insert

from orchestrator import Client
from orchestrator.audit import AuditStore
from orchestrator.audit.models import runs as runs_table
from orchestrator.audit.models import steps as steps_table
from orchestrator.engine.states import Move, RunStatus
from orchestrator.keys import step_field
from orchestrator.records import RunRecord
from tests.conftest import make_settings
from web.runs import RunFilter, RunViews

pytest_plugins = ("tests.audit_fixtures",)
pytestmark = pytest.mark.integration

STEPS = ["s0", "s1", "s2"]


@pytest.fixture
def views(redis_url: str, store: AuditStore) -> Iterator[tuple[RunViews, dict[str, Any]]]:
    client = Client(make_settings(redis_url, database_url=str(store.url)))
    seeded = seed(client, store)
    try:
        yield RunViews(client, store), seeded
    finally:
        keys = list(client.redis.scan_iter(f"{client.keys.prefix}:*"))
        if keys:
            client.redis.delete(*keys)
        client.close()


def sql_row(rid: str, status: str, created: float, **extra: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "workflow_id": "listed",
        "version": "1",
        "name": "Listed",
        "status": status,
        "status_seq": 3,
        "priority": "normal",
        "tags": json.dumps(["t"]),
        "triggered_by": "test",
        "trigger_type": "api",
        "sla_seconds": None,
        "created_at": created,
        "last_seq": 3,
        "event_count": 3,
        "updated_at": created,
        **extra,
    }


def hot_run(client: Client, rid: str) -> float:
    fields = {
        "workflow": "listed",
        "version": "1",
        "name": "Listed",
        "definition": "{}",
        "inputs": "{}",
        "priority": "normal",
        "tags": json.dumps(["t"]),
        "triggered_by": "test",
        "trigger_type": "api",
        "sla_seconds": "",
    }
    client.state.create(RunRecord.from_hash(rid, fields), STEPS)
    return float(client.redis.hget(client.keys.run(rid), "created_at"))


def seed(client: Client, store: AuditStore) -> dict[str, Any]:
    now = time.time()
    out: dict[str, Any] = {"created": {}, "settled": {}}
    rows, step_rows = [], []
    # Six finished runs, only in SQL (their hot state expired): progress comes from their steps.
    for i in range(6):
        rid = f"sql{i:013d}"
        created = now - 600 + i
        status = "FAILED" if i == 2 else "COMPLETED"
        sla = {0: 0.5, 1: 0.5, 3: 10.0}.get(i)  # two breached (1 s runs), one met
        rows.append(
            sql_row(
                rid,
                status,
                created,
                started_at=created,
                finished_at=created + 1,
                duration=1.0,
                sla_seconds=sla,
            )
        )
        settled = 2 if i == 2 else 3
        for k, sid in enumerate(STEPS):
            step_rows.append(
                {
                    "run_id": rid,
                    "step_id": sid,
                    "position": k,
                    "attempts": 1,
                    "status": "COMPLETED" if k < settled else "PENDING",
                }
            )
        out["created"][rid], out["settled"][rid] = created, settled
    # Four runs in both: SQL still says RUNNING; Redis has moved on for two of them.
    for i in range(4):
        rid = f"both{i:012d}"
        created = hot_run(client, rid)
        client.state.transition(
            rid, Move.BEGIN, RunStatus.RUNNING, fields={"started_at": f"{created:.6f}"}
        )
        if i < 2:
            client.state.transition(
                rid,
                Move.SETTLE,
                RunStatus.COMPLETED,
                fields={"finished_at": f"{created + 1:.6f}", "settled": "3"},
            )
        else:
            client.redis.hset(client.keys.steps(rid), step_field("s1", "status"), "RUNNING")
        rows.append(
            sql_row(rid, "RUNNING", created, started_at=created, finished_at=None, duration=None)
        )
        out["created"][rid] = created
    with store.begin() as conn:
        conn.execute(insert(runs_table), rows)
        conn.execute(insert(steps_table), step_rows)
    # Three runs the recorder has not written yet: newer than every SQL row, only in Redis.
    for i in range(3):
        rid = f"hot{i:013d}"
        created = hot_run(client, rid)
        if i:
            client.state.transition(
                rid, Move.BEGIN, RunStatus.RUNNING, fields={"started_at": f"{created:.6f}"}
            )
            client.redis.hset(client.keys.steps(rid), step_field("s0", "status"), "RUNNING")
        out["created"][rid] = created
    out["newest_first"] = sorted(out["created"], key=lambda r: (out["created"][r], r), reverse=True)
    return out


def walk(views: RunViews, flt: RunFilter, limit: int) -> list[dict[str, Any]]:
    items, cursor = [], None
    while True:
        page = views.list(flt, limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            return items
        assert page.items, "a cursor after an empty page"


def test_every_run_is_listed_once_newest_first_across_pages_of_any_size(views) -> None:
    v, seeded = views
    for limit in (1, 2, 5, 50):
        got = walk(v, RunFilter(), limit)
        assert [r["id"] for r in got] == seeded["newest_first"], limit


def test_the_hot_state_wins_over_a_stale_row_and_finished_runs_show_their_recorded_progress(
    views,
) -> None:
    v, seeded = views
    by_id = {r["id"]: r for r in v.list(RunFilter(), limit=50).items}
    assert {rid: r["status"] for rid, r in by_id.items()} == {
        **{f"sql{i:013d}": "FAILED" if i == 2 else "COMPLETED" for i in range(6)},
        "both000000000000": "COMPLETED",
        "both000000000001": "COMPLETED",
        "both000000000002": "RUNNING",
        "both000000000003": "RUNNING",
        "hot0000000000000": "PENDING",
        "hot0000000000001": "RUNNING",
        "hot0000000000002": "RUNNING",
    }
    for rid, settled in seeded["settled"].items():
        assert (by_id[rid]["progress"]["settled"], by_id[rid]["progress"]["total"]) == (settled, 3)
    assert by_id["both000000000002"]["progress"]["current_steps"] == ["s1"]
    assert by_id["hot0000000000001"]["progress"]["current_steps"] == ["s0"]
    assert by_id["sql0000000000000"]["progress"]["current_steps"] == []
    assert by_id["both000000000000"]["progress"]["settled"] == 3
    assert by_id["hot0000000000000"]["workflow"] == {
        "id": "listed",
        "name": "Listed",
        "version": "1",
    }
    assert by_id["hot0000000000000"]["tags"] == ["t"]


def test_tabs_filter_by_the_recorded_status_and_merge_in_the_unrecorded_runs_that_match(
    views,
) -> None:
    v, seeded = views
    active = [r["id"] for r in walk(v, RunFilter(view="active"), 2)]
    # SQL's RUNNING rows (two of which Redis has since completed) and the unrecorded RUNNING runs.
    assert active == [
        rid
        for rid in seeded["newest_first"]
        if rid.startswith("both") or rid in ("hot0000000000001", "hot0000000000002")
    ]
    assert [r["id"] for r in walk(v, RunFilter(view="pending"), 50)] == ["hot0000000000000"]
    assert [r["id"] for r in walk(v, RunFilter(view="failed"), 50)] == ["sql0000000000002"]
    assert [r["id"] for r in v.list(RunFilter(search="sql0000000000003"), limit=5).items] == [
        "sql0000000000003"
    ]
    assert [
        r["id"]
        for r in v.list(RunFilter(ids=("both000000000001", "sql0000000000004")), limit=5).items
    ] == ["both000000000001", "sql0000000000004"]


def test_the_tab_counts_come_from_the_audit_store_with_a_page_or_without_one(views) -> None:
    v, _ = views
    counts = v.counts()
    assert (counts["active"], counts["pending"], counts["slow"]) == (4, 0, 0)
    if time.time() % 86400 > 700:  # the seeded runs finished today (UTC)
        assert (counts["completed_today"], counts["failed_today"]) == (5, 1)
        assert counts["sla_compliance_today"] == 33.3
    # Asked for with a page, they come in the page's statement; with an empty page, on their own.
    for flt in (
        RunFilter(),
        RunFilter(view="active"),
        RunFilter(view="pending"),
        RunFilter(search="nothing"),
    ):
        assert v.list(flt, limit=2, with_counts=True).counts == counts
    assert v.list(RunFilter(), limit=2).counts is None
