"""A step's start and duration after an operator retry (issue 17 walk, retry times).

An operator retry resets a step with its status: its start and duration are then its newest
attempt's, in the live state (snapshot, API, ``canvasflow status``) and in the audit store
(``show``), while its attempts keep the first run's history. The run's own start stays.
The store part runs on SQLite and PostgreSQL (the ``store`` fixture), with the events in any
order and batching.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import select

from orchestrator import Client, Workflow
from orchestrator.audit import AuditStore, Lookups
from orchestrator.audit import queries as q
from orchestrator.audit.models import steps
from orchestrator.audit.recorder import Recorder
from orchestrator.records import RunRecord
from tests.audit_helpers import RunEvents, dump_tables, run_meta, wait_for
from tests.test_cli import cli
from tests.web_helpers import OPERATOR, Api, wait_recorded, wait_status

pytest_plugins = ("tests.audit_fixtures", "tests.web_fixtures")

# The operator retries this long after the run ended; each step takes milliseconds, so a step
# duration below it can only be the retry's attempt (a logical bound, not a timing).
RETRY_AFTER = 3.5
SAGA_STEPS = ["backup", "migrate", "verify"]


# -- the audit store's projection (synthetic events) ------------------------------------------


def retried_saga(run_id: str = "saga1") -> tuple[RunEvents, Lookups]:
    """backup and migrate complete, verify fails, both are compensated, the run FAILS; four
    minutes later an operator retries from verify, which resets all three; all complete."""
    lk = Lookups()
    lk.runs[run_id] = RunRecord.from_hash(run_id, run_meta("saga", SAGA_STEPS))
    r = RunEvents(run_id).created("saga").status("RUNNING")
    r.step("backup", seconds=0.2).step("migrate", seconds=0.3)
    r.step("verify", "FAILED", seconds=0.1)
    r.status("COMPENSATING")
    for sid in ("migrate", "backup"):
        r.emit("step_compensating", sid, "COMPENSATING")
        r.emit("step_compensated", sid, "COMPENSATED")
    r.status("FAILED", error="boom 1", failed_step="verify")
    r.t += 240  # the operator comes back four minutes later
    r.status(
        "RUNNING",
        action="retry",
        actor="erin",
        from_step="verify",
        reset=SAGA_STEPS,
        attempts_before=dict.fromkeys(SAGA_STEPS, 1),
    )
    r.step("backup", first=2, seconds=0.1).step("migrate", first=2, seconds=0.1)
    r.step("verify", first=2, seconds=0.1)
    r.status("COMPLETED")
    return r, lk


def step_rows(store: AuditStore, run_id: str) -> dict[str, dict]:
    with store.connect() as conn:
        return {
            row["step_id"]: dict(row)
            for row in conn.execute(select(steps).where(steps.c.run_id == run_id)).mappings()
        }


def test_a_step_reset_by_an_operator_retry_has_its_newest_attempts_start_and_duration(
    store: AuditStore,
) -> None:
    r, lk = retried_saga()
    store.apply(r.events, lk)
    detail = q.run_detail(store, "saga1")
    second = {e.step: e.data for e in r.events if e.type == "step_completed"}  # the retry's
    for sid in SAGA_STEPS:
        s = detail.step(sid)
        assert s.status == "COMPLETED" and s.attempts == 2
        assert s.started_at == pytest.approx(second[sid]["started_at"])
        assert s.duration == pytest.approx(0.1)  # was 240 s and more: the span since attempt 1
        # the first run's attempt keeps its own times
        assert [a.number for a in s.history] == [1, 2]
        assert s.history[0].started_at < s.history[0].finished_at < s.started_at
    # the run's own start stays (an operator retry does not restart the SLA clock)
    first_start = next(e.ts for e in r.events if e.type == "run_status_changed")
    assert detail.run.started_at == pytest.approx(first_start)


def test_between_the_retry_and_the_new_attempt_the_step_is_pending_without_times(
    store: AuditStore,
) -> None:
    r, lk = retried_saga()
    retry_at = next(
        i for i, e in enumerate(r.events) if e.type == "run_status_changed" and e.data.get("reset")
    )
    store.apply(r.events[: retry_at + 1], lk)
    rows = step_rows(store, "saga1")
    for sid in SAGA_STEPS:
        assert rows[sid]["status"] == "PENDING"
        assert (rows[sid]["started_at"], rows[sid]["finished_at"], rows[sid]["duration"]) == (
            None,
            None,
            None,
        )
        assert rows[sid]["compensation_error"] is None and rows[sid]["error"] is None


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_retried_steps_times_do_not_depend_on_the_order_events_arrive_in(
    store: AuditStore, tmp_path, seed: int
) -> None:
    r, lk = retried_saga()
    reference = AuditStore(f"sqlite:///{tmp_path / 'reference.db'}")
    reference.upgrade()
    reference.apply(r.events, lk)
    shuffled = r.events[:]
    rnd = random.Random(seed)
    rnd.shuffle(shuffled)
    i = 0
    while i < len(shuffled):  # batches of 1 to 4 events
        n = rnd.randint(1, 4)
        store.apply(shuffled[i : i + n], lk)
        i += n
    assert dump_tables(store) == dump_tables(reference)
    reference.dispose()


def test_the_retry_recorded_after_its_attempts_still_takes_the_newest_start(
    store: AuditStore,
) -> None:
    # The worst order: everything after the retry first, then the first run, then the retry.
    r, lk = retried_saga()
    k = next(
        i for i, e in enumerate(r.events) if e.type == "run_status_changed" and e.data.get("reset")
    )
    store.apply(r.events[k + 1 :], lk)
    store.apply(r.events[:k], lk)
    assert q.run_detail(store, "saga1").step("backup").duration > 200  # no reset known yet
    store.apply([r.events[k]], lk)
    s = q.run_detail(store, "saga1").step("backup")
    assert s.status == "COMPLETED" and s.duration == pytest.approx(0.1)


def test_a_second_retry_counts_from_its_own_attempts(store: AuditStore) -> None:
    r, lk = retried_saga()
    r.t += 100
    r.status("RUNNING", action="retry", reset=["verify"], attempts_before={"verify": 2})
    r.step("verify", first=3, seconds=0.4).status("COMPLETED")
    evs = r.events[:]
    random.Random(5).shuffle(evs)
    store.apply(evs, lk)
    detail = q.run_detail(store, "saga1")
    assert detail.step("verify").attempts == 3
    assert detail.step("verify").duration == pytest.approx(0.4)
    assert detail.step("backup").duration == pytest.approx(0.1)


# -- a real worker, recorder and CLI ----------------------------------------------------------


@pytest.fixture
def recorder(client: Client, store: AuditStore) -> Iterator[Recorder]:
    last = client.redis.xrevrange(client.keys.events, count=1)
    rec = Recorder(
        store,
        client.redis,
        client.keys,
        group=f"g-retry-{time.time_ns()}",
        start_id=last[0][0].decode() if last else "0",
        block=0.1,
        trim=False,
    )
    rec.setup()
    stop = threading.Event()
    thread = rec.start_thread(stop)
    yield rec
    stop.set()
    thread.join(10)
    try:
        client.redis.xgroup_destroy(client.keys.events, rec.group)
    except redis.ResponseError:
        pass


def saga(name: str) -> Workflow:
    wf = Workflow(name, mode="sequential")
    for sid in ("backup", "migrate"):
        wf = wf.step(
            sid,
            "builtin",
            "echo",
            params={"did": sid},
            compensate={"plugin": "builtin", "method": "echo", "params": {"undo": sid}},
        )
    return wf.step("verify", "builtin", "fail", params={"times": 1, "message": "smoke test"})


def status_durations(text: str) -> dict[str, str]:
    """step -> its duration cell in `canvasflow status` output."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) >= 4 and cells[0] in SAGA_STEPS:
            out[cells[0]] = cells[3]
    return out


