"""Recorder throughput into SQLite and PostgreSQL: events/s, batch latency p50/p99.

    python benchmarks/bench_recorder.py [--runs 2000] [--steps 4] [--logs 10]
        [--backends sqlite,postgresql] [--redis-url URL] [--postgres-url URL] [--live-seconds 10]
        [--smoke]

Events are produced the way workers produce them: through ``RunState`` (the same Lua scripts),
for runs of ``--steps`` sequential steps that each log ``--logs`` lines, so the mix is run
transitions, step starts and completions (with an output to look up), logs and stats.

Two phases per backend, each on a fresh key prefix and a fresh database schema:

- backlog: every event is in the stream before the recorder starts (a recorder that was down);
  reported: events/s to drain it, and the time per batch from XREADGROUP to XACK (p50/p99);
- live: a producer thread emits runs at ``--live-rate`` events/s while the recorder runs;
  reported: end-to-end latency per event, from the producer's timestamp to the commit (p50/p99).

Redis defaults to redis://127.0.0.1:6379/14 and PostgreSQL to the test server (database
``canvasflow_bench``, created if missing); a schema is created per phase and dropped after.

``--core`` instead runs ``benchmarks/bench_core.py`` (raw Celery vs canvasflow) on a private
redis-server while a ``canvasflow recorder`` process records everything it does into a
``--core-store`` (sqlite or postgresql), to see what the recorder costs the engine:

    python benchmarks/bench_recorder.py --core [--core-store postgresql] [--core-args "--rounds 3"]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

import redis  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from orchestrator.audit import AuditStore  # noqa: E402
from orchestrator.audit.recorder import Recorder  # noqa: E402
from orchestrator.engine.runstate import RunState, dumps, now  # noqa: E402
from orchestrator.engine.states import RunStatus  # noqa: E402
from orchestrator.keys import Keys  # noqa: E402

DEFAULT_PG = os.environ.get(
    "CANVASFLOW_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/canvasflow_bench"
)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


class Producer:
    """Emits whole runs through the real Lua scripts; returns how many events each run made."""

    def __init__(self, client: redis.Redis, keys: Keys, steps: int, logs: int) -> None:
        self.state = RunState(client, keys, state_ttl=3600)
        self.steps = [f"s{i}" for i in range(steps)]
        self.logs = logs
        self.definition = dumps(
            {
                "id": "bench",
                "version": "1",
                "mode": "sequential",
                "steps": [{"id": s, "plugin": "builtin", "method": "echo"} for s in self.steps],
            }
        )

    def run(self) -> int:
        rid = uuid.uuid4().hex[:16]
        st = self.state
        st.create(
            rid,
            {
                "workflow": "bench",
                "version": "1",
                "name": "bench",
                "definition": self.definition,
                "inputs": "{}",
                "priority": "normal",
                "tags": '["bench"]',
                "triggered_by": "bench",
                "trigger_type": "bench",
                "sla_seconds": "60",
            },
            self.steps,
            "bench",
        )
        for sid in self.steps:
            st.begin_step(
                rid,
                sid,
                1,
                intent="run",
                owner="bench",
                lease_ttl=30,
                task_id=rid + sid,
                worker="bench@host",
                reason="",
            )
            if self.logs:
                st.emit(
                    rid,
                    [
                        [
                            "log",
                            sid,
                            "",
                            now(),
                            dumps(
                                {
                                    "message": f"processed item {i}",
                                    "level": "INFO",
                                    "entity_tag": "item",
                                    "entity_id": str(i),
                                }
                            ),
                        ]
                        for i in range(self.logs)
                    ],
                )
            t = time.time()
            rec = {
                "step": sid,
                "attempt": 1,
                "status": "COMPLETED",
                "started_at": t,
                "finished_at": t,
                "duration": 0.001,
                "worker": "bench@host",
                "task_id": rid + sid,
                "error": None,
                "stats": {"items": self.logs, "duration": 0.001},
            }
            st.finish_step(
                rid,
                sid,
                1,
                status="COMPLETED",
                owner="bench",
                output=dumps({"rows": 42, "step": sid}),
                attempt=rec,
                batch=[["stats", sid, "", now(), dumps(rec["stats"])]],
            )
        st.transition(rid, RunStatus.COMPLETED)
        return 3 + len(self.steps) * (3 + self.logs)


def make_store(backend: str, pg_url: str, tmp: Path) -> tuple[AuditStore, Any]:
    if backend == "sqlite":
        path = tmp / f"bench-{uuid.uuid4().hex[:6]}.db"
        store = AuditStore(f"sqlite:///{path}")
        store.upgrade()
        return store, lambda: None
    import psycopg

    url = make_url(pg_url)
    plain = url.set(drivername="postgresql")
    admin = plain.set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)
        ).fetchone():
            conn.execute(f'CREATE DATABASE "{url.database}"')
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    dsn = plain.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    store = AuditStore(url.update_query_dict({"options": f"-csearch_path={schema}"}))
    store.upgrade()

    def drop() -> None:
        store.dispose()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    return store, drop


def cleanup(client: redis.Redis, keys: Keys) -> None:
    for pattern in (f"{keys.prefix}:*",):
        batch = list(client.scan_iter(pattern, count=1000))
        for i in range(0, len(batch), 1000):
            client.delete(*batch[i : i + 1000])


def backlog(
    backend: str, args: argparse.Namespace, client: redis.Redis, tmp: Path
) -> dict[str, Any]:
    keys = Keys(f"bench{uuid.uuid4().hex[:6]}")
    producer = Producer(client, keys, args.steps, args.logs)
    t0 = time.perf_counter()
    produced = sum(producer.run() for _ in range(args.runs))
    produce_s = time.perf_counter() - t0
    store, drop = make_store(backend, args.postgres_url, tmp)
    try:
        rec = Recorder(store, client, keys, batch_size=args.batch_size, block=0.0, trim=True)
        t0 = time.perf_counter()
        done = rec.drain()
        elapsed = time.perf_counter() - t0
        assert done == produced and rec.stats.events == produced, (done, produced, rec.stats)
        return {
            "events": produced,
            "produce_eps": produced / produce_s,
            "eps": produced / elapsed,
            "batches": rec.stats.batches,
            "p50": pct(rec.latencies, 0.5),
            "p99": pct(rec.latencies, 0.99),
        }
    finally:
        drop()
        cleanup(client, keys)


def live(backend: str, args: argparse.Namespace, client: redis.Redis, tmp: Path) -> dict[str, Any]:
    keys = Keys(f"bench{uuid.uuid4().hex[:6]}")
    producer = Producer(client, keys, args.steps, args.logs)
    store, drop = make_store(backend, args.postgres_url, tmp)
    lat: list[float] = []

    def hook(batch: Any) -> None:
        t = time.time()
        lat.extend(t - e.ts for e in batch)

    try:
        rec = Recorder(store, client, keys, batch_size=args.batch_size, block=0.2, hooks=[hook])
        rec.setup()
        stop = threading.Event()
        thread = rec.start_thread(stop)
        per_run = 3 + args.steps * (3 + args.logs)
        interval = per_run / args.live_rate
        produced = 0
        t0 = time.perf_counter()
        nxt = t0
        while time.perf_counter() - t0 < args.live_seconds:
            produced += producer.run()
            nxt += interval
            delay = nxt - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        rate = produced / (time.perf_counter() - t0)
        deadline = time.monotonic() + 120
        while not rec.lag().caught_up and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(10)
        return {
            "events": produced,
            "rate": rate,
            "p50": pct(lat, 0.5),
            "p99": pct(lat, 0.99),
            "batch_p50": pct(rec.latencies, 0.5),
            "batch_p99": pct(rec.latencies, 0.99),
            "recorded": rec.stats.events,
        }
    finally:
        drop()
        cleanup(client, keys)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _postgres_cpu() -> float:
    """CPU seconds of every ``postgres`` process on this machine (the server the store uses)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in text:
            total += _cpu_seconds(int(stat.parent.name))
    return total


