"""Specs for the compiler: series-parallel plans and the Celery canvas they become.

No broker: the compiler is a pure function, so canvases are built with an app that is never
connected (or with no app at all) and inspected as data. A small checker walks any canvas and
derives the happens-before relation Celery will impose, so every shape (and random DAGs) can be
checked against the definition's dependencies.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import celery
import pytest
from celery import chain, chord, group
from celery.canvas import Signature

from orchestrator.engine.celery_app import celery_config
from orchestrator.engine.compiler import (
    COMPENSATE_TASK,
    COMPENSATED_TASK,
    HEADER,
    MERGE_TASK,
    SETTLE_TASK,
    STEP_TASK,
    Leaf,
    Parallel,
    RunContext,
    Series,
    compile_compensation,
    compile_run,
    plan,
    read_header,
    read_spec,
    referenced_outputs,
    step_spec,
    uses_inputs,
    wire_header,
    wire_spec,
)
from orchestrator.engine.describe import describe_plan
from orchestrator.model.definition import Definition, Workflow, load_definition
from orchestrator.settings import Settings

APP = celery.Celery("canvasflow-tests", set_as_current=False)
APP.conf.update(
    {k: v for k, v in celery_config(Settings()).items() if k.startswith("task_default")}
)
CTX = RunContext("run-1", 3)


def routed(sig: Signature, option: str) -> Any:
    """Where Celery sends a signature: its own option, else the app's default."""
    return sig.options.get(option, APP.conf[f"task_default_{option}"])


HDR = {"run": "run-1", "epoch": 3}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def dag(
    edges: Mapping[str, Iterable[str]], *, mode: str = "parallel", **step_fields: Any
) -> Definition:
    """A definition from {step: [deps]} in insertion order; every step is a builtin.echo."""
    w = Workflow("wf", mode=mode)
    for sid, deps in edges.items():
        w.step(sid, "builtin", "echo", depends_on=list(deps), **step_fields.get(sid, {}))
    return w.build()


def S(*parts: Any) -> Series:
    return Series(tuple(Leaf(p) if isinstance(p, str) else p for p in parts))


def P(*parts: Any) -> Parallel:
    return Parallel(tuple(Leaf(p) if isinstance(p, str) else p for p in parts))


def spec(sig: Signature) -> dict[str, Any]:
    """The spec a canvasflow.step signature carries, read back from its wire list."""
    assert sig.task == STEP_TASK, sig
    assert isinstance(sig.args[-1], list), sig.args
    return read_spec(sig.args[-1])


def sid(sig: Signature) -> str:
    """The step id of a canvasflow.step signature."""
    return spec(sig)["id"]


def seed_of(sig: Signature) -> dict[str, Any]:
    """The outcomes an entry step is seeded with, without the run header that rides along."""
    assert sig.args[0][HEADER] == wire_header(HDR)
    return {k: v for k, v in sig.args[0].items() if k != HEADER}


@dataclass
class Walk:
    """What a canvas does: its tasks in order, happens-before pairs, and its entry tasks."""

    nodes: list[str] = field(default_factory=list)
    before: set[tuple[str, str]] = field(default_factory=set)
    entries: set[str] = field(default_factory=set)
    sigs: dict[str, Signature] = field(default_factory=dict)


