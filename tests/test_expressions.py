"""Specs for the `when` / `{{ }}` expression language in orchestrator.model.expressions."""

from __future__ import annotations

import ast
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest

from orchestrator.errors import DefinitionError, EvaluationError, ExpressionError
from orchestrator.model import expressions
from orchestrator.model.expressions import (
    MAX_DEPTH,
    MAX_LENGTH,
    Expression,
    Template,
    is_template,
    iter_templates,
    parse,
    render_value,
)

SCOPE = {
    "steps": {
        "load_data": {"status": "succeeded", "output": {"rows": 42, "name": "orders"}},
        "empty": {"status": "skipped", "output": None},
        "b": {"status": "failed"},
    },
    "inputs": {"mode": "full", "tags": ["a", "b"], "limit": 10, "ratio": 0.5, "flag": False},
    "items": [10, 20, 30],
}


def ev(source: str, scope: dict | None = None):
    return parse(source).evaluate(SCOPE if scope is None else scope)


def parse_error(source: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        parse(source)
    return info.value


def eval_error(source: str, scope: dict | None = None) -> str:
    with pytest.raises(EvaluationError) as info:
        ev(source, scope)
    return str(info.value)


# ---- evaluation ------------------------------------------------------------------------------


def test_spec_example_condition_evaluates_true():
    assert ev('steps.load_data.output.rows > 0 and inputs.mode == "full"') is True


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("2 * 3 % 4", 2),
        ("-2 * 3", -6),
        ("- -2", 2),
        ("+3", 3),
        ("1 + 2 == 3", True),
        ("not 1 == 2", True),
        ("not true or true", True),
        ("true or false and false", True),
        ("(true or false) and false", False),
        ("1 < 2 and 2 < 3", True),
        ("not not 0", False),
    ],
)
def test_operator_precedence_matches_python(source, expected):
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("7 + 2", 9),
        ("7 - 2", 5),
        ("7 * 2", 14),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("1.5 + 1", 2.5),
        ("'ab' + 'cd'", "abcd"),
        ("[1] + [2, 3]", [1, 2, 3]),
        ("1 == 1", True),
        ("1 != 1", False),
        ("1 < 2", True),
        ("2 <= 2", True),
        ("1 > 2", False),
        ("2 >= 3", False),
        ("'a' < 'b'", True),
        ("null == None", True),
    ],
)
def test_every_binary_operator(source, expected):
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("'a' in inputs.tags", True),
        ("'z' in inputs.tags", False),
        ("'z' not in inputs.tags", True),
        ("'ord' in steps.load_data.output.name", True),
        ("'xyz' not in 'abc'", True),
        ("'mode' in inputs", True),
        ("'nope' in inputs", False),
        ("'load_data' not in steps", False),
        ("2 in [1, 2, 3]", True),
    ],
)
def test_in_and_not_in_on_lists_strings_and_dicts(source, expected):
    assert ev(source) is expected


def test_and_or_return_python_style_operand_values():
    assert ev("0 or 'x'") == "x"
    assert ev("'a' and 'b'") == "b"
    assert ev("'' and 1") == ""
    assert ev("null or false or 0") == 0
    assert ev("1 and 2 and 3") == 3
    assert ev("0 or '' or 'last'") == "last"


def test_not_returns_a_bool():
    assert ev("not 'x'") is False
    assert ev("not []") is True


def test_and_or_short_circuit_before_touching_missing_values():
    assert ev("false and steps.x.y") is False
    assert ev("true or nope.x") is True
    assert ev("false and 1 / 0 and boom") is False
    assert ev("1 or 2 or missing") == 1


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("42", 42),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("2.5E-1", 0.25),
        ("'single'", "single"),
        ('"double"', "double"),
        ("true", True),
        ("True", True),
        ("false", False),
        ("False", False),
        ("null", None),
        ("None", None),
        ("[]", []),
        ("[1, 'two', [3]]", [1, "two", [3]]),
        ("[1, 2,]", [1, 2]),
        ("[inputs.limit, items[0]]", [10, 10]),
    ],
)
def test_literals(source, expected):
    value = ev(source)
    assert value == expected and type(value) is type(expected)


