"""The REST API keeps its OpenAPI contract: who may call a route is checked before what they
send, every status a route answers is documented, requests the document allows are accepted,
and nothing answers 500 — not with Redis down, not under schemathesis (real app, real Redis,
real worker, authenticated as an admin)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_CALL_ALLOW, WorkerProcess, make_settings, need
from tests.web_fixtures import LiveServer, WebFleet, start_live_server, stop_live_server
from tests.web_helpers import ADMIN, VIEWER, Api, wait_for, wait_recorded
from web import auth

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

MAX_SEQ = 2**63 - 1
SAMPLE_ARGS = {"action": "pool_grow"}  # path parameters that are not free text


def api_routes(app: Any) -> list[tuple[str, str, Any]]:
    """(path with sample parameters, method, handler) of every API operation."""
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.endpoint.startswith("api-docs."):
            continue
        path = re.sub(
            r"<(?:\w+:)?(\w+)>", lambda m: SAMPLE_ARGS.get(m.group(1), "nosuchthing"), rule.rule
        )
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            with app.test_request_context(path, method=method):
                out.append((path, method, auth.handler_of(rule.endpoint, method)))
    return out


@pytest.fixture(scope="module")
def viewer(web_app: Any) -> Api:
    return Api(web_app, VIEWER)


@pytest.fixture(scope="module")
def admin(web_app: Any) -> Api:
    return Api(web_app, ADMIN)


def test_every_api_route_declares_its_role_or_is_public(web_app):
    undeclared = [
        f"{m} {p}" for p, m, handler in api_routes(web_app) if auth.access_of(handler) is None
    ]
    assert undeclared == [], (
        "declare who may call each route with @auth.require(role) or @auth.public() "
        f"(docs/api.md, Declaring a route): {undeclared}"
    )
    assert len(api_routes(web_app)) > 40


def test_anonymous_requests_with_a_bad_body_or_query_are_401_on_every_endpoint(web_app):
    http = web_app.test_client()
    checked = 0
    for path, method, handler in api_routes(web_app):
        if auth.access_of(handler).role is None:
            continue
        r = http.open(
            f"{path}?limit=-5&after=-1&steps_limit=0&period=never&version=",
            method=method,
            json=[{"not": "an object"}] if method not in ("GET", "DELETE") else None,
        )
        assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.get_json()}"
        assert "authentication required" in r.json["message"]
        checked += 1
    assert checked > 35


def test_a_viewer_with_a_bad_body_on_an_operator_or_admin_route_is_403(web_app, viewer):
    checked = 0
    for path, method, handler in api_routes(web_app):
        access = auth.access_of(handler)
        if access.role in (None, "viewer"):
            continue
        r = viewer.http.open(
            path,
            method=method,
            json=[{"reason": 5, "name": ""}],
            headers={"X-CSRF-Token": viewer.csrf},
        )
        assert r.status_code == 403, f"{method} {path}: {r.status_code} {r.get_json()}"
        assert f"needs the {access.role} role" in r.json["message"]
        checked += 1
    assert checked > 15


def test_a_viewers_refused_run_action_is_audited_even_with_a_bad_body(
    web_app, viewer, admin, orchestrator_client
):
    run = orchestrator_client.submit(
        {"id": "contract_audit", "steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}
    )
    assert (
        viewer.post(f"/runs/{run.id}/retry", {"from_step": "nope", "reason": 7}).status_code == 403
    )
    store = web_app.extensions["canvasflow"].store
    wait_recorded(store, run.id, {"COMPLETED"})
    actions = admin.get(f"/runs/{run.id}").json["operator_actions"]
    assert [(a["actor"], a["action"], a["outcome"]) for a in actions] == [
        (VIEWER[0], "retry", "refused: viewer")
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/runs/{id}/events?after={n}",
        "/runs/{id}/logs?after={n}",
        "/runs/{id}/logs?after=0&after_line={n}",
        "/runs/{id}?steps_offset={n}",
    ],
)
def test_a_sequence_number_or_offset_past_2_to_the_63_is_a_400_naming_the_range(
    admin, orchestrator_client, path
):
    run = orchestrator_client.submit(
        {"id": "contract_seq", "steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}
    )
    ok = admin.get(path.format(id=run.id, n=MAX_SEQ))
    assert ok.status_code == 200, ok.json
    r = admin.get(path.format(id=run.id, n=MAX_SEQ + 1))
    assert r.status_code == 400
    field = path.rsplit("&", 1)[-1].split("?")[-1].split("=")[0]
    assert str(MAX_SEQ) in r.json["errors"]["query"][field][0]


def test_empty_since_and_until_mean_no_bound(admin):
    everything = admin.get("/runs?limit=500").json["runs"]
    r = admin.get("/runs?since=&until=&limit=500")
    assert r.status_code == 200, r.json
    assert [x["id"] for x in r.json["runs"]] == [x["id"] for x in everything]
    bad = admin.get("/runs?until=yesterday")
    assert bad.status_code == 400 and "ISO 8601" in bad.json["errors"]["query"]["until"][0]


def test_the_bodies_the_document_refuses_are_refused_and_it_says_why(web_app, admin):
    spec = admin.get("/openapi.json").json
    components = spec["components"]["schemas"]
    assert components["SubmitBody"]["oneOf"] == [
        {"required": ["workflow"]},
        {"required": ["definition"]},
    ]
    assert components["WorkflowPutBody"]["oneOf"] == [
        {"required": ["yaml"]},
        {"required": ["definition"]},
    ]
    assert "password" in components["UserBody"]["required"]
    r = admin.post("/runs", {})
    assert r.status_code == 400 and "either workflow" in r.json["errors"]["json"]["workflow"][0]
    assert admin.put("/workflows/contract_empty", {}).status_code == 400
    r = admin.post("/users", {"name": "nopassword"})
    assert r.status_code == 400 and r.json["errors"]["json"]["password"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/users/nosuchuser"),
        ("POST", "/inspect/tasks/abc/revoke"),
        ("POST", "/inspect/tasks/abc/terminate"),
        ("POST", "/runs"),
        ("PUT", "/workflows/contract_nobody"),
    ],
)
def test_a_missing_body_is_a_400_and_a_body_that_is_not_json_a_415(admin, method, path):
    headers = {"X-CSRF-Token": admin.csrf}
    r = admin.http.open(f"/api/v1{path}", method=method, headers=headers)
    assert r.status_code == 400 and "needs a JSON body" in r.json["message"]
    r = admin.http.open(
        f"/api/v1{path}",
        method=method,
        data="role=viewer",
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415 and "application/x-www-form-urlencoded" in r.json["message"]


def test_an_action_whose_body_is_optional_takes_none(admin, orchestrator_client):
    run = orchestrator_client.submit(
        {"id": "contract_nobody", "steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}
    )
    r = admin.http.post(f"/api/v1/runs/{run.id}/clone", headers={"X-CSRF-Token": admin.csrf})
    assert r.status_code == 201, r.json


def test_a_method_a_route_does_not_have_is_a_405_with_allow(admin):
    r = admin.http.put("/api/v1/runs", json={}, headers={"X-CSRF-Token": admin.csrf})
    assert r.status_code == 405 and r.is_json
    assert set(r.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_the_document_lists_each_routes_errors_and_no_default(admin):
    paths = admin.get("/openapi.json").json["paths"]
    ops = {
        (m.upper(), p): op
        for p, item in paths.items()
        for m, op in item.items()
        if m in ("get", "post", "put", "patch", "delete")
    }
    assert all("default" not in op["responses"] for op in ops.values())
    assert all("503" in op["responses"] for op in ops.values())
    assert {"400", "401", "403", "404", "409", "415"} <= set(
        ops["POST", "/api/v1/runs/{run_id}/pause"]["responses"]
    )
    assert {"200", "503"} == set(ops["GET", "/api/v1/health"]["responses"])
    assert "Retry-After" in ops["GET", "/api/v1/runs"]["responses"]["503"]["headers"]
    error = admin.get("/openapi.json").json["components"]["schemas"]["Error"]["properties"]
    assert {"problems", "errors", "current_status", "allowed"} <= set(error)


# ---------------------------------------------------------------------------------------------
# Redis down: list, detail, events and logs from the audit store; everything else 503
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def redis_that_stops(tmp_path: Path) -> Iterator[Any]:
    from orchestrator.cli.embedded import EmbeddedRedis
    from orchestrator.errors import ConfigurationError

    server = EmbeddedRedis()
    try:
        server.start()
    except ConfigurationError as exc:
        need("Redis", str(exc))
    yield server
    server.stop()


def test_with_redis_down_runs_are_served_from_the_audit_store_and_the_rest_is_503(
    redis_that_stops, tmp_path
):
    from orchestrator import Client
    from web import create_app
    from web.settings import WebSettings

    settings = make_settings(
        redis_that_stops.url,
        key_prefix=f"down{uuid.uuid4().hex[:6]}",
        lease_ttl=3,
        database_url=f"sqlite:///{tmp_path / 'audit.db'}",
        call_allow=TEST_CALL_ALLOW,
    )
    worker = WorkerProcess(settings, f"down-{uuid.uuid4().hex[:6]}", log_dir=tmp_path).wait_ready()
    client = Client(settings)
    app = create_app(
        settings, WebSettings(admin_password=ADMIN[1], secret_key="down-secret", recorder=True)
    )
    try:
        admin = Api(app, ADMIN)
        run = client.submit(
            {
                "id": "down",
                "steps": [
                    {
                        "id": "say",
                        "plugin": "builtin",
                        "method": "call",
                        "params": {
                            "function": "tests.web_helpers:log_slowly",
                            "kwargs": {"lines": 3, "every": 0.01},
                        },
                    }
                ],
            }
        )
        store = app.extensions["canvasflow"].store
        wait_recorded(store, run.id, {"COMPLETED"})
        wait_for(
            lambda: admin.get(f"/runs/{run.id}/logs").json["logs"], 20, "the logs to be recorded"
        )
        live = admin.get(f"/runs/{run.id}/events").json["events"]
        worker.stop()
        app.extensions["canvasflow"].stop()
        redis_that_stops.stop()

        listed = admin.get("/runs")
        assert listed.status_code == 200, listed.json
        assert [r["id"] for r in listed.json["runs"]] == [run.id] and listed.json["runs"][0][
            "status"
        ] == "COMPLETED"
        assert any("Redis is unreachable" in w for w in listed.json["warnings"])
        detail = admin.get(f"/runs/{run.id}")
        assert detail.status_code == 200 and detail.json["source"] == "audit"
        assert detail.json["steps"][0]["status"] == "COMPLETED"
        assert any("Redis is unreachable" in w for w in detail.json["warnings"])
        events = admin.get(f"/runs/{run.id}/events")
        assert events.status_code == 200 and events.json["warnings"]
        assert [e["seq"] for e in events.json["events"]] == [e["seq"] for e in live]
        assert events.json["latest_seq"] == live[-1]["seq"]
        logs = admin.get(f"/runs/{run.id}/logs")
        assert logs.status_code == 200 and len(logs.json["logs"]) == 3 and logs.json["warnings"]

        for method, path, body in [
            ("POST", f"/runs/{run.id}/pause", {}),
            ("POST", "/runs", {"workflow": "down"}),
            ("GET", "/workflows", None),
            ("GET", "/workers", None),
            ("GET", "/inspect/queues", None),
            ("GET", f"/runs/{run.id}/timeline", None),
        ]:
            r = admin.http.open(
                f"/api/v1{path}", method=method, json=body, headers={"X-CSRF-Token": admin.csrf}
            )
            assert r.status_code == 503, f"{method} {path}: {r.status_code} {r.get_json()}"
            assert (
                r.headers["Retry-After"].isdigit() and "Redis is unreachable" in r.json["message"]
            )
        health = admin.get("/health")
        assert health.status_code == 503 and health.json["redis"].startswith("error")
    finally:
        worker.stop()
        client.close()
        app.extensions["canvasflow"].stop()


# ---------------------------------------------------------------------------------------------
# schemathesis: every operation, every check, against the real app
# ---------------------------------------------------------------------------------------------

schemathesis = pytest.importorskip("schemathesis")  # the "test" extra; CI installs it

SCHEMATHESIS = {
    # The same cases every run: a failure is reproducible, not flaky. A deeper look, by hand:
    # CANVASFLOW_TEST_CONTRACT_EXAMPLES=100 CANVASFLOW_TEST_CONTRACT_SEED=7 pytest -k openapi_contract
    "seed": int(os.environ.get("CANVASFLOW_TEST_CONTRACT_SEED", "13")),
    "generation": {
        "max-examples": int(os.environ.get("CANVASFLOW_TEST_CONTRACT_EXAMPLES", "10")),
        "database": "none",
    },
    # /inspect/tasks/apply waits up to its body's `timeout` (at most 60 s) for a task to finish
    "request-timeout": 75,
    "cache": {
        "enabled": False
    },  # no state carried between runs (nor a .schemathesis/ in the checkout)
    "checks": {
        "enabled": True
    },  # every check schemathesis has (max_response_time needs a limit: none)
    # A definition (inline, or registered by PUT) and a workflow id are checked beyond what a JSON
    # schema can say (plugins exist, no cycles, the id is registered...): a 400 that lists every
    # problem with its path is the documented answer to a well-formed but invalid one.
    "operations": [
        {
            "include-name": name,
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "429", "5xx"]
                }
            },
        }
        for name in ("POST /api/v1/runs", "PUT /api/v1/workflows/{workflow_id}")
    ],
}


@pytest.fixture(scope="module")
def contract_server(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """`python -m web --recorder` on a fleet of its own (key prefix, worker, audit database), so
    that what the fuzzer does to runs, users and tokens touches no other test."""
    tmp = tmp_path_factory.mktemp("contract")
    settings = make_settings(
        redis_url,
        key_prefix=f"c{uuid.uuid4().hex[:8]}",
        lease_ttl=3,
        visibility_timeout=60,
        database_url=f"sqlite:///{tmp / 'audit.db'}",
        call_allow=TEST_CALL_ALLOW,
    )
    worker = WorkerProcess(settings, f"contract-{uuid.uuid4().hex[:6]}", log_dir=tmp).wait_ready()
    server = start_live_server(WebFleet(settings, worker, tmp))
    try:
        yield server
    finally:
        stop_live_server(server)
        worker.stop()


def run_schemathesis(base_url: str, token: str) -> list[str]:
    """Every phase and every check of schemathesis's engine (what its CLI runs) over the app; the
    failures, one line each with the request that shows it. (Its pytest plugin does not run
    under pytest 9, and its WSGI transport not with Werkzeug 3.1, so the engine is driven
    directly, over HTTP.)"""
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import Status, events, from_schema

    config = {**SCHEMATHESIS, "headers": {"Authorization": f"Bearer {token}"}}
    schema = schemathesis.openapi.from_url(
        f"{base_url}/api/v1/openapi.json", config=SchemathesisConfig.from_dict(config)
    )
    failures: list[str] = []
    scenarios = 0
    phases: dict[str, str] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.PhaseFinished):
            phases[event.phase.name.value] = event.status.value
        if isinstance(event, events.FatalError):
            raise event.exception
        if isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: error {event.value!r}")
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        f = check.failure_info
                        failures.append(
                            f"{event.label} [{check.name}] {f.failure.title}: {f.failure.message}"
                            f" (got {getattr(f.failure, 'status_code', '?')})\n    {f.code_sample[:1500]}"
                        )
    assert scenarios > 40, f"schemathesis ran only {scenarios} scenarios"
    print(f"schemathesis: {scenarios} scenarios, phases {phases}")
    return sorted(set(failures))


@pytest.mark.timeout(900)  # about two minutes here; room for a loaded CI machine
def test_every_operation_keeps_the_openapi_contract(contract_server):
    failures = run_schemathesis(contract_server.url, contract_server.token(ADMIN))
    assert failures == [], f"{len(failures)} contract failures:\n" + "\n".join(failures)
