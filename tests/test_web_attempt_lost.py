"""The dashboard's timeline closes the bar of an attempt reported lost (attempt_lost)."""

from __future__ import annotations

import json
import secrets

import pytest

from orchestrator.records import RunRecord
from tests.web_helpers import OPERATOR, Api

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


def test_the_timeline_shows_a_lost_attempt_closed_and_the_attempt_that_took_over(
    web_app, orchestrator_client
) -> None:
    state, keys = orchestrator_client.state, orchestrator_client.keys
    run_id = secrets.token_hex(8)
    definition = {"id": "lost_bar", "steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}
    state.create(
        RunRecord.from_hash(
            run_id, {"workflow": "lost_bar", "definition": json.dumps(definition), "inputs": "{}"}
        ),
        ["a"],
    )
    go = dict(intent="run", lease_ttl=30, task_id="t1")
    assert state.begin_step(run_id, "a", 1, owner="dead", worker="w1", **go)[0] == "go"
    orchestrator_client.redis.delete(keys.lease(run_id, "a"))  # its worker was SIGKILLed
    assert state.begin_step(run_id, "a", 1, owner="alive", worker="w2", **go)[:2] == ("go", "2")
    assert (
        state.finish_step(run_id, "a", 1, status="COMPLETED", owner="alive", attempt={"attempt": 2})
        == "ok"
    )
    bars = Api(web_app, OPERATOR).get(f"/runs/{run_id}/timeline").json["bars"]
    assert [(b["attempt"], b["status"], b["worker"]) for b in bars] == [
        (1, "LOST", "w1"),
        (2, "COMPLETED", "w2"),
    ]
    assert bars[0]["end"] is not None and "lease" in bars[0]["error"]
