"""A run's events read from the audit store and then the Redis stream leave no gap when the
recorder writes and trims events between the two reads (orchestrator/engine/runevents.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from orchestrator.audit.queries.runs import RecordedEvents
from orchestrator.engine import runevents
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


def test_events_recorded_and_trimmed_between_the_store_read_and_the_stream_read_are_not_lost(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen in CI: a Socket.IO subscribe's catch-up missed events 8-10 of a run. The store was
    # read up to 7; the recorder then wrote 8-12 and trimmed 8-10 from the stream; the stream
    # read found 11-12 only.
    from orchestrator import Client

    client = Client(make_settings(redis_url, key_prefix=f"ev{uuid.uuid4().hex[:8]}"))
    try:
        run = client.submit(
            {
                "id": "gap",
                "steps": [{"id": "a", "plugin": "builtin", "method": "echo", "queue": "nobody"}],
            }
        )
        client.state.emit(
            run.id, [["log", "a", "", str(1795000000 + i), {"message": f"m{i}"}] for i in range(12)]
        )
        stream = client.redis.xrange(client.keys.events)
        mine = [
            (eid, runevents.parse_entry(eid, f))
            for eid, f in stream
            if f.get(b"run", b"").decode() == run.id
        ]
        everything = [dict(e, step=e["step"] or "", status=e["status"] or "") for _, e in mine]
        for e in everything:
            e.pop("id", None)
        latest = everything[-1]["seq"]
        assert latest >= 10
        seen_before, trimmed = 3, {4, 5, 6}
        calls: list[int] = []

        def recorded_events(_store: Any, _run: str, after: int, *, limit: int) -> RecordedEvents:
            calls.append(after)
            # The first read sees what was recorded then; later ones see the recorder's writes.
            upto = seen_before if len(calls) == 1 else max(trimmed)
            events = [dict(e) for e in everything if after < e["seq"] <= upto][:limit]
            sid = next(eid for eid, e in mine if e["seq"] == seen_before)
            return RecordedEvents(events, sid.decode() if isinstance(sid, bytes) else sid)

        monkeypatch.setattr(runevents.queries, "recorded_events", recorded_events)
        # The recorder trimmed what it wrote from the stream.
        client.redis.xdel(client.keys.events, *[eid for eid, e in mine if e["seq"] in trimmed])
        got = runevents.run_events(client.state, object(), run.id)  # type: ignore[arg-type]
        assert [e["seq"] for e in got] == list(range(1, latest + 1))
        assert len(calls) == 2
    finally:
        client.close()
