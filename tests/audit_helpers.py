"""Helpers for the audit store and recorder tests: synthetic events, SQL-vs-Redis checks, a
recorder subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select

from orchestrator.audit import AuditStore, Event, Lookups
from orchestrator.audit.models import events, runs, step_attempts, step_logs, steps
from orchestrator.audit.recorder import Recorder
from orchestrator.keys import Keys
from orchestrator.records import RunRecord
from orchestrator.settings import Settings
from tests.conftest import ROOT

# -- synthetic events ---------------------------------------------------------------------------


class RunEvents:
    """Builds the events one run emits, numbered like the Lua scripts number them."""

    def __init__(self, run_id: str, t0: float = 1_000_000.0) -> None:
        self.run = run_id
        self.t = t0
        self.events: list[Event] = []

    def emit(
        self, etype: str, step: str = "", status: str = "", /, *, dt: float = 0.5, **data: Any
    ) -> Event:
        self.t += dt
        e = Event(
            self.run,
            len(self.events) + 1,
            etype,
            step,
            status,
            self.t,
            json.dumps(data),
            f"{int(self.t * 1000)}-{len(self.events)}",
        )
        self.events.append(e)
        return e

    def created(self, workflow: str = "wf", version: str = "1") -> RunEvents:
        self.emit("run_created", "", "PENDING", dt=0, workflow=workflow, version=version)
        return self

    def status(self, status: str, **data: Any) -> RunEvents:
        self.emit("run_status_changed", "", status, **data)
        return self

    def step(
        self,
        step: str,
        outcome: str = "COMPLETED",
        *,
        attempts: int = 1,
        first: int = 1,
        seconds: float = 1.0,
        logs: int = 0,
        worker: str = "w1@host",
        error: str = "boom",
    ) -> RunEvents:
        for n in range(first, first + attempts):
            last = n == first + attempts - 1
            self.emit(
                "step_started",
                step,
                "RUNNING",
                attempt=n,
                worker=worker,
                task_id=f"{self.run}-{step}",
            )
            start = self.t
            for i in range(logs if last else 0):
                self.emit(
                    "log",
                    step,
                    dt=0.001,
                    message=f"{step} line {i}",
                    level="INFO",
                    entity_tag="item",
                )
            self.emit("progress", step, dt=0.001, fraction=1.0, message=None)
            self.emit("stats", step, dt=0.001, items=n, duration=seconds)
            st = outcome if last else "RETRYING"
            etype = {
                "COMPLETED": "step_completed",
                "FAILED": "step_failed",
                "RETRYING": "step_retrying",
            }[st]
            self.t = start + seconds - 0.003
            self.emit(
                etype,
                step,
                st,
                dt=0.003,
                step=step,
                attempt=n,
                status=st,
                started_at=start,
                finished_at=start + seconds,
                duration=seconds,
                worker=worker,
                task_id=f"{self.run}-{step}",
                error=None if st == "COMPLETED" else f"{error} {n}",
                stats={"items": n, "duration": seconds},
            )
        return self

    def skipped(self, step: str, reason: str = "when is false") -> RunEvents:
        self.emit("step_skipped", step, "SKIPPED", reason=reason)
        return self

    def cancelled(self, step: str) -> RunEvents:
        self.emit("step_cancelled", step, "CANCELLED")
        return self


def definition(workflow: str, step_ids: list[str], sla: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": workflow,
        "version": "1",
        "mode": "sequential",
        "steps": [{"id": s, "plugin": "builtin", "method": "echo"} for s in step_ids],
    }
    if sla is not None:
        body["sla_seconds"] = sla
    return body


def run_meta(
    workflow: str,
    step_ids: list[str],
    *,
    tags: list[str] = (),
    sla: float | None = None,
    triggered_by: str = "tests",
) -> dict[str, str]:
    """The fields of the run hash the recorder reads for a run_created event."""
    return {
        "workflow": workflow,
        "version": "1",
        "name": workflow.title(),
        "definition": json.dumps(definition(workflow, step_ids, sla)),
        "inputs": json.dumps({"n": 1}),
        "priority": "normal",
        "tags": json.dumps(sorted(tags)),
        "triggered_by": triggered_by,
        "trigger_type": "manual",
        "sla_seconds": "" if sla is None else str(sla),
    }


def mixed_runs(n: int = 6, t0: float = 1_000_000.0) -> tuple[list[Event], Lookups]:
    """Runs that succeed, retry, skip, fail and get cancelled, with logs, outputs and tracebacks."""
    evs: list[Event] = []
    lk = Lookups()
    for i in range(n):
        rid = f"run{i:03d}"
        r = RunEvents(rid, t0 + i * 100).created("etl" if i % 2 else "report")
        lk.runs[rid] = RunRecord.from_hash(
            rid,
            run_meta(
                r.events[0].data["workflow"],
                ["load", "check", "save"],
                tags=["nightly"] if i % 3 == 0 else ["adhoc"],
                sla=5.0,
            ),
        )
        r.status("RUNNING")
        kind = i % 4
        if kind == 0:
            r.step("load", logs=3).step("check").step("save")
            r.status("COMPLETED")
        elif kind == 1:
            r.step("load", attempts=3, seconds=2.0).step("check").skipped("save").status(
                "COMPLETED"
            )
        elif kind == 2:
            r.step("load").step("check", "FAILED", attempts=2).cancelled("save")
            r.status("FAILED")
            lk.run_errors[rid] = ("boom 2", "check")
            lk.tracebacks[(rid, "check")] = "Traceback: boom"
        else:
            r.step("load", seconds=9.0).status("CANCELLING").cancelled("check").cancelled("save")
            r.status("CANCELLED")
            lk.run_errors[rid] = (None, None)
        for e in r.events:
            if e.type == "step_completed":
                lk.outputs[(rid, e.step)] = json.dumps({"step": e.step, "rows": i})
        evs.extend(r.events)
    return evs, lk


# -- comparing SQL with Redis -------------------------------------------------------------------


def dump_tables(store: AuditStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every projected row (minus bookkeeping times), for comparing two stores."""
    out = {}
    with store.connect() as conn:
        for table, order in (
            (runs, [runs.c.id]),
            (steps, [steps.c.run_id, steps.c.step_id]),
            (
                step_attempts,
                [step_attempts.c.run_id, step_attempts.c.step_id, step_attempts.c.attempt],
            ),
            (step_logs, [step_logs.c.run_id, step_logs.c.seq]),
            (events, [events.c.run_id, events.c.seq]),
        ):
            cols = [c for c in table.c if c.name not in ("updated_at", "recorded_at", "stream_id")]
            out[table.name] = [tuple(r) for r in conn.execute(select(*cols).order_by(*order))]
    return out


