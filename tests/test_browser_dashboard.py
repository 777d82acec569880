"""The dashboard in a real browser: Playwright drives Debian's Chromium (never a downloaded one)
against a live `python -m web` server and a real worker. Each test saves screenshots under its
tmp_path (and CANVASFLOW_TEST_LOGS/screenshots when set)."""

from __future__ import annotations

import time

import pytest
import requests

from tests.web_fixtures import browser_login
from tests.web_helpers import ADMIN, OPERATOR, VIEWER, wait_for

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

LIVE = {
    "name": "Browser pipeline",
    "mode": "sequential",
    "sla_seconds": 120,
    "inputs": {"batch": 7},
    "steps": [
        {
            "id": "extract",
            "plugin": "builtin",
            "method": "echo",
            "params": {"batch": "{{ inputs.batch }}"},
            "compensate": {"plugin": "builtin", "method": "echo", "params": {"undo": "extract"}},
        },
        {
            "id": "transform",
            "plugin": "builtin",
            "method": "sleep",
            "params": {"seconds": 0.8},
            "compensate": {"plugin": "builtin", "method": "echo", "params": {"undo": "transform"}},
        },
        {"id": "load", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.8}},
        {"id": "publish", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.8}},
        {"id": "notify", "plugin": "builtin", "method": "echo", "params": {"done": True}},
    ],
}
LONG = {
    "name": "Long saga",
    "mode": "sequential",
    "steps": [
        {
            "id": f"part{i}",
            "plugin": "builtin",
            "method": "sleep",
            "params": {"seconds": 1.0},
            "compensate": {"plugin": "builtin", "method": "echo", "params": {"undo": i}},
        }
        for i in range(8)
    ],
}

FOLLOW = {
    "name": "Followed",
    "mode": "sequential",
    "steps": [
        {"id": f"w{i}", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.3}}
        for i in range(8)
    ]
    + [
        {"id": "answer", "plugin": "builtin", "method": "echo", "params": {"answer": 42}},
        {"id": "echoed", "plugin": "builtin", "method": "echo", "params": {"echoed": "yes"}},
    ],
}


