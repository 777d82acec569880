"""Dashboard benchmark: page load, run detail, Gantt render, event latency, many Socket.IO clients.

    python benchmarks/bench_web.py [--quick | --smoke] [--database-url URL] [--json PATH]

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

--quick scales down (100 active, 10,000 finished, 100 steps, 50 clients, 10 runs); --smoke
further (5 active, 1,100 finished, 5 steps, 4 clients, 2 runs, every sample a tenth as often),
to check in seconds that every phase still runs. Each
``--variant`` (e.g. ``threads:server=threading``, ``gevent:server=gevent``, or ``before:path=DIR``
for an older commit's web/ package) runs every phase against its own fresh web process, after
one another in the same run, so their figures compare. ``--profile DIR`` records the web process
with py-spy during phases 4 and 5. ``--trace-loop MS`` (gevent variants) records in the web process
every stretch of at least MS ms in which one greenlet kept the loop (nothing else ran: no relay
delivery, no other request), where it ended and, for a request, which; phase 4 reports them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
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
from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.engine.states import RunStatus  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
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
    return {
        "n": len(values),
        "p50": round(pct(values, 0.5) * unit, 1),
        "p95": round(pct(values, 0.95) * unit, 1),
        "p99": round(pct(values, 0.99) * unit, 1),
        "max": round(max(values) * unit, 1) if values else float("nan"),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    wf_body = {
        "id": "seeded",
        "name": "Seeded workflow",
        "mode": "sequential",
        "sla_seconds": 600,
        "steps": [{"id": f"s{i}", "plugin": "builtin", "method": "echo"} for i in range(5)],
    }
    t0 = time.perf_counter()
    batch = 5000
    for start in range(0, finished, batch):
        rows, steps = [], []
        for i in range(start, min(finished, start + batch)):
            rid = f"f{i:015d}"
            created = now - 86400 * 20 * (i / max(1, finished)) - 60
            failed = i % 9 == 0
            rows.append(
                {
                    "id": rid,
                    "workflow_id": f"wf{i % 7}",
                    "version": "1",
                    "name": f"Workflow {i % 7}",
                    "status": "FAILED" if failed else "COMPLETED",
                    "status_seq": 10,
                    "priority": "normal",
                    "tags": "[]",
                    "triggered_by": "seed",
                    "trigger_type": "bench",
                    "sla_seconds": 30.0,
                    "created_at": created,
                    "started_at": created + 0.01,
                    "finished_at": created + 2 + i % 40,
                    "duration": 2.0 + i % 40,
                    "last_seq": 10,
                    "event_count": 10,
                    "updated_at": now,
                }
            )
            for k in range(3):
                steps.append(
                    {
                        "run_id": rid,
                        "step_id": f"s{k}",
                        "position": k,
                        "status": "COMPLETED",
                        "attempts": 1,
                        "started_at": created + k,
                        "finished_at": created + k + 0.5,
                        "duration": 0.5,
                    }
                )
        with store.begin() as conn:
            conn.execute(insert(runs_table), rows)
            conn.execute(insert(steps_table), steps)
    print(f"seeded {finished} finished runs in {time.perf_counter() - t0:.1f}s", flush=True)
    rows = []
    for _ in range(active):
        rid = secrets.token_hex(8)
        fields = {
            "workflow": "seeded",
            "version": "1",
            "name": "Seeded workflow",
            "definition": json.dumps(wf_body),
            "inputs": "{}",
            "priority": "normal",
            "tags": "[]",
            "triggered_by": "seed",
            "trigger_type": "bench",
            "sla_seconds": "600",
        }
        client.state.create(rid, fields, [f"s{k}" for k in range(5)], "seeded")
        created = float(client.redis.hget(client.keys.run(rid), "created_at"))
        client.state.transition(rid, RunStatus.RUNNING, fields={"started_at": f"{now:.6f}"})
        rows.append(
            {
                "id": rid,
                "workflow_id": "seeded",
                "version": "1",
                "name": "Seeded workflow",
                "status": "RUNNING",
                "status_seq": 2,
                "priority": "normal",
                "tags": "[]",
                "triggered_by": "seed",
                "trigger_type": "bench",
                "sla_seconds": 600.0,
                "created_at": created,
                "started_at": now,
                "last_seq": 2,
                "event_count": 2,
                "updated_at": now,
            }
        )
    with store.begin() as conn:
        conn.execute(insert(runs_table), rows)
    # The seeded runs' events are in SQL already: drop them from the stream so the recorder starts clean.
    client.redis.delete(client.keys.events)
    store.dispose()


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        self.fh = open(log, "wb")  # noqa: SIM115
        self.p = subprocess.Popen(
            argv,
            env=env,
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.fh.close()


class Frames:
    """The text messages in the server's WebSocket frames, read in bulk from the socket (a server
    never masks its frames). websocket-client's own recv() reads each frame with several syscalls
    and much Python; 200 connections on this 2-CPU machine then measured the clients more than the
    server they share the CPUs with."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.buf = bytearray()
        self.parts: list[bytes] = []

    def read(self) -> list[str] | None:
        chunk = self.ws.sock.recv(1 << 18)
        if not chunk:
            return None
        self.buf += chunk
        out = []
        buf = self.buf
        while len(buf) >= 2:
            fin, opcode, n, head = buf[0] & 0x80, buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, head = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, head = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < head + n:
                break
            payload = bytes(buf[head : head + n])
            del buf[: head + n]
            if opcode == 9:
                self.ws.pong(payload)
            elif opcode == 8:
                return None
            elif opcode in (0, 1):
                self.parts.append(payload)
                if fin:
                    out.append(b"".join(self.parts).decode())
                    self.parts = []
        return out


