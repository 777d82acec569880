"""Items of mapped steps in the audit store (issue 15), on SQLite and PostgreSQL: the projection
of item events, the run's step list (real steps only, with item counts), paged and filtered item
reads, one item in full."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from orchestrator.audit import queries as q
from orchestrator.audit.models import steps
from orchestrator.errors import UnknownRun
from tests.audit_helpers import RunEvents, dump_tables
from tests.items_helpers import default_outcome, mapped_run

pytest_plugins = ("tests.audit_fixtures",)


def expected_counts(n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(n):
        st = default_outcome(i)[0]
        counts[st] = counts.get(st, 0) + 1
    return counts


def test_item_events_become_item_rows_tied_to_their_mapped_step(store):
    evs, lk = mapped_run("r1", 40)
    store.apply(evs, lk)
    with store.connect() as conn:
        rows = {r.step_id: r for r in conn.execute(select(steps).where(steps.c.run_id == "r1"))}
    assert rows["resize[17]"].item_of == "resize" and rows["resize[17]"].item_index == 17
    assert rows["resize"].item_of is None and rows["resize"].items_total == 40
    assert rows["list_files"].items_total is None
    assert rows["resize[3]"].status == "FAILED" and rows["resize[3]"].attempts == 3


def test_the_run_detail_lists_real_steps_only_with_a_mapped_steps_counts_by_status(store):
    evs, lk = mapped_run("r1", 40)
    store.apply(evs, lk)
    d = q.run_detail(store, "r1")
    assert [s.id for s in d.steps] == ["list_files", "resize", "publish"]
    resize = d.step("resize")
    assert resize.items == q.ItemCounts(40, expected_counts(40))
    assert resize.items.as_dict() == {"total": 40, "counts": {"COMPLETED": 34, "FAILED": 6}}
    assert d.step("list_files").items is None
    assert d.run.status == "FAILED" and d.run.failed_step == "resize"


def test_an_expanded_step_whose_items_have_not_reported_counts_them_pending(store):
    evs, lk = mapped_run("r1", 10, running=4, finish=False)
    # the announcement and the first six items only
    store.apply([e for e in evs if not e.step.startswith("resize[") or int(e.step[7:-1]) < 6], lk)
    counts = q.item_counts(store, "r1")["resize"]
    assert counts.total == 10
    assert counts.counts == {"COMPLETED": 5, "FAILED": 1, "PENDING": 4}
    store.apply(evs, lk)
    assert q.item_counts(store, "r1")["resize"].counts == {
        "COMPLETED": 5,
        "FAILED": 1,
        "RUNNING": 4,
    }


def test_items_recorded_before_the_expansion_event_count_and_the_total_follows(store):
    evs, lk = mapped_run("r1", 6, announce=False)
    store.apply(evs, lk)
    assert q.item_counts(store, "r1")["resize"].total == 6  # what is recorded


def test_items_page_in_item_order_filtered_by_status_with_the_matching_total(store):
    evs, lk = mapped_run("r1", 250)
    store.apply(evs, lk)
    first = q.items(store, "r1", "resize", limit=100)
    assert first.total == 250 and len(first.items) == 100
    assert [i.index for i in first.items] == list(range(100))
    assert first.items[0].id == "resize[0]" and first.items[0].output == {
        "path": "f0.png",
        "index": 0,
    }
    last = q.items(store, "r1", "resize", offset=200, limit=100)
    assert [i.index for i in last.items] == list(range(200, 250))
    failed = q.items(store, "r1", "resize", status="failed", limit=1000)
    want = [i for i in range(250) if default_outcome(i)[0] == "FAILED"]
    assert failed.status == "FAILED" and failed.total == len(want)
    assert [i.index for i in failed.items] == want
    assert all(i.output is None and i.error == "boom 3" and i.attempts == 3 for i in failed.items)
    retried = q.items(store, "r1", "resize", offset=1, limit=1)
    assert retried.items[0].attempts == 2 and retried.items[0].status == "COMPLETED"
    assert q.items(store, "r1", "resize", status="RUNNING").total == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": "DONE"}, "status: 'DONE' is not a step status"),
        ({"offset": -1}, "offset: must be an integer >= 0"),
        ({"limit": 0}, "limit: must be an integer from 1 to 1000"),
        ({"limit": 5000}, "limit: must be an integer from 1 to 1000"),
    ],
)
def test_a_bad_item_filter_or_page_says_which_parameter(store, kwargs, message):
    evs, lk = mapped_run("r1", 3)
    store.apply(evs, lk)
    with pytest.raises(ValueError, match=message):
        q.items(store, "r1", "resize", **kwargs)


def test_items_of_an_unknown_run_or_step_are_clear_errors(store):
    evs, lk = mapped_run("r1", 3)
    store.apply(evs, lk)
    with pytest.raises(UnknownRun):
        q.items(store, "nope", "resize")
    with pytest.raises(q.UnknownStep, match="run r1 has no step 'nosuch'"):
        q.items(store, "r1", "nosuch")
    # a real step that is not mapped has no items: an empty page, not an error
    assert q.items(store, "r1", "publish").total == 0
    with pytest.raises(q.UnknownStep):
        q.step_record(store, "r1", "resize[99]")


def test_one_item_in_full_with_every_attempt_and_its_logs(store):
    evs, lk = mapped_run("r1", 20, logs_every=4)
    store.apply(evs, lk)
    item = q.step_record(store, "r1", "resize[3]")
    assert item.item_of == "resize" and item.item_index == 3
    assert [a.status for a in item.history] == ["RETRYING", "RETRYING", "FAILED"]
    assert item.history[-1].error == "boom 3"
    ok = q.step_record(store, "r1", "resize[8]")
    assert ok.output == {"path": "f8.png", "index": 8}
    assert [x["message"] for x in q.item_logs(store, "r1", "resize[8]")] == [
        "resize[8] line 0",
        "resize[8] line 1",
    ]
    mapped = q.step_record(store, "r1", "resize")
    assert mapped.items is not None and mapped.items.total == 20


def test_item_events_in_any_order_and_batching_give_the_same_tables(store, tmp_path):
    from orchestrator.audit import AuditStore

    evs, lk = mapped_run("r1", 60, logs_every=3)
    store.apply(evs, lk)
    store.apply(evs, lk)  # again: nothing changes
    other = AuditStore(f"sqlite:///{tmp_path / 'shuffled.db'}")
    other.upgrade()
    shuffled = list(evs)
    random.Random(7).shuffle(shuffled)
    for i in range(0, len(shuffled), 37):
        other.apply(shuffled[i : i + 37], lk)
    assert dump_tables(other) == dump_tables(store)
    other.dispose()


def test_a_step_id_that_only_looks_like_an_item_is_not_counted_as_a_real_step(store):
    r = RunEvents("r2").created()
    r.status("RUNNING").step("odd[name]").step("x[12345678901234567890]")
    store.apply(r.events)
    with store.connect() as conn:
        rows = {r.step_id: r for r in conn.execute(select(steps).where(steps.c.run_id == "r2"))}
    assert rows["odd[name]"].item_of is None
    # an index beyond a 32-bit column is no item: the row stays a step
    assert rows["x[12345678901234567890]"].item_of is None


def test_migration_0008_fills_item_rows_an_older_recorder_wrote(store_url):
    from sqlalchemy import text

    from orchestrator.audit import AuditStore

    s = AuditStore(store_url)
    s.upgrade("0007")
    with s.begin() as conn:
        for sid in ("resize", "resize[4]", "odd[name]"):
            conn.execute(
                text(
                    "INSERT INTO cf_steps (run_id, step_id, status) VALUES ('old', :s, 'COMPLETED')"
                ),
                {"s": sid},
            )
    s.upgrade()
    with s.connect() as conn:
        rows = {r.step_id: r for r in conn.execute(select(steps).where(steps.c.run_id == "old"))}
    assert (rows["resize[4]"].item_of, rows["resize[4]"].item_index) == ("resize", 4)
    assert rows["resize"].item_of is None and rows["odd[name]"].item_of is None
    s.dispose()


def test_the_run_list_counts_real_steps_and_retry_rates_count_items_as_their_step(store):
    evs, lk = mapped_run("r1", 40)
    store.apply(evs, lk)
    page = q.run_list_page(store, q.RunSelection(), limit=10, now=3_000_000.0)
    (run,) = [r for r in page.rows if r["id"] == "r1"]
    assert (run["total"], run["settled"]) == (3, 3)
    a = q.analytics(store, 0, 3_000_000.0)
    steps_seen = {s.step for s in a.retries_by_step}
    assert "resize" in steps_seen and not [s for s in steps_seen if "[" in s]


@pytest.mark.integration
def test_the_recorder_records_a_2000_item_run_from_the_stream_in_batches(store, redis_url):
    import uuid

    import redis as redis_lib

    from orchestrator.audit.recorder import Recorder
    from orchestrator.engine.runstate import RunState
    from orchestrator.keys import Keys
    from tests.items_helpers import run_meta

    keys = Keys(f"it{uuid.uuid4().hex[:8]}")
    r = redis_lib.Redis.from_url(redis_url)
    rid = f"big{uuid.uuid4().hex[:6]}"
    evs, _ = mapped_run(rid, 2000, logs_every=50)
    RunState(r, keys, state_ttl=60).create(run_meta(rid), ["list_files", "resize", "publish"])
    pipe = r.pipeline(transaction=False)
    for e in evs[1:]:
        pipe.xadd(keys.events, {"run": rid, "seq": e.seq, "type": e.type, "step": e.step,
                                "status": e.status, "ts": e.ts, "data": e.data_json})  # fmt: skip
    pipe.execute()
    recorder = Recorder(store, r, keys)
    recorder.drain(timeout=300)
    assert recorder.stats.batches > 1  # the run went through several batches
    d = q.run_detail(store, rid)
    assert [s.id for s in d.steps] == ["list_files", "resize", "publish"]
    assert d.run.complete and d.run.last_seq == len(evs)
    assert d.step("resize").items == q.ItemCounts(2000, expected_counts(2000))
    page = q.items(store, rid, "resize", offset=1990, limit=100)
    assert [i.index for i in page.items] == list(range(1990, 2000))
    r.close()
