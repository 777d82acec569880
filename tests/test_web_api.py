"""The REST API against a real Redis, a real worker and a SQLite audit store (Flask test client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from orchestrator.records import RunRecord, split_steps
from tests.conftest import ROOT
from tests.web_helpers import (
    ADMIN,
    OPERATOR,
    VIEWER,
    Api,
    wait_for,
    wait_recorded,
    wait_status,
)
from web.detail import STEPS_PER_STRETCH

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

SAGA = {
    "id": "web_saga",
    "name": "Web saga",
    "mode": "sequential",
    "sla_seconds": 60,
    "tags": ["web"],
    "steps": [
        {
            "id": "reserve",
            "plugin": "builtin",
            "method": "echo",
            "params": {"n": 1},
            "compensate": {"plugin": "builtin", "method": "echo", "params": {"undo": "reserve"}},
        },
        {
            "id": "work",
            "plugin": "builtin",
            "method": "sleep",
            "params": {"seconds": 0.6},
            "compensate": {"plugin": "builtin", "method": "echo", "params": {"undo": "work"}},
        },
        {"id": "finish", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.6}},
    ],
}
FANOUT = {
    "id": "web_fanout",
    "mode": "parallel",
    "steps": [{"id": "start", "plugin": "builtin", "method": "echo", "params": {"x": 1}}]
    + [
        {
            "id": f"b{i}",
            "plugin": "builtin",
            "method": "echo",
            "depends_on": ["start"],
            "params": {"i": i},
        }
        for i in range(7)
    ]
    + [
        {
            "id": "join",
            "plugin": "builtin",
            "method": "echo",
            "depends_on": [f"b{i}" for i in range(7)],
        }
    ],
}
FLAKY = {
    "id": "web_flaky",
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
        {"id": "boom", "plugin": "builtin", "method": "fail", "params": {"message": "it broke"}},
    ],
}


@pytest.fixture(scope="module")
def admin(web_app):
    return Api(web_app, ADMIN)


@pytest.fixture(scope="module")
def operator(web_app):
    return Api(web_app, OPERATOR)


@pytest.fixture(scope="module")
def viewer(web_app):
    return Api(web_app, VIEWER)


@pytest.fixture(scope="module")
def store(web_app):
    return web_app.extensions["canvasflow"].store


@pytest.fixture(scope="module")
def workflows(admin):
    for body in (SAGA, FANOUT, FLAKY):
        r = admin.put(
            f"/workflows/{body['id']}", {"definition": {k: v for k, v in body.items() if k != "id"}}
        )
        assert r.status_code == 200, r.json
    return {b["id"] for b in (SAGA, FANOUT, FLAKY)}


def test_every_api_error_is_json_and_authentication_comes_first(web_app):
    anon = Api(web_app, None)
    r = anon.get("/runs")
    assert r.status_code == 401 and r.is_json and "authentication required" in r.json["message"]
    r = anon.get("/runs", headers={"Authorization": "Bearer cft_not-a-token"})
    assert r.status_code == 401 and "invalid or revoked" in r.json["message"]
    r = anon.get("/no-such-endpoint")
    assert r.status_code == 404 and r.is_json
    r = anon.http.post("/api/v1/auth/login", json={"username": "admin", "password": "wrong"})
    assert r.status_code == 401 and r.json["message"] == "unknown user or wrong password"
    spec = anon.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json["paths"]
    for path in (
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/pause",
        "/api/v1/runs/{run_id}/events",
        "/api/v1/workflows/{workflow_id}",
        "/api/v1/analytics",
    ):
        assert path in paths
    assert "bearer" in spec.json["components"]["securitySchemes"]


def test_a_page_for_an_unknown_run_is_a_404_page_and_pages_need_a_login(web_app, admin):
    anon = web_app.test_client()
    r = anon.get("/runs")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=/runs")
    r = admin.http.get("/runs/0123456789abcdef")
    assert r.status_code == 404 and b"There is no run" in r.data and r.mimetype == "text/html"
    assert admin.get("/runs/0123456789abcdef").status_code == 404
    assert (
        admin.get("/runs/0123456789abcdef/events").json["message"]
        == "unknown run '0123456789abcdef'"
    )


def test_registering_an_invalid_workflow_reports_every_problem_with_its_path(admin, operator):
    bad = (
        "mode: parallel\nsteps:\n  - id: a\n    plugin: builtin\n    method: echo\n"
        "  - id: b\n    plugin: builtin\n    method: echo\n    depends_on: [lod_data]\n    when: 'stepz.x > 1'\n"
    )
    r = admin.put("/workflows/broken", {"yaml": bad})
    assert r.status_code == 400, r.json
    paths = {p["path"] for p in r.json["problems"]}
    assert "steps[1].depends_on[0]" in paths
    assert any("lod_data" in m for m in r.json["errors"]["json"]["steps[1].depends_on[0]"])
    r = admin.put("/workflows/broken", {"yaml": "steps: [unclosed"})
    assert r.status_code == 400 and "invalid YAML" in json.dumps(r.json)
    r = admin.put("/workflows/other", {"definition": {"id": "not_other", "steps": []}})
    assert r.status_code == 400 and "id" in r.json["errors"]["json"]
    assert operator.put("/workflows/broken", {"yaml": "x: 1"}).status_code == 403
    r = operator.post("/runs", {})
    assert r.status_code == 400 and "workflow" in r.json["errors"]["json"]
    r = operator.post("/runs", {"workflow": "no_such_workflow"})
    assert r.status_code == 400 and "unknown workflow" in r.json["errors"]["json"]["workflow"][0]
    r = operator.get("/runs?limit=0&view=nope&status=DONE")
    assert r.status_code == 400 and set(r.json["errors"]["query"]) >= {"limit", "view"}


def test_a_submitted_run_is_listed_with_progress_and_its_detail_has_numbered_steps(
    workflows, operator, orchestrator_client, store
):
    r = operator.post(
        "/runs", {"workflow": "web_fanout", "inputs": {"who": "test"}, "tags": ["t1"]}
    )
    assert r.status_code == 201, r.json
    run = r.json
    assert run["workflow"]["id"] == "web_fanout" and run["triggered_by"] == OPERATOR[0]
    assert run["progress"]["total"] == 9
    listed = operator.get("/runs?view=all&search=web_fanout").json
    assert run["id"] in [x["id"] for x in listed["runs"]]
    wait_status(orchestrator_client, run["id"], {"COMPLETED"})
    d = operator.get(f"/runs/{run['id']}").json
    assert d["status"] == "COMPLETED" and d["progress"]["percent"] == 100.0
    assert [s["number"] for s in d["steps"]] == list(range(1, 10))
    assert (
        d["steps"][0]["output"] == {"x": 1} and d["steps"][1]["history"][0]["status"] == "COMPLETED"
    )
    assert d["definition"]["mode"] == "parallel" and d["inputs"] == {"who": "test"}
    (group,) = d["parallel_branches"]
    assert sorted(s for b in group["branches"] for s in b["steps"]) == sorted(
        f"b{i}" for i in range(7)
    )
    assert all(b["status"] == "COMPLETED" for b in group["branches"])
    wait_recorded(store, run["id"], {"COMPLETED"})
    events = operator.get(f"/runs/{run['id']}/events?after=0").json
    seqs = [e["seq"] for e in events["events"]]
    assert seqs == list(range(1, events["latest_seq"] + 1))
    assert (
        operator.get(f"/runs/{run['id']}/events?after={seqs[-3]}").json["events"][0]["seq"]
        == seqs[-2]
    )
    timeline = operator.get(f"/runs/{run['id']}/timeline").json
    assert {b["step"] for b in timeline["bars"]} == {s["id"] for s in d["steps"]}
    assert all(b["end"] >= b["start"] for b in timeline["bars"])
    graph = operator.get(f"/runs/{run['id']}/graph").json
    layers = {n["id"]: n["layer"] for n in graph["nodes"]}
    assert layers["start"] == 0 and layers["b3"] == 1 and layers["join"] == 2
    exp = operator.http.get(f"/api/v1/runs/{run['id']}/export")
    assert exp.status_code == 200 and "attachment" in exp.headers["Content-Disposition"]
    trace = json.loads(exp.data)
    assert trace["format"] == "canvasflow.trace/1" and len(trace["events"]) == len(seqs)


def test_retries_and_failures_show_attempts_errors_and_the_failed_tab(
    workflows, operator, orchestrator_client, store
):
    run_id = operator.post("/runs", {"workflow": "web_flaky"}).json["id"]
    wait_status(orchestrator_client, run_id, {"FAILED"})
    d = operator.get(f"/runs/{run_id}").json
    flaky, boom = d["steps"]
    assert flaky["status"] == "COMPLETED" and flaky["retry_count"] == 1
    assert [a["status"] for a in flaky["history"]] == ["RETRYING", "COMPLETED"]
    assert flaky["history"][0]["error"] and "try again" in flaky["history"][0]["error"]
    assert boom["status"] == "FAILED" and "it broke" in boom["error"]
    assert d["error"] and d["failed_step"] == "boom" and d["can_retry"] and not d["can_pause"]
    wait_recorded(store, run_id, {"FAILED"})
    failed = operator.get("/runs?view=failed&workflow=web_flaky").json
    assert run_id in [r["id"] for r in failed["runs"]]
    assert run_id not in [r["id"] for r in operator.get("/runs?view=completed").json["runs"]]
    bars = operator.get(f"/runs/{run_id}/timeline").json["bars"]
    assert [b["status"] for b in bars if b["step"] == "flaky"] == ["RETRYING", "COMPLETED"]


def test_an_illegal_action_is_a_409_with_the_current_state_and_unknown_runs_are_404(
    workflows, operator, orchestrator_client
):
    run_id = operator.post("/runs", {"workflow": "web_fanout"}).json["id"]
    wait_status(orchestrator_client, run_id, {"COMPLETED"})
    r = operator.post(f"/runs/{run_id}/pause", {"reason": "too late"})
    assert r.status_code == 409
    assert r.json["current_status"] == "COMPLETED" and "RUNNING" in r.json["allowed"]
    assert "cannot pause" in r.json["message"]
    assert operator.post(f"/runs/{run_id}/resume").status_code == 409
    assert operator.post("/runs/ffffffffffffffff/cancel").status_code == 404
    r = operator.post(f"/runs/{run_id}/retry", {"from_step": "nope"})
    assert r.status_code == 400 and "from_step" in r.json["errors"]["json"]
    r = operator.post(f"/runs/{run_id}/retry", {})
    assert r.status_code == 409 and "no failed step" in r.json["message"]
    r = operator.post(f"/runs/{run_id}/retry", {"from_step": "join"})
    assert (
        r.status_code == 200
        and r.json["status"] == "RUNNING"
        and r.json["detail"]["reset"] == ["join"]
    )
    wait_status(orchestrator_client, run_id, {"COMPLETED"})


def test_pause_resume_and_cancel_steer_the_run_and_audit_the_user(
    workflows, operator, viewer, orchestrator_client, store
):
    run_id = operator.post("/runs", {"workflow": "web_saga"}).json["id"]
    wait_for(lambda: orchestrator_client.state.status(run_id) == "RUNNING", 20, "the run to start")
    r = viewer.post(f"/runs/{run_id}/pause", {"reason": "curious"})
    assert r.status_code == 403 and "viewer" in r.json["message"]
    r = operator.post(f"/runs/{run_id}/pause", {"reason": "maintenance window"})
    assert (
        r.status_code == 200
        and r.json["status"] == "PAUSING"
        and r.json["status_before"] == "RUNNING"
    )
    wait_status(orchestrator_client, run_id, {"PAUSED"})
    d = operator.get(f"/runs/{run_id}").json
    assert d["can_resume"] and not d["can_pause"]
    assert operator.post(f"/runs/{run_id}/resume").json["status"] == "RUNNING"
    wait_for(
        lambda: (
            orchestrator_client.snapshot(run_id).step("work").status in ("RUNNING", "COMPLETED")
        ),
        20,
        "the work step",
    )
    r = operator.post(f"/runs/{run_id}/cancel", {"reason": "wrong inputs"})
    assert r.status_code == 200 and r.json["status"] == "CANCELLING"
    wait_status(orchestrator_client, run_id, {"CANCELLED"})
    d = operator.get(f"/runs/{run_id}").json
    compensated = [
        s["id"]
        for s in d["steps"]
        if s["compensation"] and s["compensation"]["status"] == "COMPENSATED"
    ]
    assert "reserve" in compensated
    wait_recorded(store, run_id, {"CANCELLED"})
    actions = wait_for(
        lambda: (
            (a := operator.get(f"/runs/{run_id}").json["operator_actions"])
            and {x["action"] for x in a} >= {"pause", "resume", "cancel"}
            and a
        ),
        15,
        "the audit log",
    )
    by_action = {(a["action"], a["outcome"]): a for a in actions}
    assert by_action[("cancel", "ok")]["actor"] == OPERATOR[0]
    assert by_action[("cancel", "ok")]["reason"] == "wrong inputs"
    assert any(a["actor"] == VIEWER[0] and a["outcome"].startswith("refused") for a in actions)
    timeline = operator.get(f"/runs/{run_id}/timeline").json
    assert any(
        b["kind"] == "compensation" and b["status"] == "COMPENSATED" for b in timeline["bars"]
    )


def test_tabs_filters_and_keyset_pages_cover_each_run_once(
    workflows, operator, orchestrator_client, store
):
    ids = [
        operator.post("/runs", {"workflow": "web_fanout", "tags": ["paging"]}).json["id"]
        for _ in range(5)
    ]
    for rid in ids:
        wait_recorded(store, rid, {"COMPLETED"})
    seen, cursor = [], None
    while True:
        page = operator.get(
            "/runs",
            query_string={
                "view": "completed",
                "tag": "paging",
                "limit": 2,
                **({"cursor": cursor} if cursor else {}),
            },
        ).json
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert [r["id"] for r in operator.get(f"/runs?search={ids[0][:10]}").json["runs"]] == [ids[0]]
    by_user = operator.get(
        f"/runs?triggered_by={OPERATOR[0]}&tag=paging&status=COMPLETED,FAILED"
    ).json["runs"]
    assert {r["id"] for r in by_user} == set(ids)
    assert operator.get(f"/runs?tag=paging&until={time.time() - 3600}").json["runs"] == []
    counts = operator.get("/runs").json["counts"]
    assert counts["completed_today"] >= 5 and set(counts) >= {
        "active",
        "pending",
        "failed_today",
        "slow",
    }
    assert operator.get("/runs?cursor=garbage").status_code == 400


def test_a_run_with_many_steps_pages_its_step_list(admin, operator, orchestrator_client):
    body = {
        "mode": "parallel",
        "steps": [{"id": f"s{i:03d}", "plugin": "builtin", "method": "echo"} for i in range(130)],
    }
    assert admin.put("/workflows/web_wide", {"definition": body}).status_code == 200
    run_id = operator.post("/runs", {"workflow": "web_wide"}).json["id"]
    wait_status(orchestrator_client, run_id, {"COMPLETED"}, timeout=60)
    page = operator.get(f"/runs/{run_id}?steps_offset=100&steps_limit=100").json
    assert (
        page["steps_total"] == 130
        and len(page["steps"]) == 30
        and page["steps"][0]["number"] == 101
    )
    groups = page["parallel_branches"]
    assert len(groups[0]["branches"]) == 130


def test_analytics_aggregate_the_recorded_runs(workflows, operator, store):
    a = wait_for(
        lambda: (x := operator.get("/analytics?period=24h").json)["runs"] >= 3 and x,
        20,
        "analytics",
    )
    assert 0 <= (a["failure_rate"] or 0) <= 100
    assert {w["workflow"] for w in a["by_workflow"]} >= {"web_fanout"}
    assert a["slowest_steps"] and a["runs_per_hour"][0]["runs"] >= 1
    assert "overall" in a["retry_rate"]
    assert operator.get("/analytics?period=2y").status_code == 400


def test_users_tokens_csrf_and_read_only_mode(web_app, web_fleet, admin):
    r = admin.post("/users", {"name": "tina", "password": "short"})
    assert r.status_code == 400 and "password" in r.json["errors"]["json"]
    assert (
        admin.post(
            "/users", {"name": "tina", "password": "tina-password", "role": "operator"}
        ).status_code
        == 201
    )
    tina = Api(web_app, ("tina", "tina-password"))
    token = tina.post("/auth/tokens", {"name": "ci"}).json["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    http = web_app.test_client()
    assert http.get("/api/v1/auth/me", headers=bearer).json == {
        "name": "tina",
        "role": "operator",
        "via": "token",
        "read_only": False,
        "csrf_token": None,
        "permissions": [],
    }
    # A Bearer request needs no CSRF token; a session request does.
    r = http.post("/api/v1/runs/ffffffffffffffff/pause", json={}, headers=bearer)
    assert r.status_code == 404
    assert tina.http.post("/api/v1/runs/ffffffffffffffff/pause", json={}).status_code == 403
    assert (
        admin.http.delete("/api/v1/users/tina", headers={"X-CSRF-Token": admin.csrf}).status_code
        == 204
    )
    assert http.get("/api/v1/auth/me", headers=bearer).status_code == 401

    from web import create_app
    from web.settings import WebSettings

    ro = create_app(
        web_fleet.settings,
        WebSettings(read_only=True, secret_key="ro", relay=False, sla_monitor=False),
    )
    admin_ro = Api(ro, ADMIN)
    r = admin_ro.post("/runs/ffffffffffffffff/cancel")
    assert r.status_code == 403 and "read-only" in r.json["message"]
    assert admin_ro.get("/runs").status_code == 200
    assert admin_ro.get("/auth/me").json["read_only"] is True


def test_the_run_detail_shows_each_steps_rendered_input_and_each_attempts(
    workflows, operator, orchestrator_client, store
):
    run_id = operator.post("/runs", {"workflow": "web_flaky"}).json["id"]
    wait_status(orchestrator_client, run_id, {"FAILED"})
    sub = operator.post(
        "/runs",
        {
            "definition": {
                "id": "web_render",
                "inputs": {"n": 5},
                "steps": [
                    {
                        "id": "a",
                        "plugin": "builtin",
                        "method": "echo",
                        "params": {"n": "{{ inputs.n }}", "s": "n={{ inputs.n }}"},
                    },
                    {
                        "id": "b",
                        "plugin": "builtin",
                        "method": "echo",
                        "depends_on": ["a"],
                        "params": {"from_a": "{{ steps.a.output.n }}"},
                    },
                ],
            },
            "inputs": {"n": 7},
        },
    ).json
    wait_status(orchestrator_client, sub["id"], {"COMPLETED"})
    for source in ("hot", "audit"):
        if source == "audit":
            wait_recorded(store, sub["id"], {"COMPLETED"})
            orchestrator_client.redis.delete(
                orchestrator_client.keys.run(sub["id"])
            )  # as after state_ttl
        d = operator.get(f"/runs/{sub['id']}").json
        assert d["source"] == source
        a, b = d["steps"]
        assert a["input"] == {"n": 7, "s": "n=7"} and a["input_rendered"] is True
        assert a["params"] == {"n": "{{ inputs.n }}", "s": "n={{ inputs.n }}"}
        assert b["input"] == {"from_a": 7} and b["history"][0]["input"] == {"from_a": 7}
    flaky = operator.get(f"/runs/{run_id}").json["steps"][0]
    assert [a["input"] for a in flaky["history"]] == [{"message": "try again", "times": 1}] * 2
    assert flaky["history"][0]["error"] and "try again" in flaky["history"][0]["error"]


def test_admins_manage_users_and_tokens_and_every_change_is_audited_with_the_admin_as_actor(
    web_app, admin, operator
):
    http = web_app.test_client()
    assert (
        admin.post(
            "/users", {"name": "uma", "password": "uma-password", "role": "operator"}
        ).status_code
        == 201
    )
    r = admin.http.patch(
        "/api/v1/users/uma", json={"role": "viewer"}, headers={"X-CSRF-Token": admin.csrf}
    )
    assert r.status_code == 200 and r.json["role"] == "viewer"
    created = admin.post("/auth/tokens", {"name": "uma-ci", "username": "uma"})
    assert (
        created.status_code == 201
        and created.json["username"] == "uma"
        and created.json["token"].startswith("cft_")
    )
    bearer = {"Authorization": f"Bearer {created.json['token']}"}
    assert http.get("/api/v1/auth/me", headers=bearer).json["role"] == "viewer"
    listed = admin.get("/auth/tokens").json
    assert [t for t in listed if t["id"] == created.json["id"]][0].get(
        "token"
    ) is None  # shown once only
    # Operators may not manage users or make tokens for others; the refusals are audited too.
    r = operator.post("/users", {"name": "eve", "password": "eve-password", "role": "admin"})
    assert r.status_code == 403 and "admin role" in r.json["message"]
    assert operator.post("/auth/tokens", {"username": "uma"}).status_code == 403
    # An admin cannot lock the dashboard out by demoting or deleting themselves.
    r = admin.http.patch(
        "/api/v1/users/admin", json={"role": "viewer"}, headers={"X-CSRF-Token": admin.csrf}
    )
    assert r.status_code == 409 and "another admin" in r.json["message"]
    assert (
        admin.http.delete("/api/v1/users/admin", headers={"X-CSRF-Token": admin.csrf}).status_code
        == 409
    )
    r = admin.http.delete(
        f"/api/v1/auth/tokens/{created.json['id']}", headers={"X-CSRF-Token": admin.csrf}
    )
    assert r.status_code == 204 and http.get("/api/v1/auth/me", headers=bearer).status_code == 401
    assert (
        admin.http.delete("/api/v1/users/uma", headers={"X-CSRF-Token": admin.csrf}).status_code
        == 204
    )
    assert (
        admin.http.delete("/api/v1/users/uma", headers={"X-CSRF-Token": admin.csrf}).status_code
        == 404
    )
    assert operator.get("/audit/users").status_code == 403
    actions = admin.get("/audit/users").json["actions"]
    mine = [
        (a["actor"], a["action"], a["target_id"], a["outcome"])
        for a in reversed(actions)
        if a["target_id"] in ("uma", "eve", created.json["id"], "admin")
        and a["action"] != "user_put"
    ]
    assert mine == [
        ("admin", "user_create", "uma", "ok"),
        ("admin", "user_update", "uma", "ok"),
        ("admin", "token_create", created.json["id"], "ok"),
        ("olga", "user_create", "eve", "refused: operator"),
        ("olga", "token_create", "uma", "refused: operator"),
        ("admin", "user_update", "admin", "refused: own account"),
        ("admin", "user_delete", "admin", "refused: own account"),
        ("admin", "token_revoke", created.json["id"], "ok"),
        ("admin", "user_delete", "uma", "ok"),
    ]


# In a process patched for gevent as `python -m web` is: a greenlet parked on a socket stands for
# the relay in XREAD; its data comes while the run detail builds the page's steps (pure Python,
# no I/O between them). Prints what happened, in order.
DETAIL_UNDER_GEVENT = textwrap.dedent("""
    import json, socket, sys
    from web import serving
    serving.prepare("gevent")
    import gevent
    from orchestrator.settings import Settings
    from web import create_app
    from web.detail import RunDetails
    from web.settings import WebSettings

    app = create_app(Settings.from_env(), WebSettings(secret_key="cooperate-test"), start=False)
    _, token = app.extensions["canvasflow"].users.create_token(sys.argv[2], "cooperate-test")
    log = []
    relay_side, stream_side = socket.socketpair()
    relay = gevent.spawn(lambda: (relay_side.recv(1), log.append("relay")))
    gevent.sleep(0.01)
    build = RunDetails._step

    def step(number, *rest):
        if number == 1:
            stream_side.send(b"x")  # the stream answers the relay's XREAD now
        log.append(number)
        return build(number, *rest)

    RunDetails._step = staticmethod(step)
    r = app.test_client().get(f"/api/v1/runs/{sys.argv[1]}?steps_limit=150", headers={"Authorization": f"Bearer {token}"})
    log.append(["response", r.status_code, len(r.get_json()["steps"])])
    relay.join(5)
    print(json.dumps(log))
