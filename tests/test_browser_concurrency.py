"""In Chromium: a run held back by its workflow's concurrency limit shows "waiting for a slot in
<key>: N ahead" on its page, and goes on when the slot frees; the workflow page shows the slots
in use per key. The dashboard tests' live server, worker and audit store."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.web_fixtures import LiveServer, browser_login
from tests.web_helpers import ADMIN, OPERATOR

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


def call(server: LiveServer, token: str, method: str, path: str, **kw: Any) -> Any:
    r = requests.request(
        method,
        f"{server.url}/api/v1{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        **kw,
    )
    assert r.status_code in (200, 201), f"{method} {path}: {r.status_code} {r.text}"
    return r.json()


def test_a_waiting_runs_page_says_why_and_the_workflow_page_shows_the_slots(
    chromium: Any, live_server: LiveServer, shots: Any
) -> None:
    admin = live_server.token(ADMIN)
    call(live_server, admin, "PUT", "/workflows/conc_browser", json={"definition": LIMITED})
    holder = call(
        live_server,
        admin,
        "POST",
        "/runs",
        json={"workflow": "conc_browser", "inputs": {"customer": "acme", "seconds": 60}},
    )["id"]
    waiting = call(
        live_server,
        admin,
        "POST",
        "/runs",
        json={"workflow": "conc_browser", "inputs": {"customer": "acme"}},
    )["id"]

    page = browser_login(chromium, live_server, OPERATOR, f"/runs/{waiting}")
    page.wait_for_selector("#waiting-banner:not([hidden])", timeout=20000)
    assert page.inner_text("#waiting-banner") == "waiting for a slot in acme: 0 ahead"
    assert page.get_attribute("#run-status [data-status]", "data-status") == "PENDING"
    # Nothing of it runs: it may be cancelled, not paused.
    assert page.is_hidden("#actions button[data-action=pause]")
    assert page.is_visible("#actions button[data-action=cancel]")
    shots(page, "waiting-run")

    page.goto(f"{live_server.url}/workflows/conc_browser")
    page.wait_for_selector("#concurrency-slots tr[data-key='acme']", timeout=20000)
    row = page.inner_text("#concurrency-slots tr[data-key='acme']")
    assert "1 / 1" in row and holder in row
    assert "limit 1 per key" in page.inner_text("#concurrency-slots")
    shots(page, "workflow-slots")

    # The slot frees: the waiting run's page drops the reason and follows it to its end, live.
    page.goto(f"{live_server.url}/runs/{waiting}")
    page.wait_for_selector("#waiting-banner:not([hidden])", timeout=20000)
    call(live_server, admin, "POST", f"/runs/{holder}/cancel", json={})
    page.wait_for_selector("#run-status [data-status='COMPLETED']", timeout=60000)
    assert page.is_hidden("#waiting-banner")
    assert page.errors == []
