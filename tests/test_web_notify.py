"""The notification REST routes (admins only), end to end: the web app's embedded recorder
queues, a real worker on the notify queue delivers to a local HTTP receiver, a dead letter is
replayed through the API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator import Workflow
from tests.notify_helpers import Receiver
from tests.web_helpers import ADMIN, OPERATOR, VIEWER, Api, wait_for

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def admin(web_app: Any) -> Api:
    return Api(web_app, ADMIN)


@pytest.fixture
def rcv() -> Iterator[Receiver]:
    answers = {"status": 503}
    r = Receiver(lambda n: answers["status"])
    r.answers = answers  # type: ignore[attr-defined]
    yield r
    r.close()


@pytest.fixture
def endpoints_cleared(admin: Api) -> Iterator[None]:
    yield
    for ep in admin.get("/notifications/endpoints").json["endpoints"]:
        admin.http.delete(
            f"/api/v1/notifications/endpoints/{ep['id']}", headers={"X-CSRF-Token": admin.csrf}
        )


def test_only_admins_manage_notifications(web_app: Any, admin: Api) -> None:
    for user in (VIEWER, OPERATOR):
        api = Api(web_app, user)
        assert api.get("/notifications/endpoints").status_code == 403
        assert api.post("/notifications/endpoints", {"url": "http://x/y"}).status_code == 403
        assert api.get("/notifications/deliveries").status_code == 403
    assert Api(web_app, None).get("/notifications/endpoints").status_code == 401


def test_a_bad_endpoint_is_a_400_naming_each_field(admin: Api, endpoints_cleared: None) -> None:
    r = admin.post("/notifications/endpoints", {"url": "ftp://files.example/in"})
    assert r.status_code == 400
    assert "is not an http(s) URL" in r.json["errors"]["json"]["url"][0]
    r = admin.post(
        "/notifications/endpoints",
        {"url": "http://x/y", "events": ["failed", "exploded"], "format": "xml"},
    )
    assert r.status_code == 400
    errors = r.json["errors"]["json"]
    assert "events" in errors and "format" in errors
    assert admin.get("/notifications/endpoints").json["endpoints"] == []


def test_endpoints_test_deliveries_and_a_replayed_dead_letter_through_the_api(
    admin: Api,
    web_fleet: Any,
    orchestrator_client: Any,
    start_worker: Any,
    rcv: Receiver,
    endpoints_cleared: None,
) -> None:
    start_worker(web_fleet.settings.with_(notify_max_attempts=1, notify_backoff=0), queues="notify")
    r = admin.post(
        "/notifications/endpoints",
        {"url": rcv.url, "events": ["failed"], "workflows": ["api_nt_fail"]},
    )
    assert r.status_code == 201, r.json
    ep = r.json
    assert len(ep["secret"]) >= 32 and ep["events"] == ["failed"]
    (listed,) = admin.get("/notifications/endpoints").json["endpoints"]
    assert listed["id"] == ep["id"] and "secret" not in listed and listed["enabled"] is True
    path = f"/api/v1/notifications/endpoints/{ep['id']}"
    hdrs = {"X-CSRF-Token": admin.csrf}
    off = admin.http.patch(path, json={"enabled": False}, headers=hdrs)
    assert off.status_code == 200 and off.json["enabled"] is False
    assert admin.http.patch(path, json={"enabled": "maybe"}, headers=hdrs).status_code == 400
    assert admin.http.patch(path, json={"enabled": True}, headers=hdrs).json["enabled"] is True

    rcv.answers["status"] = 200  # type: ignore[attr-defined]
    t = admin.post(f"/notifications/endpoints/{ep['id']}/test")
    assert t.status_code == 200 and t.json["status_code"] == 200 and t.json["error"] is None
    rcv.answers["status"] = 503  # type: ignore[attr-defined]

    wf = Workflow("api_nt_fail").step("bad", "builtin", "fail", params={"message": "nope"})
    run = orchestrator_client.submit(wf)
    run.wait(60)

    def dead() -> list[dict[str, Any]]:
        return admin.get("/notifications/deliveries?status=dead").json["deliveries"]

    wait_for(lambda: dead(), 60, "the delivery to be dead-lettered")
    (d,) = dead()
    assert d["run"] == run.id and d["event"] == "failed" and d["last_status_code"] == 503
    detail = admin.get(f"/notifications/deliveries/{d['id']}").json
    assert [a["status_code"] for a in detail["attempt_log"]] == [503]

    rcv.answers["status"] = 200  # type: ignore[attr-defined]
    r = admin.post(f"/notifications/deliveries/{d['id']}/replay")
    assert r.status_code == 200 and r.json["status"] == "pending"
    wait_for(
        lambda: admin.get(f"/notifications/deliveries/{d['id']}").json["status"] == "delivered",
        60,
        "the replayed delivery",
    )
    again = admin.post(f"/notifications/deliveries/{d['id']}/replay")
    assert again.status_code == 409 and "not dead" in again.json["message"]
    log = admin.get(f"/notifications/deliveries?endpoint={ep['id']}").json["deliveries"]
    assert [x["id"] for x in log] == [d["id"]]
    failed = [x for x in rcv.requests if x.headers["X-Canvasflow-Event"] == "failed"]
    assert len(failed) == 2 and failed[-1].json["run"]["id"] == run.id

    assert admin.get("/notifications/deliveries/dl-nosuch").status_code == 404
    assert admin.post("/notifications/deliveries/dl-nosuch/replay").status_code == 404
    gone = admin.http.delete(
        f"/api/v1/notifications/endpoints/{ep['id']}", headers={"X-CSRF-Token": admin.csrf}
    )
    assert gone.status_code == 204
    assert admin.get("/notifications/endpoints").json["endpoints"] == []
    assert admin.post(f"/notifications/endpoints/{ep['id']}/test").status_code == 404