def walk(sig: Signature, counter: itertools.count | None = None) -> Walk:
    """Derive happens-before from canvas structure, the way Celery runs it.

    chain: every task of a link happens before every task of the later links; group: no order
    among members; chord: every header task happens before every body task. Entry tasks are
    the ones that receive no parent result (they must carry the seed of settled outcomes).
    Non-step tasks are named ``<task>#<n>``.
    """
    counter = counter or itertools.count(1)
    if isinstance(sig, chord):
        header = [walk(t, counter) for t in sig.tasks]
        body = walk(sig.body, counter)
        out = Walk(entries=set().union(*(h.entries for h in header)))
        for h in header:
            out.nodes += h.nodes
            out.before |= h.before
            out.sigs.update(h.sigs)
        out.before |= {(x, y) for x in out.nodes for y in body.nodes} | body.before
        out.nodes += body.nodes
        out.sigs.update(body.sigs)
        return out
    if isinstance(sig, group):
        parts = [walk(t, counter) for t in sig.tasks]
        out = Walk(entries=set().union(*(p.entries for p in parts)))
        for p in parts:
            out.nodes += p.nodes
            out.before |= p.before
            out.sigs.update(p.sigs)
        return out
    if isinstance(sig, chain):
        links = [walk(t, counter) for t in sig.tasks]
        out = Walk(entries=set(links[0].entries))
        for link in links:
            out.before |= {(x, y) for x in out.nodes for y in link.nodes} | link.before
            out.nodes += link.nodes
            out.sigs.update(link.sigs)
        return out
    assert type(sig) is Signature, f"unexpected canvas type {type(sig)}"
    name = sid(sig) if sig.task == STEP_TASK else f"{sig.task}#{next(counter)}"
    return Walk(nodes=[name], entries={name}, sigs={name: sig})


def closure(pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    succ: dict[str, set[str]] = {}
    for a, b in pairs:
        succ.setdefault(a, set()).add(b)
    out: set[tuple[str, str]] = set()
    for start in list(succ):
        stack, seen = list(succ[start]), set()
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(succ.get(n, ()))
        out |= {(start, n) for n in seen}
    return out


def check_canvas(defn: Definition, canvas: Signature, settled: Mapping[str, Any] = ()) -> Walk:
    """Assert the canvas runs every pending step once, in an order that respects the definition."""
    settled = dict(settled)
    w = walk(canvas)
    pending = [s.id for s in defn.steps if s.id not in settled]
    steps_in_canvas = [n for n in w.nodes if "#" not in n]
    assert sorted(steps_in_canvas) == sorted(pending), "every pending step runs exactly once"
    # The run is settled by the very last task, after everything else: a settle task, or the
    # last step itself when one step ends the canvas (one task less per run).
    last = w.nodes[-1]
    if "#" in last:
        assert last.startswith(SETTLE_TASK + "#")
    else:
        assert spec(w.sigs[last]).get("settle") == 1
    assert [
        n for n, sig in w.sigs.items() if sig.task == STEP_TASK and spec(sig).get("settle")
    ] in ([], [last])
    assert all((n, last) in w.before for n in w.nodes[:-1])
    # Every dependency (and list order in sequential mode) is respected.
    wanted = {
        (d, s.id) for s in defn.steps for d in s.depends_on if d in pending and s.id in pending
    }
    if defn.mode == "sequential":
        wanted |= set(zip(pending, pending[1:], strict=False))
    missing = wanted - w.before
    assert not missing, f"dependencies not ordered by the canvas: {sorted(missing)}"
    # Orderings the canvas adds between steps the definition leaves unordered are reported as lost.
    step_before = {(a, b) for a, b in w.before if "#" not in a and "#" not in b}
    imposed = step_before - closure(wanted)
    the_plan = plan(defn, settled)
    assert imposed <= set(the_plan.lost), (
        f"unreported lost parallelism: {sorted(imposed - set(the_plan.lost))}"
    )
    assert set(the_plan.lost) <= step_before, "reported lost pairs are really ordered"
    # Entry tasks carry the seed of settled outcomes as their first argument; no other task does.
    for name, sig in w.sigs.items():
        if sig.task == STEP_TASK:
            assert len(sig.args) == (2 if name in w.entries else 1), (name, sig.args)
            if name in w.entries:
                assert isinstance(sig.args[0], dict) and HEADER in sig.args[0]
    # A pure function of its input: nothing is frozen (no task ids assigned).
    assert all("task_id" not in sig.options for sig in w.sigs.values())
    return w


def random_dag(rnd: random.Random, n: int, density: float, mode: str = "parallel") -> Definition:
    order = [f"s{i}" for i in range(n)]
    edges = {s: [order[j] for j in range(i) if rnd.random() < density] for i, s in enumerate(order)}
    if mode == "parallel":
        shuffled = list(edges.items())
        rnd.shuffle(shuffled)  # list order must not matter in a DAG mode
        edges = dict(shuffled)
    return dag(edges, mode=mode)


DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["a"], "e": ["b", "c", "d"]}


