"""Sub-workflow steps and outputs without I/O: the definition checks with their paths, the
cycle of references, evaluating outputs, version pinning, and the continuation's shape."""

from __future__ import annotations

import pytest

from orchestrator.engine import children, compiler
from orchestrator.errors import DefinitionError, EvaluationError
from orchestrator.model import subflows
from orchestrator.model.definition import Workflow, dump_definition, load_definition


def problems(data: dict) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        load_definition(data)
    return [f"{p}: {m}" for p, m in info.value.problems]


def test_a_step_needs_a_plugin_or_a_workflow_and_not_both() -> None:
    assert problems({"id": "p", "steps": [{"id": "a"}]}) == [
        "steps[0].plugin: required (or workflow: <id> for a sub-workflow step)"
    ]
    assert problems({"id": "p", "steps": [{"id": "a", "plugin": "x", "workflow": "y"}]}) == [
        "steps[0].workflow: a step runs either a plugin or a workflow, not both "
        "(remove plugin or workflow)"
    ]


def test_plugin_fields_on_a_sub_workflow_step_and_inputs_on_a_plugin_step_are_refused() -> None:
    got = problems(
        {
            "id": "p",
            "steps": [
                {"id": "a", "workflow": "c", "method": "m", "params": {}, "compensate": None},
                {"id": "b", "plugin": "x", "inputs": {}, "version": "1"},
            ],
        }
    )
    assert got == [
        "steps[0].method: a sub-workflow step (workflow: c) takes no method",
        "steps[0].params: a sub-workflow step (workflow: c) takes no params "
        "(give the child's inputs under inputs)",
        "steps[0].compensate: a sub-workflow step (workflow: c) takes no compensate",
        "steps[1].version: only a sub-workflow step (workflow: <id>) takes version",
        "steps[1].inputs: only a sub-workflow step (workflow: <id>) takes inputs "
        "(a plugin step takes params)",
    ]


def test_inputs_and_outputs_templates_are_checked_with_their_paths() -> None:
    got = problems(
        {
            "id": "p",
            "outputs": {"n": "{{ steps.nope.output }}", "bad": "{{ steps.a.output ", "ok": 1},
            "steps": [
                {"id": "a", "plugin": "builtin"},
                {"id": "c", "workflow": "kid", "inputs": {"x": {"y": "{{ steps.a.output }}"}}},
                {"id": "d", "workflow": "Kid!", "inputs": "no"},
            ],
        }
    )
    assert (
        "steps[1].inputs.x.y: step 'a' is not upstream of 'c': add it to depends_on to read its output"
        in got
    )
    assert "outputs.n: unknown step 'nope'" in got
    assert any(p.startswith("outputs.bad: unclosed '{{'") for p in got)
    assert "steps[2].workflow: must match [a-z0-9][a-z0-9_.-]*" in got
    assert "steps[2].inputs: must be a mapping" in got
    assert not any(p.startswith("outputs.ok") for p in got)


def test_outputs_may_read_every_step_and_the_definition_round_trips() -> None:
    defn = (
        Workflow("p")
        .step("a", "builtin", "echo")
        .subworkflow("c", "kid", version="2", inputs={"v": "{{ steps.a.output }}"}, depends_on="a")
        .outputs(all="{{ [steps.a.output, steps.c.output] }}")
        .build()
    )
    assert load_definition(dump_definition(defn)) == defn
    assert defn.step("c").workflow == "kid" and defn.step("c").version == "2"


def test_a_reference_cycle_is_found_through_every_registered_version() -> None:
    registered = {
        ("b", None): [("c", None)],
        ("c", None): [("a", "1")],
        ("x", None): [],
    }

    def lookup(wf: str, version: str | None):
        return registered.get((wf, None))

    assert subflows.find_reference_cycle("a", [("x", None), ("b", None)], lookup) == [
        "a",
        "b",
        "c",
        "a",
    ]
    assert subflows.find_reference_cycle("a", [("a", None)], lookup) == ["a", "a"]
    assert subflows.find_reference_cycle("z", [("b", None)], lookup) is None


def test_outputs_are_rendered_and_an_error_names_its_entry() -> None:
    scope = {"steps": {"a": {"status": "COMPLETED", "output": {"n": 2}}}, "inputs": {}, "run": {}}
    assert subflows.evaluate_outputs({"twice": "{{ steps.a.output.n * 2 }}", "k": 1}, scope) == {
        "twice": 4,
        "k": 1,
    }
    with pytest.raises(EvaluationError, match=r"^outputs\.missing: "):
        subflows.evaluate_outputs({"missing": "{{ steps.a.output.m }}"}, scope)


def test_versions_are_pinned_at_submit_and_unknown_ones_name_what_is_registered() -> None:
    defn = Workflow("p").subworkflow("c", "kid").subworkflow("d", "kid", version="1").build()
    pinned = children.pin_versions(defn, lambda wf: ["1", "2"], lambda: ["kid"])
    assert [s.version for s in pinned.steps] == ["2", "1"]
    with pytest.raises(DefinitionError) as info:
        children.pin_versions(
            Workflow("p").subworkflow("c", "gone").subworkflow("d", "kid", version="9").build(),
            lambda wf: ["1"] if wf == "kid" else [],
            lambda: ["kid", "other"],
        )
    assert info.value.problems == [
        ("steps[0].workflow", "workflow 'gone' is not registered (registered: kid, other)"),
        ("steps[1].version", "workflow 'kid' has no version 9 (registered: 1)"),
    ]


def test_a_sub_workflow_step_compiles_to_a_step_task_that_never_takes_the_fast_path() -> None:
    from orchestrator.engine import stepcore

    defn = Workflow("p").subworkflow("c", "kid", version="3", inputs={"x": 1}).build()
    spec = compiler.read_spec(compiler.blueprint(defn).specs["c"])
    assert spec["wf"] == "kid" and spec["ver"] == "3" and spec["params"] == {"x": 1}
    assert not stepcore.may_run_first(spec, {}, enabled=True, first_delivery=True)


def test_the_continuation_takes_the_place_of_the_task_in_its_chain_and_chord() -> None:
    nxt = {
        "task": "canvasflow.step",
        "args": [["b", "builtin", "echo", 0]],
        "kwargs": {},
        "options": {},
        "subtask_type": None,
        "immutable": False,
    }
    sig = compiler.compile_continuation(
        "canvasflow.child_joined",
        ({"@": ["r", 1]}, ["c", "", "", 0, {"wf": "kid"}], "child", "owner", 1, 0.0),
        task_id="new-id",
        chain=[nxt],
        chord={"task": "canvasflow.settle"},
        group="g1",
        group_index=3,
        root_id="root",
        queue="io",
    )
    first, second = sig.tasks
    assert first.task == "canvasflow.child_joined" and first.id == "new-id"
    assert first.options["group_id"] == "g1" and first.options["group_index"] == 3
    assert first.options["chord"] == {"task": "canvasflow.settle"}
    assert first.options["queue"] == "io"
    assert second.task == "canvasflow.step"
