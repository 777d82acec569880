"""The Schedules page in a real browser (issue 16): a `python -m web --scheduler` server fires an
every-2-seconds schedule; the page lists it with its next fire time, Pause makes it paused (and
the scheduler stops firing it), Run now starts a run, and the REST API agrees with every click.
Viewers see the list, and the REST API refuses them the actions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.web_fixtures import browser_login, start_live_server, stop_live_server
from tests.web_helpers import ADMIN, OPERATOR, VIEWER, wait_for

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sched_server(web_fleet: Any, orchestrator_client: Any) -> Iterator[tuple[Any, str]]:
    server = start_live_server(web_fleet, "--scheduler")
    wf = f"ticker_{uuid.uuid4().hex[:6]}"
    body = {
        "triggers": [{"schedule": {"every": 2}, "name": "tick", "inputs": {"n": 1}}],
        "steps": [
            {"id": "a", "plugin": "builtin", "method": "echo", "params": {"n": "{{ inputs.n }}"}}
        ],
    }
    r = requests.put(
        f"{server.url}/api/v1/workflows/{wf}",
        json={"definition": body},
        headers={"Authorization": f"Bearer {server.token(ADMIN)}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    yield server, wf
    orchestrator_client.redis.srem(orchestrator_client.keys.workflows, wf)
    stop_live_server(server)


def api(server: Any, user: tuple[str, str], method: str, path: str, **kw: Any) -> Any:
    return requests.request(
        method,
        f"{server.url}/api/v1{path}",
        headers={"Authorization": f"Bearer {server.token(user)}"},
        timeout=10,
        **kw,
    )


def runs_of(client: Any, wf: str) -> list[str]:
    return [m.decode() for m in client.redis.zrange(client.keys.runs_of(wf), 0, -1)]


def test_the_schedules_page_lists_pauses_and_runs_now(
    chromium: Any, sched_server: tuple[Any, str], orchestrator_client: Any, shots: Any
) -> None:
    server, wf = sched_server
    client = orchestrator_client
    wait_for(lambda: len(runs_of(client, wf)) >= 1, 30, "the scheduler's first run")

    page = browser_login(chromium, server, OPERATOR, "/runs", timeout_ms=15000)
    page.click("#nav-schedules")
    row = f"#schedules-body tr[data-schedule='{wf}/tick']"
    page.wait_for_selector(f"{row}[data-paused='0']")
    assert page.url.endswith("/schedules")
    assert "every 2 s" in page.inner_text(row)
    assert " UTC" in page.inner_text(f"{row} td.next-fire")  # "2026-12-04 16:40:02 UTC"
    assert "1 scheduler(s) running" in page.inner_text("#schedules-stats")
    shots(page, "schedules")

    page.click(f"{row} button.pause")
    page.fill("#confirm-reason", "maintenance window")
    page.click("#confirm-yes")
    page.wait_for_selector(f"{row}[data-paused='1']")
    assert "paused by olga" in page.inner_text(f"{row} td.state")
    listed = {
        (s["workflow"], s["name"]): s
        for s in api(server, VIEWER, "GET", "/schedules").json()["schedules"]
    }
    assert listed[(wf, "tick")]["paused"] is True
    assert listed[(wf, "tick")]["reason"] == "maintenance window"

    # The scheduler keeps ticking (its cursor follows the clock) but starts nothing more.
    count = len(runs_of(client, wf))
    paused_at = time.time()
    field = f"{wf} tick"
    wait_for(
        lambda: (client.redis.zscore(client.keys.schedule_cursors, field) or 0) > paused_at + 4,
        30,
        "the scheduler to pass two fire times while paused",
    )
    assert len(runs_of(client, wf)) == count

    page.click(f"{row} button.run-now")
    page.click("#confirm-yes")
    # The pause's toast ("<workflow>/tick paused") may still be showing: wait for this one's.
    page.wait_for_function(
        "() => (document.querySelector('#toast.show')?.innerText || '').startsWith('started run ')"
    )
    toast = page.inner_text("#toast")
    run_id = toast.removeprefix("started run ").strip()
    wait_for(
        lambda: api(server, VIEWER, "GET", f"/runs/{run_id}").json()["status"] == "COMPLETED",
        30,
        "the run started now",
    )
    run = api(server, VIEWER, "GET", f"/runs/{run_id}").json()
    assert run["triggered_by"] == OPERATOR[0]
    assert len(runs_of(client, wf)) == count + 1
    assert page.errors == []

    page.click(f"{row} button.resume")
    page.click("#confirm-yes")
    page.wait_for_selector(f"{row}[data-paused='0']")
    wait_for(lambda: len(runs_of(client, wf)) > count + 1, 30, "a fire after resume")


def test_viewers_may_list_but_not_act(sched_server: tuple[Any, str]) -> None:
    server, wf = sched_server
    assert api(server, VIEWER, "GET", "/schedules").status_code == 200
    for action in ("pause", "resume", "run-now"):
        r = api(server, VIEWER, "POST", f"/schedules/{wf}/tick/{action}", json={})
        assert r.status_code == 403, r.text
    r = api(server, OPERATOR, "POST", f"/schedules/{wf}/nightly/pause", json={})
    assert r.status_code == 404
    assert (
        f"no schedule 'nightly' in the latest registered version of '{wf}'" in r.json()["message"]
    )
