"""The dashboard in a real browser: Playwright drives Debian's Chromium (never a downloaded one)
against a live `python -m web` server and a real worker. Each test saves screenshots under its
tmp_path (and CANVASFLOW_TEST_LOGS/screenshots when set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.web_helpers import ADMIN, OPERATOR, VIEWER

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

LIVE = {
    "name": "Browser pipeline", "mode": "sequential", "sla_seconds": 120,
    "inputs": {"batch": 7},
    "steps": [
        {"id": "extract", "plugin": "builtin", "method": "echo", "params": {"batch": "{{ inputs.batch }}"},
         "compensate": {"plugin": "builtin", "method": "echo", "params": {"undo": "extract"}}},
        {"id": "transform", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.8},
         "compensate": {"plugin": "builtin", "method": "echo", "params": {"undo": "transform"}}},
        {"id": "load", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.8}},
        {"id": "publish", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.8}},
        {"id": "notify", "plugin": "builtin", "method": "echo", "params": {"done": True}},
    ],
}
LONG = {
    "name": "Long saga", "mode": "sequential",
    "steps": [{"id": f"part{i}", "plugin": "builtin", "method": "sleep", "params": {"seconds": 1.0},
               "compensate": {"plugin": "builtin", "method": "echo", "params": {"undo": i}}} for i in range(8)],
}


@pytest.fixture(scope="module")
def registered(live_server):
    token = live_server.token(ADMIN)
    for wid, body in (("browser_pipeline", LIVE), ("browser_long", LONG)):
        r = requests.put(f"{live_server.url}/api/v1/workflows/{wid}", json={"definition": body},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, r.text
    return live_server


@pytest.fixture
def shots(tmp_path, request):
    """Screenshot helper: tmp_path/<name>.png, copied to CANVASFLOW_TEST_LOGS/screenshots too."""
    extra = os.environ.get("CANVASFLOW_TEST_LOGS")

    def shot(page, name):
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if extra:
            dest = Path(extra) / "screenshots" / request.node.name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest / path.name)
        return path

    return shot


def login(browser, server, user):
    # bypass_csp: wait_for_function evaluates strings, which the CSP (rightly) forbids pages.
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/runs")
    assert "/login" in page.url
    page.fill("input[name=username]", user[0])
    page.fill("input[name=password]", user[1])
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready='1']")
    page.errors = errors
    return page


def test_an_operator_runs_a_workflow_from_the_page_and_watches_it_advance_live(chromium, registered, shots):
    page = login(chromium, registered, OPERATOR)
    page.goto(f"{registered.url}/workflows/browser_pipeline")
    page.wait_for_selector("#run-form")
    page.fill("#run-form textarea[name=inputs]", "{not json")
    page.click("#run-form button[type=submit]")
    page.wait_for_selector("#form-errors")
    assert "not valid JSON" in page.inner_text("#form-errors")
    page.fill("#run-form textarea[name=inputs]", '{"batch": 42}')
    page.fill("#run-form input[name=tags]", "browser")
    shots(page, "workflow-form")
    page.click("#run-form button[type=submit]")
    page.wait_for_url("**/runs/*")
    page.wait_for_selector("body[data-ready='1']")
    run_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__loads = performance.getEntriesByType('navigation').length")
    # Live, without reloading: the bar grows, steps start and complete, the run completes.
    page.wait_for_function("document.querySelector('#step-transform')?.dataset.status === 'RUNNING'", timeout=20000)
    shots(page, "run-in-progress")
    page.wait_for_function("parseFloat(document.querySelector('#run-bar').parentElement.dataset.percent) >= 40",
                           timeout=20000)
    page.wait_for_selector("#run-status [data-status='COMPLETED']", timeout=30000)
    assert page.get_attribute("#step-notify", "data-status") == "COMPLETED"
    assert page.inner_text("#run-progress-text").startswith("5/5")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded
    page.click("#step-extract .step-head")
    assert '"batch": 42' in page.inner_text("#step-extract .step-body")
    shots(page, "run-completed")
    page.goto(f"{registered.url}/runs?view=completed")
    page.wait_for_selector(f"tr[data-run='{run_id}']")
    shots(page, "runs-completed")
    assert not page.errors


def test_pause_resume_and_cancel_with_confirmation_from_the_page_show_compensations(chromium, registered, shots):
    page = login(chromium, registered, OPERATOR)
    page.goto(f"{registered.url}/workflows/browser_long")
    page.wait_for_selector("#run-form")
    page.click("#run-form button[type=submit]")
    page.wait_for_url("**/runs/*")
    page.wait_for_selector("#actions button[data-action=pause]:not([hidden])", timeout=20000)
    page.click("#actions button[data-action=pause]")
    page.wait_for_selector("#run-status [data-status='PAUSED']", timeout=20000)
    assert page.is_visible("#actions button[data-action=resume]")
    shots(page, "paused")
    page.click("#actions button[data-action=resume]")
    page.wait_for_selector("#run-status [data-status='RUNNING']", timeout=20000)
    page.wait_for_function("document.querySelector('#step-part1')?.dataset.status === 'COMPLETED'", timeout=20000)
    # Cancel asks first; "Keep running" changes nothing.
    page.click("#actions button[data-action=cancel]")
    page.wait_for_selector("#confirm[open]")
    assert "compensated" in page.inner_text("#confirm-text")
    page.click("#confirm-no")
    assert page.get_attribute("#run-status [data-status]", "data-status") == "RUNNING"
    page.click("#actions button[data-action=cancel]")
    page.wait_for_selector("#confirm[open]")
    page.fill("#confirm-reason", "wrong batch")
    shots(page, "cancel-confirmation")
    page.click("#confirm-yes")
    page.wait_for_selector("#run-status [data-status='CANCELLED']", timeout=30000)
    page.wait_for_selector("#step-part0.compensated", timeout=10000)
    assert "compensation COMPENSATED" in page.inner_text("#step-part0")
    page.click("#ops summary")
    page.wait_for_function("document.querySelector('#operator-actions').innerText.includes('wrong batch')",
                           timeout=15000)
    shots(page, "cancelled-with-compensations")
    assert not page.errors


def test_the_gantt_and_analytics_pages_draw_their_charts(chromium, registered, shots):
    page = login(chromium, registered, ADMIN)
    token = registered.token(ADMIN)
    run = requests.post(f"{registered.url}/api/v1/runs", json={"workflow": "browser_pipeline"},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    page.goto(f"{registered.url}/runs/{run['id']}/gantt")
    page.wait_for_selector("#gantt[data-rendered]", timeout=20000)
    page.wait_for_selector("#gantt canvas")
    gantt = page.evaluate("window.__cfGantt")
    assert gantt["bars"] >= 1
    shots(page, "gantt")
    page.click(".tabs.views a[data-view=dag]")
    page.wait_for_selector("#dag[data-rendered='5']", timeout=10000)
    shots(page, "dag")
    page.goto(f"{registered.url}/analytics?period=24h")
    page.wait_for_selector("body[data-loaded]", timeout=20000)
    page.wait_for_selector("#chart-sla canvas")
    assert int(page.inner_text("[data-kpi='Runs']")) >= 1
    shots(page, "analytics")
    page.goto(f"{registered.url}/runs/0000000000000000")
    assert "There is no run" in page.inner_text("main")
    assert not page.errors


def test_a_viewer_sees_the_runs_but_every_action_is_refused(chromium, registered, shots):
    token = registered.token(OPERATOR)
    run = requests.post(f"{registered.url}/api/v1/runs", json={"workflow": "browser_long"},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    page = login(chromium, registered, VIEWER)
    page.goto(f"{registered.url}/runs?view=active")
    page.wait_for_selector(f"tr[data-run='{run['id']}']", timeout=20000)
    assert page.query_selector_all("td.quick button") == []
    shots(page, "viewer-runs")
    page.goto(f"{registered.url}/runs/{run['id']}")
    page.wait_for_selector("#actions button[data-action=cancel]:not([hidden])", timeout=20000)
    assert page.is_disabled("#actions button[data-action=cancel]")
    assert "viewer" in page.get_attribute("#actions button[data-action=cancel]", "title")
    status = page.evaluate("""async (id) => {
        const csrf = JSON.parse(document.getElementById('cf-boot').textContent).csrf;
        const r = await fetch(`/api/v1/runs/${id}/cancel`, {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}, body: '{}'});
        return [r.status, (await r.json()).message];
    }""", run["id"])
    assert status[0] == 403 and "viewer" in status[1]
    shots(page, "viewer-run")
    requests.post(f"{registered.url}/api/v1/runs/{run['id']}/cancel", json={"reason": "test over"},
                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
