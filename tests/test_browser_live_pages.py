"""The runs page's landing tab and the "live" badge (issue 17, items 12 and 13), in Chromium.

A fleet of its own (key prefix, worker, SQLite audit store), so that "nothing is active" holds
whatever other suites leave running. Screenshots go to CANVASFLOW_TEST_LOGS/screenshots.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import TEST_CALL_ALLOW, WorkerProcess, make_settings
from tests.web_fixtures import (
    INSPECT_TASKS,
    LiveServer,
    WebFleet,
    browser_login,
    start_live_server,
    stop_live_server,
)
from tests.web_helpers import ADMIN, wait_for

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

ECHO = {
    "id": "lp_echo",
    "steps": [{"id": "hello", "plugin": "builtin", "method": "echo", "params": {"x": 1}}],
}
SLEEP = {
    "id": "lp_sleep",
    "steps": [{"id": "nap", "plugin": "builtin", "method": "sleep", "params": {"seconds": 60}}],
}


class Api:
    def __init__(self, server: LiveServer) -> None:
        self.url = server.url
        self.headers = {"Authorization": f"Bearer {server.token(ADMIN)}"}

    def call(self, method: str, path: str, **kw: Any) -> Any:
        r = requests.request(
            method, f"{self.url}/api/v1{path}", headers=self.headers, timeout=30, **kw
        )
        assert r.status_code in (200, 201, 202), f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def run(self, workflow: str) -> str:
        return str(self.call("POST", "/runs", json={"workflow": workflow})["id"])

    def wait_status(self, run_id: str, statuses: set[str]) -> str:
        return wait_for(
            lambda: (s := self.call("GET", f"/runs/{run_id}")["status"]) in statuses and s,
            60,
            f"run {run_id} to reach {sorted(statuses)}",
            every=0.2,
        )


@pytest.fixture(scope="module")
def own_fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebFleet]:
    tmp = tmp_path_factory.mktemp("live-pages")
    settings = make_settings(
        redis_url,
        key_prefix=f"lp{uuid.uuid4().hex[:8]}",
        database_url=f"sqlite:///{tmp / 'audit.db'}",
        call_allow=TEST_CALL_ALLOW,
    )
    log_dir = Path(os.environ.get("CANVASFLOW_TEST_LOGS", str(tmp)))
    log_dir.mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(
        settings, f"lp-{uuid.uuid4().hex[:6]}", log_dir=log_dir, include=INSPECT_TASKS
    ).wait_ready()
    yield WebFleet(settings, worker, log_dir)
    worker.stop()


@pytest.fixture(scope="module")
def server(own_fleet: WebFleet) -> Iterator[LiveServer]:
    s = start_live_server(own_fleet)
    api = Api(s)
    for body in (ECHO, SLEEP):
        api.call("PUT", f"/workflows/{body['id']}", json={"definition": body})
    yield s
    stop_live_server(s)


def _tab(page: Any) -> str:
    return str(page.get_attribute("#tabs button.on", "data-view"))


def test_the_runs_page_lands_on_all_when_nothing_is_active_and_on_active_when_something_is(
    chromium: Any, server: LiveServer, shots: Any
) -> None:
    api = Api(server)
    done = api.run("lp_echo")
    api.wait_status(done, {"COMPLETED"})
    assert api.call("GET", "/runs", params={"view": "active"})["runs"] == []

    # What the demo's user saw: every run finished, and the page opened on an empty "Active".
    page = browser_login(chromium, server, ADMIN, "/runs")
    page.wait_for_selector(f"#runs-body tr[data-run='{done}']")
    assert _tab(page) == "all"
    shots(page, "landing-nothing-active")

    running = api.run("lp_sleep")
    try:
        api.wait_status(running, {"RUNNING"})
        page.goto(f"{server.url}/runs")
        page.wait_for_selector(f"#runs-body tr[data-run='{running}']")
        assert _tab(page) == "active"
        assert page.query_selector(f"#runs-body tr[data-run='{done}']") is None
        shots(page, "landing-something-active")
        # A view asked for is kept, even when it is empty.
        page.goto(f"{server.url}/runs?view=failed")
        page.wait_for_selector("#runs-body td.empty")
        assert _tab(page) == "failed"
    finally:
        api.call("POST", f"/runs/{running}/cancel", json={})
    assert not page.errors


def test_every_page_that_updates_itself_shows_live_and_then_reconnecting_when_the_server_goes(
    chromium: Any, own_fleet: WebFleet, server: LiveServer, shots: Any
) -> None:
    api = Api(server)
    run_id = api.run("lp_echo")
    api.wait_status(run_id, {"COMPLETED"})
    task = wait_for(
        lambda: api.call("GET", "/inspect/tasks", params={"run": run_id})["tasks"],
        30,
        f"the tasks of run {run_id}",
        every=0.2,
    )[0]["uuid"]

    own = start_live_server(own_fleet)  # this test stops it
    try:
        live_pages = {
            "runs": "/runs",
            "run": f"/runs/{run_id}",
            "workers": "/workers",
            "worker": f"/workers/{own_fleet.worker.hostname}",
            "tasks": "/tasks",
            "task": f"/tasks/{task}",
            "analytics": "/analytics",
        }
        first = browser_login(chromium, own, ADMIN, "/workflows")
        # The workflows page does not update itself: no badge.
        assert first.is_hidden("#conn")
        pages = {}
        for name, path in live_pages.items():
            page = first.context.new_page()
            page.errors = []
            page.on("pageerror", lambda e, errs=page.errors: errs.append(str(e)))
            page.goto(f"{own.url}{path}")
            page.wait_for_selector("body[data-ready='1']")
            page.wait_for_selector("#conn.ok:not([hidden])")
            assert page.inner_text("#conn") == "live", name
            pages[name] = page
        shots(pages["workers"], "workers-live")
        shots(pages["tasks"], "tasks-live")
        shots(pages["analytics"], "analytics-live")
    finally:
        stop_live_server(own)

    # Socket.IO pages notice at once; polled pages at their next poll (analytics: 30 s).
    for name, page in pages.items():
        page.wait_for_selector("#conn.down:not([hidden])", timeout=90_000)
        assert page.inner_text("#conn") == "reconnecting…", name
        shots(page, f"{name}-reconnecting")
    for name, page in pages.items():
        assert not [e for e in page.errors if "server does not answer" not in e], name
