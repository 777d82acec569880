"""The Notifications page in Chromium: an admin adds an endpoint (its secret shown once), a
failed run's notification ends in the dead letters, and a replay from the page delivers it;
others are told the page is for admins."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import Workflow
from tests.notify_helpers import Receiver
from tests.web_fixtures import browser_login
from tests.web_helpers import ADMIN, VIEWER, wait_for

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


def test_an_admin_adds_an_endpoint_and_replays_a_dead_letter_from_the_page(
    chromium: Any,
    live_server: Any,
    web_fleet: Any,
    orchestrator_client: Any,
    start_worker: Any,
    shots: Any,
) -> None:
    answers = {"status": 500}
    rcv = Receiver(lambda n: answers["status"])
    start_worker(web_fleet.settings.with_(notify_max_attempts=1, notify_backoff=0), queues="notify")
    page = browser_login(chromium, live_server, ADMIN)
    try:
        page.click("#nav-notifications")
        page.wait_for_selector("body[data-loaded='1']")
        assert page.url.endswith("/admin/notifications")
        page.fill("#endpoint-form input[name=url]", "ftp://files.example/in")
        page.click("#endpoint-form button[type=submit]")
        page.wait_for_selector("#endpoint-errors .error")
        assert "is not an http(s) URL" in page.inner_text("#endpoint-errors")

        page.fill("#endpoint-form input[name=url]", rcv.url)
        page.uncheck("#endpoint-events input[value=sla_breached]")
        page.fill("#endpoint-form input[name=workflows]", "page_nt_fail")
        page.click("#endpoint-form button[type=submit]")
        page.wait_for_selector("#new-secret:not([hidden])")
        secret = page.inner_text("#new-secret-value").strip()
        assert len(secret) >= 32
        ep_id = page.get_attribute("#new-secret", "data-endpoint")
        row = page.wait_for_selector(f"#endpoints-table tr[data-endpoint='{ep_id}']")
        assert "failed, compensation_failed" in row.inner_text()
        assert secret not in page.inner_text("#endpoints-table")
        shots(page, "notifications-endpoint")
        page.click(f"#endpoints-table button.toggle-endpoint[data-endpoint='{ep_id}']")
        page.wait_for_selector(f"#endpoints-table tr[data-endpoint='{ep_id}'][data-enabled='']")
        page.click(f"#endpoints-table button.toggle-endpoint[data-endpoint='{ep_id}']")
        page.wait_for_selector(f"#endpoints-table tr[data-endpoint='{ep_id}'][data-enabled='1']")

        wf = Workflow("page_nt_fail").step("bad", "builtin", "fail", params={"message": "no"})
        run = orchestrator_client.submit(wf)
        run.wait(60)
        page.select_option("#delivery-status", "dead")
        dead = page.wait_for_selector(
            f"#deliveries-table tr[data-status=dead]:has(a[href='/runs/{run.id}'])", timeout=60_000
        )
        delivery = dead.get_attribute("data-delivery")
        dead.query_selector("button.show-attempts").click()
        page.wait_for_selector(f"tr[data-attempts-of='{delivery}']:has-text('HTTP 500')")
        shots(page, "notifications-dead-letter")

        answers["status"] = 200
        page.click(f"#deliveries-table button.replay[data-delivery='{delivery}']")
        page.select_option("#delivery-status", "delivered")
        page.wait_for_selector(
            f"#deliveries-table tr[data-delivery='{delivery}'][data-status=delivered]",
            timeout=60_000,
        )
        wait_for(lambda: len(rcv.requests) >= 2, 30, "the replayed request")
        assert rcv.requests[-1].json["run"]["id"] == run.id
        assert page.errors == []

        page.once("dialog", lambda d: d.accept())
        page.click(f"#endpoints-table button.remove-endpoint[data-endpoint='{ep_id}']")
        page.wait_for_selector(f"#endpoints-table tr[data-endpoint='{ep_id}']", state="detached")
    finally:
        page.context.close()
        rcv.close()

    viewer = browser_login(chromium, live_server, VIEWER)
    try:
        assert viewer.query_selector("#nav-notifications") is None
        resp = viewer.goto(f"{live_server.url}/admin/notifications")
        assert resp.status == 403
        assert "admin role" in viewer.inner_text("body")
    finally:
        viewer.context.close()
