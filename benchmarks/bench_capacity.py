"""The capacity model: what one step, one run and one event cost Redis and PostgreSQL.

    python benchmarks/bench_capacity.py [--smoke] [--runs N] [--load N] [--concurrency C]
        [--postgres-url URL] [--json PATH]

On a private redis-server (orchestrator.cli.embedded.EmbeddedRedis) and one prefork worker
subprocess (bench_core.py's), with no recorder running while the engine works:

1. **engine** — for each path (``fast``: the default; ``careful``: ``CANVASFLOW_FAST_STEPS=0``,
   every step asks Redis first) and each shape (a chain of 10, a diamond a -> {b, c, d} -> e),
   ``--runs`` runs are submitted and waited for. Redis's own counters before and after give
   commands (those inside Lua scripts included, from INFO commandstats), bytes in and out
   (INFO stats ``total_net_*_bytes``, the broker's traffic included: the same Redis is Celery's
   broker and result backend) and the CPU of Redis's main thread (INFO cpu), per step, per run
   and per event (the events the runs appended to the stream).
2. **recorder** — after each batch one recorder (orchestrator.audit.recorder.Recorder, in this
   process) drains the batch's events into PostgreSQL: its CPU per event, its own Redis
   commands per event, and the rows and bytes (``pg_total_relation_size`` of every table, indexes
   and TOAST included) each run added.
3. **memory** — with the worker stopped, ``--runs`` diamonds are submitted (live: run record and
   queued messages); then the worker finishes them (finished: what stays until ``state_ttl``).
   INFO ``used_memory`` deltas and ``MEMORY USAGE`` of each run's keys, per run.
4. **load** — the largest load this machine allows: ``--load`` diamonds submitted at once on the
   fast path, a recorder subprocess writing to PostgreSQL alongside; the measured steps/s, Redis
   main-thread CPU and recorder keep-up are compared with what the model of 1 and 2 projects.

The machine is shared: the load average is printed before and after each phase. Ceilings are
projections from CPU per unit on one core; docs/performance.md "Capacity model" states their
assumptions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # runnable as a script from anywhere

import redis  # noqa: E402
from bench_core import Worker, cpu_seconds  # noqa: E402
from bench_recorder import DEFAULT_PG, _postgres_cpu, make_store  # noqa: E402
from sqlalchemy import text  # noqa: E402

from orchestrator import Client  # noqa: E402
from orchestrator.audit.recorder import Recorder  # noqa: E402
from orchestrator.audit.store import AuditStore  # noqa: E402
from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.engine.celery_app import create_celery  # noqa: E402
from orchestrator.fleet.inspect import amqp_queue_lengths  # noqa: E402
from orchestrator.keys import Keys  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

PREFIX = "cfcap"
WAIT_TIMEOUT = 600.0
# Commands this script sends to read Redis's counters: not part of what is measured.
OURS = {"info", "xlen", "xinfo", "memory", "scan", "ping", "client", "hello", "dbsize", "llen"}
DAY = 86400


def echo(step_id: str, deps: list[str] | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"id": step_id, "plugin": "builtin", "method": "echo"}
    if deps:
        step["depends_on"] = deps
    return step


CHAIN = {"id": "cap_chain", "mode": "sequential", "steps": [echo(f"s{i}") for i in range(10)]}
DIAMOND = {
    "id": "cap_diamond",
    "mode": "parallel",
    "steps": [
        echo("a"),
        echo("b", ["a"]),
        echo("c", ["a"]),
        echo("d", ["a"]),
        echo("e", ["b", "c", "d"]),
    ],
}
SHAPES = {"chain10": (CHAIN, 10), "diamond": (DIAMOND, 5)}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------
# Redis's counters
# ---------------------------------------------------------------------------------------------


@dataclass
class Counters:
    commands: dict[str, int]
    usec: int  # time Redis spent executing commands (commandstats usec), Lua included
    net_in: int
    net_out: int
    cpu: float  # main thread user + system seconds
    used_memory: int
    events_added: int

    @classmethod
    def read(cls, admin: redis.Redis, keys: Keys) -> Counters:
        stats = admin.info("commandstats")
        commands = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        usec = sum(
            int(v["usec"]) for k, v in stats.items() if k.removeprefix("cmdstat_") not in OURS
        )
        info = admin.info("all")
        cpu = float(info.get("used_cpu_user_main_thread", info["used_cpu_user"])) + float(
            info.get("used_cpu_sys_main_thread", info["used_cpu_sys"])
        )
        try:
            added = int(admin.xinfo_stream(keys.events)["entries-added"])
        except redis.ResponseError:  # no stream yet
            added = 0
        return cls(
            commands,
            usec,
            int(info["total_net_input_bytes"]),
            int(info["total_net_output_bytes"]),
            cpu,
            int(info["used_memory"]),
            added,
        )


@dataclass
class Delta:
    commands: int
    by_command: dict[str, int]
    usec: int
    net_in: int
    net_out: int
    cpu: float
    memory: int
    events: int

    @classmethod
    def between(cls, a: Counters, b: Counters, overhead: Delta | None = None) -> Delta:
        by = {
            k: v - a.commands.get(k, 0)
            for k, v in b.commands.items()
            if k not in OURS and v - a.commands.get(k, 0) > 0
        }
        d = cls(
            sum(by.values()),
            by,
            b.usec - a.usec,
            b.net_in - a.net_in,
            b.net_out - a.net_out,
            b.cpu - a.cpu,
            b.used_memory - a.used_memory,
            b.events_added - a.events_added,
        )
        if overhead is not None:  # what reading the counters itself moved
            d.net_in -= overhead.net_in
            d.net_out -= overhead.net_out
        return d


def overhead(admin: redis.Redis, keys: Keys) -> Delta:
    """The bytes two back-to-back readings of the counters move (subtracted from every delta)."""
    a = Counters.read(admin, keys)
    b = Counters.read(admin, keys)
    return Delta.between(a, b)


def wait_idle(admin: redis.Redis, keys: Keys, timeout: float = 60.0, amqp: Any = None) -> None:
    """Until no message is queued or unacknowledged in the broker (the worker is idle). On
    RabbitMQ (``amqp``: a Celery app on it) only ready messages are seen."""
    deadline = time.monotonic() + timeout
    if amqp is not None:
        while amqp_queue_lengths(amqp, ["default"])["default"]["total"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker still held messages after {timeout:g} s")
            time.sleep(0.05)
        return
    queues = [f"{keys.broker}default"] + [f"{keys.broker}default\x06\x16{p}" for p in range(1, 10)]
    while time.monotonic() < deadline:
        pipe = admin.pipeline(transaction=False)
        for q in queues:
            pipe.llen(q)
        pipe.hlen(keys.broker_unacked)
        if not any(pipe.execute()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the broker still held messages after {timeout:g} s")


# ---------------------------------------------------------------------------------------------
# PostgreSQL's counters
# ---------------------------------------------------------------------------------------------


def tables(store: AuditStore) -> dict[str, tuple[int, int]]:
    """Table -> (rows, bytes with indexes and TOAST) in the store's schema."""
    with store.engine.connect() as conn:
        names = [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            )
        ]
        out = {}
        for name in names:
            rows = conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
            size = conn.execute(text(f"SELECT pg_total_relation_size('\"{name}\"')")).scalar_one()
            out[name] = (int(rows), int(size))
        return out


