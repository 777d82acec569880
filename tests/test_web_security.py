"""No one gets in who should not (issue 13, the drill): what the drill did to the dashboard, done
again against the real app, a real Redis, a real Celery worker and a real SQL store.

Each test builds its own app on a SQLite store of its own where it throttles logins or breaks the
audit log, so that the other dashboard tests' users and address are never locked out.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.errors import ConfigurationError
from tests.conftest import ROOT
from tests.web_helpers import ADMIN, OPERATOR, VIEWER, Api

pytest_plugins = ("tests.web_fixtures",)

INLINE = {
    "id": "sec_inline",
    "steps": [{"id": "a", "plugin": "builtin", "method": "echo", "params": {"x": 1}}],
}


def make_app(web_fleet: Any, db: Path, **web: Any) -> Any:
    """An app of its own (no background services) on the SQLite store ``db``."""
    from web import create_app
    from web.settings import WebSettings

    options = {
        "admin_password": ADMIN[1],
        "secret_key": "security-test-secret-0123456789",
        "relay": False,
        "sla_monitor": False,
        "fleet_events": False,
        **web,
    }
    app = create_app(
        web_fleet.settings.with_(database_url=f"sqlite:///{db}"),
        WebSettings(**options),
        start=False,
    )
    app.config["TESTING"] = True
    users = app.extensions["canvasflow"].users
    users.put(OPERATOR[0], password=OPERATOR[1], role="operator")
    users.put(VIEWER[0], password=VIEWER[1], role="viewer")
    return app


@pytest.fixture
def app(web_fleet: Any, tmp_path: Path) -> Iterator[Any]:
    a = make_app(web_fleet, tmp_path / "audit.db", inspect_task_allow="tests.inspect_tasks.add")
    yield a
    a.extensions["canvasflow"].stop()


def actions(app: Any, action: str) -> list[dict[str, Any]]:
    return [a for a in Api(app, ADMIN).get("/audit/users").json["actions"] if a["action"] == action]


def web_cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANVASFLOW_")}
    env.update(CANVASFLOW_DATABASE_URL=f"sqlite:///{db}", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "web", *args], env=env, capture_output=True, text=True, timeout=60
    )


# -- 1a: an inline definition is a permission of its own ----------------------------------------


def test_an_operator_without_submit_inline_runs_registered_workflows_only(
    app: Any, tmp_path: Path
) -> None:
    admin, op = Api(app, ADMIN), Api(app, OPERATOR)
    assert (
        admin.put(
            "/workflows/sec_registered",
            {"definition": {"steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}},
        ).status_code
        == 200
    )
    assert op.post("/runs", {"workflow": "sec_registered"}).status_code == 201
    # what the drill sent: any code at all, inline
    r = op.post("/runs", {"definition": INLINE})
    assert r.status_code == 403, r.json
    assert "submit_inline" in r.json["message"] and "registered workflows only" in r.json["message"]
    assert (
        op.post("/runs", {"definition": "id: y\nsteps: [{id: a, plugin: builtin}]"}).status_code
        == 403
    )
    assert op.get("/auth/me").json["permissions"] == []
    # an admin grants it (and may always submit inline themselves); withdrawing applies at once
    assert admin.post("/runs", {"definition": INLINE}).status_code == 201
    granted = admin.put(f"/users/{OPERATOR[0]}/permissions/submit_inline", None)
    assert granted.status_code == 200 and granted.json["permissions"] == ["submit_inline"], (
        granted.json
    )
    assert op.post("/runs", {"definition": INLINE}).status_code == 201
    r = admin.http.delete(
        f"/api/v1/users/{OPERATOR[0]}/permissions/submit_inline",
        headers={"X-CSRF-Token": admin.csrf},
    )
    assert r.status_code == 200 and r.json["permissions"] == []
    assert op.post("/runs", {"definition": INLINE}).status_code == 403
    # only admins grant; unknown users and permissions are 404
    assert op.put(f"/users/{OPERATOR[0]}/permissions/submit_inline", None).status_code == 403
    assert admin.put("/users/nobody/permissions/submit_inline", None).status_code == 404
    r = admin.put(f"/users/{OPERATOR[0]}/permissions/run_anything", None)
    assert r.status_code == 404 and "submit_inline" in r.json["message"]
    grants = [(a["actor"], a["outcome"]) for a in actions(app, "permission_grant")]
    assert ("admin", "ok") in grants and (OPERATOR[0], "refused: operator") in grants, grants
    assert [(a["actor"], a["outcome"]) for a in actions(app, "permission_revoke")] == [
        ("admin", "ok")
    ]
    # the CLI grants and withdraws on the server
    db = tmp_path / "audit.db"
    out = web_cli(db, "users", "grant", OPERATOR[0], "submit_inline")
    assert out.returncode == 0 and "submit_inline" in out.stdout, out.stderr
    assert op.post("/runs", {"definition": INLINE}).status_code == 201
    assert web_cli(db, "users", "revoke", OPERATOR[0], "submit_inline").returncode == 0
    assert op.post("/runs", {"definition": INLINE}).status_code == 403
    assert actions(app, "permission_revoke")[0]["actor"].startswith("cli:")  # newest first


# -- 1c: the signing key ---------------------------------------------------------------------------


def test_the_dashboard_refuses_to_start_without_a_configured_signing_key(
    web_fleet: Any, tmp_path: Path
) -> None:
    from web import create_app
    from web.settings import WebSettings

    with pytest.raises(ConfigurationError, match="CANVASFLOW_WEB_SECRET_KEY"):
        create_app(
            web_fleet.settings,
            WebSettings(relay=False, sla_monitor=False, fleet_events=False),
            start=False,
        )
    with pytest.raises(ConfigurationError, match="CANVASFLOW_WEB_SECRET_KEY_FILE.*cannot read"):
        WebSettings(secret_key_file=str(tmp_path / "missing.key")).signing_key()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANVASFLOW_")}
    env.update(web_fleet.settings.as_env(), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "web", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "CANVASFLOW_WEB_SECRET_KEY" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_the_signing_key_never_lives_in_redis_and_an_old_one_there_is_deleted(
    web_fleet: Any, tmp_path: Path
) -> None:
    import redis

    from orchestrator.cli.embedded import secret_key_file
    from web import create_app
    from web.settings import WebSettings

    r = redis.Redis.from_url(web_fleet.settings.redis_url)
    old = f"{web_fleet.settings.key_prefix}:web:secret_key"
    r.set(old, "what an older version left for anyone to read")
    key = secret_key_file(tmp_path / "demo" / "web-secret.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.read_text()
    assert (
        len(first.strip()) >= 48 and secret_key_file(key).read_text() == first
    )  # made once, reused
    app = create_app(
        web_fleet.settings.with_(database_url="none"),
        WebSettings(secret_key_file=str(key), relay=False, sla_monitor=False, fleet_events=False),
        start=False,
    )
    assert app.config["SECRET_KEY"] == first.strip()
    assert r.exists(old) == 0
    assert not [k for k in r.scan_iter(f"{web_fleet.settings.key_prefix}:web:*")]
    app.extensions["canvasflow"].stop()
    r.close()


def test_docker_compose_refuses_to_start_the_web_without_a_secret() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    value = compose["services"]["web"]["environment"]["CANVASFLOW_WEB_SECRET_KEY"]
    # ${VAR:?message}: compose stops with the message when VAR is unset or empty
    assert re.fullmatch(r"\$\{CANVASFLOW_WEB_SECRET_KEY:\?.+\}", value), value
    assert compose["services"]["web"]["environment"]["CANVASFLOW_DATABASE_URL"].startswith(
        "postgresql"
    )


# -- 2: CSRF on login and logout -------------------------------------------------------------------


def test_the_login_form_without_its_csrf_token_is_refused_even_with_no_cookie(app: Any) -> None:
    http = app.test_client()
    # the drill: curl -X POST -d 'username=…&password=…' /login, no cookie, no csrf field
    r = http.post("/login", data={"username": OPERATOR[0], "password": OPERATOR[1]})
    assert r.status_code == 400 and "form expired" in r.get_data(as_text=True)
    r = http.post("/login", data={"username": OPERATOR[0], "password": OPERATOR[1], "csrf": ""})
    assert r.status_code == 400
    # the JSON login takes JSON only, which a cross-site form cannot send without a CORS preflight
    r = http.post(
        "/api/v1/auth/login",
        data=f'{{"username": "{OPERATOR[0]}", "password": "{OPERATOR[1]}"}}',
        content_type="text/plain",
    )
    assert r.status_code == 415
    assert http.get("/api/v1/auth/me").status_code == 401
    page = http.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert (
        http.post(
            "/login", data={"username": OPERATOR[0], "password": OPERATOR[1], "csrf": "x" + csrf}
        ).status_code
        == 400
    )
    r = http.post("/login", data={"username": OPERATOR[0], "password": OPERATOR[1], "csrf": csrf})
    assert r.status_code == 302 and http.get("/api/v1/auth/me").json["name"] == OPERATOR[0]


def test_logging_out_takes_a_post_with_the_sessions_token(app: Any) -> None:
    browser = Api(app, OPERATOR)
    assert browser.http.get("/logout").status_code == 405
    assert browser.http.post("/logout").status_code == 403
    assert browser.http.post("/api/v1/auth/logout").status_code == 403
    assert browser.get("/auth/me").status_code == 200  # still logged in
    # the dashboard's Log out button is a form carrying the token
    runs_page = browser.http.get("/runs").get_data(as_text=True)
    form = re.search(
        r'<form method="post" action="/logout"[^>]*>\s*<input type="hidden" name="csrf" value="([^"]+)"',
        runs_page,
    )
    assert form and form.group(1) == browser.csrf
    r = browser.http.post("/logout", data={"csrf": browser.csrf})
    assert r.status_code == 302 and browser.get("/auth/me").status_code == 401
    api = Api(app, VIEWER)
    assert api.post("/auth/logout").status_code == 200 and api.get("/auth/me").status_code == 401


# -- 3: throttling ---------------------------------------------------------------------------------


def test_wrong_passwords_lock_the_account_and_then_the_right_one_gets_429_until_an_admin_unlocks(
    app: Any, tmp_path: Path
) -> None:
    http = app.test_client()
    wrong = {"username": OPERATOR[0], "password": "not-the-password"}
    codes = [http.post("/api/v1/auth/login", json=wrong).status_code for _ in range(30)]
    assert codes[:4] == [401] * 4 and set(codes[4:]) == {429}, codes
    r = http.post("/api/v1/auth/login", json={"username": OPERATOR[0], "password": OPERATOR[1]})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "too many failed logins for this account" in r.json["message"]
    # the form is throttled by the same counts
    page = http.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    r = http.post("/login", data={"username": OPERATOR[0], "password": OPERATOR[1], "csrf": csrf})
    assert (
        r.status_code == 429
        and r.headers["Retry-After"]
        and "too many failed logins" in r.get_data(as_text=True)
    )
    # other accounts still log in; the admin sees the lockout, audited, and lifts it
    admin = Api(app, ADMIN)
    locked = admin.get("/auth/lockouts").json["lockouts"]
    assert [(x["scope"], x["subject"]) for x in locked] == [("user", OPERATOR[0])] and locked[0][
        "failures"
    ] >= 5
    assert Api(app, VIEWER).get("/auth/lockouts").status_code == 403
    assert [a["target_id"] for a in actions(app, "login_lockout")][:1] == [OPERATOR[0]]
    assert admin.post("/auth/lockouts/unlock", {"username": "nobody"}).status_code == 404
    assert admin.post("/auth/lockouts/unlock", {}).status_code == 400
    r = admin.post("/auth/lockouts/unlock", {"username": OPERATOR[0]})
    assert r.status_code == 200 and r.json["unlocked"] == [
        {"scope": "user", "subject": OPERATOR[0]}
    ]
    assert actions(app, "login_unlock")[0]["actor"] == "admin"
    assert (
        http.post(
            "/api/v1/auth/login", json={"username": OPERATOR[0], "password": OPERATOR[1]}
        ).status_code
        == 200
    )
    # and the server's CLI unlocks too
    for _ in range(5):
        http.post("/api/v1/auth/login", json=wrong)
    assert (
        http.post(
            "/api/v1/auth/login", json={"username": OPERATOR[0], "password": OPERATOR[1]}
        ).status_code
        == 429
    )
    out = web_cli(tmp_path / "audit.db", "users", "unlock", OPERATOR[0])
    assert out.returncode == 0, out.stderr
    assert (
        http.post(
            "/api/v1/auth/login", json={"username": OPERATOR[0], "password": OPERATOR[1]}
        ).status_code
        == 200
    )


def test_an_address_that_guesses_at_many_accounts_is_locked_out_whatever_the_account(
    app: Any,
) -> None:
    guesser = app.test_client()
    guesser.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    codes = [
        guesser.post(
            "/api/v1/auth/login", json={"username": f"user{i}", "password": "guess-guess"}
        ).status_code
        for i in range(21)
    ]
    assert codes[:19] == [401] * 19 and codes[19:] == [429, 429], codes
    r = guesser.post("/api/v1/auth/login", json={"username": VIEWER[0], "password": VIEWER[1]})
    assert r.status_code == 429 and "your address" in r.json["message"]
    # another address is not affected
    assert (
        app.test_client()
        .post("/api/v1/auth/login", json={"username": VIEWER[0], "password": VIEWER[1]})
        .status_code
        == 200
    )
    admin = Api(app, ADMIN)
    assert admin.post("/auth/lockouts/unlock", {"address": "192.0.2.7"}).status_code == 200
    assert (
        guesser.post(
            "/api/v1/auth/login", json={"username": VIEWER[0], "password": VIEWER[1]}
        ).status_code
        == 200
    )


def test_a_password_role_disable_or_delete_ends_the_users_sessions_and_tokens(app: Any) -> None:
    admin = Api(app, ADMIN)
    assert (
        admin.post(
            "/users", {"name": "sam", "password": "sam-password", "role": "operator"}
        ).status_code
        == 201
    )

    def sam() -> tuple[Api, dict[str, str]]:
        s = Api(app, ("sam", "sam-password"))
        token = s.post("/auth/tokens", {"name": "ci"}).json["token"]
        return s, {"Authorization": f"Bearer {token}"}

    def ended(s: Api, bearer: dict[str, str]) -> bool:
        session = s.get("/auth/me")
        token = app.test_client().get("/api/v1/auth/me", headers=bearer)
        return (session.status_code, token.status_code) == (
            401,
            401,
        ) and "log in again" in session.json["message"]

    def patch(body: dict[str, Any]) -> Any:
        return admin.http.patch(
            "/api/v1/users/sam", json=body, headers={"X-CSRF-Token": admin.csrf}
        )

    s, bearer = sam()
    assert (
        s.get("/auth/me").status_code == 200
        and app.test_client().get("/api/v1/auth/me", headers=bearer).json["name"]
    )
    assert patch({"password": "sam-password"}).status_code == 200  # even the same password
    assert ended(s, bearer)
    s, bearer = sam()
    assert patch({"role": "viewer"}).status_code == 200 and ended(s, bearer)
    s, bearer = sam()
    r = patch({"disabled": True})
    assert r.status_code == 200 and r.json["disabled"] is True and ended(s, bearer)
    assert (
        app.test_client()
        .post("/api/v1/auth/login", json={"username": "sam", "password": "sam-password"})
        .status_code
        == 401
    )
    assert patch({"disabled": False}).status_code == 200
    s, bearer = sam()
    assert (
        admin.http.delete("/api/v1/users/sam", headers={"X-CSRF-Token": admin.csrf}).status_code
        == 204
    )
    # deleted, then re-created under the same name and password: the old session stays dead
    assert (
        admin.post(
            "/users", {"name": "sam", "password": "sam-password", "role": "operator"}
        ).status_code
        == 201
    )
    assert ended(s, bearer)
    # an admin changing their own password keeps this session (and ends every other one)
    other = Api(app, ADMIN)
    r = admin.http.patch(
        "/api/v1/users/admin", json={"password": ADMIN[1]}, headers={"X-CSRF-Token": admin.csrf}
    )
    assert r.status_code == 200 and admin.get("/auth/me").status_code == 200
    assert other.get("/auth/me").status_code == 401
    assert (
        admin.http.patch(
            "/api/v1/users/admin", json={"disabled": True}, headers={"X-CSRF-Token": admin.csrf}
        ).status_code
        == 409
    )


def test_session_cookies_are_secure_over_https_and_behind_a_trusted_proxy(
    web_fleet: Any, tmp_path: Path
) -> None:
    def cookie(app: Any, **kw: Any) -> str:
        r = app.test_client().post(
            "/api/v1/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]}, **kw
        )
        assert r.status_code == 200
        return r.headers["Set-Cookie"]

    plain = make_app(web_fleet, tmp_path / "a.db")
    assert "Secure" not in cookie(plain)
    assert "Secure" in cookie(plain, base_url="https://dash.example")
    # a forwarded header from a client that is not a trusted proxy changes nothing
    assert "Secure" not in cookie(plain, headers={"X-Forwarded-Proto": "https"})
    proxied = make_app(web_fleet, tmp_path / "b.db", proxy_fix=1, login_max_failures_address=3)
    assert "Secure" in cookie(proxied, headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in cookie(proxied, headers={"X-Forwarded-Proto": "http"})
    always = make_app(web_fleet, tmp_path / "c.db", cookie_secure=True)
    assert "Secure" in cookie(always) and "HttpOnly" in cookie(always)
    # behind the proxy the throttle counts the client's address, not the proxy's
    for i in range(3):
        proxied.test_client().post(
            "/api/v1/auth/login",
            json={"username": f"x{i}", "password": "wrong-one"},
            headers={"X-Forwarded-For": "198.51.100.4"},
        )
    locked = Api(proxied, ADMIN).get("/auth/lockouts").json["lockouts"]
    assert ("address", "198.51.100.4") in [(x["scope"], x["subject"]) for x in locked]


# -- 1b: sending tasks by name -----------------------------------------------------------------------


def test_inspect_sends_only_tasks_of_the_allow_list_and_never_canvasflows_or_celerys_own(
    app: Any, web_fleet: Any, tmp_path: Path
) -> None:
    op = Api(app, OPERATOR)
    r = op.post(
        "/inspect/tasks/apply", {"name": "tests.inspect_tasks.add", "args": [2, 3], "timeout": 30}
    )
    assert r.status_code == 200 and r.json["result"] == 5, r.json
    r = op.post("/inspect/tasks/send", {"name": "tests.inspect_tasks.nap", "args": [0]})
    assert (
        r.status_code == 403
        and "CANVASFLOW_WEB_INSPECT_TASK_ALLOW=tests.inspect_tasks.add" in r.json["message"]
    )
    # what the drill sent: a forged step message
    for name in (
        "canvasflow.step",
        "canvasflow.settle",
        "celery.accumulate",
        "celery.backend_cleanup",
    ):
        for route in ("send", "apply"):
            r = op.post(f"/inspect/tasks/{route}", {"name": name, "args": []})
            assert r.status_code == 403 and "never sent by hand" in r.json["message"], (
                name,
                r.json,
            )
    listed = make_app(
        web_fleet,
        tmp_path / "listed.db",
        inspect_task_allow="canvasflow.*,celery.*,tests.inspect_tasks.*",
    )
    r = Api(listed, OPERATOR).post(
        "/inspect/tasks/send", {"name": "canvasflow.merge", "args": [[1]]}
    )
    assert r.status_code == 403 and "never sent by hand" in r.json["message"]
    assert (
        Api(listed, OPERATOR)
        .post("/inspect/tasks/send", {"name": "tests.inspect_tasks.nap", "args": [0]})
        .status_code
        == 200
    )
    empty = make_app(web_fleet, tmp_path / "empty.db")
    r = Api(empty, OPERATOR).post(
        "/inspect/tasks/send", {"name": "tests.inspect_tasks.add", "args": [1, 1]}
    )
    assert (
        r.status_code == 403 and "CANVASFLOW_WEB_INSPECT_TASK_ALLOW is empty" in r.json["message"]
    )
    from web.settings import WebSettings

    with pytest.raises(ConfigurationError, match="CANVASFLOW_WEB_INSPECT_TASK_ALLOW: '\\*'"):
        WebSettings(inspect_task_allow="*")
    store = app.extensions["canvasflow"].store
    from sqlalchemy import select

    from orchestrator.audit.models import audit_log

    with store.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.action, audit_log.c.outcome, audit_log.c.target_id).where(
                audit_log.c.target_type == "task"
            )
        ).all()
    assert ("task_apply", "ok") in [(a, o) for a, o, _ in rows]
    assert ("task_send", "refused: not allowed", "canvasflow.step") in rows


# -- 12c: audit writes are never dropped -------------------------------------------------------------


def break_audit_log(db: Path) -> None:
    """Make every insert into the audit log fail, as a full disk or a revoked grant would."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER cf_audit_broken BEFORE INSERT ON cf_audit_log "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated)'); END"
        )


