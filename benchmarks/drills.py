"""Failure drills and a soak against a real fleet, printing one table (docs/operations.md, "Drills").

    python benchmarks/drills.py                                   # every drill, PostgreSQL
    python benchmarks/drills.py --drills worker_kill,recorder --database sqlite
    python benchmarks/drills.py --drills soak --soak-runs 500     # a short soak while developing
    python benchmarks/drills.py --drills soak --compare DIR       # the run list of DIR's code too
    python benchmarks/drills.py --smoke                           # tiny: does every drill still run?

Slow (minutes), not part of CI. Each drill gets a fleet of its own: a private redis-server with
AOF on a fixed port (so it can be stopped and started again in place), a fresh audit store
(PostgreSQL database ``canvasflow_drills`` on 127.0.0.1:5432, dropped and re-created, or a SQLite
file with ``--database sqlite``; ``both`` runs each drill on each), real prefork worker processes,
a recorder process and, for the soak, ``python -m web`` (gevent). The drills:

- ``worker_kill``: runs of sleeping steps; one worker is SIGKILLed (its whole process group) while
  it runs steps, a replacement starts; every run must complete, no step twice.
- ``redis_restart``: 20 runs in flight; Redis is shut down (SIGTERM: the AOF is fsynced), kept
  down ~3 s and started again on the same port from the same AOF; every run must complete (a
  watchdog runs, as in the Procfile fleet, and re-dispatches a run whose message kombu lost).
- ``redis_lost``: 50 runs in flight (some steps done, some running, most queued); Redis is
  killed (SIGKILL), its AOF deleted and started again empty; ``canvasflow recover`` rebuilds the
  runs from the audit store; every run must complete, no completed step run again (a second
  COMPLETED attempt of a step counts as duplicated), and every run has its ``recovered`` row
  in the audit log.
- ``recorder``: runs while the recorder is stopped (SIGTERM) and later SIGKILLed mid-stream, each
  time started again; afterwards every event and attempt of every run must be in SQL exactly once.
- ``soak``: ``--soak-runs`` (5,000) three-step runs through two workers while a client requests
  ``GET /api/v1/runs`` as the dashboard does (``view=active&limit=50``, and ``view=all``) and
  records each latency: p50 / p95 / p99.

Columns: tried (runs), survived (completed, and in SQL complete), lost (runs that did not complete
or whose audit is incomplete), duplicated (steps that completed more than once, and events or
attempts in SQL more than once), notes. Worker loss is recovered through ``--visibility-timeout``
and ``--lease-ttl`` (docs/operations.md, "Worker loss"); the defaults here are short so a drill
takes seconds, not the five minutes of the fleet's defaults.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import redis  # noqa: E402
import requests  # noqa: E402
from bench_web import LOOP_TRACER, free_port, fresh_postgres, loop_stretches, pct  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from orchestrator import Client  # noqa: E402
from orchestrator.audit.models import audit_log, step_attempts  # noqa: E402
from orchestrator.audit.models import events as events_table  # noqa: E402
from orchestrator.audit.models import runs as runs_table  # noqa: E402
from orchestrator.audit.store import AuditStore  # noqa: E402
from orchestrator.cli.launcher import Fleet  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/canvasflow_drills"
PASSWORD = "drill-password"
DRILLS = ("worker_kill", "redis_restart", "redis_lost", "recorder", "soak")

# --profile: the web process under cProfile (all greenlets: one thread), with the server-side wall
# time of every GET /api/v1/runs, so a client's latency splits into handler time and the rest.
WEB_PROFILER = r"""
import atexit, cProfile, json, os, sys, time
from gevent import monkey
monkey.patch_all()
_dir = os.environ["CF_PROFILE_DIR"]
_prof = cProfile.Profile()
atexit.register(lambda: (_prof.disable(), _prof.dump_stats(os.path.join(_dir, "web.prof"))))
_log = open(os.path.join(_dir, "requests.jsonl"), "a", buffering=1)
import web.app as _app
_create = _app.create_app
def create_app(*a, **k):
    app = _create(*a, **k)
    inner = app.wsgi_app
    def timed(environ, start_response):
        t = time.perf_counter()
        try:
            return inner(environ, start_response)
        finally:
            if environ.get("PATH_INFO") == "/api/v1/runs":
                _log.write(json.dumps({"t": time.time(), "ms": round((time.perf_counter() - t) * 1000, 2),
                                       "q": environ.get("QUERY_STRING")}) + "\n")
    app.wsgi_app = timed
    return app
