"""Live updates of mapped steps through Socket.IO (issue 15), against a live ``python -m web``
server: item events reach a subscriber folded into ``step.items`` summaries (a few per run, not
one message per item event), the summaries and the other events together cover every seq of the
run with no gap, and a reconnecting client's catch-up is folded the same way. The events are
written to the real event stream in the engine's shape (tests/items_helpers.py)."""

from __future__ import annotations

import uuid

import pytest
import redis

from orchestrator.audit.items import parse_item
from orchestrator.keys import Keys
from tests.items_helpers import default_outcome, mapped_run
from tests.test_web_socketio import Listener
from tests.web_helpers import OPERATOR, wait_for

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

N_ITEMS = 400


def publish(settings, events) -> None:
    """XADD the events as the engine does (one transaction: the relay sees a burst)."""
    r = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    pipe = r.pipeline(transaction=True)
    for e in events:
        pipe.xadd(
            keys.events,
            {
                "run": e.run,
                "seq": e.seq,
                "type": e.type,
                "step": e.step,
                "status": e.status,
                "ts": e.ts,
                "data": e.data_json,
            },
        )
    pipe.execute()
    r.close()


def covered(events: list[dict]) -> list[int]:
    seqs: list[int] = []
    for e in events:
        seqs.extend(range(e.get("first_seq", e["seq"]), e["seq"] + 1))
    return sorted(seqs)


@pytest.fixture(scope="module")
def token(live_server):
    return live_server.token(OPERATOR)


def test_item_events_reach_a_subscriber_folded_into_a_few_summaries_without_gaps(
    live_server, token
):
    rid = f"live-{uuid.uuid4().hex[:8]}"
    evs, _ = mapped_run(rid, N_ITEMS, logs_every=5)
    item_events = [e for e in evs if parse_item(e.step)]
    listener = Listener(live_server.url, token)
    try:
        ack = listener.sio.call("subscribe", {"runs": [rid], "after": {rid: 0}}, timeout=10)
        assert ack["subscribed"] == [rid]
        publish(live_server.settings, evs)
        wait_for(
            lambda: any(
                e["type"] == "run_status_changed" and e["status"] == "FAILED"
                for e in listener.of(rid)
            ),
            30,
            "the run's last event",
        )
        got = listener.of(rid)
    finally:
        listener.close()
    summaries = [e for e in got if e["type"] == "step.items"]
    others = [e for e in got if e["type"] != "step.items"]
    # no item event went out on its own; the run's other events all did, unchanged
    assert not [e for e in others if parse_item(e["step"] or "")]
    assert [e["seq"] for e in others] == [e.seq for e in evs if not parse_item(e.step)]
    # every seq of the run is covered once: a client applying them in order sees no gap
    assert covered(got) == list(range(1, len(evs) + 1))
    assert sum(s["data"]["steps"]["resize"]["events"] for s in summaries) == len(item_events)
    assert len(summaries) <= 1 + len(item_events) // 100, len(summaries)
    assert all(s["step"] == "resize" and s["run_state"] is None for s in summaries)
    last = summaries[-1]["data"]["steps"]["resize"]
    assert set(last["statuses"]) <= {"RUNNING", "RETRYING", "COMPLETED", "FAILED"}
    assert sum(last["statuses"].values()) == last["changed"]


def test_a_reconnecting_clients_catch_up_folds_the_item_events(live_server, token):
    rid = f"live-{uuid.uuid4().hex[:8]}"
    evs, _ = mapped_run(rid, N_ITEMS)
    publish(live_server.settings, evs)
    listener = Listener(live_server.url, token)
    try:
        ack = wait_for(
            lambda: (
                (
                    a := listener.sio.call(
                        "subscribe", {"runs": [rid], "after": {rid: 0}}, timeout=10
                    )
                )["events"]
                and a["events"][-1]["seq"] == len(evs)
                and a
            ),
            20,
            "the run's events to be readable",
        )
    finally:
        listener.close()
    missed = ack["events"]
    assert covered(missed) == list(range(1, len(evs) + 1))
    (summary,) = [e for e in missed if e["type"] == "step.items"]
    assert summary["data"]["steps"]["resize"]["changed"] == N_ITEMS
    failed = sum(1 for i in range(N_ITEMS) if default_outcome(i)[0] == "FAILED")
    statuses = {"COMPLETED": N_ITEMS - failed, "FAILED": failed}
    assert summary["data"]["steps"]["resize"]["statuses"] == statuses
    assert len(missed) < 40