# ---------------------------------------------------------------------------------------------
# plan()
# ---------------------------------------------------------------------------------------------


def test_a_single_step_plans_to_a_leaf() -> None:
    assert plan(dag({"a": []})).tree == Leaf("a")


def test_a_linear_chain_plans_to_a_series() -> None:
    p = plan(dag({"a": [], "b": ["a"], "c": ["b"]}))
    assert p.tree == S("a", "b", "c")
    assert p.lost == ()
    assert set(p.order_edges) == {("a", "b"), ("b", "c")}


def test_independent_steps_plan_to_a_parallel() -> None:
    assert plan(dag({"a": [], "b": [], "c": []})).tree == P("a", "b", "c")


def test_a_diamond_plans_to_series_of_leaf_parallel_leaf() -> None:
    p = plan(dag(DIAMOND))
    assert p.tree == S("a", P("b", "c", "d"), "e")
    assert p.lost == ()


def test_nested_series_parallel_keeps_its_nesting() -> None:
    p = plan(dag({"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": ["c", "d"]}))
    assert p.tree == S("a", P(S("b", "c"), "d"), "e")
    assert p.lost == ()


def test_a_complete_bipartite_dag_plans_to_two_parallels_in_series() -> None:
    p = plan(dag({"a": [], "b": [], "c": ["a", "b"], "d": ["a", "b"]}))
    assert p.tree == S(P("a", "b"), P("c", "d"))
    assert p.lost == ()


def test_an_n_shaped_dag_is_synchronised_and_reports_the_lost_parallelism() -> None:
    # a -> c, b -> c, b -> d: not series-parallel. Nothing orders a before d, but the canvas must.
    p = plan(dag({"a": [], "b": [], "c": ["a", "b"], "d": ["b"]}))
    assert p.tree == S(P("a", "b"), P("c", "d"))
    assert p.lost == (("a", "d"),)


def test_sequential_mode_orders_steps_in_list_order_without_depends_on() -> None:
    p = plan(dag({"x": [], "a": [], "m": []}, mode="sequential"))
    assert p.tree == S("x", "a", "m")
    assert p.order_edges == (("x", "a"), ("a", "m"))
    assert p.lost == ()


def test_parallel_mode_ignores_list_order() -> None:
    assert plan(dag({"x": [], "a": [], "m": []})).tree == P("x", "a", "m")


def test_a_plan_leaves_out_settled_steps() -> None:
    d = dag(DIAMOND)
    assert plan(d, settled={"a"}).tree == S(P("b", "c", "d"), "e")
    assert plan(d, settled={"a", "b", "c"}).tree == S("d", "e")
    assert plan(d, settled=["a", "b", "c", "d", "e"]).tree is None


def test_a_1000_wide_fan_out_plans_and_compiles() -> None:
    edges = (
        {"root": []}
        | {f"w{i}": ["root"] for i in range(1000)}
        | {"sink": [f"w{i}" for i in range(1000)]}
    )
    d = dag(edges)
    p = plan(d)
    assert isinstance(p.tree, Series) and len(p.tree.parts) == 3
    assert isinstance(p.tree.parts[1], Parallel) and len(p.tree.parts[1].parts) == 1000
    canvas = compile_run(d, CTX, app=APP)
    assert isinstance(canvas, chain)
    assert len(canvas.tasks[1].tasks) == 1000


# ---------------------------------------------------------------------------------------------
# compile_run(): canvas shapes
# ---------------------------------------------------------------------------------------------


def test_a_linear_chain_of_three_is_one_chain_ending_with_settle() -> None:
    d = dag({"a": [], "b": ["a"], "c": ["b"]})
    canvas = compile_run(d, CTX, app=APP)
    assert isinstance(canvas, chain)
    assert [t.task for t in canvas.tasks] == [STEP_TASK, STEP_TASK, STEP_TASK]
    assert [sid(t) for t in canvas.tasks] == ["a", "b", "c"]
    first, second, last = canvas.tasks
    assert first.args == ({HEADER: ["run-1", 3, ""]}, ["a", "builtin", "echo", 0])
    assert second.args == (["b", "builtin", "echo", 0, {"deps": ["a"]}],)
    # c ends the canvas: it settles the run, and no later step reads its outcome (drop 1 + settle 4)
    assert last.args == (["c", "builtin", "echo", 5, {"deps": ["b"]}],)
    assert spec(last) == {
        "id": "c",
        "plugin": "builtin",
        "method": "echo",
        "deps": ["b"],
        "drop": 1,
        "settle": 1,
    }
    check_canvas(d, canvas)


