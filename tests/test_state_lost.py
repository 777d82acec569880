"""Runs whose hot state Redis lost: shown "state lost" by the API, resolved by an operator from
the API or the CLI (real Redis, a real worker, the recorder, a SQLite audit store)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator.audit import queries
from orchestrator.audit.models import audit_log, events
from tests.conftest import ROOT
from tests.lost_helpers import NOWHERE, lose
from tests.web_helpers import ADMIN, OPERATOR, VIEWER, Api, wait_recorded

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


def lost_run(web_app: Any, client: Any) -> str:
    store = web_app.extensions["canvasflow"].store
    run = client.submit(NOWHERE)
    wait_recorded(store, run.id, {"PENDING"})
    lose(client, run.id)
    return run.id


def audit_of(store: Any, run_id: str) -> list[dict[str, Any]]:
    with store.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(audit_log).where(audit_log.c.target_id == run_id).order_by(audit_log.c.id)
            ).mappings()
        ]


@pytest.fixture(scope="module")
def operator(web_app):
    return Api(web_app, OPERATOR)


def test_a_run_unknown_to_redis_but_live_in_the_audit_store_is_listed_and_shown_as_state_lost(
    web_app, orchestrator_client, operator
) -> None:
    rid = lost_run(web_app, orchestrator_client)
    listed = {r["id"]: r for r in operator.get("/runs?limit=200").json["runs"]}
    assert listed[rid]["state_lost"] is True
    assert listed[rid]["status"] == "PENDING"
    assert (
        listed[rid]["can_resolve"]
        and not listed[rid]["can_cancel"]
        and not listed[rid]["can_pause"]
    )
    cancel = operator.post(f"/runs/{rid}/cancel", {"reason": "try the usual way"})
    assert cancel.status_code == 404 and cancel.json["state_lost"] is True
    assert (
        "its state was lost" in cancel.json["message"]
        and f"/runs/{rid}/resolve" in cancel.json["message"]
    )
    detail = operator.get(f"/runs/{rid}").json
    assert detail["state_lost"] is True and detail["source"] == "audit"
    live = orchestrator_client.submit(
        {"id": "not_lost", "steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}
    )
    assert operator.get(f"/runs/{live.id}").json["state_lost"] is False


def test_an_operator_resolves_a_lost_run_from_the_api_and_it_is_final_and_audited(
    web_app, orchestrator_client, operator
) -> None:
    store = web_app.extensions["canvasflow"].store
    rid = lost_run(web_app, orchestrator_client)
    r = operator.post(
        f"/runs/{rid}/resolve", {"as": "cancelled", "reason": "Redis restarted without AOF"}
    )
    assert r.status_code == 200, r.json
    assert r.json["status_before"] == "PENDING" and r.json["status"] == "CANCELLED"
    assert r.json["run"]["status"] == "CANCELLED" and r.json["run"]["state_lost"] is False
    run = queries.get_run(store, rid)
    assert run.status == "CANCELLED" and "Redis restarted without AOF" in run.error
    assert {s.status for s in queries.run_detail(store, rid).steps} == {"CANCELLED"}
    (row,) = [a for a in audit_of(store, rid) if a["action"] == "resolve"]
    assert (row["actor"], row["outcome"], row["reason"]) == (
        OPERATOR[0],
        "ok",
        "Redis restarted without AOF",
    )
    with store.connect() as conn:
        types = [
            t
            for (t,) in conn.execute(
                select(events.c.type).where(events.c.run_id == rid).order_by(events.c.seq)
            )
        ]
    assert types[0] == "run_created" and types[-1] == "run_resolved"
    # already final: 409, and the refusal is audited too
    again = operator.post(f"/runs/{rid}/resolve", {"as": "failed", "reason": "twice"})
    assert again.status_code == 409 and again.json["current_status"] == "CANCELLED"
    assert [a["outcome"] for a in audit_of(store, rid) if a["action"] == "resolve"] == [
        "ok",
        "refused: CANCELLED",
    ]


def test_resolve_refuses_what_it_must_with_the_right_status(
    web_app, orchestrator_client, operator
) -> None:
    rid = lost_run(web_app, orchestrator_client)
    missing = operator.post(f"/runs/{rid}/resolve", {"reason": "no target"})
    assert missing.status_code == 400 and "as" in missing.json["errors"]["json"]
    bad = operator.post(f"/runs/{rid}/resolve", {"as": "completed", "reason": "x"})
    assert bad.status_code == 400
    viewer = Api(web_app, VIEWER).post(f"/runs/{rid}/resolve", {"as": "failed", "reason": "x"})
    assert viewer.status_code == 403
    unknown = operator.post("/runs/00000000deadbeef/resolve", {"as": "failed", "reason": "x"})
    assert unknown.status_code == 404
    # a run Redis knows (a live one) is not resolved as lost: 409
    live = orchestrator_client.submit(NOWHERE)
    known = operator.post(f"/runs/{live.id}/resolve", {"as": "failed", "reason": "x"})
    assert known.status_code == 409 and known.json["current_status"] == "PENDING"
    orchestrator_client.control.cancel(live.id)
    # a session login must send the CSRF token, as for the other control posts
    session = web_app.test_client()
    login = session.post("/api/v1/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
    assert login.status_code == 200
    no_csrf = session.post(f"/api/v1/runs/{rid}/resolve", json={"as": "failed", "reason": "x"})
    assert no_csrf.status_code == 403
    spec = (
        Api(web_app, None)
        .get("/openapi.json")
        .json["paths"]["/api/v1/runs/{run_id}/resolve"]["post"]
    )
    assert {"200", "400", "401", "403", "404", "409"} <= set(spec["responses"])
    assert "as" in str(spec["requestBody"])


def test_an_operator_resolves_a_lost_run_from_the_cli_as_a_user_would(
    web_app, web_fleet, orchestrator_client
) -> None:
    store = web_app.extensions["canvasflow"].store
    rid = lost_run(web_app, orchestrator_client)
    env = {
        **os.environ,
        **web_fleet.settings.as_env(),
        "PYTHONPATH": str(ROOT),
        "CANVASFLOW_ACTOR": "carol",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "resolve", *args],
            env=env,
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=60,
        )

    status = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "status", rid],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        status.returncode == 1
        and "its state was lost" in status.stderr
        and "canvasflow resolve" in status.stderr
    )
    usage = cli(rid)
    assert usage.returncode == 2 and "--as failed|cancelled and --reason" in usage.stderr
    done = cli(rid, "--as", "failed", "--reason", "lost in the drill")
    assert done.returncode == 0, done.stderr
    assert f"resolve: run {rid} PENDING -> FAILED" in done.stdout
    assert queries.get_run(store, rid).status == "FAILED"
    assert [
        (a["actor"], a["outcome"]) for a in audit_of(store, rid) if a["action"] == "resolve"
    ] == [("carol", "ok")]
    twice = cli(rid, "--as", "failed", "--reason", "again")
    assert twice.returncode == 1 and "it is FAILED" in twice.stderr
    nope = cli("00000000deadbeef", "--as", "failed", "--reason", "x")
    assert nope.returncode == 1 and "unknown run '00000000deadbeef'" in nope.stderr