def show_durations(text: str) -> dict[str, str]:
    """step -> its duration cell in `canvasflow show` output (step, status, attempts, start,
    duration, ...)."""
    out = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[0] in SAGA_STEPS:
            out[cells[0]] = cells[4]
    return out


def seconds_of(cell: str) -> float:
    """A duration as the CLI prints it: '12 ms', '12ms', '1.5 s', '1.50s', '4m05s', '4.1m'."""
    if m := re.fullmatch(r"(\d+) ?ms", cell):
        return int(m[1]) / 1000
    if m := re.fullmatch(r"([\d.]+) ?s", cell):
        return float(m[1])
    if m := re.fullmatch(r"(\d+)m(\d+)s", cell):
        return int(m[1]) * 60 + int(m[2])
    if m := re.fullmatch(r"([\d.]+)m", cell):
        return float(m[1]) * 60
    raise AssertionError(f"not a duration: {cell!r}")


@pytest.mark.integration
def test_after_an_operator_retry_a_steps_duration_is_its_new_attempts_everywhere(
    client: Client, store: AuditStore, recorder: Recorder, fleet_settings
) -> None:
    run = client.submit(saga("retry_times"))
    first = run.wait(60)
    assert first.status == "FAILED" and first.statuses["backup"] == "COMPENSATED"
    first_backup = first.step("backup")
    time.sleep(RETRY_AFTER)  # the operator looks at the failure for a while
    client.control.retry(run.id, actor="erin")
    final = run.wait(60)
    assert final.status == "COMPLETED"

    # the live state: the snapshot the API, the run page and `canvasflow status` read
    for sid in ("backup", "migrate", "verify"):
        s = final.step(sid)
        assert s.attempts == 2
        assert s.duration is not None and s.duration < RETRY_AFTER, (sid, s.duration)
        assert s.started_at > first.finished_at  # the retry's attempt, not the first
        assert [a.number for a in s.history] == [1, 2]  # the attempts keep the first run
    assert final.step("backup").history[0].started_at == pytest.approx(first_backup.started_at)
    assert final.started_at == pytest.approx(first.started_at)  # the SLA clock goes on

    status = cli("status", run.id, settings=fleet_settings, check=True).stdout
    cells = status_durations(status)
    assert set(cells) == set(SAGA_STEPS), status
    assert all(seconds_of(c) < RETRY_AFTER for c in cells.values()), status

    # the audit store (SQLite and PostgreSQL)
    wait_for(
        lambda: q.get_run(store, run.id).status == "COMPLETED" and recorder.lag().caught_up,
        60,
        "the recorder to record the retried run",
    )
    detail = q.run_detail(store, run.id)
    rows = step_rows(store, run.id)
    for sid in SAGA_STEPS:
        s = detail.step(sid)
        assert s.duration is not None and s.duration < RETRY_AFTER, (sid, s.duration)
        assert s.started_at == pytest.approx(final.step(sid).started_at)
        assert rows[sid]["duration"] == pytest.approx(s.duration)
        assert [a.number for a in s.history] == [1, 2]
    assert detail.step("backup").history[0].started_at == pytest.approx(first_backup.started_at)
    assert detail.run.started_at == pytest.approx(first.started_at)

    url = store.url.render_as_string(hide_password=False)
    shown = cli("show", run.id, settings=fleet_settings, env={"CANVASFLOW_DATABASE_URL": url})
    assert shown.returncode == 0, shown.stderr
    cells = show_durations(shown.stdout)
    assert set(cells) == set(SAGA_STEPS), shown.stdout
    assert all(seconds_of(c) < RETRY_AFTER for c in cells.values()), shown.stdout
    events = [
        json.loads(f[b"data"])
        for _, f in client.redis.xrange(client.keys.events)
        if f[b"run"].decode() == run.id
        and f[b"type"] == b"run_status_changed"
        and b"attempts_before" in f[b"data"]
    ]
    assert events and events[-1]["attempts_before"] == {"backup": 1, "migrate": 1, "verify": 1}