def test_a_single_step_is_the_step_that_settles() -> None:
    d = dag({"only": []})
    canvas = compile_run(d, CTX, app=APP)
    assert canvas.task == STEP_TASK and spec(canvas)["settle"] == 1
    check_canvas(d, canvas)


def test_a_diamond_is_chain_of_step_chord_and_settle() -> None:
    d = dag(DIAMOND)
    canvas = compile_run(d, CTX, app=APP)
    assert isinstance(canvas, chain)
    a, fan = canvas.tasks
    assert sid(a) == "a"
    assert isinstance(fan, chord)
    assert [sid(t) for t in fan.tasks] == ["b", "c", "d"]
    assert sid(fan.body) == "e"
    assert spec(fan.body)["deps"] == ["b", "c", "d"]
    assert spec(fan.body)["settle"] == 1
    check_canvas(d, canvas)


def test_pure_parallel_is_a_chord_with_settle_as_body() -> None:
    d = dag({"a": [], "b": [], "c": []})
    canvas = compile_run(d, CTX, app=APP)
    assert isinstance(canvas, chord)
    assert [sid(t) for t in canvas.tasks] == ["a", "b", "c"]
    assert all(seed_of(t) == {} for t in canvas.tasks)  # every branch starts the run: seeded
    assert canvas.body.task == SETTLE_TASK
    check_canvas(d, canvas)


def test_nested_series_parallel_nests_a_chain_inside_the_chord_header() -> None:
    d = dag({"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": ["c", "d"]})
    canvas = compile_run(d, CTX, app=APP)
    assert isinstance(canvas, chain)
    a, fan = canvas.tasks
    assert sid(a) == "a" and spec(fan.body)["settle"] == 1
    assert isinstance(fan, chord)
    branch, d_task = fan.tasks
    assert isinstance(branch, chain) and [sid(t) for t in branch.tasks] == ["b", "c"]
    assert sid(d_task) == "d"
    assert sid(fan.body) == "e"
    check_canvas(d, canvas)


def test_a_group_followed_by_a_group_is_joined_by_a_merge_task() -> None:
    d = dag({"a": [], "b": [], "c": ["a", "b"], "d": ["a", "b"]})
    canvas = compile_run(d, CTX, app=APP)
    assert isinstance(canvas, chain)
    first, second = canvas.tasks
    assert isinstance(first, chord) and isinstance(second, chord)
    assert [sid(t) for t in first.tasks] == ["a", "b"]
    assert first.body.task == MERGE_TASK
    assert first.body.args == (HDR,)
    assert [sid(t) for t in second.tasks] == ["c", "d"]
    assert second.body.task == SETTLE_TASK
    check_canvas(d, canvas)


def test_an_n_shaped_dag_still_orders_every_dependency() -> None:
    d = dag({"a": [], "b": [], "c": ["a", "b"], "d": ["b"]})
    canvas = compile_run(d, CTX, app=APP)
    w = check_canvas(d, canvas)
    assert ("a", "d") in w.before  # the parallelism given up, as plan().lost says


def test_a_fan_out_at_the_end_is_closed_by_settle() -> None:
    d = dag({"a": [], "b": ["a"], "c": ["a"]})
    canvas = compile_run(d, CTX, app=APP)
    assert isinstance(canvas, chain)
    a, fan = canvas.tasks
    assert sid(a) == "a"
    assert isinstance(fan, chord) and fan.body.task == SETTLE_TASK
    check_canvas(d, canvas)


def test_a_fan_in_at_the_start_is_a_chord_whose_body_settles() -> None:
    d = dag({"a": [], "b": [], "c": ["a", "b"]})
    canvas = compile_run(d, CTX, app=APP)
    assert (
        isinstance(canvas, chord) and sid(canvas.body) == "c" and spec(canvas.body)["settle"] == 1
    )
    check_canvas(d, canvas)


