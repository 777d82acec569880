"""What queueing notifications costs the recorder: drain rate with and without the notify hook.

    python benchmarks/bench_notify.py [--runs 1000] [--rounds 3] [--backend sqlite|postgresql]
        [--redis-url URL] [--postgres-url URL] [--smoke]

A backlog of runs is written through the real Lua scripts (benchmarks/bench_recorder.py's
Producer) and drained by one recorder, alternately without hooks (the baseline) and with the
notification hook of orchestrator/engine/notify.py while an endpoint exists, so every run's
COMPLETED makes the hook ask the store whether endpoints exist and publish one Celery message
per batch on the ``notify`` queue (no worker consumes it: only the recorder's side is measured).
Two mixes: ``chatty`` (4 steps that log 10 lines each: one run end per 55 events) and ``ends``
(1 step, no logs: one run end per 6 events, the worst case for the hook). Each round runs the
baseline and the hook on fresh key prefixes and fresh stores, in alternating order; the ratio
is hook / baseline drain time within the same round, reported as the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import redis  # noqa: E402
from bench_recorder import DEFAULT_PG, Producer, cleanup, make_store  # noqa: E402

from orchestrator.audit.notifications import Notifications  # noqa: E402
from orchestrator.audit.recorder import Recorder  # noqa: E402
from orchestrator.engine.notify import QUEUE, recorder_hook  # noqa: E402
from orchestrator.keys import Keys  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

MIXES = {"chatty": (4, 10), "ends": (1, 0)}


def timed(hook: Any) -> Any:
    """The hook, with the time spent in it summed (``spent``): its share of the same drain is
    robust to the load of a shared machine, which moves whole-drain ratios by tens of percent."""
    inner = hook.before_ack
    hook.spent = 0.0

    def before_ack(events: Any) -> None:
        t = time.perf_counter()
        try:
            inner(events)
        finally:
            hook.spent += time.perf_counter() - t

    hook.before_ack = before_ack
    return hook


def drain_once(
    redis_url: str, backend: str, pg_url: str, tmp: Path, runs: int, mix: str, hook: bool
) -> dict[str, Any]:
    prefix = f"bn{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    store, drop = make_store(backend, pg_url, tmp)
    try:
        steps, logs = MIXES[mix]
        producer = Producer(client, keys, steps, logs)
        events = sum(producer.run() for _ in range(runs))
        hooks: list[Any] = []
        if hook:
            Notifications(store).add_endpoint("http://127.0.0.1:9/hook", events=["completed"])
            settings = Settings(redis_url=redis_url, key_prefix=prefix, database_url="unused")
            hooks.append(timed(recorder_hook(settings, store)))
        rec = Recorder(store, client, keys, group="bench", hooks=hooks, trim=False)
        rec.setup()
        started = time.perf_counter()
        rec.drain(timeout=600)
        seconds = time.perf_counter() - started
        queued = 0
        if hook:
            queued = sum(
                int(client.llen(k))
                for k in client.scan_iter(f"{keys.broker}*{QUEUE}*")
                if client.type(k) == b"list"
            )
        return {
            "events": events,
            "seconds": seconds,
            "events_per_s": events / seconds,
            "batches": rec.stats.batches,
            "messages": hooks[0].sent if hooks else 0,
            "hook_seconds": hooks[0].spent if hooks else 0.0,
            "queued": queued,
        }
    finally:
        cleanup(client, keys)
        client.close()
        drop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--postgres-url", default=DEFAULT_PG)
    ap.add_argument("--json", default=None, help="Also write the results here.")
    ap.add_argument("--smoke", action="store_true", help="Tiny sizes: checks the script runs.")
    args = ap.parse_args()
    if args.smoke:
        args.runs, args.rounds = 30, 1
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mix in MIXES:
            rows: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for r in range(args.rounds):
                order = (False, True) if r % 2 == 0 else (True, False)
                got = {
                    hook: drain_once(
                        args.redis_url,
                        args.backend,
                        args.postgres_url,
                        Path(tmp),
                        args.runs,
                        mix,
                        hook,
                    )
                    for hook in order
                }
                rows.append((got[False], got[True]))
            ratios = [h["seconds"] / b["seconds"] for b, h in rows]
            results[mix] = {
                "baseline_events_per_s": statistics.median(b["events_per_s"] for b, _ in rows),
                "hook_events_per_s": statistics.median(h["events_per_s"] for _, h in rows),
                "ratio": statistics.median(ratios),
                "events": rows[0][0]["events"],
                "batches": rows[0][1]["batches"],
                "messages": rows[0][1]["messages"],
                "queued": rows[0][1]["queued"],
                "hook_ms_per_batch": statistics.median(
                    1000 * h["hook_seconds"] / max(1, h["batches"]) for _, h in rows
                ),
                "hook_share": statistics.median(h["hook_seconds"] / h["seconds"] for _, h in rows),
            }
    print(
        f"recorder drain, {args.backend}, {args.runs} runs per drain, median of {args.rounds} round(s)"
    )
    print(
        "| mix | events | baseline events/s | with hook events/s | time ratio | batches "
        "| messages queued | hook ms/batch | hook share of the drain |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mix, r in results.items():
        print(
            f"| {mix} | {r['events']} | {r['baseline_events_per_s']:,.0f} "
            f"| {r['hook_events_per_s']:,.0f} | {r['ratio']:.3f} | {r['batches']} "
            f"| {r['messages']} ({r['queued']} in the queue) | {r['hook_ms_per_batch']:.2f} "
            f"| {100 * r['hook_share']:.1f} % |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
