"""What a concurrency limit costs: N submits of a workflow limited to 10 active runs against the
same workflow without a limit, on the same Redis and the same worker, in one run.

    python benchmarks/bench_concurrency.py [--runs 500] [--limit 10] [--rounds 3]
        [--concurrency 4] [--redis-url URL] [--json PATH] [--smoke]

Each side submits ``--runs`` runs of a one-step workflow (builtin ``echo``) as fast as one client
can, then waits for every run to end; the wall time from the first submit to the last run ended
is the figure, and the time the submits took alone is printed beside it. With the limit, a run
past the 10th waits PENDING and is sent when a slot frees (by the worker that settles the run
ending: one more hop per run, and the admit script at submit). Rounds alternate which side goes
first; the median of the rounds is reported, and the ratio limited / unlimited.

By default a private redis-server is started (orchestrator.cli.embedded.EmbeddedRedis).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # runnable as a script from anywhere

import redis  # noqa: E402
from bench_core import Worker  # noqa: E402

from orchestrator import Client  # noqa: E402
from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

WAIT_TIMEOUT = 600.0


def definition(wid: str, limit: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": wid,
        "steps": [{"id": "a", "plugin": "builtin", "method": "echo", "params": {"x": 1}}],
    }
    if limit:
        body["concurrency"] = {"limit": limit}
    return body


def measure(client: Client, body: dict[str, Any], runs: int) -> tuple[float, float, int]:
    """(seconds to every run ended, seconds the submits took, the most runs seen active)."""
    client.load(body)  # validated and planned once, before the clock starts
    start = time.perf_counter()
    handles = [client.submit(body) for _ in range(runs)]
    submitted = time.perf_counter() - start
    most = 0
    for h in handles:
        snap = h.wait(WAIT_TIMEOUT)
        if snap.status != "COMPLETED":
            raise RuntimeError(f"run {h.id} ended {snap.status}: {snap.error}")
    wall = time.perf_counter() - start
    # Afterwards, from the runs' own times: how many were between start and end at once.
    times = []
    for h in handles:
        s = client.snapshot(h.id)
        times += [(s.started_at or 0.0, 1), (s.finished_at or 0.0, -1)]
    cur = 0
    for _, step in sorted(times):
        cur += step
        most = max(most, cur)
    return wall, submitted, most


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4, help="the worker's pool processes")
    ap.add_argument("--redis-url", default="")
    ap.add_argument("--json", default="")
    ap.add_argument(
        "--smoke", action="store_true", help="20 runs, limit 3, one round: does it still run?"
    )
    args = ap.parse_args()
    if args.smoke:
        args.runs, args.limit, args.rounds = 20, 3, 1
    embedded = None
    worker = None
    try:
        if args.redis_url:
            url = args.redis_url
        else:
            embedded = EmbeddedRedis().start()
            url = embedded.url
        settings = Settings(redis_url=url, key_prefix=f"cfbc{uuid.uuid4().hex[:6]}")
        admin = redis.Redis.from_url(url)
        worker = Worker(
            settings, args.concurrency, "WARNING"
        )  # bench_core's, as the other benchmarks
        worker.wait_ready(admin)
        client = Client(settings)
        sides = {
            "unlimited": definition("bench_conc_free", None),
            "limited": definition("bench_conc_limited", args.limit),
        }
        if not args.smoke:  # warm-up, not counted
            for body in sides.values():
                measure(client, body, min(50, args.runs))
        results: dict[str, list[tuple[float, float, int]]] = {s: [] for s in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                wall, sub, most = measure(client, sides[side], args.runs)
                results[side].append((wall, sub, most))
                print(
                    f"  round {r + 1}/{args.rounds} {side:<9} {wall:7.2f} s to all ended "
                    f"(submits {sub:6.2f} s), at most {most} active",
                    flush=True,
                )
        med = {
            side: (
                statistics.median(w for w, _, _ in res),
                statistics.median(s for _, s, _ in res),
                max(m for _, _, m in res),
            )
            for side, res in results.items()
        }
        ratio = med["limited"][0] / med["unlimited"][0]
        print(
            f"\n{args.runs} runs, limit {args.limit}, worker -c {args.concurrency}, "
            f"median of {args.rounds} round(s):"
        )
        print("| side | wall to all ended (s) | submits (s) | most active |")
        print("|---|---|---|---|")
        for side in ("unlimited", "limited"):
            w, s, m = med[side]
            print(f"| {side} | {w:.2f} | {s:.2f} | {m} |")
        print(f"ratio limited / unlimited (wall): {ratio:.2f}")
        if med["limited"][2] > args.limit:
            raise SystemExit(
                f"more than {args.limit} runs were active at once: {med['limited'][2]}"
            )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "runs": args.runs,
                        "limit": args.limit,
                        "rounds": args.rounds,
                        "unlimited": dict(
                            zip(("wall", "submits", "most"), med["unlimited"], strict=True)
                        ),
                        "limited": dict(
                            zip(("wall", "submits", "most"), med["limited"], strict=True)
                        ),
                        "ratio": ratio,
                    },
                    indent=2,
                )
            )
        client.close()
    finally:
        if worker is not None:
            worker.stop()
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
