"""What ctx.log costs a step: a one-second CPU-bound step with and without 10,000 log lines.

The step runs on a real StepContext with the real per-process heartbeat flushing to a private
redis-server (as on a worker), and its wall time is compared with the same step that does not
log, in alternating rounds. Usage: python benchmarks/bench_logging.py [--rounds 5] [--lines 10000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis

from orchestrator.embedded import EmbeddedRedis
from orchestrator.keys import Keys
from orchestrator.runtime import RunState
from workers.context import Heartbeat, StepContext


def _no_log(*args: object, **kwargs: object) -> None:
    return None


def busy(seconds_of_work: int, lines: int, ctx: StepContext | None) -> tuple[float, float]:
    """A step that does a fixed amount of work in `lines` chunks, logging once per chunk.

    Returns (wall seconds, CPU seconds of the whole process: the heartbeat thread included)."""
    chunk = seconds_of_work // lines
    log = ctx.log if ctx is not None else _no_log
    start, cpu = time.perf_counter(), time.process_time()
    acc = 0
    for i in range(lines):
        for j in range(chunk):
            acc += j
        # The same call in both variants, so only what ctx.log does differs.
        log(f"processed row {i}", entity_tag="row", entity_route="bench")
    if ctx is not None:
        time.sleep(0.3)  # let the heartbeat flush what is left (its CPU is counted)
        wall = time.perf_counter() - start - 0.3
    else:
        wall = time.perf_counter() - start
    return wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lines", type=int, default=10_000)
    args = ap.parse_args()
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        state = RunState(client, Keys("bench"), state_ttl=600)
        client.hset(Keys("bench").run("r"), mapping={"status": "RUNNING", "seq": 0})
        hb = Heartbeat(state, lease_ttl=15)
        # calibrate the work to about one second
        t = time.perf_counter()
        busy(20_000_000, args.lines, None)
        units = int(20_000_000 / (time.perf_counter() - t))
        plain, logged = [], []
        warm = StepContext("r", "warm", 1)
        hb.add(warm, "owner")
        busy(units, args.lines, warm)  # warm-up, not counted
        hb.remove(warm)
        for _ in range(args.rounds):
            plain.append(busy(units, args.lines, None))
            ctx = StepContext("r", f"s{len(logged)}", 1)
            hb.add(ctx, "owner")
            logged.append(busy(units, args.lines, ctx))
            hb.remove(ctx)
            state.emit("r", ctx.drain())  # what finish_step carries
        events = client.xlen(Keys("bench").events)
        for i, what in ((0, "wall"), (1, "CPU")):
            p = statistics.median(r[i] for r in plain)
            lg = statistics.median(r[i] for r in logged)
            print(f"{what}: step without logs {p * 1000:.1f} ms, with {args.lines} log lines "
                  f"{lg * 1000:.1f} ms: cost {(lg - p) * 1000:.1f} ms = {100 * (lg - p) / p:.2f} % "
                  f"(median of {args.rounds})")
        print(f"{events} log events reached Redis")


if __name__ == "__main__":
    main()
