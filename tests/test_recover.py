"""Runs survive the loss of Redis: ``canvasflow recover`` rebuilds them from the audit store.

Real parts: a private redis-server restarted empty (its AOF deleted while it was down), a real
Celery worker, the recorder as a subprocess, the audit store on SQLite and on PostgreSQL, and
``canvasflow recover`` run as an operator runs it. Executions are counted in a file (a Redis
loss cannot erase it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from orchestrator.audit import AuditStore
from orchestrator.audit.models import (
    audit_log,
    registry,
    runs,
    step_attempts,
    steps,
    workflow_definitions,
)
from orchestrator.settings import Settings
from tests.conftest import ROOT, TEST_CALL_ALLOW, WorkerProcess, make_settings
from tests.restartable_redis import RestartableRedis

pytest_plugins = ("tests.audit_fixtures",)
pytestmark = pytest.mark.integration


def call(fn: str, tag: str, **kw: Any) -> dict[str, Any]:
    return {
        "plugin": "builtin",
        "method": "call",
        "params": {
            "function": f"tests.helpers:{fn}",
            "kwargs": {"path": "{{ inputs.marks }}", "tag": "{{ run.id }}:" + tag, **kw},
        },
    }


FLOW = {
    "id": "recover_me",
    "steps": [
        {"id": "a", **call("mark", "a")},
        {
            "id": "b",
            **call("mark_then_wait", "b", gate="{{ inputs.gate }}"),
            "depends_on": ["a"],
            "timeout": 600,
        },
        {"id": "c", **call("mark", "c"), "depends_on": ["b"]},
    ],
}
# Its only step is on a queue no worker consumes: it stays PENDING until Redis loses it.
BROKEN = {
    "id": "recover_broken",
    "steps": [{"id": "a", "plugin": "builtin", "method": "echo", "queue": "nowhere"}],
}


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Fleet:
    """A private Redis that can be lost, a worker, the recorder, a client, the audit store."""

    def __init__(self, tmp: Path, store_url: str) -> None:
        (tmp / "redis").mkdir()
        self.tmp = tmp
        self.redis = RestartableRedis(tmp / "redis").start()
        self.settings: Settings = make_settings(
            self.redis.url,
            lease_ttl=3,
            visibility_timeout=60,
            call_allow=TEST_CALL_ALLOW,
            database_url=store_url,
        )
        self.store = AuditStore(store_url)
        self.store.upgrade()
        self.env = {**os.environ, **self.settings.as_env(), "PYTHONPATH": str(ROOT)}
        self.recorder_log = open(tmp / "recorder.log", "wb")  # noqa: SIM115 - closed in close()
        self.recorder = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "recorder", "--batch-latency", "0.05"],
            env=self.env,
            cwd=str(ROOT),
            stdout=self.recorder_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.worker = WorkerProcess(
            self.settings, f"recover-{uuid.uuid4().hex[:6]}", concurrency=3, log_dir=tmp
        ).wait_ready()
        from orchestrator import Client

        self.client = Client(self.settings)
        self.marks = tmp / "marks.txt"
        self.marks.touch()

    def lose_redis(self) -> None:
        """Redis restarted empty: stopped, its AOF gone, started again on the same port."""
        self.redis.stop()
        for p in self.redis.dir.iterdir():
            if p.name.startswith(("appendonly", "dump")):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.redis.start()

    def recover(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "recover", *args],
            env={**self.env, "CANVASFLOW_ACTOR": "oncall"},
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def status(self, run_id: str) -> str:
        with self.store.connect() as conn:
            return str(conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar())

    def steps(self, run_id: str) -> dict[str, str]:
        with self.store.connect() as conn:
            rows = conn.execute(
                select(steps.c.step_id, steps.c.status).where(steps.c.run_id == run_id)
            )
            return {r[0]: r[1] for r in rows}

    def ran(self, run_id: str) -> dict[str, int]:
        """How many times each step of the run began executing."""
        out: dict[str, int] = {}
        for line in self.marks.read_text().splitlines():
            rid, _, step = line.partition(":")
            if rid == run_id:
                out[step] = out.get(step, 0) + 1
        return out

    def close(self) -> None:
        self.client.close()
        self.worker.stop()
        self.recorder.terminate()
        try:
            self.recorder.wait(15)
        except subprocess.TimeoutExpired:
            self.recorder.kill()
        self.recorder_log.close()
        self.store.dispose()
        self.redis.stop()


@pytest.fixture
def fleet(tmp_path: Path, store_url: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path, store_url)
    yield f
    f.close()


def submit(fleet: Fleet, gate: Path) -> str:
    run = fleet.client.submit(FLOW, inputs={"marks": str(fleet.marks), "gate": str(gate)})
    wait_for(
        f"run {run.id}: a COMPLETED and b RUNNING in the audit store",
        lambda: fleet.steps(run.id) == {"a": "COMPLETED", "b": "RUNNING", "c": "PENDING"},
    )
    return str(run.id)


def test_runs_in_flight_when_redis_restarts_empty_are_recovered_and_complete_without_rerunning_completed_steps(  # noqa: E501
    fleet: Fleet,
) -> None:
    running_gate, paused_gate = fleet.tmp / "gate-running", fleet.tmp / "gate-paused"
    running = submit(fleet, running_gate)
    # a paused run with a completed step: paused while b ran, b finished, then it rested
    paused = submit(fleet, paused_gate)
    fleet.client.control.pause(paused, actor="t", reason="for the drill")
    paused_gate.touch()
    wait_for("the paused run PAUSED in SQL", lambda: fleet.status(paused) == "PAUSED")
    broken = str(fleet.client.submit(BROKEN).id)
    wait_for("the broken run PENDING in SQL", lambda: fleet.status(broken) == "PENDING")
    with fleet.store.begin() as conn:  # its stored definition becomes unreadable
        conn.execute(
            update(workflow_definitions)
            .where(workflow_definitions.c.workflow_id == "recover_broken")
            .values(body='{"steps": 7')
        )
    assert fleet.ran(running) == {"a": 1, "b": 1} and fleet.ran(paused) == {"a": 1, "b": 1}

    fleet.lose_redis()
    assert fleet.client.state.status(running) is None  # Redis forgot every run

    done = fleet.recover()
    assert done.returncode == 1, done.stdout + done.stderr  # one run could not be recovered
    assert f"recovered {running} (RUNNING" in done.stdout and "re-running b" in done.stdout
    assert f"recovered {paused} (PAUSED" in done.stdout
    assert f"not recovered {broken} (PENDING): its stored definition cannot be read" in (
        done.stderr
    )
    assert "2 run(s) recovered, 1 not recovered" in done.stdout

    # the running run's b runs again as a new attempt; its old attempt is closed LOST
    running_gate.touch()
    wait_for("the running run COMPLETED", lambda: fleet.status(running) == "COMPLETED")
    assert fleet.ran(running) == {"a": 1, "b": 2, "c": 1}
    with fleet.store.connect() as conn:
        attempts = {
            r[0]: r[1]
            for r in conn.execute(
                select(step_attempts.c.attempt, step_attempts.c.status).where(
                    step_attempts.c.run_id == running, step_attempts.c.step_id == "b"
                )
            )
        }
    assert attempts == {1: "LOST", 2: "COMPLETED"}

    # the paused run stays paused (in Redis and in SQL) until an operator resumes it
    assert fleet.client.state.status(paused) == "PAUSED" and fleet.status(paused) == "PAUSED"

    # recover again: nothing to do (the broken run is reported again)
    again = fleet.recover()
    assert "0 run(s) recovered, 1 not recovered" in again.stdout, again.stdout + again.stderr
    assert f"recovered {running}" not in again.stdout and f"recovered {paused}" not in again.stdout

    fleet.client.control.resume(paused, actor="t", reason="after the drill")
    wait_for("the paused run COMPLETED", lambda: fleet.status(paused) == "COMPLETED")
    assert fleet.ran(paused) == {"a": 1, "b": 1, "c": 1}

    # the audit log says who recovered what, once per run
    with fleet.store.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.target_id, audit_log.c.actor).where(
                audit_log.c.action == "recovered"
            )
        ).all()
    assert sorted(rows) == sorted([(running, "oncall"), (paused, "oncall")])
    assert fleet.status(broken) == "PENDING"  # reported, left for an operator to resolve


COMPENSATED = {
    "id": "recover_cancelling",
    "steps": [
        {**FLOW["steps"][0], "compensate": call("mark", "undo-a")},  # type: ignore[dict-item]
        *FLOW["steps"][1:],  # type: ignore[misc]
    ],
}


def test_a_cancelling_run_finishes_cancelling_after_recovery_and_a_run_redis_still_knows_is_left_alone(  # noqa: E501
    fleet: Fleet,
) -> None:
    gate = fleet.tmp / "gate"
    run = fleet.client.submit(COMPENSATED, inputs={"marks": str(fleet.marks), "gate": str(gate)})
    rid = str(run.id)
    wait_for(
        "a COMPLETED, b RUNNING",
        lambda: fleet.steps(rid) == {"a": "COMPLETED", "b": "RUNNING", "c": "PENDING"},
    )
    # a cancel that lets b finish: the run waits CANCELLING while b holds its lease
    fleet.client.control.cancel(rid, actor="t", reason="drill", terminate=False)
    wait_for("CANCELLING in SQL", lambda: fleet.status(rid) == "CANCELLING")
    fleet.lose_redis()

    done = fleet.recover()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"recovered {rid} (CANCELLING" in done.stdout and "sent its settle" in done.stdout
    wait_for("the run CANCELLED", lambda: fleet.status(rid) == "CANCELLED")
    assert fleet.ran(rid) == {"a": 1, "b": 1, "undo-a": 1}  # a compensated once, c never ran
    assert fleet.steps(rid) == {"a": "COMPENSATED", "b": "CANCELLED", "c": "CANCELLED"}
    gate.touch()  # the lost attempt of b ends now: refused, nothing changes

    # a live run Redis knows is left alone, by name too; --force needs run ids
    live = submit(fleet, gate.with_name("gate-live"))
    named = fleet.recover(live)
    assert named.returncode == 0 and f"left alone {live}: Redis knows it" in named.stdout
    assert "0 run(s) recovered" in named.stdout
    assert fleet.recover("--force").returncode == 2
    # --force RUN rebuilds it from the audit store anyway: b runs again as a new attempt, and
    # the attempt that was running is refused when it ends (stale), so c runs once
    forced = fleet.recover("--force", live)
    assert forced.returncode == 0 and f"recovered {live} (RUNNING" in forced.stdout
    wait_for("b begun again", lambda: fleet.ran(live).get("b") == 2)
    gate.with_name("gate-live").touch()
    wait_for("the live run COMPLETED", lambda: fleet.status(live) == "COMPLETED")
    assert fleet.ran(live) == {"a": 1, "b": 2, "c": 1}
    assert fleet.status(rid) == "CANCELLED"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_watchdog_with_recover_rebuilds_runs_when_redis_comes_back_empty(
    fleet: Fleet,
) -> None:
    log = open(fleet.tmp / "watchdog.log", "wb")  # noqa: SIM115 - closed below
    dog = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "watchdog", "--recover", "--interval", "0.5"],
        env=fleet.env,
        cwd=str(ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        gate = fleet.tmp / "gate"
        rid = submit(fleet, gate)
        wait_for(
            "the watchdog's instance token",
            lambda: fleet.client.redis.exists(fleet.client.keys.instance),
        )
        # the watchdog wrote the token on its first look and remembers it
        fleet.lose_redis()
        wait_for("the run back in Redis", lambda: fleet.client.state.status(rid) == "RUNNING")
        gate.touch()
        wait_for("the run COMPLETED", lambda: fleet.status(rid) == "COMPLETED")
        assert fleet.ran(rid) == {"a": 1, "b": 2, "c": 1}
        with fleet.store.connect() as conn:
            actors = [
                a
                for (a,) in conn.execute(
                    select(audit_log.c.actor).where(
                        audit_log.c.action == "recovered", audit_log.c.target_id == rid
                    )
                )
            ]
        assert len(actors) == 1 and actors[0].startswith("watchdog "), actors
    finally:
        dog.terminate()
        dog.wait(15)
        log.close()


SAGA = {
    "id": "recover_compensating",
    "steps": [
        {
            "id": "a",
            **call("mark", "a"),
            "compensate": call("mark_then_wait", "undo-a", gate="{{ inputs.gate }}"),
        },
        {"id": "f", "plugin": "builtin", "method": "fail", "depends_on": ["a"]},
    ],
}


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_compensating_run_continues_its_compensations_after_recovery(fleet: Fleet) -> None:
    gate = fleet.tmp / "gate"
    rid = str(fleet.client.submit(SAGA, inputs={"marks": str(fleet.marks), "gate": str(gate)}).id)
    wait_for(
        "COMPENSATING with a's compensation running",
        lambda: fleet.status(rid) == "COMPENSATING" and fleet.ran(rid).get("undo-a") == 1,
    )
    fleet.lose_redis()
    done = fleet.recover()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"recovered {rid} (COMPENSATING" in done.stdout
    assert "sent its compensations" in done.stdout
    wait_for("the compensation begun again", lambda: fleet.ran(rid).get("undo-a") == 2)
    gate.touch()
    wait_for("the run FAILED", lambda: fleet.status(rid) == "FAILED")
    # the compensation that was running when Redis went away ran again (at-least-once)
    assert fleet.ran(rid) == {"a": 1, "undo-a": 2}
    assert fleet.steps(rid) == {"a": "COMPENSATED", "f": "FAILED"}


KID = {
    "id": "recover_kid",
    "version": "1.0.0",
    "inputs": {"marks": "", "gate": ""},
    "steps": [
        {"id": "a", **call("mark", "a")},
        {
            "id": "b",
            **call("mark_then_wait", "b", gate="{{ inputs.gate }}"),
            "depends_on": ["a"],
            "timeout": 600,
        },
    ],
    "outputs": {"tag": "{{ steps.b.output.tag }}"},
}
PARENT = {
    "id": "recover_parent",
    "mode": "sequential",
    "steps": [
        {
            "id": "kid",
            "workflow": "recover_kid",
            "inputs": {"marks": "{{ inputs.marks }}", "gate": "{{ inputs.gate }}"},
        },
        {"id": "after", **call("mark", "after")},
    ],
}


def test_a_parent_waiting_on_its_child_is_linked_to_the_recovered_child_not_given_a_second_one(
    fleet: Fleet,
) -> None:
    # Before: the recovered parent's sub-workflow step was sent again without its link to the
    # child (Redis lost it, with the registry), so it started a second child, or failed with
    # "not registered"; the first child ran on, orphaned.
    gate = fleet.tmp / "gate-kid"
    fleet.client.register(KID)
    parent = str(
        fleet.client.submit(PARENT, inputs={"marks": str(fleet.marks), "gate": str(gate)}).id
    )

    def child_waiting() -> str | None:
        with fleet.store.connect() as conn:
            kid = conn.execute(select(runs.c.id).where(runs.c.parent_run == parent)).scalar()
        if kid and fleet.steps(kid) == {"a": "COMPLETED", "b": "RUNNING"}:
            return str(kid)
        return None

    child = wait_for("the child's b RUNNING in the audit store", child_waiting)
    assert fleet.steps(parent)["kid"] == "RUNNING"
    with fleet.store.connect() as conn:  # the recorder copied the registry into the store
        wait_for(
            "the registry in the store",
            lambda: conn.execute(select(registry.c.version)).scalars().all() == ["1.0.0"],
        )
    fleet.lose_redis()
    assert fleet.client.versions("recover_kid") == []  # the registry went with Redis
    assert fleet.client.state.status(parent) is None and fleet.client.state.status(child) is None

    done = fleet.recover()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"recovered {child} (RUNNING" in out and f"recovered {parent} (RUNNING" in out, out
    assert out.index(f"recovered {child}") < out.index(f"recovered {parent}"), out
    assert "kid waiting on its child" in out, out
    assert "registered again from the audit store: 1 workflow version(s): recover_kid 1.0.0" in out
    assert fleet.client.versions("recover_kid") == ["1.0.0"]
    (hot,) = fleet.client.state.runs([child], "parent_run", "parent_step", "depth")
    assert hot is not None and (hot.parent_run, hot.parent_step, hot.depth) == (parent, "kid", 1)

    gate.touch()
    wait_for("the parent COMPLETED", lambda: fleet.status(parent) == "COMPLETED")
    with fleet.store.connect() as conn:
        kids = conn.execute(select(runs.c.id).where(runs.c.parent_run == parent)).scalars().all()
    assert kids == [child]  # no second child
    assert fleet.status(child) == "COMPLETED"
    assert fleet.ran(child) == {"a": 1, "b": 2} and fleet.ran(parent) == {"after": 1}
    snap = fleet.client.get_run(parent).snapshot()
    assert snap.step("kid").output == {"tag": f"{child}:b"}


MAPPED = {
    "id": "recover_mapped",
    "mode": "sequential",
    "steps": [
        {
            "id": "list",
            "plugin": "builtin",
            "method": "echo",
            # the first two items pass their gate at once; the third waits on the test's
            "params": {
                "gates": [
                    "{{ inputs.marks }}",
                    "{{ inputs.marks }}",
                    "{{ inputs.gate }}",
                    "{{ inputs.marks }}",
                ]
            },  # fmt: skip
        },
        {
            "id": "each",
            "map": {"over": "{{ steps.list.output.gates }}", "as": "gate", "max_parallel": 1},
            "plugin": "builtin",
            "method": "call",
            "params": {
                "function": "tests.helpers:mark_then_wait",
                "kwargs": {
                    "path": "{{ inputs.marks }}",
                    "tag": "{{ run.id }}:each{{ map.index }}",
                    "gate": "{{ gate }}",
                },
            },
            "timeout": 600,
        },
    ],
}


def test_a_mapped_step_recovered_mid_way_runs_only_the_items_that_had_not_completed(
    fleet: Fleet,
) -> None:
    # Before: the items' hot state was not rebuilt, so the mapped step expanded afresh and ran
    # every item again, the completed ones too.
    gate = fleet.tmp / "gate-items"
    run = str(fleet.client.submit(MAPPED, inputs={"marks": str(fleet.marks), "gate": str(gate)}).id)
    wait_for(
        "items 0 and 1 COMPLETED and item 2 RUNNING in the audit store",
        lambda: (
            {k: v for k, v in fleet.steps(run).items() if k.startswith("each[")}
            == {"each[0]": "COMPLETED", "each[1]": "COMPLETED", "each[2]": "RUNNING"}
        ),
    )
    fleet.lose_redis()
    done = fleet.recover()
    assert done.returncode == 0 and f"recovered {run} (RUNNING" in done.stdout, (
        done.stdout + done.stderr
    )
    gate.touch()
    wait_for("the run COMPLETED", lambda: fleet.status(run) == "COMPLETED")
    assert fleet.ran(run) == {"each0": 1, "each1": 1, "each2": 2, "each3": 1}
    snap = fleet.client.get_run(run).snapshot()
    assert snap.step("each").output == [{"tag": f"{run}:each{i}"} for i in range(4)]
    with fleet.store.connect() as conn:
        attempts = {
            (r[0], r[1]): r[2]
            for r in conn.execute(
                select(
                    step_attempts.c.step_id, step_attempts.c.attempt, step_attempts.c.status
                ).where(step_attempts.c.run_id == run, step_attempts.c.step_id.like("each[%"))
            )
        }
    # the item attempts are in the items' own list in Redis, not among the steps'
    hot_steps = {a["step"] for a in fleet.client.state.read(run)[2]}  # type: ignore[index]
    assert hot_steps == {"list", "each"}, hot_steps
    assert attempts == {
        ("each[0]", 1): "COMPLETED",
        ("each[1]", 1): "COMPLETED",
        ("each[2]", 1): "LOST",
        ("each[2]", 2): "COMPLETED",
        ("each[3]", 1): "COMPLETED",
    }
