"""Where a recorder's drain spends its time: SQL time per statement, CPU per event.

    python benchmarks/bench_recorder_sql.py [--backend postgresql|sqlite] [--runs 150] [--steps 100]
        [--batch-size 500] [--redis-url URL] [--postgres-url URL] [--smoke]

Produces ``--runs`` runs of ``--steps`` sequential steps without logs through the real Lua
scripts (the mix a chain of fast-path steps makes: step started + completed, run transitions),
then drains them with one recorder and reports the recorder's CPU per event and per batch, the
drain's wall time, and the time of each SQL statement kind (from SQLAlchemy's cursor events:
what the driver and the server took). To compare with an older recorder, run this script with
``PYTHONPATH`` pointing at that version's checkout (``git archive REV orchestrator | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import event

# orchestrator first: bench_recorder puts this checkout first on sys.path, and a PYTHONPATH
# naming another version's checkout must win.
from orchestrator.audit.recorder import Recorder
from orchestrator.keys import Keys

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recorder as br  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--runs", type=int, default=150)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--postgres-url", default=br.DEFAULT_PG)
    ap.add_argument(
        "--smoke", action="store_true", help="3 runs of 5 steps: does the script still run?"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.runs, args.steps = 3, 5

    client = redis.Redis.from_url(args.redis_url)
    keys = Keys(f"sqlprof{uuid.uuid4().hex[:6]}")
    producer = br.Producer(client, keys, args.steps, 0)
    produced = sum(producer.run() for _ in range(args.runs))
    store, drop = br.make_store(args.backend, args.postgres_url, Path(tempfile.mkdtemp()))
    sql: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    @event.listens_for(store.engine, "before_cursor_execute")
    def before(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        conn.info["cf_t0"] = time.perf_counter()

    @event.listens_for(store.engine, "after_cursor_execute")
    def after(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        kind = " ".join(statement.split()[:4])[:70] + (" [many]" if many else "")
        sql[kind][0] += 1
        sql[kind][1] += time.perf_counter() - conn.info["cf_t0"]

    try:
        rec = Recorder(store, client, keys, batch_size=args.batch_size, block=0.0, trim=True)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = rec.drain()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        assert done == produced, (done, produced)
        print(
            f"{args.backend}: {done} events in {rec.stats.batches} batches; drain {wall:.2f} s wall; "
            f"recorder CPU {cpu:.2f} s = {cpu / done * 1e6:.0f} us an event, "
            f"{cpu / rec.stats.batches * 1e3:.1f} ms a batch"
        )
        print("SQL time by statement (COPY is not a cursor execute and is not listed):")
        for kind, (n, t) in sorted(sql.items(), key=lambda kv: -kv[1][1]):
            print(f"  {t * 1000:8.0f} ms  {int(n):5d} x  {kind}")
    finally:
        drop()
        br.cleanup(client, keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
