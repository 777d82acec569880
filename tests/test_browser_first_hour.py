"""Issue 17, the dashboard items a new user hit (9, 10, 11, 14), in a real browser: Playwright
drives Debian's Chromium against the live `python -m web` server and the real worker of
tests/web_fixtures.py. Screenshots go under each test's tmp_path and, with CANVASFLOW_TEST_LOGS
(.ci/run: test-output/logs), to test-output/logs/screenshots/<test>/."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.test_browser_fleet import Http
from tests.web_fixtures import browser_login
from tests.web_helpers import ADMIN, OPERATOR, wait_for

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

# Item 9: one branch whose steps are all skipped by `when`, one that completes.
BRANCHY = {
    "name": "Branchy",
    "inputs": {"go": 0},
    "steps": [
        {"id": "fetch", "plugin": "builtin", "method": "echo", "params": {"n": 1}},
        {
            "id": "resize",
            "plugin": "builtin",
            "method": "echo",
            "depends_on": ["fetch"],
            "when": "inputs.go == 1",
        },
        {"id": "upload", "plugin": "builtin", "method": "echo", "depends_on": ["resize"]},
        {"id": "index", "plugin": "builtin", "method": "echo", "depends_on": ["fetch"]},
        {
            "id": "notify",
            "plugin": "builtin",
            "method": "echo",
            "depends_on": ["upload", "index"],
            "join": "any",
        },
    ],
}
# Items 10 and 11: a fan-in (a chord body: fh_manifest) and a step after it (fh_report); the
# branches carry one long unbroken argument, which the task page must wrap.
LONG_ARG = "L" * 40 + "/".join(f"segment{i:03d}" for i in range(150))
FAN_IN = {
    "name": "Fan in",
    "steps": [
        {"id": "fh_src", "plugin": "builtin", "method": "echo", "params": {"x": 1}},
        {
            "id": "fh_left",
            "plugin": "builtin",
            "method": "echo",
            "depends_on": ["fh_src"],
            "params": {"path": LONG_ARG},
        },
        {
            "id": "fh_right",
            "plugin": "builtin",
            "method": "echo",
            "depends_on": ["fh_src"],
            "params": {"r": 1},
        },
        {
            "id": "fh_manifest",
            "plugin": "builtin",
            "method": "echo",
            "depends_on": ["fh_left", "fh_right"],
            "params": {"l": "{{ steps.fh_left.output }}"},
        },
        {
            "id": "fh_report",
            "plugin": "builtin",
            "method": "echo",
            "depends_on": ["fh_manifest"],
            "params": {"m": "{{ steps.fh_manifest.output }}"},
        },
    ],
}
# Item 14: a saga whose last step fails once; the first run breaches its 1 s SLA.
SAGA = {
    "name": "Deploy saga",
    "mode": "sequential",
    "sla_seconds": 1,
    "steps": [
        {
            "id": "backup",
            "plugin": "builtin",
            "method": "sleep",
            "params": {"seconds": 1.1},
            "compensate": {"plugin": "builtin", "method": "echo", "params": {"undo": "backup"}},
        },
        *[
            {
                "id": sid,
                "plugin": "builtin",
                "method": "echo",
                "params": {"did": sid},
                "compensate": {"plugin": "builtin", "method": "echo", "params": {"undo": sid}},
            }
            for sid in ("migrate", "deploy")
        ],
        {
            "id": "verify",
            "plugin": "builtin",
            "method": "fail",
            "params": {"times": 1, "message": "smoke test failed"},
        },
    ],
}


@pytest.fixture(scope="module")
def server(live_server):
    token = live_server.token(ADMIN)
    for wid, body in (("fh_branchy", BRANCHY), ("fh_fan_in", FAN_IN), ("fh_saga", SAGA)):
        r = requests.put(
            f"{live_server.url}/api/v1/workflows/{wid}",
            json={"definition": body},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    return live_server


@pytest.fixture(scope="module")
def http(server):
    return Http(server)


@pytest.fixture(scope="module")
def fan_in_run(http):
    run_id = http.run("fh_fan_in")
    http.wait_run(run_id, {"COMPLETED"})
    return run_id


def login(browser, server, path):
    page = browser_login(browser, server, OPERATOR, path, timeout_ms=20000)
    page.set_viewport_size({"width": 1440, "height": 900})
    return page


def test_a_branch_whose_steps_were_all_skipped_says_skipped_and_is_named_by_its_steps(
    chromium, server, http, shots
):
    run_id = http.run("fh_branchy")
    http.wait_run(run_id, {"COMPLETED"})
    page = login(chromium, server, f"/runs/{run_id}")
    page.wait_for_selector("#branches .branch")
    cards = page.eval_on_selector_all(
        "#branches .branch",
        "bs => bs.map(b => [b.querySelector('.branch-name').textContent,"
        " b.querySelector('[data-status]').dataset.status])",
    )
    assert sorted(cards) == [["index", "COMPLETED"], ["resize → upload", "SKIPPED"]]
    assert "g1.b" not in page.inner_text("#branches")  # no internal names
    shots(page, "branches-skipped")
    assert not page.errors


def test_the_tasks_of_steps_after_a_fan_in_link_to_their_run_and_step(
    chromium, server, http, fan_in_run, shots
):
    for step in ("fh_manifest", "fh_report"):
        http.step_task(fan_in_run, step)  # found by ?run=: its row has the run id
    page = login(chromium, server, "/tasks?q=name:canvasflow.step+step:fh_manifest")
    row = f"#tasks-body tr[data-step='fh_manifest'][data-run='{fan_in_run}']"
    page.wait_for_selector(row)
    assert page.get_attribute(f"{row} a.run-link", "href") == f"/runs/{fan_in_run}"
    assert (
        page.get_attribute(f"{row} a.step-link", "href") == f"/runs/{fan_in_run}#step-fh_manifest"
    )
    shots(page, "tasks-fan-in-linked")
    page.goto(f"{server.url}/tasks?q=run:{fan_in_run}")
    page.wait_for_selector("#tasks-body tr[data-step='fh_report']")
    steps = page.eval_on_selector_all(
        "#tasks-body tr[data-task]", "rs => rs.map(r => r.dataset.step)"
    )
    assert {"fh_src", "fh_left", "fh_right", "fh_manifest", "fh_report"} <= set(steps)
    shots(page, "tasks-of-the-fan-in-run")
    assert not page.errors


def no_horizontal_scroll(page: Any) -> tuple[int, int]:
    return page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )


def test_task_detail_with_long_args_fits_a_1440_px_window(
    chromium, server, http, fan_in_run, shots
):
    for step in ("fh_left", "fh_manifest", "fh_report"):
        http.step_task(fan_in_run, step)
    tasks = http.get("/inspect/tasks", run=fan_in_run)["tasks"]
    detail = [http.get(f"/inspect/tasks/{t['uuid']}") for t in tasks]
    longest = max(detail, key=lambda t: len(t.get("args") or "") + len(t.get("result") or ""))
    page = login(chromium, server, f"/tasks/{longest['uuid']}")
    page.wait_for_selector("#task-args pre.repr")
    # the page shows an unbroken token far wider than the window (the case that overflowed)
    widest = page.evaluate(
        "Math.max(...[...document.querySelectorAll('pre')].flatMap(p => p.textContent.split(/\\s+/))"
        ".map(w => w.length))"
    )
    assert widest >= 300, widest
    scroll, client = no_horizontal_scroll(page)
    shots(page, "task-long-args")
    assert scroll <= client, (scroll, client)
    # and the step's own page with the same input expanded
    page.goto(f"{server.url}/runs/{fan_in_run}#step-fh_left")
    page.wait_for_selector("#step-fh_left .step-body")
    scroll, client = no_horizontal_scroll(page)
    shots(page, "run-step-long-input")
    assert scroll <= client, (scroll, client)
    assert not page.errors


def test_the_sla_gauge_caption_clears_its_tick_labels(chromium, server, fan_in_run, shots):
    page = login(chromium, server, "/analytics?period=24h")
    page.wait_for_selector("body[data-loaded]", timeout=20000)
    page.wait_for_selector("#chart-sla svg text")
    boxes = page.evaluate(
        """(() => {
        const r = (el) => { const b = el.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
        const ticks = [...document.querySelectorAll('#chart-sla svg text')]
          .filter(t => /^\\d+$/.test(t.textContent.trim())).map(r);
        return {caption: r(document.getElementById('sla-caption')),
                text: document.getElementById('sla-caption').textContent, ticks};
    })()"""
    )
    shots(page, "analytics-gauge")
    assert "met" in boxes["text"] and "breached" in boxes["text"]
    assert len(boxes["ticks"]) >= 5  # 0, 10, ..., 100

    def meet(a, b):
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    assert [t for t in boxes["ticks"] if meet(boxes["caption"], t)] == []
    assert not page.errors


def test_the_dag_has_an_arrowhead_on_every_edge_a_legend_and_readable_node_text(
    chromium, server, fan_in_run, shots
):
    page = login(chromium, server, f"/runs/{fan_in_run}/dag")
    page.wait_for_selector("#dag[data-rendered='5']")
    edges = page.eval_on_selector_all(
        "#dag path.dag-edge",
        "es => es.map(e => [e.dataset.source, e.dataset.target, e.getAttribute('marker-end')])",
    )
    assert (
        len(edges) == 5
    )  # src->left, src->right, left->manifest, right->manifest, manifest->report
    marker = page.evaluate("!!document.querySelector('#dag marker#dag-arrow path')")
    assert marker and all(m == "url(#dag-arrow)" for _, _, m in edges), edges
    assert page.is_visible("#dag .dag-legend")
    assert "depends on" in page.inner_text("#dag .dag-legend")
    sizes = page.eval_on_selector_all(
        "#dag .dag-node text", "ts => ts.map(t => parseFloat(getComputedStyle(t).fontSize))"
    )
    assert sizes and min(sizes) >= 12, sizes
    shots(page, "dag")
    page.click("#dag .dag-node[data-step='fh_report']")  # a click still opens the step
    page.wait_for_selector("#step-fh_report .step-body")
    assert not page.errors


def test_retrying_a_compensated_saga_from_the_page_reruns_the_undone_steps(
    chromium, server, http, shots
):
    run_id = http.run("fh_saga")
    http.wait_run(run_id, {"FAILED"})
    page = login(chromium, server, f"/runs/{run_id}")
    page.wait_for_selector("#timeline li.step[data-step='backup'][data-status='COMPENSATED']")
    shots(page, "saga-compensated")
    page.click("#actions button[data-action=retry]")
    page.wait_for_selector("#run-status [data-status='COMPLETED']", timeout=40000)
    page.reload()
    page.wait_for_selector("#timeline li.step[data-step='verify'][data-status='COMPLETED']")
    statuses = page.eval_on_selector_all(
        "#timeline li.step", "ls => ls.map(l => [l.dataset.step, l.dataset.status])"
    )
    assert statuses == [[s, "COMPLETED"] for s in ("backup", "migrate", "deploy", "verify")]
    labels = page.inner_text("#timeline")
    assert "operator retry 1" in page.inner_text("#step-backup .step-head")
    assert "operator retry 1" in page.inner_text("#step-verify .step-head")
    assert "retry 1/0" not in labels and "/0" not in labels
    # the SLA: the run's clock was not restarted, the first run's figure and the retry's are shown
    wait_for(lambda: page.is_visible("#sla-first") and page.is_visible("#sla-retry"), 20, "SLA")
    assert "first run" in page.inner_text("#sla-first")
    assert page.get_attribute("#sla-first .sla", "class").endswith("sla-breached")
    assert "retry" in page.inner_text("#sla-retry") and page.query_selector("#sla-retry .sla")
    shots(page, "saga-retried")
    detail = http.get(f"/runs/{run_id}")
    assert detail["sla"]["first"]["status"] == "breached"
    assert detail["sla"]["retry"]["count"] == 1
    backup = next(s for s in detail["steps"] if s["id"] == "backup")
    assert (backup["operator_retries"], backup["attempt"], backup["attempts_allowed"]) == (1, 1, 1)
    assert not page.errors


LABEL_BOXES = """ls => ls.map(l => {
    const text = [...l.childNodes].find(n => n.nodeType === 3 && n.textContent.trim());
    const r = document.createRange();
    r.selectNodeContents(text);
    const t = r.getBoundingClientRect();
    const i = l.querySelector('input, select').getBoundingClientRect();
    return {label: text.textContent.trim(), text: [t.top, t.bottom, t.right],
            input: [i.top, i.bottom, i.left]};
})"""


def assert_labels_beside_their_inputs(page: Any, where: str) -> None:
    boxes = page.eval_on_selector_all("#task-filters label", LABEL_BOXES)
    assert {b["label"] for b in boxes} >= {"received from", "to"}, boxes
    for b in boxes:
        (t_top, t_bottom, t_right), (i_top, i_bottom, i_left) = b["text"], b["input"]
        # the same line: the label's text lies within its input's height, just left of it
        assert i_top - 4 <= t_top and t_bottom <= i_bottom + 4, (where, b)
        assert 0 <= i_left - t_right <= 24, (where, b)


def test_the_tasks_filter_row_keeps_each_label_with_its_input_at_1440_px(chromium, server, shots):
    # At 1440 px the row wrapped between "to" and its date input, leaving "to" alone on a line:
    # it may wrap between filters, never inside one.
    page = login(chromium, server, "/tasks")
    page.wait_for_selector("#task-filters input[name=received_before]")
    assert page.viewport_size == {"width": 1440, "height": 900}
    shots(page, "tasks-filter-row-1440")
    assert_labels_beside_their_inputs(page, "1440x900")
    # and however the row wraps: a long worker name and a search typed, narrower windows
    page.evaluate(
        """() => {
            const o = document.createElement('option');
            o.textContent = 'celery@worker-with-a-rather-long-hostname.example.internal';
            document.querySelector('#task-filters select[name=worker]').appendChild(o);
            document.querySelector('#task-filters input[name=q]').value = 'step:load name:x';
        }"""
    )
    for width in range(1000, 1441, 40):
        page.set_viewport_size({"width": width, "height": 900})
        assert_labels_beside_their_inputs(page, f"{width}x900")
    page.set_viewport_size({"width": 1440, "height": 900})
    shots(page, "tasks-filter-row-1440-long-worker")
    assert not page.errors