def light_client_process(
    url: str,
    token: str,
    n: int,
    ready: Any,
    stop: Any,
    out: Any,
    count: Any,
    runs: list[str] | None = None,
) -> None:
    """n Socket.IO connections (Engine.IO 4 over WebSocket, spoken directly: websocket-client for
    the handshake and what clients send, frames parsed from bulk reads) served by ONE select loop,
    each subscribed to every run (or to ``runs``); reports each event's delivery latency and the
    process's CPU seconds. python-socketio's Client starts a thread per received message, so 200
    of them on this 2-CPU machine measured the clients more than the server."""
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

    subscribe = {"runs": runs} if runs else {"all": True}
    for _ in range(n):
        ws = websocket.create_connection(ws_url, timeout=60)
        until(ws, "0")  # Engine.IO open
        ws.send("40" + json.dumps({"token": token}))  # Socket.IO connect with auth
        until(ws, "40")
        ws.send("420" + json.dumps(["subscribe", subscribe]))
        until(ws, "430")  # the acknowledgement
        conns.append(Frames(ws))
    sel = selectors.DefaultSelector()
    for frames in conns:
        sel.register(frames.ws.sock, selectors.EVENT_READ, frames)
    lat: list[float] = []
    rows: list[
        tuple[str, int, str, float, float | None, float]
    ] = []  # the first connection's, for split()
    last = 0.0  # when the last event arrived
    cpu0 = time.process_time()
    ready.put(n)
    while not stop.is_set():
        for key, _ in sel.select(0.2):
            frames = key.data
            messages = frames.read()
            now = time.time()
            if messages is None:
                sel.unregister(key.fileobj)
                continue
            for m in messages:
                if m == "2":
                    frames.ws.send("3")
                elif m.startswith("42"):
                    data = json.loads(m[2:])[1]
                    for e in data if isinstance(data, list) else [data]:
                        if isinstance(e, dict) and "ts" in e:
                            lat.append(now - e["ts"])
                            last = now
                            if frames is conns[0]:
                                rows.append(
                                    (
                                        e["run"],
                                        e["seq"],
                                        e["type"],
                                        e["ts"],
                                        e.get("relayed_at"),
                                        now,
                                    )
                                )
            count.value = len(lat)
    out.put((lat, time.process_time() - cpu0, rows, last))
    out.close()
    out.join_thread()
    os._exit(0)


