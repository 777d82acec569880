"""Notification endpoints, deliveries and dead letters in the audit store (SQLite and
PostgreSQL), their validation errors, and the ``canvasflow notify`` commands."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.audit import AuditStore
from orchestrator.audit.events import Event
from orchestrator.audit.notifications import (
    EndpointError,
    Notifications,
    NotReplayable,
    UnknownEndpoint,
    check_endpoint,
    delivery_id,
)
from orchestrator.cli.main import main
from orchestrator.engine import notify
from orchestrator.settings import Settings
from tests.notify_helpers import Receiver

pytest_plugins = ("tests.audit_fixtures",)


def problems(**kw: Any) -> list[str]:
    kw.setdefault("url", "http://example.com/hook")
    url = kw.pop("url")
    with pytest.raises(EndpointError) as info:
        check_endpoint(url, **kw)
    return info.value.problems


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "file:///etc/passwd", "javascript:alert(1)", "example.com/hook"],
)
def test_a_url_that_is_not_http_or_https_is_refused_with_its_path(url: str) -> None:
    (p,) = problems(url=url)
    assert p.startswith("url: ") and "is not an http(s) URL" in p


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"url": ""}, "url: required"),
        ({"url": None}, "url: required"),
        ({"url": "http://"}, "url: 'http://' has no host"),
        ({"url": "http://a b/"}, "url: must not contain spaces"),
        ({"url": "http://x:99999/"}, "is not a valid URL"),
        ({"url": "http://x/" + "a" * 3000}, "url: longer than 2000"),
        ({"events": ["failed", "exploded"]}, "events[1]: unknown event 'exploded'"),
        ({"events": []}, "events: at least one of"),
        ({"events": 5}, "events: expected a list of names"),
        ({"workflows": ["ok", 3]}, "workflows[1]: expected a non-empty name"),
        ({"tags": [""]}, "tags[0]: expected a non-empty name"),
        ({"format": "xml"}, "format: 'xml' is not one of json, slack"),
        ({"secret": "short"}, "secret: must be a string of 16 to 128"),
        ({"description": 7}, "description: must be a string"),
    ],
)
def test_each_bad_endpoint_setting_gets_an_error_with_its_path(
    kw: dict[str, Any], expected: str
) -> None:
    assert any(expected in p for p in problems(**kw)), problems(**kw)


def test_every_problem_is_reported_at_once() -> None:
    got = problems(url="gopher://x", events=["nope"], format="xml")
    assert [p.split(":")[0] for p in got] == ["url", "events[0]", "format"]


def test_endpoints_are_stored_without_showing_their_secret(store: AuditStore) -> None:
    notes = Notifications(store)
    ep = notes.add_endpoint(
        "https://hooks.example/x", actor="alice", workflows=["etl"], tags="a, b", format="slack"
    )
    assert len(ep.secret) >= 32 and ep.events == ("failed", "compensation_failed", "sla_breached")
    (listed,) = notes.endpoints()
    assert listed.as_dict()["tags"] == ["a", "b"] and "secret" not in listed.as_dict()
    assert listed.matches("failed", "etl", ["b"])
    assert not listed.matches("failed", "etl", ["c"])
    assert not listed.matches("failed", "other", ["a"])
    assert not listed.matches("completed", "etl", ["a"])
    other = notes.add_endpoint("http://x/y", secret="s" * 20, events=["completed"])
    assert other.secret == "s" * 20 and other.matches("completed", "any", [])
    assert not notes.set_enabled(other.id, False, actor="alice").matches("completed", "any", [])
    assert notes.set_enabled(other.id, True).matches("completed", "any", [])
    notes.set_enabled(ep.id, False)
    notes.set_enabled(other.id, False)
    assert not notes.any_enabled()
    notes.set_enabled(ep.id, True)
    assert notes.any_enabled()
    notes.remove_endpoint(other.id, actor="alice")
    assert [e.id for e in notes.endpoints()] == [ep.id]
    with pytest.raises(UnknownEndpoint):
        notes.remove_endpoint(other.id)


def _delivery(notes: Notifications, ep: Any, limit: int = 2) -> str:
    did, send = notes.create_delivery(
        ep, run_id="r1", event="failed", seq=7, workflow="wf", payload="{}", attempt_limit=limit
    )
    assert send
    return did


def test_a_delivery_is_created_once_per_endpoint_run_event_and_seq(store: AuditStore) -> None:
    notes = Notifications(store)
    ep = notes.add_endpoint("http://x/y", events=["failed"])
    did = _delivery(notes, ep)
    assert did == delivery_id(ep.id, "r1", "failed", 7)
    # Created again before any attempt (a dispatcher that died before enqueueing): send it.
    again = notes.create_delivery(
        ep, run_id="r1", event="failed", seq=7, workflow="wf", payload="{}", attempt_limit=2
    )
    assert again == (did, True)
    assert notes.claim(did, lease=30) is not None
    notes.finish_attempt(did, ok=True, status_code=200, error=None, duration=0.1, retry_in=1)
    # Once attempted: never again.
    assert notes.create_delivery(
        ep, run_id="r1", event="failed", seq=7, workflow="wf", payload="{}", attempt_limit=2
    ) == (did, False)
    assert len(notes.deliveries()) == 1


def test_only_one_sender_claims_a_delivery_and_a_lapsed_lease_is_taken_over(
    store: AuditStore,
) -> None:
    notes = Notifications(store)
    ep = notes.add_endpoint("http://x/y", events=["failed"])
    did = _delivery(notes, ep)
    assert notes.claim(did, lease=30) is not None
    assert notes.claim(did, lease=30) is None
    did2, _ = notes.create_delivery(
        ep, run_id="r2", event="failed", seq=1, workflow="wf", payload="{}", attempt_limit=2
    )
    assert notes.claim(did2, lease=-1) is not None  # its sender died: the lease has lapsed
    assert notes.claim(did2, lease=30) is not None


def test_failed_attempts_go_to_the_dead_letters_and_a_replay_gives_a_new_round(
    store: AuditStore,
) -> None:
    notes = Notifications(store)
    ep = notes.add_endpoint("http://x/y", events=["failed"])
    did = _delivery(notes, ep, limit=2)
    for expected in ("pending", "dead"):
        assert notes.claim(did, lease=30) is not None
        row = notes.finish_attempt(
            did, ok=False, status_code=500, error="HTTP 500", duration=0.2, retry_in=1
        )
        assert row["status"] == expected
    assert notes.claim(did, lease=30) is None
    assert [d["id"] for d in notes.deliveries(status="dead")] == [did]
    assert [a["status_code"] for a in notes.attempts(did)] == [500, 500]
    row = notes.replay(did, attempt_limit=3, actor="admin")
    assert row["status"] == "pending" and row["attempt_limit"] == 5 and row["replays"] == 1
    with pytest.raises(NotReplayable):
        notes.replay(did, attempt_limit=3)


def test_only_run_ends_and_sla_events_notify() -> None:
    def ev(seq: int, type_: str, status: str = "", data: str = "{}") -> Event:
        return Event(run="r", seq=seq, type=type_, status=status, ts=1e9, data_json=data)

    items = notify.notifying(
        [
            ev(1, "run_status_changed", "RUNNING"),
            ev(2, "step_completed", "COMPLETED"),
            ev(3, "run_status_changed", "COMPENSATION_FAILED"),
            ev(4, "sla_warning", data='{"elapsed": 9.5, "sla_seconds": 10}'),
            ev(5, "sla_breached", data='{"elapsed": "x"}'),
            ev(6, "run_status_changed", "CANCELLED"),
        ]
    )
    assert [(i["seq"], i["event"]) for i in items] == [
        (3, "compensation_failed"),
        (4, "sla_warning"),
        (5, "sla_breached"),
        (6, "cancelled"),
    ]
    assert items[1]["sla"] == {"elapsed": 9.5, "sla_seconds": 10} and items[2]["sla"] == {}


def test_the_hook_queues_nothing_without_endpoints_and_one_message_per_batch_with() -> None:
    sent: list[tuple[str, Any, str]] = []
    have = {"any": False}
    hook = notify.NotifyHook(
        lambda name, args, queue: sent.append((name, args, queue)), lambda: have["any"], ttl=0
    )
    batch = [
        Event(run="a", seq=9, type="run_status_changed", status="FAILED"),
        Event(run="b", seq=4, type="run_status_changed", status="COMPLETED"),
    ]
    hook.before_ack(batch)
    assert sent == []
    have["any"] = True
    hook.before_ack(batch[:0])
    hook.before_ack(batch)
    assert [(n, q, len(a[0])) for n, a, q in sent] == [(notify.DISPATCH_TASK, "notify", 2)]


def test_backoff_doubles_up_to_its_cap() -> None:
    s = Settings(notify_backoff=10, notify_backoff_max=50)
    assert [notify.backoff(s, n) for n in (1, 2, 3, 4)] == [10, 20, 40, 50]


# -- the CLI --------------------------------------------------------------------------------------


def invoke(url: str, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(
        main, ["notify", *args, "--database-url", url], catch_exceptions=False
    )
    assert result.exit_code == code, result.output
    return result.output


def test_the_notify_commands_add_list_test_and_remove_endpoints(
    store: AuditStore, store_url: str
) -> None:
    rcv = Receiver(lambda n: 204 if n == 1 else 500)
    try:
        out = invoke(store_url, "add", rcv.url, "--event", "failed", "--tag", "nightly")
        ep_id = out.split()[2].rstrip(":")
        secret = next(line for line in out.splitlines() if line.startswith("secret: ")).split()[1]
        (listed,) = json.loads(invoke(store_url, "list", "--json"))
        assert listed["id"] == ep_id and listed["tags"] == ["nightly"]
        assert secret not in invoke(store_url, "list")
        assert "HTTP 204" in invoke(store_url, "test", ep_id)
        req = rcv.requests[0]
        assert req.headers["X-Canvasflow-Event"] == "test"
        assert notify.verify(
            secret,
            req.headers["X-Canvasflow-Timestamp"],
            req.body,
            req.headers["X-Canvasflow-Signature"],
        )
        assert "HTTP 500" in invoke(store_url, "test", ep_id, code=1)
        assert "no deliveries" in invoke(store_url, "deliveries", ep_id)
        assert f"disabled endpoint {ep_id}" in invoke(store_url, "disable", ep_id)
        assert "(disabled)" in invoke(store_url, "list")
        assert json.loads(invoke(store_url, "list", "--json"))[0]["enabled"] is False
        assert f"enabled endpoint {ep_id}" in invoke(store_url, "enable", ep_id)
        assert json.loads(invoke(store_url, "list", "--json"))[0]["enabled"] is True
        assert "no dead letters" in invoke(store_url, "dead")
        invoke(store_url, "remove", ep_id)
        assert json.loads(invoke(store_url, "list", "--json")) == []
        assert "no notification endpoint" in invoke(store_url, "remove", ep_id, code=1)
    finally:
        rcv.close()


def test_notify_add_refuses_a_url_that_is_not_http(store: AuditStore, store_url: str) -> None:
    out = invoke(store_url, "add", "ftp://files.example/x", "--secret", "tiny", code=2)
    assert "url: 'ftp://files.example/x' is not an http(s) URL" in out
    assert "secret: must be a string of 16 to 128 characters" in out
    assert json.loads(invoke(store_url, "list", "--json")) == []


def test_the_receiver_in_the_docs_verifies_what_canvasflow_sends() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    section = doc[doc.index("### Verifying a notification") :]
    code = section[section.index("```python\n") + 10 :]
    code = code[: code.index("```")]
    scope: dict[str, Any] = {}
    exec(code, scope)  # noqa: S102 - our own docs
    ep = check_endpoint("http://x/y", secret="s" * 24)
    body = b'{"event":"failed"}'
    sent = notify.headers(ep, "dl-1", "failed", body)
    assert scope["verify"]("s" * 24, sent, body)
    assert not scope["verify"]("t" * 24, sent, body)
    old = {**sent, "X-Canvasflow-Timestamp": str(int(sent["X-Canvasflow-Timestamp"]) - 3600)}
    old["X-Canvasflow-Signature"] = notify.signature("s" * 24, old["X-Canvasflow-Timestamp"], body)
    assert not scope["verify"]("s" * 24, old, body)  # a replayed old request


def test_deliveries_whose_message_was_lost_are_found_once_by_the_sweep(store: AuditStore) -> None:
    import time

    from sqlalchemy import update

    from orchestrator.audit.models import notify_deliveries

    notes = Notifications(store)
    ep = notes.add_endpoint("http://x/y", events=["failed"])
    stale = _delivery(notes, ep)
    fresh, _ = notes.create_delivery(
        ep, run_id="r9", event="failed", seq=1, workflow="wf", payload="{}", attempt_limit=2
    )
    with store.begin() as conn:
        conn.execute(
            update(notify_deliveries)
            .where(notify_deliveries.c.id == stale)
            .values(next_attempt_at=time.time() - 3600)
        )
    assert notes.overdue(late=600) == [stale]
    assert notes.overdue(late=600) == []  # given a fresh due time: swept once
    assert sorted(notes.overdue(late=-10)) == sorted([stale, fresh])  # everything is late now


def test_the_hook_keeps_a_yes_for_a_while_and_never_a_no() -> None:
    asked: list[bool] = []
    have = {"any": False}

    def has() -> bool:
        asked.append(have["any"])
        return have["any"]

    sent: list[Any] = []
    hook = notify.NotifyHook(lambda name, args, queue: sent.append(args), has, ttl=60)
    batch = [Event(run="a", seq=9, type="run_status_changed", status="FAILED")]
    hook.before_ack(batch)
    have["any"] = True
    hook.before_ack(batch)  # the no was not kept: asked again, and sent
    have["any"] = False
    hook.before_ack(batch)  # the yes is kept: sent without asking
    assert asked == [False, True] and len(sent) == 2


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"", "RemoteDisconnected"),
        (b"HELLO THERE\r\n\r\n", "BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc", "IncompleteRead"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", None),
    ],
)
def test_a_receiver_that_answers_garbage_is_a_failed_attempt_not_a_crash(
    answer: bytes, expected: str | None
) -> None:
    # http.client raises IncompleteRead (not an OSError) on a broken chunked body: before, it
    # crashed the task and left the delivery claimed.
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        conn.settimeout(5)
        # The whole request first (its body can come in a second segment): a socket closed with
        # unread bytes sends a reset, and the client then read "Connection reset by peer"
        # instead of this answer (a CI run).
        got = b""
        while not got.endswith(b"\r\n\r\n{}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        conn.sendall(answer)
        conn.shutdown(socket.SHUT_WR)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        code, error = notify.post(
            f"http://127.0.0.1:{srv.getsockname()[1]}/x", b"{}", {}, timeout=5
        )
    finally:
        t.join(5)
        srv.close()
    if expected is None:  # a body cut short: the receiver said 200, and that counts
        assert (code, error) == (200, None)
    else:
        assert code is None and expected in (error or ""), error
