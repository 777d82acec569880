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
    "steps": [
        {"id": f"s{i}", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.25}}
        for i in range(6)
    ],
}


class Listener:
    """A python-socketio client that records every message it gets, and every event of the
    ``events`` batches (one message per room and relay window) as (type, event), in order."""

    def __init__(self, url: str, token: str | None, **connect: Any) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.events: list[tuple[str, dict]] = []
        self.messages: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

        @self.sio.on("*")
        def any_event(name: str, data: Any) -> None:
            with self.lock:
                self.messages.append((name, data))
                if name == "events":
                    self.events.extend((e["type"], e) for e in data)
                else:
                    self.events.append((name, data))

        self.sio.connect(
            url,
            auth={"token": token} if token else None,
            transports=["websocket"],
            wait_timeout=10,
            **connect,
        )

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
    r = requests.put(
        f"{live_server.url}/api/v1/workflows/web_stepped",
        json={"definition": STEPPED},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
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
    r = s.post(
        f"{live_server.url}/api/v1/auth/login",
        json={"username": ADMIN[0], "password": ADMIN[1]},
        timeout=10,
    )
    s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    made = s.post(
        f"{live_server.url}/api/v1/auth/tokens", json={"name": "short-lived"}, timeout=10
    ).json()
    Listener(live_server.url, made["token"]).close()
    assert (
        s.delete(f"{live_server.url}/api/v1/auth/tokens/{made['id']}", timeout=10).status_code
        == 204
    )
    with pytest.raises(socketio.exceptions.ConnectionError):
        Listener(live_server.url, made["token"])


def test_run_events_arrive_live_in_sequence_and_a_reconnecting_client_misses_nothing(
    live_server, http, token
):
    first = Listener(live_server.url, token)
    try:
        hello = wait_for(lambda: [d for n, d in first.events if n == "hello"], 5, "hello")[0]
        assert hello["user"]["name"] == OPERATOR[0]
        run_id = submit(live_server, http)
        ack = first.sio.call("subscribe", {"runs": [run_id], "after": {run_id: 0}}, timeout=10)
        assert ack["subscribed"] == [run_id]
        applied = {e["seq"]: e for e in ack["events"]}
        # Leave after the second step completed: the rest of the run happens while we are away.
        wait_for(
            lambda: any(
                e["type"] == "step_completed" and e["step"] == "s1" for e in first.of(run_id)
            ),
            20,
            "step s1 to complete",
        )
        live = first.of(run_id)
        assert all("seq" in e and e["run_state"]["total"] == 6 for e in live)
        for e in live:
            applied[e["seq"]] = e
    finally:
        first.close()
    last = max(applied)
    assert sorted(applied) == list(range(1, last + 1)), "events before the disconnect have gaps"
    wait_for(
        lambda: (
            requests.get(
                f"{live_server.url}/api/v1/runs/{run_id}", headers=http.headers, timeout=5
            ).json()["status"]
            == "COMPLETED"
        ),
        30,
        "the run to complete",
    )
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
    assert (
        applied[max(applied)]["type"] == "run_status_changed"
        and applied[max(applied)]["status"] == "COMPLETED"
    )


def test_the_all_room_gets_every_run_status_but_not_the_chatty_events(live_server, http, token):
    everything = Listener(live_server.url, token)
    one = Listener(live_server.url, token)
    try:
        assert everything.sio.call("subscribe", {"all": True}, timeout=10)["all"] is True
        run_id = submit(live_server, http)
        one.sio.call("subscribe", {"runs": [run_id]}, timeout=10)
        wait_for(
            lambda: any(
                e["type"] == "run_status_changed" and e["status"] == "COMPLETED"
                for e in everything.of(run_id)
            ),
            30,
            "the completion in the all room",
        )
        wait_for(
            lambda: any(
                e["type"] == "run_status_changed" and e["status"] == "COMPLETED"
                for e in one.of(run_id)
            ),
            10,
            "the completion in the run room",
        )
        with everything.lock:
            names = {n for n, _ in everything.messages} - {"hello"}
        assert names == {"events"}, names
        all_types = {e["type"] for e in everything.of(run_id)}
        assert {"run_created", "step_started", "step_completed", "run_status_changed"} <= all_types
        assert not all_types & {"log", "progress", "stats"}
        assert all(
            "duration" in e["data"]["stats"]
            for e in one.of(run_id)
            if e["type"] == "step_completed"
        )
        seqs = [e["seq"] for e in everything.of(run_id)]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
        assert one.sio.call("unsubscribe", {"runs": [run_id]}, timeout=10)["subscribed"] == []
    finally:
        everything.close()
        one.close()


def test_log_batches_arrive_as_one_event_each_with_every_line_and_the_catch_up_matches(
    live_server, http, token
):
    from orchestrator import Client

    admin_token = live_server.token(ADMIN)
    body = {
        "mode": "sequential",
        "steps": [
            {
                "id": "chat",
                "plugin": "builtin",
                "method": "call",
                "params": {
                    "function": "tests.web_helpers:log_slowly",
                    "kwargs": {"lines": 12, "every": 0.1},
                },
            }
        ],
    }
    r = requests.put(
        f"{live_server.url}/api/v1/workflows/web_logs",
        json={"definition": body},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    listener = Listener(live_server.url, token)
    client = Client(live_server.settings)
    try:
        run_id = http.post(
            f"{live_server.url}/api/v1/runs", json={"workflow": "web_logs"}, timeout=10
        ).json()["id"]
        listener.sio.call("subscribe", {"runs": [run_id], "after": {run_id: 0}}, timeout=10)
        wait_for(
            lambda: any(
                e["type"] == "run_status_changed" and e["status"] == "COMPLETED"
                for e in listener.of(run_id)
            ),
            30,
            "the run to complete",
        )
        # While the producers change shape, older events still arrive: one line, and columns.
        client.state.emit(
            run_id,
            [
                ["log", "chat", "", "1795000000.5", {"message": "old style", "level": "WARNING"}],
                [
                    "log",
                    "chat",
                    "",
                    "1795000001.0",
                    {
                        "n": 2,
                        "ts": [1795000001000000, 1795000002000000],
                        "message": ["col a", "col b"],
                        "level": "INFO",
                    },
                ],
            ],
        )
        wait_for(
            lambda: sum(
                1
                for n, e in listener.events
                if n == "log" and e["run"] == run_id and "col b" in str(e["data"])
            ),
            10,
            "the old-shape events",
        )
        with listener.lock:
            logs = [e for n, e in listener.events if n == "log" and e["run"] == run_id]
    finally:
        listener.close()
        client.close()
    assert all(
        set(e["data"]) == {"lines"} and all(len(line) == 7 for line in e["data"]["lines"])
        for e in logs
    )
    live_lines = [line for e in logs for line in e["data"]["lines"]]
    produced = [line[2] for line in live_lines[:-3]]
    assert produced == [f"line {i} of 12" for i in range(12)]
    assert len(logs) - 2 >= 2, "12 lines over 1.2 s should come as several flushed batches"
    assert live_lines[3][1] == "WARNING" and live_lines[0][3] == "row" and live_lines[0][5] == "0"
    assert [line[:3] for line in live_lines[-3:]] == [
        [1795000000.5, "WARNING", "old style"],
        [1795000001.0, "INFO", "col a"],
        [1795000002.0, "INFO", "col b"],
    ]
    # The catch-up a reconnecting client asks for has the very same events and lines.
    caught = requests.get(
        f"{live_server.url}/api/v1/runs/{run_id}/events",
        params={"after": 0},
        headers=http.headers,
        timeout=10,
    ).json()["events"]
    caught_logs = [e for e in caught if e["type"] == "log"]
    assert [(e["seq"], e["data"]) for e in caught_logs] == [(e["seq"], e["data"]) for e in logs]
    second = Listener(live_server.url, token)
    try:
        ack = second.sio.call("subscribe", {"runs": [run_id], "after": {run_id: 0}}, timeout=10)
    finally:
        second.close()
    assert [(e["seq"], e["data"]) for e in ack["events"] if e["type"] == "log"] == [
        (e["seq"], e["data"]) for e in logs
    ]


def completed_run(live_server, http) -> tuple[str, int]:
    """A finished web_stepped run and its last seq: events emitted on it afterwards are the only ones."""
    run_id = submit(live_server, http)
    wait_for(
        lambda: (
            requests.get(
                f"{live_server.url}/api/v1/runs/{run_id}", headers=http.headers, timeout=5
            ).json()["status"]
            == "COMPLETED"
        ),
        30,
        "the run to complete",
    )
    latest = requests.get(
        f"{live_server.url}/api/v1/runs/{run_id}/events",
        params={"after": 0},
        headers=http.headers,
        timeout=10,
    ).json()["latest_seq"]
    return run_id, latest


def append_together(settings, run_id: str, types: list[str]) -> None:
    """Events appended to the stream in one Lua call: the relay reads them in one go."""
    from orchestrator import Client

    client = Client(settings)
    try:
        client.state.emit(
            run_id,
            [
                [
                    t,
                    "s0" if t != "operator_action" else "",
                    "",
                    f"{1795000000 + i}",
                    {"fraction": i / 10}
                    if t == "progress"
                    else {"actor": "tester", "action": "note", "detail": {"i": i}},
                ]
                for i, t in enumerate(types)
            ],
        )
    finally:
        client.close()


def test_events_that_arrive_together_come_as_one_batch_per_room_in_seq_order(
    live_server, http, token
):
    run_id, latest = completed_run(live_server, http)
    watcher = Listener(live_server.url, token)
    everything = Listener(live_server.url, token)
    try:
        ack = watcher.sio.call(
            "subscribe", {"runs": [run_id], "after": {run_id: latest}}, timeout=10
        )
        assert ack["events"] == [] and ack["latest"][run_id] == latest
        everything.sio.call("subscribe", {"all": True}, timeout=10)
        types = ["progress", "operator_action", "stats", "progress", "operator_action", "stats"]
        append_together(live_server.settings, run_id, types)
        wait_for(lambda: len(watcher.of(run_id)) == len(types), 10, "the run room's events")
        wait_for(lambda: len(everything.of(run_id)) == 2, 10, "the all room's events")
        with watcher.lock, everything.lock:
            run_batches = [d for n, d in watcher.messages if n == "events"]
            all_batches = [
                d for n, d in everything.messages if n == "events" and d[0]["run"] == run_id
            ]
    finally:
        watcher.close()
        everything.close()
    assert len(run_batches) == 1, run_batches
    (batch,) = run_batches
    assert [e["seq"] for e in batch] == list(range(latest + 1, latest + 1 + len(types)))
    assert [e["type"] for e in batch] == types
    assert all(e["run"] == run_id and e["run_state"]["status"] == "COMPLETED" for e in batch)
    # The "all" room: the same batch without the chatty events, as one message too.
    assert len(all_batches) == 1
    assert [(e["seq"], e["type"]) for e in all_batches[0]] == [
        (e["seq"], e["type"]) for e in batch if e["type"] == "operator_action"
    ]


def test_a_client_that_lost_a_batch_gets_it_back_in_order_from_the_replay(live_server, http, token):
    run_id, latest = completed_run(live_server, http)
    listener = Listener(live_server.url, token)
    try:
        listener.sio.call("subscribe", {"runs": [run_id], "after": {run_id: latest}}, timeout=10)
        append_together(live_server.settings, run_id, ["progress", "stats", "progress"])
        wait_for(lambda: len(listener.of(run_id)) == 3, 10, "the first batch")
        append_together(live_server.settings, run_id, ["stats", "progress"])
        wait_for(lambda: len(listener.of(run_id)) == 5, 10, "the second batch")
        with listener.lock:
            batches = [d for n, d in listener.messages if n == "events"]
        assert [[e["seq"] for e in b] for b in batches] == [
            [latest + 1, latest + 2, latest + 3],
            [latest + 4, latest + 5],
        ]
        # Say the first batch was lost: its events are after the last seq applied before it, and
        # the second batch starts with a gap. The client asks for what is missing.
        ack = listener.sio.call(
            "subscribe", {"runs": [run_id], "after": {run_id: latest}}, timeout=10
        )
    finally:
        listener.close()
    replay = ack["events"]
    assert [e["seq"] for e in replay] == [
        latest + 1,
        latest + 2,
        latest + 3,
        latest + 4,
        latest + 5,
    ]
    assert [(e["seq"], e["type"], e["data"]) for e in replay] == [
        (e["seq"], e["type"], e["data"]) for b in batches for e in b
    ]
    assert ack["latest"][run_id] == latest + 5


@pytest.mark.parametrize("server", ["gevent", "threading"])
def test_either_server_relays_the_same_batches_and_stops_cleanly_on_sigterm(
    web_fleet, live_server, http, server
):
    from tests.web_fixtures import start_live_server, stop_live_server

    assert (
        requests.get(f"{live_server.url}/api/v1/health", timeout=10).json()["server"] == "gevent"
    )  # the default
    other = start_live_server(web_fleet, "--server", server)
    try:
        assert requests.get(f"{other.url}/api/v1/health", timeout=10).json()["server"] == server
        run_id, latest = completed_run(other, http)
        listener = Listener(other.url, other.token(OPERATOR))
        try:
            listener.sio.call(
                "subscribe", {"runs": [run_id], "after": {run_id: latest}}, timeout=10
            )
            append_together(other.settings, run_id, ["progress", "stats"])
            wait_for(
                lambda: len(listener.of(run_id)) == 2, 10, f"the batch from the {server} server"
            )
            with listener.lock:
                batches = [d for n, d in listener.messages if n == "events"]
        finally:
            listener.close()
        assert [[(e["seq"], e["type"]) for e in b] for b in batches] == [
            [(latest + 1, "progress"), (latest + 2, "stats")]
        ]
        assert (
            requests.get(f"{other.url}/api/v1/health", timeout=10).json()["relay"]["messages"] >= 1
        )
    finally:
        stop_live_server(other)
    assert other.proc.returncode == 0, other.log()[-3000:]
    assert f"({server}, with recorder" in other.log() and "Traceback" not in other.log(), (
        other.log()[-3000:]
    )
