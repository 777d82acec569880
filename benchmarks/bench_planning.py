"""Planning cost by shape and size: does validating and planning grow (near) linearly?

    python benchmarks/bench_planning.py [--sizes 1000,2000,4000,8000] [--shapes ...] [--repeat 3]
        [--smoke]

For each shape and size it times, best of ``--repeat``, what a submit does before anything is
queued: ``load`` (schema and semantic validation, limits included), ``plan`` (the
series-parallel decomposition) and ``compile`` (blueprint and canvas, which plans again).
Each row also prints the ratio of the plan and the total to the first size's: linear growth
doubles the ratio when the size doubles (8 at 8k against 1k); the drill of issue 13 measured
1k 0.25 s, 2k 1.1 s, 4k 5.2 s, 8k 31 s for a chain (a ratio of 124).

Shapes: ``sequential`` (a chain by list order), ``chain`` (the same chain written with
``depends_on`` in parallel mode), ``reversed`` (that chain declared newest first), ``fanout``
(start -> N -> join), ``diamonds`` (N/4 diamonds in a row), ``zigzag`` (two chains with a
cross edge per level: not series-parallel, so the planner synchronises and reports lost
parallelism; still quadratic, so only sizes up to 3,000 run, see docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from orchestrator.engine import compiler  # noqa: E402
from orchestrator.model.definition import load_definition  # noqa: E402
from orchestrator.model.limits import Limits  # noqa: E402

ECHO = {"plugin": "builtin", "method": "echo"}


def sequential(n: int) -> dict[str, Any]:
    return {
        "id": "bench",
        "mode": "sequential",
        "steps": [{"id": f"s{i}", **ECHO} for i in range(n)],
    }


def chain(n: int) -> dict[str, Any]:
    steps = [
        {"id": f"s{i}", **ECHO, **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(n)
    ]
    return {"id": "bench", "steps": steps}


def reversed_chain(n: int) -> dict[str, Any]:
    return {"id": "bench", "steps": list(reversed(chain(n)["steps"]))}


def fanout(n: int) -> dict[str, Any]:
    middle = [{"id": f"m{i}", **ECHO, "depends_on": ["start"]} for i in range(n - 2)]
    return {
        "id": "bench",
        "steps": [
            {"id": "start", **ECHO},
            *middle,
            {"id": "join", **ECHO, "depends_on": [m["id"] for m in middle]},
        ],
    }


def diamonds(n: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    prev: list[str] = []
    for d in range(n // 4):
        top, left, right, bottom = (f"d{d}{x}" for x in "tlrb")
        steps += [
            {"id": top, **ECHO, "depends_on": prev},
            {"id": left, **ECHO, "depends_on": [top]},
            {"id": right, **ECHO, "depends_on": [top]},
            {"id": bottom, **ECHO, "depends_on": [left, right]},
        ]
        prev = [bottom]
    return {"id": "bench", "steps": steps}


def zigzag(n: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for i in range(n // 2):
        steps.append({"id": f"x{i}", **ECHO, "depends_on": [f"x{i - 1}"] if i else []})
        steps.append({"id": f"y{i}", **ECHO, "depends_on": [f"y{i - 1}", f"x{i - 1}"] if i else []})
    return {"id": "bench", "steps": steps}


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "sequential": sequential,
    "chain": chain,
    "reversed": reversed_chain,
    "fanout": fanout,
    "diamonds": diamonds,
    "zigzag": zigzag,
}


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1000,2000,4000,8000")
    ap.add_argument("--shapes", default="sequential,chain,reversed,fanout,diamonds,zigzag")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--smoke", action="store_true", help="sizes 40 and 80, once: does the script still run?"
    )
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.repeat = "40,80", 1
    sizes = [int(s) for s in args.sizes.split(",")]
    limits = Limits(max_steps=max(sizes))
    ctx = compiler.RunContext("bench", 1)
    print(
        f"{'shape':<11}{'steps':>7}{'load s':>9}{'plan s':>9}{'compile s':>11}{'total s':>9}"
        f"{'plan ratio':>12}{'total ratio':>13}"
    )
    for shape in args.shapes.split(","):
        base: tuple[float, float] | None = None
        for n in sizes:
            data = SHAPES[shape](n)
            if shape == "zigzag" and n > 3000:
                print(
                    f"{shape:<11}{n:>7}   skipped: quadratic, one level is cut off per split "
                    "(docs/performance.md)"
                )
                continue
            t_load, defn = best(lambda data=data: load_definition(data, limits=limits), args.repeat)
            t_plan, _ = best(lambda defn=defn: compiler.plan(defn), args.repeat)
            t_comp, _ = best(lambda defn=defn: compiler.compile_run(defn, ctx), args.repeat)
            total = t_load + t_comp
            base = base or (t_plan, total)
            print(
                f"{shape:<11}{n:>7}{t_load:>9.3f}{t_plan:>9.3f}{t_comp:>11.3f}{total:>9.3f}"
                f"{t_plan / base[0]:>12.1f}{total / base[1]:>13.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