def test_an_audit_write_that_fails_fails_the_request_with_503_and_the_change_is_not_made(
    app: Any, tmp_path: Path
) -> None:
    admin, op, viewer = Api(app, ADMIN), Api(app, OPERATOR), Api(app, VIEWER)
    break_audit_log(tmp_path / "audit.db")
    r = admin.post("/users", {"name": "mallory", "password": "mallory-password", "role": "admin"})
    assert r.status_code == 503 and "audit log is unavailable" in r.json["message"], r.json
    assert "was not made" in r.json["message"] and r.headers["Retry-After"]
    assert (
        app.test_client()
        .post("/api/v1/auth/login", json={"username": "mallory", "password": "mallory-password"})
        .status_code
        == 401
    )
    r = admin.put(f"/users/{OPERATOR[0]}/permissions/submit_inline", None)
    assert r.status_code == 503
    assert [u["permissions"] for u in admin.get("/users").json if u["name"] == OPERATOR[0]] == [[]]
    # the operator's inline submission is refused, and as the refusal cannot be recorded: 503
    r = op.post("/runs", {"definition": INLINE})
    assert r.status_code == 503 and "refusal was not recorded" in r.json["message"]
    assert (
        admin.http.delete(
            f"/api/v1/users/{VIEWER[0]}", headers={"X-CSRF-Token": admin.csrf}
        ).status_code
        == 503
    )
    assert viewer.get("/auth/me").status_code == 200  # not deleted
    assert op.post("/auth/tokens", {"name": "x"}).status_code == 503
    assert [t for t in admin.get("/auth/tokens").json if t["username"] == OPERATOR[0]] == []
    # a refusal that cannot be recorded is a 503 as well, not a silent 403
    r = viewer.post("/runs/ffffffffffffffff/cancel")
    assert r.status_code == 503 and "refusal was not recorded" in r.json["message"]
    # a task is recorded before it is sent: not recorded, not sent (to a queue no worker empties)
    r = op.post(
        "/inspect/tasks/send",
        {"name": "tests.inspect_tasks.add", "args": [1, 2], "queue": "sec-nobody"},
    )
    assert r.status_code == 503 and "was not sent" in r.json["message"]
    assert _queued(app, "sec-nobody") == 0
    # registering a workflow happens in Redis first: the 503 says it happened but is not in the log
    r = admin.put(
        "/workflows/sec_unaudited",
        {"definition": {"steps": [{"id": "a", "plugin": "builtin", "method": "echo"}]}},
    )
    assert (
        r.status_code == 503
        and "was registered, but the audit log is unavailable" in r.json["message"]
    )


