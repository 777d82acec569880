"""A parent with N child runs vs N independent submits of the child: what a sub-workflow costs.

    python benchmarks/bench_children.py [--smoke | --quick] [--children N] [--rounds N]
        [--redis-url URL] [--json PATH]

The child is a 3-step sequential workflow of builtin ``echo`` steps with ``outputs``. One side
submits it N times (``Client.submit``) and waits for every run; the other submits one parent
whose N sub-workflow steps run in parallel (one child run each, started on the workers) and waits
for the parent, which completes once every child has completed and joined; a third side ("mapped")
submits a parent of ONE mapped sub-workflow step over N elements (``map`` on a ``workflow:``
step: one item, one child run, per element). All sides run on ONE prefork worker subprocess
(concurrency 2, bench_core.py's) against a private redis-server. Rounds rotate which side goes
first; the median is reported. Target: parent / independent and mapped / independent <= 1.25
(issue 15).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import redis  # noqa: E402
from bench_core import Worker  # noqa: E402

from orchestrator import Client, Workflow  # noqa: E402
from orchestrator.cli.embedded import EmbeddedRedis  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

TARGET = 1.25
WAIT = 600.0


def child_definition(wid: str) -> Workflow:
    return (
        Workflow(wid, mode="sequential", inputs={"n": 0})
        .step("a", "builtin", "echo", params={"n": "{{ inputs.n }}"})
        .step("b", "builtin", "echo", params={"n": "{{ steps.a.output.n }}"})
        .step("c", "builtin", "echo", params={"n": "{{ steps.b.output.n }}"})
        .outputs(n="{{ steps.c.output.n }}")
    )


def parent_definition(child: str, n: int) -> Workflow:
    wf = Workflow(f"bench_parent_{n}")
    for i in range(n):
        wf = wf.subworkflow(f"c{i}", child, inputs={"n": i})
    return wf.outputs(last=f"{{{{ steps.c{n - 1}.output.n }}}}")


def mapped_definition(child: str, n: int) -> Workflow:
    return (
        Workflow(f"bench_mapped_{n}")
        .step("list", "builtin", "echo", params={"ns": list(range(n))})
        .subworkflow(
            "each",
            child,
            inputs={"n": "{{ item }}"},
            depends_on="list",
            map={"over": "{{ steps.list.output.ns }}"},
        )
        .outputs(last=f"{{{{ steps.each.output[{n - 1}].n }}}}")
    )


def independent(client: Client, child: str, n: int) -> float:
    t0 = time.perf_counter()
    runs = [client.submit(child, inputs={"n": i}) for i in range(n)]
    for r in runs:
        snap = r.wait(WAIT)
        assert snap.status == "COMPLETED", (r.id, snap.status, snap.error)
    return time.perf_counter() - t0


def parent(client: Client, defn: Workflow, n: int) -> float:
    t0 = time.perf_counter()
    run = client.submit(defn)
    snap = run.wait(WAIT)
    elapsed = time.perf_counter() - t0
    assert snap.status == "COMPLETED", (run.id, snap.status, snap.error)
    assert snap.result == {"last": n - 1}
    assert len(run.children()) == n
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="3 children, 1 round: does it run?")
    ap.add_argument("--quick", action="store_true", help="30 children, 1 round")
    ap.add_argument("--children", type=int, help="child runs per side (default 100)")
    ap.add_argument("--rounds", type=int, help="measured rounds per side (default 5)")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--redis-url", help="use this Redis instead of a private redis-server")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    n = args.children or (3 if args.smoke else 30 if args.quick else 100)
    rounds = args.rounds or (1 if args.smoke or args.quick else 5)

    embedded = None
    worker = None
    try:
        if args.redis_url:
            url = args.redis_url
        else:
            embedded = EmbeddedRedis().start()
            url = embedded.url
        settings = Settings(
            redis_url=url, key_prefix=f"cfkids{uuid.uuid4().hex[:4]}", worker_concurrency=2
        )
        admin = redis.Redis.from_url(url)
        worker = Worker(settings, args.concurrency, "WARNING")
        worker.wait_ready(admin)
        client = Client(settings)
        child = client.register(child_definition("bench_child")).id
        defs = {"parent": parent_definition(child, n), "mapped": mapped_definition(child, n)}
        if not args.smoke:
            print("warming up (not counted)…")
            independent(client, child, min(n, 10))
            parent(client, parent_definition(child, min(n, 10)), min(n, 10))
            parent(client, mapped_definition(child, min(n, 10)), min(n, 10))
        sides = ("independent", "parent", "mapped")
        times: dict[str, list[float]] = {side: [] for side in sides}
        for r in range(rounds):
            order = sides[r % 3 :] + sides[: r % 3]
            for side in order:
                t = (
                    independent(client, child, n)
                    if side == "independent"
                    else parent(client, defs[side], n)
                )
                times[side].append(t)
                print(f"  round {r + 1}/{rounds} {side:<12} {t:8.3f} s")
        med = {side: statistics.median(ts) for side, ts in times.items()}
        ratio = med["parent"] / med["independent"]
        mapped_ratio = med["mapped"] / med["independent"]
        verdict = "ok" if ratio <= TARGET else "OVER TARGET"
        mapped_verdict = "ok" if mapped_ratio <= TARGET else "OVER TARGET"
        print(
            f"{n} children of a 3-step child: independent {med['independent']:.3f} s, "
            f"parent {med['parent']:.3f} s, ratio {ratio:.2f} (target <= {TARGET}: {verdict}); "
            f"one mapped step {med['mapped']:.3f} s, ratio {mapped_ratio:.2f} "
            f"(target <= {TARGET}: {mapped_verdict})"
        )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "children": n,
                        "rounds": rounds,
                        "times": times,
                        "median": med,
                        "ratio": ratio,
                        "mapped_ratio": mapped_ratio,
                    },
                    indent=2,
                )
            )
        client.close()
        return 0 if args.smoke or max(ratio, mapped_ratio) <= TARGET else 1
    finally:
        if worker is not None:
            worker.stop()
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    raise SystemExit(main())
