"""Child runs and run results in the audit store (SQLite and PostgreSQL): the recorder writes
``parent_run``/``parent_step``/``result`` from real runs; run lists hide children by default,
include them or list only them, and list the children of a run."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from orchestrator import Client, Workflow
from orchestrator.audit import AuditStore
from orchestrator.audit import queries as q
from orchestrator.audit.recorder import Recorder
from tests.test_recorder import new_recorder, recorders  # noqa: F401  (fixture)
from tests.test_subworkflows import child_wf, uid, wait_for

pytest_plugins = ("tests.audit_fixtures",)
pytestmark = pytest.mark.integration


def test_the_store_records_parents_children_and_results(
    client: Client,
    store: AuditStore,
    recorders: list[Recorder],  # noqa: F811
) -> None:
    rec = new_recorder(recorders, store, client.redis, client.keys, trim=False)
    stop = threading.Event()
    thread = rec.start_thread(stop)
    tag = f"t{uuid.uuid4().hex[:8]}"
    try:
        child = child_wf(client, uid("storechild"))
        parent = (
            Workflow(uid("storeparent"), tags=[tag])
            .subworkflow("one", child, inputs={"n": 1})
            .subworkflow("two", child, inputs={"n": 2})
            .outputs(total="{{ steps.one.output.doubled + steps.two.output.doubled }}")
        )
        run = client.submit(parent)
        assert run.wait(60).status == "COMPLETED"
        kids = {k.id for k in run.children()}
        wait_for(lambda: rec.lag().caught_up and len(q.children_of(store, run.id)) == 2, 60)
        wait_for(lambda: q.get_run(store, run.id).status == "COMPLETED", 30)
    finally:
        stop.set()
        thread.join(10)
    top = q.get_run(store, run.id)
    assert top.result == {"total": 6} and top.parent_run is None
    children = q.children_of(store, run.id)
    assert {c.id for c in children} == kids
    assert {c.parent_step for c in children} == {"one", "two"}
    assert all(c.parent_run == run.id for c in children)
    assert sorted(c.result["doubled"] for c in children) == [2, 4]
    # The children carry the parent's tags: a list filtered by them shows the difference.
    listed = {r.id for r in q.list_runs(store, tags=[tag], limit=100).items}
    assert listed == {run.id}
    assert {r.id for r in q.list_runs(store, tags=[tag], children="include").items} == {
        run.id,
        *kids,
    }
    assert {r.id for r in q.list_runs(store, tags=[tag], children="only").items} == kids
    assert {r.id for r in q.list_runs(store, parent=run.id).items} == kids
    page = q.run_list_page(store, q.RunSelection(tags=(tag,)), limit=50, now=time.time())
    assert [r["id"] for r in page.rows] == [run.id]
    page = q.run_list_page(store, q.RunSelection(parent=run.id), limit=50, now=time.time())
    assert {r["id"] for r in page.rows} == kids
    assert {r["parent_step"] for r in page.rows} == {"one", "two"}
    with pytest.raises(ValueError, match="children: must be one of hide, include, only"):
        q.list_runs(store, children="all")
