"""Event trigger throughput: events/s through POST /api/v1/events to started runs, one web process.

    PYTHONPATH=. python benchmarks/bench_events.py [--events N] [--clients C] [--smoke] [--json PATH]

Sets up a private redis-server, a SQLite audit store, one worker (prefork, concurrency 2) and one
``python -m web`` (gevent), registers a one-step workflow with an event trigger, then, from C
client threads (HTTP keep-alive, an admin's API token), in this order and in the same run:

1. baseline: N ``POST /api/v1/runs`` of the same workflow (a plain submit);
2. N events without a key (``POST /api/v1/events``), each starting one run;
3. N events, each with a new key (the idempotency claim written with the run);
4. the N keys of phase 3 again: every event is deduplicated, no run starts.

For each phase: the requests/s while posting, and for phases 1-3 the runs/s "to started runs":
N divided by the time from the first request until every run it started has left PENDING (a
worker began it). Ratios: events without a key against the plain submit; with a key against
without (the idempotent-key overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import requests  # noqa: E402
from bench_web import Proc, free_port  # noqa: E402

from orchestrator import Client  # noqa: E402
from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

PASSWORD = "bench-password"
EVENT = "bench.uploaded"
WORKFLOW = {
    "id": "bench_events",
    "inputs": {"n": 0},
    "triggers": [{"event": EVENT, "inputs": {"n": "{{ event.payload.n }}"}}],
    "steps": [
        {"id": "echo", "plugin": "builtin", "method": "echo", "params": {"n": "{{ inputs.n }}"}}
    ],
}


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def post_all(
    url: str, token: str, bodies: list[dict[str, Any]], clients: int
) -> tuple[float, list[Any]]:
    """POST every body from ``clients`` threads; (seconds, responses' JSON in body order)."""
    out: list[Any] = [None] * len(bodies)
    nxt = iter(range(len(bodies)))
    lock = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            r = s.post(url, json=bodies[i], timeout=60)
            if r.status_code >= 300:
                errors.append(f"{r.status_code} {r.text[:200]}")
            out[i] = r.json()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, first: {errors[0]}")
    return elapsed, out


def started(client: Client, run_ids: list[str]) -> bool:
    statuses = client.state.runs(run_ids, "status")
    return all(r is not None and r.status != "PENDING" for r in statuses)


def phase(
    name: str,
    client: Client,
    url: str,
    token: str,
    bodies: list[dict[str, Any]],
    clients: int,
    runs_of: Any,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    posting, answers = post_all(url, token, bodies, clients)
    run_ids = [rid for a in answers for rid in runs_of(a)]
    result: dict[str, Any] = {
        "phase": name,
        "requests": len(bodies),
        "runs": len(run_ids),
        "posting_s": posting,
        "requests_per_s": len(bodies) / posting,
    }
    if run_ids:
        wait_until(lambda: started(client, run_ids), 600, f"the runs of {name} to start")
        to_started = time.perf_counter() - t0
        result["to_started_s"] = to_started
        result["runs_started_per_s"] = len(run_ids) / to_started
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=500, help="requests per phase (default 500)")
    ap.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    ap.add_argument("--smoke", action="store_true", help="20 requests per phase, 2 clients")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n, clients = (20, 2) if args.smoke else (args.events, args.clients)
    work = Path(tempfile.mkdtemp(prefix="cf-bench-events-"))
    embedded = EmbeddedRedis(workdir=str(work)).start()
    settings = Settings(
        redis_url=embedded.url,
        database_url=f"sqlite:///{work / 'audit.db'}",
        key_prefix=f"be{uuid.uuid4().hex[:6]}",
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CANVASFLOW_")},
        **settings.as_env(),
        "PYTHONPATH": str(ROOT),
        "CANVASFLOW_WEB_ADMIN_PASSWORD": PASSWORD,
        "CANVASFLOW_WEB_SECRET_KEY": "bench",
    }
    procs: list[Proc] = []
    client = Client(settings)
    try:
        procs.append(
            Proc(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "workers.app",
                    "worker",
                    "-Q",
                    "default",
                    "-c",
                    "2",
                    "-l",
                    "WARNING",
                    "--without-mingle",
                    "--without-gossip",
                ],
                env,
                work / "worker.log",
            )
        )
        wait_until(lambda: client.catalog(), 120, "the worker")
        port = free_port()
        procs.append(
            Proc([sys.executable, "-m", "web", "--port", str(port)], env, work / "web.log")
        )
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return requests.get(f"{base}/healthz", timeout=2).ok
            except requests.RequestException:
                return False

        wait_until(ready, 120, "the web process")
        s = requests.Session()
        login = s.post(
            f"{base}/api/v1/auth/login",
            json={"username": "admin", "password": PASSWORD},
            timeout=10,
        )
        login.raise_for_status()
        token = s.post(
            f"{base}/api/v1/auth/tokens",
            json={"name": "bench"},
            headers={"X-CSRF-Token": login.json()["csrf_token"]},
            timeout=10,
        ).json()["token"]
        client.register(WORKFLOW)
        # Warm up both routes (first-request imports, the trigger index, the prepared cache).
        post_all(
            f"{base}/api/v1/runs", token, [{"workflow": WORKFLOW["id"], "inputs": {"n": -1}}], 1
        )
        post_all(f"{base}/api/v1/events", token, [{"name": EVENT, "payload": {"n": -1}}], 1)
        keys = [f"key-{uuid.uuid4().hex}" for _ in range(n)]
        results = [
            phase(
                "baseline: POST /runs",
                client,
                f"{base}/api/v1/runs",
                token,
                [{"workflow": WORKFLOW["id"], "inputs": {"n": i}} for i in range(n)],
                clients,
                lambda a: [a["id"]],
            ),
            phase(
                "events, no key",
                client,
                f"{base}/api/v1/events",
                token,
                [{"name": EVENT, "payload": {"n": i}} for i in range(n)],
                clients,
                lambda a: [r["run_id"] for r in a["started"]],
            ),
            phase(
                "events, new key each",
                client,
                f"{base}/api/v1/events",
                token,
                [{"name": EVENT, "payload": {"n": i}, "key": k} for i, k in enumerate(keys)],
                clients,
                lambda a: [r["run_id"] for r in a["started"]],
            ),
            phase(
                "events, repeated keys (all deduplicated)",
                client,
                f"{base}/api/v1/events",
                token,
                [{"name": EVENT, "payload": {"n": i}, "key": k} for i, k in enumerate(keys)],
                clients,
                lambda a: [r["run_id"] for r in a["started"]],
            ),
        ]
        if results[3]["runs"]:
            raise SystemExit("a repeated key started a run")
        base_rps = results[0]["requests_per_s"]
        nokey_rps = results[1]["requests_per_s"]
        print(
            f"\n{n} requests per phase, {clients} client threads, 1 web process, 1 worker (c=2)\n"
        )
        print("| phase | requests/s | runs started/s (to started runs) | vs baseline |")
        print("|---|---|---|---|")
        for r in results:
            to_started = f"{r['runs_started_per_s']:.1f}" if "runs_started_per_s" in r else "-"
            print(
                f"| {r['phase']} | {r['requests_per_s']:.1f} | {to_started} | {r['requests_per_s'] / base_rps:.2f}x |"
            )
        overhead = nokey_rps / results[2]["requests_per_s"]
        print(
            f"\nidempotent-key overhead: a keyed event takes {overhead:.2f}x the time of one without"
        )
        summary = {
            "events": n,
            "clients": clients,
            "cpus": os.cpu_count(),
            "phases": results,
            "events_vs_submit": nokey_rps / base_rps,
            "key_overhead": overhead,
        }
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        client.close()
        embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
