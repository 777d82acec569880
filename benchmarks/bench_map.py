"""A mapped step vs raw Celery's chord over the same items: wall time and peak memory.

    python benchmarks/bench_map.py [--smoke] [--sizes 1000,10000] [--rounds N] [--json PATH]

Raw: ``chord(group(noop.s(i) for i in range(n)), noop.s())``, sent by the client, waited on the
body's id. canvasflow: a one-step workflow whose step maps ``builtin.echo`` over
``{{ inputs.xs }}`` (n integers), submitted and waited on with ``Run.wait``: the worker expands
the step (stores the list once, replaces its task with a chord of n item tasks and a collector),
each item is tracked in the hot state, and the collector ends the step with the n outputs in
order. Both sides run on ONE prefork worker (concurrency 2) with both registered
(benchmarks/raw_tasks.py, as bench_core.py), on a private redis-server; rounds alternate which
side goes first and the median is reported (bench_core.py's fairness rules).

Peak RSS: after the timed rounds, each side runs once more on a fresh worker with its client in
a fresh process, and the peak resident set (VmHWM) of the worker's main process, of its largest
pool process, and of the client is read.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import redis  # noqa: E402
from bench_core import Bench, Series, Worker, versions  # noqa: E402
from celery import chord, group  # noqa: E402

from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

TARGET = 1.25
FULL = (1000, 10000)
SMOKE = (5,)


def mapped_definition(n: int) -> dict[str, Any]:
    return {
        "id": f"bench_map_{n}",
        "inputs": {"xs": []},
        "steps": [
            {
                "id": "each",
                "plugin": "builtin",
                "method": "echo",
                "map": {"over": "{{ inputs.xs }}"},
                "params": {"v": "{{ item }}"},
            }
        ],
    }


def raw_map(bench: Bench, n: int) -> None:
    header = group([bench.noop(i, immutable=True) for i in range(n)], app=bench.raw)
    res = chord(header, bench.noop(), app=bench.raw).apply_async()
    got = bench.get(res.id)
    assert isinstance(got, list) and len(got) == n, "raw chord body did not see every result"


def cf_map(bench: Bench, n: int) -> None:
    run = bench.client.submit(mapped_definition(n), inputs={"xs": list(range(n))})
    final = run.wait(timeout=600)
    assert final.status == "COMPLETED", f"run {run.id} ended {final.status}"
    out = final.step("each").output
    assert isinstance(out, list) and len(out) == n and out[-1] == {"v": n - 1}, "outputs"


SIDES = {"raw": raw_map, "cf": cf_map}


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set of a process so far (kB; Linux /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _client_side(url: str, side: str, n: int, out: Any) -> None:
    """In a fresh process: one run of ``side``; its peak RSS (kB) goes to ``out``."""
    settings = Settings(redis_url=url, key_prefix="cfbench")
    admin = redis.Redis.from_url(url)
    bench = Bench(settings, admin, None, None)  # type: ignore[arg-type]
    SIDES[side](bench, n)
    out.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss(url: str, settings: Settings, admin: redis.Redis, side: str, n: int) -> dict[str, int]:
    worker = Worker(settings, 2, "WARNING")
    try:
        worker.wait_ready(admin)
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_client_side, args=(url, side, n, q))
        p.start()
        client_kb = q.get(timeout=900)
        p.join(60)
        return {
            "worker_main_kb": vm_hwm_kb(worker.proc.pid),
            "worker_pool_max_kb": max((vm_hwm_kb(c) for c in worker.children()), default=0),
            "client_kb": int(client_kb),
        }
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="1 round at a tiny size")
    ap.add_argument("--sizes", help="comma-separated item counts (default 1000,10000)")
    ap.add_argument("--rounds", type=int, help="measured rounds per size and side (default 3)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    sizes = (
        SMOKE
        if args.smoke
        else tuple(int(s) for s in args.sizes.split(","))
        if args.sizes
        else FULL
    )
    rounds = args.rounds or (1 if args.smoke else 3)

    embedded = EmbeddedRedis().start()
    worker = None
    try:
        url = embedded.url
        settings = Settings(redis_url=url, key_prefix="cfbench", worker_concurrency=2)
        admin = redis.Redis.from_url(url)
        env = versions(admin)
        worker = Worker(settings, 2, "WARNING")
        worker.wait_ready(admin)
        bench = Bench(settings, admin, worker, embedded.pid)
        sides = {side: (lambda n, f=fn: f(bench, n)) for side, fn in SIDES.items()}
        if not args.smoke:
            print("warming up (not counted)…")
            for side in ("raw", "cf"):
                bench.measure(sides[side], 200, None)
        results: dict[int, dict[str, Series]] = {}
        for n in sizes:
            results[n] = {"raw": Series(n), "cf": Series(n)}
            for r in range(rounds):
                for side in ("raw", "cf") if r % 2 == 0 else ("cf", "raw"):
                    t = bench.measure(sides[side], n, results[n][side])
                    print(f"  map {n:<6} round {r + 1}/{rounds} {side:<3} {t:8.3f} s", flush=True)
        worker.stop()
        worker = None
        memory: dict[int, dict[str, dict[str, int]]] = {}
        if not args.no_rss:
            for n in sizes:
                memory[n] = {side: peak_rss(url, settings, admin, side, n) for side in SIDES}
        print()
        print("machine: " + ", ".join(f"{k} {v}" for k, v in env.items()))
        print(
            f"median of {rounds} round(s); ratio = canvasflow / raw wall time (target ≤ {TARGET})"
        )
        print(
            f"{'items':>7} {'raw s':>8} {'cf s':>8} {'ratio':>6}  {'raw CPU s':>9} {'cf CPU s':>9}"
        )
        over = []
        for n, s in results.items():
            ratio = s["cf"].median / s["raw"].median
            if ratio > TARGET:
                over.append(n)
            print(
                f"{n:>7} {s['raw'].median:8.3f} {s['cf'].median:8.3f} {ratio:6.2f}  "
                f"{s['raw'].median_cpu:9.2f} {s['cf'].median_cpu:9.2f}"
            )
        if memory:
            print("peak RSS (MB): worker main / largest pool process / client")
            for n, m in memory.items():
                line = "  ".join(
                    f"{side} {v['worker_main_kb'] / 1024:.0f} / {v['worker_pool_max_kb'] / 1024:.0f}"
                    f" / {v['client_kb'] / 1024:.0f}"
                    for side, v in m.items()
                )
                print(f"{n:>7}  {line}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "env": env,
                        "rounds": rounds,
                        "target": TARGET,
                        "results": {
                            str(n): {
                                side: {
                                    "items": n,
                                    "seconds": ser.seconds,
                                    "median": statistics.median(ser.seconds),
                                    "cpu_seconds": ser.cpu,
                                }
                                for side, ser in s.items()
                            }
                            for n, s in results.items()
                        },
                        "peak_rss_kb": {str(n): m for n, m in memory.items()},
                    },
                    indent=2,
                )
            )
        if over:
            print(f"over the {TARGET}× target at: {', '.join(map(str, over))} items")
        return 0
    finally:
        if worker is not None:
            worker.stop()
        embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