def test_string_escapes():
    assert ev(r"'a\nb\tc\\d\'e\"f'") == "a\nb\tc\\d'e\"f"
    assert ev(r'"it\'s \"quoted\""') == 'it\'s "quoted"'


def test_list_literal_is_a_fresh_list_each_time():
    expr = parse("[1, 2]")
    first = expr.evaluate({})
    first.append(3)
    assert expr.evaluate({}) == [1, 2]


def test_attribute_and_index_access_read_mapping_keys_and_list_items():
    assert ev("steps.load_data.output.rows") == 42
    assert ev("steps['load_data'].output[\"rows\"]") == 42
    assert ev("items[0] + items[-1]") == 40
    assert ev("inputs.tags[inputs.limit - 9]") == "b"
    assert ev("steps[inputs.mode == 'full' and 'b' or 'x'].status") == "failed"
    assert ev("(steps.load_data).output.rows") == 42
    assert ev("'abc'[1]") == "b"


def test_attribute_names_may_be_keywords_of_the_language():
    assert ev("x.in.not", {"x": {"in": {"not": 1}}}) == 1


def test_mapping_keys_win_over_python_attributes_and_methods():
    scope = {"d": OrderedDict(keys=1)}
    assert ev("d.keys", scope) == 1
    with pytest.raises(EvaluationError, match="has no key 'items'"):
        ev("d.items", scope)


def test_python_objects_are_never_read_through_getattr():
    class Obj:
        visible = 1

    message = eval_error("o.visible", {"o": Obj()})
    assert "o is an Obj, not an object" in message


def test_dict_index_with_unhashable_key_is_an_evaluation_error():
    assert "cannot be indexed with a list" in eval_error("inputs[[1]]")


# ---- evaluation errors -----------------------------------------------------------------------


def test_unknown_name_is_an_evaluation_error():
    assert "unknown name 'nope'" in eval_error("nope + 1")


def test_missing_key_names_the_full_path_and_lists_keys():
    message = eval_error("steps.load_data.output.cols")
    assert message == "steps.load_data.output has no key 'cols' (keys: rows, name)"


def test_missing_key_via_constant_index_names_the_path_as_written():
    assert eval_error("steps['load_data'].output['x']").startswith(
        "steps['load_data'].output has no key 'x'"
    )


def test_missing_key_in_empty_mapping_says_it_is_empty():
    assert eval_error("d.x", {"d": {}}) == "d has no key 'x' (it is empty)"


def test_attribute_on_none_says_it_is_not_an_object():
    assert eval_error("steps.empty.output.rows") == "steps.empty.output is None, not an object"


def test_attribute_on_list_is_refused():
    assert "inputs.tags is a list, not an object" in eval_error("inputs.tags.first")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("items[3]", "items has no index 3 (length 3)"),
        ("items[-4]", "items has no index -4"),
        ("items['a']", "index must be an integer, not a str"),
        ("items[true]", "index must be an integer, not a bool"),
        ("inputs.limit[0]", "inputs.limit is an int and cannot be indexed"),
    ],
)
def test_bad_indexes_are_evaluation_errors(source, fragment):
    assert fragment in eval_error(source)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("'a' < 1", "cannot compare str and int with '<'"),
        ("null >= 1", "cannot compare None and int with '>='"),
        ("'a' + 1", "cannot apply '+' to str and int"),
        ("[1] + 'a'", "cannot apply '+' to list and str"),
        ("'ab' * 3", "cannot apply '*' to str and int"),
        ("'%s' % 1", "cannot apply '%' to str and int"),
        ("true - 1", "cannot apply '-' to bool and int"),
        ("-'a'", "cannot apply unary '-' to str"),
        ("1 in 5", "cannot test int in int"),
        ("1 not in null", "cannot test int not in None"),
    ],
)
def test_type_errors_name_the_operator_and_types(source, fragment):
    assert fragment in eval_error(source)


@pytest.mark.parametrize("op", ["/", "//", "%"])
def test_division_by_zero_is_an_evaluation_error(op):
    assert f"division by zero with '{op}'" in eval_error(f"1 {op} (inputs.limit - 10)")