_app.create_app = create_app
_prof.enable()
import runpy
runpy.run_module("web", run_name="__main__", alter_sys=True)
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class AofRedis:
    """redis-server with appendonly on a fixed port: stop() and start() again keep the data
    (orchestrator.cli.embedded.EmbeddedRedis runs without persistence on a fresh port each time)."""

    def __init__(
        self, work: Path, bind: tuple[str, ...] = ("127.0.0.1",), password: str = ""
    ) -> None:
        self.port = free_port()
        self.bind = bind
        # Off loopback, Redis's protected mode refuses clients that do not authenticate.
        self.password = password
        self.dir = work / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://{':' + password + '@' if password else ''}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                *self.bind,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                *(("--requirepass", self.password) if self.password else ()),
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                # Loading a big AOF answers LOADING errors first; ready means it answers PING.
                if client.ping():
                    client.close()
                    return
            except (redis.RedisError, OSError):
                time.sleep(0.05)
        raise SystemExit(
            f"redis-server on port {self.port} did not start; see {self.dir / 'redis.log'}"
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)
        self.proc = None


@dataclass
class Row:
    drill: str
    tried: int = 0
    survived: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


class Rig:
    """One drill's fleet: Redis (AOF), a fresh audit store, workers, a recorder, a web process."""

    def __init__(
        self,
        args: argparse.Namespace,
        name: str,
        database: str,
        *,
        bind: tuple[str, ...] = ("127.0.0.1",),
        password: str = "",
        key_prefix: str = "dr",
    ) -> None:
        """``bind``/``password``: Redis listening beyond loopback (drill_hosts.py's worker hosts
        reach it over their links)."""
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix=f"cf-drill-{name}-"))
        self.redis = AofRedis(self.work, bind=bind, password=password)
        self.redis.start()
        if database == "postgresql":
            self.database_url = args.postgres_url
            fresh_postgres(self.database_url)
        else:
            self.database_url = f"sqlite:///{self.work / 'audit.db'}"
        self.settings = Settings(
            redis_url=self.redis.url,
            database_url=self.database_url,
            key_prefix=key_prefix,
            visibility_timeout=args.visibility_timeout,
            lease_ttl=args.lease_ttl,
        )
        self.store = AuditStore(self.database_url)
        self.store.upgrade()
        os.environ.update(
            {
                "CANVASFLOW_WEB_ADMIN_PASSWORD": PASSWORD,
                "CANVASFLOW_WEB_SECRET_KEY": f"drill-{name}",
                "CANVASFLOW_LOG_LEVEL": "WARNING",
            }
        )
        self.fleet = Fleet(self.settings, self.work / "logs")
        self.client = Client(self.settings)
        self.r = self.client.redis

    def worker(self, name: str, concurrency: int = 2) -> str:
        return self.fleet.start_worker(name, concurrency=concurrency)

    def recorder(self, name: str = "recorder") -> None:
        """``canvasflow recorder``, taking over a dead recorder's entries after ``--claim-idle``."""
        self.fleet.spawn(
            name,
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "recorder",
                "--claim-idle",
                str(self.args.claim_idle),
            ],
        )

    def watchdog(self, stall: int) -> None:
        """``canvasflow watchdog``, as the Procfile fleet runs it, with a short stall time."""
        self.fleet.spawn(
            "watchdog",
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "watchdog",
                "--stall-seconds",
                str(stall),
                "--interval",
                "1",
            ],
        )

    def redispatched(self, run_ids: list[str]) -> int:
        """Runs of ``run_ids`` the watchdog re-dispatched (``run_redispatched`` in SQL)."""
        with self.store.connect() as conn:
            return int(
                conn.execute(
                    select(func.count(func.distinct(events_table.c.run_id))).where(
                        events_table.c.run_id.in_(run_ids),
                        events_table.c.type == "run_redispatched",
                    )
                ).scalar()
                or 0
            )

    def web(
        self,
        name: str,
        port: int,
        path: Path | None = None,
        profile: Path | None = None,
        trace_loop: float | None = None,
    ) -> str:
        """``python -m web`` (gevent) on ``port``; ``path``: a checkout whose web/ and orchestrator/
        it runs instead of this one's (the comparison of --compare); ``profile``: a directory for
        WEB_PROFILER's output."""
        argv = [sys.executable, "-m", "web", "--port", str(port)]
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            os.environ["CF_PROFILE_DIR"] = str(profile)
            argv[1:3] = ["-c", WEB_PROFILER]
        elif trace_loop is not None:
            os.environ.update(
                CF_TRACE_LOOP_MS=str(trace_loop), CF_TRACE_LOOP_OUT=str(self.work / "loop.jsonl")
            )
            argv[1:3] = ["-c", LOOP_TRACER]
        if path is None:
            self.fleet.spawn(name, argv)
        else:
            env = {**self.fleet._env(), "PYTHONPATH": str(path)}
            log = open(self.work / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
            self.fleet.procs[name] = subprocess.Popen(
                argv,
                env=env,
                cwd=str(path),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/api/v1/health", timeout=1).ok:
                    return url
            except requests.RequestException:
                pass
            if self.fleet.procs[name].poll() is not None:
                break
            time.sleep(0.2)
        raise SystemExit(
            f"web process {name} did not start; see {self.work / 'logs' / (name + '.log')}"
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.fleet.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def recorder_caught_up(self, timeout: float) -> bool:
        """True once the recorder group has read and acknowledged every entry of the stream."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                groups = self.r.xinfo_groups(self.client.keys.events)
            except redis.RedisError:
                groups = []
            for g in groups:
                if (
                    g["name"] in (b"cf-recorder", "cf-recorder")
                    and g["pending"] == 0
                    and g.get("lag") == 0
                ):
                    return True
            time.sleep(0.5)
        return False

    def close(self) -> None:
        self.fleet.stop()
        self.client.close()
        self.store.dispose()
        self.redis.stop()


def workflow(wid: str, steps: int, seconds: float) -> dict[str, Any]:
    if seconds:
        step = {"plugin": "builtin", "method": "sleep", "params": {"seconds": seconds}}
    else:
        step = {"plugin": "builtin", "method": "echo", "params": {"n": 1}}
    return {
        "id": wid,
        "mode": "sequential",
        "steps": [{"id": f"s{i}", **step} for i in range(steps)],
    }


def wait_all(rig: Rig, run_ids: list[str], timeout: float) -> dict[str, str]:
    """Final (or last seen) status of each run, waiting at most ``timeout`` for all to rest."""
    resting = {"COMPLETED", "FAILED", "CANCELLED", "COMPENSATION_FAILED", "PAUSED"}
    deadline = time.monotonic() + timeout
    status: dict[str, str] = {}
    while True:
        try:
            pipe = rig.r.pipeline(transaction=False)
            for rid in run_ids:
                pipe.hget(rig.client.keys.run(rid), "status")
            status = {
                rid: (s.decode() if s else "MISSING")
                for rid, s in zip(run_ids, pipe.execute(), strict=True)
            }
        except redis.RedisError:
            pass
        if status and all(s in resting for s in status.values()) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


@dataclass
class Verdict:
    completed: set[str]
    twice: int  # steps that completed in more than one attempt
    reruns: int  # attempts beyond the first
    audit_bad: set[str]  # runs whose SQL events or attempts differ from the hot state
    events_missing: int
    events_extra: int
    attempts_missing: int
    attempts_extra: int
    attempts_abandoned: dict[str, int] = field(
        default_factory=dict
    )  # SQL status of attempts Redis never listed


def verdict(rig: Rig, run_ids: list[str], status: dict[str, str], audit: bool) -> Verdict:
    """Compare each run's hot state (Redis) with what the recorder wrote (SQL)."""
    twice = reruns = 0
    hot_seq: dict[str, int] = {}
    hot_attempts: dict[str, set[tuple[str, int]]] = {}
    for rid in run_ids:
        data = rig.client.state.read(rid)
        if data is None:
            continue
        run, _, attempts = data
        hot_seq[rid] = run.seq
        done: dict[str, int] = {}
        for a in attempts:
            if a.get("status") == "COMPLETED":
                done[a["step"]] = done.get(a["step"], 0) + 1
            if int(a.get("attempt", 1)) > 1:
                reruns += 1
        twice += sum(1 for n in done.values() if n > 1)
        hot_attempts[rid] = {(a["step"], int(a["attempt"])) for a in attempts}
    v = Verdict(
        {r for r, s in status.items() if s == "COMPLETED"}, twice, reruns, set(), 0, 0, 0, 0
    )
    if not audit:
        return v
    sql_events: dict[str, tuple[int, int]] = {}
    sql_attempts: dict[str, list[tuple[str, int]]] = {}
    sql_attempt_status: dict[tuple[str, str, int], str] = {}
    with rig.store.connect() as conn:
        for chunk in range(0, len(run_ids), 500):
            ids = run_ids[chunk : chunk + 500]
            q = (
                select(
                    events_table.c.run_id,
                    func.count(),
                    func.count(func.distinct(events_table.c.seq)),
                )
                .where(events_table.c.run_id.in_(ids), events_table.c.seq > 0)
                .group_by(events_table.c.run_id)
            )
            for rid, n, distinct in conn.execute(q):
                sql_events[rid] = (int(n), int(distinct))
            q2 = select(
                step_attempts.c.run_id,
                step_attempts.c.step_id,
                step_attempts.c.attempt,
                step_attempts.c.status,
            ).where(step_attempts.c.run_id.in_(ids))
            for rid, sid, n, st in conn.execute(q2):
                sql_attempts.setdefault(rid, []).append((sid, int(n)))
                sql_attempt_status[(rid, sid, int(n))] = st
    for rid in run_ids:
        n, distinct = sql_events.get(rid, (0, 0))
        want = hot_seq.get(rid, 0)
        missing, extra = max(0, want - distinct), n - distinct + max(0, distinct - want)
        rows = sql_attempts.get(rid, [])
        a_missing = len(hot_attempts.get(rid, set()) - set(rows))
        # Redis lists an attempt when it ends: one whose worker was killed is in SQL (from its
        # step_started event) and not there. That is the lost attempt's record, not a duplicate.
        for sid, n in set(rows) - hot_attempts.get(rid, set()):
            st = sql_attempt_status[(rid, sid, n)]
            v.attempts_abandoned[st] = v.attempts_abandoned.get(st, 0) + 1
        a_extra = len(rows) - len(set(rows))
        v.events_missing += missing
        v.events_extra += extra
        v.attempts_missing += a_missing
        v.attempts_extra += a_extra
        if missing or extra or a_missing or a_extra:
            v.audit_bad.add(rid)
    return v


def fill(row: Row, v: Verdict, run_ids: list[str], status: dict[str, str]) -> None:
    row.tried = len(run_ids)
    ok = v.completed - v.audit_bad
    row.survived = len(ok)
    row.lost = row.tried - row.survived
    row.duplicated = v.twice + v.events_extra + v.attempts_extra
    stuck: dict[str, int] = {}
    for s in status.values():
        if s != "COMPLETED":
            stuck[s] = stuck.get(s, 0) + 1
    if stuck:
        row.notes.append(
            "not completed: " + ", ".join(f"{n} {s}" for s, n in sorted(stuck.items()))
        )
    row.notes.append(
        f"SQL: {v.events_missing} events / {v.attempts_missing} attempts missing, "
        f"{v.events_extra} / {v.attempts_extra} extra"
    )
    if v.attempts_abandoned:
        row.notes.append(
            "attempts in SQL that never ended: "
            + ", ".join(f"{n} {s}" for s, n in sorted(v.attempts_abandoned.items()))
        )
    if v.reruns:
        row.notes.append(f"{v.reruns} re-run attempts")
    row.figures.update(
        events_missing=v.events_missing,
        events_extra=v.events_extra,
        attempts_missing=v.attempts_missing,
        attempts_extra=v.attempts_extra,
        steps_completed_twice=v.twice,
        reruns=v.reruns,
        statuses=stuck,
    )


# -- the drills ---------------------------------------------------------------------------------


def drill_worker_kill(args: argparse.Namespace, database: str) -> Row:
    row = Row(f"worker SIGKILL mid-step ({database})")
    rig = Rig(args, "worker", database)
    try:
        rig.recorder()
        first = rig.worker("first")
        rig.worker("second")
        wf = workflow("drill_sleep", 3, 1.0)
        ids = [rig.client.submit(wf).id for _ in range(args.worker_runs)]
        # Kill once the first worker holds steps: its messages are unacknowledged (acks_late).
        deadline = time.monotonic() + 60
        held = 0
        while time.monotonic() < deadline and held < 2:
            held = sum(
                1
                for rid in ids
                for s in rig.client.snapshot(rid).steps
                if s.status == "RUNNING" and (s.worker or "").startswith(first)
            )
            time.sleep(0.1)
        killed_at = time.time()
        rig.kill("first")
        say(f"worker_kill: SIGKILLed {first} holding {held} running steps")
        rig.worker("replacement")
        status = wait_all(rig, ids, args.visibility_timeout + 3 * args.lease_ttl + 90)
        rig.recorder_caught_up(90)
        v = verdict(rig, ids, status, audit=True)
        fill(row, v, ids, status)
        late = [
            a["started_at"] - killed_at
            for rid in ids
            for a in (rig.client.state.read(rid) or ({}, {}, []))[2]
            if int(a.get("attempt", 1)) > 1 and a.get("started_at")
        ]
        row.notes.insert(
            0,
            f"{held} steps running on the killed worker; re-run "
            f"{min(late):.0f}-{max(late):.0f} s after the kill"
            if late
            else f"{held} steps running on the killed worker; none re-run",
        )
        row.notes.append(
            f"visibility_timeout {args.visibility_timeout} s, lease_ttl {args.lease_ttl} s"
        )
    finally:
        rig.close()
    return row


def drill_redis_restart(args: argparse.Namespace, database: str) -> Row:
    row = Row(f"Redis restart, AOF ({database})")
    rig = Rig(args, "redis", database)
    try:
        rig.recorder()
        # The fleet as the Procfile runs it: kombu's Redis transport pops a message (BRPOP) and
        # then records it unacknowledged in a second command, so a message popped as Redis stops
        # is gone (kombu issue 305); its run stalls and the watchdog re-dispatches it. A CI run
        # without a watchdog left one run of three RUNNING.
        rig.watchdog(args.watchdog_stall)
        rig.worker("first")
        rig.worker("second")
        wf = workflow("drill_redis", 4, 0.5)
        ids = [rig.client.submit(wf).id for _ in range(args.redis_runs)]
        time.sleep(1.5)  # every run started, some steps running, most still queued
        running = sum(1 for s in wait_all(rig, ids, 0).values() if s == "RUNNING")
        t0 = time.monotonic()
        rig.redis.stop(signal.SIGTERM)
        time.sleep(args.redis_down)
        rig.redis.start()
        down = time.monotonic() - t0
        say(f"redis_restart: Redis down {down:.1f} s with {running} of {len(ids)} runs RUNNING")
        status = wait_all(rig, ids, args.visibility_timeout + 3 * args.lease_ttl + 90)
        rig.recorder_caught_up(90)
        v = verdict(rig, ids, status, audit=True)
        fill(row, v, ids, status)
        row.notes.insert(0, f"down {down:.1f} s, {running} runs RUNNING then")
        again = rig.redispatched(ids)
        row.figures["redispatched"] = again
        row.notes.insert(
            1, f"{again} re-dispatched by the watchdog (stall {args.watchdog_stall} s)"
        )
        for name, proc in rig.fleet.procs.items():
            if proc.poll() is not None:
                why = [
                    ln
                    for ln in rig.fleet.logs[name].read_text(errors="replace").splitlines()
                    if "Unrecoverable error" in ln or "CRITICAL" in ln
                ][:1]
                row.notes.append(
                    f"process '{name}' exited"
                    + (f" ({why[0].split(': ', 1)[-1][:120]})" if why else "")
                )
    finally:
        rig.close()
    return row


def drill_redis_lost(args: argparse.Namespace, database: str) -> Row:
    row = Row(f"Redis lost, recover ({database})")
    rig = Rig(args, "redis-lost", database)
    try:
        rig.recorder()
        rig.worker("first")
        rig.worker("second")
        wf = workflow("drill_redis_lost", 4, args.lost_step_seconds)
        ids = [rig.client.submit(wf).id for _ in range(args.lost_runs)]
        # Lose Redis once the audit store shows some steps completed and the recorder has written
        # everything (what it had not written yet would be lost with Redis): steps of a few
        # seconds leave it many moments with nothing pending.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with rig.store.connect() as conn:
                done = int(
                    conn.execute(
                        select(func.count())
                        .select_from(step_attempts)
                        .where(step_attempts.c.status == "COMPLETED")
                    ).scalar()
                    or 0
                )
            # ...and while runs are still in flight: on a loaded machine the recorder caught up
            # only once every run had ended once (a CI run), which tests no recovery at all.
            unfinished = [
                i
                for i in ids
                if rig.client.state.status(i) not in ("COMPLETED", "FAILED", "CANCELLED")
            ]
            if done >= 2 and unfinished and rig.recorder_caught_up(0.5):
                break
            time.sleep(0.1)
        with rig.store.connect() as conn:
            before = {
                (r, s)
                for r, s in conn.execute(
                    select(step_attempts.c.run_id, step_attempts.c.step_id).where(
                        step_attempts.c.status == "COMPLETED"
                    )
                )
            }
            live_ids = {
                rid
                for (rid,) in conn.execute(
                    select(runs_table.c.id).where(
                        runs_table.c.status.not_in(["COMPLETED", "FAILED", "CANCELLED"])
                    )
                )
            }
        live = len(live_ids)
        rig.redis.stop(signal.SIGKILL)
        for p in rig.redis.dir.iterdir():
            if p.name.startswith(("appendonly", "dump")):
                subprocess.run(["rm", "-rf", str(p)], check=True)
        rig.redis.start()
        say(f"redis_lost: Redis restarted empty with {live} runs live, {len(before)} steps done")
        t0 = time.monotonic()
        rec = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "recover", "--reason", "drill"],
            env={**rig.fleet._env(), "CANVASFLOW_ACTOR": "drill"},
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=600,
        )
        took = time.monotonic() - t0
        if rec.returncode != 0:
            row.notes.append(f"recover exited {rec.returncode}: {rec.stderr.strip()[-300:]}")
        summary = (rec.stdout.strip().splitlines() or ["(no output)"])[-1]
        status = wait_all(rig, ids, args.visibility_timeout + 3 * args.lease_ttl + 120)
        rig.recorder_caught_up(90)
        v = verdict(rig, ids, status, audit=True)
        fill(row, v, ids, status)
        with rig.store.connect() as conn:
            audited = {
                t
                for (t,) in conn.execute(
                    select(audit_log.c.target_id).where(audit_log.c.action == "recovered")
                )
            }
        unaudited = live_ids - audited
        row.notes.insert(
            0,
            f"{live} runs live and {len(before)} steps completed when Redis was lost; "
            f"`canvasflow recover` {took:.1f} s: {summary}; "
            f"{len(audited & live_ids)} of them with a 'recovered' audit row",
        )
        row.figures.update(recover_seconds=round(took, 2), live=live, recovered_audit=len(audited))
        if unaudited:  # a live run recover did not rebuild (it completed without it?)
            row.notes.append(f"{len(unaudited)} live runs without a 'recovered' audit row")
            row.lost += len(unaudited)
            row.survived -= len(unaudited)
    finally:
        rig.close()
    return row


def drill_recorder(args: argparse.Namespace, database: str) -> Row:
    row = Row(f"recorder down, then killed ({database})")
    rig = Rig(args, "recorder", database)
    try:
        rig.recorder("rec1")
        rig.worker("first")
        wf = workflow("drill_recorder", 5, 0.0)
        ids: list[str] = []
        stop = threading.Event()

        def submit() -> None:
            client = Client(rig.settings)
            try:
                while not stop.is_set() and len(ids) < args.recorder_runs:
                    ids.append(client.submit(wf).id)
                    time.sleep(args.recorder_interval)
            finally:
                client.close()

        t = threading.Thread(target=submit, daemon=True)
        t.start()
        time.sleep(2)
        rig.kill("rec1", signal.SIGTERM)  # down: a clean stop, the batch in hand committed
        time.sleep(args.recorder_down)
        rig.recorder("rec2")
        time.sleep(2)
        # Killed while it holds a batch read and not yet acknowledged: those entries stay pending
        # until another recorder claims them (after --claim-idle, 30 s).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not int(
            rig.r.xpending(rig.client.keys.events, "cf-recorder")["pending"]
        ):
            time.sleep(0.002)
        rig.kill("rec2", signal.SIGKILL)
        orphaned = int(rig.r.xpending(rig.client.keys.events, "cf-recorder")["pending"])
        time.sleep(args.recorder_down)
        rig.recorder("rec3")
        t.join()
        status = wait_all(rig, ids, 120)
        # The killed one's entries come back after --claim-idle.
        caught = rig.recorder_caught_up(120)
        v = verdict(rig, ids, status, audit=True)
        fill(row, v, ids, status)
        with rig.store.connect() as conn:
            recorded = conn.execute(
                select(func.count()).select_from(runs_table).where(runs_table.c.id.in_(ids))
            ).scalar_one()
        row.notes.insert(
            0,
            f"stopped {args.recorder_down:g} s, then SIGKILLed holding {orphaned} unacknowledged "
            f"entries and down {args.recorder_down:g} s; "
            f"{recorded} runs in SQL{'' if caught else ', recorder NOT caught up'}",
        )
    finally:
        rig.close()
    return row


