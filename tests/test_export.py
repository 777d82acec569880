"""One trace export for the CLI and the dashboard (issue 17 item 5): `canvasflow export RUN` and
`GET /api/v1/runs/{id}/export` print the same document, with the events and operator actions the
audit store recorded, whether Redis still has the run or not. Real Redis, a real worker, the
recorder embedded in the app, and the CLI started as a user starts it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from orchestrator.keys import Keys
from tests.test_cli import cli
from tests.web_helpers import OPERATOR, Api, wait_for, wait_recorded, wait_status

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

PAUSED_ONCE = {
    "id": "export_parity",
    "mode": "sequential",
    "steps": [
        {
            "id": "say",
            "plugin": "builtin",
            "method": "call",
            "params": {
                "function": "tests.web_helpers:log_slowly",
                "kwargs": {"lines": 20, "every": 0.1},
            },
        },
        {"id": "after", "plugin": "builtin", "method": "echo", "params": {"done": True}},
    ],
}


def api_export(api: Api, run_id: str) -> dict[str, Any]:
    r = api.http.get(f"/api/v1/runs/{run_id}/export")
    assert r.status_code == 200, r.data[:500]
    return json.loads(r.data)


def cli_export(settings: Any, run_id: str) -> dict[str, Any]:
    proc = cli("export", run_id, settings=settings, check=True)
    return json.loads(proc.stdout)


def without_export_time(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "exported_at"}


def stream_holds(r: redis.Redis, keys: Keys, run_id: str) -> bool:
    return any(
        fields.get(b"run") == run_id.encode() for _, fields in r.xrange(keys.events) if fields
    )


def test_cli_export_equals_the_dashboard_export_with_recorded_events_and_actions(
    web_app, web_fleet, orchestrator_client
) -> None:
    client, settings = orchestrator_client, web_fleet.settings
    store = web_app.extensions["canvasflow"].store
    run = client.submit(PAUSED_ONCE)
    wait_for(lambda: client.state.status(run.id) == "RUNNING", 30, "the run to start")
    client.control.pause(run.id, actor="ivy", reason="look at the logs first")
    wait_status(client, run.id, {"PAUSED"}, timeout=60)
    client.control.resume(run.id, actor="ivy", reason="looked")
    wait_status(client, run.id, {"COMPLETED"}, timeout=60)
    recorded = wait_recorded(store, run.id, {"COMPLETED"}, timeout=60)
    # What the user saw: the recorder has moved the run's events to SQL and trimmed them from
    # the stream (it trims every few seconds), so the stream alone knows nothing of them.
    r = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    wait_for(lambda: not stream_holds(r, keys, run.id), 60, "the recorder to trim the stream")

    from_cli, from_api = cli_export(settings, run.id), api_export(Api(web_app, OPERATOR), run.id)
    assert without_export_time(from_cli) == without_export_time(from_api)
    assert from_cli["source"] == "hot" and from_cli["warnings"] == []
    assert [e["seq"] for e in from_cli["events"]] == list(range(1, recorded.last_seq + 1))
    actions = [(a["action"], a["actor"], a["reason"]) for a in from_cli["operator_actions"]]
    assert actions == [("pause", "ivy", "look at the logs first"), ("resume", "ivy", "looked")]
    say = next(s for s in from_cli["steps"] if s["id"] == "say")
    assert [line["message"] for line in say["logs"]] == [f"line {i} of 20" for i in range(20)]
    assert [a["status"] for a in say["attempts"]] == ["COMPLETED"]

    # The run leaves the hot state (its TTL ran out): both rebuild the same trace from the store.
    r.delete(keys.run(run.id), keys.steps(run.id), keys.attempts(run.id))
    old_cli, old_api = cli_export(settings, run.id), api_export(Api(web_app, OPERATOR), run.id)
    assert without_export_time(old_cli) == without_export_time(old_api)
    assert old_cli["source"] == "audit"
    assert old_cli["events"] == from_cli["events"]
    assert old_cli["operator_actions"] == from_cli["operator_actions"]
    assert old_cli["definition"] == from_cli["definition"]
    assert old_cli["inputs"] == from_cli["inputs"]
    for hot, cold in zip(from_cli["steps"], old_cli["steps"], strict=True):
        assert (hot["id"], hot["status"], hot["output"], hot["logs"], hot["progress"]) == (
            cold["id"],
            cold["status"],
            cold["output"],
            cold["logs"],
            cold["progress"],
        )
        assert [a["status"] for a in hot["attempts"]] == [a["status"] for a in cold["attempts"]]
    r.close()


def test_cli_export_without_an_audit_store_says_what_it_exports(
    tmp_path, web_fleet, orchestrator_client
) -> None:
    run = orchestrator_client.submit(
        {"id": "export_nostore", "steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}
    )
    wait_status(orchestrator_client, run.id, {"COMPLETED"})
    url = f"sqlite:///{tmp_path / 'none.db'}"
    proc = cli("export", run.id, settings=web_fleet.settings.with_(database_url=url), check=True)
    assert f"no audit store at {url}" in proc.stderr
    assert json.loads(proc.stdout)["run"]["id"] == run.id
    assert not (tmp_path / "none.db").exists()  # asking did not create an empty store
