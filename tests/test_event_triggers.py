"""Event triggers through the Python client (``client.publish``): real Redis, a real worker.

Each test listens to event names of its own (the session's registry is shared).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from orchestrator import Client
from orchestrator.errors import DefinitionError, EventError
from orchestrator.records import TRIGGER_TYPES

pytestmark = pytest.mark.integration


def _name(tag: str) -> str:
    return f"t.{tag}.{uuid.uuid4().hex[:8]}"


def _workflow(wid: str, *triggers: dict[str, Any], steps: list | None = None) -> dict[str, Any]:
    return {
        "id": wid,
        "inputs": {"folder": "none", "count": 0},
        "triggers": list(triggers),
        "steps": steps
        or [
            {
                "id": "show",
                "plugin": "builtin",
                "method": "echo",
                "params": {"folder": "{{ inputs.folder }}", "count": "{{ inputs.count }}"},
            }
        ],
    }


def _record(client: Client, run_id: str) -> Any:
    (rec,) = client.state.runs([run_id], "trigger_type", "trigger_name", "trigger_ref")
    return rec


def _wid(tag: str) -> str:
    return f"ev_{tag}_{uuid.uuid4().hex[:6]}"


def test_an_event_starts_the_matching_workflow_with_inputs_from_the_event(client: Client) -> None:
    event = _name("uploaded")
    wid = _wid("upload")
    client.register(
        _workflow(
            wid,
            {
                "event": event,
                "filter": "event.payload.count > 0",
                "inputs": {
                    "folder": "{{ event.payload.folder }}",
                    "count": "{{ event.payload.count }}",
                },
            },
        )
    )
    out = client.publish(event, {"folder": "in/2026", "count": 3}, key="k-1")
    assert [r["workflow"] for r in out.started] == [wid]
    assert out.deduplicated == out.filtered == out.errors == []
    snap = client.get_run(out.run_ids[0]).wait(30)
    assert snap.status == "COMPLETED"
    assert snap.step("show").output == {"folder": "in/2026", "count": 3}
    record = _record(client, out.run_ids[0])
    assert (record.trigger_type, record.trigger_name, record.trigger_ref) == ("event", event, "k-1")


def test_a_filter_that_is_false_starts_nothing_and_says_so(client: Client) -> None:
    event = _name("filtered")
    wid = _wid("filtered")
    client.register(_workflow(wid, {"event": event, "filter": "event.payload.count > 0"}))
    out = client.publish(event, {"count": 0})
    assert out.started == [] and [f["workflow"] for f in out.filtered] == [wid]
    assert client.list_runs(workflow=wid) == []


def test_a_repeated_key_starts_no_second_run_of_a_trigger(client: Client) -> None:
    event = _name("dedupe")
    wid = _wid("dedupe")
    client.register(_workflow(wid, {"event": event}))
    first = client.publish(event, {}, key="order-17")
    again = client.publish(event, {"other": "payload"}, key="order-17")
    assert again.started == []
    assert [d["run_id"] for d in again.deduplicated] == first.run_ids
    other = client.publish(event, {}, key="order-18")
    assert other.run_ids and other.run_ids != first.run_ids
    # Without a key every event starts a run.
    assert len(client.publish(event).run_ids) == len(client.publish(event).run_ids) == 1
    assert len(client.list_runs(workflow=wid)) == 4


@pytest.mark.brokers  # on a Redis Cluster too: the claim's WATCH/MULTI lies in the fleet's slot
def test_the_same_key_published_at_once_from_eight_threads_starts_one_run(client: Client) -> None:
    event = _name("race")
    wid = _wid("race")
    client.register(_workflow(wid, {"event": event}))
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def publish() -> None:
        c = Client(client.settings)
        barrier.wait()
        results.append(c.publish(event, {"n": 1}, key="same"))
        c.close()

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    started = [rid for r in results for rid in r.run_ids]
    deduped = {d["run_id"] for r in results for d in r.deduplicated}
    assert len(results) == 8 and len(started) == 1 and deduped == set(started)
    assert [r.id for r in client.list_runs(workflow=wid)] == started


def test_one_event_starts_every_trigger_listening_to_it(client: Client) -> None:
    event = _name("shared")
    a, b = _wid("a"), _wid("b")
    client.register(_workflow(a, {"event": event, "inputs": {"folder": "a"}}))
    client.register(
        _workflow(
            b,
            {"event": event, "inputs": {"folder": "b-small"}},
            {"event": event, "name": "big", "filter": "event.payload.size > 10"},
        )
    )
    out = client.publish(event, {"size": 50}, key="x")
    assert sorted((r["workflow"], r["trigger"]) for r in out.started) == sorted(
        [(a, event), (b, event), (b, "big")]
    )
    # The key is per trigger: each of the three deduplicates on its own.
    assert len(client.publish(event, {"size": 50}, key="x").deduplicated) == 3
    names = {_record(client, r).trigger_name for r in out.run_ids}
    assert names == {event, "big"}


def test_a_filter_that_fails_is_reported_and_the_other_triggers_still_start(
    client: Client,
) -> None:
    event = _name("broken")
    bad, good = _wid("bad"), _wid("good")
    client.register(_workflow(bad, {"event": event, "filter": "event.payload.missing > 1"}))
    client.register(_workflow(good, {"event": event}))
    out = client.publish(event, {"present": 1})
    assert [r["workflow"] for r in out.started] == [good]
    (err,) = out.errors
    assert err["workflow"] == bad and err["path"] == "triggers[0].filter"
    assert "missing" in err["error"]


def test_inputs_a_definition_refuses_are_reported_per_trigger(client: Client) -> None:
    event = _name("badinputs")
    wid = _wid("badinputs")
    client.register(
        _workflow(wid, {"event": event, "inputs": {"folder": "{{ event.payload.nope }}"}})
    )
    out = client.publish(event, {"x": 1})
    assert out.started == [] and out.errors[0]["path"] == "triggers[0].inputs"


def test_only_the_latest_version_triggers_and_a_new_registration_is_seen_at_once(
    client: Client,
) -> None:
    event, later = _name("v1"), _name("v2")
    wid = _wid("versions")
    client.register(_workflow(wid, {"event": event}))
    assert len(client.publish(event).started) == 1
    client.register(_workflow(wid, {"event": later}))  # version 2 listens elsewhere
    assert client.publish(event).started == []
    (run,) = client.publish(later).started
    assert run["version"] == "2"


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"name": None}, "name", "required"),
        ({"name": ""}, "name", "must not be empty"),
        ({"name": "x" * 201}, "name", "at most 200"),
        ({"name": "has space"}, "name", "must match"),
        ({"name": 5}, "name", "must be a string"),
        ({"payload": [1, 2]}, "payload", "must be an object"),
        ({"payload": "text"}, "payload", "must be an object"),
        ({"payload": {"big": "x" * 2_000_000}}, "payload", "CANVASFLOW_MAX_INPUTS_BYTES"),
        ({"key": 17}, "key", "must be a string or null"),
        ({"key": ""}, "key", "1 to 200"),
        ({"key": "k" * 201}, "key", "1 to 200"),
        ({"key": "bad\ud800"}, "key", "lone surrogates"),
        ({"payload": {"when": {1, 2}}}, "payload", "must be JSON"),
    ],
)
def test_a_malformed_event_is_refused_with_the_field_at_fault(
    client: Client, kwargs: dict[str, Any], field: str, message: str
) -> None:
    event = {"name": "ok.name", "payload": {}, "key": None, **kwargs}
    with pytest.raises(EventError) as exc:
        client.publish(event["name"], event["payload"], event["key"])
    fields = {p for p, _ in exc.value.problems}
    assert field in fields, exc.value.problems
    assert message in str(exc.value)


def test_a_payload_nested_too_deep_is_refused(client: Client) -> None:
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(client.settings.limits.max_depth + 5):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(EventError) as exc:
        client.publish("ok.name", deep)
    assert exc.value.problems[0][0].startswith("payload")


def test_submit_says_how_a_run_started_and_refuses_an_unknown_trigger_type(
    client: Client,
) -> None:
    wf = _workflow(_wid("submit"))
    run = client.submit(
        wf, trigger_type="schedule", trigger_name="nightly", trigger_ref="2026-12-04T02:00:00Z"
    )
    rec = _record(client, run.id)
    assert (rec.trigger_type, rec.trigger_name, rec.trigger_ref) == (
        "schedule",
        "nightly",
        "2026-12-04T02:00:00Z",
    )
    assert "event" in TRIGGER_TYPES and "parent" in TRIGGER_TYPES
    with pytest.raises(DefinitionError, match="trigger_type: must be one of"):
        client.submit(wf, trigger_type="cron")


def test_submit_with_an_idempotency_key_returns_the_first_run(client: Client) -> None:
    wf = _workflow(_wid("idem"))
    key = f"fire:{uuid.uuid4().hex}"
    first = client.submit(wf, trigger_type="schedule", idempotency_key=key)
    second = client.submit(wf, trigger_type="schedule", idempotency_key=key)
    assert not first.duplicate and second.duplicate and second.id == first.id
    assert first.wait(30).status == "COMPLETED"


def test_a_run_whose_dispatch_fails_frees_its_key_so_the_event_can_be_sent_again(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.engine import dispatch

    event = _name("sendfails")
    wid = _wid("sendfails")
    client.register(_workflow(wid, {"event": event}))
    real = dispatch.compiler.compile_run

    class Unsendable:
        def apply_async(self) -> None:
            raise ConnectionError("broker unreachable")

    monkeypatch.setattr(dispatch.compiler, "compile_run", lambda *a, **kw: Unsendable())
    with pytest.raises(ConnectionError):
        client.publish(event, {}, key="retry-me")
    (failed,) = client.list_runs(workflow=wid)
    assert failed.status == "FAILED" and "could not dispatch" in (failed.error or "")
    monkeypatch.setattr(dispatch.compiler, "compile_run", real)
    again = client.publish(event, {}, key="retry-me")
    assert again.deduplicated == [] and again.run_ids and again.run_ids != [failed.id]
    assert client.get_run(again.run_ids[0]).wait(30).status == "COMPLETED"


def test_the_trigger_index_is_built_once_and_again_only_after_a_registration(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.engine.publish import Publisher

    builds: list[int] = []
    real = Publisher._build

    def counted(self: Publisher) -> Any:
        builds.append(1)
        return real(self)

    monkeypatch.setattr(Publisher, "_build", counted)
    c = Client(client.settings)
    event = _name("index")
    for _ in range(5):
        c.publish(event)
    assert len(builds) == 1
    c.register(_workflow(_wid("index"), {"event": event}))
    assert len(c.publish(event).started) == 1 and len(builds) == 2
    c.publish(event)
    assert len(builds) == 2
    c.close()


def test_a_clone_of_an_event_run_says_clone(client: Client) -> None:
    event = _name("clone")
    client.register(_workflow(_wid("clone"), {"event": event}))
    (rid,) = client.publish(event, {}, key="c").run_ids
    client.get_run(rid).wait(30)
    copy = client.clone(rid)
    assert _record(client, copy.id).trigger_type == "clone"


CRASH_AFTER_CREATE = """
import os, signal, sys
from orchestrator import Client
from orchestrator.engine import dispatch

