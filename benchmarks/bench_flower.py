"""Fleet inspection side by side with Celery Flower 2.2 (issue 6).

    flock /tmp/canvasflow-bench.lock .venv/bin/python benchmarks/bench_flower.py \
        --tasks 20000,100000 [--flower /tmp/fv/bin/celery] [--json PATH] [--smoke]

Starts a private redis-server, one canvasflow worker (prefork, concurrency 4), ``python -m web``
(SQLite audit store, anonymous viewer) and ``celery flower`` from a separate environment (Flower
must not be a canvasflow dependency: install it with ``python3 -m venv /tmp/fv &&
/tmp/fv/bin/pip install flower==2.2.0 'celery[redis]'`` — Flower alone lacks the Redis transport's
``redis`` package — and pass ``--flower /tmp/fv/bin/celery``, the default). Both watch the
same fleet. ``--tasks`` takes one size or several, ascending: no-op tasks (``canvasflow.merge``)
are sent until the fleet has run that many in total, and at each size, once both have seen the
last task:

- GET workers, GET tasks?limit=100 and one task's detail, median of 20 calls, on each;
- the resident memory (VmRSS) of each web process, idle, after the tasks and after the requests;
- that Flower sees the same worker and the same tasks: its task-succeeded count equals
  canvasflow's SUCCESS count, and a random sample of tasks has the same state and worker on both
  (canvasflow workers stay ordinary Celery workers).

Run it alone (``flock``): the figures are wall-clock and the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.cli.launcher import Fleet  # noqa: E402
from orchestrator.engine.celery_app import celery_config, create_celery  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

FLOWER_APP = """from celery import Celery
app = Celery("flowerbench")
app.conf.update({conf!r})
"""
SAMPLE = 200  # tasks compared one by one between Flower and canvasflow at each size


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def median_ms(url: str, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = requests.get(url, timeout=120)
        r.raise_for_status()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 1)


def wait(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def prom_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        ln.split()[1]
        for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gb": round(int(mem) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def compare(cf: str, fl: str, host: str, ids: list[str]) -> dict[str, Any]:
    """Does Flower see the same worker and the same tasks as canvasflow?"""
    cf_metrics = requests.get(f"{cf}/metrics", timeout=60).text
    fl_metrics = requests.get(f"{fl}/metrics", timeout=60).text
    cf_success = prom_sum(cf_metrics, "canvasflow_celery_tasks", state="SUCCESS")
    fl_success = prom_sum(fl_metrics, "flower_events_total", type="task-succeeded")
    mismatches = []
    for tid in random.sample(ids, min(SAMPLE, len(ids))):
        a = requests.get(f"{cf}/api/v1/inspect/tasks/{tid}", timeout=10).json()
        b = requests.get(f"{fl}/api/task/info/{tid}", timeout=10).json()
        if (a.get("state"), a.get("worker")) != (b.get("state"), b.get("worker")):
            mismatches.append(
                {
                    "task": tid,
                    "canvasflow": [a.get("state"), a.get("worker")],
                    "flower": [b.get("state"), b.get("worker")],
                }
            )
    cf_workers = {
        w["name"]
        for w in requests.get(f"{cf}/api/v1/inspect/workers", timeout=10).json()["workers"]
    }
    fl_workers = set(requests.get(f"{fl}/api/workers", timeout=10).json())
    return {
        "same_worker_seen": host in cf_workers and host in fl_workers,
        "succeeded": {"canvasflow": int(cf_success), "flower": int(fl_success)},
        "sampled": min(SAMPLE, len(ids)),
        "sample_mismatches": mismatches,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--tasks", default="20000", help="one size or several, comma-separated, ascending"
    )
    ap.add_argument("--flower", default=os.environ.get("FLOWER_CELERY", "/tmp/fv/bin/celery"))
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--json", default="")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="30 tasks, 3 calls a figure, concurrency 2: does the script still run?",
    )
    args = ap.parse_args()
    calls = 20
    if args.smoke:
        args.tasks, args.concurrency, calls = "30", 2, 3
    sizes = sorted({int(s) for s in args.tasks.split(",") if s.strip()})
    tmp = Path(tempfile.mkdtemp(prefix="cf-flower-"))
    server = EmbeddedRedis()
    server.start()
    settings = Settings(
        redis_url=server.url,
        key_prefix=f"fb{uuid.uuid4().hex[:6]}",
        database_url=f"sqlite:///{tmp / 'audit.db'}",
    )
    fleet = Fleet(settings, tmp)
    flower_version = subprocess.run(
        [
            str(Path(args.flower).parent / "python"),
            "-c",
            "import flower, celery; print(flower.__version__, celery.__version__)",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "flower": flower_version[:1],
        "flower_celery": flower_version[1:],
        "concurrency": args.concurrency,
        "sizes": {},
    }
    try:
        cf_port, fl_port = free_port(), free_port()
        os.environ.setdefault(
            "CANVASFLOW_WEB_SECRET_KEY", "bench-flower-signing-key"
        )  # Fleet copies os.environ
        web = fleet.spawn(
            "web",
            [sys.executable, "-m", "web", "--port", str(cf_port), "--anonymous-role", "viewer"],
        )
        conf = {
            k: v for k, v in celery_config(settings).items() if k.startswith(("broker", "result"))
        }
        (tmp / "flowerbench.py").write_text(FLOWER_APP.format(conf=conf))
        env = {**os.environ, "PYTHONPATH": str(tmp), "FLOWER_UNAUTHENTICATED_API": "true"}
        flower = subprocess.Popen(
            [
                args.flower,
                "-A",
                "flowerbench",
                "flower",
                f"--port={fl_port}",
                "--address=127.0.0.1",
            ],
            env=env,
            cwd=tmp,
            start_new_session=True,
            stdout=open(tmp / "flower.log", "wb"),
            stderr=subprocess.STDOUT,
        )  # noqa: SIM115
        fleet.procs["flower"] = flower
        cf, fl = f"http://127.0.0.1:{cf_port}", f"http://127.0.0.1:{fl_port}"
        wait(lambda: requests.get(f"{cf}/healthz", timeout=2).ok, 30, "canvasflow web")
        wait(lambda: requests.get(f"{fl}/healthcheck", timeout=2).ok, 30, "flower")
        host = fleet.start_worker("bench", queues="default", concurrency=args.concurrency)
        wait(
            lambda: host in requests.get(f"{fl}/api/workers?refresh=1", timeout=10).json(),
            30,
            "flower sees the worker",
        )
        time.sleep(2)
        out["rss_idle_mb"] = {"canvasflow": rss_mb(web.pid), "flower": rss_mb(flower.pid)}
        app = create_celery(settings, sender=True)
        ids: list[str] = []
        t0 = time.time()
        for size in sizes:
            res: dict[str, Any] = {}
            t1 = time.time()
            with app.producer_or_acquire() as producer:
                for _ in range(size - len(ids)):
                    ids.append(
                        app.send_task("canvasflow.merge", args=[{}, {}], producer=producer).id
                    )
            last = ids[-1]
            res["send_seconds"] = round(time.time() - t1, 1)

            def cf_done(last: str = last) -> bool:
                r = requests.get(f"{cf}/api/v1/inspect/tasks/{last}", timeout=10)
                return r.ok and r.json()["state"] == "SUCCESS"

            wait(cf_done, 3600, "canvasflow to record the last task")
            wait(
                lambda last=last: (
                    requests.get(f"{fl}/api/task/info/{last}", timeout=10).json().get("state")
                    == "SUCCESS"
                ),
                3600,
                "flower to see the last task",
            )
            time.sleep(3)
            res["seconds_to_settle"] = round(time.time() - t1, 1)
            res["rss_after_tasks_mb"] = {
                "canvasflow": rss_mb(web.pid),
                "flower": rss_mb(flower.pid),
            }
            res["ms"] = {
                "workers": {
                    "canvasflow": median_ms(f"{cf}/api/v1/inspect/workers?refresh=0", calls),
                    "flower": median_ms(f"{fl}/api/workers", calls),
                },
                "tasks_limit_100": {
                    "canvasflow": median_ms(f"{cf}/api/v1/inspect/tasks?limit=100", calls),
                    "flower": median_ms(f"{fl}/api/tasks?limit=100", calls),
                },
                "task_detail": {
                    "canvasflow": median_ms(f"{cf}/api/v1/inspect/tasks/{last}", calls),
                    "flower": median_ms(f"{fl}/api/task/info/{last}", calls),
                },
            }
            res["rss_after_requests_mb"] = {
                "canvasflow": rss_mb(web.pid),
                "flower": rss_mb(flower.pid),
            }
            res["same_fleet"] = compare(cf, fl, host, ids)
            res["monitor_dropped"] = prom_sum(
                requests.get(f"{cf}/metrics", timeout=60).text,
                "canvasflow_task_events_dropped_total",
            )
            res["targets"] = {
                "tasks_limit_100_under_50ms": res["ms"]["tasks_limit_100"]["canvasflow"] < 50,
                "rss_at_most_a_quarter_of_flower": res["rss_after_requests_mb"]["canvasflow"]
                <= res["rss_after_requests_mb"]["flower"] / 4,
            }
            out["sizes"][str(size)] = res
            print(json.dumps({str(size): res}), flush=True)
        out["total_seconds"] = round(time.time() - t0, 1)
    finally:
        fleet.stop()
        server.stop()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
