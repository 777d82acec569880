"""Specs for workflow definitions: the model, the one schema, validation, files and the builder.

Every error case checks the exact (path, message) a user sees, because those messages are the
contract of DESIGN.md ("reports every problem at once with its path").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import CanvasflowError, DefinitionError, ExpressionError
from orchestrator.model import expressions
from orchestrator.model.definition import (
    STEP_DEFAULTS,
    Compensation,
    Definition,
    Step,
    Workflow,
    dump_definition,
    from_stored,
    load_definition,
    load_file,
    parse_text,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.yaml"))
NAMES_HINT = "(names: inputs, steps.<id>.output, steps.<id>.status, run.id)"

# The plugin catalog shape a fleet publishes: {plugin: {method: {params, required, accepts_any}}}.
CATALOG: dict[str, Any] = {
    "builtin": {
        "echo": {"params": [], "required": [], "accepts_any": True},
        "sleep": {"params": ["seconds"], "required": ["seconds"]},
    },
    "csv_loader": {
        "load_file": {"params": ["file_path", "delimiter"], "required": ["file_path"]},
    },
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def step(sid: str, **fields: Any) -> dict[str, Any]:
    return {"id": sid, "plugin": "builtin", "method": "echo", **fields}


def wf(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": "wf", **fields, "steps": list(steps)}


def problems(data: Any, catalog: Any = None) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        load_definition(data, catalog=catalog)
    return info.value.problems


def only_problem(data: Any, catalog: Any = None) -> tuple[str, str]:
    found = problems(data, catalog)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------------------------
# One model, three ways in
# ---------------------------------------------------------------------------------------------

ETL_YAML = """\
id: etl
name: ETL
description: load, check, save
version: "1.2.0"
mode: sequential
sla_seconds: 120
priority: high
tags: [etl, nightly]
inputs:
  file_path: input/data.csv
defaults:
  timeout: 30
  retries: 1
steps:
  - id: load
    plugin: csv_loader
    method: load_file
    params:
      file_path: "{{ inputs.file_path }}"
    retries: 2
    retry_delay: 5
    retry_backoff: exponential
    queue: io
  - id: check
    plugin: builtin
    method: echo
    depends_on: [load]
    when: "steps.load.output.rows > 0"
    critical: false
    params:
      rows: "{{ steps.load.output.rows }}"
    compensate:
      plugin: builtin
      method: echo
      params: {batch: "{{ steps.load.output.batch_id }}"}
  - id: save
    plugin: builtin
    method: echo
    depends_on: [check]
    join: any
    timeout: 10
