"""The ``map`` field of a step: schema, validation (every problem at once, with its path), the
Python builder, dump/load, ``canvasflow explain``, and a mapped step in the in-process runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import DefinitionError, Workflow
from orchestrator.engine import compiler
from orchestrator.model.definition import MapSpec, dump_definition, load_definition
from tests.test_cli import cli, write


def base(**map_fields: object) -> Workflow:
    return (
        Workflow("m")
        .step("list", "builtin", "echo", params={"files": [1, 2]})
        .step("other", "builtin", "echo")
    )


def problems(wf: Workflow) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        wf.build()
    return [f"{p}: {m}" for p, m in info.value.problems]


def test_the_builder_takes_map_and_it_round_trips() -> None:
    wf = base().step(
        "resize",
        "builtin",
        "echo",
        depends_on=["list"],
        map={"over": "{{ steps.list.output.files }}", "as": "f", "max_parallel": 3},
        params={"path": "{{ f }}", "i": "{{ map.index }}"},
        when="map.index < 10",
    )
    d = wf.build()
    assert d.step("resize").map == MapSpec("{{ steps.list.output.files }}", "f", 3)
    assert load_definition(dump_definition(d)) == d
    plain = base().step(
        "r", "builtin", "echo", depends_on=["list"], map={"over": "{{ steps.list.output }}"}
    )
    assert plain.build().step("r").map == MapSpec("{{ steps.list.output }}", "item", None)


def test_every_map_problem_is_reported_at_once_with_its_path() -> None:
    wf = (
        base()
        .step(
            "resize",
            "builtin",
            "echo",
            depends_on=["list"],
            map={"over": "{{ steps.other.output }}", "as": "steps", "max_parallel": 0, "size": 2},
            params={"a": "{{ item }}", "b": "{{ map.count }}"},
        )
        .step("next", "builtin", "echo", params={"x": "{{ item }}"})
    )
    got = problems(wf)
    assert "steps[2].map.max_parallel: must be at least 1" in got
    assert any(p.startswith("steps[2].map.size: unknown field") for p in got)
    assert (
        "steps[2].map.as: 'steps' would shadow the name steps (reserved: inputs, map, run, steps)"
        in got
    )
    assert (
        "steps[2].map.over: step 'other' is not upstream of 'resize': add it to depends_on to "
        "read its output" in got
    )
    # with an invalid `as`, the item name is not bound: params naming it are unknown names
    assert any(p.startswith("steps[2].params.a: unknown name 'item'") for p in got)
    # the item name exists only in the mapped step
    assert any(p.startswith("steps[3].params.x: unknown name 'item'") for p in got)


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ({"over": "files"}, "steps[1].map.over: must be a template that gives a list"),
        ({"over": "{{ steps.nope.output }}"}, "steps[1].map.over: unknown step 'nope'"),
        ({"over": "{{ stepz.list.output }}"}, "steps[1].map.over: unknown name 'stepz'"),
        ({"over": "{{ steps.list.output"}, "steps[1].map.over:"),
        ({"over": ""}, "steps[1].map.over: may not be empty"),
        ({}, "steps[1].map.over: "),
        ({"over": "{{ inputs.xs }}", "as": "1x"}, "steps[1].map.as: '1x' is not a valid name"),
        ({"over": "{{ inputs.xs }}", "as": "map"}, "steps[1].map.as: 'map' would shadow"),
        ({"over": "{{ inputs.xs }}", "as": "inputs"}, "steps[1].map.as: 'inputs' would shadow"),
        ({"over": "{{ inputs.xs }}", "as": "run"}, "steps[1].map.as: 'run' would shadow"),
        ({"over": "{{ inputs.xs }}", "max_parallel": "5"}, "steps[1].map.max_parallel:"),
        (
            {"over": "{{ inputs.xs }}", "max_parallel": -2},
            "steps[1].map.max_parallel: must be at least 1",
        ),
        ({"over": "{{ item }}"}, "steps[1].map.over: unknown name 'item'"),
    ],
)
def test_each_bad_map_field_is_named(mapping: dict, expected: str) -> None:
    wf = (
        Workflow("m")
        .step("list", "builtin", "echo")
        .step("r", "builtin", "echo", depends_on=["list"], map=mapping)
    )
    got = problems(wf)
    assert any(p.startswith(expected) for p in got), got


def test_map_index_is_the_one_field_of_map() -> None:
    wf = base().step(
        "r",
        "builtin",
        "echo",
        depends_on=["list"],
        map={"over": "{{ steps.list.output }}"},
        params={"x": "{{ map.size }}"},
    )
    assert problems(wf) == [
        "steps[2].params.x: map has one field: map.index (the item's position, from 0)"
    ]


def test_compile_keeps_the_list_a_mapped_step_maps_over_and_settles_after_its_collector() -> None:
    d = (
        base()
        .step(
            "r",
            "builtin",
            "echo",
            depends_on=["list"],
            map={"over": "{{ steps.list.output.files }}"},
        )
        .build()
    )
    bp = compiler.blueprint(d)
    assert "list" in bp.keep  # the list travels to the mapped step
    assert bp.final is None  # a settle task follows the mapped step (its collector ends it)
    spec = compiler.read_spec(bp.specs["r"])
    assert spec["map"] == ["{{ steps.list.output.files }}", "item", 0]


MAPPED_YAML = """
id: media
steps:
  - id: list_files
    plugin: builtin
    method: echo
    params: {files: [a, b]}
  - id: resize
    plugin: builtin
    method: echo
    depends_on: [list_files]
    map: {over: "{{ steps.list_files.output.files }}", max_parallel: 50}
    params: {path: "{{ item }}"}
