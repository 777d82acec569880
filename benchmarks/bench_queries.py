"""Query latency of the audit store at scale: 100k runs, 2M step attempts (slow: minutes).

    python benchmarks/bench_queries.py [--runs 100000] [--steps 20] [--logs 10]
        [--backend postgresql|sqlite] [--postgres-url URL] [--samples 200] [--keep] [--smoke]

Data is generated directly with bulk inserts (COPY on PostgreSQL), not through the recorder:
``--runs`` runs over 30 days across 20 workflows, ``--steps`` steps each with one attempt (5%
of steps retried once), ``--logs`` log lines per run, one or two tags per run. The schema is
the one ``AuditStore.upgrade()`` creates (a fresh schema ``benchq`` in the database
``canvasflow_bench``, reused on the next run when ``--keep`` was given).

Then every query of the CLI / REST API is timed ``--samples`` times with random parameters,
and p50/p95 are printed (target: list and run-detail p95 < 50 ms on PostgreSQL).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from sqlalchemy import Table, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from orchestrator.audit import AuditStore  # noqa: E402
from orchestrator.audit import queries as q  # noqa: E402
from orchestrator.audit.models import (  # noqa: E402
    run_tags,
    runs,
    step_attempts,
    step_logs,
    steps,
    workflow_definitions,
)

DEFAULT_PG = os.environ.get(
    "CANVASFLOW_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/canvasflow_bench"
)
WORKFLOWS = [f"wf{i:02d}" for i in range(20)]
TAGS = ["etl", "nightly", "adhoc", "billing", "ml", "reports", "backfill", "critical", "eu", "us"]
T_END = 1_790_000_000.0
SPAN = 30 * 86400


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]


def generate(args: argparse.Namespace) -> Any:
    """Yield (table, rows) chunks of synthetic history."""
    rng = random.Random(42)
    chunk: dict[str, list[dict[str, Any]]] = {
        "runs": [],
        "tags": [],
        "steps": [],
        "attempts": [],
        "logs": [],
    }
    for i in range(args.runs):
        rid = f"{i:016x}"
        wf = WORKFLOWS[i % len(WORKFLOWS)]
        created = T_END - SPAN + SPAN * i / args.runs
        roll = rng.random()
        status = (
            "COMPLETED"
            if roll < 0.8
            else "FAILED"
            if roll < 0.9
            else "CANCELLED"
            if roll < 0.95
            else "RUNNING"
        )
        t = created + 0.05
        run_tag = sorted(rng.sample(TAGS, rng.choice((1, 2))))
        for j in range(args.steps):
            sid = f"step_{j:02d}"
            retried = rng.random() < 0.05
            n = 2 if retried else 1
            started = t
            for a in range(1, n + 1):
                d = rng.lognormvariate(-2.5, 1.0) * (1 + j % 5)
                last = a == n
                st = (
                    ("FAILED" if status == "FAILED" and j == args.steps - 1 else "COMPLETED")
                    if last
                    else "RETRYING"
                )
                chunk["attempts"].append(
                    {
                        "run_id": rid,
                        "step_id": sid,
                        "attempt": a,
                        "status": st,
                        "status_seq": 3 + j * 4 + a,
                        "worker": f"worker{rng.randrange(8)}@host",
                        "queue": "default",
                        "task_id": f"{rid}{j:04d}",
                        "started_at": t,
                        "finished_at": t + d,
                        "duration": d,
                        "output": json.dumps({"rows": rng.randrange(1000)})
                        if st == "COMPLETED"
                        else None,
                        "output_size": 12 if st == "COMPLETED" else None,
                        "error": None if st == "COMPLETED" else "boom",
                        "stats": '{"items":10}',
                    }
                )
                t += d
            chunk["steps"].append(
                {
                    "run_id": rid,
                    "step_id": sid,
                    "position": j,
                    "plugin": "builtin",
                    "method": "echo",
                    "queue": "default",
                    "status": st,
                    "status_seq": 4 + j * 4,
                    "attempts": n,
                    "started_at": started,
                    "finished_at": t,
                    "duration": t - started,
                    "worker": "worker1@host",
                    "progress": 1.0,
                    "progress_seq": 2 + j * 4,
                    "stats": '{"items":10}',
                    "stats_seq": 3 + j * 4,
                }
            )
        for k in range(args.logs):
            chunk["logs"].append(
                {
                    "run_id": rid,
                    "seq": 10_000 + k,
                    "step_id": f"step_{k % args.steps:02d}",
                    "ts": created + k * 0.01,
                    "level": "INFO",
                    "message": f"processed batch {k}",
                    "entity_tag": "batch",
                    "entity_id": str(k),
                }
            )
        finished = t if status != "RUNNING" else None
        chunk["runs"].append(
            {
                "id": rid,
                "workflow_id": wf,
                "version": "1",
                "name": wf.upper(),
                "status": status,
                "status_seq": 99,
                "inputs": "{}",
                "priority": "normal",
                "tags": json.dumps(run_tag),
                "triggered_by": f"user{i % 50}",
                "trigger_type": "manual",
                "sla_seconds": 30.0,
                "created_at": created,
                "started_at": created + 0.05,
                "finished_at": finished,
                "duration": finished - created - 0.05 if finished else None,
                "last_seq": 99,
                "event_count": 99,
                "updated_at": created,
            }
        )
        chunk["tags"].extend({"run_id": rid, "tag": tag} for tag in run_tag)
        if len(chunk["runs"]) >= 2000:
            yield chunk
            chunk = {k: [] for k in chunk}
    yield chunk


TABLES = {
    "runs": runs,
    "tags": run_tags,
    "steps": steps,
    "attempts": step_attempts,
    "logs": step_logs,
}


def columns(table: Table, row: dict[str, Any]) -> list[str]:
    """The model's columns that the generator fills, in table order; the others take their
    server default. A key the table lacks, or a required column without a default that the
    generator leaves out, stops the load before any row is sent (the model changed: teach
    ``generate`` the column)."""
    unknown = sorted(set(row) - set(table.c.keys()))
    missing = [
        c.name for c in table.c if not c.nullable and c.server_default is None and c.name not in row
    ]
    if unknown or missing:
        raise SystemExit(
            f"{table.name}: the generator fills unknown columns {unknown} and leaves out "
            f"required columns {missing}; update generate() in {Path(__file__).name}"
        )
    return [c.name for c in table.c if c.name in row]


def load(store: AuditStore, args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    total = 0
    for chunk in generate(args):
        with store.begin() as conn:
            for name, rows in chunk.items():
                if not rows:
                    continue
                table = TABLES[name]
                cols = columns(table, rows[0])
                total += len(rows)
                if store.dialect == "postgresql":
                    raw = conn.connection.dbapi_connection
                    with (
                        raw.cursor() as cur,
                        cur.copy(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN") as cp,
                    ):
                        for r in rows:
                            cp.write_row([r[c] for c in cols])
                else:
                    conn.execute(table.insert(), [{c: r[c] for c in cols} for r in rows])
        print(f"\r  loaded {total:,} rows ({time.perf_counter() - t0:.0f}s)", end="", flush=True)
    print()
    with store.begin() as conn:
        conn.execute(
            workflow_definitions.insert(),
            [
                {
                    "workflow_id": wf,
                    "digest": f"d{wf}",
                    "version": "1",
                    "name": wf.upper(),
                    "body": json.dumps({"id": wf, "steps": []}),
                    "created_at": T_END - SPAN,
                }
                for wf in WORKFLOWS
            ],
        )
        conn.execute(text("ANALYZE"))


def timed(fn: Any, samples: int) -> tuple[float, float]:
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return pct(out, 0.5), pct(out, 0.95)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--logs", type=int, default=10)
    ap.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--postgres-url", default=DEFAULT_PG)
    ap.add_argument("--sqlite-path", default=None)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the generated data")
    ap.add_argument(
        "--smoke", action="store_true", help="200 runs, 3 samples: does the script still run?"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.runs, args.samples = 200, 3

    if args.backend == "postgresql":
        import psycopg

        url = make_url(args.postgres_url)
        plain = url.set(drivername="postgresql")
        with psycopg.connect(
            plain.set(database="postgres").render_as_string(hide_password=False), autocommit=True
        ) as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)
            ).fetchone():
                conn.execute(f'CREATE DATABASE "{url.database}"')
        with psycopg.connect(plain.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS benchq")
        store = AuditStore(url.update_query_dict({"options": "-csearch_path=benchq"}))
    else:
        path = args.sqlite_path or str(Path(tempfile.gettempdir()) / "canvasflow-benchq.db")
        store = AuditStore(f"sqlite:///{path}")
    store.upgrade()
    with store.connect() as conn:
        have = conn.execute(select(func.count()).select_from(runs)).scalar_one()
    if have != args.runs:
        if have:
            with store.begin() as conn:
                for t in (step_logs, step_attempts, steps, run_tags, runs):
                    conn.execute(t.delete())
        print(f"generating {args.runs:,} runs x {args.steps} steps into {store.display_url}")
        load(store, args)
    with store.connect() as conn:
        n_att = conn.execute(select(func.count()).select_from(step_attempts)).scalar_one()
    print(f"{args.runs:,} runs, {n_att:,} step attempts; {args.samples} samples per query\n")

    rng = random.Random(7)
    ids = [f"{rng.randrange(args.runs):016x}" for _ in range(args.samples)]
    it = itertools.cycle(ids)
    cursor10 = None
    page = q.list_runs(store, limit=50)
    for _ in range(9):
        page = q.list_runs(store, limit=50, cursor=page.next_cursor)
    cursor10 = page.next_cursor
    day = T_END - 86400
    cases = [
        ("list: newest 50", lambda: q.list_runs(store, limit=50)),
        ("list: status=FAILED", lambda: q.list_runs(store, status="FAILED", limit=50)),
        ("list: workflow", lambda: q.list_runs(store, workflow=rng.choice(WORKFLOWS), limit=50)),
        ("list: tag", lambda: q.list_runs(store, tags=[rng.choice(TAGS)], limit=50)),
        (
            "list: triggered_by",
            lambda: q.list_runs(store, triggered_by=f"user{rng.randrange(50)}", limit=50),
        ),
        (
            "list: time range (1 day ago)",
            lambda: q.list_runs(store, since=day - 86400, until=day, limit=50),
        ),
        (
            "list: status+workflow+tag",
            lambda: q.list_runs(
                store,
                status="FAILED",
                workflow=rng.choice(WORKFLOWS),
                tags=[rng.choice(TAGS)],
                limit=50,
            ),
        ),
        (
            "list: free text, a workflow",
            lambda: q.list_runs(store, search=rng.choice(WORKFLOWS), limit=50),
        ),
        (
            "list: free text, run id prefix",
            lambda: q.list_runs(store, search=next(it)[:10], limit=50),
        ),
        (
            "list: free text, no match",
            lambda: q.list_runs(store, search="nothing-like-this", limit=50),
        ),
        ("list: page 11 (keyset)", lambda: q.list_runs(store, limit=50, cursor=cursor10)),
        ("run detail (20 steps, logs)", lambda: q.run_detail(store, next(it))),
        ("logs of a run", lambda: q.logs(store, next(it), limit=500)),
        ("events after seq", lambda: q.events_after(store, next(it), 10)),
    ]
    print("| query | p50 | p95 |")
    print("|---|---|---|")
    for name, fn in cases:
        fn()  # warm
        p50, p95 = timed(fn, args.samples)
        print(f"| {name} | {p50 * 1000:.1f} ms | {p95 * 1000:.1f} ms |", flush=True)
    for label, since in (
        ("analytics: last 24 h", T_END - 86400),
        ("analytics: last 7 days", T_END - 7 * 86400),
    ):
        p50, p95 = timed(lambda s=since: q.analytics(store, s, T_END), max(3, args.samples // 40))
        print(f"| {label} | {p50 * 1000:.0f} ms | {p95 * 1000:.0f} ms |", flush=True)
    if not args.keep:
        with store.begin() as conn:
            for t in (step_logs, step_attempts, steps, run_tags, runs, workflow_definitions):
                conn.execute(t.delete())
    store.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