class StreamClock(threading.Thread):
    """When each event reached the stream: Redis stamps every entry id with its own clock (ms).
    With the event's ``ts`` (the worker's clock), ``relayed_at`` (the relay's) and the receive
    time, that splits a delivery into worker -> stream, stream -> relay read, relay -> client
    (one machine, one clock)."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.r = client.redis
        self.stream = client.keys.events
        last = self.r.xrevrange(self.stream, count=1)
        self.last_id = last[0][0].decode() if last else "0-0"
        self.appended: dict[tuple[str, int], float] = {}
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            for _, items in self.r.xread({self.stream: self.last_id}, count=1000, block=100) or []:
                for entry_id, fields in items:
                    self.last_id = entry_id.decode()
                    try:
                        key = (fields[b"run"].decode(), int(fields[b"seq"]))
                    except (KeyError, ValueError):
                        continue
                    self.appended[key] = int(self.last_id.split("-")[0]) / 1000

    def close(self) -> None:
        self.stop.set()
        self.join(5)


def split(
    rows: list[tuple[str, int, str, float, float | None, float]], clock: StreamClock
) -> dict[str, Any]:
    """Latency parts (ms) of received events: (run, seq, type, ts, relayed_at, received_at) rows.
    Redis stamps entry ids in whole ms, so a part next to the stream is +-1 ms."""
    parts: dict[str, list[float]] = {
        "worker_to_stream": [],
        "stream_to_relay": [],
        "relay_to_client": [],
        "stream_to_client": [],
    }
    by_type: dict[str, list[float]] = {}
    for run, seq, etype, ts, relayed, received in rows:
        appended = clock.appended.get((run, seq))
        if appended is None:
            continue
        parts["worker_to_stream"].append(appended - ts)
        parts["stream_to_client"].append(received - appended)
        by_type.setdefault(etype, []).append(appended - ts)
        if relayed is not None:
            parts["stream_to_relay"].append(relayed - appended)
            parts["relay_to_client"].append(received - relayed)
    out: dict[str, Any] = {k: summary(v) for k, v in parts.items() if v}
    out["worker_to_stream_p95_by_type"] = {t: summary(v)["p95"] for t, v in sorted(by_type.items())}
    return out


class Watcher(threading.Thread):
    """One more connection, in this process, subscribed to a few runs' rooms (as a browser on a
    run page is) while the many clients follow every run: is it served as promptly?"""

    def __init__(self, url: str, token: str, runs: list[str]) -> None:
        super().__init__(daemon=True)
        import websocket

        ws = websocket.create_connection(
            url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket", timeout=60
        )
        for prefix, send in (
            ("0", "40" + json.dumps({"token": token})),
            ("40", "420" + json.dumps(["subscribe", {"runs": runs}])),
            ("430", None),
        ):
            while not (m := ws.recv()).startswith(prefix):
                if m == "2":
                    ws.send("3")
            if send:
                ws.send(send)
        self.frames = Frames(ws)
        self.lat: list[float] = []
        self.rows: list[tuple[str, int, str, float, float | None, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.frames.ws.sock, selectors.EVENT_READ)
        while not self.stop.is_set():
            if not sel.select(0.2):
                continue
            messages = self.frames.read()
            now = time.time()
            for m in messages or []:
                if m == "2":
                    self.frames.ws.send("3")
                elif m.startswith("42"):
                    data = json.loads(m[2:])[1]
                    for e in (
                        data if isinstance(data, list) else [data]
                    ):  # a web/ before batches: one each
                        self.lat.append(now - e["ts"])
                        self.rows.append(
                            (e["run"], e["seq"], e["type"], e["ts"], e.get("relayed_at"), now)
                        )
            if messages is None:
                break


def client_process(
    url: str, token: str, n: int, ready: Any, stop: Any, out: Any, count: Any
) -> None:
    """n python-socketio clients subscribed to every run; reports each event's delivery latency."""
    cpu0 = time.process_time()
    lat: list[float] = []
    lock = threading.Lock()
    last = [0.0]
    sios = []
    for _ in range(n):
        sio = socketio.Client(reconnection=False)

        def on_any(name: str, data: Any) -> None:
            now = time.time()
            items = data if isinstance(data, list) else [data]
            with lock:
                lat.extend(now - e["ts"] for e in items if isinstance(e, dict) and "ts" in e)
                count.value = len(lat)
                last[0] = now

        sio.on("*", on_any)
        sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=30)
        sio.call("subscribe", {"all": True}, timeout=30)
        sios.append(sio)
    ready.put(n)
    stop.wait(600)
    with lock:
        out.put((list(lat), time.process_time() - cpu0, [], last[0]))
    out.close()
    out.join_thread()
    os._exit(0)  # closing 50 clients one by one takes long; the sockets close with the process