class DiesBeforeSending:
    def apply_async(self):
        os.kill(os.getpid(), signal.SIGKILL)  # the run's transaction is done, nothing is sent

dispatch.compiler.compile_run = lambda *a, **kw: DiesBeforeSending()
Client().publish(sys.argv[1], {}, key="crash-key")
"""


def test_a_publisher_killed_between_recording_the_run_and_sending_it_loses_nothing(
    client: Client,
) -> None:
    import os
    import subprocess
    import sys

    from orchestrator.engine.watchdog import Watchdog
    from tests.conftest import ROOT

    event = _name("crash")
    wid = _wid("crash")
    client.register(_workflow(wid, {"event": event}))
    env = {**os.environ, **client.settings.as_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_CREATE, event], env=env, timeout=60, cwd=ROOT
    )
    assert proc.returncode == -9
    (stranded,) = client.list_runs(workflow=wid)
    assert stranded.status == "PENDING"  # recorded with its key, never sent
    # The key is taken by that run: publishing again starts nothing new ...
    again = client.publish(event, {}, key="crash-key")
    assert again.started == [] and again.deduplicated[0]["run_id"] == stranded.id
    # ... and the watchdog sends the stranded run (judged stalled: this test's run only, not
    # the session's others), which completes: once.
    (head,) = client.state.runs([stranded.id], "status", "seq")
    assert Watchdog(client, stall_seconds=1).redispatch(stranded.id, head.status, str(head.seq), 60)
    assert client.get_run(stranded.id).wait(30).status == "COMPLETED"
    assert [r.id for r in client.list_runs(workflow=wid)] == [stranded.id]
