"""Specs for what a submission may be (issue 13): depth, step count, bytes, YAML aliases, and
the characters ids and names may not contain. Every refusal says what, where and which setting
raises the limit; YAML, JSON, a dict and the Python builder are refused alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ConfigurationError, DefinitionError, LimitExceeded
from orchestrator.model.definition import Workflow, load_definition, load_file, parse_text
from orchestrator.model.limits import Limits, check_inputs, check_payload, load_yaml
from orchestrator.settings import Settings

ECHO = {"plugin": "builtin", "method": "echo"}
DEPTH = "nested deeper than 32 levels (CANVASFLOW_MAX_DEPTH)"


def nested(levels: int) -> Any:
    """A value ``levels`` containers deep: {"a": {"a": ... 1}}."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def one_step(**fields: Any) -> dict[str, Any]:
    return {"id": "wf", "steps": [{"id": "s", **ECHO, **fields}]}


def refusal(call: Any) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        call()
    return info.value.problems


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def test_limits_have_defaults_and_are_read_from_canvasflow_max_variables() -> None:
    assert Settings().limits == Limits(
        max_depth=32,
        max_steps=10_000,
        max_definition_bytes=4 * 2**20,
        max_inputs_bytes=2**20,
        max_yaml_alias_nodes=10_000,
    )
    s = Settings.from_env(
        {
            "CANVASFLOW_MAX_DEPTH": "8",
            "CANVASFLOW_MAX_STEPS": "50",
            "CANVASFLOW_MAX_YAML_ALIAS_NODES": "100",
        }
    )
    assert (s.limits.max_depth, s.limits.max_steps, s.limits.max_yaml_alias_nodes) == (8, 50, 100)
    assert Settings.from_env(s.as_env()).limits == s.limits  # a child process gets the same


@pytest.mark.parametrize("raw", ["lots", "0", "-3"])
def test_a_malformed_limit_setting_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="CANVASFLOW_MAX_DEPTH"):
        Settings.from_env({"CANVASFLOW_MAX_DEPTH": raw})


# ---------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------


def test_a_parameter_nested_500_levels_deep_is_refused_with_its_path() -> None:
    problems = refusal(lambda: load_definition(one_step(params={"cfg": nested(500)})))
    assert problems == [("steps[0].params" + ".cfg" + ".a" * 31, DEPTH)]


def test_a_parameter_exactly_as_deep_as_the_limit_is_accepted() -> None:
    # params is one container, cfg's value 31 more: 32 in all.
    load_definition(one_step(params={"cfg": nested(31)}))
    assert refusal(lambda: load_definition(one_step(params={"cfg": nested(32)})))[0][1] == DEPTH


def test_depth_counts_from_each_field_so_compensations_and_inputs_get_the_same_room() -> None:
    data = {
        "id": "wf",
        "inputs": {"deep": nested(40)},
        "steps": [{"id": "s", **ECHO, "compensate": {**ECHO, "params": {"x": nested(40)}}}],
    }
    paths = [p for p, _ in refusal(lambda: load_definition(data))]
    assert paths == ["inputs.deep" + ".a" * 31, "steps[0].compensate.params.x" + ".a" * 31]


def test_the_limit_is_a_setting() -> None:
    small = Limits(max_depth=3)
    load_definition(one_step(params={"a": {"b": {"c": 1}}}), limits=small)
    problems = refusal(
        lambda: load_definition(one_step(params={"a": {"b": {"c": {}}}}), limits=small)
    )
    assert problems == [
        ("steps[0].params.a.b.c", "nested deeper than 3 levels (CANVASFLOW_MAX_DEPTH)")
    ]


def test_json_yaml_and_the_builder_refuse_deep_parameters_alike(tmp_path: Path) -> None:
    deep = one_step(params={"cfg": nested(100)})
    as_json = tmp_path / "deep.json"
    as_json.write_text(json.dumps(deep))
    assert refusal(lambda: load_file(as_json))[0][1] == DEPTH
    # YAML nests 100 levels: refused while it is composed, with the line and column.
    as_yaml = tmp_path / "deep.yaml"
    as_yaml.write_text(
        "id: wf\nsteps:\n  - id: s\n    plugin: builtin\n    method: echo\n    params: "
        + json.dumps({"cfg": nested(100)})
        + "\n"
    )
    ((where, message),) = refusal(lambda: load_file(as_yaml))
    assert (
        where.startswith("line 6, column")
        and message == "invalid YAML: nested deeper than 40 levels (CANVASFLOW_MAX_DEPTH)"
    )
    w = Workflow("wf").step("s", "builtin", "echo", params={"cfg": nested(100)})
    assert refusal(w.build)[0][1] == DEPTH