def stream_events(client: redis.Redis, keys: Keys, run_ids: set[str]) -> list[tuple[Any, ...]]:
    """(run, seq, type, step, status, data) of every stream entry of these runs, sorted."""
    out = []
    for _, f in client.xrange(keys.events, "-", "+"):
        f = {k.decode(): v.decode() for k, v in f.items()}
        if f["run"] in run_ids:
            out.append((f["run"], int(f["seq"]), f["type"], f["step"], f["status"], f["data"]))
    return sorted(out)


def sql_events(store: AuditStore, run_ids: set[str]) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        rows = conn.execute(
            select(
                events.c.run_id,
                events.c.seq,
                events.c.type,
                events.c.step_id,
                events.c.status,
                events.c.data,
            ).where(events.c.run_id.in_(sorted(run_ids)))
        ).all()
    return sorted(tuple(r) for r in rows)


def assert_store_matches_redis(
    store: AuditStore, client: redis.Redis, keys: Keys, run_ids: set[str]
) -> None:
    """Every run and step status, attempt count, output and event count agree with Redis."""
    with store.connect() as conn:
        sql_runs = {
            r.id: r for r in conn.execute(select(runs).where(runs.c.id.in_(sorted(run_ids))))
        }
        sql_steps = {
            (r.run_id, r.step_id): r
            for r in conn.execute(select(steps).where(steps.c.run_id.in_(sorted(run_ids))))
        }
        n_attempts: dict[tuple[str, str], int] = {}
        for r in conn.execute(
            select(step_attempts.c.run_id, step_attempts.c.step_id).where(
                step_attempts.c.run_id.in_(sorted(run_ids))
            )
        ):
            n_attempts[(r.run_id, r.step_id)] = n_attempts.get((r.run_id, r.step_id), 0) + 1
    assert set(sql_runs) == run_ids
    for rid in sorted(run_ids):
        h = {k.decode(): v.decode() for k, v in client.hgetall(keys.run(rid)).items()}
        st = {k.decode(): v.decode() for k, v in client.hgetall(keys.steps(rid)).items()}
        row = sql_runs[rid]
        assert row.status == h["status"], rid
        assert row.last_seq == int(h["seq"]) == row.event_count, rid
        redis_steps = {k.rpartition("|")[0] for k in st}
        for sid in redis_steps:
            srow = sql_steps[(rid, sid)]
            assert srow.status == st[f"{sid}|status"], (rid, sid)
            assert srow.attempts == int(st.get(f"{sid}|attempts", 0)), (rid, sid)
            assert n_attempts.get((rid, sid), 0) == int(st.get(f"{sid}|attempts", 0)), (rid, sid)


# -- a recorder as a separate process -----------------------------------------------------------


class RecorderProcess:
    """``python -m orchestrator.audit.cli recorder`` (what ``canvasflow recorder`` runs)."""

    def __init__(self, settings: Settings, database_url: str, *args: str, log_dir: Path) -> None:
        env = {**os.environ, **settings.as_env(), "CANVASFLOW_DATABASE_URL": database_url}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.log_path = log_dir / f"recorder-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.audit.cli", "recorder", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll until predicate() is true; the timeout only bounds a hung test, it asserts nothing
    about speed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout}s")
        time.sleep(interval)


def group_pending(client: redis.Redis, keys: Keys, group: str) -> int:
    try:
        return int(client.xpending(keys.events, group)["pending"])
    except redis.ResponseError:
        return 0


def make_recorder(store: AuditStore, client: redis.Redis, keys: Keys, **kw: Any) -> Recorder:
    """A recorder on its own group that starts at the end of the (shared) stream."""
    last = client.xrevrange(keys.events, count=1)
    start = last[0][0].decode() if last else "0"
    kw.setdefault("group", f"g-{uuid.uuid4().hex[:8]}")
    kw.setdefault("start_id", start)
    return Recorder(store, client, keys, **kw)
