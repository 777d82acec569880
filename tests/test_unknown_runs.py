"""Runs Redis does not know: operator actions on them are audited, and a run the audit store
still shows live but Redis lost ("state lost") can be seen and resolved by an operator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from orchestrator import Client
from orchestrator.audit import AuditStore, Event
from orchestrator.audit.models import audit_log
from orchestrator.audit.recorder import Recorder
from orchestrator.errors import UnknownRun
from orchestrator.settings import Settings
from tests.conftest import make_settings

pytest_plugins = ("tests.audit_fixtures",)
pytestmark = pytest.mark.integration


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    c = Client(settings)
    yield c
    c.close()


def drain(store: AuditStore, client: Client) -> Recorder:
    rec = Recorder(
        store, client.redis, client.keys, group=f"g-{uuid.uuid4().hex[:8]}", start_id="0", block=0.1
    )
    rec.setup()
    rec.drain()
    client.redis.xgroup_destroy(client.keys.events, rec.group)
    return rec


def audit_rows(store: AuditStore, target: str) -> list[dict]:
    with store.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(audit_log).where(audit_log.c.target_id == target).order_by(audit_log.c.id)
            ).mappings()
        ]


def test_operator_actions_on_an_unknown_run_land_in_the_audit_log_not_the_dead_letter_stream(
    client: Client, store: AuditStore
) -> None:
    for action in ("pause", "cancel", "resume", "retry", "clone"):
        with pytest.raises(UnknownRun):
            getattr(client if action == "clone" else client.control, action)(
                "0123456789abcdef", actor="alice", reason=f"drill {action}"
            )
    rec = drain(store, client)
    assert rec.stats.dead == 0
    assert client.redis.xlen(f"{client.keys.events}:dead") == 0
    rows = audit_rows(store, "0123456789abcdef")
    assert [(r["action"], r["actor"], r["outcome"], r["reason"]) for r in rows] == [
        (a, "alice", "refused: unknown run", f"drill {a}")
        for a in ("pause", "cancel", "resume", "retry", "clone")
    ]
    assert all(
        '"unknown_run": true' in r["detail"] or '"unknown_run":true' in r["detail"] for r in rows
    )


def test_an_unknown_run_action_delivered_twice_is_audited_once_and_makes_no_run_row(
    client: Client, store: AuditStore
) -> None:
    with pytest.raises(UnknownRun):
        client.control.cancel("feedfacefeedface", actor="bob")
    ((sid, fields),) = client.redis.xrange(client.keys.events)
    event = Event.from_stream(sid, fields)
    assert event.seq == 0
    assert store.apply([event]) == [event]
    assert store.apply([event]) == []
    assert len(audit_rows(store, "feedfacefeedface")) == 1
    from orchestrator.audit import queries as q

    with pytest.raises(UnknownRun):
        q.run_detail(store, "feedfacefeedface")


def test_a_stream_entry_with_seq_zero_that_is_not_an_operator_action_is_still_refused() -> None:
    from orchestrator.audit.events import BadEvent

    with pytest.raises(BadEvent, match="seq 0 is not positive"):
        Event.from_stream("1-0", {b"run": b"r", b"seq": b"0", b"type": b"step_started"})
