"""Specs for planning speed's guarantees: the near-linear planner builds exactly the plan the
old quadratic one did, and long or deep shapes plan without recursion limits.

Speed itself is measured in benchmarks/bench_planning.py (no timed assertions here).
"""

from __future__ import annotations

import random
import sys
from typing import Any

import pytest

from orchestrator.engine.compiler import Leaf, Series, plan
from orchestrator.model.definition import Definition, load_definition
from orchestrator.model.limits import Limits
from orchestrator.model.validation import find_cycle
from tests.planning_reference import reference_plan
from tests.test_compiler import dag, random_dag

ECHO = {"plugin": "builtin", "method": "echo"}
BIG = Limits(max_steps=20000)


def chain_steps(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"s{i}", **ECHO, **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(n)
    ]


def zigzag(levels: int) -> Definition:
    """Two chains with a cross edge per level: N shapes all the way, not series-parallel."""
    edges: dict[str, list[str]] = {}
    for i in range(levels):
        edges[f"x{i}"] = [f"x{i - 1}"] if i else []
        edges[f"y{i}"] = [f"y{i - 1}", f"x{i - 1}"] if i else []
    return dag(edges)


@pytest.mark.parametrize("seed", range(150))
def test_random_dags_plan_exactly_as_the_reference_planner(seed: int) -> None:
    rnd = random.Random(7000 + seed)
    mode = "sequential" if seed % 7 == 0 else "parallel"
    d = random_dag(rnd, rnd.randint(1, 40), rnd.choice([0.03, 0.08, 0.15, 0.3, 0.6]), mode=mode)
    settled = [s for s in d.step_ids if rnd.random() < 0.2] if seed % 3 == 0 else []
    assert plan(d, settled) == reference_plan(d, settled)


@pytest.mark.parametrize("levels", [2, 3, 9, 40])
def test_not_series_parallel_ladders_report_the_same_lost_pairs_in_the_same_order(
    levels: int,
) -> None:
    d = zigzag(levels)
    got = plan(d)
    assert got.lost and got == reference_plan(d)


def test_a_chain_of_8000_steps_written_with_depends_on_plans_to_one_series() -> None:
    d = load_definition({"id": "long", "steps": chain_steps(8000)}, limits=BIG)
    assert plan(d).tree == Series(tuple(Leaf(f"s{i}") for i in range(8000)))


def test_a_chain_declared_newest_first_validates_and_plans_without_recursion() -> None:
    d = load_definition({"id": "long", "steps": list(reversed(chain_steps(5000)))}, limits=BIG)
    assert plan(d).tree == Series(tuple(Leaf(f"s{i}") for i in range(5000)))


def test_a_sequential_definition_of_4000_steps_may_read_any_earlier_step() -> None:
    # Each step reads a step far before it, which only list order makes visible.
    steps = [
        {"id": f"s{i}", **ECHO, "params": {"prev": f"{{{{ steps.s{(i - 1) // 2}.output }}}}"}}
        for i in range(4000)
    ]
    steps[0]["params"] = {}
    d = load_definition({"id": "long", "mode": "sequential", "steps": steps}, limits=BIG)
    assert len(plan(d).tree.parts) == 4000


def test_a_zigzag_deeper_than_the_recursion_limit_still_plans() -> None:
    # One nesting level per level of the zigzag; a lowered limit keeps the test short.
    d = zigzag(300)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        p = plan(d)
    finally:
        sys.setrecursionlimit(limit)
    assert {leaf for leaf in _leaves(p.tree)} == set(d.step_ids)
    assert p.lost


def test_a_cycle_through_a_long_chain_is_found_without_recursion() -> None:
    n = 6000
    graph = {f"s{i}": [f"s{i + 1}"] for i in range(n - 1)}
    graph[f"s{n - 1}"] = ["s0"]
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] == "s0" and len(cycle) == n + 1


def _leaves(node: Any) -> list[str]:
    out, todo = [], [node]
    while todo:
        n = todo.pop()
        if isinstance(n, Leaf):
            out.append(n.step)
        else:
            todo.extend(n.parts)
    return out