def test_evaluation_error_is_a_lookup_error():
    with pytest.raises(LookupError):
        ev("steps.nope")


# ---- parse errors ----------------------------------------------------------------------------


def test_parse_error_reports_token_and_column():
    err = parse_error("a + )")
    assert err.message == "unexpected ')' at column 5 in 'a + )'"
    assert err.position == 5 and err.expression == "a + )"


def test_parse_error_is_a_definition_error():
    with pytest.raises(DefinitionError):
        parse("a +")


@pytest.mark.parametrize(
    ("source", "message", "column"),
    [
        ("a +", "unexpected end of expression", 4),
        ("ab 'xy", "unterminated string", 4),
        ("'xy\\", "unterminated string", 1),
        ("'a\\qb'", "invalid escape '\\q' in string", 3),
        ("steps.1", "expected a name after '.'", 7),
        ("steps.", "expected a name after '.'", 7),
        ("(1 + 2", "expected ')' but found end of expression", 7),
        ("x[1", "expected ']' but found end of expression", 4),
        ("a b", "unexpected 'b'", 3),
        ("a = 1", "unexpected '='", 3),
        ("a && b", "unexpected '&'", 3),
        ("a is None", "unexpected 'is'", 3),
        ("1 + not x", "unexpected 'not'", 5),
        ("in", "unexpected 'in'", 1),
        ("a $ b", "unexpected '$'", 3),
    ],
)
def test_parse_errors_say_what_and_where(source, message, column):
    err = parse_error(source)
    assert err.message.startswith(f"{message} at column {column} in ")
    assert err.position == column


@pytest.mark.parametrize("source", ["", "   ", "\n\t"])
def test_empty_expression_is_refused(source):
    assert parse_error(source).message == "empty expression"


@pytest.mark.parametrize("source", ["f(x)", "len(items)", "a.b()", "inputs.tags.pop()", "(a)(b)"])
def test_function_calls_are_refused_at_parse_time(source):
    assert parse_error(source).message.startswith("function calls are not allowed")


@pytest.mark.parametrize(
    "source", ["inputs.__class__", "_x", "__import__", "a._private", "x.__dict__.y"]
)
def test_names_and_attributes_starting_with_underscore_are_refused(source):
    assert "names starting with '_' are not allowed" in parse_error(source).message


def test_underscore_keys_stay_reachable_through_string_indexes():
    assert ev("d['_meta']", {"d": {"_meta": 1}}) == 1


@pytest.mark.parametrize("source", ["a < b < c", "1 == 1 == 1", "a in b in c", "a < b not in c"])
def test_chained_comparisons_are_refused(source):
    assert "chained comparisons are not supported" in parse_error(source).message


def test_non_string_source_is_an_expression_error():
    with pytest.raises(ExpressionError, match="must be a string"):
        parse(5)  # type: ignore[arg-type]


def test_source_longer_than_limit_is_refused():
    assert "limit is 2000" in parse_error("1" + " " * MAX_LENGTH).message
    assert parse("1" + " " * (MAX_LENGTH - 1)).evaluate({}) == 1


@pytest.mark.parametrize(("opener", "closer"), [("(", ")"), ("[", "]"), ("-", ""), ("not ", "")])
def test_nesting_deeper_than_limit_is_refused(opener, closer):
    ok = opener * MAX_DEPTH + "1" + closer * MAX_DEPTH
    parse(ok).evaluate({})
    too_deep = opener * (MAX_DEPTH + 1) + "1" + closer * (MAX_DEPTH + 1)
    assert "nested more than 50 levels" in parse_error(too_deep).message


def test_long_flat_chains_do_not_recurse():
    assert ev("+".join(["1"] * 900)) == 900
    assert ev(" or ".join(["0"] * 300) + " or 7") == 7
    assert ev("d" + ".a" * 900, _deep_dict(900)) == "leaf"


def _deep_dict(depth: int) -> dict:
    node: object = "leaf"
    for _ in range(depth):
        node = {"a": node}
    return {"d": node}


# ---- paths and names -------------------------------------------------------------------------