""")


def test_a_long_run_detail_lets_a_relay_delivery_that_fell_due_meanwhile_out_before_it_finishes(
    web_fleet, admin, operator, orchestrator_client
):
    body = {
        "mode": "sequential",
        "steps": [
            {"id": f"s{i:03d}", "plugin": "builtin", "method": "echo", "params": {"i": i}}
            for i in range(150)
        ],
    }
    run_id = operator.post("/runs", {"definition": {"id": "web_long_detail", **body}}).json["id"]
    wait_status(orchestrator_client, run_id, {"COMPLETED"}, timeout=90)
    env = {**os.environ, **web_fleet.settings.as_env(), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", DETAIL_UNDER_GEVENT, run_id, ADMIN[0]],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = json.loads(out.stdout.strip().splitlines()[-1])
    assert log[-1] == ["response", 200, 150]
    steps = [x for x in log if isinstance(x, int)]
    assert steps == list(range(1, 151))
    # The relay ran while the steps were being built, within the first stretch of them.
    assert 1 < log.index("relay") <= STEPS_PER_STRETCH + 1 < len(steps)


def test_a_live_runs_detail_reads_the_same_fields_as_the_run_state(
    operator, orchestrator_client, web_app
):
    sub = operator.post(
        "/runs",
        {
            "definition": {
                "id": "web_read_same",
                "mode": "sequential",
                "steps": [
                    {
                        "id": "a",
                        "plugin": "builtin",
                        "method": "echo",
                        "params": {"text": 'héllo / ✓ "quoted"', "n": 1.5},
                    },
                    {
                        "id": "b",
                        "plugin": "builtin",
                        "method": "fail",
                        "params": {"message": "broke: ✗"},
                    },
                ],
            }
        },
    ).json
    wait_status(orchestrator_client, sub["id"], {"FAILED"})
    # RunState.read takes the hashes as JSON made by Lua: it reads what HGETALL reads.
    state, keys = orchestrator_client.state, orchestrator_client.keys
    hot = state.read(sub["id"])
    assert hot.run == RunRecord.from_hash(sub["id"], state.r.hgetall(keys.run(sub["id"])))
    assert hot.steps == split_steps(state.r.hgetall(keys.steps(sub["id"])))
    a, b = operator.get(f"/runs/{sub['id']}").json["steps"]
    assert a["output"] == {"text": 'héllo / ✓ "quoted"', "n": 1.5} and "broke: ✗" in b["error"]
    assert state.read("0000000000000000") is None


def test_the_runs_list_dumps_as_its_schema_does(operator):
    from web import schemas

    page = operator.get("/runs?view=all&limit=5").json
    assert page["runs"]
    assert schemas.RunListSchema().dump(page) == page