def test_sequential_mode_chains_in_list_order_and_keeps_only_explicit_deps_in_specs() -> None:
    d = dag({"x": [], "a": [], "m": ["x"]}, mode="sequential")
    canvas = compile_run(d, CTX, app=APP)
    assert isinstance(canvas, chain)
    assert [sid(t) for t in canvas.tasks] == ["x", "a", "m"]
    # The implicit link to the previous step only orders: join rules follow explicit deps only.
    specs = {sid(t): spec(t) for t in canvas.tasks}
    assert "deps" not in specs["x"] and "deps" not in specs["a"]
    assert specs["m"]["deps"] == ["x"]
    check_canvas(d, canvas)


def test_compiling_without_an_app_gives_the_same_shape() -> None:
    d = dag(DIAMOND)
    canvas = compile_run(d, CTX)
    assert isinstance(canvas, chain) and isinstance(canvas.tasks[1], chord)
    check_canvas(d, canvas)
    assert compile_run(d, CTX) == compile_run(d, CTX)  # pure: same input, same canvas


@pytest.mark.parametrize("seed", range(40))
def test_random_dags_respect_every_dependency(seed: int) -> None:
    rnd = random.Random(seed)
    d = random_dag(rnd, rnd.randint(1, 12), rnd.choice([0.1, 0.25, 0.4, 0.7]))
    check_canvas(d, compile_run(d, CTX, app=APP))


@pytest.mark.parametrize("seed", range(5))
def test_random_sequential_definitions_run_in_list_order(seed: int) -> None:
    rnd = random.Random(1000 + seed)
    d = random_dag(rnd, rnd.randint(2, 8), 0.3, mode="sequential")
    canvas = compile_run(d, CTX, app=APP)
    w = check_canvas(d, canvas)
    assert [n for n in w.nodes if "#" not in n] == d.step_ids


@pytest.mark.parametrize("seed", range(10))
def test_random_dags_with_settled_steps_compile_what_is_left(seed: int) -> None:
    rnd = random.Random(2000 + seed)
    d = random_dag(rnd, rnd.randint(2, 10), 0.3)
    done = [s for s in d.step_ids if rnd.random() < 0.3]
    settled = {s: ("COMPLETED", {"n": i}) for i, s in enumerate(done)}
    canvas = compile_run(d, CTX, settled=settled, app=APP)
    if len(done) == len(d.step_ids):
        assert canvas.task == SETTLE_TASK
    else:
        check_canvas(d, canvas, settled)


# ---------------------------------------------------------------------------------------------
# Settled steps (resume, retry-from-step, recovery)
# ---------------------------------------------------------------------------------------------


def test_settled_steps_are_left_out_and_seed_the_first_tasks() -> None:
    d = dag(DIAMOND, e={"params": {"rows": "{{ steps.a.output.rows }}"}})
    settled = {"a": ("COMPLETED", {"rows": 7})}
    canvas = compile_run(d, CTX, settled=settled, app=APP)
    fan = canvas
    assert isinstance(fan, chord)
    assert [sid(t) for t in fan.tasks] == ["b", "c", "d"]
    for t in fan.tasks:
        assert seed_of(t) == {"a": ["COMPLETED", {"rows": 7}]}
    assert len(fan.body.args) == 1  # e gets its incoming from the chord, not a seed
    assert spec(fan.body)["settle"] == 1
    check_canvas(d, canvas, settled)


def test_the_seed_carries_outputs_only_for_steps_that_templates_read() -> None:
    d = dag(
        {"a": [], "b": [], "c": ["a", "b"], "d": ["c"]},
        d={"params": {"v": "{{ steps.a.output }}"}, "when": "steps.b.status == 'COMPLETED'"},
    )
    settled = {
        "a": ("COMPLETED", {"big": 1}),
        "b": ("COMPLETED", {"huge": 2}),
        "c": ("SKIPPED", None),
    }
    first = compile_run(d, CTX, settled=settled, app=APP)
    assert sid(first) == "d" and spec(first)["settle"] == 1
    assert seed_of(first) == {
        "a": ["COMPLETED", {"big": 1}],
        "b": ["COMPLETED", None],
        "c": ["SKIPPED", None],
    }
    assert "keep" not in spec(first)  # nobody reads d's output