# ---------------------------------------------------------------------------------------------
# The phases
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    path: str
    shape: str
    runs: int
    steps: int
    seconds: float
    redis: Delta
    idle_cpu_per_s: float = 0.0  # Redis main thread with the worker connected and idle
    recorder_cpu: float = 0.0
    recorder_wall: float = 0.0
    postgres_cpu: float = 0.0  # every postgres process on the machine during the drain
    recorder_redis: Delta | None = None
    sql_rows: dict[str, int] = field(default_factory=dict)
    sql_bytes: int = 0


class Capacity:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.admin = redis.Redis.from_url(url)
        self.keys = Keys(PREFIX)
        self.worker: Worker | None = None
        self.amqp = create_celery(self.settings(True)) if args.broker else None
        self.store, self.drop_store = make_store(
            "postgresql", args.postgres_url, Path(tempfile.mkdtemp())
        )

    def settings(self, fast: bool) -> Settings:
        return Settings(
            redis_url=self.url,
            broker_url=self.args.broker or "",
            key_prefix=PREFIX,
            worker_concurrency=self.args.concurrency,
            fast_steps=fast,
        )

    def start_worker(self, fast: bool) -> None:
        self.stop_worker()
        self.worker = Worker(self.settings(fast), self.args.concurrency, "WARNING")
        self.worker.wait_ready(self.admin)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def submit_wait(self, client: Client, definition: dict[str, Any], n: int, steps: int) -> None:
        runs = [client.submit(definition) for _ in range(n)]
        for run in runs:
            final = run.wait(timeout=WAIT_TIMEOUT)
            assert final.status == "COMPLETED" and len(final.steps) == steps, (
                f"run {run.id} ended {final.status} with {final.statuses}"
            )

    def engine(self, fast: bool, shape: str) -> Row:
        definition, steps = SHAPES[shape]
        client = Client(self.settings(fast))
        if not self.args.smoke:  # warm-up, not counted: the worker's and client's caches
            self.submit_wait(client, definition, 3, steps)
            self.recorder_drain()
        wait_idle(self.admin, self.keys, amqp=self.amqp)
        idle = self.idle_cpu()
        extra = overhead(self.admin, self.keys)
        before = Counters.read(self.admin, self.keys)
        t0 = time.perf_counter()
        self.submit_wait(client, definition, self.args.runs, steps)
        wait_idle(
            self.admin, self.keys, amqp=self.amqp
        )  # the acks a run leaves behind belong to it
        seconds = time.perf_counter() - t0
        after = Counters.read(self.admin, self.keys)
        row = Row(
            "fast" if fast else "careful",
            shape,
            self.args.runs,
            self.args.runs * steps,
            seconds,
            Delta.between(before, after, extra),
            idle,
        )
        self.recorder(row)
        return row

    def idle_cpu(self) -> float:
        """Redis main-thread CPU seconds per second with nothing to do but the fleet's own
        polling (the worker's BRPOP timeouts, heartbeats, serverCron): paid whatever the load."""
        a = Counters.read(self.admin, self.keys)
        t0 = time.perf_counter()
        time.sleep(self.args.idle_seconds)
        b = Counters.read(self.admin, self.keys)
        return (b.cpu - a.cpu) / (time.perf_counter() - t0)

    def recorder_drain(self) -> int:
        rec = Recorder(self.store, self.admin, self.keys, batch_size=500, block=0.0, trim=True)
        return rec.drain()

    def recorder(self, row: Row) -> None:
        """Drain the batch's events into PostgreSQL; what it cost, what it added."""
        sql0 = tables(self.store)
        extra = overhead(self.admin, self.keys)
        before = Counters.read(self.admin, self.keys)
        cpu0, wall0, pg0 = time.process_time(), time.perf_counter(), _postgres_cpu()
        done = self.recorder_drain()
        row.recorder_cpu = time.process_time() - cpu0
        row.recorder_wall = time.perf_counter() - wall0
        row.postgres_cpu = _postgres_cpu() - pg0
        after = Counters.read(self.admin, self.keys)
        assert done == row.redis.events, f"drained {done} events, the runs made {row.redis.events}"
        row.recorder_redis = Delta.between(before, after, extra)
        sql1 = tables(self.store)
        row.sql_rows = {t: sql1[t][0] - sql0.get(t, (0, 0))[0] for t in sql1}
        row.sql_rows = {t: n for t, n in row.sql_rows.items() if n}
        row.sql_bytes = sum(v[1] for v in sql1.values()) - sum(v[1] for v in sql0.values())

    def memory(self) -> dict[str, Any]:
        """Bytes per live (submitted, queued) and per finished diamond run."""
        n = self.args.runs
        client = Client(self.settings(True))
        self.stop_worker()
        before = Counters.read(self.admin, self.keys)
        kinds0 = self.key_memory()
        runs = [client.submit(DIAMOND) for _ in range(n)]
        live = Counters.read(self.admin, self.keys)
        kinds_live = self.key_memory()
        live_keys = sum(self.run_bytes(r.id) for r in runs) / n
        queue_bytes = sum(
            self.admin.memory_usage(k, samples=0) or 0
            for k in self.admin.scan_iter(f"{self.keys.broker}*", count=1000)
        )
        self.start_worker(True)
        for run in runs:
            assert run.wait(timeout=WAIT_TIMEOUT).status == "COMPLETED"
        wait_idle(self.admin, self.keys, amqp=self.amqp)
        done = Counters.read(self.admin, self.keys)
        kinds_done = self.key_memory()
        finished_keys = sum(self.run_bytes(r.id) for r in runs) / n
        stream = self.admin.memory_usage(self.keys.events, samples=0) or 0
        entries = self.admin.xlen(self.keys.events) or 1
        events_per_run = (done.events_added - before.events_added) / n
        self.recorder_drain()  # the stream is trimmed: what is left after the recorder
        drained = Counters.read(self.admin, self.keys)
        return {
            "runs": n,
            "live_used_memory": (live.used_memory - before.used_memory) / n,
            "live_run_keys": live_keys,
            "live_broker_keys": queue_bytes / n,
            "finished_used_memory": (done.used_memory - before.used_memory) / n,
            "finished_run_keys": finished_keys,
            "stream_bytes_per_event": stream / entries,
            "events_per_run": events_per_run,
            "after_recorder_used_memory": (drained.used_memory - before.used_memory) / n,
            "live_by_kind": {k: (kinds_live[k] - kinds0[k]) / n for k in kinds0},
            "finished_by_kind": {k: (kinds_done[k] - kinds0[k]) / n for k in kinds0},
        }

    def key_memory(self) -> dict[str, int]:
        """MEMORY USAGE of every key, summed by kind: the runs' own keys, the event stream,
        Celery's (broker queues, unacked messages, task results and chord counters) and the
        rest (indexes of runs, catalogs)."""
        kinds = {"run": 0, "stream": 0, "celery": 0, "other": 0}
        run_prefix, events, celery = f"{PREFIX}:run:", self.keys.events, self.keys.broker
        for raw in self.admin.scan_iter("*", count=1000):
            key = raw.decode(errors="replace")
            kind = (
                "stream"
                if key == events
                else "run"
                if key.startswith(run_prefix)
                else "celery"
                if key.startswith(celery) or "celery" in key or key in ("unacked", "unacked_index")
                else "other"
            )
            kinds[kind] += self.admin.memory_usage(raw, samples=0) or 0
        return kinds

    def run_bytes(self, run_id: str) -> int:
        k = self.keys
        names = [k.run(run_id), k.steps(run_id), k.attempts(run_id), k.completed(run_id)]
        return sum(self.admin.memory_usage(name, samples=0) or 0 for name in names)

    def load(self, model: dict[str, float]) -> dict[str, Any]:
        """--load diamonds at once on the fast path, a recorder process alongside."""
        n = self.args.load
        self.start_worker(True)
        client = Client(self.settings(True))
        db = self.store.url.render_as_string(hide_password=False)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CANVASFLOW_")},
            **self.settings(True).as_env(),
            "CANVASFLOW_DATABASE_URL": db,
            "PYTHONPATH": str(ROOT),
        }
        log_path = (
            Path(tempfile.gettempdir()) / f"bench-capacity-recorder-{uuid.uuid4().hex[:6]}.log"
        )
        with open(log_path, "wb") as log:
            rec = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.audit.cli", "recorder"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                wait_idle(self.admin, self.keys, amqp=self.amqp)
                self.wait_recorder_ready(rec, log_path)
                load0 = load_average()
                before = Counters.read(self.admin, self.keys)
                worker = self.worker
                assert worker is not None
                wcpu0 = sum(cpu_seconds(p) for p in worker.pids())
                rcpu0 = cpu_seconds(rec.pid)
                t0 = time.perf_counter()
                self.submit_wait(client, DIAMOND, n, 5)
                wait_idle(self.admin, self.keys, amqp=self.amqp)
                seconds = time.perf_counter() - t0
                after = Counters.read(self.admin, self.keys)
                wcpu = sum(cpu_seconds(p) for p in worker.pids()) - wcpu0
                # the recorder catches up (a deadline, not a speed check)
                caught = time.perf_counter()
                lag = self.group_lag()
                deadline = time.monotonic() + 120
                while lag and time.monotonic() < deadline:
                    time.sleep(0.2)
                    lag = self.group_lag()
                behind = time.perf_counter() - caught
                rcpu = cpu_seconds(rec.pid) - rcpu0
                load1 = load_average()
            finally:
                rec.terminate()
                rec.wait(30)
        if lag:
            raise RuntimeError(f"the recorder still had {lag} events to write; log {log_path}")
        d = Delta.between(before, after)
        steps = 5 * n
        rate = steps / seconds
        return {
            "runs": n,
            "steps": steps,
            "seconds": seconds,
            "steps_per_s": rate,
            "events": d.events,
            "redis_cpu_utilisation": d.cpu / seconds,
            "projected_redis_cpu_utilisation": model["redis_idle_cpu_per_s"]
            + rate * model["redis_marginal_cpu_per_step"],
            "redis_cpu_per_step": d.cpu / steps,
            "redis_cmds_per_step": d.commands / steps,
            "worker_cpu_per_step": wcpu / steps,
            "recorder_cpu_per_event": rcpu / max(d.events, 1),
            "recorder_behind_s": behind,
            "load_before": load0,
            "load_after": load1,
        }

    @staticmethod
    def wait_recorder_ready(rec: subprocess.Popen[bytes], log_path: Path) -> None:
        """Until the recorder process has started (it logs its stream and store), so its CPU
        from then on is the events' alone, not its imports'."""
        deadline = time.monotonic() + 120
        while f"stream {PREFIX}:events" not in log_path.read_text(errors="replace"):
            if rec.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the recorder did not start; log {log_path}")
            time.sleep(0.2)
        time.sleep(0.5)

    def group_lag(self) -> int:
        try:
            groups = self.admin.xinfo_groups(self.keys.events)
        except redis.ResponseError:
            return 1
        for g in groups:
            if g["name"] in (b"cf-recorder", "cf-recorder"):
                return int(g.get("pending", 0) or 0) + int(g.get("lag", 0) or 0)
        return 1

    def close(self) -> None:
        self.stop_worker()
        self.drop_store()


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def table(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def figures(row: Row) -> dict[str, float]:
    r, runs, steps, events = row.redis, row.runs, row.steps, max(row.redis.events, 1)
    rr = row.recorder_redis
    assert rr is not None
    return {
        "cmds_per_step": r.commands / steps,
        "cmds_per_run": r.commands / runs,
        "cmds_per_event": r.commands / events,
        "bytes_in_per_step": r.net_in / steps,
        "bytes_out_per_step": r.net_out / steps,
        "bytes_per_run": (r.net_in + r.net_out) / runs,
        "bytes_per_event": (r.net_in + r.net_out) / events,
        "redis_cpu_per_step": r.cpu / steps,
        "redis_idle_cpu_per_s": row.idle_cpu_per_s,
        # what a step adds above the idle fleet's own polling
        "redis_marginal_cpu_per_step": max(r.cpu - row.idle_cpu_per_s * row.seconds, 0.0) / steps,
        "redis_usec_per_step": r.usec / steps,
        "events_per_step": r.events / steps,
        "events_per_run": r.events / runs,
        "recorder_cpu_per_event": row.recorder_cpu / events,
        "recorder_wall_per_event": row.recorder_wall / events,
        "postgres_cpu_per_event": row.postgres_cpu / events,
        "recorder_redis_cmds_per_event": rr.commands / events,
        "recorder_redis_cpu_per_event": rr.cpu / events,
        "sql_rows_per_run": sum(row.sql_rows.values()) / runs,
        "sql_bytes_per_run": row.sql_bytes / runs,
    }


def project(f: dict[str, float]) -> dict[str, float]:
    """Ceilings of one Redis core and one recorder process, from the per-unit costs."""
    redis_cpu = (
        f["redis_marginal_cpu_per_step"] + f["events_per_step"] * f["recorder_redis_cpu_per_event"]
    )
    spare = max(1.0 - f["redis_idle_cpu_per_s"], 0.0)
    redis_steps = spare / redis_cpu if redis_cpu > 0 else float("inf")
    # One recorder writes one batch at a time: its drain rate (its CPU and PostgreSQL's time
    # together) is what one recorder and one PostgreSQL sustain.
    rec_events = 1 / f["recorder_wall_per_event"]
    rec_steps = rec_events / f["events_per_step"]
    steps_per_run = f["cmds_per_run"] / f["cmds_per_step"]
    return {
        "redis_steps_per_s": redis_steps,
        "redis_runs_per_day": redis_steps / steps_per_run * DAY,
        "recorder_events_per_s": rec_events,
        "recorder_steps_per_s": rec_steps,
        "recorder_runs_per_day": rec_steps / steps_per_run * DAY,
        "sql_gb_per_million_runs": f["sql_bytes_per_run"] * 1e6 / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: does the script still run?")
    ap.add_argument("--runs", type=int, help="runs per engine batch (default 100)")
    ap.add_argument("--load", type=int, help="diamonds of the load check (default 400)")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument(
        "--broker",
        help="Celery's broker (e.g. amqp://guest:guest@127.0.0.1:5672/cf-capacity, a virtual "
        "host of its own); default: the same Redis. Run state and events stay in Redis.",
    )
    ap.add_argument(
        "--idle-seconds",
        type=float,
        help="how long Redis's idle CPU is sampled before each batch (default 3)",
    )
    ap.add_argument("--postgres-url", default=DEFAULT_PG)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    args.runs = args.runs or (3 if args.smoke else 100)
    args.load = args.load or (6 if args.smoke else 400)
    args.idle_seconds = args.idle_seconds or (0.5 if args.smoke else 3.0)
    # The memory phase submits with no worker on purpose: the client's warning that nobody
    # consumes the queue is expected there.
    logging.getLogger("orchestrator.engine.client").setLevel(logging.ERROR)

    embedded = EmbeddedRedis().start()
    cap: Capacity | None = None
    try:
        cap = Capacity(args, embedded.url)
        print(f"redis {embedded.url} (private redis-server); load average {load_average()}")
        if args.broker:
            print(f"broker {args.broker}: Celery's messages are not in Redis's figures")
        rows: list[Row] = []
        for fast in (True, False):
            cap.start_worker(fast)
            for shape in SHAPES:
                row = cap.engine(fast, shape)
                rows.append(row)
                print(
                    f"  {row.path:<8} {shape:<8} {row.runs} runs, {row.steps} steps in "
                    f"{row.seconds:.2f} s; load average {load_average()}",
                    flush=True,
                )
        per = {f"{r.path}/{r.shape}": figures(r) for r in rows}
        by_command = {
            f"{r.path}/{r.shape}": {
                c: n / r.steps for c, n in sorted(r.redis.by_command.items(), key=lambda kv: -kv[1])
            }
            for r in rows
        }
        print("\nPer step, per run and per event (Redis: engine, broker and waiting client):")
        table(
            [
                "path/shape",
                "cmds/step",
                "cmds/run",
                "cmds/event",
                "bytes in+out/step",
                "bytes/run",
                "bytes/event",
                "Redis CPU us/step",
                "of it above idle",
                "events/step",
                "events/run",
            ],
            [
                [
                    k,
                    f"{f['cmds_per_step']:.1f}",
                    f"{f['cmds_per_run']:.0f}",
                    f"{f['cmds_per_event']:.1f}",
                    f"{f['bytes_in_per_step'] + f['bytes_out_per_step']:,.0f}",
                    f"{f['bytes_per_run']:,.0f}",
                    f"{f['bytes_per_event']:,.0f}",
                    f"{f['redis_cpu_per_step'] * 1e6:.0f}",
                    f"{f['redis_marginal_cpu_per_step'] * 1e6:.0f}",
                    f"{f['events_per_step']:.2f}",
                    f"{f['events_per_run']:.1f}",
                ]
                for k, f in per.items()
            ],
        )
        print(
            "Redis idle (worker connected, nothing to do): "
            + ", ".join(f"{r.path}/{r.shape} {r.idle_cpu_per_s * 100:.1f} %" for r in rows)
            + " of a core"
        )
        for k, by in by_command.items():
            print(
                f"  {k} cmds/step: " + ", ".join(f"{c} {n:.1f}" for c, n in list(by.items())[:10])
            )
        print("\nThe recorder (one process, PostgreSQL) per event, and SQL per run:")
        table(
            [
                "path/shape",
                "recorder CPU s/1000 events",
                "drain s/1000 events",
                "PostgreSQL CPU s/1000 events",
                "recorder Redis cmds/event",
                "SQL rows/run",
                "SQL bytes/run",
            ],
            [
                [
                    k,
                    f"{f['recorder_cpu_per_event'] * 1000:.3f}",
                    f"{f['recorder_wall_per_event'] * 1000:.3f}",
                    f"{f['postgres_cpu_per_event'] * 1000:.3f}",
                    f"{f['recorder_redis_cmds_per_event']:.2f}",
                    f"{f['sql_rows_per_run']:.1f}",
                    f"{f['sql_bytes_per_run']:,.0f}",
                ]
                for k, f in per.items()
            ],
        )
        rows_by_table = {
            f"{r.path}/{r.shape}": {t: n / r.runs for t, n in r.sql_rows.items()} for r in rows
        }
        for k, by in rows_by_table.items():
            print(f"  {k}: rows/run " + ", ".join(f"{t} {n:g}" for t, n in sorted(by.items())))

        mem = cap.memory()
        print(
            f"\nMemory per diamond run ({mem['runs']} runs): live (submitted, queued) "
            f"{mem['live_used_memory']:,.0f} B used_memory, of which run keys "
            f"{mem['live_run_keys']:,.0f} B and broker keys {mem['live_broker_keys']:,.0f} B; "
            f"finished {mem['finished_used_memory']:,.0f} B used_memory before the recorder "
            f"(run keys {mem['finished_run_keys']:,.0f} B, stream "
            f"{mem['stream_bytes_per_event']:,.0f} B/event x {mem['events_per_run']:.1f} events), "
            f"{mem['after_recorder_used_memory']:,.0f} B after it trimmed the stream"
        )

        for when in ("live", "finished"):
            print(
                f"  {when}, MEMORY USAGE of keys by kind, per run: "
                + ", ".join(f"{k} {v:,.0f} B" for k, v in mem[f"{when}_by_kind"].items())
            )

        projections = {k: project(f) for k, f in per.items()}
        print(
            "\nProjected ceilings (one Redis core, one recorder process; assumptions in "
            "docs/performance.md):"
        )
        table(
            [
                "path/shape",
                "Redis steps/s",
                "Redis runs/day",
                "recorder events/s",
                "recorder steps/s",
                "recorder runs/day",
                "SQL GB/1M runs",
            ],
            [
                [
                    k,
                    f"{p['redis_steps_per_s']:,.0f}",
                    f"{p['redis_runs_per_day']:,.0f}",
                    f"{p['recorder_events_per_s']:,.0f}",
                    f"{p['recorder_steps_per_s']:,.0f}",
                    f"{p['recorder_runs_per_day']:,.0f}",
                    f"{p['sql_gb_per_million_runs']:.2f}",
                ]
                for k, p in projections.items()
            ],
        )

        model = per["fast/diamond"]
        check = cap.load(model)
        print(
            f"\nLoad check: {check['runs']} diamonds ({check['steps']} steps) at once, fast path, "
            f"concurrency {args.concurrency}, a recorder process alongside: "
            f"{check['seconds']:.2f} s = {check['steps_per_s']:.0f} steps/s; load average "
            f"{check['load_before']} before, {check['load_after']} after"
        )
        print(
            f"  Redis main thread busy {check['redis_cpu_utilisation'] * 100:.1f} % "
            f"(model: {check['projected_redis_cpu_utilisation'] * 100:.1f} %); "
            f"Redis CPU {check['redis_cpu_per_step'] * 1e6:.0f} us/step "
            f"(model {model['redis_cpu_per_step'] * 1e6:.0f} at the batch's rate), "
            f"{check['redis_cmds_per_step']:.1f} cmds/step (model {model['cmds_per_step']:.1f})"
        )
        print(
            f"  worker CPU {check['worker_cpu_per_step'] * 1e3:.2f} ms/step; recorder CPU "
            f"{check['recorder_cpu_per_event'] * 1e3:.3f} s/1000 events "
            f"(model {model['recorder_cpu_per_event'] * 1e3:.3f}); recorder caught up "
            f"{check['recorder_behind_s']:.1f} s after the last run ended"
        )
        print(f"load average at the end {load_average()}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "per": per,
                        "redis_commands_per_step": by_command,
                        "sql_rows_by_table": rows_by_table,
                        "memory": mem,
                        "projections": projections,
                        "load": check,
                    },
                    indent=2,
                )
            )
        return 0
    finally:
        if cap is not None:
            cap.close()
        embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
