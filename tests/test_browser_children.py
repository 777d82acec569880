"""Child runs in the dashboard, in Chromium: a sub-workflow step links to its child run, the
child run shows breadcrumbs back to its parent and the step, and the runs page hides child runs
until asked (the toggle, and the "children of run" filter)."""

from __future__ import annotations

import uuid

import pytest

from orchestrator import Workflow
from tests.test_subworkflows import child_wf
from tests.web_fixtures import browser_login
from tests.web_helpers import VIEWER

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


def test_parent_step_links_to_its_child_and_the_child_has_breadcrumbs(
    chromium, live_server, orchestrator_client, shots
) -> None:
    client = orchestrator_client
    child = child_wf(client, f"bchild-{uuid.uuid4().hex[:6]}")
    tag = f"b{uuid.uuid4().hex[:8]}"
    run = client.submit(
        Workflow(f"bparent-{uuid.uuid4().hex[:6]}", tags=[tag])
        .subworkflow("region", child, inputs={"n": 2})
        .outputs(doubled="{{ steps.region.output.doubled }}")
    )
    assert run.wait(60).status == "COMPLETED"
    (kid,) = run.children()

    page = browser_login(chromium, live_server, VIEWER, f"/runs/{run.id}")
    link = page.locator(f'#step-region a.child-run[data-child="{kid.id}"]')
    link.wait_for()
    assert link.get_attribute("href") == f"/runs/{kid.id}"
    assert '{"doubled":4}' in page.locator("code.run-result").inner_text()
    shots(page, "parent")
    link.click()
    page.wait_for_url(f"**/runs/{kid.id}")
    crumbs = page.locator("nav.breadcrumbs")
    crumbs.wait_for()
    assert page.locator("nav.breadcrumbs a.crumb-parent").get_attribute("href") == f"/runs/{run.id}"
    assert "step region" in crumbs.inner_text()
    shots(page, "child")
    page.locator("nav.breadcrumbs a.crumb-parent").click()
    page.wait_for_url(f"**/runs/{run.id}")
    page.locator("a.children-link").wait_for()

    # The runs page: the child is hidden by default, shown with the toggle, and by the filter.
    page.goto(f"{live_server.url}/runs?view=all")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("input[name=tag]", tag)
    page.click("#filters button[type=submit]")
    page.locator(f'tr[data-run="{run.id}"]').wait_for()
    assert page.locator(f'tr[data-run="{kid.id}"]').count() == 0
    page.select_option("select[name=children]", "include")
    page.click("#filters button[type=submit]")
    page.locator(f'tr[data-run="{kid.id}"]').wait_for()
    assert run.id in page.locator(f'tr[data-run="{kid.id}"] .child-of').inner_text()
    page.goto(f"{live_server.url}/runs?parent={run.id}")
    page.locator(f'tr[data-run="{kid.id}"]').wait_for()
    assert page.locator(f'tr[data-run="{run.id}"]').count() == 0
    shots(page, "children-of")
    assert page.errors == []
    page.context.close()