def _queued(app: Any, queue: str) -> int:
    from orchestrator.fleet.inspect import queue_lengths

    ext = app.extensions["canvasflow"]
    return int(queue_lengths(ext.client.redis, ext.settings.key_prefix, [queue])[queue]["total"])


def test_every_new_route_and_response_is_in_the_openapi_document(app: Any) -> None:
    spec = app.test_client().get("/api/v1/openapi.json").json
    paths = spec["paths"]
    assert {"put", "delete"} <= set(paths["/api/v1/users/{name}/permissions/{permission}"])
    assert (
        "get" in paths["/api/v1/auth/lockouts"] and "post" in paths["/api/v1/auth/lockouts/unlock"]
    )
    assert "429" in paths["/api/v1/auth/login"]["post"]["responses"]
    assert "403" in paths["/api/v1/auth/logout"]["post"]["responses"]
    for route in ("send", "apply"):
        assert {"403", "503"} <= set(paths[f"/api/v1/inspect/tasks/{route}"]["post"]["responses"])
    assert "403" in paths["/api/v1/runs"]["post"]["responses"]
    assert "disabled" in spec["components"]["schemas"]["UserPatch"]["properties"]


# -- the dashboard ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_an_admin_grants_inline_submission_lifts_a_lockout_and_logs_out_with_the_pages_buttons(
    chromium: Any, live_server: Any, shots: Any
) -> None:
    import requests

    from tests.web_fixtures import browser_login

    url = live_server.url
    admin_token = {"Authorization": f"Bearer {live_server.token(ADMIN)}"}
    requests.post(
        f"{url}/api/v1/users",
        json={"name": "ines", "password": "ines-password", "role": "operator"},
        headers=admin_token,
        timeout=10,
    ).raise_for_status()
    ines = {"Authorization": f"Bearer {live_server.token(('ines', 'ines-password'))}"}

    def submit_inline() -> int:
        return requests.post(
            f"{url}/api/v1/runs", json={"definition": INLINE}, headers=ines, timeout=10
        ).status_code

    assert submit_inline() == 403
    for _ in range(5):  # lock "ines" out (5 failures per account)
        requests.post(
            f"{url}/api/v1/auth/login",
            json={"username": "ines", "password": "wrong-password"},
            timeout=10,
        )
    page = browser_login(chromium, live_server, ADMIN, "/admin/users")
    page.on("dialog", lambda d: d.accept())
    page.wait_for_selector("body[data-loaded]")
    page.wait_for_selector("#lockouts-table tr[data-lockout='ines']")
    assert "registered workflows only" in page.inner_text("tr[data-user='ines'] td.perms")
    assert "all" in page.inner_text("tr[data-user='admin'] td.perms")
    page.click("tr[data-user='ines'] button.toggle-inline")
    page.wait_for_selector("tr[data-user='ines'] button.toggle-inline[data-granted='1']")
    assert submit_inline() == 201
    shots(page, "users-permissions-and-lockouts")
    page.click("#lockouts-table button.unlock[data-subject='ines']")
    page.wait_for_selector("#lockouts-table tr[data-lockout='ines']", state="detached")
    assert (
        requests.post(
            f"{url}/api/v1/auth/login",
            json={"username": "ines", "password": "ines-password"},
            timeout=10,
        ).status_code
        == 200
    )
    page.click("tr[data-user='ines'] button.toggle-inline")
    page.wait_for_selector("tr[data-user='ines'] button.toggle-inline:not([data-granted='1'])")
    assert submit_inline() == 403
    page.click("tr[data-user='ines'] button.toggle-disabled")
    page.wait_for_selector("tr[data-user='ines'] button.toggle-disabled[data-disabled='1']")
    assert requests.get(f"{url}/api/v1/auth/me", headers=ines, timeout=10).status_code == 401
    audit = page.inner_text("#audit-list")
    for action in (
        "permission_grant",
        "login_unlock",
        "permission_revoke",
        "user_disable",
        "login_lockout",
    ):
        assert action in audit, audit
    assert not page.errors
    # the Log out button posts the session's token
    page.click("#logout")
    page.wait_for_url("**/login")
    assert page.evaluate("fetch('/api/v1/auth/me').then(r => r.status)") == 401
    # leave the shared server's address count as it was for the other tests
    requests.post(
        f"{url}/api/v1/auth/lockouts/unlock",
        json={"address": "127.0.0.1"},
        headers=admin_token,
        timeout=10,
    )