def test_when_everything_is_settled_only_settle_runs_with_the_seed() -> None:
    d = dag({"a": [], "b": ["a"]}, b={"params": {"x": "{{ steps.a.output }}"}})
    canvas = compile_run(
        d,
        RunContext("r", 1, priority="high"),
        settled={"a": ("COMPLETED", 1), "b": ("FAILED", 2)},
        app=APP,
    )
    assert type(canvas) is Signature
    assert canvas.task == SETTLE_TASK
    assert canvas.args == ({"a": ["COMPLETED", 1], "b": ["FAILED", None]}, {"run": "r", "epoch": 1})
    assert routed(canvas, "priority") == 0 and routed(canvas, "queue") == "default"


# ---------------------------------------------------------------------------------------------
# Step specs and what travels with the canvas
# ---------------------------------------------------------------------------------------------


def test_step_spec_omits_defaults() -> None:
    d = dag({"a": []})
    assert step_spec(d.step("a"), False) == {"id": "a", "plugin": "builtin", "method": "echo"}


def test_step_spec_carries_every_setting_that_differs_from_the_defaults() -> None:
    d = load_definition(
        {
            "id": "w",
            "steps": [
                {"id": "a", "plugin": "p"},
                {
                    "id": "b",
                    "plugin": "p",
                    "method": "m",
                    "params": {"x": 1},
                    "depends_on": ["a"],
                    "join": "any",
                    "when": "steps.a.status == 'COMPLETED'",
                    "retries": 2,
                    "retry_delay": 3,
                    "retry_backoff": "exponential",
                    "retry_delay_max": 30,
                    "timeout": 9,
                    "critical": False,
                    "queue": "io",
                },
            ],
        }
    )
    assert step_spec(d.step("b"), True) == {
        "id": "b",
        "plugin": "p",
        "method": "m",
        "params": {"x": 1},
        "deps": ["a"],
        "join": "any",
        "when": "steps.a.status == 'COMPLETED'",
        "retries": 2,
        "delay": [3.0, "exponential", 30.0],
        "timeout": 9.0,
        "critical": False,
        "keep": True,
    }
    # what a step task receives reads back to the same spec, flags and all
    for extra in ({}, {"drop": 1, "settle": 1, "comp": 1}):
        full = {**step_spec(d.step("b"), True), **extra}
        assert read_spec(wire_spec(full)) == full
    assert (
        read_spec({"id": "old", "plugin": "p", "method": "m"})["id"] == "old"
    )  # an older message's dict


def test_retry_delay_travels_only_with_retries() -> None:
    d = load_definition({"id": "w", "steps": [{"id": "a", "plugin": "p", "retry_delay": 9}]})
    assert "delay" not in step_spec(d.step("a"), False)


def test_referenced_outputs_are_the_steps_that_when_or_templates_read() -> None:
    d = dag(
        {
            "a": [],
            "b": [],
            "c": [],
            "d": [],
            "e": ["a", "b", "c", "d"],
        },
        e={
            "when": "steps.a.output.ok and steps.b.status == 'COMPLETED'",
            "params": {"x": "n={{ steps.c.output.n }}", "y": ["{{ steps['d'] }}"]},
        },
    )
    assert referenced_outputs(d) == {"a", "c", "d"}
    canvas = compile_run(d, CTX, app=APP)
    keeps = {sid(t): spec(t).get("keep", False) for t in canvas.tasks}
    assert keeps == {"a": True, "b": False, "c": True, "d": True}


def test_nothing_is_kept_when_nothing_reads_outputs() -> None:
    assert referenced_outputs(dag(DIAMOND)) == set()


def test_uses_inputs_sees_when_and_templates() -> None:
    assert not uses_inputs(dag(DIAMOND))
    assert uses_inputs(dag({"a": []}, a={"params": {"p": "{{ inputs.path }}"}}))
    assert uses_inputs(dag({"a": []}, a={"when": "inputs.go"}))
    assert not uses_inputs(dag({"a": []}, a={"params": {"p": "{{ run.id }}"}}))


