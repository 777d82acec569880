"""POST /api/v1/events and the publisher role, and how a run started as the REST API, the
dashboard's pages, the export and /metrics show it: real Redis, a real worker, the app in this
process with its recorder (SQLite audit store)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from tests.web_helpers import ADMIN, OPERATOR, VIEWER, Api, wait_for, wait_recorded, wait_status

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

PUBLISHER = ("pia", "publisher-password")


def _event() -> str:
    return f"web.{uuid.uuid4().hex[:8]}"


def _workflow(event: str, **trigger: Any) -> dict[str, Any]:
    return {
        "id": f"webev_{uuid.uuid4().hex[:6]}",
        "inputs": {"folder": "none"},
        "triggers": [{"event": event, **trigger}],
        "steps": [
            {
                "id": "show",
                "plugin": "builtin",
                "method": "echo",
                "params": {"f": "{{ inputs.folder }}"},
            }
        ],
    }


@pytest.fixture(scope="module")
def publisher_token(web_app: Any) -> str:
    users = web_app.extensions["canvasflow"].users
    if not users.exists(PUBLISHER[0]):
        users.put(PUBLISHER[0], password=PUBLISHER[1], role="publisher")
    return users.create_token(PUBLISHER[0], "events")[1]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _publish(web_app: Any, token: str, body: Any) -> Any:
    return web_app.test_client().post("/api/v1/events", json=body, headers=_bearer(token))


def test_a_publisher_token_starts_the_triggered_run_and_every_view_says_how_it_started(
    web_app: Any, orchestrator_client: Any, publisher_token: str
) -> None:
    event = _event()
    wf = _workflow(event, inputs={"folder": "{{ event.payload.folder }}"})
    orchestrator_client.register(wf)
    r = _publish(
        web_app, publisher_token, {"name": event, "payload": {"folder": "a/b"}, "key": "k1"}
    )
    assert r.status_code == 200, r.json
    (started,) = r.json["started"]
    assert started["workflow"] == wf["id"] and started["trigger"] == event
    run_id = started["run_id"]
    wait_status(orchestrator_client, run_id, {"COMPLETED"})
    store = web_app.extensions["canvasflow"].store
    recorded = wait_recorded(store, run_id, {"COMPLETED"})
    assert (recorded.trigger_type, recorded.trigger_name, recorded.trigger_ref) == (
        "event",
        event,
        "k1",
    )
    assert recorded.triggered_by == PUBLISHER[0]
    viewer = Api(web_app, VIEWER)
    listed = viewer.get(f"/runs?trigger_type=event&workflow={wf['id']}").json["runs"]
    assert [x["id"] for x in listed] == [run_id]
    assert (listed[0]["trigger_type"], listed[0]["trigger_name"], listed[0]["trigger_ref"]) == (
        "event",
        event,
        "k1",
    )
    assert viewer.get(f"/runs?trigger_type=api&workflow={wf['id']}").json["runs"] == []
    detail = viewer.get(f"/runs/{run_id}").json
    assert (detail["trigger_type"], detail["trigger_name"], detail["trigger_ref"]) == (
        "event",
        event,
        "k1",
    )
    exported = viewer.get(f"/runs/{run_id}/export").json["run"]
    assert (exported["trigger_name"], exported["trigger_ref"]) == (event, "k1")
    metrics = web_app.test_client().get("/metrics").get_data(as_text=True)
    line = re.search(
        rf'canvasflow_runs_started_total\{{trigger="event",workflow="{wf["id"]}"\}} (\S+)', metrics
    ) or re.search(
        rf'canvasflow_runs_started_total\{{workflow="{wf["id"]}",trigger="event"\}} (\S+)', metrics
    )
    assert line is not None and float(line.group(1)) == 1.0, metrics[:2000]


def test_a_repeated_key_through_the_api_lists_the_first_run_as_deduplicated(
    web_app: Any, orchestrator_client: Any, publisher_token: str
) -> None:
    event = _event()
    orchestrator_client.register(_workflow(event))
    first = _publish(web_app, publisher_token, {"name": event, "key": "same"}).json
    again = _publish(web_app, publisher_token, {"name": event, "key": "same"}).json
    assert (
        again["started"] == []
        and again["deduplicated"][0]["run_id"] == first["started"][0]["run_id"]
    )


def test_a_repeated_key_after_redis_lost_its_claim_is_deduplicated_from_the_audit_store(
    web_app: Any, orchestrator_client: Any, publisher_token: str
) -> None:
    # Before: the claim lived in Redis only; a Redis that lost it (restarted empty) let the same
    # key start a second run within the key's dedupe window.
    event = _event()
    orchestrator_client.register(_workflow(event))
    first = _publish(web_app, publisher_token, {"name": event, "key": "kept"}).json
    run_id = first["started"][0]["run_id"]
    wait_recorded(web_app.extensions["canvasflow"].store, run_id, {"COMPLETED"})
    r = orchestrator_client.redis
    claims = list(r.scan_iter(match=orchestrator_client.keys.trigger_claim("*")))
    assert claims and r.delete(*claims) == len(claims)  # Redis forgot every claim
    again = _publish(web_app, publisher_token, {"name": event, "key": "kept"}).json
    assert again["started"] == [], again
    assert [d["run_id"] for d in again["deduplicated"]] == [run_id]
    other = _publish(web_app, publisher_token, {"name": event, "key": "fresh"}).json
    assert len(other["started"]) == 1  # another key still starts its run


def test_filtered_and_failing_triggers_are_listed_beside_the_runs_started(
    web_app: Any, orchestrator_client: Any, publisher_token: str
) -> None:
    event = _event()
    off = _workflow(event, filter="event.payload.n > 5")
    broken = _workflow(event, filter="event.payload.absent == 1")
    ok = _workflow(event)
    for wf in (off, broken, ok):
        orchestrator_client.register(wf)
    body = _publish(web_app, publisher_token, {"name": event, "payload": {"n": 1}}).json
    assert [s["workflow"] for s in body["started"]] == [ok["id"]]
    assert [f["workflow"] for f in body["filtered"]] == [off["id"]]
    (err,) = body["errors"]
    assert err["workflow"] == broken["id"] and err["path"] == "triggers[0].filter"


def test_operators_and_admins_may_publish_and_viewers_and_strangers_may_not(
    web_app: Any, orchestrator_client: Any
) -> None:
    event = _event()
    orchestrator_client.register(_workflow(event))
    for user in (OPERATOR, ADMIN):
        r = Api(web_app, user).post("/events", {"name": event})
        assert r.status_code == 200 and len(r.json["started"]) == 1, r.json
    r = Api(web_app, VIEWER).post("/events", {"name": event})
    assert r.status_code == 403 and "publisher role" in r.json["message"]
    assert Api(web_app, None).post("/events", {"name": event}).status_code == 401


def test_a_publisher_can_do_nothing_but_publish(web_app: Any, publisher_token: str) -> None:
    from web.auth import access_of

    http = web_app.test_client()
    checked = 0
    for rule in web_app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        view = web_app.view_functions[rule.endpoint]
        cls = getattr(view, "view_class", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            handler = getattr(cls, method.lower(), None) if cls else view
            access = access_of(handler)
            if access is None or access.role in (None, "publisher"):
                continue
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "x", rule.rule)
            r = http.open(path, method=method, json={}, headers=_bearer(publisher_token))
            assert r.status_code == 403, (method, path, r.status_code, r.get_data(as_text=True))
            assert "publisher" in r.json["message"]
            checked += 1
    assert checked > 40
    # The pages and the live feed refuse it too; a session login is refused the same way.
    for page in ("/runs", "/runs/abc", "/workflows", "/analytics", "/workers", "/tasks"):
        r = http.get(page, headers=_bearer(publisher_token))
        assert r.status_code == 403, (page, r.status_code)
    session = Api(web_app, PUBLISHER)
    assert session.get("/runs").status_code == 403
    assert session.get("/auth/me").status_code == 403
    live = web_app.extensions["canvasflow"].live
    with web_app.test_request_context("/socket.io/"), pytest.raises(ConnectionRefusedError):
        live.on_connect({"token": publisher_token})


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"payload": {}}, "name", "required"),
        ({"name": ""}, "name", "1 to 200"),
        ({"name": "n" * 201}, "name", "1 to 200"),
        ({"name": "a b"}, "name", "must match"),
        ({"name": 3}, "name", "must be a string"),
        ({"name": "ok", "payload": [1]}, "payload", "must be an object"),
        ({"name": "ok", "payload": None}, "payload", "not null"),
        ({"name": "ok", "key": ""}, "key", "1 to 200"),
        (
            {"name": "ok", "payload": {"x": "y" * 1_100_000}},
            "payload",
            "CANVASFLOW_MAX_INPUTS_BYTES",
        ),
        ({"name": "ok", "key": 12}, "key", "must be a string or null"),
        ({"name": "ok", "key": ["a"]}, "key", "must be a string or null"),
        ({"name": "ok", "colour": "red"}, "colour", "Unknown field"),
    ],
)
def test_a_malformed_event_gets_400_naming_the_field(
    web_app: Any, publisher_token: str, body: dict[str, Any], field: str, message: str
) -> None:
    r = _publish(web_app, publisher_token, body)
    assert r.status_code == 400, r.json
    errors = r.json["errors"]["json"]
    assert field in errors, errors
    assert message in " ".join(errors[field])


def test_a_key_with_a_lone_surrogate_gets_400(web_app: Any, publisher_token: str) -> None:
    r = web_app.test_client().post(
        "/api/v1/events",
        data='{"name": "ok", "key": "k\\ud800"}',
        content_type="application/json",
        headers=_bearer(publisher_token),
    )
    assert r.status_code == 400 and "lone surrogates" in r.json["errors"]["json"]["key"][0]


def test_a_body_that_is_not_an_object_gets_400(web_app: Any, publisher_token: str) -> None:
    r = _publish(web_app, publisher_token, ["name", "x"])
    assert r.status_code == 400


def test_the_run_list_refuses_an_unknown_trigger_type(web_app: Any) -> None:
    r = Api(web_app, VIEWER).get("/runs?trigger_type=cron")
    assert r.status_code == 400 and "trigger_type" in r.json["errors"]["query"]


def test_a_dashboard_submit_and_an_api_submit_say_so(
    web_app: Any, orchestrator_client: Any, publisher_token: str
) -> None:
    wf = _workflow(_event())
    orchestrator_client.register(wf)
    by_session = Api(web_app, OPERATOR).post("/runs", {"workflow": wf["id"]}).json
    token = web_app.extensions["canvasflow"].users.create_token(OPERATOR[0], "t")[1]
    by_token = (
        web_app.test_client()
        .post("/api/v1/runs", json={"workflow": wf["id"]}, headers=_bearer(token))
        .json
    )
    assert (by_session["trigger_type"], by_token["trigger_type"]) == ("dashboard", "api")
    wait_for(lambda: orchestrator_client.state.status(by_token["id"]) == "COMPLETED", 30)
