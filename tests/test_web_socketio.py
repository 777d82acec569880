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
