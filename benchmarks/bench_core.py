"""Core engine vs raw Celery: the same shapes, the same Redis, the same worker, one run.

    python benchmarks/bench_core.py [--quick | --smoke] [--rounds N] [--redis-url URL] [--json PATH]
        [--broker amqp://guest:guest@127.0.0.1:5672/cf-bench]

Shapes (issue 2): a chain of 100 no-op steps, a 1000-wide fan-out/fan-in, 200 concurrent
diamond workflows a -> {b, c, d} -> e. Each side runs the same shape. The fan-out is timed in
two forms: ``1000 -> join`` (raw ``chord(group(1000), noop)``; canvasflow's 1000 root steps and
a join compile to the same chord, sent by the client) and ``start -> 1000 -> join`` (raw
``chain(noop, chord(group(1000), noop))``; a worker process sends the 1000 header messages).
``--shapes fanout_mixed`` re-runs what this script called "fan-out" until 2026-12-02: raw
``1000 -> join`` against canvasflow's ``start -> 1000 -> join``, one task and one dispatch
hop more on canvasflow's side (docs/performance.md). Each is timed built by hand with raw Celery canvas
(``bench.noop`` from ``benchmarks/raw_tasks.py``) and through canvasflow
(``Client.submit`` of a definition of builtin ``echo`` steps, then ``Run.wait``), on ONE
prefork worker subprocess (concurrency 2) that has both registered, so both sides share one
Celery configuration. A run is timed from building the canvas / submitting to the moment the
waiting client has the final result.

By default a private redis-server is started (orchestrator.cli.embedded.EmbeddedRedis) so the
machine's shared Redis is not disturbed; ``--redis-url`` uses another one (give it a database
nobody else uses: the benchmark purges the ``default`` queue).

Fairness rules (see docs/performance.md "Core engine vs raw Celery"):
- raw waits like a raw user: ``AsyncResult(last_task_id).get()`` on a plain Redis result
  backend (not on the chain/chord result, which re-checks every header result per poll);
- every measurement starts with empty queues and no unacknowledged message, and the worker
  is warmed up by one round at --quick sizes that is not counted;
- rounds alternate which side goes first; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # runnable as a script from anywhere

import redis  # noqa: E402
from celery import chain, chord, group  # noqa: E402
from raw_tasks import NOOP  # noqa: E402

from orchestrator import Client  # noqa: E402
from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.engine.celery_app import create_celery  # noqa: E402
from orchestrator.fleet.inspect import amqp_queue_lengths  # noqa: E402
from orchestrator.keys import Keys  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

TARGET = 1.25
QUEUE = "default"
FULL = {"chain": 100, "fanout": 1000, "fanout_start": 1000, "diamonds": 200}
QUICK = {"chain": 30, "fanout": 200, "fanout_start": 200, "diamonds": 50}
# --smoke: every shape through the real worker in seconds (tests/test_benchmarks_smoke.py); its
# figures say the script works, not how fast anything is.
SMOKE = {"chain": 3, "fanout": 4, "fanout_start": 4, "diamonds": 2}
# Not run unless named in --shapes: the unequal comparison kept for re-running older figures.
EXTRA = ("fanout_mixed",)
WAIT_TIMEOUT = 600.0


# ---------------------------------------------------------------------------------------------
# Definitions (canvasflow side)
# ---------------------------------------------------------------------------------------------


def echo(step_id: str, deps: list[str] | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"id": step_id, "plugin": "builtin", "method": "echo"}
    if deps:
        step["depends_on"] = deps
    return step


def chain_definition(n: int) -> dict[str, Any]:
    return {"id": "bench_chain", "mode": "sequential", "steps": [echo(f"s{i}") for i in range(n)]}


def fanout_definition(n: int, start: bool = False) -> dict[str, Any]:
    """``1000 -> join``, or with ``start`` ``start -> 1000 -> join``."""
    wide = [echo(f"p{i}", ["start"] if start else None) for i in range(n)]
    first = [echo("start")] if start else []
    return {
        "id": "bench_fanout_start" if start else "bench_fanout",
        "mode": "parallel",
        "steps": [*first, *wide, echo("join", [s["id"] for s in wide])],
    }


def diamond_definition() -> dict[str, Any]:
    return {
        "id": "bench_diamond",
        "mode": "parallel",
        "steps": [
            echo("a"),
            echo("b", ["a"]),
            echo("c", ["a"]),
            echo("d", ["a"]),
            echo("e", ["b", "c", "d"]),
        ],
    }


# ---------------------------------------------------------------------------------------------
# The fleet: Redis and one worker
# ---------------------------------------------------------------------------------------------


class Worker:
    """``celery -A raw_tasks worker -c 2 -P prefork`` in its own process group."""

    def __init__(self, settings: Settings, concurrency: int, loglevel: str) -> None:
        self.settings = settings
        self.hostname = f"bench-{uuid.uuid4().hex[:6]}@{platform.node()}"
        env = {**os.environ, **settings.as_env()}
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
        self.log_path = (
            Path(tempfile.gettempdir()) / f"bench-core-worker-{uuid.uuid4().hex[:6]}.log"
        )
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "raw_tasks",
                "worker",
                "-n",
                self.hostname,
                "-Q",
                QUEUE,
                "-c",
                str(concurrency),
                "-P",
                "prefork",
                "-l",
                loglevel,
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            start_new_session=True,
        )

    def wait_ready(self, admin: redis.Redis, timeout: float = 60) -> None:
        catalog = Keys(self.settings.key_prefix).catalog
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if admin.hexists(catalog, self.hostname):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"worker did not become ready; log {self.log_path}:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        return [self.proc.pid, *self.children()]

    def children(self) -> list[int]:
        try:
            out = subprocess.run(
                ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
            )
            return [int(p) for p in out.stdout.split()]
        except (OSError, ValueError):
            return []

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self._log.close()


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------


@dataclass
class Series:
    """All rounds of one shape on one side."""

    steps: int = 0
    seconds: list[float] = field(default_factory=list)
    commands: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds: worker + client + redis
    by_command: list[dict[str, int]] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu) if self.cpu else 0.0

    @property
    def median_commands(self) -> float:
        return statistics.median(self.commands) if self.commands else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(
        self, settings: Settings, admin: redis.Redis, worker: Worker, redis_pid: int | None
    ) -> None:
        self.settings = settings
        self.admin = admin
        self.worker = worker
        self.redis_pid = redis_pid
        # Raw side: a plain Celery app on the same config, with Celery's ordinary Redis result
        # backend (it subscribes to the result of every task it sends, so .get() can wake).
        self.raw = create_celery(settings, name="bench-raw")
        self.client = Client(settings)
        self.queues = [QUEUE] + [f"{QUEUE}:{p}" for p in range(1, 10)]

    # -- hygiene --------------------------------------------------------------------------------

    def wait_idle(self, timeout: float = 30.0, *, purge: bool = True) -> None:
        """Until no message is queued or unacknowledged (the worker is idle), then purge."""
        deadline = time.monotonic() + timeout
        while True:
            if self.settings.broker_is_amqp:  # ready messages; unacknowledged ones are not seen
                busy = amqp_queue_lengths(self.raw, [QUEUE])[QUEUE]["total"]
            else:
                pipe = self.admin.pipeline(transaction=False)
                for q in self.queues:
                    pipe.llen(q)
                pipe.hlen("unacked")
                busy = any(pipe.execute())
            if not busy:
                break
            if time.monotonic() > deadline:
                print(
                    f"  warning: queue/unacked not empty after {timeout:g}s; purging",
                    file=sys.stderr,
                )
                break
            time.sleep(0.01)
        if not purge:
            return
        purged = self.raw.control.purge()
        if purged:
            print(f"  warning: purged {purged} stray message(s)", file=sys.stderr)
        gc.collect()

    def commandstats(self) -> dict[str, int]:
        stats = self.admin.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def cpu(self) -> float:
        """CPU seconds used so far by the worker (main process and pool), this client and the
        private redis-server: unlike wall time, barely moved by other load on the machine."""
        pids = self.worker.pids() + ([self.redis_pid] if self.redis_pid else [])
        return sum(cpu_seconds(p) for p in pids) + time.process_time()

    def measure(self, fn: Callable[[int], None], size: int, series: Series | None) -> float:
        self.wait_idle()
        before = self.commandstats()
        cpu0 = self.cpu()
        t0 = time.perf_counter()
        fn(size)
        elapsed = time.perf_counter() - t0
        self.wait_idle(purge=False)  # the work a run leaves behind (acks, results) belongs to it
        cpu1 = self.cpu()
        after = self.commandstats()
        if series is not None:
            diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            diff = {k: v for k, v in diff.items() if v > 0}
            series.seconds.append(elapsed)
            series.cpu.append(cpu1 - cpu0)
            series.by_command.append(diff)
            series.commands.append(sum(diff.values()))
        return elapsed

    # -- raw Celery ------------------------------------------------------------------------------

    def noop(self, *args: Any, immutable: bool = False):  # noqa: ANN201 - a Signature
        return self.raw.signature(NOOP, args=args, immutable=immutable)

    def get(self, task_id: str) -> Any:
        return self.raw.AsyncResult(task_id).get(timeout=WAIT_TIMEOUT, propagate=True)

    def raw_chain(self, n: int) -> None:
        res = chain(*[self.noop(i, immutable=True) for i in range(n)], app=self.raw).apply_async()
        # Wait on the last task's id, not on the chain result (DESIGN.md: cheaper, and what a
        # raw user who only wants the end would do).
        got = self.get(res.id)
        assert got == n - 1, f"raw chain ended with {got!r}"

    def raw_fanout(self, n: int) -> None:
        header = group([self.noop(i, immutable=True) for i in range(n)], app=self.raw)
        res = chord(header, self.noop(), app=self.raw).apply_async()
        got = self.get(res.id)
        assert isinstance(got, list) and len(got) == n, (
            "raw chord body did not see every header result"
        )

    def raw_fanout_start(self, n: int) -> None:
        # The same shape as canvasflow's fan-out (start -> n -> join): a worker, not the
        # client, then sends the n header messages, as it does for canvasflow.
        header = group([self.noop() for _ in range(n)], app=self.raw)
        res = chain(
            self.noop(7, immutable=True), chord(header, self.noop(), app=self.raw), app=self.raw
        ).apply_async()
        got = self.get(res.id)
        assert got == [7] * n, "raw chord body did not see every header result"

    def raw_diamonds(self, n: int) -> None:
        ids = []
        for i in range(n):
            diamond = chain(
                self.noop(i, immutable=True),
                chord(
                    group([self.noop(), self.noop(), self.noop()], app=self.raw),
                    self.noop(),
                    app=self.raw,
                ),
                app=self.raw,
            )
            ids.append(diamond.apply_async().id)
        for i, task_id in enumerate(ids):
            got = self.get(task_id)
            assert got == [i, i, i], f"raw diamond {i} ended with {got!r}"

    # -- canvasflow ------------------------------------------------------------------------------

    def run_wait(self, run: Any, steps: int) -> None:
        final = run.wait(timeout=WAIT_TIMEOUT)
        bad = {s: st for s, st in final.statuses.items() if st != "COMPLETED"}
        assert final.status == "COMPLETED" and not bad and len(final.steps) == steps, (
            f"run {run.id} ended {final.status} with {bad or len(final.steps)}"
        )

    def cf_chain(self, n: int) -> None:
        self.run_wait(self.client.submit(chain_definition(n)), n)

    def cf_fanout(self, n: int) -> None:
        self.run_wait(self.client.submit(fanout_definition(n)), n + 1)

    def cf_fanout_start(self, n: int) -> None:
        self.run_wait(self.client.submit(fanout_definition(n, start=True)), n + 2)

    raw_fanout_mixed = raw_fanout
    cf_fanout_mixed = cf_fanout_start

    def cf_diamonds(self, n: int) -> None:
        definition = diamond_definition()
        runs = [self.client.submit(definition) for _ in range(n)]
        for run in runs:
            self.run_wait(run, 5)


SHAPES = {
    # name: (raw steps, canvasflow steps) for a size n
    "chain": (lambda n: n, lambda n: n),
    "fanout": (lambda n: n + 1, lambda n: n + 1),
    "fanout_start": (lambda n: n + 2, lambda n: n + 2),
    "fanout_mixed": (lambda n: n + 1, lambda n: n + 2),
    "diamonds": (lambda n: 5 * n, lambda n: 5 * n),
}
LABELS = {
    "chain": "chain {n}",
    "fanout": "fan-out {n}",
    "fanout_start": "start, fan-out {n}",
    "fanout_mixed": "fan-out {n}: raw without start",
    "diamonds": "{n} diamonds",
}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def versions(admin: redis.Redis) -> dict[str, str]:
    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "celery": v("celery"),
        "kombu": v("kombu"),
        "redis-py": v("redis"),
        "redis-server": str(admin.info("server").get("redis_version")),
        "platform": platform.platform(),
    }


def report(
    results: dict[str, dict[str, Series]], sizes: dict[str, int], env: dict[str, str], rounds: int
) -> list[str]:
    """Print the table; return the shapes over the target."""
    rows = []
    over = []
    for shape, sides in results.items():
        raw, cf = sides["raw"], sides["cf"]
        ratio = cf.median / raw.median
        if ratio > TARGET:
            over.append(shape)
        rows.append(
            [
                LABELS[shape].format(n=sizes[shape]),
                f"{raw.median:.3f}",
                f"{cf.median:.3f}",
                f"{raw.steps / raw.median:,.0f}",
                f"{cf.steps / cf.median:,.0f}",
                f"{ratio:.2f}",
                "ok" if ratio <= TARGET else "OVER",
                f"{raw.median_cpu / raw.steps * 1000:.2f}",
                f"{cf.median_cpu / cf.steps * 1000:.2f}",
                f"{cf.median_cpu / raw.median_cpu:.2f}" if raw.median_cpu else "-",
                f"{raw.median_commands / raw.steps:.1f}",
                f"{cf.median_commands / cf.steps:.1f}",
            ]
        )
    head = [
        "shape",
        "raw s",
        "cf s",
        "raw steps/s",
        "cf steps/s",
        "ratio cf/raw",
        f"≤{TARGET}",
        "raw CPU ms/step",
        "cf CPU ms/step",
        "CPU ratio",
        "raw cmds/step",
        "cf cmds/step",
    ]
    print()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(
        f"median of {rounds} round(s); ratio = canvasflow time / raw time (the target); CPU = "
        "worker + client + private redis-server CPU time; cmds/step = Redis commands per step, "
        "those run inside Lua scripts included"
    )
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(*head)
        for row in rows:
            table.add_row(*row)
        Console(width=max(160, Console().width)).print(table)
    except ImportError:
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))
    extra = []
    if "chain" in results:
        n = sizes["chain"]
        extra.append(
            f"per chain link: raw {results['chain']['raw'].median / n * 1000:.2f} ms, "
            f"canvasflow {results['chain']['cf'].median / n * 1000:.2f} ms "
            "(DESIGN.md: raw 3.5–5.5 ms)"
        )
    if "diamonds" in results:
        n = sizes["diamonds"]
        extra.append(
            f"diamonds/s: raw {n / results['diamonds']['raw'].median:.1f}, "
            f"canvasflow {n / results['diamonds']['cf'].median:.1f} (DESIGN.md: raw ~66/s)"
        )
    for line in extra:
        print(line)
    return over


def top_commands(results: dict[str, dict[str, Series]], limit: int = 12) -> None:
    """Redis commands per step by command, median round, both sides."""
    for shape, sides in results.items():
        print(f"\nRedis commands per step, {shape} (median round):")
        per: dict[str, dict[str, float]] = {}
        for side, s in sides.items():
            idx = s.commands.index(sorted(s.commands)[len(s.commands) // 2])
            for cmd, calls in s.by_command[idx].items():
                per.setdefault(cmd, {})[side] = calls / s.steps
        ranked = sorted(per.items(), key=lambda kv: -max(kv[1].values()))[:limit]
        for cmd, v in ranked:
            print(f"  {cmd:<14} raw {v.get('raw', 0):6.2f}   cf {v.get('cf', 0):6.2f}")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round at small sizes (a smoke run)")
    ap.add_argument(
        "--smoke", action="store_true", help="1 round at tiny sizes: does the script still run?"
    )
    ap.add_argument("--rounds", type=int, help="measured rounds per shape and side (default 5)")
    ap.add_argument("--redis-url", help="use this Redis instead of a private redis-server")
    ap.add_argument(
        "--broker",
        help="Celery broker of both sides (e.g. amqp://guest:guest@127.0.0.1:5672/cf-bench, a "
        "virtual host of its own); default: the Redis. Run state and results stay in Redis.",
    )
    ap.add_argument(
        "--shapes",
        default="chain,fanout,fanout_start,diamonds",
        help="comma-separated subset of chain, fanout, fanout_start, diamonds (and fanout_mixed)",
    )
    ap.add_argument("--chain", type=int, help="chain length (default 100)")
    ap.add_argument("--fanout", type=int, help="fan-out width (default 1000)")
    ap.add_argument("--diamonds", type=int, help="number of diamonds (default 200)")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--worker-loglevel", default="WARNING")
    ap.add_argument(
        "--commands", action="store_true", help="print Redis commands per step by command"
    )
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args(argv)

    sizes = dict(SMOKE if args.smoke else QUICK if args.quick else FULL)
    for shape in ("chain", "fanout", "diamonds"):
        if getattr(args, shape):
            sizes[shape] = getattr(args, shape)
    sizes["fanout_start"] = sizes["fanout_mixed"] = sizes["fanout"]
    rounds = args.rounds or (1 if args.quick or args.smoke else 5)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = set(shapes) - set(FULL) - set(EXTRA)
    if unknown:
        ap.error(f"unknown shape(s): {', '.join(sorted(unknown))}")

    embedded = None
    worker = None
    try:
        if args.redis_url:
            url = args.redis_url
        else:
            embedded = EmbeddedRedis().start()
            url = embedded.url
        settings = Settings(
            redis_url=url,
            broker_url=args.broker or "",
            key_prefix="cfbench",
            worker_concurrency=args.concurrency,
        )
        admin = redis.Redis.from_url(url)
        env = versions(admin)
        print(f"redis {url} ({'private redis-server' if embedded else 'given'}); starting worker…")
        if settings.broker_is_amqp:
            print(f"broker {settings.broker_url} (AMQP; the broker's own CPU is not counted)")
            env["broker"] = settings.broker_url
        worker = Worker(settings, args.concurrency, args.worker_loglevel)
        worker.wait_ready(admin)
        print(
            f"worker pid {worker.proc.pid}, pool children {worker.children()}, log {worker.log_path}"
        )
        bench = Bench(settings, admin, worker, embedded.pid if embedded else None)
        sides = {
            side: {shape: getattr(bench, f"{side}_{shape}") for shape in (*FULL, *EXTRA)}
            for side in ("raw", "cf")
        }

        if not args.smoke:  # a smoke run skips it: the warm-up is the code of a measured round
            print("warming up (not counted)…")
            for shape in shapes:
                for side in ("raw", "cf"):
                    bench.measure(sides[side][shape], QUICK.get(shape, QUICK["fanout"]), None)

        results: dict[str, dict[str, Series]] = {}
        for shape in shapes:
            raw_steps, cf_steps = SHAPES[shape]
            results[shape] = {
                "raw": Series(raw_steps(sizes[shape])),
                "cf": Series(cf_steps(sizes[shape])),
            }
            for r in range(rounds):
                order = ("raw", "cf") if r % 2 == 0 else ("cf", "raw")
                for side in order:
                    t = bench.measure(sides[side][shape], sizes[shape], results[shape][side])
                    print(f"  {shape:<12} round {r + 1}/{rounds} {side:<3} {t:8.3f} s")

        over = report(results, sizes, env, rounds)
        if args.commands:
            top_commands(results)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "env": env,
                        "sizes": sizes,
                        "rounds": rounds,
                        "target": TARGET,
                        "results": {
                            shape: {
                                side: {
                                    "steps": s.steps,
                                    "seconds": s.seconds,
                                    "median": s.median,
                                    "redis_commands": s.commands,
                                    "cpu_seconds": s.cpu,
                                }
                                for side, s in sides_.items()
                            }
                            for shape, sides_ in results.items()
                        },
                    },
                    indent=2,
                )
            )
        if over:
            print(f"over the {TARGET}× target: {', '.join(over)}")
        return 0
    finally:
        if worker is not None:
            worker.stop()
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