"""


def test_explain_shows_the_mapped_step(tmp_path: Path) -> None:
    proc = cli("explain", write(tmp_path, "m.yaml", MAPPED_YAML), check=True)
    assert "resize [map over steps.list_files.output.files, max 50]" in proc.stdout


def test_a_mapped_step_runs_inline() -> None:
    from workers.testing import run_inline

    wf = (
        Workflow("inl")
        .step("list", "builtin", "echo", params={"xs": [3, 1, 2]})
        .step(
            "each",
            "builtin",
            "echo",
            depends_on=["list"],
            map={"over": "{{ steps.list.output.xs }}", "max_parallel": 2},
            params={"v": "{{ item * 10 }}", "i": "{{ map.index }}"},
        )
        .step(
            "sum",
            "builtin",
            "echo",
            depends_on=["each"],
            params={"second": "{{ steps.each.output[1].v }}"},
        )
    )
    snap = run_inline(wf)
    assert snap.status == "COMPLETED", snap
    assert snap.step("each").output == [{"v": 30, "i": 0}, {"v": 10, "i": 1}, {"v": 20, "i": 2}]
    assert snap.step("sum").output == {"second": 10}


def test_an_item_message_carries_its_index_not_the_list() -> None:
    from workers.mapstep import _item_context

    big = list(range(50_000))
    spec = {"id": "r", "map": ["{{ inputs.xs }}", "item", 0], "params": {"v": "{{ item }}"}}
    hdr = {"run": "r1", "epoch": 1, "wf": "w", "inputs": {"xs": big}}
    known = {"@": ["r1", 1, "w", "", {"xs": big}], "list": ["COMPLETED", {"files": big}]}
    item_hdr, upstream = _item_context(spec, hdr, known)
    canvas = compiler.compile_items(
        ["r", "builtin", "echo", 0], item_hdr, list(range(3)), 0, upstream, options={}
    )
    sizes = {len(repr(sig.args)) for sig in canvas.tasks}
    assert max(sizes) < 200, sizes  # neither the inputs nor the upstream list ride along
    # params that read the inputs: a small inputs rides in the header, a big one is read once
    spec["params"] = {"v": "{{ inputs.scale }}"}
    item_hdr, upstream = _item_context(spec, {**hdr, "inputs": {"scale": 2}}, {})
    assert compiler.read_header(item_hdr)["inputs"] == {"scale": 2} and upstream == {}
    item_hdr, upstream = _item_context(spec, hdr, known)
    assert "inputs" not in compiler.read_header(item_hdr) and upstream is None


def test_the_settle_after_a_mapped_step_does_not_carry_the_inputs() -> None:
    # Task.replace puts the rest of the chain into the chord body, and the body rides in every
    # item message: a settle carrying a 10,000-element input made each message O(n).
    d = (
        Workflow("m", inputs={"xs": []})
        .step("r", "builtin", "echo", map={"over": "{{ inputs.xs }}"}, params={"v": "{{ item }}"})
        .build()
    )
    ctx = compiler.RunContext("r1", 1, inputs={"xs": list(range(10_000))})
    canvas = compiler.compile_run(d, ctx)
    settle = canvas.tasks[-1]
    assert settle.task == compiler.SETTLE_TASK
    assert settle.args == ({"run": "r1", "epoch": 1},)


def test_consecutive_item_compensations_form_one_run() -> None:
    from orchestrator.engine.itemstate import item_runs

    order = ["r[3]", "r[2]", "r[1]", "a", "q[0]", "r[0]", "s[1]", "s[0]"]
    assert item_runs(order) == [(0, 3), (6, 2)]


def test_the_inputs_of_a_mapped_sub_workflow_step_read_its_item_and_map_index() -> None:
    d = (
        base()
        .subworkflow(
            "per",
            "child",
            inputs={"n": "{{ f.n }}", "i": "{{ map.index }}"},
            depends_on="list",
            map={"over": "{{ steps.list.output.files }}", "as": "f"},
        )
        .build()
    )
    assert d.step("per").map is not None and d.step("per").workflow == "child"
    # Without map, or past what map gives, the names are refused with the path of the entry.
    assert problems(base().subworkflow("per", "child", inputs={"n": "{{ f }}"})) == [
        "steps[2].inputs.n: unknown name 'f' (names: inputs, steps.<id>.output, "
        "steps.<id>.status, run.id)"
    ]
    assert problems(
        base().subworkflow(
            "per",
            "child",
            inputs={"n": "{{ item }}", "k": "{{ map.key }}"},
            depends_on="list",
            map={"over": "{{ steps.list.output.files }}", "as": "f"},
        )
    ) == [
        "steps[2].inputs.n: unknown name 'item' (names: inputs, steps.<id>.output, "
        "steps.<id>.status, run.id, f, map.index)",
        "steps[2].inputs.k: map has one field: map.index (the item's position, from 0)",
    ]
