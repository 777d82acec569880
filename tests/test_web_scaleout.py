"""Two `python -m web` processes behind a round-robin TCP load balancer (tests/tcp_proxy.py), as
docs/operations.md "Scaling out" describes: a Socket.IO client on either process gets every
event of every run, whichever process the action went through; a login on one is a session on
the other."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import socketio

from orchestrator.audit import AuditStore
from tests.audit_helpers import assert_store_matches_redis, sql_events
from tests.tcp_proxy import RoundRobinProxy
from tests.test_web_socketio import STEPPED, Listener
from tests.web_fixtures import LiveServer, browser_login, start_live_server, stop_live_server
from tests.web_helpers import ADMIN, OPERATOR, wait_for, wait_recorded

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

A, B = 0, 1
# Long enough (20 x 0.25 s) that an operator action sent once it has started finds it unfinished.
LONG = {**STEPPED, "steps": [{**STEPPED["steps"][0], "id": f"s{i}"} for i in range(20)]}


class Balanced:
    """The two web processes and the balancer in front of them."""

    def __init__(self, servers: list[LiveServer], proxy: RoundRobinProxy) -> None:
        self.servers = servers
        self.proxy = proxy

    def via(self, backend: int, method: str, path: str, **kw: Any) -> requests.Response:
        """One request on a new connection through the balancer, routed to ``backend`` (and a
        check that it went there: a reused keep-alive connection would not be re-balanced)."""
        self.proxy.route(backend)
        before = len(self.proxy.routed)
        kw.setdefault("timeout", 10)
        headers = {**kw.pop("headers", {}), "Connection": "close"}
        r = requests.request(method, f"{self.proxy.url}{path}", headers=headers, **kw)
        assert self.proxy.routed[before] == backend
        return r

    def listener(self, backend: int, token: str | None, **connect: Any) -> Listener:
        self.proxy.route(backend)
        before = len(self.proxy.routed)
        listener = Listener(self.proxy.url, token, **connect)
        assert self.proxy.routed[before:] == [backend], "the WebSocket went to the wrong process"
        return listener


@pytest.fixture(scope="module")
def balanced(web_fleet) -> Iterator[Balanced]:
    servers = [start_live_server(web_fleet), start_live_server(web_fleet)]
    proxy = RoundRobinProxy([("127.0.0.1", int(s.url.rsplit(":", 1)[1])) for s in servers])
    try:
        admin = servers[A].token(ADMIN)
        for name, definition in (("web_stepped", STEPPED), ("web_long", LONG)):
            r = requests.put(
                f"{servers[B].url}/api/v1/workflows/{name}",
                json={"definition": definition},
                headers={"Authorization": f"Bearer {admin}"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
        yield Balanced(servers, proxy)
    finally:
        proxy.close()
        for s in servers:
            stop_live_server(s)


def statuses(listener: Listener, run_id: str) -> list[str]:
    return [e["status"] for e in listener.of(run_id) if e["type"] == "run_status_changed"]


def test_clients_of_both_web_processes_get_every_event_whichever_process_the_action_went_through(
    balanced: Balanced, web_fleet, orchestrator_client
) -> None:
    token = balanced.servers[A].token(OPERATOR)
    auth = {"Authorization": f"Bearer {token}"}
    on_a = balanced.listener(A, token)
    on_b = balanced.listener(B, token)
    try:
        for listener in (on_a, on_b):
            assert listener.sio.call("subscribe", {"all": True}, timeout=10)["all"] is True

        # A run submitted through B, run by the worker: both clients see all of it, live.
        r = balanced.via(B, "POST", "/api/v1/runs", json={"workflow": "web_stepped"}, headers=auth)
        assert r.status_code == 201, r.text
        done = r.json()["id"]
        for listener in (on_a, on_b):
            wait_for(
                lambda listener=listener: "COMPLETED" in statuses(listener, done),
                60,
                "the completion on both web processes",
            )
        seen = [[(e["seq"], e["type"]) for e in x.of(done)] for x in (on_a, on_b)]
        assert seen[0] == seen[1], "the two processes relayed different events"
        seqs = [s for s, _ in seen[0]]
        assert seqs == sorted(set(seqs)), "events out of order or twice"
        types = [t for _, t in seen[0]]
        assert types[0] == "run_created" and types.count("step_completed") == 6

        # A run submitted through A and cancelled through B: both clients see the cancel.
        r = balanced.via(A, "POST", "/api/v1/runs", json={"workflow": "web_long"}, headers=auth)
        assert r.status_code == 201, r.text
        cancelled = r.json()["id"]
        wait_for(
            lambda: any(e["type"] == "step_started" for e in on_b.of(cancelled)),
            60,
            "the run to start",
        )
        r = balanced.via(B, "POST", f"/api/v1/runs/{cancelled}/cancel", headers=auth)
        assert r.status_code in (200, 202), r.text
        for listener in (on_a, on_b):
            wait_for(
                lambda listener=listener: "CANCELLED" in statuses(listener, cancelled),
                60,
                "the cancel on both web processes",
            )
        assert statuses(on_a, cancelled) == statuses(on_b, cancelled)
        assert "CANCELLING" in statuses(on_a, cancelled)
    finally:
        on_a.close()
        on_b.close()

    # Both processes embed a recorder (--recorder, one consumer group) and a Celery event
    # monitor: the audit store holds each event and attempt once, the task table each task once.
    store = AuditStore(web_fleet.settings.database_url)
    try:
        for rid, final in ((done, "COMPLETED"), (cancelled, "CANCELLED")):
            wait_recorded(store, rid, {final}, timeout=60)
        assert_store_matches_redis(
            store, orchestrator_client.redis, orchestrator_client.keys, {done, cancelled}
        )
        for rid in (done, cancelled):
            seqs = [e[1] for e in sql_events(store, {rid})]
            assert seqs == list(range(1, orchestrator_client.state.runs([rid], "seq")[0].seq + 1))
    finally:
        store.dispose()

    def tasks_of(backend: int) -> list[dict[str, Any]]:
        r = balanced.via(
            backend, "GET", f"/api/v1/inspect/tasks?run={done}&limit=100", headers=auth
        )
        assert r.status_code == 200, r.text
        return sorted(r.json()["tasks"], key=lambda t: t["uuid"])

    succeeded = wait_for(
        lambda: (ts := tasks_of(A)) and all(t["state"] == "SUCCESS" for t in ts) and ts,
        60,
        "both monitors to write the run's tasks",
    )
    steps = [t["step_id"] for t in succeeded if t.get("step_id")]
    assert sorted(steps) == [f"s{i}" for i in range(6)], "a task recorded twice or missing"
    assert tasks_of(B) == succeeded


def test_a_login_through_one_web_process_is_a_session_on_the_other(balanced: Balanced) -> None:
    r = balanced.via(
        A,
        "POST",
        "/api/v1/auth/login",
        json={"username": OPERATOR[0], "password": OPERATOR[1]},
    )
    assert r.status_code == 200, r.text
    cookies = r.cookies
    csrf = r.json()["csrf_token"]

    me = balanced.via(B, "GET", "/api/v1/auth/me", cookies=cookies)
    assert me.status_code == 200, me.text
    assert me.json()["name"] == OPERATOR[0]
    # A state-changing request on B with the CSRF token A's session issued.
    r = balanced.via(
        B,
        "POST",
        "/api/v1/runs",
        json={"workflow": "web_stepped"},
        cookies=cookies,
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    # The dashboard's Socket.IO connection authenticates with the same cookie, on either process.
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    for backend in (B, A):
        listener = balanced.listener(backend, None, headers={"Cookie": cookie})
        try:
            hello = wait_for(
                lambda listener=listener: [d for n, d in listener.events if n == "hello"],
                10,
                "hello",
            )[0]
            assert hello["user"]["name"] == OPERATOR[0] and hello["via"] == "session"
            ack = listener.sio.call("subscribe", {"runs": [run_id], "after": {run_id: 0}})
            assert ack["events"][0]["type"] == "run_created"
        finally:
            listener.close()
    # Without the cookie neither process lets the client in.
    for backend in (A, B):
        with pytest.raises(socketio.exceptions.ConnectionError):
            balanced.listener(backend, None)


def test_a_client_on_http_long_polling_needs_a_sticky_balancer(balanced: Balanced) -> None:
    """A long-polling Socket.IO session is several HTTP requests (a poll held open while the
    client posts its packets): every one must reach the process that holds the session. The
    dashboard connects with WebSocket only (one connection), so it needs no stickiness; clients
    that poll do (docs/operations.md, "Several web processes")."""
    token = balanced.servers[A].token(OPERATOR)
    seen: list[Exception] = []

    def polls(url: str) -> bool:
        sio = socketio.Client(reconnection=False)
        try:
            sio.connect(url, auth={"token": token}, transports=["polling"], wait_timeout=10)
            return sio.call("subscribe", {"all": True}, timeout=10).get("all") is True
        except socketio.exceptions.SocketIOError as exc:
            seen.append(exc)
            return False
        finally:
            sio.disconnect()

    assert not polls(balanced.proxy.url), "long-polling worked through a round-robin balancer"
    # The second connection of the session went to the other process, which does not know it.
    assert isinstance(seen[-1], socketio.exceptions.ConnectionError), seen
    assert "Invalid session" in balanced.servers[A].log() + balanced.servers[B].log()
    sticky = RoundRobinProxy(balanced.proxy.backends, sticky=True)
    try:
        assert polls(sticky.url)
    finally:
        sticky.close()


def test_the_dashboard_logged_in_through_the_balancer_shows_a_run_live_on_both_processes(
    chromium: Any, balanced: Balanced, shots: Any
) -> None:
    # Chromium spreads the login page, the login POST and the assets over several connections,
    # so over both processes. The session cookie (host 127.0.0.1, any port) then opens each
    # process's own address too: one run page on A, one on B.
    first = browser_login(chromium, SimpleNamespace(url=balanced.proxy.url), OPERATOR, "/runs")
    assert set(balanced.proxy.routed) == {A, B}, balanced.proxy.routed
    auth = {"Authorization": f"Bearer {balanced.servers[A].token(OPERATOR)}"}
    r = balanced.via(B, "POST", "/api/v1/runs", json={"workflow": "web_long"}, headers=auth)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    r = balanced.via(A, "POST", f"/api/v1/runs/{run_id}/pause", headers=auth)
    assert r.status_code in (200, 202), r.text
    wait_for(
        lambda: (
            balanced.via(A, "GET", f"/api/v1/runs/{run_id}", headers=auth).json()["status"]
            == "PAUSED"
        ),
        60,
        "the run to pause",
    )
    pages = []
    for server in balanced.servers:
        page = first.context.new_page()
        page.goto(f"{server.url}/runs/{run_id}")
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector("#run-status [data-status='PAUSED']")
        page.wait_for_selector("#conn.ok:not([hidden])")
        pages.append((page, page.evaluate("window.__cfLive.batches")))

    # Resumed through B: the run's remaining steps run; both pages follow it live.
    r = balanced.via(B, "POST", f"/api/v1/runs/{run_id}/resume", headers=auth)
    assert r.status_code in (200, 202), r.text
    for i, (page, before) in enumerate(pages):
        page.wait_for_selector("#run-status [data-status='COMPLETED']", timeout=60_000)
        assert page.evaluate("window.__cfLive.batches") > before, "no live events on the page"
        shots(page, f"run-completed-on-web-{'AB'[i]}")
    assert not first.errors
