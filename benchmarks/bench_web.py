"""Dashboard benchmark: page load, run detail, Gantt render, event latency, many Socket.IO clients.

    python benchmarks/bench_web.py [--quick] [--database-url URL] [--json PATH]

Sets up (issue 5): a private redis-server, PostgreSQL (default ``canvasflow_bench`` on
127.0.0.1:5432, dropped and re-created; SQLite with ``--database-url sqlite:///...``), N active
runs (hot state in Redis + rows in SQL, not executing) and M finished runs inserted straight into
the audit store (3 steps each), one worker (prefork, concurrency 2) and ``python -m web
--recorder``, then measures, in Debian's Chromium driven by Playwright and with python-socketio
clients:

1. runs page load: navigation to /runs (HTML + bundle + first /api/v1/runs call rendered), and the
   /api/v1/runs call alone for the Active tab and for a deep page of the Completed history;
2. GET /api/v1/runs/{id} for a finished run of S steps (sequential builtin echo, really executed);
3. the Gantt of that run in Chromium (fetch + ECharts paint, window.__cfGantt);
4. step event -> browser latency: a page follows a running run; each event's stream timestamp is
   compared with the browser's receive time (same machine clock);
5. C Socket.IO clients subscribed to every run while R runs execute: per-event delivery latency.

--quick scales down (100 active, 10,000 finished, 100 steps, 50 clients, 10 runs).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]

import requests  # noqa: E402
import socketio  # noqa: E402
from sqlalchemy import create_engine, insert, text  # noqa: E402

from orchestrator import Client  # noqa: E402
from orchestrator.audit.models import runs as runs_table  # noqa: E402
from orchestrator.audit.models import steps as steps_table  # noqa: E402
from orchestrator.audit.store import AuditStore  # noqa: E402
from orchestrator.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.states import RunStatus  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "bench-password"


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values: list[float], unit: float = 1000.0) -> dict[str, float]:
    """p50 / p95 / p99 / max in ms."""
    return {"n": len(values), "p50": round(pct(values, 0.5) * unit, 1), "p95": round(pct(values, 0.95) * unit, 1),
            "p99": round(pct(values, 0.99) * unit, 1), "max": round(max(values) * unit, 1) if values else float("nan")}


def fresh_postgres(url: str) -> None:
    base, _, name = url.rpartition("/")
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def seed(settings: Settings, client: Client, active: int, finished: int) -> None:
    store = AuditStore(settings.database_url)
    store.upgrade()
    now = time.time()
    wf_body = {"id": "seeded", "name": "Seeded workflow", "mode": "sequential", "sla_seconds": 600,
               "steps": [{"id": f"s{i}", "plugin": "builtin", "method": "echo"} for i in range(5)]}
    t0 = time.perf_counter()
    batch = 5000
    for start in range(0, finished, batch):
        rows, steps = [], []
        for i in range(start, min(finished, start + batch)):
            rid = f"f{i:015d}"
            created = now - 86400 * 20 * (i / max(1, finished)) - 60
            failed = i % 9 == 0
            rows.append({"id": rid, "workflow_id": f"wf{i % 7}", "version": "1", "name": f"Workflow {i % 7}",
                         "status": "FAILED" if failed else "COMPLETED", "status_seq": 10, "priority": "normal",
                         "tags": "[]", "triggered_by": "seed", "trigger_type": "bench", "sla_seconds": 30.0,
                         "created_at": created, "started_at": created + 0.01, "finished_at": created + 2 + i % 40,
                         "duration": 2.0 + i % 40, "last_seq": 10, "event_count": 10, "updated_at": now})
            for k in range(3):
                steps.append({"run_id": rid, "step_id": f"s{k}", "position": k, "status": "COMPLETED",
                              "attempts": 1, "started_at": created + k, "finished_at": created + k + 0.5,
                              "duration": 0.5})
        with store.begin() as conn:
            conn.execute(insert(runs_table), rows)
            conn.execute(insert(steps_table), steps)
    print(f"seeded {finished} finished runs in {time.perf_counter() - t0:.1f}s", flush=True)
    rows = []
    for _ in range(active):
        rid = secrets.token_hex(8)
        fields = {"workflow": "seeded", "version": "1", "name": "Seeded workflow", "definition": json.dumps(wf_body),
                  "inputs": "{}", "priority": "normal", "tags": "[]", "triggered_by": "seed",
                  "trigger_type": "bench", "sla_seconds": "600"}
        client.state.create(rid, fields, [f"s{k}" for k in range(5)], "seeded")
        created = float(client.redis.hget(client.keys.run(rid), "created_at"))
        client.state.transition(rid, RunStatus.RUNNING, fields={"started_at": f"{now:.6f}"}, sources=["PENDING"])
        rows.append({"id": rid, "workflow_id": "seeded", "version": "1", "name": "Seeded workflow", "status": "RUNNING",
                     "status_seq": 2, "priority": "normal", "tags": "[]", "triggered_by": "seed",
                     "trigger_type": "bench", "sla_seconds": 600.0, "created_at": created,
                     "started_at": now, "last_seq": 2, "event_count": 2, "updated_at": now})
    with store.begin() as conn:
        conn.execute(insert(runs_table), rows)
    # The seeded runs' events are in SQL already: drop them from the stream so the recorder starts clean.
    client.redis.delete(client.keys.events)
    store.dispose()


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.fh = open(log, "wb")  # noqa: SIM115
        self.p = subprocess.Popen(argv, env=env, stdout=self.fh, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                  start_new_session=True)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.fh.close()


def light_client_process(url: str, token: str, n: int, ready: Any, stop: Any, out: Any, count: Any) -> None:
    """n Socket.IO connections (Engine.IO 4 over WebSocket, spoken directly with websocket-client)
    served by ONE select loop, each subscribed to every run; reports each event's delivery latency
    and the process's CPU seconds. python-socketio's Client starts a thread per received message,
    so 200 of them on this 2-CPU machine measured the clients more than the server."""
    import selectors

    import websocket

    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    conns = []

    def until(ws: Any, prefix: str) -> str:
        while True:
            m = ws.recv()
            if m == "2":
                ws.send("3")
            elif m.startswith("44"):
                raise SystemExit(f"Socket.IO connection refused: {m}")
            elif m.startswith(prefix):
                return str(m)

    for _ in range(n):
        ws = websocket.create_connection(ws_url, timeout=60)
        until(ws, "0")  # Engine.IO open
        ws.send("40" + json.dumps({"token": token}))  # Socket.IO connect with auth
        until(ws, "40")
        ws.send("420" + json.dumps(["subscribe", {"all": True}]))
        until(ws, "430")  # the acknowledgement
        conns.append(ws)
    sel = selectors.DefaultSelector()
    for ws in conns:
        sel.register(ws.sock, selectors.EVENT_READ, ws)
    lat: list[float] = []
    cpu0 = time.process_time()
    ready.put(n)
    while not stop.is_set():
        for key, _ in sel.select(0.2):
            ws = key.data
            m = ws.recv()
            now = time.time()
            if m == "2":
                ws.send("3")
            elif m.startswith("42"):
                data = json.loads(m[2:])[1]
                for e in data if isinstance(data, list) else [data]:
                    if isinstance(e, dict) and "ts" in e:
                        lat.append(now - e["ts"])
                count.value = len(lat)
    out.put((lat, time.process_time() - cpu0))
    out.close()
    out.join_thread()
    os._exit(0)


def client_process(url: str, token: str, n: int, ready: Any, stop: Any, out: Any, count: Any) -> None:
    """n python-socketio clients subscribed to every run; reports each event's delivery latency."""
    cpu0 = time.process_time()
    lat: list[float] = []
    lock = threading.Lock()
    sios = []
    for _ in range(n):
        sio = socketio.Client(reconnection=False)

        def on_any(name: str, data: Any) -> None:
            now = time.time()
            items = data if isinstance(data, list) else [data]
            with lock:
                lat.extend(now - e["ts"] for e in items if isinstance(e, dict) and "ts" in e)
                count.value = len(lat)

        sio.on("*", on_any)
        sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=30)
        sio.call("subscribe", {"all": True}, timeout=30)
        sios.append(sio)
    ready.put(n)
    stop.wait(600)
    with lock:
        out.put((list(lat), time.process_time() - cpu0))
    out.close()
    out.join_thread()
    os._exit(0)  # closing 50 clients one by one takes long; the sockets close with the process


