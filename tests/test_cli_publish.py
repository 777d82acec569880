"""``canvasflow publish`` and how the CLI shows the way a run started (``canvasflow runs
--trigger``, ``canvasflow status``): the real command in a subprocess, a real worker, the web
fixtures' app recording into their SQLite audit store."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import cli
from tests.web_helpers import wait_recorded, wait_status

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


def _workflow(event: str) -> dict[str, Any]:
    return {
        "id": f"cliev_{uuid.uuid4().hex[:6]}",
        "inputs": {"folder": "none"},
        "triggers": [{"event": event, "inputs": {"folder": "{{ event.payload.folder }}"}}],
        "steps": [
            {
                "id": "show",
                "plugin": "builtin",
                "method": "echo",
                "params": {"f": "{{ inputs.folder }}"},
            }
        ],
    }


def test_publish_starts_the_run_once_per_key_and_runs_and_status_say_how_it_started(
    web_app: Any, orchestrator_client: Any, web_fleet: Any
) -> None:
    settings = web_fleet.settings
    event = f"cli.{uuid.uuid4().hex[:8]}"
    wf = _workflow(event)
    orchestrator_client.register(wf)
    out = cli(
        "publish",
        event,
        "--payload",
        '{"folder": "in/x"}',
        "--key",
        "k9",
        settings=settings,
        check=True,
    ).stdout
    (run_id,) = re.findall(r"started (\w+)", out)
    again = cli(
        "publish",
        event,
        "--payload",
        '{"folder": "y"}',
        "--key",
        "k9",
        settings=settings,
        check=True,
    ).stdout
    assert f"already started {run_id}" in again
    as_json = json.loads(
        cli(
            "publish",
            event,
            "--payload",
            '{"folder": "z"}',
            "--json",
            settings=settings,
            check=True,
        ).stdout
    )
    assert len(as_json["started"]) == 1 and as_json["started"][0]["workflow"] == wf["id"]
    wait_status(orchestrator_client, run_id, {"COMPLETED"})
    wait_recorded(web_app.extensions["canvasflow"].store, run_id, {"COMPLETED"})
    listed = cli(
        "runs", "--trigger", "event", "--workflow", wf["id"], settings=settings, check=True
    ).stdout
    assert run_id in listed and f"event {event} (key k9)" in listed
    other = cli(
        "runs", "--trigger", "cli", "--workflow", wf["id"], settings=settings, check=True
    ).stdout
    assert run_id not in other
    status = cli("status", run_id, settings=settings, check=True).stdout
    assert f"via event {event} (key k9)" in status
    shown = cli("show", run_id, settings=settings, check=True).stdout
    assert f"via event {event} (key k9)" in shown


def test_a_run_the_cli_submits_says_cli(web_fleet: Any, tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(_workflow("cli.unused")))
    run_id = cli("run", str(path), "--no-follow", settings=web_fleet.settings, check=True)
    run_id = run_id.stdout.strip()
    assert "via cli" in cli("status", run_id, settings=web_fleet.settings, check=True).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--payload", "[1, 2]"], "payload: must be an object"),
        (["--payload", "{nope"], "not JSON"),
        (["--payload", "@/nonexistent/file.json"], "cannot read"),
        (["--key", ""], "key: must be 1 to 200 characters"),
    ],
)
def test_publish_refuses_a_malformed_event_with_the_field(
    web_fleet: Any, args: list[str], message: str
) -> None:
    proc = cli("publish", "some.event", *args, settings=web_fleet.settings)
    assert proc.returncode == 2 and message in proc.stderr, (proc.stdout, proc.stderr)


def test_publish_refuses_a_bad_name_and_runs_an_unknown_trigger(web_fleet: Any) -> None:
    proc = cli("publish", "has space", settings=web_fleet.settings)
    assert proc.returncode == 2 and "name: must match" in proc.stderr
    proc = cli("runs", "--trigger", "cron", settings=web_fleet.settings)
    assert proc.returncode == 2 and "Invalid value for '--trigger'" in proc.stderr
