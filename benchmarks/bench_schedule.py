"""Schedule accuracy: how late a `canvasflow scheduler` process starts the runs of an every-second
schedule, with the fleet idle and with it busy (a backlog of sleep steps on a prefork worker).

    python benchmarks/bench_schedule.py [--fires 200] [--backlog 2000] [--step-seconds 0.2]
        [--json out.json] [--smoke]

A private redis-server and one worker (``-c 2``) are started. For each phase a workflow with
``triggers: [{schedule: {every: 1}}]`` is registered under a fresh name and a real scheduler
process (``python -m orchestrator.cli scheduler``) runs until ``--fires`` runs exist. The lag of a
fire is the run's ``created_at`` (written by the submit, in Redis) minus its fire time (the run id
is derived from the fire time, so each run names its own). Phases: ``idle`` (nothing queued),
then ``busy``: ``--backlog`` steps (runs of 100 parallel ``builtin.sleep`` steps) are queued
first and keep the worker's two processes and the machine busy while the schedule fires. The
busy/idle ratio of p50 and p99 is the figure that compares the two in the same run; missing and
doubled fire times are counted (both must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import redis  # noqa: E402
from bench_core import Worker  # noqa: E402

from orchestrator import Client  # noqa: E402
from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.engine.scheduler import fire_run_id  # noqa: E402
from orchestrator.model.definition import Workflow  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

WIDTH = 100  # parallel sleep steps per backlog run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def backlog_definition(seconds: float) -> dict[str, Any]:
    return {
        "id": "bench_backlog",
        "steps": [
            {"id": f"s{i}", "plugin": "builtin", "method": "sleep", "params": {"seconds": seconds}}
            for i in range(WIDTH)
        ],
    }


def queued(admin: redis.Redis, settings: Settings) -> int:
    """Messages waiting in the default queue (kombu's Redis transport: one list per priority)."""
    prefix = f"{settings.key_prefix}:celery:"
    return sum(
        int(admin.llen(k)) for k in admin.scan_iter(f"{prefix}default*") if admin.type(k) == b"list"
    )


def phase(
    name: str, url: str, prefix: str, fires: int, backlog: int, step_seconds: float
) -> dict[str, Any]:
    settings = Settings(redis_url=url, key_prefix=prefix, database_url="none")
    client = Client(settings)
    admin = redis.Redis.from_url(url)
    wf = f"tick_{name}_{uuid.uuid4().hex[:4]}"
    busy_queued = 0
    if backlog:
        for _ in range(max(1, backlog // WIDTH)):
            client.submit(backlog_definition(step_seconds), triggered_by="bench")
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline and (busy_queued := queued(admin, settings)) < backlog // 2
        ):
            time.sleep(0.1)
    client.register(Workflow(wf).schedule(every=1).step("a", "builtin", "echo"))
    env = {**os.environ, **settings.as_env()}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    log_path = Path(tempfile.gettempdir()) / f"bench-schedule-{name}-{uuid.uuid4().hex[:4]}.log"
    begin = time.time()
    with open(log_path, "wb") as log:
        sched = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "scheduler"],
            env=env,
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        runs_key = client.keys.runs_of(wf)
        try:
            deadline = time.monotonic() + fires * 2 + 60
            while admin.zcard(runs_key) < fires:
                if sched.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"scheduler stopped or stalled; log {log_path}")
                time.sleep(0.2)
            still_queued = queued(admin, settings) if backlog else 0
        finally:
            sched.terminate()
            sched.wait(20)
    end = time.time()
    client.redis.srem(client.keys.workflows, wf)  # nothing fires it again
    ids = {m.decode() for m in admin.zrange(runs_key, 0, -1)}
    by_id = {}
    t = int(begin)
    while t <= end + 1:
        by_id[fire_run_id(wf, "schedule-0", datetime.fromtimestamp(t, UTC))] = t
        t += 1
    lags = []
    for rid in ids:
        created = float(admin.hget(client.keys.run(rid), "created_at") or 0)
        lags.append(created - by_id[rid])
    fired = sorted(by_id[r] for r in ids)
    missing = (fired[-1] - fired[0] + 1) - len(fired) if fired else 0
    created_events = 0
    for _, fields in admin.xrange(client.keys.events):
        if fields.get(b"type") == b"run_created" and fields[b"run"].decode() in ids:
            created_events += 1
    client.close()
    return {
        "phase": name,
        "fires": len(ids),
        "p50_ms": 1000 * percentile(lags, 0.5),
        "p99_ms": 1000 * percentile(lags, 0.99),
        "max_ms": 1000 * max(lags),
        "mean_ms": 1000 * statistics.fmean(lags),
        "missing": missing,
        "doubled": created_events - len(ids),
        "backlog_queued_at_start": busy_queued,
        "backlog_queued_at_end": still_queued,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fires", type=int, default=200)
    ap.add_argument("--backlog", type=int, default=2000)
    ap.add_argument("--step-seconds", type=float, default=0.2)
    ap.add_argument("--json", default="")
    ap.add_argument("--smoke", action="store_true", help="5 fires, a 200-step backlog")
    args = ap.parse_args(argv)
    if args.smoke:
        args.fires, args.backlog = 5, 200
    embedded = EmbeddedRedis().start()
    prefix = f"bs{uuid.uuid4().hex[:6]}"
    settings = Settings(redis_url=embedded.url, key_prefix=prefix)
    worker = Worker(settings, 2, "WARNING")
    try:
        worker.wait_ready(redis.Redis.from_url(embedded.url))
        results = [
            phase("idle", embedded.url, prefix, args.fires, 0, args.step_seconds),
            phase("busy", embedded.url, prefix, args.fires, args.backlog, args.step_seconds),
        ]
    finally:
        worker.stop()
        embedded.stop()
    idle, busy = results
    print(f"schedule every 1 s, {args.fires} fires per phase; lag = run created_at - fire time")
    print()
    print(
        "| phase | fires | p50 ms | p99 ms | max ms | missing | doubled | backlog queued (start/end) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['phase']} | {r['fires']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['max_ms']:.1f} | {r['missing']} | {r['doubled']} | "
            f"{r['backlog_queued_at_start']}/{r['backlog_queued_at_end']} |"
        )
    ratio = {
        "p50": busy["p50_ms"] / idle["p50_ms"] if idle["p50_ms"] else float("nan"),
        "p99": busy["p99_ms"] / idle["p99_ms"] if idle["p99_ms"] else float("nan"),
    }
    print()
    print(f"busy/idle ratio: p50 {ratio['p50']:.2f}, p99 {ratio['p99']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