def test_a_store_whose_users_tables_an_older_dashboard_made_keeps_its_users_and_tokens(
    tmp_path: Path,
) -> None:
    from werkzeug.security import generate_password_hash

    from orchestrator.audit.store import HEAD, AuditStore
    from web.auth import Users

    db = tmp_path / "old.db"
    store = AuditStore(f"sqlite:///{db}")
    store.upgrade("0003")
    with sqlite3.connect(db) as conn:  # what web/auth.py's create_all made before revision 0004
        conn.executescript("""
            CREATE TABLE cf_web_users (username VARCHAR(200) NOT NULL PRIMARY KEY, password_hash VARCHAR(300) NOT NULL,
                role VARCHAR(16) NOT NULL, disabled BOOLEAN NOT NULL, created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL);
            CREATE TABLE cf_web_tokens (id VARCHAR(16) NOT NULL PRIMARY KEY, username VARCHAR(200) NOT NULL,
                name VARCHAR(200) NOT NULL, digest VARCHAR(64) NOT NULL UNIQUE, created_at FLOAT NOT NULL,
                last_used_at FLOAT);
            CREATE INDEX ix_cf_web_tokens_username ON cf_web_tokens (username);""")
    old = Users(store, audited=False)
    with store.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO cf_web_users VALUES ('olde', ?, 'operator', 0, 1, 1)",
            (generate_password_hash("olde-password"),),
        )
        conn.exec_driver_sql(
            "INSERT INTO cf_web_tokens VALUES ('t1', 'olde', 'ci', ?, 1, NULL)",
            (hashlib.sha256(b"cft_old-token").hexdigest(),),
        )
    assert store.upgrade() == HEAD
    user = old.verify("olde", "olde-password")
    assert user is not None and user.role == "operator" and user.permissions == frozenset()
    assert old.user_for_token("cft_old-token") == user
    old.put("olde", password="new-password")
    assert old.user_for_token("cft_old-token") is None  # the password change ends it
    store.dispose()