def profile(args: Any, phase: str, label: str, pid: int) -> list[subprocess.Popen]:
    """py-spy on the web process during one phase (--profile DIR): who holds the GIL (--gil), and
    every thread, idle ones too; SIGINT makes each write its collapsed stacks."""
    if not args.profile:
        return []
    prof = Path(args.profile) / label
    prof.mkdir(parents=True, exist_ok=True)
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    return [
        subprocess.Popen(
            [
                py_spy,
                "record",
                *flags,
                "--nonblocking",
                "--threads",
                "-r",
                "100",
                "-f",
                "raw",
                "-p",
                str(pid),
                "-o",
                str(prof / f"{phase}-{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        for name, flags in (("gil", ["--gil"]), ("all", ["--idle"]))
    ]


def fanout(
    args: Any,
    url: str,
    http: Any,
    client: Client,
    token: str,
    clients: int,
    nruns: int,
    web_pid: int,
    label: str = "default",
) -> dict[str, Any]:
    """C clients subscribed to every run while R runs execute: every delivery's latency, waiting
    until each client got every event (or 120 s), with the CPU seconds of server and clients."""
    import multiprocessing as mp

    import psutil

    ctx_mp = mp.get_context("spawn")
    ready, stop, out = ctx_mp.Queue(), ctx_mp.Event(), ctx_mp.Queue()
    nproc = 4
    target = light_client_process if args.fanout_client == "light" else client_process
    counters = [ctx_mp.Value("q", 0, lock=False) for _ in range(nproc)]
    workers = [
        ctx_mp.Process(
            target=target, args=(url, token, clients // nproc, ready, stop, out, counters[i])
        )
        for i in range(nproc)
    ]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=180)
    step = (
        {"plugin": "builtin", "method": "sleep", "params": {"seconds": args.fanout_step_seconds}}
        if args.fanout_step_seconds > 0
        else {"plugin": "builtin", "method": "echo"}
    )
    small = {"mode": "sequential", "steps": [{"id": f"s{i}", **step} for i in range(10)]}
    http.put(
        f"{url}/api/v1/workflows/bench_small", json={"definition": small}, timeout=30
    ).raise_for_status()
    web = psutil.Process(web_pid)
    spies: list[subprocess.Popen] = []
    dumps: list[threading.Thread] = []
    if args.profile:
        # Who holds the GIL (record --gil, without pausing the process), and now and then every
        # thread's native stack (dump --native: a thread in take_gil is waiting for the GIL).
        prof = Path(args.profile) / label
        py_spy = str(Path(sys.executable).with_name("py-spy"))
        spies = profile(args, "fanout", label, web_pid)

        def dump_now_and_then() -> None:
            for i in range(4):
                time.sleep(3.0)
                with open(prof / f"fanout-dump-{i}.txt", "wb") as fh:
                    subprocess.run(
                        [py_spy, "dump", "--native", "-p", str(web_pid)],
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        timeout=60,
                        check=False,
                    )

        dumps.append(threading.Thread(target=dump_now_and_then, daemon=True))
        time.sleep(1.0)
    cpu0 = sum(web.cpu_times()[:2])
    relay0 = http.get(f"{url}/api/v1/health", timeout=10).json().get("relay", {})
    clock = StreamClock(client)
    t = time.perf_counter()
    t_wall = time.time()
    for d in dumps:
        d.start()
    handles = [client.submit("bench_small") for _ in range(nruns)]
    # The last runs submitted start last: a watcher on their rooms sees nearly all their events.
    watcher = Watcher(url, token, [h.id for h in handles[-max(1, nruns // 5) :]])
    watcher.start()
    for h in handles:
        h.wait(timeout=300)
    elapsed = time.perf_counter() - t
    # What every client must get: each run's events except the chatty ones the "all" room skips.
    expected = 0
    for h in handles:
        events = http.get(
            f"{url}/api/v1/runs/{h.id}/events", params={"after": 0}, timeout=30
        ).json()["events"]
        expected += sum(1 for e in events if e["type"] not in ("log", "progress", "stats"))
    expected *= (clients // nproc) * nproc
    deadline = time.monotonic() + 120
    while sum(c.value for c in counters) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    web_cpu = sum(web.cpu_times()[:2]) - cpu0
    relay1 = http.get(f"{url}/api/v1/health", timeout=10).json().get("relay", {})
    # Stream reads handed on, and Socket.IO messages emitted to rooms (not per client), by the relay.
    relayed = {k: relay1[k] - relay0.get(k, 0) for k in ("batches", "messages") if k in relay1}
    for spy in spies:
        spy.send_signal(2)  # py-spy writes its profile on SIGINT
        spy.wait(60)
    for d in dumps:
        d.join(60)
    stop.set()
    watcher.stop.set()
    watcher.join(10)
    clock.close()
    lat: list[float] = []
    sampled: list[Any] = []
    client_cpu = 0.0
    last = 0.0
    for _ in workers:
        got, cpu, rows, last_at = out.get(timeout=120)
        lat += got
        client_cpu += cpu
        sampled += rows
        last = max(last, last_at)
    for w in workers:
        w.join(30)
        if w.is_alive():
            w.kill()
    return {
        **summary(lat),
        "clients": (clients // nproc) * nproc,
        "client_processes": nproc,
        "client": args.fanout_client,
        "runs": nruns,
        "step_seconds": args.fanout_step_seconds,
        "runs_seconds": round(elapsed, 1),
        # From the first submit to the last event any client got (all of them, when
        # deliveries == expected).
        "all_delivered_seconds": round(last - t_wall, 1),
        "deliveries": len(lat),
        "expected": expected,
        "web_cpu_seconds": round(web_cpu, 1),
        "clients_cpu_seconds": round(client_cpu, 1),
        "relay": relayed,
        "run_room_watcher": {**summary(watcher.lat), **split(watcher.rows, clock)},
        # One connection per client process, its deliveries split at the stream and the relay.
        "parts_of_sampled_clients": split(sampled, clock),
    }


def parse_variant(spec: str) -> dict[str, str]:
    """``LABEL[:key=value,...]`` with keys server (gevent|threading), window (seconds), path (a
    directory holding another ``web/`` package, e.g. an older commit's, run in place of this one),
    recorder (``thread``: ``--recorder``, the default; ``process``: its own ``python -m
    orchestrator.audit.recorder`` process) and fleet (``off``: no Celery event capture)."""
    label, _, rest = spec.partition(":")
    out = {"label": label}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in ("server", "window", "path", "recorder", "fleet"):
            raise SystemExit(
                f"--variant {spec}: unknown key {key!r} (server, window, path, recorder, fleet)"
            )
        out[key] = value
    return out


# Run in the web process in place of `python -m web` (--trace-loop): patch, install a greenlet
# switch tracer, then run web/__main__ as `-m web` would (its own patching is then a no-op).
# A stretch is the time between two switches: what one greenlet ran without yielding. Each one
# of at least CF_TRACE_LOOP_MS is appended to CF_TRACE_LOOP_OUT as a JSON line: wall time, ms,
# the request it served (the WSGI handler's method and path, when it was one), where it resumed
# and where it yielded (innermost frames last).
LOOP_TRACER = r"""
import json, os, sys, time, weakref
from gevent import monkey
monkey.patch_all()
import greenlet
from gevent.hub import Hub as _Hub
_min = float(os.environ["CF_TRACE_LOOP_MS"]) / 1000
_out = open(os.environ["CF_TRACE_LOOP_OUT"], "a", buffering=1)
_clock = time.perf_counter
_last = [_clock()]
_parked = weakref.WeakKeyDictionary()
def _where(f, n=14):
    out = []
    while f is not None and len(out) < n:
        out.append(f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno} {f.f_code.co_name}")
        f = f.f_back
    return out[::-1]
def _request(f):
    while f is not None:
        h = f.f_locals.get("self")
        if getattr(h, "command", None) and getattr(h, "path", None):
            return f"{h.command} {h.path}"
        f = f.f_back
    return None
def _trace(event, args):
    if event not in ("switch", "throw"):
        return
    origin, target = args
    now = _clock()
    ran = now - _last[0]
    _last[0] = now
    if isinstance(origin, _Hub):  # the loop itself: its time includes waiting for I/O
        return
    f = origin.gr_frame
    if ran >= _min and f is not None:
        start = _parked.get(origin)
        _out.write(json.dumps({"t": time.time() - (_clock() - now), "ms": round(ran * 1000, 2),
                               "greenlet": type(origin).__name__, "request": _request(f),
                               "resumed": start, "yielded": _where(f)}) + "\n")
    if f is not None:
        try:
            _parked[origin] = f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno} {f.f_code.co_name}"
        except TypeError:
            pass
greenlet.settrace(_trace)
import gc
_gc_start = [0.0]
def _gc(phase, info):  # a collection runs in whichever greenlet allocated: it holds the loop too
    if phase == "start":
        _gc_start[0] = _clock()
    elif _clock() - _gc_start[0] >= _min / 5:
        _out.write(json.dumps({"t": time.time(), "gc": info["generation"], "collected": info["collected"],
                               "gc_ms": round((_clock() - _gc_start[0]) * 1000, 2)}) + "\n")
gc.callbacks.append(_gc)
import runpy
runpy.run_module("web", run_name="__main__", alter_sys=True)
"""


def loop_stretches(path: Path, since: float, until: float) -> dict[str, Any]:
    """What --trace-loop recorded between two wall times: counts of loop-holding stretches by
    length, and the longest ones with what they were."""
    rows: list[dict[str, Any]] = []
    collections: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if since <= row["t"] <= until:
                (collections if "gc" in row else rows).append(row)
    rows.sort(key=lambda r: -r["ms"])
    out: dict[str, Any] = {
        f">={ms}ms": sum(1 for r in rows if r["ms"] >= ms) for ms in (5, 10, 20, 50)
    }
    out["max_ms"] = rows[0]["ms"] if rows else 0.0
    by_request: dict[str, list[float]] = {}
    for r in rows:
        key = (
            r["request"].split("?")[0] if r["request"] else f"({r['greenlet']}) {r['yielded'][-1]}"
        )
        by_request.setdefault(key, []).append(r["ms"])
    out["by_what"] = {
        k: {"n": len(v), "max_ms": max(v), "sum_ms": round(sum(v), 1)}
        for k, v in sorted(by_request.items(), key=lambda kv: -max(kv[1]))[:12]
    }
    out["longest"] = rows[:8]
    # Garbage collections of at least a fifth of MS, by generation: (count, longest ms).
    out["gc"] = {
        str(g): [
            sum(1 for c in collections if c["gc"] == g),
            max((c["gc_ms"] for c in collections if c["gc"] == g), default=0.0),
        ]
        for g in (0, 1, 2)
    }
    return out


def start_web(
    variant: dict[str, str],
    env: dict[str, str],
    port: int,
    work: Path,
    trace_loop: float | None = None,
) -> tuple[Proc, list[Proc]]:
    """The web process of a variant, and the processes beside it (a separate recorder)."""
    env = dict(env)
    extra: list[Proc] = []
    if variant.get("fleet") == "off":
        env["CANVASFLOW_WEB_FLEET_EVENTS"] = "false"
    recorder = ["--recorder"]
    if variant.get("recorder") == "process":
        recorder = []
        extra.append(
            Proc(
                [sys.executable, "-m", "orchestrator.audit.recorder"],
                env,
                work / f"recorder-{variant['label']}.log",
            )
        )
    if "server" in variant:
        env["CANVASFLOW_WEB_SERVER"] = variant["server"]
    if "window" in variant:
        env["CANVASFLOW_WEB_RELAY_WINDOW"] = variant["window"]
    cwd = ROOT
    if "path" in variant:
        # `python -m web` finds web/ in its working directory first; orchestrator/ comes from ROOT.
        cwd = Path(variant["path"]).resolve()
        env["PYTHONPATH"] = f"{cwd}{os.pathsep}{ROOT}"
    start = ["-m", "web"]
    if trace_loop is not None and variant.get("server", "gevent") == "gevent":
        env["CF_TRACE_LOOP_MS"] = str(trace_loop)
        env["CF_TRACE_LOOP_OUT"] = str(work / f"loop-{variant['label']}.jsonl")
        start = ["-c", LOOP_TRACER]
    return Proc(
        [sys.executable, *start, "--port", str(port), *recorder],
        env,
        work / f"web-{variant['label']}.log",
        cwd=cwd,
    ), extra


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: does every phase still run?")
    ap.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/canvasflow_bench"
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument(
        "--fanout-client",
        choices=["light", "socketio"],
        default="light",
        help="the many-clients phase: one select loop per process (default) or python-socketio "
        "Client objects (a thread per received message: client-bound on 2 CPUs)",
    )
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: browser, fanout")
    ap.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="record the web process with py-spy (all threads, idle too) during the browser and "
        "fan-out phases",
    )
    ap.add_argument(
        "--trace-loop",
        type=float,
        default=None,
        metavar="MS",
        help="gevent variants: record every stretch of MS ms or more in which one greenlet held "
        "the web process's loop; phase 4 reports them (event_to_browser.loop)",
    )
    ap.add_argument(
        "--clients",
        type=int,
        default=None,
        help="Socket.IO clients of the fan-out phase (default 200; 50 with --quick)",
    )
    ap.add_argument(
        "--fanout-runs",
        type=int,
        default=None,
        help="runs executed during the fan-out phase (default 50; 10 with --quick)",
    )
    ap.add_argument(
        "--fanout-step-seconds",
        type=float,
        default=0.05,
        help="each step of the fan-out phase's ten-step runs sleeps this long (0: echo, as fast as "
        "the worker goes)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL[:server=S,window=W,path=DIR]",
        help="measure the web process configured so (repeatable; each gets a fresh web process, "
        "the same seeded data, worker and machine): e.g. --variant threads:server=threading "
        "--variant gevent:server=gevent. Default: one variant with the defaults",
    )
    args = ap.parse_args()
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    variants = [parse_variant(v) for v in args.variant] or [{"label": "default"}]
    active, finished, steps, clients, nruns = (
        (5, 1_100, 5, 4, 2)
        if args.smoke
        else (100, 10_000, 100, 50, 10)
        if args.quick
        else (500, 100_000, 200, 200, 50)
    )
    clients = args.clients or clients
    nruns = args.fanout_runs or nruns
    work = Path(tempfile.mkdtemp(prefix="cf-bench-web-"))
    embedded = EmbeddedRedis(workdir=str(work)).start()
    if args.database_url.startswith("postgresql"):
        fresh_postgres(args.database_url)
    settings = Settings(
        redis_url=embedded.url, database_url=args.database_url, key_prefix="bw", lease_ttl=5
    )
    client = Client(settings)
    results: dict[str, Any] = {
        "sizes": {
            "active": active,
            "finished": finished,
            "steps": steps,
            "clients": clients,
            "runs": nruns,
        },
        "database": args.database_url.split(":")[0],
        "cpus": os.cpu_count(),
        "variants": {},
    }
    procs: list[Proc] = []
    big: Any = None
    try:
        seed(settings, client, active, finished)
        env = {
            **os.environ,
            **settings.as_env(),
            "PYTHONPATH": str(ROOT),
            "CANVASFLOW_WEB_ADMIN_PASSWORD": PASSWORD,
            "CANVASFLOW_WEB_SECRET_KEY": "bench",
        }
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
                    "default,io",
                    "-c",
                    "2",
                    "-l",
                    "WARNING",
                    "--without-mingle",
                    "--without-gossip",
                    "-n",
                    f"bw-{uuid.uuid4().hex[:4]}@%h",
                ],
                env,
                work / "worker.log",
            )
        )
        for variant in variants:
            port = free_port()
            web, beside = start_web(variant, env, port, work, args.trace_loop)
            try:
                out, big = measure(
                    args,
                    variant,
                    f"http://127.0.0.1:{port}",
                    web,
                    client,
                    work,
                    skip,
                    steps,
                    clients,
                    nruns,
                    big,
                )
            finally:
                web.stop()
                for proc in beside:
                    proc.stop()
            results["variants"][variant["label"]] = out
            print(json.dumps({variant["label"]: out}), flush=True)
    finally:
        for proc in reversed(procs):
            proc.stop()
        client.close()
        embedded.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def measure(
    args: Any,
    variant: dict[str, str],
    url: str,
    web: Proc,
    client: Client,
    work: Path,
    skip: set[str],
    steps: int,
    clients: int,
    nruns: int,
    big: Any,
) -> tuple[dict[str, Any], Any]:
    """Every phase against one web process; returns its figures and the finished long run (made by
    the first variant, reused by the others)."""
    deadline = time.time() + 60
    while True:
        try:
            if requests.get(f"{url}/api/v1/health", timeout=1).ok and client.fleet():
                break
        except requests.RequestException:
            pass
        if time.time() > deadline or web.p.poll() is not None:
            raise SystemExit(f"web or worker did not start; see {work}")
        time.sleep(0.2)
    results: dict[str, Any] = {
        "variant": variant,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "server": requests.get(f"{url}/api/v1/health", timeout=5)
        .json()
        .get("server", "threading (no 'server' in /health)"),
    }
    http = requests.Session()
    r = http.post(
        f"{url}/api/v1/auth/login", json={"username": "admin", "password": PASSWORD}, timeout=10
    )
    http.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    token = http.post(f"{url}/api/v1/auth/tokens", json={"name": "bench"}, timeout=10).json()[
        "token"
    ]

    def times(n: int) -> int:
        """How often to sample: ``n``, a tenth of it with --smoke."""
        return max(1, n // 10) if args.smoke else n

    # 1. runs list API: the Active tab, the first and a deep page of the Completed history
    def timed(path: str, n: int = 20) -> dict[str, float]:
        out = []
        for _ in range(times(n)):
            t = time.perf_counter()
            resp = http.get(f"{url}/api/v1{path}", timeout=30)
            out.append(time.perf_counter() - t)
            assert resp.ok, resp.text
        return summary(out)

    results["api_runs_active"] = timed("/runs?view=active&limit=50")
    page = http.get(f"{url}/api/v1/runs?view=completed&limit=50", timeout=30).json()
    for _ in range(20):
        page = http.get(
            f"{url}/api/v1/runs",
            params={"view": "completed", "limit": 50, "cursor": page["next_cursor"]},
            timeout=30,
        ).json()
    results["api_runs_completed_page_21"] = timed(
        f"/runs?view=completed&limit=50&cursor={page['next_cursor']}"
    )

    # 2. a real run of `steps` steps, then its detail. With --smoke each step sleeps a second,
    # so that phase 4's page is open while the run it follows still sends events.
    body = {
        "mode": "sequential",
        "steps": [
            {"id": f"step{i:03d}", "plugin": "builtin", "method": "sleep", "params": {"seconds": 1}}
            if args.smoke
            else {"id": f"step{i:03d}", "plugin": "builtin", "method": "echo", "params": {"i": i}}
            for i in range(steps)
        ],
    }
    if big is None:
        http.put(
            f"{url}/api/v1/workflows/bench_long", json={"definition": body}, timeout=30
        ).raise_for_status()
        big = client.submit("bench_long")
        big.wait(timeout=300)
        time.sleep(1.0)  # the recorder writes the last batch
    results["api_run_detail"] = timed(f"/runs/{big.id}?steps_limit={steps}", 30)
    results["api_run_detail"]["steps"] = steps

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
            for _ in range(times(10)):
                t = time.perf_counter()
                page_.goto(f"{url}/runs?view=active")
                page_.wait_for_selector("body[data-loaded]")
                loads.append(time.perf_counter() - t)
            results["runs_page_load"] = summary(loads)
            gantt = []
            for _ in range(times(5)):
                page_.goto(f"{url}/runs/{big.id}/gantt")
                page_.wait_for_selector("#gantt[data-rendered]")
                g = page_.evaluate("window.__cfGantt")
                gantt.append((g["fetchMs"] + g["renderMs"]) / 1000)
            results["gantt_render"] = {
                **summary(gantt),
                "bars": g["bars"],
                "render_only_ms": round(g["renderMs"], 1),
            }
            # event -> browser: follow running runs of `steps` quick steps (three, for a p99 of
            # several hundred events rather than of one run's luck)
            lat: list[float] = []
            relayed: list[float] = []
            rows: list[Any] = []
            clock = StreamClock(client)
            spies = profile(args, "browser", variant["label"], web.p.pid)
            follow_from = time.time()
            for _ in range(times(3)):
                follow = client.submit("bench_long")
                page_.goto(f"{url}/runs/{follow.id}")
                page_.wait_for_selector("body[data-ready='1']")
                page_.evaluate(
                    "window.__cfLatencies = []; window.__cfRelayed = []; window.__cfEvents = []"
                )
                follow.wait(timeout=300)
                time.sleep(0.5)
                lat += page_.evaluate("window.__cfLatencies")
                relayed += page_.evaluate("window.__cfRelayed")
                rows += page_.evaluate("window.__cfEvents")  # empty from a web/ before 2026-12
            clock.close()
            for spy in spies:
                spy.send_signal(2)
                spy.wait(60)
            # From the worker's timestamp of the event; and (worker ts -> relay read) of it.
            results["event_to_browser"] = {
                **summary(lat),
                "ts_to_relay": summary(relayed),
                **({"parts": split(rows, clock)} if rows else {}),
            }
            if args.trace_loop is not None:
                results["event_to_browser"]["loop"] = loop_stretches(
                    work / f"loop-{variant['label']}.jsonl", follow_from, time.time()
                )
            browser.close()

    # 5. many Socket.IO clients (in 4 client processes) while runs execute
    if "fanout" not in skip:
        results["socketio_fanout"] = fanout(
            args, url, http, client, token, clients, nruns, web.p.pid, variant["label"]
        )
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return results, big


if __name__ == "__main__":
    raise SystemExit(main())
