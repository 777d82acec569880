"""Drill: how long a step of a SIGKILLed worker takes to run again, and that it runs once.

Starts a private redis-server and a worker, submits a one-step run (builtin.sleep), kills the
whole worker with SIGKILL while the step runs, starts a second worker, and prints the gap
between the two attempts. With the defaults (visibility_timeout 300 s) it takes about five
minutes; pass smaller values to see the mechanism quickly:

    python benchmarks/drill_worker_loss.py                                 # defaults
    python benchmarks/drill_worker_loss.py --visibility-timeout 8 --lease-ttl 15
    python benchmarks/drill_worker_loss.py --visibility-timeout 4 --step 12 --no-kill  # long step runs once
    python benchmarks/drill_worker_loss.py --smoke        # 3 s timeouts: does it still run?
    python benchmarks/drill_worker_loss.py --broker amqp://guest:guest@127.0.0.1:5672/cf-drill
        # RabbitMQ as broker: no visibility timeout, the message comes back when the
        # connection closes, and the copy waits for the lease (docs/operations.md)

It exits 1 when the run did not complete.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

from orchestrator import Client, Workflow
from orchestrator.cli.embedded import EmbeddedRedis
from orchestrator.cli.launcher import Fleet
from orchestrator.settings import Settings


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--visibility-timeout", type=int, default=Settings().visibility_timeout)
    ap.add_argument("--lease-ttl", type=int, default=Settings().lease_ttl)
    ap.add_argument("--broker", default="", help="Celery broker URL (default: the private Redis)")
    ap.add_argument("--step", type=float, default=3.0, help="seconds the step sleeps")
    ap.add_argument(
        "--no-kill", action="store_true", help="kill nothing: a long step must run once"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="visibility timeout and lease 3 s, a 3 s step: does the drill still run?",
    )
    args = ap.parse_args()
    if args.smoke:
        args.visibility_timeout, args.lease_ttl, args.step = 3, 3, 3.0
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            redis_url=server.url,
            key_prefix="drill",
            broker_url=args.broker,
            visibility_timeout=args.visibility_timeout,
            lease_ttl=args.lease_ttl,
        )
        fleet = Fleet(settings, Path(tmp) / "logs")
        try:
            fleet.start_worker("first")
            client = Client(settings)
            run = client.submit(
                Workflow("drill").step("s", "builtin", "sleep", params={"seconds": args.step})
            )
            while client.snapshot(run.id).step("s").status != "RUNNING":
                time.sleep(0.05)
            if not args.no_kill:
                time.sleep(min(1.0, args.step / 3))
                os.killpg(fleet.procs["first"].pid, signal.SIGKILL)
                fleet.procs["first"].wait(10)
                fleet.start_worker("second")
                print(f"killed the first worker; waiting up to {args.visibility_timeout + 60} s")
            snap = run.wait(args.visibility_timeout + args.step + 60)
            step = snap.step("s")
            print(f"run {snap.status}; step attempts: {step.attempts}")
            for a in step.history:
                print(
                    f"  attempt {a.number}: {a.status} on {a.worker}, started {a.started_at - step.started_at:.1f} s "
                    "after the first"
                )
        finally:
            fleet.stop()
    return 0 if snap.status == "COMPLETED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