def test_run_context_header_carries_only_what_is_set() -> None:
    assert RunContext("r", 2).header() == {"run": "r", "epoch": 2}
    full = RunContext("r", 2, workflow="wf", version="1.0", inputs={"k": 1})
    assert full.header() == {
        "run": "r",
        "epoch": 2,
        "wf": "wf",
        "version": "1.0",
        "inputs": {"k": 1},
    }
    d = dag({"a": []})
    canvas = compile_run(d, full, app=APP)
    assert canvas.args[0][HEADER] == ["r", 2, "wf", "1.0", {"k": 1}]
    assert read_header(canvas.args[0][HEADER]) == full.header()
    assert read_header(wire_header(RunContext("r", 2, version="2").header())) == {
        "run": "r",
        "epoch": 2,
        "version": "2",
    }


# ---------------------------------------------------------------------------------------------
# Options: priority, queue, time limits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "number"), [("high", 0), ("normal", 4), ("low", 8)])
def test_priority_maps_to_a_redis_message_priority_on_every_task(name: str, number: int) -> None:
    d = dag({"a": [], "b": [], "c": ["a", "b"], "d": ["a", "b"]})  # steps, a merge and settle
    w = walk(compile_run(d, RunContext("r", 1, priority=name), app=APP))
    assert {s.task for s in w.sigs.values()} == {STEP_TASK, MERGE_TASK, SETTLE_TASK}
    assert {routed(s, "priority") for s in w.sigs.values()} == {number}
    if name == "normal":  # the app's defaults are not repeated in every message
        assert all(
            "priority" not in s.options and "queue" not in s.options for s in w.sigs.values()
        )


@pytest.mark.parametrize(("name", "number"), [("high", 8), ("normal", 4), ("low", 0)])
def test_on_an_amqp_broker_priority_maps_the_other_way_round_so_high_still_runs_first(
    name: str, number: int
) -> None:
    # A RabbitMQ queue with x-max-priority delivers higher numbers first.
    d = dag({"a": [], "b": [], "c": ["a", "b"]})
    w = walk(compile_run(d, RunContext("r", 1, priority=name, amqp=True), app=APP))
    assert {routed(s, "priority") for s in w.sigs.values()} == {number}


def test_a_steps_queue_goes_to_its_options_and_join_tasks_use_default() -> None:
    d = dag(DIAMOND, b={"queue": "io"}, e={"queue": "cpu"})
    w = walk(compile_run(d, CTX, app=APP))
    queues = {n: routed(s, "queue") for n, s in w.sigs.items()}
    assert queues["b"] == "io" and queues["e"] == "cpu"
    assert queues["a"] == queues["c"] == queues["d"] == "default"
    assert w.nodes[-1] == "e"  # e ends the canvas and settles the run on its own queue
    plain = walk(compile_run(dag({"a": [], "b": []}, b={"queue": "io"}), CTX, app=APP))
    assert plain.sigs[plain.nodes[-1]].task == SETTLE_TASK
    assert (
        routed(plain.sigs[plain.nodes[-1]], "queue") == "default"
    )  # a join task uses the default queue
    assert "queue" not in spec(w.sigs["b"])


def test_a_timeout_becomes_soft_and_hard_time_limits() -> None:
    d = dag({"a": [], "b": ["a"]}, a={"timeout": 30})
    canvas = compile_run(d, RunContext("r", 1, hard_timeout_grace=5), app=APP)
    a, b = canvas.tasks[0], canvas.tasks[1]
    assert a.options["soft_time_limit"] == 30 and a.options["time_limit"] == 35
    assert "soft_time_limit" not in b.options and "time_limit" not in b.options


# ---------------------------------------------------------------------------------------------
# Compensation
# ---------------------------------------------------------------------------------------------