def fanout(args: Any, url: str, http: Any, client: Client, token: str, clients: int, nruns: int,
           web_pid: int) -> dict[str, Any]:
    """C clients subscribed to every run while R runs execute: every delivery's latency, waiting
    until each client got every event (or 120 s), with the CPU seconds of server and clients."""
    import multiprocessing as mp

    import psutil

    ctx_mp = mp.get_context("spawn")
    ready, stop, out = ctx_mp.Queue(), ctx_mp.Event(), ctx_mp.Queue()
    nproc = 4
    target = light_client_process if args.fanout_client == "light" else client_process
    counters = [ctx_mp.Value("q", 0, lock=False) for _ in range(nproc)]
    workers = [ctx_mp.Process(target=target, args=(url, token, clients // nproc, ready, stop, out, counters[i]))
               for i in range(nproc)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=180)
    small = {"mode": "sequential", "steps": [{"id": f"s{i}", "plugin": "builtin", "method": "sleep",
                                              "params": {"seconds": 0.05}} for i in range(10)]}
    http.put(f"{url}/api/v1/workflows/bench_small", json={"definition": small}, timeout=30).raise_for_status()
    web = psutil.Process(web_pid)
    spies: list[subprocess.Popen] = []
    dumps: list[threading.Thread] = []
    if args.profile:
        # Who holds the GIL (record --gil, without pausing the process), and now and then every
        # thread's native stack (dump --native: a thread in take_gil is waiting for the GIL).
        prof = Path(args.profile)
        prof.mkdir(parents=True, exist_ok=True)
        py_spy = str(Path(sys.executable).with_name("py-spy"))
        spies = [subprocess.Popen([py_spy, "record", *flags, "--nonblocking", "--threads", "-r", "100", "-f", "raw",
                                   "-p", str(web_pid), "-o", str(prof / f"fanout-{name}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                 for name, flags in (("gil", ["--gil"]), ("all", ["--idle"]))]

        def dump_now_and_then() -> None:
            for i in range(4):
                time.sleep(3.0)
                with open(prof / f"fanout-dump-{i}.txt", "wb") as fh:
                    subprocess.run([py_spy, "dump", "--native", "-p", str(web_pid)], stdout=fh,
                                   stderr=subprocess.STDOUT, timeout=60, check=False)

        dumps.append(threading.Thread(target=dump_now_and_then, daemon=True))
        time.sleep(1.0)
    cpu0 = sum(web.cpu_times()[:2])
    t = time.perf_counter()
    for d in dumps:
        d.start()
    handles = [client.submit("bench_small") for _ in range(nruns)]
    for h in handles:
        h.wait(timeout=300)
    elapsed = time.perf_counter() - t
    # What every client must get: each run's events except the chatty ones the "all" room skips.
    expected = 0
    for h in handles:
        events = http.get(f"{url}/api/v1/runs/{h.id}/events", params={"after": 0}, timeout=30).json()["events"]
        expected += sum(1 for e in events if e["type"] not in ("log", "progress", "stats"))
    expected *= (clients // nproc) * nproc
    deadline = time.monotonic() + 120
    while sum(c.value for c in counters) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    drained = time.perf_counter() - t
    web_cpu = sum(web.cpu_times()[:2]) - cpu0
    for spy in spies:
        spy.send_signal(2)  # py-spy writes its profile on SIGINT
        spy.wait(60)
    for d in dumps:
        d.join(60)
    stop.set()
    lat: list[float] = []
    client_cpu = 0.0
    for _ in workers:
        got, cpu = out.get(timeout=120)
        lat += got
        client_cpu += cpu
    for w in workers:
        w.join(30)
        if w.is_alive():
            w.kill()
    return {**summary(lat), "clients": (clients // nproc) * nproc, "client_processes": nproc,
            "client": args.fanout_client, "runs": nruns, "runs_seconds": round(elapsed, 1),
            "all_delivered_seconds": round(drained, 1), "deliveries": len(lat), "expected": expected,
            "web_cpu_seconds": round(web_cpu, 1), "clients_cpu_seconds": round(client_cpu, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/canvasflow_bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--fanout-client", choices=["light", "socketio"], default="light",
                    help="the many-clients phase: one select loop per process (default) or python-socketio "
                         "Client objects (a thread per received message: client-bound on 2 CPUs)")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: browser, fanout")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="record the web process with py-spy (all threads, idle too) during the fan-out phase")
    ap.add_argument("--clients", type=int, default=None, help="Socket.IO clients of the fan-out phase "
                    "(default 200; 50 with --quick)")
    ap.add_argument("--fanout-runs", type=int, default=None, help="runs executed during the fan-out phase "
                    "(default 50; 10 with --quick)")
    args = ap.parse_args()
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    active, finished, steps, clients, nruns = (100, 10_000, 100, 50, 10) if args.quick else (500, 100_000, 200, 200, 50)
    clients = args.clients or clients
    nruns = args.fanout_runs or nruns
    work = Path(tempfile.mkdtemp(prefix="cf-bench-web-"))
    embedded = EmbeddedRedis(workdir=str(work)).start()
    if args.database_url.startswith("postgresql"):
        fresh_postgres(args.database_url)
    settings = Settings(redis_url=embedded.url, database_url=args.database_url, key_prefix="bw", lease_ttl=5)
    client = Client(settings)
    results: dict[str, Any] = {"sizes": {"active": active, "finished": finished, "steps": steps, "clients": clients,
                                         "runs": nruns}, "database": args.database_url.split(":")[0]}
    procs: list[Proc] = []
    try:
        seed(settings, client, active, finished)
        env = {**os.environ, **settings.as_env(), "PYTHONPATH": str(ROOT), "CANVASFLOW_WEB_ADMIN_PASSWORD": PASSWORD,
               "CANVASFLOW_WEB_SECRET_KEY": "bench"}
        procs.append(Proc([sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "default,io", "-c", "2",
                           "-l", "WARNING", "--without-mingle", "--without-gossip", "-n", f"bw-{uuid.uuid4().hex[:4]}@%h"],
                          env, work / "worker.log"))
        port = 18000 + os.getpid() % 1000
        url = f"http://127.0.0.1:{port}"
        procs.append(Proc([sys.executable, "-m", "web", "--port", str(port), "--recorder"], env, work / "web.log"))
        deadline = time.time() + 60
        while True:
            try:
                if requests.get(f"{url}/api/v1/health", timeout=1).ok and client.fleet():
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise SystemExit(f"web or worker did not start; see {work}")
            time.sleep(0.2)
        http = requests.Session()
        r = http.post(f"{url}/api/v1/auth/login", json={"username": "admin", "password": PASSWORD}, timeout=10)
        http.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        token = http.post(f"{url}/api/v1/auth/tokens", json={"name": "bench"}, timeout=10).json()["token"]

        # 1. runs list API: the Active tab, the first and a deep page of the Completed history
        def timed(path: str, n: int = 20) -> dict[str, float]:
            out = []
            for _ in range(n):
                t = time.perf_counter()
                resp = http.get(f"{url}/api/v1{path}", timeout=30)
                out.append(time.perf_counter() - t)
                assert resp.ok, resp.text
            return summary(out)

        results["api_runs_active"] = timed("/runs?view=active&limit=50")
        page = http.get(f"{url}/api/v1/runs?view=completed&limit=50", timeout=30).json()
        for _ in range(20):
            page = http.get(f"{url}/api/v1/runs", params={"view": "completed", "limit": 50,
                                                          "cursor": page["next_cursor"]}, timeout=30).json()
        results["api_runs_completed_page_21"] = timed(f"/runs?view=completed&limit=50&cursor={page['next_cursor']}")

        # 2. a real run of `steps` steps, then its detail
        body = {"mode": "sequential", "steps": [{"id": f"step{i:03d}", "plugin": "builtin", "method": "echo",
                                                 "params": {"i": i}} for i in range(steps)]}
        http.put(f"{url}/api/v1/workflows/bench_long", json={"definition": body}, timeout=30).raise_for_status()
        big = client.submit("bench_long")
        big.wait(timeout=300)
        time.sleep(1.0)  # the recorder writes the last batch
        results["api_run_detail"] = timed(f"/runs/{big.id}?steps_limit={steps}", 30)
        results["api_run_detail"]["steps"] = steps
        print(json.dumps(results), flush=True)

        # 3 + 4 + page load in Chromium
        from playwright.sync_api import sync_playwright

        if "browser" not in skip:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                ctx = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
                page_ = ctx.new_page()
                page_.goto(f"{url}/login")
                page_.fill("input[name=username]", "admin")
                page_.fill("input[name=password]", PASSWORD)
                page_.click("button[type=submit]")
                page_.wait_for_selector("body[data-loaded]")
                loads = []
                for _ in range(10):
                    t = time.perf_counter()
                    page_.goto(f"{url}/runs?view=active")
                    page_.wait_for_selector("body[data-loaded]")
                    loads.append(time.perf_counter() - t)
                results["runs_page_load"] = summary(loads)
                gantt = []
                for _ in range(5):
                    page_.goto(f"{url}/runs/{big.id}/gantt")
                    page_.wait_for_selector("#gantt[data-rendered]")
                    g = page_.evaluate("window.__cfGantt")
                    gantt.append((g["fetchMs"] + g["renderMs"]) / 1000)
                results["gantt_render"] = {**summary(gantt), "bars": g["bars"],
                                           "render_only_ms": round(g["renderMs"], 1)}
                # event -> browser: follow a running run of `steps` quick steps
                follow = client.submit("bench_long")
                page_.goto(f"{url}/runs/{follow.id}")
                page_.wait_for_selector("body[data-ready='1']")
                page_.evaluate("window.__cfLatencies = []; window.__cfRelayed = []")
                follow.wait(timeout=300)
                time.sleep(0.5)
                lat = page_.evaluate("window.__cfLatencies")
                results["event_to_browser"] = summary(lat)
                # The share of it before the relay read the event (worker -> stream -> XREAD).
                results["event_to_browser"]["stream_to_relay"] = summary(page_.evaluate("window.__cfRelayed"))
                browser.close()

        # 5. many Socket.IO clients (in 4 client processes) while runs execute
        if "fanout" not in skip:
            results["socketio_fanout"] = fanout(args, url, http, client, token, clients, nruns, procs[-1].p.pid)
    finally:
        for proc in reversed(procs):
            proc.stop()
        client.close()
        embedded.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
