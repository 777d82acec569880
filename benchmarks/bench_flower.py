"""Fleet inspection side by side with Celery Flower 2.2 (issue 6).

    python benchmarks/bench_flower.py [--tasks 20000] [--flower /path/to/celery] [--json PATH]

Starts a private redis-server, one canvasflow worker (prefork, concurrency 4), ``python -m web``
(SQLite audit store, anonymous viewer) and ``celery flower`` from a separate environment (Flower
must not be a canvasflow dependency: install it with ``python -m venv /tmp/fv &&
/tmp/fv/bin/pip install flower==2.2.0`` and pass ``--flower /tmp/fv/bin/celery``). Both watch the
same fleet; N no-op tasks (``canvasflow.merge``) are sent, and once both have seen them all:

- GET workers, GET tasks?limit=100 and one task's detail, median of 20 calls, on each;
- the resident memory (VmRSS) of each web process, idle and after the N tasks.

Flower sees the same workers and tasks, which shows canvasflow workers stay ordinary Celery workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.celery_app import celery_config, create_celery  # noqa: E402
from orchestrator.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.fleet import Fleet  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

FLOWER_APP = """from celery import Celery
app = Celery("flowerbench")
app.conf.update({conf!r})
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def median_ms(url: str, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = requests.get(url, timeout=60)
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--flower", default=os.environ.get("FLOWER_CELERY", "/tmp/fv/bin/celery"))
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cf-flower-"))
    server = EmbeddedRedis()
    server.start()
    settings = Settings(redis_url=server.url, key_prefix=f"fb{uuid.uuid4().hex[:6]}",
                        database_url=f"sqlite:///{tmp / 'audit.db'}")
    fleet = Fleet(settings, tmp)
    out: dict[str, object] = {"tasks": args.tasks}
    try:
        cf_port, fl_port = 18080 + os.getpid() % 1000, 19080 + os.getpid() % 1000
        web = fleet.spawn("web", [sys.executable, "-m", "web", "--port", str(cf_port), "--anonymous-role", "viewer"])
        conf = {k: v for k, v in celery_config(settings).items() if k.startswith(("broker", "result"))}
        (tmp / "flowerbench.py").write_text(FLOWER_APP.format(conf=conf))
        env = {**os.environ, "PYTHONPATH": str(tmp), "FLOWER_UNAUTHENTICATED_API": "true"}
        flower = subprocess.Popen([args.flower, "-A", "flowerbench", "flower", f"--port={fl_port}",
                                   "--address=127.0.0.1"], env=env, cwd=tmp, start_new_session=True,
                                  stdout=open(tmp / "flower.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        fleet.procs["flower"] = flower
        cf, fl = f"http://127.0.0.1:{cf_port}", f"http://127.0.0.1:{fl_port}"
        wait(lambda: requests.get(f"{cf}/healthz", timeout=2).ok, 30, "canvasflow web")
        wait(lambda: requests.get(f"{fl}/healthcheck", timeout=2).ok, 30, "flower")
        host = fleet.start_worker("bench", queues="default", concurrency=4)
        wait(lambda: host in requests.get(f"{fl}/api/workers?refresh=1", timeout=10).json(), 30, "flower sees the worker")
        time.sleep(2)
        out["rss_idle_mb"] = {"canvasflow": round(rss_mb(web.pid), 1), "flower": round(rss_mb(flower.pid), 1)}
        app = create_celery(settings, sender=True)
        t0 = time.time()
        last = ""
        with app.producer_or_acquire() as producer:
            for _ in range(args.tasks):
                last = app.send_task("canvasflow.merge", args=[{}, {}], producer=producer).id
        out["send_seconds"] = round(time.time() - t0, 1)

        def cf_done() -> bool:
            r = requests.get(f"{cf}/api/v1/inspect/tasks", params={"state": "SUCCESS", "q": f"uuid:{last}"}, timeout=10)
            return bool(r.json()["tasks"])

        wait(cf_done, 600, "canvasflow to record the last task")
        wait(lambda: requests.get(f"{fl}/api/task/info/{last}", timeout=10).json().get("state") == "SUCCESS", 600,
             "flower to see the last task")
        time.sleep(3)
        out["seconds_to_settle"] = round(time.time() - t0, 1)
        out["rss_after_mb"] = {"canvasflow": round(rss_mb(web.pid), 1), "flower": round(rss_mb(flower.pid), 1)}
        out["same_worker_seen"] = host in requests.get(f"{fl}/api/workers", timeout=10).json() and host in {
            w["name"] for w in requests.get(f"{cf}/api/v1/inspect/workers", timeout=10).json()["workers"]}
        out["ms"] = {
            "workers": {"canvasflow": median_ms(f"{cf}/api/v1/inspect/workers?refresh=0"),
                        "flower": median_ms(f"{fl}/api/workers")},
            "tasks_limit_100": {"canvasflow": median_ms(f"{cf}/api/v1/inspect/tasks?limit=100"),
                                "flower": median_ms(f"{fl}/api/tasks?limit=100")},
            "task_detail": {"canvasflow": median_ms(f"{cf}/api/v1/inspect/tasks/{last}"),
                            "flower": median_ms(f"{fl}/api/task/info/{last}")},
        }
        out["rss_after_requests_mb"] = {"canvasflow": round(rss_mb(web.pid), 1), "flower": round(rss_mb(flower.pid), 1)}
    finally:
        fleet.stop()
        server.stop()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
