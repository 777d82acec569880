"""What the audit store records of runs under a concurrency limit (SQLite and PostgreSQL): a
run cancel_newest ended at once is CANCELLED with its steps CANCELLED and its reason, a run that
waited has its creation before its start, and the run cancel_in_progress cancelled says who took
its slot in its operator log. Real Redis, the session's worker, the real recorder."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from orchestrator import Client, Workflow
from orchestrator.audit import AuditStore, queries
from orchestrator.audit.recorder import Recorder

pytest_plugins = ("tests.audit_fixtures",)
pytestmark = pytest.mark.integration


def drain(store: AuditStore, client: Client) -> None:
    rec = Recorder(
        store, client.redis, client.keys, group=f"g-{uuid.uuid4().hex[:8]}", start_id="0", block=0.1
    )
    rec.setup()
    try:
        rec.drain()
    finally:
        try:
            rec.r.xgroup_destroy(rec.stream, rec.group)
        except (redis.ResponseError, AttributeError):
            pass


def test_the_audit_store_records_runs_held_back_and_cancelled_by_a_limit(
    client: Client, store: AuditStore
) -> None:
    wid = f"conc-audit-{uuid.uuid4().hex[:6]}"
    nap = Workflow(wid).step("nap", "builtin", "sleep", params={"seconds": "{{ inputs.s }}"})
    newest = nap.concurrency(1, strategy="cancel_newest")
    holder = client.submit(newest, inputs={"s": 1})
    refused = client.submit(newest, inputs={"s": 1})
    assert holder.wait(30).status == "COMPLETED"
    queued = [client.submit(nap.concurrency(1), inputs={"s": 0.3}) for _ in range(2)]
    snaps = [r.wait(30) for r in queued]
    fresh = Workflow(f"{wid}-cip").step("nap", "builtin", "sleep", params={"seconds": 30})
    old = client.submit(fresh.concurrency(1, strategy="cancel_in_progress"))
    new = client.submit(fresh.concurrency(1, strategy="cancel_in_progress"))
    assert old.wait(60).status == "CANCELLED"
    client.control.cancel(new.id)
    assert new.wait(60).status == "CANCELLED"
    drain(store, client)

    d = queries.run_detail(store, refused.id)
    assert d.run.status == "CANCELLED"
    assert (
        d.run.error == f"cancelled: every slot in {wid} is taken (1 active; strategy cancel_newest)"
    )
    assert [(s.id, s.status) for s in d.steps] == [("nap", "CANCELLED")]
    second = queries.run_detail(store, queued[1].id).run
    assert second.status == "COMPLETED"
    assert second.started_at is not None and second.started_at >= snaps[0].finished_at  # type: ignore[operator]
    actions: list[Any] = queries.audit_entries(store, old.id, limit=10)
    cancel = [a for a in actions if a["action"] == "cancel"]
    assert cancel and cancel[0]["actor"] == "concurrency"
    assert new.id in cancel[0]["reason"] and "cancel_in_progress" in cancel[0]["reason"]
