"""Outgoing notifications end to end: real Redis, a real recorder with its hook, real worker
processes consuming the ``notify`` queue, a real HTTP receiver, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator import Client, Workflow
from orchestrator.audit import AuditStore
from orchestrator.audit.notifications import Notifications
from orchestrator.audit.recorder import Recorder
from orchestrator.engine import notify
from orchestrator.settings import Settings
from tests.audit_helpers import wait_for
from tests.conftest import TEST_CALL_ALLOW, make_settings
from tests.notify_helpers import Receiver

pytest_plugins = ("tests.audit_fixtures",)
pytestmark = pytest.mark.integration


@dataclass
class Fleet:
    settings: Settings
    client: Client
    store: AuditStore
    notes: Notifications
    hook: notify.NotifyHook
    recorder: Recorder
    worker: Any

    def deliveries(self, **kw: Any) -> list[dict[str, Any]]:
        return self.notes.deliveries(**kw)


def ok_wf(wid: str = "nt_ok", tags: tuple[str, ...] = ()) -> Workflow:
    return Workflow(wid, tags=list(tags)).step("a", "builtin", "echo", params={"x": 1})


def failing_wf(wid: str = "nt_fail") -> Workflow:
    return (
        Workflow(wid)
        .step("a", "builtin", "echo")
        .step("bad", "builtin", "fail", depends_on=["a"], params={"message": "disk on fire"})
    )


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def receiver(made: list[Receiver], plan: Any = lambda n: 200) -> Receiver:
    r = Receiver(plan)
    made.append(r)
    return r


@pytest.fixture
def make_fleet(
    store: AuditStore, store_url: str, redis_url: str, start_worker: Any
) -> Iterator[Any]:
    """A worker on default,io,notify, a client, and a recorder thread with the notify hook."""
    stops: list[tuple[threading.Event, threading.Thread]] = []
    clients: list[Client] = []

    def make(recorder: bool = True, **overrides: Any) -> Fleet:
        values: dict[str, Any] = {
            "database_url": store_url,
            "notify_backoff": 1,
            "notify_max_attempts": 3,
            "notify_timeout": 5,
            "public_url": "http://dash.example:8080/",
            "lease_ttl": 3,
            "call_allow": TEST_CALL_ALLOW,
        }
        values.update(overrides)
        settings = make_settings(redis_url, **values)
        worker = start_worker(settings, queues="default,io,notify")
        client = Client(settings)
        clients.append(client)
        hook = notify.recorder_hook(settings, store)
        rec = Recorder(
            store,
            client.redis,
            client.keys,
            group=f"g-{uuid.uuid4().hex[:6]}",
            block=0.1,
            hooks=[hook],
        )
        if recorder:
            rec.setup()
            stop = threading.Event()
            stops.append((stop, rec.start_thread(stop)))
        return Fleet(settings, client, store, Notifications(store), hook, rec, worker)

    yield make
    for stop, thread in stops:
        stop.set()
        thread.join(10)
    for c in clients:
        c.close()


def settled(fleet: Fleet, n: int, status: str = "delivered") -> list[dict[str, Any]]:
    wait_for(
        lambda: len(fleet.deliveries(status=status)) >= n,
        60,
        f"{n} deliveries {status}",
        interval=0.1,
    )
    return fleet.deliveries(status=status)


def test_failed_and_completed_runs_notify_once_with_a_signature_the_receiver_verifies(
    make_fleet: Any, receivers: list[Receiver]
) -> None:
    rcv = receiver(receivers)
    fleet = make_fleet()
    ep = fleet.notes.add_endpoint(rcv.url, events=["failed", "completed"], actor="test")
    ok = fleet.client.submit(ok_wf(tags=("nightly",)), triggered_by="tester")
    bad = fleet.client.submit(failing_wf())
    assert ok.wait(60).status == "COMPLETED"
    assert bad.wait(60).status == "FAILED"
    settled(fleet, 2)
    wait_for(lambda: len(rcv.requests) >= 2, 30, "two requests")
    wait_for(lambda: fleet.recorder.lag().caught_up, 30, "the recorder to catch up")

    by_event = {r.headers["X-Canvasflow-Event"]: r for r in rcv.requests}
    assert set(by_event) == {"failed", "completed"}
    for event, req in by_event.items():
        ts = req.headers["X-Canvasflow-Timestamp"]
        assert notify.verify(ep.secret, ts, req.body, req.headers["X-Canvasflow-Signature"])
        assert not notify.verify(
            "wrong-secret-123456", ts, req.body, req.headers["X-Canvasflow-Signature"]
        )
        assert not notify.verify(
            ep.secret, ts, req.body + b" ", req.headers["X-Canvasflow-Signature"]
        )
        assert req.headers["X-Canvasflow-Delivery"] == req.json["delivery"]
        assert req.headers["Content-Type"] == "application/json"
        assert req.json["event"] == event
    done = by_event["completed"].json["run"]
    assert done["id"] == ok.id and done["workflow"] == "nt_ok" and done["status"] == "COMPLETED"
    assert done["tags"] == ["nightly"] and done["triggered_by"] == "tester"
    assert done["trigger"]["by"] == "tester" and done["trigger"]["type"] == done["trigger_type"]
    assert done["url"] == f"http://dash.example:8080/runs/{ok.id}"
    assert done["finished_at"].endswith("+00:00")
    failed = by_event["failed"].json["run"]
    assert failed["id"] == bad.id and failed["status"] == "FAILED"
    assert failed["failed_step"] == "bad" and "disk on fire" in failed["error"]
    # One attempt each, logged with its status code.
    for d in fleet.deliveries():
        assert d["attempts"] == 1
        assert [a["status_code"] for a in fleet.notes.attempts(d["id"])] == [200]
    assert len(rcv.requests) == 2


def test_a_receiver_that_fails_the_first_attempts_gets_the_notification_after_retries(
    make_fleet: Any, receivers: list[Receiver]
) -> None:
    rcv = receiver(receivers, plan=lambda n: 500 if n <= 2 else 200)
    fleet = make_fleet()
    fleet.notes.add_endpoint(rcv.url, events=["failed"])
    assert fleet.client.submit(failing_wf()).wait(60).status == "FAILED"
    (d,) = settled(fleet, 1)
    assert d["attempts"] == 3 and d["last_status_code"] == 200
    attempts = fleet.notes.attempts(d["id"])
    assert [a["status_code"] for a in attempts] == [500, 500, 200]
    assert "HTTP 500" in attempts[0]["error"] and attempts[2]["error"] is None
    # Backoff: the second retry waited longer than the first (1 s, then 2 s).
    assert attempts[2]["at"] - attempts[1]["at"] > attempts[1]["at"] - attempts[0]["at"] - 0.5
    # Every attempt carried the same delivery and body, each freshly signed.
    assert len({r.headers["X-Canvasflow-Delivery"] for r in rcv.requests}) == 1
    assert len({r.body for r in rcv.requests}) == 1


def test_a_delivery_whose_attempts_all_fail_is_dead_lettered_and_a_replay_delivers_it(
    make_fleet: Any, receivers: list[Receiver]
) -> None:
    answers = {"status": 503}
    rcv = receiver(receivers, plan=lambda n: answers["status"])
    fleet = make_fleet(notify_max_attempts=2)
    fleet.notes.add_endpoint(rcv.url, events=["failed"], format="slack")
    assert fleet.client.submit(failing_wf()).wait(60).status == "FAILED"
    (dead,) = settled(fleet, 1, status="dead")
    assert dead["attempts"] == 2 and dead["last_status_code"] == 503
    assert "HTTP 503" in dead["last_error"]
    assert len(rcv.requests) == 2
    slack = rcv.requests[0].json
    assert slack["text"].startswith(":x: canvasflow: run <http://dash.example:8080/runs/")
    assert "disk on fire" in slack["text"]

    answers["status"] = 200
    replayed = fleet.notes.replay(dead["id"], attempt_limit=2, actor="admin")
    assert replayed["status"] == "pending"
    notify.enqueue(fleet.client.celery, dead["id"])
    (d,) = settled(fleet, 1)
    assert d["id"] == dead["id"] and d["attempts"] == 3 and d["replays"] == 1
    assert [a["status_code"] for a in fleet.notes.attempts(d["id"])] == [503, 503, 200]
    assert fleet.deliveries(status="dead") == []


def test_a_cancelled_run_and_a_failed_compensation_notify_as_such(
    make_fleet: Any, receivers: list[Receiver]
) -> None:
    rcv = receiver(receivers)
    fleet = make_fleet()
    fleet.notes.add_endpoint(rcv.url, events=["cancelled", "compensation_failed"])
    slow = fleet.client.submit(
        Workflow("nt_slow_cancel").step("s", "builtin", "sleep", params={"seconds": 30})
    )
    wait_for(lambda: fleet.client.state.status(slow.id) == "RUNNING", 60, "the run to start")
    fleet.client.control.cancel(slow.id, actor="tester", reason="test")
    saga = fleet.client.submit(
        Workflow("nt_saga")
        .step(
            "a",
            "builtin",
            "echo",
            compensate={"plugin": "builtin", "method": "fail", "params": {"message": "undo broke"}},
        )
        .step("bad", "builtin", "fail", depends_on=["a"])
    )
    assert saga.wait(60).status == "COMPENSATION_FAILED"
    slow.wait(60)
    settled(fleet, 2)
    wait_for(lambda: len(rcv.requests) >= 2, 30, "two requests")
    got = {r.headers["X-Canvasflow-Event"]: r.json["run"] for r in rcv.requests}
    assert got["cancelled"]["id"] == slow.id and got["cancelled"]["status"] == "CANCELLED"
    assert got["compensation_failed"]["id"] == saga.id
    assert got["compensation_failed"]["status"] == "COMPENSATION_FAILED"


def test_endpoints_filter_by_workflow_and_by_tag(
    make_fleet: Any, receivers: list[Receiver]
) -> None:
    by_wf, by_tag, off = receiver(receivers), receiver(receivers), receiver(receivers)
    fleet = make_fleet()
    fleet.notes.add_endpoint(by_wf.url, events=["completed"], workflows=["nt_x"])
    fleet.notes.add_endpoint(by_tag.url, events=["completed"], tags=["blue", "green"])
    disabled = fleet.notes.add_endpoint(off.url, events=["completed"])
    fleet.notes.set_enabled(disabled.id, False)
    runs = {
        wid: fleet.client.submit(ok_wf(wid, tags)).id
        for wid, tags in (("nt_x", ()), ("nt_y", ("blue",)), ("nt_z", ("red",)))
    }
    for rid in runs.values():
        fleet.client.get_run(rid).wait(60)
    settled(fleet, 2)
    wait_for(lambda: fleet.recorder.lag().caught_up, 30, "the recorder to catch up")
    wait_for(lambda: len(by_wf.requests) + len(by_tag.requests) >= 2, 30, "two requests")
    assert [r.json["run"]["id"] for r in by_wf.requests] == [runs["nt_x"]]
    assert [r.json["run"]["id"] for r in by_tag.requests] == [runs["nt_y"]]
    assert len(fleet.deliveries()) == 2
    assert off.requests == [] and fleet.deliveries(endpoint_id=disabled.id) == []


def test_a_receiver_that_hangs_blocks_neither_the_recorder_nor_for_ever_the_worker(
    make_fleet: Any, receivers: list[Receiver]
) -> None:
    rcv = receiver(receivers, plan=lambda n: "hang")
    # The first attempt must still be held when the later runs are recorded, however slow the
    # machine: a timeout far past the test's waits.
    fleet = make_fleet(notify_timeout=300, notify_max_attempts=1)
    fleet.notes.add_endpoint(rcv.url, events=["failed", "completed"])
    first = fleet.client.submit(failing_wf())
    first.wait(60)
    wait_for(lambda: rcv.hanging == 1, 60, "the receiver to hold the first delivery")
    later = [fleet.client.submit(ok_wf()) for _ in range(3)]
    for h in later:
        h.wait(60)
    # While the receiver holds its request, the recorder goes on recording.
    wait_for(
        lambda: all(
            (fleet.notes.run_summary(h.id) or {}).get("status") == "COMPLETED" for h in later
        ),
        60,
        "the later runs to be recorded",
    )
    # Still held (not cut off): the worker's other pool process may hold a later run's delivery
    # to the same receiver as well.
    assert rcv.hanging in (1, 2)
    rcv.release()
    settled(fleet, 4)


def test_a_sender_killed_in_the_middle_of_a_post_strands_no_delivery(
    make_fleet: Any, receivers: list[Receiver]
) -> None:
    import psutil

    rcv = receiver(receivers, plan=lambda n: "hang" if n == 1 else 200)
    fleet = make_fleet(notify_timeout=5)
    fleet.notes.add_endpoint(rcv.url, events=["failed"])
    fleet.client.submit(failing_wf()).wait(60)
    wait_for(lambda: rcv.hanging == 1, 60, "the first attempt to be under way")
    (d,) = fleet.deliveries()
    assert d["status"] == "sending"
    # The pool process sending it dies: Celery requeues the message at once; the copy finds the
    # delivery claimed, waits for the claim to lapse, then sends it.
    for child in psutil.Process(fleet.worker.proc.pid).children(recursive=True):
        child.kill()
    rcv.release()
    (d,) = settled(fleet, 1)
    assert d["attempts"] == 1 and d["last_status_code"] == 200
    assert len(rcv.requests) == 2
    assert len({r.headers["X-Canvasflow-Delivery"] for r in rcv.requests}) == 1


def test_an_attempt_against_a_hanging_receiver_ends_at_its_timeout(
    receivers: list[Receiver],
) -> None:
    rcv = receiver(receivers, plan=lambda n: "hang")
    code, error = notify.post(rcv.url, b"{}", {"Content-Type": "application/json"}, timeout=1)
    assert code is None and error is not None and "timed out" in error


def test_events_read_again_by_the_recorder_are_not_delivered_twice(
    make_fleet: Any, receivers: list[Receiver]
) -> None:
    rcv = receiver(receivers)
    fleet = make_fleet()
    fleet.notes.add_endpoint(rcv.url, events=["failed"])
    start = fleet.client.redis.xrevrange(fleet.client.keys.events, count=1)
    start_id = start[0][0].decode() if start else "0"
    bad = fleet.client.submit(failing_wf())
    bad.wait(60)
    settled(fleet, 1)
    # A second recorder (as after a crash between commit and XACK) reads the same events
    # again and hands them to the hook again: the dispatch finds its delivery already there.
    again = Recorder(
        fleet.store,
        fleet.client.redis,
        fleet.client.keys,
        group=f"again-{uuid.uuid4().hex[:6]}",
        start_id=start_id,
        hooks=[fleet.hook],
    )
    again.setup()
    sent = fleet.hook.sent
    again.drain(30)
    assert fleet.hook.sent > sent  # the re-read events did go to the notify queue
    items = [i for i in notify.notifying(e for e in _events(fleet, bad.id))]
    assert items and notify.dispatch(fleet.notes, fleet.settings, items) == []
    # A later run's notification comes after the re-read dispatch in the queue.
    later = fleet.client.submit(failing_wf())
    later.wait(60)
    settled(fleet, 2)
    wait_for(lambda: len(rcv.requests) >= 2, 30, "the later run's notification")
    assert sorted(r.json["run"]["id"] for r in rcv.requests) == sorted([bad.id, later.id])
    assert len(fleet.deliveries(run_id=bad.id)) == 1
    try:
        fleet.client.redis.xgroup_destroy(fleet.client.keys.events, again.group)
    except Exception:
        pass


def _events(fleet: Fleet, run_id: str) -> list[Any]:
    from orchestrator.audit.events import Event

    out = []
    for sid, fields in fleet.client.redis.xrange(fleet.client.keys.events):
        e = Event.from_stream(sid, fields)
        if e.run == run_id:
            out.append(e)
    return out


def test_the_canvasflow_recorder_process_queues_notifications_and_an_sla_breach_notifies(
    make_fleet: Any, receivers: list[Receiver], store_url: str, tmp_path: Any
) -> None:
    import os
    import subprocess
    import sys
    import time

    from orchestrator.engine import sla
    from tests.conftest import ROOT

    rcv = receiver(receivers)
    fleet = make_fleet(recorder=False)
    fleet.notes.add_endpoint(rcv.url, events=["sla_breached", "completed"])
    env = {**os.environ, **fleet.settings.as_env()}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log_path = tmp_path / "recorder.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "recorder", "--lag-interval", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
    try:
        slow = Workflow("nt_slow", sla_seconds=0.5).step(
            "s", "builtin", "sleep", params={"seconds": 1.5}
        )
        h = fleet.client.submit(slow)
        deadline = time.monotonic() + 30
        # What the web process's SLA monitor does every few seconds.
        while (h.id, "sla_breached") not in sla.check_once(fleet.client.state):
            assert time.monotonic() < deadline, "no sla_breached event"
            time.sleep(0.1)
        assert h.wait(60).status == "COMPLETED"
        settled(fleet, 2)
    finally:
        proc.terminate()
        proc.wait(30)
    assert "notifications: not queued" not in log_path.read_text()
    wait_for(lambda: len(rcv.requests) >= 2, 30, "two requests")
    by_event = {r.headers["X-Canvasflow-Event"]: r.json for r in rcv.requests}
    assert set(by_event) == {"sla_breached", "completed"}
    assert by_event["sla_breached"]["sla"]["sla_seconds"] == 0.5
    assert by_event["sla_breached"]["run"]["id"] == h.id