def test_paths_are_the_leading_constant_access_chains():
    expr = parse('steps.load.output.rows > steps["b"].status')
    assert expr.paths() == [("steps", "load", "output", "rows"), ("steps", "b", "status")]
    assert expr.names() == {"steps"}


def test_paths_stop_at_a_non_constant_index_and_include_the_index_names():
    expr = parse("steps[inputs.which].status == items[0][-1].x")
    assert expr.paths() == [("steps",), ("inputs", "which"), ("items", 0, -1, "x")]
    assert expr.names() == {"steps", "inputs", "items"}


def test_paths_are_deduplicated_in_source_order():
    assert parse("b.x or a or b.x or a.y").paths() == [("b", "x"), ("a",), ("a", "y")]


def test_paths_of_constant_expression_are_empty():
    expr = parse("1 + 2 == [3][0]")
    assert expr.paths() == [] and expr.names() == set()


def test_paths_stop_at_non_string_non_int_constants():
    assert parse("a[1.5].b").paths() == [("a",)]
    assert parse("a[true].b").paths() == [("a",)]


def test_paths_see_names_everywhere():
    expr = parse("not (a.x + -b[1]) in [c, d.e] and f or g")
    assert expr.names() == {"a", "b", "c", "d", "f", "g"}


# ---- the Expression object -------------------------------------------------------------------


def test_parse_is_cached_and_expressions_are_immutable():
    expr = parse("a.b + 1")
    assert parse("a.b + 1") is expr
    assert expr.source == "a.b + 1"
    with pytest.raises(AttributeError):
        expr.source = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del expr.source
    expr.paths().append(("x",))
    expr.names().add("x")
    assert expr.paths() == [("a", "b")] and expr.names() == {"a"}


def test_expressions_and_templates_survive_pickling():
    expr = pickle.loads(pickle.dumps(parse("a + 1")))
    assert isinstance(expr, Expression) and expr.evaluate({"a": 1}) == 2
    template = pickle.loads(pickle.dumps(Template.parse("x={{ a }}")))
    assert template.render({"a": 1}) == "x=1"