def test_a_builder_parameter_that_contains_itself_is_refused_not_a_recursion_error() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    problems = refusal(Workflow("wf").step("s", "builtin", "echo", params={"loop": loop}).build)
    assert problems[0] == ("steps[0].params.loop" + ".self" * 31, DEPTH)


def test_json_nested_past_the_parser_s_own_limit_is_a_clear_refusal() -> None:
    text = '{"id": "wf", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(LimitExceeded, match="nested deeper than 32 levels"):
        parse_text(text, source="bomb.json")


def test_run_inputs_and_event_payloads_are_bounded_in_depth_and_bytes() -> None:
    assert check_inputs({"x": nested(40)}) == [("inputs.x" + ".a" * 31, DEPTH)]
    big = {"blob": "x" * (2**20)}
    assert check_inputs(big) == [
        (
            "inputs",
            f"{2**20 + 11} bytes of inputs as JSON: at most 1048576 are allowed "
            "(CANVASFLOW_MAX_INPUTS_BYTES)",
        )
    ]
    assert check_payload({"n": 1}, "payload") == []
    assert check_payload(big, "payload")[0][0] == "payload"


# ---------------------------------------------------------------------------------------------
# Steps and bytes
# ---------------------------------------------------------------------------------------------


def test_more_steps_than_the_limit_are_refused_before_anything_else_looks_at_them() -> None:
    steps = [{"id": f"s{i}", **ECHO, "depends_on": ["nowhere"]} for i in range(11)]
    problems = refusal(
        lambda: load_definition({"id": "wf", "steps": steps}, limits=Limits(max_steps=10))
    )
    assert problems == [("steps", "11 steps: at most 10 are allowed (CANVASFLOW_MAX_STEPS)")]


def test_a_definition_over_the_byte_limit_is_refused_as_text_as_data_and_as_a_file(
    tmp_path: Path,
) -> None:
    small = Limits(max_definition_bytes=1000)
    data = one_step(params={"blob": "x" * 2000})
    message = refusal(lambda: load_definition(data, limits=small))[0][1]
    assert message.endswith(
        " bytes of definition: at most 1000 are allowed (CANVASFLOW_MAX_DEFINITION_BYTES)"
    )
    text = json.dumps(data)
    assert refusal(lambda: parse_text(text, fmt="json", limits=small)) == [
        (
            "",
            f"{len(text)} bytes of definition: at most 1000 are allowed (CANVASFLOW_MAX_DEFINITION_BYTES)",
        )
    ]
    path = tmp_path / "big.yaml"
    path.write_text(text)
    assert "at most 1000 are allowed" in refusal(lambda: load_file(path, limits=small))[0][1]


def test_default_inputs_of_a_definition_count_against_the_inputs_limit() -> None:
    problems = refusal(
        lambda: load_definition(
            {**one_step(), "inputs": {"blob": "x" * 200}}, limits=Limits(max_inputs_bytes=100)
        )
    )
    assert problems == [
        (
            "inputs",
            "211 bytes of inputs as JSON: at most 100 are allowed (CANVASFLOW_MAX_INPUTS_BYTES)",
        )
    ]


# ---------------------------------------------------------------------------------------------
# YAML aliases
# ---------------------------------------------------------------------------------------------

BOMB = """\
id: wf
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
steps: [{id: s, plugin: builtin, method: echo, params: {boom: *g}}]
"""


def test_a_yaml_alias_bomb_is_refused_where_it_expands_past_the_limit() -> None:
    assert len(BOMB) < 1000  # 10^7 strings once expanded
    problems = refusal(lambda: parse_text(BOMB, source="bomb.yaml"))
    assert problems == [
        (
            "line 5, column 36",
            "invalid YAML: aliases expand to more than 10000 nodes "
            "(CANVASFLOW_MAX_YAML_ALIAS_NODES)",
        )
    ]


def test_ordinary_anchors_and_merge_keys_load() -> None:
    text = """\
id: wf
x-defaults: &retry {retries: 2, timeout: 30}
steps:
  - {id: a, plugin: builtin, method: echo, <<: *retry}
  - {id: b, plugin: builtin, method: echo, <<: *retry, depends_on: [a]}
"""
    data = parse_text(text)
    assert data["steps"][1]["retries"] == 2


def test_a_yaml_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(Exception, match="refers to a node that contains it"):
        load_yaml("a: &a [1, *a]\n")
    assert (
        refusal(lambda: parse_text("a: &a [1, *a]\n"))[0][1]
        == "invalid YAML: alias *a refers to a node that contains it"
    )


