"""The Workers and Tasks pages (issue 6: fleet inspection in the dashboard) in a real browser:
Playwright drives Debian's Chromium against the live `python -m web` server and the real worker
of tests/web_fixtures.py. Screenshots go under each test's tmp_path (and
CANVASFLOW_TEST_LOGS/screenshots when set)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.web_fixtures import browser_login
from tests.web_helpers import ADMIN, OPERATOR, VIEWER, wait_for

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

ECHO = {
    "name": "Fleet echo",
    "mode": "sequential",
    "steps": [
        {"id": "first", "plugin": "builtin", "method": "echo", "params": {"n": 1}},
        {"id": "second", "plugin": "builtin", "method": "echo", "params": {"n": 2}},
    ],
}
# fails on its first attempt only (no retries), so the run FAILS; retried, the step succeeds
FLAKY = {
    "name": "Fleet flaky",
    "mode": "sequential",
    "steps": [
        {
            "id": "flaky",
            "plugin": "builtin",
            "method": "fail",
            "params": {"message": "first attempt fails", "times": 1},
        },
        {"id": "after", "plugin": "builtin", "method": "echo", "params": {"ok": True}},
    ],
}
BROKEN = {
    "name": "Fleet broken",
    "steps": [{"id": "boom", "plugin": "builtin", "method": "fail", "params": {}}],
}


class Http:
    """The live server's REST API with an operator token."""

    def __init__(self, server: Any) -> None:
        self.url = server.url
        self.headers = {"Authorization": f"Bearer {server.token(OPERATOR)}"}

    def get(self, path: str, **params: Any) -> Any:
        r = requests.get(
            f"{self.url}/api/v1{path}", params=params, headers=self.headers, timeout=10
        )
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any) -> Any:
        r = requests.post(f"{self.url}/api/v1{path}", json=body, headers=self.headers, timeout=10)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def run(self, workflow: str) -> str:
        return str(self.post("/runs", {"workflow": workflow})["id"])

    def wait_run(self, run_id: str, statuses: set[str]) -> str:
        return wait_for(
            lambda: (s := self.get(f"/runs/{run_id}")["status"]) in statuses and s,
            30,
            f"run {run_id} to reach {sorted(statuses)}",
            every=0.2,
        )

    def step_task(self, run_id: str, step: str) -> dict[str, Any]:
        return wait_for(
            lambda: (
                (ts := self.get("/inspect/tasks", run=run_id, q=f"step:{step}")["tasks"])
                and ts[-1]["state"] == "SUCCESS"
                and ts[-1]
            ),
            20,
            f"the task of step {step}",
            every=0.2,
        )


