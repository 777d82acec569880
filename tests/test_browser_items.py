"""A run with a mapped step in the dashboard (issue 15), in Chromium: the mapped step is one row
with its counts and a bar; expanded, its items page on the server and filter by status; an item
opens like a step (input, output, attempts, logs); the DAG shows the step as one node with its
count, and the Gantt one grouped bar that expands into the items' rows. The run's records are
written to the live server's audit store through the recorder's projection (events of the
engine's shape, tests/items_helpers.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from orchestrator.audit import AuditStore, queries
from tests.items_helpers import default_outcome, mapped_run
from tests.web_fixtures import browser_login
from tests.web_helpers import VIEWER

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

N = 120
FAILED = [i for i in range(N) if default_outcome(i)[0] == "FAILED"]


@pytest.fixture(scope="module")
def run_id(live_server: Any) -> str:
    rid = f"bitems{uuid.uuid4().hex[:8]}"
    evs, lk = mapped_run(rid, N, logs_every=10)
    store = AuditStore(live_server.settings.database_url)
    store.apply(evs, lk)
    store.dispose()
    return rid


def range_text(page: Any) -> str:
    return page.inner_text("#step-resize .items-range")


def test_a_mapped_step_is_one_row_that_pages_filters_and_opens_its_items(
    chromium: Any, live_server: Any, run_id: str, shots: Any
) -> None:
    page = browser_login(chromium, live_server, VIEWER, f"/runs/{run_id}")
    page.wait_for_selector("#step-resize .map-badge")
    # collapsed: one row with the counts and the bar, no item listed
    assert [el.get_attribute("data-step") for el in page.query_selector_all("#timeline > li")] == [
        "list_files",
        "resize",
        "publish",
    ]
    assert page.inner_text("#step-resize .map-badge") == f"map {N - len(FAILED)}/{N}"
    counts = page.inner_text("#step-resize .map-counts")
    assert f"{N - len(FAILED)} COMPLETED" in counts and f"{len(FAILED)} FAILED" in counts
    assert page.get_attribute("#step-resize .map-bar", "data-percent") == "100.0"
    assert page.query_selector("#step-resize ul.items") is None
    shots(page, "collapsed")

    page.click("#step-resize .step-head")
    page.wait_for_function(
        "document.querySelectorAll('#step-resize ul.items > li.item').length === 50"
    )
    assert range_text(page) == f"1–50 of {N}"
    page.click("#step-resize button[data-items-page='1']")
    page.wait_for_function(
        "document.querySelector('#step-resize ul.items > li.item')?.dataset.item === '50'"
    )
    assert range_text(page) == f"51–100 of {N}"

    page.select_option("#step-resize select.items-status", "FAILED")
    page.wait_for_function(
        f"document.querySelectorAll('#step-resize ul.items > li.item').length === {len(FAILED)}"
    )
    items = page.query_selector_all("#step-resize ul.items > li.item")
    assert [int(el.get_attribute("data-item")) for el in items] == FAILED
    assert {el.get_attribute("data-status") for el in items} == {"FAILED"}
    assert range_text(page) == f"1–{len(FAILED)} of {len(FAILED)}"
    shots(page, "filtered")

    page.click(f"#step-resize li.item[data-item='{FAILED[0]}'] .item-head")
    page.wait_for_selector(f"#step-resize li.item[data-item='{FAILED[0]}'] .item-body ol.attempts")
    body = page.inner_text(f"#step-resize li.item[data-item='{FAILED[0]}'] .item-body")
    assert "attempt 3" in body and "boom 3" in body
    page.select_option("#step-resize select.items-status", "")
    page.wait_for_function(
        "document.querySelectorAll('#step-resize ul.items > li.item').length === 50"
    )
    page.click("#step-resize li.item[data-item='20'] .item-head")
    page.wait_for_selector("#step-resize li.item[data-item='20'] .item-output pre")
    assert "f20.png" in page.inner_text("#step-resize li.item[data-item='20'] .item-output")
    assert "resize[20] line 1" in page.inner_text("#step-resize li.item[data-item='20'] .logs")
    shots(page, "item")
    assert page.errors == []
    page.context.close()


def test_the_dag_node_and_the_gantt_group_of_a_mapped_step(
    chromium: Any, live_server: Any, run_id: str, shots: Any
) -> None:
    page = browser_login(chromium, live_server, VIEWER, f"/runs/{run_id}/dag")
    node = page.wait_for_selector(".dag-node.mapped[data-step='resize']")
    assert node.get_attribute("data-items") == str(N)
    assert f"{N - len(FAILED)}/{N}" in node.text_content()
    shots(page, "dag")
    page.goto(f"{live_server.url}/runs/{run_id}/gantt")
    page.wait_for_function("window.__cfGantt && window.__cfGantt.bars > 0")
    collapsed = page.evaluate("window.__cfGantt")
    assert collapsed["expand"] is None and collapsed["bars"] < 10  # items are one grouped bar
    assert page.errors == []
    page.context.close()


def test_a_mapped_steps_counts_follow_its_items_live(
    chromium: Any, live_server: Any, shots: Any
) -> None:
    """Item events written to the real stream while the page is open: the live server's
    recorder records them, its relay sends them folded, and the row's counts follow."""
    import redis

    from orchestrator.engine.runstate import RunState
    from orchestrator.keys import Keys
    from tests.items_helpers import run_meta
    from tests.web_helpers import wait_for

    settings = live_server.settings
    r = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    rid = f"bitems{uuid.uuid4().hex[:8]}"
    evs, _ = mapped_run(rid, N)
    RunState(r, keys, state_ttl=600).create(run_meta(rid), ["list_files", "resize", "publish"])
    cut = next(i for i, e in enumerate(evs) if e.step == "resize[60]")

    def publish(part: list[Any]) -> None:
        pipe = r.pipeline(transaction=True)
        for e in part:
            pipe.xadd(keys.events, {"run": rid, "seq": e.seq, "type": e.type, "step": e.step,
                                    "status": e.status, "ts": e.ts, "data": e.data_json})  # fmt: skip
        pipe.hset(keys.run(rid), mapping={"seq": str(part[-1].seq)})
        pipe.execute()

    publish(evs[1:cut])
    store = AuditStore(settings.database_url)
    first = sum(1 for i in range(60) if default_outcome(i)[0] == "COMPLETED")
    wait_for(
        lambda: (
            (c := queries.item_counts(store, rid).get("resize"))
            and c.counts.get("COMPLETED") == first
        ),
        30,
        "the first 60 items to be recorded",
    )
    page = browser_login(chromium, live_server, VIEWER, f"/runs/{rid}")
    page.wait_for_selector("#step-resize .map-badge")
    assert page.inner_text("#step-resize .map-badge") == f"map {first}/{N}"
    publish(evs[cut:])
    page.wait_for_function(
        f"document.querySelector('#step-resize .map-badge')?.textContent === 'map {N - len(FAILED)}/{N}'",
        timeout=30_000,
    )
    live = page.evaluate("window.__cfLive.received")
    # the rest of the run's events (hundreds) reached the page as a few folded summaries
    assert live < 40, live
    shots(page, "live")
    assert page.errors == []
    page.context.close()
    store.dispose()
    r.close()
