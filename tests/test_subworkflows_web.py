"""Child runs over HTTP: the run list hides them by default, includes them, lists only them, or
the children of one run; ``/runs/<id>/children``; the result and the parent in run summaries.
Real worker, real Redis, the in-process app with its recorder on SQLite."""

from __future__ import annotations

import uuid

import pytest

from orchestrator import Workflow
from tests.test_subworkflows import child_wf
from tests.web_helpers import VIEWER, Api, wait_for

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


def test_child_runs_over_http(web_app, orchestrator_client) -> None:
    client = orchestrator_client
    api = Api(web_app, VIEWER)
    tag = f"h{uuid.uuid4().hex[:8]}"
    child = child_wf(client, f"webchild-{uuid.uuid4().hex[:6]}")
    run = client.submit(
        Workflow(f"webparent-{uuid.uuid4().hex[:6]}", tags=[tag])
        .subworkflow("one", child, inputs={"n": 3})
        .subworkflow("two", child, inputs={"n": 4})
        .outputs(sum="{{ steps.one.output.doubled + steps.two.output.doubled }}")
    )
    assert run.wait(60).status == "COMPLETED"
    kids = {k.id for k in run.children()}
    assert len(kids) == 2

    def get(path: str):
        resp = api.get(path)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()

    def listed(query: str) -> set[str]:
        return {r["id"] for r in get(f"/runs?{query}")["runs"]}

    wait_for(lambda: listed(f"tag={tag}&children=include") == {run.id, *kids}, 30)
    assert listed(f"tag={tag}") == {run.id}  # children hidden by default
    only = get(f"/runs?tag={tag}&children=only")["runs"]
    assert {r["id"] for r in only} == kids
    assert {r["parent_run"] for r in only} == {run.id}
    assert listed(f"parent={run.id}") == kids
    body = get(f"/runs/{run.id}/children")
    assert body["run"] == run.id and body["parent_run"] is None
    assert {c["id"] for c in body["children"]} == kids
    assert {c["parent_step"] for c in body["children"]} == {"one", "two"}
    assert {c["result"]["doubled"] for c in body["children"]} == {6, 8}
    assert get(f"/runs/{run.id}")["result"] == {"sum": 14}
    kid = next(iter(kids))
    assert get(f"/runs/{kid}")["parent_run"] == run.id
    assert get(f"/runs/{kid}/children") == {
        "run": kid,
        "parent_run": run.id,
        "children": [],
        "warnings": [],
    }
    bad = api.get("/runs?children=all")
    assert bad.status_code == 400 and "children" in bad.get_data(as_text=True)
    assert api.get("/runs/nosuchrun/children").status_code == 404
    assert "/api/v1/runs/{run_id}/children" in get("/openapi.json")["paths"]