def drill_soak(args: argparse.Namespace, database: str) -> Row:
    row = Row(f"soak, {args.soak_runs:,} runs ({database})")
    rig = Rig(args, "soak", database)
    try:
        rig.recorder()
        rig.worker("first")
        rig.worker("second")
        if args.no_fleet_events:
            os.environ["CANVASFLOW_WEB_FLEET_EVENTS"] = "false"
        targets = {
            "now": rig.web(
                "web",
                free_port(),
                profile=Path(args.profile) if args.profile else None,
                trace_loop=args.trace_loop,
            )
        }
        if args.compare:
            targets["before"] = rig.web("web-before", free_port(), Path(args.compare).resolve())
        sessions = {}
        for label, url in targets.items():
            http = requests.Session()
            r = http.post(
                f"{url}/api/v1/auth/login",
                json={"username": "admin", "password": PASSWORD},
                timeout=30,
            )
            r.raise_for_status()
            sessions[label] = http
        wf = workflow("drill_soak", 3, 0.0)
        # The submitter is a process of its own: in this one its CPU (the GIL) would be counted in
        # the latencies measured here.
        ctx = multiprocessing.get_context("spawn")
        out: Any = ctx.Queue()
        progress = ctx.Value("i", 0)
        t = ctx.Process(
            target=soak_submitter,
            args=(rig.settings, wf, args.soak_runs, args.soak_inflight, out, progress),
            daemon=True,
        )
        t0 = time.monotonic()
        web_procs = {
            "now": rig.fleet.procs["web"],
            **({"before": rig.fleet.procs["web-before"]} if args.compare else {}),
        }
        cpu0 = {label: cpu_seconds(p.pid) for label, p in web_procs.items()}
        t.start()
        lat: dict[str, dict[str, list[float]]] = {
            label: {"active": [], "all": []} for label in targets
        }
        sizes: list[int] = []
        while t.is_alive() and progress.value < args.soak_runs:
            for view in ("active", "all"):
                for label, http in sessions.items():
                    start = time.perf_counter()
                    resp = http.get(
                        f"{targets[label]}/api/v1/runs",
                        params={"view": view, "limit": 50},
                        timeout=30,
                    )
                    lat[label][view].append(time.perf_counter() - start)
                    resp.raise_for_status()
                    if view == "active" and label == "now":
                        sizes.append(len(resp.json()["runs"]))
            time.sleep(args.soak_poll)
        elapsed = time.monotonic() - t0
        row.figures["web_cpu_percent"] = {
            label: round(100 * (cpu_seconds(p.pid) - cpu0[label]) / elapsed)
            for label, p in web_procs.items()
        }
        row.figures["load_average"] = os.getloadavg()[0]
        if args.trace_loop is not None:
            row.figures["loop"] = loop_stretches(
                rig.work / "loop.jsonl", time.time() - elapsed, time.time()
            )
        ids = out.get(timeout=120)
        t.join(30)
        status = wait_all(rig, ids, 300)
        rig.recorder_caught_up(120)
        # The same requests once the fleet is idle: what the list costs without the load.
        idle: dict[str, list[float]] = {label: [] for label in targets}
        for _ in range(30):
            for label, http in sessions.items():
                start = time.perf_counter()
                http.get(
                    f"{targets[label]}/api/v1/runs", params={"view": "all", "limit": 50}, timeout=30
                ).raise_for_status()
                idle[label].append(time.perf_counter() - start)
        v = verdict(rig, ids, status, audit=True)
        fill(row, v, ids, status)
        figures: dict[str, Any] = {}
        for label, values in idle.items():
            ms = sorted(x * 1000 for x in values)
            figures[f"{label}_idle_all"] = {
                "n": len(ms),
                "p50": round(pct(ms, 0.5), 1),
                "p95": round(pct(ms, 0.95), 1),
                "max": round(ms[-1], 1),
            }
        for label in targets:
            for view, values in lat[label].items():
                ms = sorted(x * 1000 for x in values)
                figures[f"{label}_{view}"] = {
                    "n": len(ms),
                    "p50": round(pct(ms, 0.5), 1),
                    "p95": round(pct(ms, 0.95), 1),
                    "p99": round(pct(ms, 0.99), 1),
                    "max": round(ms[-1], 1) if ms else None,
                }
        row.figures["run_list_ms"] = figures
        row.figures["submitted_per_s"] = round(len(ids) / elapsed, 1)
        row.figures["active_page_rows_mean"] = round(sum(sizes) / max(1, len(sizes)), 1)
        a = figures["now_active"]
        note = f"GET /api/v1/runs?view=active p50/p95/p99 {a['p50']}/{a['p95']}/{a['p99']} ms (n={a['n']})"
        if "before_active" in figures:
            b = figures["before_active"]
            note += f", before {b['p50']}/{b['p95']}/{b['p99']} ms"
        note += f"; idle afterwards p50 {figures['now_idle_all']['p50']} ms"
        if "before_idle_all" in figures:
            note += f" (before {figures['before_idle_all']['p50']} ms)"
        row.notes.insert(0, note)
        row.notes.insert(
            1,
            f"{len(ids) / elapsed:.0f} runs/s for {elapsed:.0f} s, ≤ {args.soak_inflight} in flight, "
            f"web process CPU {row.figures['web_cpu_percent']['now']} %",
        )
    finally:
        rig.close()
    return row


