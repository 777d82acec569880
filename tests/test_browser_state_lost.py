"""A run whose hot state Redis lost, in a real browser: the list and the run page show the
"state lost" badge with its explanation, and an operator resolves it with a reason (Playwright
driving Debian's Chromium against a live `python -m web --recorder` and a real worker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.audit import queries
from orchestrator.audit.store import AuditStore
from tests.lost_helpers import NOWHERE, lose
from tests.web_fixtures import browser_login
from tests.web_helpers import OPERATOR, wait_recorded

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


@pytest.fixture
def store(web_fleet: Any) -> Iterator[AuditStore]:
    s = AuditStore(web_fleet.settings.database_url)
    yield s
    s.dispose()


@pytest.fixture
def client(web_fleet: Any) -> Iterator[Any]:
    from orchestrator import Client

    c = Client(web_fleet.settings)
    yield c
    c.close()


def test_an_operator_sees_a_lost_run_badged_and_resolves_it_with_a_reason_from_the_page(
    chromium, live_server, client, store, shots
) -> None:
    run = client.submit(NOWHERE)
    wait_recorded(store, run.id, {"PENDING"})  # the live server's recorder wrote it to SQL
    lose(client, run.id)
    page = browser_login(chromium, live_server, OPERATOR, "/runs?view=pending")
    row = f"#runs-body tr[data-run='{run.id}']"
    page.wait_for_selector(f"{row} [data-state-lost]", timeout=20000)
    assert "Redis no longer knows this run" in page.get_attribute(
        f"{row} [data-state-lost]", "title"
    )
    shots(page, "list-with-lost-run")
    page.click(f"{row} a[href='/runs/{run.id}']")
    page.wait_for_selector("#run-status [data-state-lost]", timeout=20000)
    assert "State lost" in page.inner_text("#lost-banner")
    assert page.is_visible("#actions button[data-action=resolve-failed]")
    assert page.is_visible("#actions button[data-action=resolve-cancelled]")
    assert not page.is_visible("#actions button[data-action=cancel]")
    assert not page.is_visible("#actions button[data-action=pause]")
    # "Leave it" changes nothing; a reason is required.
    page.click("#actions button[data-action=resolve-failed]")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-no")
    page.click("#actions button[data-action=resolve-failed]")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-yes")
    page.wait_for_function(
        "document.body.innerText.includes('a reason is required')", timeout=10000
    )
    assert queries.get_run(store, run.id).status == "PENDING"
    page.click("#actions button[data-action=resolve-failed]")
    page.wait_for_selector("#confirm[open]")
    page.fill("#confirm-reason", "lost when Redis restarted")
    shots(page, "resolve-prompt")
    page.click("#confirm-yes")
    page.wait_for_selector("#run-status [data-status='FAILED']", timeout=20000)
    assert page.is_hidden("#lost-banner")
    assert page.query_selector("#run-status [data-state-lost]") is None
    page.click("#ops summary")
    page.wait_for_function(
        "document.querySelector('#operator-actions').innerText.includes('lost when Redis restarted')",
        timeout=15000,
    )
    shots(page, "resolved")
    run_row = queries.get_run(store, run.id)
    assert run_row.status == "FAILED" and "lost when Redis restarted" in run_row.error
    assert not page.errors