def test_module_never_uses_python_evaluators():
    source = Path(expressions.__file__).read_text()
    for forbidden in ("eval(", "exec(", "compile(", "literal_eval", "getattr(", "__import__"):
        assert forbidden not in source
    calls = {
        node.func.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not calls & {"eval", "exec", "compile", "getattr", "__import__"}


# ---- templates -------------------------------------------------------------------------------


def test_whole_string_template_keeps_integer_type():
    assert Template.parse("{{ steps.load_data.output.rows }}").render(SCOPE) == 42


def test_whole_string_template_keeps_dict_list_none_and_bool_types():
    assert Template.parse("{{steps.load_data.output}}").render(SCOPE) == {
        "rows": 42,
        "name": "orders",
    }
    assert Template.parse("{{ inputs.tags }}").render(SCOPE) == ["a", "b"]
    assert Template.parse("{{ null }}").render(SCOPE) is None
    assert Template.parse("{{ inputs.flag }}").render(SCOPE) is False


def test_template_with_surrounding_text_is_formatted_into_a_string():
    text = "rows={{ steps.load_data.output.rows }} mode={{inputs.mode}}!"
    assert Template.parse(text).render(SCOPE) == "rows=42 mode=full!"


def test_whitespace_outside_the_braces_makes_a_formatted_string():
    assert Template.parse(" {{ inputs.limit }}").render(SCOPE) == " 10"
    assert Template.parse("{{ inputs.limit }}\n").render(SCOPE) == "10\n"


def test_formatting_of_none_bools_dicts_and_lists():
    scope = {"n": None, "t": True, "f": False, "d": {"b": 1, "a": [1, "x"]}, "l": [1, None]}
    rendered = Template.parse("n={{n}} t={{t}} f={{f}} d={{d}} l={{l}} r={{0.5}}").render(scope)
    assert rendered == 'n= t=true f=false d={"b":1,"a":[1,"x"]} l=[1,null] r=0.5'


def test_two_markers_render_as_a_string():
    assert Template.parse("{{ 1 }}{{ 2 }}").render({}) == "12"


def test_text_without_markers_is_returned_as_is():
    template = Template.parse("plain } text {")
    assert template.render({}) == "plain } text {" and template.expressions == []


def test_template_expressions_are_listed_in_order():
    template = Template.parse("{{ a.x }}-{{ b }}")
    assert [e.source for e in template.expressions] == ["a.x", "b"]
    assert Template.parse("{{ a.x }}-{{ b }}") is template


def test_closing_braces_inside_a_string_do_not_end_the_marker():
    assert Template.parse("{{ '}}' + 'x' }}").render({}) == "}}x"


def test_unclosed_marker_is_an_expression_error():
    with pytest.raises(ExpressionError) as info:
        Template.parse("abc {{ x ")
    assert info.value.message.startswith("unclosed '{{' at column 5")
    assert info.value.position == 5


def test_bad_expression_in_template_reports_template_column():
    with pytest.raises(ExpressionError, match="in template") as info:
        Template.parse("ab {{ x + }}")
    assert info.value.position == 10 and info.value.expression == "ab {{ x + }}"


def test_empty_marker_is_an_expression_error():
    with pytest.raises(ExpressionError, match="empty expression"):
        Template.parse("a {{ }} b")


def test_template_render_error_includes_the_expression_text():
    with pytest.raises(EvaluationError) as info:
        Template.parse("n={{ steps.load_data.output.cols }}").render(SCOPE)
    message = str(info.value)
    assert "{{ steps.load_data.output.cols }}" in message
    assert "steps.load_data.output has no key 'cols'" in message


def test_is_template():
    assert is_template("x {{ y }}")
    assert not is_template("x { y }")
    assert not is_template(5)


# ---- render_value and iter_templates ---------------------------------------------------------


def test_render_value_renders_nested_strings_and_keeps_other_leaves():
    params = {
        "rows": "{{ steps.load_data.output.rows }}",
        "label": "mode {{ inputs.mode }}",
        "items": [1, "{{ inputs.limit }}", {"deep": "{{ inputs.tags }}"}],
        "fixed": 3.5,
        "{{ key }}": "kept",
    }
    rendered = render_value(params, SCOPE)
    assert rendered == {
        "rows": 42,
        "label": "mode full",
        "items": [1, 10, {"deep": ["a", "b"]}],
        "fixed": 3.5,
        "{{ key }}": "kept",
    }
    assert params["rows"] == "{{ steps.load_data.output.rows }}"  # input untouched


def test_render_value_returns_the_same_object_when_there_are_no_templates():
    params = {"a": [1, {"b": "text"}], "c": ("x",), "d": None}
    assert render_value(params, SCOPE) is params
    assert render_value("plain", SCOPE) == "plain"
    assert render_value(7, SCOPE) == 7


def test_render_value_keeps_untouched_branches_shared_and_tuples_as_tuples():
    untouched = {"b": [1, 2]}
    rendered = render_value({"a": untouched, "t": ("{{ 1 }}", 2)}, SCOPE)
    assert rendered["a"] is untouched and rendered["t"] == (1, 2)


def test_iter_templates_yields_dotted_and_indexed_paths():
    params = {
        "rows": "{{ x }}",
        "plain": "no template",
        "items": [1, 2, "{{ y }}"],
        "cfg": {"name": "n-{{ z }}", "n": 3},
    }
    found = [(path, t.text) for path, t in iter_templates(params, "params")]
    assert found == [
        ("params.rows", "{{ x }}"),
        ("params.items[2]", "{{ y }}"),
        ("params.cfg.name", "n-{{ z }}"),
    ]


def test_iter_templates_without_prefix_starts_at_the_top_level_keys():
    assert [p for p, _ in iter_templates({"a": {"b": "{{ c }}"}, "l": ["{{ d }}"]})] == [
        "a.b",
        "l[0]",
    ]
    assert [p for p, _ in iter_templates("{{ x }}")] == [""]


def test_iter_templates_parse_errors_name_the_path():
    with pytest.raises(ExpressionError) as info:
        list(iter_templates({"cfg": {"name": "{{ x"}}, "params"))
    assert info.value.message.startswith("params.cfg.name: unclosed '{{'")