def soak_submitter(
    settings: Settings, wf: dict[str, Any], n: int, inflight: int, out: Any, progress: Any
) -> None:
    """Submit ``n`` runs at the fleet's pace (at most ``inflight`` unfinished); put their ids on ``out``."""
    client = Client(settings)
    ids: list[str] = []
    try:
        while len(ids) < n:
            pipe = client.redis.pipeline(transaction=False)
            for rid in ids[-inflight:]:
                pipe.hget(client.keys.run(rid), "status")
            active = sum(1 for s in pipe.execute() if s not in (b"COMPLETED", b"FAILED"))
            for _ in range(min(inflight - active, n - len(ids), 50)):
                ids.append(client.submit(wf).id)
            progress.value = len(ids)
            time.sleep(0.05)
    finally:
        out.put(ids)
        client.close()


RUNNERS = {
    "worker_kill": drill_worker_kill,
    "redis_restart": drill_redis_restart,
    "recorder": drill_recorder,
    "soak": drill_soak,
    "redis_lost": drill_redis_lost,
}


def table(rows: list[Row]) -> str:
    lines = [
        "| drill | tried | survived | lost | duplicated | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.drill} | {r.tried:,} | {r.survived:,} | {r.lost:,} | {r.duplicated:,} | "
            f"{'; '.join(r.notes)} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--drills", default=",".join(DRILLS), help=f"comma-separated, of: {', '.join(DRILLS)}"
    )
    ap.add_argument("--database", choices=["postgresql", "sqlite", "both"], default="postgresql")
    ap.add_argument("--postgres-url", default=PG_URL, help="dropped and re-created by each drill")
    ap.add_argument("--visibility-timeout", type=int, default=10)
    ap.add_argument("--lease-ttl", type=int, default=6)
    ap.add_argument("--worker-runs", type=int, default=10)
    ap.add_argument("--redis-runs", type=int, default=20)
    ap.add_argument("--redis-down", type=float, default=3.0, help="seconds Redis stays down")
    ap.add_argument(
        "--watchdog-stall", type=int, default=20, help="redis_restart: the watchdog's stall time"
    )
    ap.add_argument("--lost-runs", type=int, default=50, help="redis_lost: runs in flight")
    ap.add_argument("--lost-step-seconds", type=float, default=2.0, help="redis_lost: step length")
    ap.add_argument("--recorder-runs", type=int, default=200)
    ap.add_argument("--recorder-interval", type=float, default=0.05, help="seconds between submits")
    ap.add_argument("--recorder-down", type=float, default=3.0)
    ap.add_argument(
        "--claim-idle",
        type=float,
        default=30.0,
        help="a recorder takes over entries a dead one left pending this many seconds",
    )
    ap.add_argument("--soak-runs", type=int, default=5000)
    ap.add_argument(
        "--soak-inflight", type=int, default=200, help="runs unfinished at once, at most"
    )
    ap.add_argument(
        "--soak-poll", type=float, default=0.1, help="pause between two run-list requests"
    )
    ap.add_argument(
        "--compare",
        default=None,
        metavar="DIR",
        help="soak: also serve the run list from DIR's code (a checkout of an older commit) and "
        "request both alternately, for a before/after ratio in one run",
    )
    ap.add_argument(
        "--no-fleet-events",
        action="store_true",
        help="soak: web processes without the Celery task history capture (what it costs them)",
    )
    ap.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="soak: run the web process under cProfile (DIR/web.prof) and log the server-side "
        "time of each run-list request (DIR/requests.jsonl)",
    )
    ap.add_argument(
        "--trace-loop",
        type=float,
        default=None,
        metavar="MS",
        help="soak: record every stretch of MS ms or more in which one greenlet held the web "
        "process's loop (benchmarks/bench_web.py's tracer); reported under figures.loop",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="each drill at a tiny size with 3 s timeouts: does every drill still run?",
    )
    args = ap.parse_args()
    if args.smoke:
        args.visibility_timeout, args.lease_ttl, args.claim_idle = 3, 3, 2.0
        # 4 runs: the first worker's two pool processes hold a step each when it is killed
        args.worker_runs, args.redis_runs, args.redis_down = 4, 3, 1.0
        args.watchdog_stall = 5
        args.lost_runs = 6
        args.recorder_runs, args.recorder_down = 100, 1.0
        args.soak_runs, args.soak_inflight = 20, 10
    chosen = [d.strip() for d in args.drills.split(",") if d.strip()]
    unknown = [d for d in chosen if d not in RUNNERS]
    if unknown:
        ap.error(f"--drills: unknown {', '.join(unknown)} (known: {', '.join(DRILLS)})")
    databases = ["postgresql", "sqlite"] if args.database == "both" else [args.database]
    rows: list[Row] = []
    for drill in chosen:
        for database in databases:
            say(f"{drill} on {database}")
            row = RUNNERS[drill](args, database)
            say(
                f"{row.drill}: {row.survived}/{row.tried} survived, {row.lost} lost, {row.duplicated} duplicated; "
                f"{'; '.join(row.notes)}"
            )
            rows.append(row)
    print()
    print(
        f"`python benchmarks/drills.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d')}, "
        f"load average {os.getloadavg()[0]:.1f}:\n"
    )
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2, default=list))
    return 0 if all(r.lost == 0 and r.duplicated == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
