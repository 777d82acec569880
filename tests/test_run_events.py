"""A run's events read from the audit store and then the Redis stream leave no gap when the
recorder writes and trims events between the two reads (orchestrator/engine/runevents.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

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

        def recorded_events(
            _store: Any, _run: str, after: int, *, limit: int, **_: Any
        ) -> RecordedEvents:
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


class Recorded(NamedTuple):
    """A mapped run's events in the stream, recorded in a SQLite store: what the tests read."""

    r: Any
    keys: Any
    state: Any
    store: Any
    run_id: str
    seqs: list[int]


@pytest.fixture
def recorded(redis_url: str, tmp_path: Any) -> Iterator[Callable[..., Recorded]]:
    """``recorded(run_id, items, trim=...)``: a run of ``tests.items_helpers.mapped_run`` whose
    events are in the stream and recorded by a real Recorder (trimming the stream or not)."""
    import redis as redis_lib

    from orchestrator.audit import AuditStore
    from orchestrator.audit.recorder import Recorder
    from orchestrator.engine.runstate import RunState
    from orchestrator.keys import Keys
    from tests.items_helpers import mapped_run, run_meta

    made: list[Recorded] = []

    def make(run_id: str, n: int, *, trim: bool = True) -> Recorded:
        keys = Keys(f"ev{uuid.uuid4().hex[:8]}")
        r = redis_lib.Redis.from_url(redis_url)
        store = AuditStore(f"sqlite:///{tmp_path / 'a.db'}")
        store.upgrade()
        evs, _ = mapped_run(run_id, n)
        state = RunState(r, keys, state_ttl=60)
        state.create(run_meta(run_id), ["list_files", "resize", "publish"])
        for e in evs[1:]:
            r.xadd(keys.events, {"run": run_id, "seq": e.seq, "type": e.type, "step": e.step,
                                 "status": e.status, "ts": e.ts, "data": e.data_json})  # fmt: skip
        Recorder(store, r, keys, trim=trim).drain(timeout=30)
        made.append(Recorded(r, keys, state, store, run_id, [e.seq for e in evs]))
        return made[-1]

    yield make
    for one in made:
        one.store.dispose()
        one.r.close()


def test_a_forgotten_run_whose_last_recorded_event_ends_the_stream_is_read_in_one_scan(
    recorded: Callable[..., Recorded],
) -> None:
    # Seen in bench_items_api.py: the Gantt of a run Redis had forgotten took minutes. Its last
    # recorded event was the stream's last entry, and the scan read that one entry 500,000 times.
    run = recorded("forgotten", 5)
    r = run.r
    r.delete(run.keys.run(run.run_id), run.keys.steps(run.run_id))  # Redis forgot the run
    calls = 0
    xrange = r.xrange

    def counted(*a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return xrange(*a, **kw)

    r.xrange = counted
    got = runevents.run_events(run.state, run.store, run.run_id, 0, limit=100_000)
    assert [e["seq"] for e in got] == run.seqs
    assert calls <= 2


def test_events_a_second_recorder_has_not_committed_yet_are_read_from_the_stream(
    recorded: Callable[..., Recorded],
) -> None:
    # Seen in CI: a reconnecting Socket.IO client missed events 25 and 26 of 27. Two recorders
    # shared the group; one had committed 27 while 25 and 26 were still pending in the other, and
    # the read took the store's rows, gap included, as the whole truth up to 27.
    from sqlalchemy import delete

    from orchestrator.audit.models import events as events_table

    run = recorded("pending", 3, trim=False)
    last = run.seqs[-1]
    run.r.hset(run.keys.run(run.run_id), "seq", last)  # as the Lua that appended them would have
    pending = {last - 2, last - 1}  # recorded by nobody yet: still in the stream
    with run.store.begin() as conn:
        conn.execute(
            delete(events_table).where(
                events_table.c.run_id == run.run_id, events_table.c.seq.in_(pending)
            )
        )
    got = runevents.run_events(run.state, run.store, run.run_id, 0, limit=100_000)
    assert [e["seq"] for e in got] == run.seqs
    after = runevents.run_events(run.state, run.store, run.run_id, last - 4, limit=100_000)
    assert [e["seq"] for e in after] == list(range(last - 3, last + 1))
