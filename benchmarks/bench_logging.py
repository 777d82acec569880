"""What ctx.log costs a step: a one-second CPU-bound step with and without 10,000 log lines.

Two measurements in one run:

- end to end: the step runs on a real StepContext with the real per-process heartbeat flushing
  to a private redis-server (as on a worker), and its wall and CPU time are compared with the
  same step that does not log, in alternating rounds. On a shared machine two one-second
  figures drift by a few percent between rounds, more than the cost being measured;
- by part: the CPU time of everything logging adds, each part timed alone many times (median):
  the ctx.log calls (less the same loop calling a no-op), the heartbeat's drain of the buffer
  into one event, and sending it. Their sum against one second is the figure to quote.

Usage: python benchmarks/bench_logging.py [--rounds 7] [--lines 10000] [--parts 9] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis

from orchestrator.cli.embedded import EmbeddedRedis
from orchestrator.engine.runstate import RunState
from orchestrator.keys import Keys
from workers.context import Heartbeat, StepContext


def _no_log(
    message: object,
    level: str = "INFO",
    entity_tag: str | None = None,
    entity_route: str | None = None,
    entity_id: str | None = None,
    entity_type: str | None = None,
) -> None:
    """The baseline's stand-in for ctx.log: the same signature (a ``**kwargs`` one would cost
    a dict per call and make the baseline slower than logging), doing nothing."""
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
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument(
        "--parts", type=int, default=9, help="repetitions of each part's timing per round"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="one round of a 0.1 s step with 1,000 lines: does the script still run?",
    )
    args = ap.parse_args()
    seconds = 1.0
    if args.smoke:
        args.rounds, args.lines, args.parts, seconds = 1, 1000, 1, 0.1
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        state = RunState(client, Keys("bench"), state_ttl=600)
        client.hset(Keys("bench").run("r"), mapping={"status": "RUNNING", "seq": 0})
        hb = Heartbeat(state, lease_ttl=15)
        # calibrate the work to about one second (a tenth with --smoke)
        calibration = int(20_000_000 * seconds)
        t = time.perf_counter()
        busy(calibration, args.lines, None)
        units = int(calibration * seconds / (time.perf_counter() - t))
        plain, logged, parts = [], [], []
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
            # the parts, timed right after this round's steps, against this round's plain step
            # (this machine's speed drifts by up to 2x within minutes)
            parts.append(by_part(state, args.lines, args.parts))
        events = client.xlen(Keys("bench").events)
        for i, what in ((0, "wall"), (1, "CPU")):
            p = statistics.median(r[i] for r in plain)
            lg = statistics.median(r[i] for r in logged)
            print(
                f"end to end, {what}: step without logs {p * 1000:.1f} ms, with {args.lines} log lines "
                f"{lg * 1000:.1f} ms: cost {(lg - p) * 1000:.1f} ms = {100 * (lg - p) / p:.2f} % "
                f"(median of {args.rounds}; rounds: "
                f"{', '.join(f'{100 * (b[i] - a[i]) / a[i]:+.1f}' for a, b in zip(plain, logged, strict=True))} %)"
            )
        print(f"{events} log events reached Redis")
        shares = [100 * pt["total"] / (pl[1] * 1000) for pt, pl in zip(parts, plain, strict=True)]
        med = {k: statistics.median(pt[k] for pt in parts) for k in parts[0]}
        print(
            f"by part ({args.lines} lines, CPU ms, median over rounds of the median of {args.parts}): "
            f"ctx.log calls {med['calls']:.2f}, drain into one event {med['drain']:.2f}, send {med['send']:.2f}: "
            f"total {med['total']:.2f} ms; against each round's step without logs: "
            f"{statistics.median(shares):.2f} % (rounds {min(shares):.2f}–{max(shares):.2f} %)"
        )


def by_part(state: RunState, lines: int, reps: int) -> dict[str, float]:
    """The CPU ms of each thing logging adds to a step, timed alone (median of ``reps``): the
    ctx.log calls (less the same loop calling a no-op), draining, sending."""
    base, calls, drains, sends = [], [], [], []
    for _ in range(reps):
        ctx = StepContext("r", "parts", 1)
        cpu = time.process_time()
        for i in range(lines):
            _no_log(f"processed row {i}", entity_tag="row", entity_route="bench")
        base.append(time.process_time() - cpu)
        cpu = time.process_time()
        for i in range(lines):
            ctx.log(f"processed row {i}", entity_tag="row", entity_route="bench")
        calls.append(time.process_time() - cpu)
        cpu = time.process_time()
        batch = ctx.drain()
        drains.append(time.process_time() - cpu)
        cpu = time.process_time()
        state.emit("r", batch)
        sends.append(time.process_time() - cpu)
    ms = {
        name: statistics.median(v) * 1000
        for name, v in (("calls", calls), ("base", base), ("drain", drains), ("send", sends))
    }
    out = {"calls": ms["calls"] - ms["base"], "drain": ms["drain"], "send": ms["send"]}
    out["total"] = sum(out.values())
    return out


if __name__ == "__main__":
    main()
