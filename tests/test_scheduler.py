"""The scheduler (orchestrator/engine/scheduler.py) against real Redis, a real worker and both
audit stores: fire times start runs that complete, exactly once however many schedulers tick,
a stalled scheduler that lost its claim writes nothing, catchup, pause/resume (in the audit log,
surviving a Redis that forgot it), cursors recovered from SQL. The clock is injected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator import Client
from orchestrator.audit.models import audit_log
from orchestrator.engine import schedules as ops
from orchestrator.engine.runstate import FenceLost
from orchestrator.engine.scheduler import LEASE_MS, Scheduler, fire_run_id, schedule_field
from orchestrator.model.definition import Workflow
from tests.conftest import ROOT

pytest_plugins = ("tests.audit_fixtures",)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a multiple of 2, 10 and 60


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def wf_id(client: Client) -> Iterator[str]:
    """A fresh workflow id, unregistered at the end so later schedulers never see it."""
    wf = f"sched_{uuid.uuid4().hex[:8]}"
    yield wf
    client.redis.srem(client.keys.workflows, wf)


def register(client: Client, wf: str, **schedule: Any) -> None:
    client.register(
        Workflow(wf)
        .schedule(**{"every": 2, "inputs": {"who": "scheduler"}, **schedule})
        .step("a", "builtin", "echo", params={"who": "{{ inputs.who }}"})
    )


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def hot_run(client: Client, run_id: str) -> Any:
    hot = client.state.read(run_id)
    assert hot is not None
    return hot.run


def created_events(client: Client) -> dict[str, int]:
    """run id -> how many run_created events the stream holds for it."""
    counts: dict[str, int] = {}
    for _, fields in client.redis.xrange(client.keys.events):
        if fields.get(b"type") == b"run_created":
            rid = fields[b"run"].decode()
            counts[rid] = counts.get(rid, 0) + 1
    return counts


def test_fire_times_start_runs_that_complete_once_with_two_schedulers(
    client: Client, wf_id: str, store: Any
) -> None:
    register(client, wf_id)
    clock = Clock()
    a = Scheduler(client, store, clock=clock, owner="a")
    b = Scheduler(client, store, clock=clock, owner="b")
    a.tick()  # first sight: the cursor starts now, nothing in the past fires
    b.tick()
    assert a.fired == b.fired == 0
    clock.t += 6.5  # fire times T0+2, +4, +6
    a.tick()
    b.tick()
    clock.t += 2  # T0+8
    b.tick()
    a.tick()
    expected = [fire_run_id(wf_id, "schedule-0", at(T0 + k)) for k in (2, 4, 6, 8)]
    assert a.fired + b.fired == 4
    counts = created_events(client)
    assert [counts.get(rid) for rid in expected] == [1, 1, 1, 1]
    for rid in expected:
        snap = client.get_run(rid).wait(timeout=30)
        assert snap.status == "COMPLETED"
        assert snap.step("a").output == {"who": "scheduler"}
        run = hot_run(client, rid)
        assert (run.trigger_type, run.triggered_by, run.workflow) == (
            "schedule",
            "scheduler",
            wf_id,
        )
    # The audit store keeps the last fire time and its run.
    views = {v.name: v for v in ops.list_schedules(client, store, now=clock.t)}
    assert views["schedule-0"].last_fire == "2027-01-15T08:00:08Z"
    assert views["schedule-0"].last_run_id == expected[-1]
    assert views["schedule-0"].next_fire == "2027-01-15T08:00:10Z"


def test_a_claim_held_by_another_scheduler_is_left_alone_then_taken_over(
    client: Client, wf_id: str
) -> None:
    register(client, wf_id)
    clock = Clock()
    s = Scheduler(client, clock=clock, owner="s")
    s.tick()
    rid = fire_run_id(wf_id, "schedule-0", at(T0 + 2))
    claim = client.keys.schedule_fire(rid)
    # Another scheduler claimed T0+2 and died before creating the run.
    client.redis.set(claim, "dead:token", px=LEASE_MS)
    clock.t += 2
    s.tick()
    assert not client.redis.exists(client.keys.run(rid))
    # Its lease expires: the fire time is still due (within the grace), and starts once.
    client.redis.delete(claim)
    clock.t += 0.5
    s.tick()
    assert created_events(client).get(rid) == 1
    assert client.redis.get(claim) == f"done:{rid}".encode()


def test_a_stalled_scheduler_that_lost_its_claim_creates_nothing(
    client: Client, wf_id: str
) -> None:
    register(client, wf_id)
    rid = fire_run_id(wf_id, "schedule-0", at(T0 + 2))
    claim = client.keys.schedule_fire(rid)
    client.redis.set(claim, "new-holder", px=LEASE_MS)  # taken over while we stalled
    with pytest.raises(FenceLost):
        client.submit(wf_id, run_id=rid, fence=(claim, "old-holder"), trigger_type="schedule")
    assert not client.redis.exists(client.keys.run(rid))
    client.redis.set(claim, "old-holder", px=LEASE_MS)
    client.submit(wf_id, run_id=rid, fence=(claim, "old-holder"), trigger_type="schedule")
    # The same fire time submitted again under a valid claim: the run exists, nothing is written.
    with pytest.raises(FenceLost, match="exists already"):
        client.submit(wf_id, run_id=rid, fence=(claim, "old-holder"), trigger_type="schedule")
    assert created_events(client).get(rid) == 1


@pytest.mark.parametrize(("catchup", "fired"), [(False, 1), (True, 4)])
def test_catchup_after_a_gap_with_no_scheduler(
    client: Client, wf_id: str, catchup: bool, fired: int
) -> None:
    register(client, wf_id, every=60, catchup=catchup, inputs={})
    clock = Clock()
    Scheduler(client, clock=clock).tick()
    clock.t += 600  # ten minutes with no scheduler: ten fire times, the last on time
    s = Scheduler(client, clock=clock, grace=30, catchup_max=3)
    s.tick()
    assert s.fired == fired
    first = T0 + 600 - 60 * (fired - 1)
    expected = [fire_run_id(wf_id, "schedule-0", at(first + 60 * k)) for k in range(fired)]
    assert all(client.redis.exists(client.keys.run(r)) for r in expected)
    created = [hot_run(client, r).created_at for r in expected]
    assert created == sorted(created)  # oldest first


def test_pause_stops_firing_survives_redis_forgetting_it_and_is_in_the_audit_log(
    client: Client, wf_id: str, store: Any
) -> None:
    register(client, wf_id)
    clock = Clock()
    s = Scheduler(client, store, clock=clock)
    s.tick()
    view = ops.set_paused(client, store, wf_id, "schedule-0", True, actor="olga", reason="maint")
    assert view.paused and view.paused_by == "olga" and view.next_fire is None
    clock.t += 4
    s.tick()
    assert s.fired == 0
    # Redis forgets the paused set (a restart without persistence): a new scheduler copies it
    # back from the audit store before it fires anything.
    client.redis.delete(client.keys.schedule_paused)
    clock.t += 4
    s2 = Scheduler(client, store, clock=clock)
    s2.tick()
    assert s2.fired == 0
    ops.set_paused(client, store, wf_id, "schedule-0", False, actor="olga")
    clock.t += 2
    s2.tick()
    assert s2.fired == 1  # the next fire time only: fire times while paused are skipped
    run_id = ops.run_now(client, store, wf_id, "schedule-0", actor="olga", reason="test")
    assert client.get_run(run_id).wait(timeout=30).status == "COMPLETED"
    with store.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.target_id, audit_log.c.reason)
            .where(audit_log.c.target_type == "schedule")
            .order_by(audit_log.c.id)
        ).all()
    target = f"{wf_id}/schedule-0"
    assert [tuple(r) for r in rows] == [
        ("olga", "schedule.pause", target, "maint"),
        ("olga", "schedule.resume", target, None),
        ("olga", "schedule.run_now", target, "test"),
    ]


def test_an_unknown_schedule_is_refused_with_what_exists(client: Client, wf_id: str) -> None:
    register(client, wf_id)
    with pytest.raises(ops.UnknownSchedule, match=f"no schedule 'nightly'.*{wf_id}/schedule-0"):
        ops.set_paused(client, None, wf_id, "nightly", True, actor="olga")


def test_the_cursor_comes_back_from_the_audit_store_when_redis_lost_it(
    client: Client, wf_id: str, store: Any
) -> None:
    register(client, wf_id, every=60, catchup=True, inputs={})
    clock = Clock()
    s = Scheduler(client, store, clock=clock)
    s.tick()
    clock.t += 60
    s.tick()
    assert s.fired == 1
    client.redis.zrem(client.keys.schedule_cursors, schedule_field(wf_id, "schedule-0"))
    clock.t += 180  # three more fire times while the cursor was lost: caught up from SQL's
    s2 = Scheduler(client, store, clock=clock, grace=30, catchup_max=10)
    s2.tick()
    assert s2.fired == 3


def test_only_the_latest_registered_version_fires(client: Client, wf_id: str) -> None:
    register(client, wf_id, every=2)
    clock = Clock()
    s = Scheduler(client, clock=clock)
    s.tick()
    client.register(Workflow(wf_id).step("a", "builtin", "echo"))  # v2 has no schedule
    clock.t += 4
    s.tick()
    assert s.fired == 0
    assert [v.workflow for v in ops.list_schedules(client, None) if v.workflow == wf_id] == []


def test_the_loop_runs_in_a_thread_on_the_real_clock(client: Client, wf_id: str) -> None:
    import threading

    register(client, wf_id, every=1)
    stop = threading.Event()
    s = Scheduler(client)
    s.start_thread(stop)
    deadline = time.monotonic() + 30
    try:
        while s.fired < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
    assert s.fired >= 2


def test_a_scheduler_gone_for_a_day_is_forgotten(client: Client) -> None:
    client.redis.hset(client.keys.schedulers, "dead:1:abc", f"{T0 - 90000:.3f}")
    client.redis.hset(client.keys.schedulers, "junk", "not a time")  # whatever Redis holds
    s = Scheduler(client, clock=Clock(), owner="live")
    s.tick()
    alive = {k.decode() for k in client.redis.hkeys(client.keys.schedulers)}
    assert alive & {"dead:1:abc", "junk"} == set() and "live" in alive
    assert "live" in ops.schedulers(client, now=T0)


def cli(settings: Any, *args: str, db: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_env(), "CANVASFLOW_DATABASE_URL": db}
    env["PYTHONPATH"] = str(ROOT)
    env["CANVASFLOW_ACTOR"] = "carl"
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_lists_pauses_resumes_and_runs_a_schedule_now(
    client: Client, wf_id: str, tmp_path: Path
) -> None:
    from orchestrator.audit.store import AuditStore

    db = f"sqlite:///{tmp_path / 'audit.db'}"
    store = AuditStore(db)
    store.upgrade()
    register(client, wf_id)
    out = cli(client.settings, "schedules", "list", "--json", db=db)
    assert out.returncode == 0, out.stderr
    listed = [s for s in json.loads(out.stdout)["schedules"] if s["workflow"] == wf_id]
    assert [(s["name"], s["schedule"], s["paused"]) for s in listed] == [
        ("schedule-0", "every 2 s", False)
    ]
    assert listed[0]["next_fire"].endswith("Z")
    out = cli(client.settings, "schedules", "pause", wf_id, "schedule-0", "--reason", "x", db=db)
    assert out.returncode == 0 and f"pause: {wf_id}/schedule-0 paused" in out.stdout, out
    out = cli(client.settings, "schedules", "run-now", wf_id, "schedule-0", db=db)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip()
    assert client.get_run(run_id).wait(timeout=30).status == "COMPLETED"
    out = cli(client.settings, "schedules", "resume", wf_id, "schedule-0", db=db)
    assert out.returncode == 0 and "active, next fire 20" in out.stdout, out
    out = cli(client.settings, "schedules", "pause", wf_id, "nope", db=db)
    assert out.returncode != 0
    assert f"no schedule 'nope' in the latest registered version of '{wf_id}'" in out.stderr
    with store.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.actor, audit_log.c.action).where(
                audit_log.c.target_id == f"{wf_id}/schedule-0"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("carl", "schedule.pause"),
        ("carl", "schedule.run_now"),
        ("carl", "schedule.resume"),
    ]
    store.dispose()


@pytest.mark.parametrize(
    ("start", "days"),
    [
        # Spring forward (2026-03-29: 02:30 does not exist) and fall back (2026-10-25: it happens
        # twice): one run each day, at the instants of tests/test_schedule_math.py.
        ("2026-03-27T12:00:00", ["03-28 01:30", "03-29 01:30", "03-30 00:30", "03-31 00:30"]),
        ("2026-10-23T12:00:00", ["10-24 00:30", "10-25 00:30", "10-26 01:30", "10-27 01:30"]),
    ],
)
def test_a_daily_berlin_schedule_fires_once_a_day_across_a_dst_change(
    client: Client, wf_id: str, start: str, days: list[str]
) -> None:
    client.register(
        Workflow(wf_id)
        .schedule(cron="30 2 * * *", timezone="Europe/Berlin", name="nightly")
        .step("a", "builtin", "echo")
    )
    clock = Clock(datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp())
    s = Scheduler(client, clock=clock, grace=900)
    end = clock.t + 4 * 86400
    while clock.t <= end:  # a scheduler that looks every ten minutes, on an injected clock
        s.tick()
        clock.t += 600
    expected = {
        fire_run_id(
            wf_id, "nightly", datetime.strptime(f"2026-{d}", "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        )
        for d in days
    }
    runs = {m.decode() for m in client.redis.zrange(client.keys.runs_of(wf_id), 0, -1)}
    assert runs == expected
    counts = created_events(client)
    assert [counts.get(r) for r in expected] == [1] * 4
