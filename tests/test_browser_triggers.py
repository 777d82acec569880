"""How a run started, in a real browser (Playwright, Debian's Chromium) against a live
`python -m web` and a real worker: the runs page filters on the trigger and shows it, and the run
page names the event trigger and its key."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.web_fixtures import browser_login
from tests.web_helpers import ADMIN, VIEWER

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


def test_the_runs_page_filters_on_the_trigger_and_the_run_page_names_event_and_key(
    chromium, live_server, shots
) -> None:
    token = live_server.token(ADMIN)
    bearer = {"Authorization": f"Bearer {token}"}
    event = f"browser.{uuid.uuid4().hex[:8]}"
    wid = f"browser_ev_{uuid.uuid4().hex[:6]}"
    body = {
        "triggers": [{"event": event}],
        "steps": [{"id": "a", "plugin": "builtin", "method": "echo", "params": {"x": 1}}],
    }
    r = requests.put(
        f"{live_server.url}/api/v1/workflows/{wid}",
        json={"definition": body},
        headers=bearer,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    published = requests.post(
        f"{live_server.url}/api/v1/events",
        json={"name": event, "key": "order-5"},
        headers=bearer,
        timeout=10,
    ).json()
    by_event = published["started"][0]["run_id"]
    by_api = requests.post(
        f"{live_server.url}/api/v1/runs", json={"workflow": wid}, headers=bearer, timeout=10
    ).json()["id"]
    page = browser_login(chromium, live_server, VIEWER)
    page.goto(f"{live_server.url}/runs?view=all")
    page.wait_for_selector(f"tr[data-run='{by_api}']", timeout=20000)
    page.wait_for_selector(f"tr[data-run='{by_event}']", timeout=20000)
    assert f"event {event} (key order-5)" in page.inner_text(f"tr[data-run='{by_event}'] .trigger")
    page.select_option("select[name=trigger_type]", "event")
    page.click("#filters button[type=submit]")
    page.wait_for_selector(f"tr[data-run='{by_api}']", state="detached", timeout=20000)
    assert page.query_selector(f"tr[data-run='{by_event}']") is not None
    shots(page, "runs-filtered-by-trigger")
    page.goto(f"{live_server.url}/runs/{by_event}")
    page.wait_for_selector("#run-trigger", timeout=20000)
    assert page.inner_text("#run-trigger") == f"event {event} (key order-5)"
    shots(page, "run-event-trigger")
    assert page.errors == []