"""


def etl_builder() -> Workflow:
    return (
        Workflow(
            "etl",
            name="ETL",
            description="load, check, save",
            version="1.2.0",
            mode="sequential",
            sla_seconds=120,
            priority="high",
            tags=("etl", "nightly"),
            inputs={"file_path": "input/data.csv"},
            defaults={"timeout": 30, "retries": 1},
        )
        .step(
            "load",
            "csv_loader",
            "load_file",
            params={"file_path": "{{ inputs.file_path }}"},
            retries=2,
            retry_delay=5,
            retry_backoff="exponential",
            queue="io",
        )
        .step(
            "check",
            "builtin",
            "echo",
            depends_on="load",
            when="steps.load.output.rows > 0",
            critical=False,
            params={"rows": "{{ steps.load.output.rows }}"},
            compensate={
                "plugin": "builtin",
                "method": "echo",
                "params": {"batch": "{{ steps.load.output.batch_id }}"},
            },
        )
        .step("save", "builtin", "echo", depends_on=["check"], join="any", timeout=10)
    )


def test_yaml_json_and_builder_give_equal_definitions(tmp_path: Path) -> None:
    from_yaml_text = load_definition(parse_text(ETL_YAML))
    yaml_file = tmp_path / "etl.yaml"
    yaml_file.write_text(ETL_YAML)
    json_file = tmp_path / "etl.json"
    json_file.write_text(json.dumps(parse_text(ETL_YAML), indent=2))
    from_builder = etl_builder().build()

    assert load_file(yaml_file) == from_yaml_text
    assert load_file(json_file) == from_yaml_text
    assert from_builder == from_yaml_text
    assert isinstance(from_builder, Definition)


def test_the_builder_accepts_a_single_dependency_as_a_string() -> None:
    d = Workflow("w").step("a", "builtin").step("b", "builtin", depends_on="a").build()
    assert d.step("b").depends_on == ("a",)
    assert d.step("a").method == "run"


def test_the_builder_reports_errors_through_the_same_schema_with_its_source() -> None:
    with pytest.raises(DefinitionError) as info:
        Workflow("w").step("a", "builtin", depends_on=["lod"]).build()
    assert info.value.problems == [("steps[0].depends_on[0]", "unknown step 'lod'")]
    assert info.value.source == "workflow 'w'"
    assert "invalid workflow definition in workflow 'w'" in str(info.value)


def test_the_model_holds_every_field_of_the_yaml() -> None:
    d = load_definition(parse_text(ETL_YAML))
    assert (d.id, d.name, d.description, d.version) == ("etl", "ETL", "load, check, save", "1.2.0")
    assert (d.mode, d.sla_seconds, d.priority, d.tags) == (
        "sequential",
        120.0,
        "high",
        ("etl", "nightly"),
    )
    assert d.inputs == {"file_path": "input/data.csv"}
    assert d.step_ids == ["load", "check", "save"]
    check = d.step("check")
    assert check.depends_on == ("load",)
    assert check.when == "steps.load.output.rows > 0"
    assert check.critical is False
    assert check.compensate == Compensation(
        plugin="builtin", method="echo", params={"batch": "{{ steps.load.output.batch_id }}"}
    )
    assert d.step("save").join == "any"
    with pytest.raises(KeyError):
        d.step("nope")


def test_round_trip_through_to_dict_gives_an_equal_definition() -> None:
    d = load_definition(parse_text(ETL_YAML))
    again = load_definition(d.to_dict())
    assert again == d
    # The dict is plain JSON a user could have written.
    assert load_definition(json.loads(json.dumps(d.to_dict()))) == d
    assert dump_definition(d) == d.to_dict()


def test_to_dict_leaves_out_what_equals_the_defaults() -> None:
    d = load_definition(wf(step("a"), step("b", depends_on=["a"], queue="io")))
    assert d.to_dict() == {
        "id": "wf",
        "mode": "parallel",
        "steps": [
            {"id": "a", "plugin": "builtin", "method": "echo"},
            {"id": "b", "plugin": "builtin", "method": "echo", "depends_on": ["a"], "queue": "io"},
        ],
    }


def test_round_trip_keeps_a_step_that_overrides_a_workflow_default_back_to_the_builtin_value() -> (
    None
):
    d = load_definition(
        wf(
            step("a"),
            step("b", queue="default", critical=True, timeout=None),
            defaults={"queue": "io", "critical": False, "timeout": 5},
        )
    )
    assert d.step("a").queue == "io" and d.step("a").critical is False and d.step("a").timeout == 5
    assert (
        d.step("b").queue == "default"
        and d.step("b").critical is True
        and d.step("b").timeout is None
    )
    assert load_definition(d.to_dict()) == d


def test_round_trip_keeps_an_empty_step_name() -> None:
    d = load_definition(wf(step("a", name="")))
    assert d.step("a").name == ""
    assert load_definition(d.to_dict()) == d


def test_from_stored_loads_without_semantic_checks() -> None:
    # Stored definitions were validated on the way in; an unknown dependency is not re-checked.
    d = from_stored(wf(step("a", depends_on=["ghost"])))
    assert d.step("a").depends_on == ("ghost",)


# ---------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------


def test_a_step_without_settings_gets_the_builtin_defaults() -> None:
    s = load_definition(wf(step("a"))).step("a")
    assert {k: getattr(s, k) for k in STEP_DEFAULTS} == STEP_DEFAULTS
    assert (s.method, s.params, s.depends_on, s.join, s.when, s.compensate) == (
        "echo",
        {},
        (),
        "all",
        None,
        None,
    )
    d = load_definition(wf(step("a")))
    assert (d.mode, d.priority, d.tags, d.inputs, d.defaults) == ("parallel", "normal", (), {}, {})


def test_workflow_defaults_apply_to_every_step_and_a_step_overrides_them() -> None:
    d = load_definition(
        wf(
            step("a"),
            step("b", timeout=5, retries=0, queue="cpu", critical=True),
            defaults={
                "timeout": 30,
                "retries": 2,
                "retry_delay": 3,
                "retry_backoff": "exponential",
                "retry_delay_max": 60,
                "critical": False,
                "queue": "io",
            },
        )
    )
    a, b = d.step("a"), d.step("b")
    assert (
        a.timeout,
        a.retries,
        a.retry_delay,
        a.retry_backoff,
        a.retry_delay_max,
        a.critical,
        a.queue,
    ) == (30, 2, 3, "exponential", 60, False, "io")
    assert (b.timeout, b.retries, b.queue, b.critical) == (5, 0, "cpu", True)
    assert (b.retry_delay, b.retry_backoff) == (
        3,
        "exponential",
    )  # not overridden: still the defaults


def test_method_defaults_to_run() -> None:
    d = load_definition({"id": "w", "steps": [{"id": "a", "plugin": "builtin"}]})
    assert d.step("a").method == "run"


# ---------------------------------------------------------------------------------------------
# Step.retry_countdown
# ---------------------------------------------------------------------------------------------


def test_fixed_retry_countdown_is_the_delay_every_time() -> None:
    s = Step(id="a", plugin="p", retry_delay=5, retry_backoff="fixed")
    assert [s.retry_countdown(n) for n in (1, 2, 3, 10)] == [5.0, 5.0, 5.0, 5.0]


def test_fixed_retry_countdown_is_capped_by_retry_delay_max() -> None:
    s = Step(id="a", plugin="p", retry_delay=500, retry_delay_max=60)
    assert s.retry_countdown(1) == 60.0


def test_exponential_retry_countdown_doubles_from_the_delay_and_is_capped() -> None:
    s = Step(id="a", plugin="p", retry_delay=2, retry_backoff="exponential", retry_delay_max=20)
    # attempt n (1-based) just failed: wait delay * 2**(n-1), never more than the cap.
    assert [s.retry_countdown(n) for n in (1, 2, 3, 4, 5, 30)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert isinstance(s.retry_countdown(1), float)


# ---------------------------------------------------------------------------------------------
# Schema errors: exact path and message
# ---------------------------------------------------------------------------------------------


def test_missing_id_is_required() -> None:
    assert only_problem({"steps": [step("a")]}) == ("id", "required")


@pytest.mark.parametrize("bad", ["Data", "_etl", "-x", "has space", ""])
def test_a_workflow_id_must_match_the_pattern(bad: str) -> None:
    assert only_problem(wf(step("a"), id=bad)) == ("id", "must match [a-z0-9][a-z0-9_.-]*")


def test_a_workflow_id_of_the_wrong_type_is_reported() -> None:
    assert only_problem(wf(step("a"), id=12)) == ("id", "must be a string (quote it in YAML)")


def test_a_step_id_must_match_its_pattern() -> None:
    assert only_problem(wf(step("bad id"))) == (
        "steps[0].id",
        "must match [A-Za-z0-9][A-Za-z0-9_.-]*",
    )


def test_a_step_without_id_is_reported_with_its_index() -> None:
    assert only_problem(wf(step("a"), {"plugin": "builtin"})) == ("steps[1].id", "required")


def test_an_unknown_top_level_field_is_reported() -> None:
    assert only_problem(wf(step("a"), bogus=1)) == ("bogus", "unknown field")


def test_an_unknown_step_field_is_reported_with_its_path() -> None:
    assert only_problem(wf(step("a"), step("x", bogus=True))) == ("steps[1].bogus", "unknown field")


def test_an_unknown_compensation_or_defaults_field_is_reported() -> None:
    found = problems(
        wf(step("a", compensate={"plugin": "p", "undo": 1}), defaults={"colour": "red"})
    )
    assert sorted(found) == [
        (
            "defaults.colour",
            "unknown field (fields: timeout, retries, retry_delay, retry_backoff, "
            "retry_delay_max, critical, queue)",
        ),
        (
            "steps[0].compensate.undo",
            "unknown field (fields: plugin, method, params, timeout, retries, queue)",
        ),
    ]


def test_a_timeout_that_is_not_a_number_is_reported() -> None:
    assert only_problem(wf(step("a", timeout="soon"))) == ("steps[0].timeout", "must be a number")


@pytest.mark.parametrize("value", [0, -1])
def test_a_timeout_must_be_positive(value: int) -> None:
    assert only_problem(wf(step("a", timeout=value))) == (
        "steps[0].timeout",
        "must be a positive number of seconds",
    )


def test_retries_that_are_not_a_number_are_reported() -> None:
    assert only_problem(wf(step("a", retries="twice"))) == (
        "steps[0].retries",
        "must be a whole number",
    )


def test_fractional_retries_are_reported_not_truncated() -> None:
    assert only_problem(wf(step("a", retries=1.5))) == (
        "steps[0].retries",
        "must be a whole number",
    )


def test_negative_retries_are_reported_on_the_step() -> None:
    path, message = only_problem(wf(step("a", retries=-1)))
    assert path == "steps[0].retries"
    assert message.startswith("must be")


@pytest.mark.parametrize("value", [-1, 101])
def test_retries_out_of_range_names_both_bounds(value: int) -> None:
    assert only_problem(wf(step("a", retries=value))) == (
        "steps[0].retries",
        "must be between 0 and 100",
    )


def test_a_negative_retry_delay_is_reported() -> None:
    assert only_problem(wf(step("a", retry_delay=-1))) == ("steps[0].retry_delay", "must be >= 0")


def test_critical_must_be_a_boolean() -> None:
    assert only_problem(wf(step("a", critical="maybe"))) == (
        "steps[0].critical",
        "must be true or false",
    )


def test_depends_on_must_be_a_step_id_or_a_list_of_them() -> None:
    assert only_problem(wf(step("a", depends_on=3))) == (
        "steps[0].depends_on",
        "must be a step id or a list of step ids",
    )


def test_a_step_that_is_not_a_mapping_is_reported() -> None:
    assert only_problem(wf("a")) == ("steps[0]", "must be a mapping")


def test_a_definition_that_is_not_a_mapping_is_refused() -> None:
    assert only_problem(["a"]) == ("", "a definition must be a mapping, not list")


def test_a_bad_mode_is_reported() -> None:
    assert only_problem(wf(step("a"), mode="fast")) == (
        "mode",
        "must be one of sequential, parallel, conditional",
    )


def test_a_bad_priority_is_reported() -> None:
    assert only_problem(wf(step("a"), priority="urgent")) == (
        "priority",
        "must be one of high, normal, low",
    )


def test_a_bad_join_is_reported() -> None:
    assert only_problem(wf(step("a"), step("b", depends_on=["a"], join="some"))) == (
        "steps[1].join",
        "must be one of all, any",
    )


def test_a_bad_retry_backoff_is_reported() -> None:
    assert only_problem(wf(step("a", retry_backoff="linear"))) == (
        "steps[0].retry_backoff",
        "must be one of fixed, exponential",
    )


def test_a_bad_queue_name_is_reported() -> None:
    assert only_problem(wf(step("a", queue="no spaces"))) == (
        "steps[0].queue",
        "invalid queue name",
    )


def test_only_format_version_1_exists() -> None:
    assert only_problem(wf(step("a"), format=2)) == ("format", "only format version 1 exists")
    assert load_definition(wf(step("a"), format=1)).id == "wf"


def test_empty_steps_are_reported() -> None:
    assert only_problem(wf()) == ("steps", "a workflow needs at least one step")


def test_missing_steps_are_required() -> None:
    assert only_problem({"id": "wf"}) == ("steps", "required")


# ---------------------------------------------------------------------------------------------
# Semantic errors: ids and dependencies
# ---------------------------------------------------------------------------------------------


def test_a_duplicate_step_id_names_the_first_use() -> None:
    assert only_problem(wf(step("a"), step("b"), step("a"))) == (
        "steps[2].id",
        "duplicate step id 'a' (first used by steps[0])",
    )


def test_unknown_dependency_is_reported_with_its_path() -> None:
    assert only_problem(
        wf(step("load_data"), step("b"), step("c"), step("d", depends_on=["b", "zzz"]))
    ) == ("steps[3].depends_on[1]", "unknown step 'zzz'")


def test_unknown_dependency_suggests_the_closest_step_id() -> None:
    data = wf(step("load_data"), step("b"), step("c"), step("validate", depends_on=["lod_data"]))
    assert only_problem(data) == (
        "steps[3].depends_on[0]",
        "unknown step 'lod_data' (did you mean 'load_data'?)",
    )
    with pytest.raises(DefinitionError) as info:
        load_definition(data)
    assert "steps[3].depends_on[0]: unknown step 'lod_data' (did you mean 'load_data'?)" in str(
        info.value
    )


def test_a_dependency_listed_twice_is_reported() -> None:
    assert only_problem(wf(step("a"), step("b", depends_on=["a", "a"]))) == (
        "steps[1].depends_on[1]",
        "'a' is listed twice",
    )


def test_a_self_dependency_is_reported() -> None:
    found = problems(wf(step("a"), step("b", depends_on=["b"])))
    assert ("steps[1].depends_on[0]", "a step cannot depend on itself") in found


def test_sequential_mode_refuses_a_dependency_on_a_later_step() -> None:
    data = wf(step("a", depends_on=["b"]), step("b"), mode="sequential")
    assert only_problem(data) == (
        "steps[0].depends_on[0]",
        "in sequential mode a step may only depend on earlier steps; 'b' comes later",
    )
    # The same dependency is fine in a DAG mode.
    assert load_definition({**data, "mode": "parallel"}).step("a").depends_on == ("b",)


def test_a_cycle_is_reported_in_run_order_from_the_first_declared_step() -> None:
    data = wf(step("a", depends_on=["c"]), step("b", depends_on=["a"]), step("c", depends_on=["b"]))
    assert only_problem(data) == ("steps", "cycle: a -> b -> c -> a")
    with pytest.raises(DefinitionError) as info:
        load_definition(data)
    assert "steps: cycle: a -> b -> c -> a" in info.value.messages


def test_a_cycle_is_found_behind_an_acyclic_prefix() -> None:
    data = wf(
        step("start"),
        step("x", depends_on=["start", "z"]),
        step("y", depends_on=["x"]),
        step("z", depends_on=["y"]),
    )
    assert only_problem(data) == ("steps", "cycle: x -> y -> z -> x")


def test_a_cycle_does_not_hide_an_expression_error() -> None:
    found = problems(wf(step("a", depends_on=["b"], when="x = 1"), step("b", depends_on=["a"])))
    assert ("steps", "cycle: a -> b -> a") in found
    assert any(path == "steps[0].when" for path, _ in found), found


# ---------------------------------------------------------------------------------------------
# Semantic errors: `when` and templates
# ---------------------------------------------------------------------------------------------


def test_a_when_syntax_error_is_reported_with_its_column_and_hint() -> None:
    assert only_problem(wf(step("a"), step("b", depends_on=["a"], when="steps.a.output = 1"))) == (
        "steps[1].when",
        "unexpected '=' at column 16 in 'steps.a.output = 1'; use '==' to compare",
    )


def test_a_when_with_an_unknown_name_is_reported() -> None:
    data = wf(step("a"), step("b"), step("c", depends_on=["a"], when="stepz.a.output > 1"))
    assert only_problem(data) == ("steps[2].when", f"unknown name 'stepz' {NAMES_HINT}")


def test_a_when_on_an_unknown_step_suggests_the_closest() -> None:
    data = wf(step("load"), step("b", depends_on=["load"], when="steps.lod.output.rows > 0"))
    assert only_problem(data) == ("steps[1].when", "unknown step 'lod' (did you mean 'load'?)")


def test_a_when_may_read_inputs_run_and_upstream_status() -> None:
    d = load_definition(
        wf(
            step("a"),
            step(
                "b",
                depends_on=["a"],
                when="steps.a.status == 'COMPLETED' and inputs.go and run.id != ''",
            ),
        )
    )
    assert d.step("b").when is not None


def test_a_step_cannot_read_its_own_output() -> None:
    assert only_problem(wf(step("a", when="steps.a.output"))) == (
        "steps[0].when",
        "step 'a' cannot read its own output",
    )


def test_a_template_referencing_an_unknown_step_is_reported() -> None:
    data = wf(
        step("a"), step("b", depends_on=["a"], params={"rows": "{{ steps.nope.output.rows }}"})
    )
    assert only_problem(data) == ("steps[1].params.rows", "unknown step 'nope'")


def test_a_template_path_goes_into_nested_params() -> None:
    data = wf(
        step("a"),
        step("b", depends_on=["a"], params={"cfg": {"items": ["ok", "{{ steps.nope.output }}"]}}),
    )
    assert only_problem(data) == ("steps[1].params.cfg.items[1]", "unknown step 'nope'")


def test_a_template_reading_a_step_that_is_not_upstream_is_reported() -> None:
    data = wf(
        step("a"), step("b"), step("c", depends_on=["b"], params={"v": "{{ steps.a.output }}"})
    )
    assert only_problem(data) == (
        "steps[2].params.v",
        "step 'a' is not upstream of 'c': add it to depends_on to read its output",
    )


def test_a_transitive_ancestor_is_upstream() -> None:
    d = load_definition(
        wf(
            step("a"),
            step("b", depends_on=["a"]),
            step("c", depends_on=["b"], params={"v": "{{ steps.a.output }}"}),
        )
    )
    assert d.step("c").params == {"v": "{{ steps.a.output }}"}


def test_in_sequential_mode_every_earlier_step_is_upstream() -> None:
    d = load_definition(
        wf(
            step("a"),
            step("b"),
            step("c", params={"v": "{{ steps.a.output.x }}"}, when="steps.b.status == 'COMPLETED'"),
            mode="sequential",
        )
    )
    assert d.mode == "sequential"
    # ...but a later one is not.
    found = problems(
        wf(step("a", params={"v": "{{ steps.b.output }}"}), step("b"), mode="sequential")
    )
    assert found == [
        (
            "steps[0].params.v",
            "step 'b' is not upstream of 'a': add it to depends_on to read its output",
        )
    ]


def test_an_unknown_step_field_in_a_template_is_reported() -> None:
    data = wf(step("x"), step("b", depends_on=["x"], params={"v": "{{ steps.x.bogus }}"}))
    assert only_problem(data) == (
        "steps[1].params.v",
        "steps.x has no field 'bogus' (fields: output, status)",
    )


def test_an_unknown_run_field_and_a_bare_steps_are_reported() -> None:
    found = problems(wf(step("a", params={"r": "{{ run.bogus }}", "s": "{{ steps }}"})))
    assert found == [
        ("steps[0].params.r", "run has no field 'bogus' (fields: id, version, workflow)"),
        ("steps[0].params.s", "'steps' must be followed by a step id, e.g. steps.load.output"),
    ]


def test_a_template_syntax_error_is_reported_with_its_path() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(wf(step("a", params={"v": "{{ 1 + }}"})))
    assert info.value.messages == [
        "steps[0].params.v: unexpected end of expression at column 4 in '1 +', in template '{{ 1 + }}'"
    ]


def _template_error(text: str) -> str:
    with pytest.raises(ExpressionError) as info:
        expressions.Template.parse(text)
    return info.value.message


def test_every_template_syntax_error_is_reported_at_its_own_path() -> None:
    found = problems(wf(step("a", params={"v": "{{ 1 + }}", "w": "{{ ) }}"})))
    assert found == [
        ("steps[0].params.v", _template_error("{{ 1 + }}")),
        ("steps[0].params.w", _template_error("{{ ) }}")),
    ]


def test_compensate_params_may_read_the_steps_own_output() -> None:
    d = load_definition(
        wf(
            step(
                "a",
                compensate={
                    "plugin": "builtin",
                    "method": "echo",
                    "params": {"batch": "{{ steps.a.output.batch_id }}"},
                },
            )
        )
    )
    assert d.step("a").compensate is not None
    assert d.step("a").compensate.params == {"batch": "{{ steps.a.output.batch_id }}"}


def test_compensate_params_may_not_read_a_step_that_is_not_upstream() -> None:
    data = wf(
        step("a", compensate={"plugin": "builtin", "params": {"v": "{{ steps.b.output }}"}}),
        step("b"),
    )
    assert only_problem(data) == (
        "steps[0].compensate.params.v",
        "step 'b' is not upstream of 'a': add it to depends_on to read its output",
    )


# ---------------------------------------------------------------------------------------------
# Plugin checks against a catalog
# ---------------------------------------------------------------------------------------------


def test_without_a_catalog_plugins_are_not_checked() -> None:
    assert (
        load_definition(wf(step("a", plugin="nowhere", method="nothing"))).step("a").plugin
        == "nowhere"
    )


def test_an_unknown_plugin_is_reported_with_a_suggestion_only() -> None:
    data = wf(
        step("a"), step("b", plugin="csv_lodaer", method="load_file", params={"file_path": "x"})
    )
    assert only_problem(data, CATALOG) == (
        "steps[1].plugin",
        "no plugin 'csv_lodaer' (did you mean 'csv_loader'?)",
    )


def test_an_unknown_method_is_reported() -> None:
    assert only_problem(wf(step("a", plugin="csv_loader", method="lod")), CATALOG) == (
        "steps[0].method",
        "plugin 'csv_loader' has no method 'lod' (methods: load_file)",
    )


def test_the_default_method_run_is_checked_too() -> None:
    assert only_problem({"id": "w", "steps": [{"id": "a", "plugin": "builtin"}]}, CATALOG) == (
        "steps[0].method",
        "plugin 'builtin' has no method 'run' (methods: echo, sleep)",
    )


def test_a_missing_required_parameter_is_reported() -> None:
    assert only_problem(
        wf(step("a", plugin="csv_loader", method="load_file", params={"delimiter": ","})), CATALOG
    ) == (
        "steps[0].params",
        "missing required parameter 'file_path' of csv_loader.load_file (parameters: file_path, delimiter)",
    )


def test_an_unknown_parameter_is_reported_at_its_own_path() -> None:
    data = wf(
        step("a", plugin="csv_loader", method="load_file", params={"file_path": "x", "sep": ";"})
    )
    assert only_problem(data, CATALOG) == (
        "steps[0].params.sep",
        "unknown parameter of csv_loader.load_file (parameters: file_path, delimiter)",
    )


def test_a_method_that_accepts_any_params_takes_anything() -> None:
    d = load_definition(wf(step("a", params={"whatever": 1, "else": [2]})), catalog=CATALOG)
    assert d.step("a").params == {"whatever": 1, "else": [2]}


def test_a_compensation_is_checked_against_the_catalog() -> None:
    data = wf(step("a", compensate={"plugin": "builtin", "method": "undo"}))
    assert only_problem(data, CATALOG) == (
        "steps[0].compensate.method",
        "plugin 'builtin' has no method 'undo' (methods: echo, sleep)",
    )


def test_the_builder_checks_against_a_catalog() -> None:
    with pytest.raises(DefinitionError) as info:
        Workflow("w").step("a", "builtin", "sleep").build(catalog=CATALOG)
    assert info.value.problems == [
        (
            "steps[0].params",
            "missing required parameter 'seconds' of builtin.sleep (parameters: seconds)",
        )
    ]


# ---------------------------------------------------------------------------------------------
# Messages that say what to write instead (issue 17, item 8)
# ---------------------------------------------------------------------------------------------

# Twenty plugins, as on the demo fleet: a message must not list them all.
BIG_CATALOG: dict[str, Any] = {
    name: {"run": {"params": [], "required": [], "accepts_any": True}}
    for name in (
        "archiver audio_processor backup builtin csv_loader csv_writer data_cleaner "
        "data_inspector data_transformer data_validator deployment image_processor "
        "large_processor manifest migration report_generator small_processor verifier "
        "video_processor visualizer"
    ).split()
}


def test_a_misspelt_step_field_suggests_the_known_one() -> None:
    assert only_problem(wf(step("a", retry=2))) == (
        "steps[0].retry",
        "unknown field (did you mean 'retries'?)",
    )


def test_a_misspelt_workflow_field_suggests_the_known_one() -> None:
    assert only_problem(wf(step("a"), descripton="x")) == (
        "descripton",
        "unknown field (did you mean 'description'?)",
    )


def test_a_misspelt_defaults_or_compensation_field_suggests_the_known_one() -> None:
    found = problems(wf(step("a", compensate={"plugin": "p", "param": {}}), defaults={"timout": 3}))
    assert sorted(found) == [
        ("defaults.timout", "unknown field (did you mean 'timeout'?)"),
        ("steps[0].compensate.param", "unknown field (did you mean 'params'?)"),
    ]


def test_a_step_setting_written_at_the_workflow_level_points_to_defaults() -> None:
    assert only_problem(wf(step("a"), retries=2)) == (
        "retries",
        "unknown field ('retries' is a step setting: under defaults it applies to every step)",
    )


def test_an_unknown_step_field_like_no_known_one_is_just_unknown() -> None:
    assert only_problem(wf(step("a", colour="blue"))) == ("steps[0].colour", "unknown field")


def test_depends_on_written_as_one_step_id_means_a_list_of_it_as_in_the_builder() -> None:
    text = "id: w\nsteps:\n  - {id: fetch, plugin: builtin, method: echo}\n" + (
        "  - {id: store, plugin: builtin, method: echo, depends_on: fetch}\n"
    )
    d = load_definition(parse_text(text))
    assert d.step("store").depends_on == ("fetch",)
    built = (
        Workflow("w")
        .step("fetch", "builtin", "echo")
        .step("store", "builtin", "echo", depends_on="fetch")
        .build()
    )
    assert d == built
    assert d.to_dict()["steps"][1]["depends_on"] == ["fetch"]


def test_depends_on_written_as_one_unknown_step_id_is_checked_like_a_list() -> None:
    assert only_problem(wf(step("fetch"), step("store", depends_on="fech"))) == (
        "steps[1].depends_on[0]",
        "unknown step 'fech' (did you mean 'fetch'?)",
    )


def test_depends_on_written_as_a_comma_separated_string_says_to_write_a_list() -> None:
    assert only_problem(wf(step("a"), step("b"), step("c", depends_on="a, b"))) == (
        "steps[2].depends_on[0]",
        "unknown step 'a, b' (to depend on several steps write a list: [a, b])",
    )


def test_an_unknown_plugin_names_at_most_three_close_ones_not_all_twenty() -> None:
    assert only_problem(wf(step("a", plugin="processor", method="run")), BIG_CATALOG) == (
        "steps[0].plugin",
        "no plugin 'processor' (did you mean 'audio_processor', 'image_processor' or "
        "'large_processor'?)",
    )


def test_an_unknown_plugin_like_a_known_one_names_it() -> None:
    assert only_problem(wf(step("a", plugin="csv_lodaer", method="run")), BIG_CATALOG) == (
        "steps[0].plugin",
        "no plugin 'csv_lodaer' (did you mean 'csv_loader'?)",
    )


def test_an_unknown_plugin_that_is_part_of_known_names_names_them() -> None:
    assert only_problem(wf(step("a", plugin="csv", method="run")), BIG_CATALOG) == (
        "steps[0].plugin",
        "no plugin 'csv' (did you mean 'csv_loader' or 'csv_writer'?)",
    )


def test_an_unknown_plugin_like_none_of_twenty_says_where_to_see_them() -> None:
    assert only_problem(wf(step("a", plugin="zzz", method="run")), BIG_CATALOG) == (
        "steps[0].plugin",
        "no plugin 'zzz'; none of the 20 registered plugins has a similar name "
        "(`canvasflow plugins` lists them)",
    )


def test_an_unknown_method_of_a_known_plugin_names_the_close_one() -> None:
    catalog = {"data_validator": {"validate_schema": {}, "discard": {}}}
    data = wf(step("a", plugin="data_validator", method="validate"))
    assert only_problem(data, catalog) == (
        "steps[0].method",
        "plugin 'data_validator' has no method 'validate' (did you mean 'validate_schema'?)",
    )


def test_an_unknown_parameter_like_a_known_one_names_it() -> None:
    data = wf(step("a", plugin="builtin", method="sleep", params={"seconds": 1, "secs": 1}))
    assert only_problem(data, CATALOG) == (
        "steps[0].params.secs",
        "unknown parameter of builtin.sleep (did you mean 'seconds'?)",
    )


# ---------------------------------------------------------------------------------------------
# Many problems at once
# ---------------------------------------------------------------------------------------------


def test_many_problems_are_reported_at_once_in_one_error() -> None:
    data = {
        "id": "Bad Id",
        "bogus": 1,
        "mode": "fast",
        "steps": [
            step("a", timeout="soon"),
            step("a", depends_on=["zz"]),
            step("c", depends_on=["a"], when="stepz.x"),
            step("d", plugin="csv_lodaer", method="load_file", params={"file_path": "x"}),
        ],
    }
    with pytest.raises(DefinitionError) as info:
        load_definition(data, catalog=CATALOG)
    assert sorted(info.value.problems) == sorted(
        [
            ("id", "must match [a-z0-9][a-z0-9_.-]*"),
            ("bogus", "unknown field"),
            ("mode", "must be one of sequential, parallel, conditional"),
            ("steps[0].timeout", "must be a number"),
            ("steps[1].id", "duplicate step id 'a' (first used by steps[0])"),
            ("steps[1].depends_on[0]", "unknown step 'zz'"),
            ("steps[2].when", f"unknown name 'stepz' {NAMES_HINT}"),
            ("steps[3].plugin", "no plugin 'csv_lodaer' (did you mean 'csv_loader'?)"),
        ]
    )
    text = str(info.value)
    assert text.startswith("invalid workflow definition:\n  ")
    assert all(line in text for line in info.value.messages)


def test_a_definition_error_is_a_canvasflow_error_and_a_value_error() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition({"steps": []})
    assert isinstance(info.value, CanvasflowError) and isinstance(info.value, ValueError)
    assert info.value.messages == ["id: required", "steps: a workflow needs at least one step"]


# ---------------------------------------------------------------------------------------------
# Files and text
# ---------------------------------------------------------------------------------------------


def test_a_yaml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("id: x\nsteps:\n  - id: a\n   plugin: b\n")
    with pytest.raises(DefinitionError) as info:
        load_file(path)
    ((where, message),) = info.value.problems
    assert where == "line 4, column 4"
    assert message.startswith("invalid YAML: ")
    assert info.value.source == str(path)


def test_a_json_syntax_error_reports_line_and_column() -> None:
    with pytest.raises(DefinitionError) as info:
        parse_text('{\n  "id": }', source="wf.json")
    assert info.value.problems == [("line 2, column 9", "invalid JSON: Expecting value")]


def test_load_file_on_a_missing_file_says_it_cannot_read_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(DefinitionError) as info:
        load_file(path)
    assert info.value.problems == [("", "cannot read file: No such file or directory")]
    assert info.value.source == str(path)
    assert str(path) in str(info.value)


def test_load_file_names_the_file_in_validation_errors(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf(step("a", depends_on=["b"]))))
    with pytest.raises(DefinitionError) as info:
        load_file(path)
    assert info.value.source == str(path)
    assert info.value.problems == [("steps[0].depends_on[0]", "unknown step 'b'")]


def test_load_file_checks_against_a_catalog(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("id: w\nsteps:\n  - {id: a, plugin: nothing}\n")
    with pytest.raises(DefinitionError) as info:
        load_file(path, catalog=CATALOG)
    assert info.value.problems == [
        ("steps[0].plugin", "no plugin 'nothing'; registered: builtin, csv_loader")
    ]


def test_there_are_examples_to_load() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_and_round_trips(path: Path) -> None:
    d = load_file(path)
    assert d.id == path.stem
    assert load_definition(d.to_dict()) == d


def test_descendants_are_every_step_downstream_of_one_through_any_path() -> None:
    defn = (
        Workflow("diamond")
        .step("a", "builtin", "echo")
        .step("b", "builtin", "echo", depends_on="a")
        .step("c", "builtin", "echo", depends_on="a")
        .step("d", "builtin", "echo", depends_on=["b", "c"])
        .step("lone", "builtin", "echo")
        .build()
    )
    assert defn.descendants("a") == {"b", "c", "d"}
    assert defn.descendants("b") == {"d"}
    assert defn.descendants("d") == set() and defn.descendants("lone") == set()


def test_in_sequential_mode_every_later_step_is_a_descendant() -> None:
    defn = (
        Workflow("seq", mode="sequential")
        .step("a", "builtin", "echo")
        .step("b", "builtin", "echo")
        .step("c", "builtin", "echo")
        .build()
    )
    assert defn.descendants("a") == {"b", "c"} and defn.descendants("c") == set()