@pytest.fixture(scope="module")
def fleet_server(live_server):
    token = live_server.token(ADMIN)
    for wid, body in (("fleet_echo", ECHO), ("fleet_flaky", FLAKY), ("fleet_broken", BROKEN)):
        r = requests.put(
            f"{live_server.url}/api/v1/workflows/{wid}",
            json={"definition": body},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    return live_server


@pytest.fixture(scope="module")
def http(fleet_server):
    return Http(fleet_server)


@pytest.fixture(scope="module")
def echo_run(http):
    run_id = http.run("fleet_echo")
    http.wait_run(run_id, {"COMPLETED"})
    for step in ("first", "second"):
        http.step_task(run_id, step)
    return run_id


def login(browser, server, user, path="/workers"):
    return browser_login(browser, server, user, path, timeout_ms=15000)


def post_from_page(page, path, body):
    """POST to the API from inside the page (its session and CSRF token): [status, message]."""
    return page.evaluate(
        """async ([path, body]) => {
        const csrf = JSON.parse(document.getElementById('cf-boot').textContent).csrf;
        const r = await fetch(path, {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}, body: JSON.stringify(body)});
        return [r.status, (await r.json()).message];
    }""",
        [path, body],
    )


def concurrency(page) -> str:
    return page.inner_text("#pool-concurrency").strip()


def test_the_workers_page_lists_the_worker_online_with_queues_and_plugins_and_its_tabs_show_pool_data(
    chromium, fleet_server, web_fleet, shots
):
    host = web_fleet.worker.hostname
    page = login(chromium, fleet_server, ADMIN, "/runs")
    page.click("#nav-workers")
    row = f"#workers-body tr[data-worker='{host}'][data-status='online']"
    page.wait_for_selector(row, timeout=20000)
    assert page.url.endswith("/workers")
    queues = page.inner_text(f"{row} td.queues")
    assert "default" in queues and "io" in queues
    assert "builtin" in page.inner_text(f"{row} td.plugins")
    assert page.inner_text(f"{row} td.pool .concurrency") == "4"
    assert page.query_selector("#queues-body tr[data-queue='default']") is not None
    assert host in page.inner_text("#queues-body tr[data-queue='default']")
    shots(page, "workers")

    page.click(f"{row} a")
    page.wait_for_selector("#pool-concurrency")
    assert concurrency(page) == "4"
    assert page.get_attribute("#worker-status", "data-status") == "online"
    assert page.query_selector("#pool-table tr[data-key='max-concurrency']") is not None
    shots(page, "worker-pool")
    for tab, selector in (
        ("broker", "#broker-table tr[data-key='transport']"),
        ("queues", "#active-queues tr[data-queue='io']"),
        ("tasks", "#tab-tasks h3"),
        ("limits", "#registered"),
        ("config", "#config-table tr"),
        ("system", "#rusage-table tr[data-key='maxrss']"),
    ):
        page.click(f"#worker-tabs button[data-tab={tab}]")
        assert page.is_visible(selector), tab
    # canvasflow workers name their own Redis transport (workers/broker.py RedisTransport)
    assert "redis" in page.inner_text("#broker-table tr[data-key='transport']").lower()
    assert "canvasflow.step" in page.inner_text("#registered")
    assert "canvasflow.step" in page.eval_on_selector_all(
        "#tab-limits select.task-names option", "os => os.map(o => o.value)"
    )
    shots(page, "worker-system")
    page.goto(f"{fleet_server.url}/workers/{host}#queues")
    page.wait_for_selector("#active-queues")
    assert page.is_visible("#tab-queues") and not page.is_visible("#tab-pool")  # a tab is a link
    resp = page.goto(f"{fleet_server.url}/workers/nobody@nowhere")
    assert resp.status == 404 and "There is no worker 'nobody@nowhere'" in page.inner_text("main")
    shots(page, "unknown-worker-404")
    assert not page.errors


def test_an_operator_grows_the_pool_from_the_worker_page_and_shrinks_it_back(
    chromium, fleet_server, web_fleet, http, shots
):
    host = web_fleet.worker.hostname
    page = login(chromium, fleet_server, OPERATOR)
    page.goto(f"{fleet_server.url}/workers/{host}")
    page.wait_for_function("document.querySelector('#pool-concurrency')?.textContent === '4'")
    try:
        page.fill("#tab-pool input[name=n]", "1")
        page.click("#pool-grow")
        # the pool starts its new process in the background; the page asks again until it shows
        page.wait_for_function(
            "document.querySelector('#pool-concurrency').textContent === '5'", timeout=20000
        )
        shots(page, "pool-grown")
    finally:
        page.click("#pool-shrink")
        page.wait_for_function(
            "document.querySelector('#pool-concurrency').textContent === '4'", timeout=20000
        )
    page.goto(f"{fleet_server.url}/workers")
    page.wait_for_selector(f"tr[data-worker='{host}'] td.pool .concurrency")
    wait_for(
        lambda: page.inner_text(f"tr[data-worker='{host}'] td.pool .concurrency") == "4",
        10,
        "the list to agree",
    )
    assert not page.errors


def test_the_tasks_page_lists_a_runs_tasks_linked_to_it_and_filters_search_sort_and_pages_narrow_it(
    chromium, fleet_server, echo_run, shots
):
    page = login(chromium, fleet_server, VIEWER, "/runs")
    page.click("#nav-tasks")
    page.wait_for_selector("#tasks-body tr[data-task]", timeout=20000)
    page.fill("#task-filters input[name=q]", f"run:{echo_run}")
    page.click("#task-filters button[type=submit]")
    page.wait_for_function(
        f"""(() => {{ const rs = [...document.querySelectorAll('#tasks-body tr[data-task]')];
        return rs.length >= 2 && rs.every(r => r.dataset.run === '{echo_run}'); }})()""",
        timeout=10000,
    )
    assert f"q=run%3A{echo_run}" in page.url  # a filtered list is a link
    steps = page.eval_on_selector_all(
        "#tasks-body tr[data-step]", "rs => rs.map(r => r.dataset.step).filter(Boolean)"
    )
    assert {"first", "second"} <= set(steps)
    assert (
        page.get_attribute("#tasks-body tr[data-step='first'] a.run-link", "href")
        == f"/runs/{echo_run}"
    )
    assert (
        page.get_attribute("#tasks-body tr[data-step='first'] a.step-link", "href")
        == f"/runs/{echo_run}#step-first"
    )
    shots(page, "tasks-of-a-run")

    # state and name:… narrow it to the two step tasks
    page.fill("#task-filters input[name=q]", f"run:{echo_run} name:canvasflow.step")
    page.select_option("#task-filters select[name=state]", "SUCCESS")
    page.click("#task-filters button[type=submit]")
    page.wait_for_function(
        """[...document.querySelectorAll('#tasks-body tr[data-task]')].length === 2""",
        timeout=10000,
    )
    assert set(
        page.eval_on_selector_all("#tasks-body tr[data-task]", "rs => rs.map(r => r.dataset.state)")
    ) == {"SUCCESS"}
    assert set(
        page.eval_on_selector_all("#tasks-body td.name", "ts => ts.map(t => t.textContent)")
    ) == {"canvasflow.step"}
    page.select_option("#task-filters select[name=state]", "FAILURE")
    page.click("#task-filters button[type=submit]")
    page.wait_for_selector("#tasks-body td.empty")
    assert "No task matches" in page.inner_text("#tasks-body")

    # sort by a column, then walk keyset pages of one
    page.goto(f"{fleet_server.url}/tasks?q=run:{echo_run}&limit=1&sort=name")
    page.wait_for_selector("#tasks-body tr[data-task]")
    first = page.eval_on_selector_all(
        "#tasks-body tr[data-task]", "rs => rs.map(r => r.dataset.task)"
    )
    names = page.eval_on_selector_all("#tasks-body td.name", "ts => ts.map(t => t.textContent)")
    assert len(first) == 1
    assert "▲" in page.inner_text("th a[data-sort=name]")
    page.click("#next-page")
    page.wait_for_selector("#first-page:not([hidden])")
    page.wait_for_function(
        f"!{first!r}.includes(document.querySelector('#tasks-body tr[data-task]').dataset.task)"
    )
    second = page.eval_on_selector_all(
        "#tasks-body tr[data-task]", "rs => rs.map(r => r.dataset.task)"
    )
    assert not set(first) & set(second)
    assert [names[0], page.inner_text("#tasks-body td.name")] == sorted(
        [names[0], page.inner_text("#tasks-body td.name")]
    )
    shots(page, "tasks-second-page")

    # the task detail: run and step link, every event time
    page.goto(f"{fleet_server.url}/tasks?q=run:{echo_run}+step:first")
    page.wait_for_selector("#tasks-body tr[data-step='first'] td.uuid a")
    page.click("#tasks-body tr[data-step='first'] td.uuid a")
    page.wait_for_selector("#task-run-link")
    assert page.get_attribute("#task-run-link", "href") == f"/runs/{echo_run}"
    assert page.get_attribute("#task-step-link", "href") == f"/runs/{echo_run}#step-first"
    for event in ("sent", "received", "started", "succeeded"):
        assert page.get_attribute(f"#time-{event}", "data-ts"), event
    assert page.get_attribute("#time-failed", "data-ts") == ""
    assert page.get_attribute("#step-status [data-status]", "data-status") == "COMPLETED"
    assert "'first'" in page.inner_text("#task-args")
    assert page.query_selector("#task-worker") is not None
    shots(page, "task-detail")
    resp = page.goto(f"{fleet_server.url}/tasks/no-such-task")
    assert resp.status == 404 and "There is no task 'no-such-task'" in page.inner_text("main")
    assert not page.errors


def test_a_failed_step_is_retried_from_its_task_page_and_the_run_then_completes(
    chromium, fleet_server, http, shots
):
    run_id = http.run("fleet_flaky")
    http.wait_run(run_id, {"FAILED"})
    task = http.step_task(run_id, "flaky")
    page = login(chromium, fleet_server, OPERATOR)
    page.goto(f"{fleet_server.url}/tasks/{task['uuid']}")
    page.wait_for_selector("#step-status [data-status='FAILED']")
    assert page.get_attribute("#run-status [data-status]", "data-status") == "FAILED"
    btn = "#task-actions button[data-task-action='retry-step']"
    assert page.is_visible(btn) and "failed step flaky" in page.inner_text(btn)
    shots(page, "failed-step-task")
    page.click(btn)
    page.wait_for_selector("#run-status [data-status='COMPLETED']", timeout=30000)
    assert http.get(f"/runs/{run_id}")["status"] == "COMPLETED"
    # the retry ran the step again as a new task (the history records it from its events)
    wait_for(
        lambda: len(http.get("/inspect/tasks", run=run_id, q="step:flaky")["tasks"]) == 2,
        15,
        "the retried step's task in the history",
        every=0.2,
    )
    shots(page, "retried-run-completed")
    assert not page.errors


def test_a_failed_plain_celery_task_is_sent_again_with_its_arguments(
    chromium, fleet_server, http, shots
):
    # a harmless task the fleet allows (CANVASFLOW_WEB_INSPECT_TASK_ALLOW), which fails on the worker
    sent = http.post(
        "/inspect/tasks/send", {"name": "tests.inspect_tasks.fail", "args": ["no hdr today"]}
    )["task"]
    wait_for(
        lambda: (
            (ts := http.get("/inspect/tasks", q=f"uuid:{sent}")["tasks"])
            and ts[0]["state"] == "FAILURE"
        ),
        20,
        "the task to fail",
        every=0.2,
    )
    page = login(chromium, fleet_server, OPERATOR)
    page.goto(f"{fleet_server.url}/tasks/{sent}")
    page.wait_for_selector("#task-state [data-state='FAILURE']")
    assert "hdr" in page.inner_text("#task-exception")
    assert page.is_visible("#task-run") and "not part of a canvasflow run" in page.inner_text(
        "#task-run"
    )
    page.click("#task-actions button[data-task-action='resend']")
    page.wait_for_selector("#task-actions-note a")
    again = page.inner_text("#task-actions-note a").strip()
    assert again != sent
    row = wait_for(
        lambda: (
            (
                t := requests.get(
                    f"{fleet_server.url}/api/v1/inspect/tasks/{again}",
                    headers=http.headers,
                    timeout=10,
                )
            ).status_code
            == 200
            and t.json()["state"] == "FAILURE"
            and t.json()
        ),
        20,
        "the resent task to run",
        every=0.2,
    )
    assert (
        row["name"] == "tests.inspect_tasks.fail"
        and row["args"] == http.get(f"/inspect/tasks/{sent}")["args"]
    )
    shots(page, "task-sent-again")
    assert not page.errors


def test_a_viewer_sees_the_worker_and_task_controls_refused(
    chromium, fleet_server, web_fleet, http, shots
):
    run_id = http.run("fleet_broken")
    http.wait_run(run_id, {"FAILED"})
    task = http.step_task(run_id, "boom")
    host = web_fleet.worker.hostname
    page = login(chromium, fleet_server, VIEWER)
    page.goto(f"{fleet_server.url}/workers/{host}")
    page.wait_for_selector("#pool-concurrency")
    for sel in (
        "#pool-grow",
        "#pool-shrink",
        "#worker-actions button[data-control=shutdown]",
        "#worker-actions button[data-control=pool_restart]",
    ):
        assert page.is_disabled(sel), sel
        assert "viewer" in page.get_attribute(sel, "title")
    assert page.is_visible("#controls-refused") and "operator role" in page.inner_text(
        "#controls-refused"
    )
    status = post_from_page(
        page, f"/api/v1/inspect/workers/{quote(host, safe='')}/pool_grow", {"n": 1}
    )
    assert status[0] == 403 and "viewer" in status[1]
    shots(page, "viewer-worker")
    page.goto(f"{fleet_server.url}/workers")
    page.wait_for_selector(f"tr[data-worker='{host}']")
    page.goto(f"{fleet_server.url}/tasks/{task['uuid']}")
    btn = "#task-actions button[data-task-action='retry-step']"
    page.wait_for_selector(f"{btn}:not([hidden])")
    assert page.is_disabled(btn) and "viewer" in page.get_attribute(btn, "title")
    assert "operator role" in page.inner_text("#controls-refused")
    shots(page, "viewer-task")
    assert http.get(f"/runs/{run_id}")["status"] == "FAILED"
    assert not page.errors


def test_a_read_only_dashboard_shows_the_fleet_and_refuses_its_controls(chromium, web_fleet, shots):
    from tests.web_fixtures import start_live_server, stop_live_server

    host = web_fleet.worker.hostname
    ro = start_live_server(web_fleet, "--read-only")
    try:
        page = login(chromium, ro, ADMIN)
        page.wait_for_selector(f"#workers-body tr[data-worker='{host}'][data-status='online']")
        page.goto(f"{ro.url}/workers/{host}")
        page.wait_for_selector("#pool-concurrency")
        assert page.is_disabled("#pool-grow") and "read-only" in page.get_attribute(
            "#pool-grow", "title"
        )
        assert "read-only" in page.inner_text("#controls-refused")
        shots(page, "read-only-worker")
        status = post_from_page(
            page, f"/api/v1/inspect/workers/{quote(host, safe='')}/pool_grow", {"n": 1}
        )
        assert status[0] == 403 and "read-only" in status[1]
        assert not page.errors
    finally:
        stop_live_server(ro)
