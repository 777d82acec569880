"""Run-detail API of a run with a mapped step of N items (issue 15).

    python benchmarks/bench_items_api.py [--items 10000] [--requests 60] [--database-url URL]
                                         [--json PATH] [--smoke]

Sets up a private redis-server and an audit store (SQLite in a temporary directory by default;
``--database-url postgresql+psycopg://...`` for PostgreSQL, whose tables are dropped and made
again), then writes two runs of the same three-step workflow to the real event stream in the
engine's shape (tests/items_helpers.py: items emit the ordinary step events with the step id
``resize[i]``, the mapped step one ``step_mapped`` event), and records them with the real
recorder (``Recorder.drain``): the baseline, whose ``resize`` mapped over an empty list, and the
measured run, whose ``resize`` mapped over N items (every 7th failed after three attempts, every
5th retried once; about 4.5 events an item). It times, through the Flask app in this process
(routing, auth, the reads, JSON; no network):

1. recording: the recorder's drain of the N-item run (events/s);
2. ``GET /api/v1/runs/{id}`` of both runs, read from the hot state (the run hash in Redis, as
   while a run is live or for ``state_ttl`` after) and from the audit store alone (after Redis
   forgot it): p50 / p95 and the ratio to the baseline;
3. the first page of items (``/steps/resize/items?limit=100``), a status-filtered page
   (``status=FAILED``) and the last page (``offset=N-100``): p50 / p95;
4. the Gantt (``/timeline``) with the items grouped, and with ``resize`` expanded (2,000 bars).

Targets (docs/performance.md): run detail p95 < 300 ms, first page of items p95 < 100 ms.
``--smoke``: 300 items, 5 requests each (the smoke test checks the script still runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]

import redis  # noqa: E402

from orchestrator.audit.recorder import Recorder  # noqa: E402
from orchestrator.audit.store import AuditStore  # noqa: E402
from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.engine.runstate import RunState  # noqa: E402
from orchestrator.keys import Keys  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from tests.items_helpers import mapped_run, run_meta  # noqa: E402

ADMIN_PASSWORD = "bench-admin-password"


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def publish(r: redis.Redis, keys: Keys, rid: str, n: int) -> int:
    """The run's hot state (RunState.create: its hash and run_created) and the rest of its events
    on the stream, numbered on from there. Returns how many events the run has."""
    evs, _ = mapped_run(rid, n)
    RunState(r, keys, state_ttl=3600).create(run_meta(rid), ["list_files", "resize", "publish"])
    pipe = r.pipeline(transaction=False)
    for i, e in enumerate(evs[1:], 1):
        pipe.xadd(
            keys.events,
            {
                "run": rid,
                "seq": e.seq,
                "type": e.type,
                "step": e.step,
                "status": e.status,
                "ts": e.ts,
                "data": e.data_json,
            },
        )
        if i % 2000 == 0:
            pipe.execute()
    pipe.execute()
    r.hset(keys.run(rid), mapping={"seq": str(len(evs))})
    return len(evs)


def timed(http: Any, path: str, n: int, **query: Any) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        resp = http.get(f"/api/v1{path}", query_string=query)
        out.append(time.perf_counter() - t)
        assert resp.status_code == 200, (path, resp.status_code, resp.data[:300])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.items, args.requests = 300, 5
    tmp = Path(tempfile.mkdtemp(prefix="bench-items-"))
    url = args.database_url or f"sqlite:///{tmp / 'audit.db'}"
    embedded = EmbeddedRedis(workdir=str(tmp)).start()
    results: dict[str, Any] = {"items": args.items, "requests": args.requests}
    try:
        store = AuditStore(url)
        if store.dialect == "postgresql":
            from orchestrator.audit.models import metadata
            from orchestrator.audit.store import VERSION_TABLE

            with store.begin() as conn:
                metadata.drop_all(conn)
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {VERSION_TABLE}")
        store.upgrade()
        results["store"] = store.dialect
        settings = Settings(
            redis_url=embedded.url,
            broker_url=embedded.url,
            result_backend=embedded.url,
            database_url=url,
            key_prefix=f"bi{uuid.uuid4().hex[:6]}",
        )
        keys = Keys(settings.key_prefix)
        r = redis.Redis.from_url(embedded.url)
        recorder = Recorder(store, r, keys)
        base, big = "base" + uuid.uuid4().hex[:8], "big" + uuid.uuid4().hex[:8]
        publish(r, keys, base, 0)
        recorder.drain(timeout=120)
        n_events = publish(r, keys, big, args.items)
        t = time.perf_counter()
        recorder.drain(timeout=600)
        took = time.perf_counter() - t
        results["record"] = {"events": n_events, "seconds": took, "events_per_s": n_events / took}
        print(f"recorded {n_events:,} events of a {args.items:,}-item run in {took:.2f} s "
              f"({n_events / took:,.0f} events/s, {store.dialect})")  # fmt: skip

        from web import create_app
        from web.settings import WebSettings

        app = create_app(
            settings,
            WebSettings(
                admin_password=ADMIN_PASSWORD,
                secret_key="bench",
                recorder=False,
                relay=False,
                sla_monitor=False,
            ),
        )
        http = app.test_client()
        login = {"username": "admin", "password": ADMIN_PASSWORD}
        assert http.post("/api/v1/auth/login", json=login).status_code == 200
        detail = http.get(f"/api/v1/runs/{big}").get_json()
        assert detail["steps"][1]["map"]["total"] == args.items, detail["steps"][1]
        n = args.requests
        rows = []

        def measure(name: str, rid: str, path: str, baseline: list[float] | None = None, **q: Any):
            timed(http, path, 2, **q)  # warm: statement caches, definition cache
            times = timed(http, path, n, **q)
            row = {"name": name, "p50_ms": pct(times, 0.5) * 1e3, "p95_ms": pct(times, 0.95) * 1e3}
            if baseline:
                row["ratio_p95"] = pct(times, 0.95) / pct(baseline, 0.95)
            rows.append(row)
            return times

        for source in ("hot", "audit"):
            if source == "audit":  # Redis forgot both runs: the detail is the store's alone
                for rid in (base, big):
                    r.delete(keys.run(rid), keys.steps(rid))
            b = measure(f"run detail, 3 steps, no items ({source})", base, f"/runs/{base}")
            measure(f"run detail, {args.items:,}-item step ({source})", big, f"/runs/{big}", b)
        measure("items: first page (limit 100)", big, f"/runs/{big}/steps/resize/items", limit=100)
        measure("items: FAILED, first page", big, f"/runs/{big}/steps/resize/items",
                status="FAILED", limit=100)  # fmt: skip
        measure("items: last page", big, f"/runs/{big}/steps/resize/items",
                offset=max(0, args.items - 100), limit=100)  # fmt: skip
        measure("one item with attempts and logs", big, f"/runs/{big}/steps/resize/items/3")
        measure("Gantt, items grouped", big, f"/runs/{big}/timeline")
        measure("Gantt, resize expanded", big, f"/runs/{big}/timeline", expand="resize")
        results["rows"] = rows
        print(f"{'request':55} {'p50 ms':>8} {'p95 ms':>8} {'p95 ratio':>10}")
        for row in rows:
            ratio = f"{row['ratio_p95']:.2f}x" if "ratio_p95" in row else ""
            print(f"{row['name']:55} {row['p50_ms']:8.1f} {row['p95_ms']:8.1f} {ratio:>10}")
        app.extensions["canvasflow"].stop()
        store.dispose()
        r.close()
    finally:
        embedded.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