@pytest.mark.integration
def test_the_api_run_detail_shows_the_retried_steps_new_duration_and_both_attempts(
    web_app, orchestrator_client
) -> None:
    operator = Api(web_app, OPERATOR)
    run = orchestrator_client.submit(saga("retry_times_api"))
    wait_status(orchestrator_client, run.id, {"FAILED"}, 60)
    time.sleep(RETRY_AFTER)
    r = operator.post(f"/runs/{run.id}/retry", {})
    assert r.status_code == 200, r.json
    wait_status(orchestrator_client, run.id, {"COMPLETED"}, 60)
    d = operator.get(f"/runs/{run.id}").json
    by_id = {s["id"]: s for s in d["steps"]}
    for sid in SAGA_STEPS:
        s = by_id[sid]
        assert s["duration"] is not None and s["duration"] < RETRY_AFTER, (sid, s)
        first, second = s["history"]  # the first run's attempt is kept
        assert s["started_at"] == pytest.approx(second["started_at"])
        assert first["started_at"] < second["started_at"] - RETRY_AFTER + 0.5
    # the timeline draws both attempts of backup, the first one where it ran
    bars = operator.get(f"/runs/{run.id}/timeline").json["bars"]
    backup = [b for b in bars if b["step"] == "backup" and b["kind"] == "step"]
    assert len(backup) == 2 and backup[1]["start"] - backup[0]["start"] >= RETRY_AFTER
    # and the store the dashboard reads once the run has left Redis agrees
    store = web_app.extensions["canvasflow"].store
    wait_recorded(store, run.id, {"COMPLETED"}, 60)
    recorded = q.run_detail(store, run.id)
    for sid in SAGA_STEPS:
        assert recorded.step(sid).duration < RETRY_AFTER
        assert recorded.step(sid).started_at == pytest.approx(by_id[sid]["started_at"])