@pytest.fixture(scope="module")
def registered(live_server):
    token = live_server.token(ADMIN)
    for wid, body in (
        ("browser_pipeline", LIVE),
        ("browser_long", LONG),
        ("browser_follow", FOLLOW),
    ):
        r = requests.put(
            f"{live_server.url}/api/v1/workflows/{wid}",
            json={"definition": body},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    return live_server


# Every status a step row ever showed, per step: a 0.8 s step may start and finish between two
# polls of wait_for_function, so "it was RUNNING" is checked on this record, not on a poll.
SEEN = """
window.__cfSeen = {};
const note = (el) => {
  const d = el.dataset;
  if (!d || !d.step || !d.status) return;
  const seen = (window.__cfSeen[d.step] ||= []);
  if (!seen.includes(d.status)) seen.push(d.status);
};
new MutationObserver((muts) => {
  for (const m of muts) {
    if (m.type === "attributes") note(m.target);
    for (const n of m.addedNodes) {
      if (n.nodeType !== 1) continue;
      note(n);
      n.querySelectorAll("li.step").forEach(note);
    }
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"]});
"""


@pytest.fixture(scope="module")
def orchestrator_client_live(registered):
    from orchestrator import Client

    c = Client(registered.settings)
    yield c
    c.close()


def login(browser, server, user):
    return browser_login(browser, server, user, init_script=SEEN)


def test_an_operator_runs_a_workflow_from_the_page_and_watches_it_advance_live(
    chromium, registered, shots
):
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
    page.wait_for_function("(window.__cfSeen.transform || []).includes('RUNNING')", timeout=20000)
    shots(page, "run-in-progress")
    page.wait_for_function(
        "parseFloat(document.querySelector('#run-bar').parentElement.dataset.percent) >= 40",
        timeout=20000,
    )
    page.wait_for_selector("#run-status [data-status='COMPLETED']", timeout=30000)
    assert page.get_attribute("#step-notify", "data-status") == "COMPLETED"
    assert page.inner_text("#run-progress-text").startswith("5/5")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded
    assert page.evaluate("window.__cfSeen.transform")[-2:] == ["RUNNING", "COMPLETED"]
    page.click("#step-extract .step-head")
    # The input the plugin got: the template {{ inputs.batch }} rendered with the form's inputs.
    assert page.get_attribute("#step-extract .step-input", "data-rendered") == "1"
    assert '"batch": 42' in page.inner_text("#step-extract .step-input")
    shots(page, "run-completed")
    page.goto(f"{registered.url}/runs?view=completed")
    page.wait_for_selector(f"tr[data-run='{run_id}']")
    shots(page, "runs-completed")
    assert not page.errors


def test_pause_resume_and_cancel_with_confirmation_from_the_page_show_compensations(
    chromium, registered, shots
):
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
    page.wait_for_function(
        "document.querySelector('#step-part1')?.dataset.status === 'COMPLETED'", timeout=20000
    )
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
    page.wait_for_function(
        "document.querySelector('#operator-actions').innerText.includes('wrong batch')",
        timeout=15000,
    )
    shots(page, "cancelled-with-compensations")
    assert not page.errors


def test_the_gantt_and_analytics_pages_draw_their_charts(chromium, registered, shots):
    page = login(chromium, registered, ADMIN)
    token = registered.token(ADMIN)
    run = requests.post(
        f"{registered.url}/api/v1/runs",
        json={"workflow": "browser_pipeline"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()
    page.goto(f"{registered.url}/runs/{run['id']}/gantt")
    page.wait_for_selector("#gantt[data-rendered]", timeout=20000)
    page.wait_for_selector("#gantt canvas")
    gantt = page.evaluate("window.__cfGantt")
    assert gantt["bars"] >= 1
    shots(page, "gantt")
    # Finished in ~3 s against a 2-minute SLA: the chart opens on the bars, not on the SLA line
    # (which would leave every bar a sliver), and says the line is one drag away.
    headers = {"Authorization": f"Bearer {token}"}
    detail = wait_for(
        lambda: (
            (
                d := requests.get(
                    f"{registered.url}/api/v1/runs/{run['id']}", headers=headers, timeout=10
                ).json()
            )["status"]
            == "COMPLETED"
            and d
        ),
        30,
        "the pipeline run to complete",
    )
    page.reload()
    page.wait_for_function("window.__cfGantt && window.__cfGantt.bars >= 5", timeout=20000)
    gantt = page.evaluate("window.__cfGantt")
    assert gantt["sla"] == 120 and gantt["axisMax"] >= 120 and not gantt["slaInView"]
    assert detail["duration"] <= gantt["end"] < 60, (detail["duration"], gantt)
    shots(page, "gantt-finished")
    page.click(".tabs.views a[data-view=dag]")
    page.wait_for_selector("#dag[data-rendered='5']", timeout=10000)
    shots(page, "dag")
    page.goto(f"{registered.url}/analytics?period=24h")
    page.wait_for_selector("body[data-loaded]", timeout=20000)
    page.wait_for_selector("#chart-sla svg")
    assert int(page.inner_text("[data-kpi='Runs']")) >= 1
    shots(page, "analytics")
    resp = page.goto(f"{registered.url}/runs/0000000000000000")
    assert resp.status == 404 and "There is no run" in page.inner_text("main")
    shots(page, "unknown-run-404")
    assert not page.errors


def test_a_viewer_sees_the_runs_but_every_action_is_refused(chromium, registered, shots):
    token = registered.token(OPERATOR)
    run = requests.post(
        f"{registered.url}/api/v1/runs",
        json={"workflow": "browser_long"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()
    page = login(chromium, registered, VIEWER)
    page.goto(f"{registered.url}/runs?view=active")
    page.wait_for_selector(f"tr[data-run='{run['id']}']", timeout=20000)
    assert page.query_selector_all("td.quick button") == []
    shots(page, "viewer-runs")
    page.goto(f"{registered.url}/runs/{run['id']}")
    page.wait_for_selector("#actions button[data-action=cancel]:not([hidden])", timeout=20000)
    assert page.is_disabled("#actions button[data-action=cancel]")
    assert "viewer" in page.get_attribute("#actions button[data-action=cancel]", "title")
    status = page.evaluate(
        """async (id) => {
        const csrf = JSON.parse(document.getElementById('cf-boot').textContent).csrf;
        const r = await fetch(`/api/v1/runs/${id}/cancel`, {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}, body: '{}'});
        return [r.status, (await r.json()).message];
    }""",
        run["id"],
    )
    assert status[0] == 403 and "viewer" in status[1]
    shots(page, "viewer-run")
    requests.post(
        f"{registered.url}/api/v1/runs/{run['id']}/cancel",
        json={"reason": "test over"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_an_admin_manages_users_and_tokens_on_the_users_page_and_others_are_told_what_to_do(
    chromium, registered, shots
):
    page = login(chromium, registered, ADMIN)
    page.on("dialog", lambda d: d.accept())
    page.click("#nav-users")
    page.wait_for_selector("body[data-loaded]")
    assert page.url.endswith("/admin/users")
    page.fill("#user-form input[name=name]", "ursula")
    page.fill("#user-form input[name=password]", "short")
    page.select_option("#user-form select[name=role]", "operator")
    page.evaluate(
        "document.querySelector('#user-form input[name=password]').removeAttribute('minlength')"
    )
    page.click("#user-form button[type=submit]")
    page.wait_for_selector("#user-errors .error")
    assert "at least 8" in page.inner_text("#user-errors")
    page.fill("#user-form input[name=password]", "ursula-password")
    page.click("#user-form button[type=submit]")
    page.wait_for_selector("tr[data-user='ursula']")
    assert page.eval_on_selector("tr[data-user='ursula'] select.role", "s => s.value") == "operator"
    page.select_option("tr[data-user='ursula'] select.role", "viewer")
    page.wait_for_function(
        "document.querySelector('#audit-list').innerText.includes('user_update')"
    )
    page.select_option("#token-user", "ursula")
    page.fill("#token-form input[name=name]", "ursula-script")
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#new-token:not([hidden])")
    token = page.inner_text("#new-token-value").strip()
    token_id = page.get_attribute("#new-token", "data-token")
    assert token.startswith("cft_") and "shown only once" in page.inner_text("#new-token")
    me = requests.get(
        f"{registered.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert me.json()["name"] == "ursula" and me.json()["role"] == "viewer"
    shots(page, "users")
    page.reload()
    page.wait_for_selector(f"tr[data-token='{token_id}']")
    assert token not in page.content()  # shown once: never again
    page.click(f"button.revoke-token[data-token='{token_id}']")
    page.wait_for_selector(f"tr[data-token='{token_id}']", state="detached")
    assert (
        requests.get(
            f"{registered.url}/api/v1/auth/me",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).status_code
        == 401
    )
    assert page.query_selector("button.delete-user[data-user='admin']") is None  # not yourself
    page.click("button.delete-user[data-user='ursula']")
    page.wait_for_selector("tr[data-user='ursula']", state="detached")
    audit = page.inner_text("#audit-list")
    for action in ("user_create", "user_update", "token_create", "token_revoke", "user_delete"):
        assert f"admin {action}" in audit
    shots(page, "users-after-changes")
    assert not page.errors

    viewer = login(chromium, registered, VIEWER)
    assert viewer.query_selector("#nav-users") is None
    resp = viewer.goto(f"{registered.url}/admin/users")
    assert resp.status == 403
    text = viewer.inner_text("main")
    assert "needs the admin role" in text and "Ask an admin" in text and "victor" in text
    shots(viewer, "users-refused")


def test_a_step_running_over_an_hour_shows_hours_and_500_steps_are_paged(
    chromium, registered, orchestrator_client_live, shots
):
    from orchestrator.keys import step_field

    token = registered.token(ADMIN)
    body = {
        "mode": "sequential",
        "steps": [
            {"id": "sleepy", "plugin": "builtin", "method": "sleep", "params": {"seconds": 60}}
        ]
        + [{"id": f"s{i:03d}", "plugin": "builtin", "method": "echo"} for i in range(1, 520)],
    }
    auth = {"Authorization": f"Bearer {token}"}
    r = requests.put(
        f"{registered.url}/api/v1/workflows/browser_wide",
        json={"definition": body},
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    run = requests.post(
        f"{registered.url}/api/v1/runs", json={"workflow": "browser_wide"}, headers=auth, timeout=10
    ).json()
    client = orchestrator_client_live
    try:
        wait_for(
            lambda: client.snapshot(run["id"]).step("sleepy").status == "RUNNING",
            20,
            "the long step",
        )
        # As if it had started two hours ago (a real step that long would outlast the test).
        started = time.time() - 7200
        client.redis.hset(
            client.keys.steps(run["id"]),
            mapping={
                step_field("sleepy", "started_at"): f"{started:.6f}",
                step_field("sleepy", "attempt_started_at"): f"{started:.6f}",
            },
        )
        page = login(chromium, registered, OPERATOR)
        page.goto(f"{registered.url}/runs/{run['id']}")
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_function(
            "/^RUNNING – 2:00:\\d\\d$/.test(document.querySelector('#step-sleepy .dur').innerText)",
            timeout=10000,
        )
        assert page.inner_text("#steps-pager").count("of 520") == 1
        assert "steps 1–100 of 520 (page 1/6)" in page.inner_text("#steps-pager")
        assert len(page.query_selector_all("#timeline li.step")) == 100
        shots(page, "run-hours-and-pages")
        page.click("#steps-pager button[data-page='1']")
        page.wait_for_selector("#step-s100")
        assert "steps 101–200 of 520 (page 2/6)" in page.inner_text("#steps-pager")
        assert page.query_selector("#step-sleepy") is None
        assert not page.errors
    finally:
        requests.post(
            f"{registered.url}/api/v1/runs/{run['id']}/cancel",
            json={"reason": "test over"},
            headers=auth,
            timeout=10,
        )


def test_a_dropped_socket_reconnects_with_backoff_and_replays_what_it_missed(
    chromium, registered, shots
):
    token = registered.token(ADMIN)
    auth = {"Authorization": f"Bearer {token}"}
    body = {
        "mode": "sequential",
        "steps": [
            {
                "id": "chat",
                "plugin": "builtin",
                "method": "call",
                "params": {
                    "function": "tests.web_helpers:log_slowly",
                    "kwargs": {"lines": 12, "every": 0.1},
                },
            }
        ]
        + [
            {"id": f"p{i}", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.4}}
            for i in range(10)
        ],
    }
    r = requests.put(
        f"{registered.url}/api/v1/workflows/browser_resync",
        json={"definition": body},
        headers=auth,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    page = login(chromium, registered, OPERATOR)
    run = requests.post(
        f"{registered.url}/api/v1/runs",
        json={"workflow": "browser_resync"},
        headers=auth,
        timeout=10,
    ).json()
    page.goto(f"{registered.url}/runs/{run['id']}#step-chat")
    page.wait_for_selector("body[data-ready='1']")
    # Every line of every log batch shows up live in the expanded step, once, in order.
    page.wait_for_function(
        "document.querySelectorAll('#step-chat .logs li.log').length === 12", timeout=20000
    )
    messages = page.eval_on_selector_all(
        "#step-chat .logs li.log .msg", "els => els.map(e => e.innerText)"
    )
    assert messages == [f"line {i} of 12" for i in range(12)]
    assert (
        page.eval_on_selector_all("#step-chat .logs li.log b", "els => els.map(e => e.innerText)")[
            3
        ]
        == "WARNING"
    )
    shots(page, "live-log-lines")
    page.wait_for_function("(window.__cfSeen.p1 || []).includes('RUNNING')", timeout=20000)
    # Drop the connection (as a network blip would); the client retries after its backoff.
    page.evaluate("""() => { const io = window.__cfLive.socket.io;
        io.reconnectionDelay(1500); io.reconnectionDelayMax(1500); io.randomizationFactor(0); io.engine.close(); }""")
    page.wait_for_selector("#conn.down")
    assert "reconnecting" in page.inner_text("#conn")
    shots(page, "reconnecting")
    page.wait_for_selector("#conn.ok", timeout=15000)
    page.wait_for_selector("#run-status [data-status='COMPLETED']", timeout=30000)
    latest = requests.get(
        f"{registered.url}/api/v1/runs/{run['id']}/events",
        params={"after": 0},
        headers=auth,
        timeout=10,
    ).json()["latest_seq"]
    live = page.evaluate(
        "(id) => { const l = window.__cfLive; return [l.connects, l.replayed, l.runs.get(id).lastSeq]; }",
        run["id"],
    )
    assert live[0] >= 2 and live[1] > 0, (
        live
    )  # reconnected, and the missed events came in the replay
    assert live[2] == latest
    assert all(page.get_attribute(f"#step-p{i}", "data-status") == "COMPLETED" for i in range(10))
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert not page.errors


def test_the_page_applies_batches_in_seq_order_and_fills_a_lost_batch_from_the_replay(
    chromium, registered, orchestrator_client_live
):
    token = registered.token(OPERATOR)
    auth = {"Authorization": f"Bearer {token}"}
    client = orchestrator_client_live
    run = requests.post(
        f"{registered.url}/api/v1/runs",
        json={"workflow": "browser_pipeline"},
        headers=auth,
        timeout=10,
    ).json()
    wait_for(lambda: client.state.status(run["id"]) == "COMPLETED", 30, "the run to complete")
    page = login(chromium, registered, OPERATOR)
    page.goto(f"{registered.url}/runs/{run['id']}")
    page.wait_for_selector("body[data-ready='1']")
    latest = requests.get(
        f"{registered.url}/api/v1/runs/{run['id']}/events",
        params={"after": 0},
        headers=auth,
        timeout=10,
    ).json()["latest_seq"]
    page.wait_for_function(
        "(id) => window.__cfLive.runs.get(id)?.joined", arg=run["id"], timeout=10000
    )
    assert page.evaluate("(id) => window.__cfLive.runs.get(id).lastSeq", run["id"]) == latest
    # Record what a follower of the run is handed, and lose the next batch of this run on the way
    # in (as a dropped message would be lost).
    page.evaluate(
        """(id) => {
        const live = window.__cfLive, batch = live._batch.bind(live);
        window.__cfApplied = []; window.__cfLost = [];
        live._batch = (b) => {
          if (!window.__cfLost.length && b.some((e) => e.run === id)) { window.__cfLost.push(b.map((e) => e.seq)); return; }
          batch(b);
        };
        live.runs.get(id).handlers.add((e) => window.__cfApplied.push([e.seq, e.type]));
    }""",
        run["id"],
    )

    def append(types):  # one Lua call: the relay reads, and sends, them as one batch
        client.state.emit(
            run["id"],
            [
                [
                    t,
                    "extract",
                    "",
                    f"{time.time():.6f}",
                    {"fraction": 0.5} if t == "progress" else {"rows": 1},
                ]
                for t in types
            ],
        )

    append(["progress", "stats", "progress"])
    page.wait_for_function("window.__cfLost.length === 1", timeout=10000)
    assert page.evaluate("window.__cfLost") == [[latest + 1, latest + 2, latest + 3]]
    assert page.evaluate("window.__cfApplied") == []
    append(
        ["stats", "progress"]
    )  # arrives with a gap: the page asks for what it lacks, then applies this
    page.wait_for_function("window.__cfApplied.length === 5", timeout=10000)
    assert page.evaluate("window.__cfApplied") == [
        [latest + 1, "progress"],
        [latest + 2, "stats"],
        [latest + 3, "progress"],
        [latest + 4, "stats"],
        [latest + 5, "progress"],
    ]
    live = page.evaluate(
        "(id) => { const l = window.__cfLive; return [l.runs.get(id).lastSeq, l.replayed]; }",
        run["id"],
    )
    # The three lost events came from the replay (the two after them were in it too, or live).
    assert live[0] == latest + 5 and live[1] >= 3, live
    assert not page.errors


def test_a_read_only_dashboard_shows_everything_and_refuses_every_change(
    chromium, registered, web_fleet, shots
):
    from tests.web_fixtures import start_live_server, stop_live_server

    token = registered.token(OPERATOR)
    slow = {
        "id": "browser_ro",
        "steps": [
            {"id": "wait", "plugin": "builtin", "method": "sleep", "params": {"seconds": 60}}
        ],
    }
    run = requests.post(
        f"{registered.url}/api/v1/runs",
        json={"definition": slow},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()
    ro = start_live_server(web_fleet, "--read-only")
    try:
        context = chromium.new_context(viewport={"width": 1400, "height": 900})
        first = context.new_page()
        first.goto(f"{ro.url}/runs")
        first.wait_for_selector("input[name=username]")
        shots(first, "login")
        context.close()
        page = login(chromium, ro, ADMIN)
        assert page.is_visible(".badge.ro")
        page.goto(f"{ro.url}/runs/{run['id']}")
        page.wait_for_selector("#actions button[data-action=cancel]:not([hidden])", timeout=20000)
        assert page.is_disabled("#actions button[data-action=cancel]")
        assert (
            page.get_attribute("#actions button[data-action=cancel]", "title")
            == "the dashboard is read-only"
        )
        shots(page, "read-only-run")
        page.goto(f"{ro.url}/admin/users")
        page.wait_for_selector("body[data-loaded]")
        assert "read-only" in page.inner_text("#users-read-only")
        assert page.is_disabled("#user-form button[type=submit]")
        assert page.query_selector("button.delete-user") is None
        shots(page, "read-only-users")
        r = requests.post(
            f"{ro.url}/api/v1/runs/{run['id']}/cancel",
            json={},
            headers={"Authorization": f"Bearer {registered.token(ADMIN)}"},
            timeout=10,
        )
        assert r.status_code == 403 and "read-only" in r.json()["message"]
        assert not page.errors
    finally:
        stop_live_server(ro)
        requests.post(
            f"{registered.url}/api/v1/runs/{run['id']}/cancel",
            json={"reason": "test over"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )


def test_retry_attempts_are_listed_with_their_errors_on_the_run_page(chromium, registered, shots):
    token = registered.token(OPERATOR)
    flaky = {
        "id": "browser_flaky",
        "mode": "sequential",
        "steps": [
            {
                "id": "flaky",
                "plugin": "builtin",
                "method": "fail",
                "retries": 2,
                "retry_delay": 0.1,
                "params": {"message": "try again", "times": 1},
            },
            {
                "id": "boom",
                "plugin": "builtin",
                "method": "fail",
                "params": {"message": "it broke"},
            },
        ],
    }
    run = requests.post(
        f"{registered.url}/api/v1/runs",
        json={"definition": flaky},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()
    page = login(chromium, registered, OPERATOR)
    page.goto(f"{registered.url}/runs/{run['id']}#step-flaky")
    page.wait_for_selector("#run-status [data-status='FAILED']", timeout=30000)
    page.wait_for_function(
        "document.querySelectorAll('#step-flaky .attempts li.attempt').length === 2", timeout=10000
    )
    attempts = page.eval_on_selector_all(
        "#step-flaky .attempts li.attempt", "els => els.map(e => e.innerText)"
    )
    assert "RETRYING" in attempts[0] and "try again" in attempts[0]
    assert "COMPLETED" in attempts[1] and "try again" not in attempts[1]
    assert "attempt 2/3" in page.inner_text("#step-flaky .step-head")
    page.click("#step-boom .step-head")
    assert "it broke" in page.inner_text("#step-boom .step-body .error")
    assert "it broke" in page.inner_text("#run-error")
    shots(page, "retry-attempts")
    assert not page.errors


def test_a_followed_run_shows_finished_steps_from_its_events_and_fetches_outputs_only_when_shown(
    chromium, registered, shots
):
    import re

    token = registered.token(OPERATOR)
    auth = {"Authorization": f"Bearer {token}"}
    page = login(chromium, registered, OPERATOR)

    def follow(anchor=""):
        run = requests.post(
            f"{registered.url}/api/v1/runs",
            json={"workflow": "browser_follow"},
            headers=auth,
            timeout=10,
        ).json()
        page.goto(f"{registered.url}/runs/{run['id']}{anchor}")
        page.wait_for_selector("body[data-ready='1']")
        return run["id"], re.compile(rf"/api/v1/runs/{run['id']}\?")

    # 1. Following a run does not fetch its detail again for each step event (about 20 here).
    run_id, detail = follow()
    fetched = []
    page.on("request", lambda req: fetched.append(req.url) if detail.search(req.url) else None)
    page.wait_for_selector("#run-status [data-status='COMPLETED']", timeout=30000)
    page.wait_for_function("document.querySelector('#step-echoed')?.dataset.status === 'COMPLETED'")
    assert len(fetched) <= 3, fetched  # the run's own status changes; the final one at least

    # 2. With every detail fetch held back, the rows still show each step's times, duration and
    # attempts as they finish; an open step gets its output from the fetch that follows.
    held = []
    run_id, detail = follow("#step-answer")
    page.route(detail, lambda route: held.append(route))
    page.wait_for_selector("#run-status [data-status='COMPLETED']", timeout=30000)
    page.wait_for_function("document.querySelector('#step-echoed')?.dataset.status === 'COMPLETED'")
    for i in range(8):
        head = page.inner_text(f"#step-w{i} .step-head")
        assert "→" in page.inner_text(f"#step-w{i} .when"), head
        dur = page.inner_text(f"#step-w{i} .dur")
        assert re.fullmatch(r"[\d.]+ ?m?s", dur), (i, dur)  # a duration, not a status
    assert "COMPLETED" in page.inner_text("#step-answer .attempts")
    assert len(held) >= 1  # the open step settled, and the run: the page asked for what events lack
    for route in held:
        route.continue_()
    page.unroute(detail)
    page.wait_for_function(
        "document.querySelector('#step-answer .step-body').innerText.includes('42')", timeout=10000
    )
    # A step opened after it finished shows its output too (fetched on opening).
    page.click("#step-echoed .step-head")
    page.wait_for_function(
        "document.querySelector('#step-echoed .step-body')?.innerText.includes('yes')",
        timeout=10000,
    )
    shots(page, "followed-run")
    assert not page.errors