def core(args: argparse.Namespace, tmp: Path) -> int:
    """bench_core.py with a recorder process running against the same Redis."""
    import shlex
    import subprocess

    from orchestrator.cli.embedded import EmbeddedRedis

    srv = EmbeddedRedis(workdir=str(tmp)).start()
    drop = lambda: None  # noqa: E731
    try:
        if args.core_store == "sqlite":
            db = f"sqlite:///{tmp / 'core.db'}"
        else:
            store, drop = make_store("postgresql", args.postgres_url, tmp)
            db = store.url.render_as_string(hide_password=False)
        env = {
            **os.environ,
            "CANVASFLOW_REDIS_URL": srv.url,
            "CANVASFLOW_KEY_PREFIX": "cfbench",
            "CANVASFLOW_DATABASE_URL": db,
            "PYTHONPATH": str(HERE.parent),
        }
        log = open(tmp / "recorder.log", "wb")  # noqa: SIM115
        argv = [
            sys.executable,
            "-m",
            "orchestrator.audit.cli",
            "recorder",
            "--lag-interval",
            "5",
            *shlex.split(args.core_recorder_args),
        ]
        rec = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            print(
                f"recorder pid {rec.pid} -> {args.core_store}; running bench_core.py on {srv.url}",
                flush=True,
            )
            pg0 = _postgres_cpu()
            code = subprocess.call(
                [
                    sys.executable,
                    str(HERE / "bench_core.py"),
                    "--redis-url",
                    srv.url,
                    *shlex.split(args.core_args),
                ]
            )
        finally:
            cpu = _cpu_seconds(rec.pid)
            pg = _postgres_cpu() - pg0
            rec.terminate()
            rec.wait(60)
            log.close()
        print(
            f"recorder CPU: {cpu:.1f} s"
            + (
                f"; PostgreSQL server CPU meanwhile: {pg:.1f} s (every postgres process)"
                if args.core_store == "postgresql"
                else ""
            )
        )
        lines = (tmp / "recorder.log").read_text().strip().splitlines()
        print(
            "recorder: "
            + "\n          ".join(line for line in lines if line.startswith(("lag", "recorder")))[
                -2000:
            ]
        )
        return code
    finally:
        drop()
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--logs", type=int, default=10, help="log lines per step")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument(
        "--redis-url",
        default=os.environ.get("CANVASFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
    )
    ap.add_argument("--postgres-url", default=DEFAULT_PG)
    ap.add_argument("--live-seconds", type=float, default=10.0)
    ap.add_argument(
        "--live-rate", type=float, default=2000.0, help="events/s the live producer aims at"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (3 runs of 2 steps, 1 s live): does the script still run?",
    )
    ap.add_argument("--core", action="store_true", help="run bench_core.py with a recorder running")
    ap.add_argument("--core-store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--core-args", default="", help="arguments for bench_core.py")
    ap.add_argument(
        "--core-recorder-args", default="", help="arguments for `canvasflow recorder` (--core)"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.runs, args.steps, args.logs, args.live_seconds = 3, 2, 2, 1.0
    if args.core:
        return core(args, Path(tempfile.mkdtemp(prefix="cf-bench-core-")))
    client = redis.Redis.from_url(args.redis_url)
    client.ping()
    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-"))
    per_run = 3 + args.steps * (3 + args.logs)
    print(
        f"runs of {args.steps} steps x {args.logs} log lines = {per_run} events/run; "
        f"batch size {args.batch_size}; Redis {args.redis_url}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        b = backlog(backend, args, client, tmp)
        lv = live(backend, args, client, tmp)
        rows.append((backend, b, lv))
        print(
            f"  {backend}: backlog {b['eps']:.0f} events/s; live {lv['rate']:.0f} events/s "
            f"e2e p50 {lv['p50'] * 1000:.0f} ms",
            flush=True,
        )
    print()
    print(
        "| store | backlog events | drain events/s | batch p50 | batch p99 | live events/s "
        "| live batch p50 | live batch p99 | event->commit p50 | event->commit p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backend, b, lv in rows:
        print(
            f"| {backend} | {b['events']} | {b['eps']:,.0f} | {b['p50'] * 1000:.1f} ms | {b['p99'] * 1000:.1f} ms "
            f"| {lv['rate']:,.0f} | {lv['batch_p50'] * 1000:.1f} ms | {lv['batch_p99'] * 1000:.1f} ms "
            f"| {lv['p50'] * 1000:.0f} ms | {lv['p99'] * 1000:.0f} ms |"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    print(
        f"(producer through the Lua scripts: {statistics.mean(b['produce_eps'] for _, b, _ in rows):,.0f} "
        "events/s while nothing else ran)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
