"""A run waiting for a concurrency slot says so, "waiting for a slot in <key>: N ahead", in the
REST run detail, `canvasflow status` and `canvasflow runs`; a workflow's slots in use per key are
at GET /api/v1/workflows/{id}/concurrency. Real Redis, a real worker, the app's embedded
recorder and SQLite audit store, the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.web_helpers import ADMIN, OPERATOR, VIEWER, Api, wait_recorded, wait_status

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

LIMITED = {
    "concurrency": {"key": "{{ inputs.customer }}", "limit": 1},
    "inputs": {"seconds": 0.2},
    "steps": [
        {
            "id": "nap",
            "plugin": "builtin",
            "method": "sleep",
            "params": {"seconds": "{{ inputs.seconds }}"},
        }
    ],
}


def cli(web_fleet: Any, *args: str) -> str:
    env = {
        **os.environ,
        **web_fleet.settings.as_env(),
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "160",
    }
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_waiting_run_shows_its_reason_in_the_api_and_the_cli_and_the_slots_per_key(
    web_app: Any, web_fleet: Any, orchestrator_client: Any
) -> None:
    admin, operator, viewer = Api(web_app, ADMIN), Api(web_app, OPERATOR), Api(web_app, VIEWER)
    assert admin.put("/workflows/conc_web", {"definition": LIMITED}).status_code == 200
    # The first holds acme's slot until it is cancelled below.
    first = operator.post(
        "/runs", {"workflow": "conc_web", "inputs": {"customer": "acme", "seconds": 60}}
    )
    second = operator.post("/runs", {"workflow": "conc_web", "inputs": {"customer": "acme"}})
    other = operator.post(
        "/runs", {"workflow": "conc_web", "inputs": {"customer": "bolt", "seconds": 60}}
    )
    assert {first.status_code, second.status_code, other.status_code} == {201}, second.json
    a, b, c = first.json["id"], second.json["id"], other.json["id"]
    # A key its inputs cannot render: a 400 that names the field, nothing recorded.
    bad = operator.post("/runs", {"workflow": "conc_web", "inputs": {}})
    assert bad.status_code == 400, bad.json
    assert [p["path"] for p in bad.json["problems"]] == ["concurrency.key"]
    assert "customer" in bad.json["problems"][0]["message"]

    d = viewer.get(f"/runs/{b}").json
    assert d["status"] == "PENDING"
    assert d["waiting"] == {
        "key": "acme",
        "ahead": 0,
        "reason": "waiting for a slot in acme: 0 ahead",
    }
    assert viewer.get(f"/runs/{a}").json["waiting"] is None

    slots = viewer.get("/workflows/conc_web/concurrency").json
    assert slots["concurrency"] == {"key": "{{ inputs.customer }}", "limit": 1}
    groups = {g["key"]: g for g in slots["groups"]}
    assert groups["acme"] == {"key": "acme", "limit": 1, "in_use": 1, "active": [a], "waiting": 1}
    assert groups["bolt"]["active"] == [c] and groups["bolt"]["waiting"] == 0
    assert viewer.get("/workflows/no_such_flow/concurrency").status_code == 404
    # ... and in /metrics, per workflow and key
    metrics = web_app.test_client().get("/metrics").get_data(as_text=True)
    for name, key, value in (
        ("canvasflow_concurrency_limit", "acme", 1),
        ("canvasflow_concurrency_slots_in_use", "acme", 1),
        ("canvasflow_concurrency_waiting", "acme", 1),
        ("canvasflow_concurrency_slots_in_use", "bolt", 1),
        ("canvasflow_concurrency_waiting", "bolt", 0),
    ):
        line = f'{name}{{key="{key}",workflow="conc_web"}} {float(value)}'
        alt = f'{name}{{workflow="conc_web",key="{key}"}} {float(value)}'
        assert line in metrics or alt in metrics, (name, key, metrics[-3000:])
    assert 'canvasflow_scrape_error{source="slots"} 0.0' in metrics

    assert "waiting for a slot in acme: 0 ahead" in cli(web_fleet, "status", b)
    assert "waiting for a slot" not in cli(web_fleet, "status", a)
    store = web_app.extensions["canvasflow"].store
    wait_recorded(store, b, {"PENDING"})
    listed = cli(web_fleet, "runs", "--workflow", "conc_web")
    assert "waiting for a slot in acme: 0 ahead" in listed

    for rid in (a, c):
        assert operator.post(f"/runs/{rid}/cancel", {}).status_code == 200
        wait_status(orchestrator_client, rid, {"CANCELLED"}, timeout=60)
    wait_status(orchestrator_client, b, {"COMPLETED"}, timeout=60)
    assert viewer.get(f"/runs/{b}").json["waiting"] is None
    assert viewer.get("/workflows/conc_web/concurrency").json["groups"] == []
    after = web_app.test_client().get("/metrics").get_data(as_text=True)
    assert 'canvasflow_concurrency_slots_in_use{workflow="conc_web"' not in after