def test_the_alias_limit_is_a_setting() -> None:
    text = "a: &a [1, 2, 3]\nb: [*a, *a]\n"  # two aliases of four nodes each
    assert parse_text(text, limits=Limits(max_yaml_alias_nodes=8))["b"] == [[1, 2, 3], [1, 2, 3]]
    assert (
        "more than 7 nodes"
        in refusal(lambda: parse_text(text, limits=Limits(max_yaml_alias_nodes=7)))[0][1]
    )


# ---------------------------------------------------------------------------------------------
# Characters in ids and names
# ---------------------------------------------------------------------------------------------

WHY = "ids and names may not contain control characters, bidirectional controls or lone surrogates"


@pytest.mark.parametrize(
    ("where", "value", "what"),
    [
        ("id", "etl\x00", "a control character, U+0000, at position 3"),
        (
            "name",
            "Pay\u202eroll",
            "a bidirectional control, U+202E RIGHT-TO-LEFT OVERRIDE, at position 3",
        ),
        (
            "name",
            "a\u2066b",
            "a bidirectional control, U+2066 LEFT-TO-RIGHT ISOLATE, at position 1",
        ),
        ("version", "1\x85", "a control character, U+0085, at position 1"),
        ("steps[0].id", "s\x1b[31m", "a control character, U+001B, at position 1"),
        ("steps[0].name", "half \ud800", "a lone surrogate, U+D800, at position 5"),
        ("steps[0].plugin", "built\x7fin", "a control character, U+007F, at position 5"),
        ("tags[0]", "night\tly", "a control character, U+0009, at position 5"),
    ],
)
def test_control_characters_in_ids_and_names_are_refused_with_a_clear_message(
    where: str, value: str, what: str
) -> None:
    data: dict[str, Any] = {"id": "wf", "steps": [{"id": "s", **ECHO}]}
    if where.startswith("steps[0]."):
        data["steps"][0][where.split(".")[1]] = value
    elif where == "tags[0]":
        data["tags"] = [value]
    else:
        data[where] = value
    assert refusal(lambda: load_definition(data)) == [(where, f"contains {what}: {WHY}")]


def test_an_id_with_a_trailing_newline_is_refused() -> None:
    # "$" in the old pattern matched before a final newline.
    assert (
        refusal(lambda: load_definition({"id": "wf\n", "steps": [{"id": "s", **ECHO}]}))[0][0]
        == "id"
    )
    assert (
        refusal(lambda: load_definition({"id": "wf", "steps": [{"id": "s\n", **ECHO}]}))[0][0]
        == "steps[0].id"
    )


def test_a_lone_surrogate_sent_as_json_text_is_refused() -> None:
    text = '{"id": "wf", "steps": [{"id": "s", "name": "x\\udc00", "plugin": "builtin", "method": "echo"}]}'
    problems = refusal(lambda: load_definition(parse_text(text, fmt="json")))
    assert problems == [
        ("steps[0].name", f"contains a lone surrogate, U+DC00, at position 1: {WHY}")
    ]


def test_did_you_mean_hints_stop_after_a_budget_so_many_unknown_names_stay_cheap() -> None:
    steps = [{"id": f"step{i}", **ECHO, "depends_on": [f"stepp{i}"]} for i in range(200)]
    problems = refusal(lambda: load_definition({"id": "wf", "steps": steps}))
    hinted = [m for _, m in problems if "did you mean" in m]
    assert len(problems) == 200 and len(hinted) == 50
    assert problems[0] == (
        "steps[0].depends_on[0]",
        "unknown step 'stepp0' (did you mean 'step0'?)",
    )
    assert problems[-1] == ("steps[199].depends_on[0]", "unknown step 'stepp199'")


def test_the_client_refuses_deep_or_circular_definitions_with_a_message_not_a_recursion_error(
    redis_url: str,
) -> None:
    from orchestrator.engine.client import Client
    from tests.conftest import make_settings

    client = Client(make_settings(redis_url))
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    loop: dict[str, Any] = {}
    loop["self"] = loop
    for params in ({"deep": deep}, {"loop": loop}):
        with pytest.raises(LimitExceeded, match="nested deeper than 32 levels"):
            client.submit({"id": "wf", "steps": [{"id": "s", **ECHO, "params": params}]})
    with pytest.raises(LimitExceeded, match="inputs as JSON"):
        client.submit({"id": "wf", "steps": [{"id": "s", **ECHO}]}, inputs={"blob": "x" * 2**20})
    assert client.list_runs() == []  # nothing was recorded or queued
    client.close()
