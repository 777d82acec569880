"""Socket.IO against a live `python -m web` server and a real worker: authentication, live
events with sequence numbers, and the reconnect protocol that misses nothing."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests
import socketio

from tests.web_helpers import ADMIN, OPERATOR, wait_for

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

STEPPED = {
    "mode": "sequential",
    "steps": [{"id": f"s{i}", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.25}} for i in range(6)],
}


class Listener:
    """A python-socketio client that records every event it gets."""

    def __init__(self, url: str, token: str | None) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.events: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

        @self.sio.on("*")
        def any_event(name: str, data: Any) -> None:
            with self.lock:
                if name == "events":  # the "all" room's batches
                    self.events.extend(("events", e) for e in data)
                else:
                    self.events.append((name, data))

        self.sio.connect(url, auth={"token": token} if token else None, transports=["websocket"], wait_timeout=10)

    def of(self, run_id: str) -> list[dict]:
        with self.lock:
            return [d for n, d in self.events if isinstance(d, dict) and d.get("run") == run_id]

    def close(self) -> None:
        self.sio.disconnect()


@pytest.fixture(scope="module")
def token(live_server):
    return live_server.token(OPERATOR)


@pytest.fixture(scope="module")
def http(live_server, token):
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    admin_token = live_server.token(ADMIN)
    r = requests.put(f"{live_server.url}/api/v1/workflows/web_stepped", json={"definition": STEPPED},
                     headers={"Authorization": f"Bearer {admin_token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return s


def submit(live_server, http) -> str:
    r = http.post(f"{live_server.url}/api/v1/runs", json={"workflow": "web_stepped"}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_a_connection_without_credentials_is_refused(live_server):
    with pytest.raises(socketio.exceptions.ConnectionError):
        Listener(live_server.url, None)
    with pytest.raises(socketio.exceptions.ConnectionError):
        Listener(live_server.url, "cft_forged")


def test_a_revoked_token_can_no_longer_connect(live_server):
    s = requests.Session()
    r = s.post(f"{live_server.url}/api/v1/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]}, timeout=10)
    s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    made = s.post(f"{live_server.url}/api/v1/auth/tokens", json={"name": "short-lived"}, timeout=10).json()
    Listener(live_server.url, made["token"]).close()
    assert s.delete(f"{live_server.url}/api/v1/auth/tokens/{made['id']}", timeout=10).status_code == 204
    with pytest.raises(socketio.exceptions.ConnectionError):
        Listener(live_server.url, made["token"])


def test_run_events_arrive_live_in_sequence_and_a_reconnecting_client_misses_nothing(live_server, http, token):
    first = Listener(live_server.url, token)
    try:
        hello = wait_for(lambda: [d for n, d in first.events if n == "hello"], 5, "hello")[0]
        assert hello["user"]["name"] == OPERATOR[0]
        run_id = submit(live_server, http)
        ack = first.sio.call("subscribe", {"runs": [run_id], "after": {run_id: 0}}, timeout=10)
        assert ack["subscribed"] == [run_id]
        applied = {e["seq"]: e for e in ack["events"]}
        # Leave after the second step completed: the rest of the run happens while we are away.
        wait_for(lambda: any(e["type"] == "step_completed" and e["step"] == "s1" for e in first.of(run_id)),
                 20, "step s1 to complete")
        live = first.of(run_id)
        assert all("seq" in e and e["run_state"]["total"] == 6 for e in live)
        for e in live:
            applied[e["seq"]] = e
    finally:
        first.close()
    last = max(applied)
    assert sorted(applied) == list(range(1, last + 1)), "events before the disconnect have gaps"
    wait_for(lambda: requests.get(f"{live_server.url}/api/v1/runs/{run_id}", headers=http.headers,
                                  timeout=5).json()["status"] == "COMPLETED", 30, "the run to complete")
    second = Listener(live_server.url, token)
    try:
        ack = second.sio.call("subscribe", {"runs": [run_id], "after": {run_id: last}}, timeout=10)
    finally:
        second.close()
    missed = ack["events"]
    assert missed and missed[0]["seq"] == last + 1
    for e in missed:
        applied[e["seq"]] = e
    assert sorted(applied) == list(range(1, ack["latest"][run_id] + 1))
    types = [applied[s]["type"] for s in sorted(applied)]
    assert types[0] == "run_created" and types.count("step_completed") == 6
    assert applied[max(applied)]["type"] == "run_status_changed" and applied[max(applied)]["status"] == "COMPLETED"


def test_the_all_room_gets_every_run_status_but_not_the_chatty_events(live_server, http, token):
    everything = Listener(live_server.url, token)
    one = Listener(live_server.url, token)
    try:
        assert everything.sio.call("subscribe", {"all": True}, timeout=10)["all"] is True
        run_id = submit(live_server, http)
        one.sio.call("subscribe", {"runs": [run_id]}, timeout=10)
        wait_for(lambda: any(e["type"] == "run_status_changed" and e["status"] == "COMPLETED"
                             for e in everything.of(run_id)), 30, "the completion in the all room")
        wait_for(lambda: any(e["type"] == "run_status_changed" and e["status"] == "COMPLETED"
                             for e in one.of(run_id)), 10, "the completion in the run room")
        assert {n for n, e in everything.events if isinstance(e, dict) and e.get("run") == run_id} == {"events"}
        all_types = {e["type"] for e in everything.of(run_id)}
        assert {"run_created", "step_started", "step_completed", "run_status_changed"} <= all_types
        assert not all_types & {"log", "progress", "stats"}
        assert "stats" in {e["type"] for e in one.of(run_id)}
        seqs = [e["seq"] for e in everything.of(run_id)]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
        assert one.sio.call("unsubscribe", {"runs": [run_id]}, timeout=10)["subscribed"] == []
    finally:
        everything.close()
        one.close()


def test_log_batches_arrive_as_one_event_each_with_every_line_and_the_catch_up_matches(live_server, http, token):
    from orchestrator import Client

    admin_token = live_server.token(ADMIN)
    body = {"mode": "sequential", "steps": [
        {"id": "chat", "plugin": "builtin", "method": "call",
         "params": {"function": "tests.web_helpers:log_slowly", "kwargs": {"lines": 12, "every": 0.1}}}]}
    r = requests.put(f"{live_server.url}/api/v1/workflows/web_logs", json={"definition": body},
                     headers={"Authorization": f"Bearer {admin_token}"}, timeout=10)
    assert r.status_code == 200, r.text
    listener = Listener(live_server.url, token)
    client = Client(live_server.settings)
    try:
        run_id = http.post(f"{live_server.url}/api/v1/runs", json={"workflow": "web_logs"}, timeout=10).json()["id"]
        listener.sio.call("subscribe", {"runs": [run_id], "after": {run_id: 0}}, timeout=10)
        wait_for(lambda: any(e["type"] == "run_status_changed" and e["status"] == "COMPLETED"
                             for e in listener.of(run_id)), 30, "the run to complete")
        # While the producers change shape, older events still arrive: one line, and columns.
        client.state.emit(run_id, [["log", "chat", "", "1795000000.5", {"message": "old style", "level": "WARNING"}],
                                   ["log", "chat", "", "1795000001.0",
                                    {"n": 2, "ts": [1795000001000000, 1795000002000000],
                                     "message": ["col a", "col b"], "level": "INFO"}]])
        wait_for(lambda: sum(1 for n, e in listener.events if n == "log" and e["run"] == run_id
                             and "col b" in str(e["data"])), 10, "the old-shape events")
        with listener.lock:
            logs = [e for n, e in listener.events if n == "log" and e["run"] == run_id]
    finally:
        listener.close()
        client.close()
    assert all(set(e["data"]) == {"lines"} and all(len(line) == 7 for line in e["data"]["lines"]) for e in logs)
    live_lines = [line for e in logs for line in e["data"]["lines"]]
    produced = [line[2] for line in live_lines[:-3]]
    assert produced == [f"line {i} of 12" for i in range(12)]
    assert len(logs) - 2 >= 2, "12 lines over 1.2 s should come as several flushed batches"
    assert live_lines[3][1] == "WARNING" and live_lines[0][3] == "row" and live_lines[0][5] == "0"
    assert [line[:3] for line in live_lines[-3:]] == [[1795000000.5, "WARNING", "old style"],
                                                      [1795000001.0, "INFO", "col a"],
                                                      [1795000002.0, "INFO", "col b"]]
    # The catch-up a reconnecting client asks for has the very same events and lines.
    caught = requests.get(f"{live_server.url}/api/v1/runs/{run_id}/events", params={"after": 0},
                          headers=http.headers, timeout=10).json()["events"]
    caught_logs = [e for e in caught if e["type"] == "log"]
    assert [(e["seq"], e["data"]) for e in caught_logs] == [(e["seq"], e["data"]) for e in logs]
    second = Listener(live_server.url, token)
    try:
        ack = second.sio.call("subscribe", {"runs": [run_id], "after": {run_id: 0}}, timeout=10)
    finally:
        second.close()
    assert [(e["seq"], e["data"]) for e in ack["events"] if e["type"] == "log"] == [(e["seq"], e["data"]) for e in logs]
