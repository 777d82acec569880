"""What one watchdog check costs: N live runs, nothing stalled, against the floor of reading them.

    python benchmarks/bench_watchdog.py [--runs 1000,10000] [--queued 10000] [--redis-url URL]
        [--smoke]

For each N: N runs are created PENDING (RunState.create, as a submit does) under a fresh key
prefix, one check records them, then ``check_once`` is timed in steady state (nothing changed,
nothing stalled) and compared with the floor: ZRANGE of the live set plus one pipelined HMGET
per run, which any scan of the live runs must do. Then the message scan: with ``--queued``
messages in the default queue (none naming the runs), a check that judges 10 runs stalled is
timed. The median of 5 rounds is printed. By default a private redis-server is started.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from orchestrator import Client  # noqa: E402
from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.engine.watchdog import Watchdog  # noqa: E402
from orchestrator.fleet.inspect import queue_keys  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

DEFINITION = '{"id":"bench","steps":[{"id":"a","plugin":"builtin","method":"echo"}]}'


def median_ms(fn, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="1000,10000")
    ap.add_argument("--queued", type=int, default=10000)
    ap.add_argument("--redis-url", default="")
    ap.add_argument(
        "--smoke", action="store_true", help="20 and 40 runs, 100 queued: does it still run?"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.runs, args.queued = "20,40", 100
    embedded = None
    url = args.redis_url
    if not url:
        embedded = EmbeddedRedis().start()
        url = embedded.url
    try:
        print(f"{'live runs':>10} {'check_once':>11} {'floor':>8} {'ratio':>6}")
        for n in (int(x) for x in args.runs.split(",")):
            client = Client(Settings(redis_url=url, key_prefix=f"bw{uuid.uuid4().hex[:6]}"))
            for i in range(n):
                client.state.create(
                    f"{i:016x}", {"workflow": "bench", "definition": DEFINITION}, ["a"], "bench"
                )
            dog = Watchdog(client, stall_seconds=3600)
            dog.check_once()
            keys = client.keys

            def floor(client: Client = client, keys: Any = keys) -> None:
                ids = client.redis.zrange(keys.live, 0, -1)
                pipe = client.redis.pipeline(transaction=False)
                for rid in ids:
                    pipe.hmget(keys.run(rid.decode()), "status", "seq")
                pipe.execute()
                client.redis.hmget(keys.watchdog, ids)

            check, base = median_ms(dog.check_once), median_ms(floor)
            print(f"{n:>10} {check:>9.1f}ms {base:>6.1f}ms {check / base:>6.2f}")
            client.close()
        client = Client(Settings(redis_url=url, key_prefix=f"bw{uuid.uuid4().hex[:6]}"))
        key = queue_keys(client.settings.key_prefix, "default")[0][1]
        body = (
            '{"body": "'
            + "QUJD" * 100
            + '", "properties": {"body_encoding": "base64"}, "headers": {}}'
        )
        for i in range(0, args.queued, 1000):
            client.redis.rpush(key, *([body] * min(1000, args.queued - i)))
        ids = [f"{i:016x}" for i in range(10)]
        dog = Watchdog(client, stall_seconds=3600)
        scan = median_ms(lambda: dog.mentioned(ids, ["default"]))
        print(
            f"message scan: 10 stalled candidates, {args.queued} queued messages: {scan:.1f}ms "
            f"({1000 * scan / max(1, args.queued):.1f}us per message)"
        )
        client.close()
    finally:
        if embedded:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
