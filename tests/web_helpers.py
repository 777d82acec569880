"""Helpers of the dashboard tests (fixtures are in tests/web_fixtures.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

ADMIN = ("admin", "admin-password")
OPERATOR = ("olga", "operator-password")
VIEWER = ("victor", "viewer-password")


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "condition",
    every: float = 0.05,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    """A Flask test client logged in as one user (session cookie + CSRF header)."""

    def __init__(self, app: Any, user: tuple[str, str] | None) -> None:
        self.http = app.test_client()
        self.csrf = ""
        if user is not None:
            r = self.http.post(
                "/api/v1/auth/login", json={"username": user[0], "password": user[1]}
            )
            assert r.status_code == 200, r.json
            self.csrf = r.json["csrf_token"]

    def get(self, path: str, **kw: Any) -> Any:
        return self.http.get(f"/api/v1{path}", **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.http.post(
            f"/api/v1{path}",
            json=body if body is not None else {},
            headers={"X-CSRF-Token": self.csrf, **kw.pop("headers", {})},
            **kw,
        )

    def put(self, path: str, body: Any) -> Any:
        return self.http.put(f"/api/v1{path}", json=body, headers={"X-CSRF-Token": self.csrf})


def register(client: Any, body: dict[str, Any]) -> str:
    return client.register(body).id


def wait_status(client: Any, run_id: str, statuses: set[str], timeout: float = 30) -> str:
    return wait_for(
        lambda: (s := client.state.status(run_id)) in statuses and s,
        timeout,
        f"run {run_id} to reach {sorted(statuses)}",
    )


def wait_recorded(store: Any, run_id: str, statuses: set[str], timeout: float = 30) -> Any:
    from orchestrator.audit import queries
    from orchestrator.errors import UnknownRun

    def done() -> Any:
        try:
            r = queries.get_run(store, run_id)
        except UnknownRun:
            return None
        return r if r.status in statuses and r.complete else None

    return wait_for(done, timeout, f"run {run_id} recorded as {sorted(statuses)}")


def log_slowly(ctx: Any, lines: int = 12, every: float = 0.1) -> dict[str, int]:
    """A step (run through builtin `call`) that logs `lines` lines over a while, so that the
    heartbeat flushes them as several batches (several `log` events) while it runs."""
    for i in range(lines):
        ctx.log(
            f"line {i} of {lines}",
            level="WARNING" if i == 3 else "INFO",
            entity_tag="row",
            entity_id=str(i),
        )
        time.sleep(every)
    return {"lines": lines}