def saga() -> Definition:
    return load_definition(
        {
            "id": "saga",
            "steps": [
                {
                    "id": "backup",
                    "plugin": "backup",
                    "method": "create",
                    "queue": "io",
                    "compensate": {
                        "plugin": "backup",
                        "method": "restore",
                        "params": {"id": "{{ steps.backup.output.id }}"},
                    },
                },
                {
                    "id": "migrate",
                    "plugin": "migration",
                    "depends_on": ["backup"],
                    "compensate": {
                        "plugin": "migration",
                        "method": "revert",
                        "retries": 2,
                        "timeout": 20,
                        "queue": "db",
                    },
                },
                {
                    "id": "deploy",
                    "plugin": "deployment",
                    "depends_on": ["migrate"],
                    "compensate": {"plugin": "deployment", "method": "rollback"},
                },
            ],
        }
    )


def test_compensation_is_a_chain_in_the_given_order_ending_with_compensated() -> None:
    d = saga()
    canvas = compile_compensation(
        d,
        RunContext("r", 2, priority="low", hard_timeout_grace=10),
        ["deploy", "migrate", "backup"],
        "FAILED",
        app=APP,
    )
    hdr = {"run": "r", "epoch": 2}
    assert isinstance(canvas, chain)
    assert [t.task for t in canvas.tasks] == [COMPENSATE_TASK] * 3 + [COMPENSATED_TASK]
    deploy, migrate, backup, done = canvas.tasks
    assert deploy.args == (
        None,
        {"id": "deploy", "plugin": "deployment", "method": "rollback"},
        hdr,
    )
    assert migrate.args == (
        {"id": "migrate", "plugin": "migration", "method": "revert", "retries": 2},
        hdr,
    )
    assert backup.args == (
        {
            "id": "backup",
            "plugin": "backup",
            "method": "restore",
            "params": {"id": "{{ steps.backup.output.id }}"},
        },
        hdr,
    )
    assert done.args == (hdr, "FAILED")
    # queue: the compensation's own, else its step's; time limits from the compensation timeout.
    assert [routed(t, "queue") for t in canvas.tasks] == ["default", "db", "io", "default"]
    assert migrate.options["soft_time_limit"] == 20 and migrate.options["time_limit"] == 30
    assert "soft_time_limit" not in deploy.options
    assert {routed(t, "priority") for t in canvas.tasks} == {8}


def test_compensation_with_nothing_to_undo_is_just_compensated() -> None:
    canvas = compile_compensation(saga(), CTX, [], "CANCELLED", app=APP)
    assert type(canvas) is Signature
    assert canvas.task == COMPENSATED_TASK
    assert canvas.args == (None, HDR, "CANCELLED")


def test_a_single_compensation_is_a_chain_of_two() -> None:
    canvas = compile_compensation(saga(), CTX, ["backup"], "CANCELLED", app=APP)
    assert isinstance(canvas, chain)
    assert [t.task for t in canvas.tasks] == [COMPENSATE_TASK, COMPENSATED_TASK]
    assert canvas.tasks[0].args[0] is None


# ---------------------------------------------------------------------------------------------
# describe_plan (canvasflow explain)
# ---------------------------------------------------------------------------------------------


def test_describe_plan_shows_the_diamond_as_chain_with_a_chord() -> None:
    assert describe_plan(plan(dag(DIAMOND))) == [
        "chain (3 links)",
        "  a",
        "  chord",
        "    header:",
        "      group (3 in parallel)",
        "        b",
        "        c",
        "        d",
        "    body:",
        "      e",
    ]


def test_describe_plan_of_nested_and_parallel_shapes() -> None:
    assert describe_plan(plan(dag({"a": [], "b": []}))) == ["group (2 in parallel)", "  a", "  b"]
    assert describe_plan(plan(dag({"a": []}))) == ["a"]
    assert describe_plan(
        plan(dag({"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": ["c", "d"]}))
    ) == [
        "chain (3 links)",
        "  a",
        "  chord",
        "    header:",
        "      group (2 in parallel)",
        "        chain (2 links)",
        "          b",
        "          c",
        "        d",
        "    body:",
        "      e",
    ]


def test_describe_plan_when_nothing_is_left() -> None:
    d = dag({"a": []})
    assert describe_plan(plan(d, settled={"a"})) == ["(nothing left to run)"]
