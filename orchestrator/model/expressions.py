"""A small, safe expression language for `when` conditions and `{{ }}` templates in step params.

Source text is tokenized and parsed by hand, then turned into nested closures once; user text is
never handed to Python's own evaluator, and values are only ever read through Mapping lookups and
sequence indexing, never through attribute access on Python objects.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from orchestrator.errors import EvaluationError, ExpressionError

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "Expression",
    "Template",
    "is_template",
    "iter_templates",
    "parse",
    "render_value",
]

from orchestrator.model.syntax import (
    MAX_DEPTH,
    MAX_LENGTH,
    Access,
    Arith,
    BoolOp,
    Compare,
    Const,
    ListLit,
    Name,
    Not,
    Parser,
    Unary,
    fail,
    short,
)


def _tname(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    name = _tname(value)
    return ("an " if name[0].lower() in "aeiou" else "a ") + name


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _add(a: Any, b: Any) -> Any:
    if (_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str)):
        return a + b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return [*a, *b]
    raise EvaluationError(f"cannot apply '+' to {_tname(a)} and {_tname(b)}")


def _numeric(op: str, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    # Numbers only: Python's str * int and str % x would let a short expression build huge
    # strings or run format directives.
    def run(a: Any, b: Any) -> Any:
        if not (_is_num(a) and _is_num(b)):
            raise EvaluationError(f"cannot apply '{op}' to {_tname(a)} and {_tname(b)}")
        try:
            return fn(a, b)
        except ZeroDivisionError:
            raise EvaluationError(f"division by zero with '{op}' ({a!r} {op} {b!r})") from None
        except OverflowError as exc:
            raise EvaluationError(f"numeric overflow with '{op}': {exc}") from None

    return run


_ARITH = {
    "+": _add,
    "-": _numeric("-", operator.sub),
    "*": _numeric("*", operator.mul),
    "/": _numeric("/", operator.truediv),
    "//": _numeric("//", operator.floordiv),
    "%": _numeric("%", operator.mod),
}
_ORDER = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
}


def _missing_key(label: str, key: Any, mapping: Mapping) -> EvaluationError:
    keys = [str(k) for k in list(mapping)[:20]]
    more = ", ..." if len(mapping) > 20 else ""
    listing = f"keys: {', '.join(keys)}{more}" if keys else "it is empty"
    return EvaluationError(f"{label} has no key {key!r} ({listing})")


def _step(cur: Any, key: Any, attr: bool, label: str) -> Any:
    """Apply one `.key` / `[key]` to `cur`; Mapping lookups and sequence indexes only."""
    if isinstance(cur, Mapping):
        try:
            return cur[key]
        except KeyError:
            raise _missing_key(label, key, cur) from None
        except TypeError:
            raise EvaluationError(f"{label} cannot be indexed with {_describe(key)}") from None
    if attr:
        raise EvaluationError(f"{label} is {_describe(cur)}, not an object")
    if isinstance(cur, (list, tuple, str)):
        if not isinstance(key, int) or isinstance(key, bool):
            raise EvaluationError(
                f"{label} is {_describe(cur)}; its index must be an integer, not {_describe(key)}"
            )
        try:
            return cur[key]
        except IndexError:
            raise EvaluationError(f"{label} has no index {key} (length {len(cur)})") from None
    raise EvaluationError(f"{label} is {_describe(cur)} and cannot be indexed")


Fn = Callable[[Mapping[str, Any]], Any]


def _build(node: Any) -> Fn:
    """Turn an AST node into a closure taking the scope."""
    kind = type(node)
    if kind is Const:
        value = node.value
        return lambda scope: value
    if kind is Name:
        return _build_name(node.name)
    if kind is Access:
        return _build_access(node)
    if kind is ListLit:
        items = tuple(_build(item) for item in node.items)
        return lambda scope: [item(scope) for item in items]
    if kind is Not:
        operand = _build(node.operand)
        return lambda scope: not operand(scope)
    if kind is Unary:
        return _build_unary(node.op, _build(node.operand))
    if kind is BoolOp:
        return _build_bool(node.op, tuple(_build(n) for n in node.operands))
    if kind is Arith:
        return _build_arith(
            _build(node.first), tuple((_ARITH[op], _build(n)) for op, n in node.rest)
        )
    if kind is Compare:
        return _build_compare(node.op, _build(node.left), _build(node.right))
    raise AssertionError(f"unknown node {node!r}")  # pragma: no cover


def _build_name(name: str) -> Fn:
    def run(scope: Mapping[str, Any]) -> Any:
        try:
            return scope[name]
        except KeyError:
            known = ", ".join(sorted(str(k) for k in scope)) or "none"
            raise EvaluationError(f"unknown name {name!r} (known: {known})") from None

    return run


def _build_access(node: Access) -> Fn:
    root = _build(node.root)
    steps = tuple(
        (s.attr, s.key, None if s.expr is None else _build(s.expr), s.label) for s in node.steps
    )

    def run(scope: Mapping[str, Any]) -> Any:
        cur = root(scope)
        for attr, key, key_fn, label in steps:
            if key_fn is not None:
                key = key_fn(scope)
            if type(cur) is dict:  # the common case, without the Mapping ABC check
                try:
                    cur = cur[key]
                    continue
                except (KeyError, TypeError):
                    pass
            cur = _step(cur, key, attr, label)
        return cur

    return run


def _build_unary(op: str, operand: Fn) -> Fn:
    def run(scope: Mapping[str, Any]) -> Any:
        value = operand(scope)
        if not _is_num(value):
            raise EvaluationError(f"cannot apply unary '{op}' to {_tname(value)}")
        return -value if op == "-" else value

    return run


def _build_bool(op: str, operands: tuple[Fn, ...]) -> Fn:
    if len(operands) == 2:
        left, right = operands
        if op == "and":
            return lambda scope: left(scope) and right(scope)
        return lambda scope: left(scope) or right(scope)
    *head, last = operands
    stop_when = op == "or"  # `or` stops at the first truthy value, `and` at the first falsy one

    def run(scope: Mapping[str, Any]) -> Any:
        for operand in head:
            value = operand(scope)
            if bool(value) is stop_when:
                return value
        return last(scope)

    return run


def _build_arith(first: Fn, rest: tuple[tuple[Callable[[Any, Any], Any], Fn], ...]) -> Fn:
    if len(rest) == 1:
        ((fn, right),) = rest
        return lambda scope: fn(first(scope), right(scope))

    def run(scope: Mapping[str, Any]) -> Any:
        value = first(scope)
        for fn, right in rest:
            value = fn(value, right(scope))
        return value

    return run


def _build_compare(op: str, left: Fn, right: Fn) -> Fn:
    if op == "==":
        return lambda scope: left(scope) == right(scope)
    if op == "!=":
        return lambda scope: left(scope) != right(scope)
    fn = _ORDER[op]

    def run(scope: Mapping[str, Any]) -> Any:
        a, b = left(scope), right(scope)
        try:
            return fn(a, b)
        except TypeError:
            if op in ("in", "not in"):
                raise EvaluationError(f"cannot test {_tname(a)} {op} {_tname(b)}") from None
            raise EvaluationError(
                f"cannot compare {_tname(a)} and {_tname(b)} with '{op}'"
            ) from None

    return run


def _collect_paths(node: Any, out: list[tuple]) -> None:
    kind = type(node)
    if kind is Name:
        out.append((node.name,))
    elif kind is Access:
        if type(node.root) is Name:
            chain: list[Any] = [node.root.name]
            for s in node.steps:
                if s.expr is not None or not (s.attr or type(s.key) in (str, int)):
                    break
                chain.append(s.key)
            out.append(tuple(chain))
        else:
            _collect_paths(node.root, out)
        for s in node.steps:
            if s.expr is not None:
                _collect_paths(s.expr, out)
    elif kind in (ListLit, BoolOp):
        for child in node[-1]:
            _collect_paths(child, out)
    elif kind in (Not, Unary):
        _collect_paths(node.operand, out)
    elif kind is Arith:
        _collect_paths(node.first, out)
        for _, child in node.rest:
            _collect_paths(child, out)
    elif kind is Compare:
        _collect_paths(node.left, out)
        _collect_paths(node.right, out)


class Expression:
    """A parsed, immutable expression; evaluate() runs the pre-built closures against a scope."""

    __slots__ = ("source", "_fn", "_paths", "_names")
    source: str
    _fn: Fn
    _paths: tuple[tuple, ...]
    _names: frozenset[str]

    def __init__(self, source: str, fn: Fn, paths: tuple[tuple, ...]):
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_paths", paths)
        object.__setattr__(self, "_names", frozenset(p[0] for p in paths))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Expression objects are immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Expression objects are immutable")

    def __reduce__(self) -> tuple:
        return parse, (self.source,)  # closures do not pickle; the source re-parses

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """Evaluate against `scope`; raises EvaluationError on missing values or bad types."""
        return self._fn(scope)

    def paths(self) -> list[tuple]:
        """Leading constant access chain of every name reference, deduplicated, in source order."""
        return list(self._paths)

    def names(self) -> set[str]:
        """Root names the expression reads."""
        return set(self._names)


def parse(source: str) -> Expression:
    """Parse expression text into an Expression (cached); raises ExpressionError."""
    if not isinstance(source, str):
        raise ExpressionError(
            f"an expression must be a string, not {_tname(source)}", expression=repr(source)
        )
    return _parse_cached(source)


@functools.lru_cache(maxsize=4096)
def _parse_cached(source: str) -> Expression:
    if len(source) > MAX_LENGTH:
        raise ExpressionError(
            f"expression is {len(source)} characters long; the limit is {MAX_LENGTH}",
            expression=source,
        )
    tree = Parser(source).parse()
    paths: list[tuple] = []
    _collect_paths(tree, paths)
    return Expression(source, _build(tree), tuple(dict.fromkeys(paths)))


# ---- templates --------------------------------------------------------------------------------


def _find_close(text: str, pos: int) -> int:
    """Index of the `}}` closing a marker whose body starts at `pos`, skipping quoted strings."""
    i, n = pos, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            if j >= n:  # unterminated string: let the expression parser report it
                return text.find("}}", pos)
            i = j + 1
        elif text.startswith("}}", i):
            return i
        else:
            i += 1
    return -1


def _format(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (Mapping, list, tuple)):
        data = dict(value) if isinstance(value, Mapping) else value
        return json.dumps(data, separators=(",", ":"), default=str)
    return str(value)


class Template:
    """Text with `{{ expr }}` markers; a lone marker renders to the value with its own type."""

    __slots__ = ("text", "_parts", "_whole", "_exprs")
    text: str
    _parts: tuple
    _whole: Expression | None
    _exprs: tuple[Expression, ...]

    def __init__(self, text: str, parts: tuple):
        exprs = tuple(p for p in parts if isinstance(p, Expression))
        whole = parts[0] if len(parts) == 1 and exprs else None
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "_parts", parts)
        object.__setattr__(self, "_whole", whole)
        object.__setattr__(self, "_exprs", exprs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Template objects are immutable")

    def __reduce__(self) -> tuple:
        return Template.parse, (self.text,)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse template text (cached); raises ExpressionError."""
        if not isinstance(text, str):
            raise ExpressionError(f"a template must be a string, not {_tname(text)}")
        return _parse_template(text)

    @property
    def expressions(self) -> list[Expression]:
        """The expressions of every marker, in order."""
        return list(self._exprs)

    def render(self, scope: Mapping[str, Any]) -> Any:
        """Render against `scope`: the typed value for a lone marker, else a formatted string."""
        if self._whole is not None:
            return _evaluate_marker(self._whole, scope)
        if not self._exprs:
            return self.text
        return "".join(
            p if type(p) is str else _format(_evaluate_marker(p, scope)) for p in self._parts
        )


def _evaluate_marker(expr: Expression, scope: Mapping[str, Any]) -> Any:
    try:
        return expr._fn(scope)
    except EvaluationError as exc:
        raise EvaluationError(f"cannot render {{{{ {expr.source} }}}}: {exc}") from exc


@functools.lru_cache(maxsize=4096)
def _parse_template(text: str) -> Template:
    parts: list[Any] = []
    i = 0
    while True:
        start = text.find("{{", i)
        if start < 0:
            if i < len(text) or not parts:
                parts.append(text[i:])
            return Template(text, tuple(parts))
        if start > i:
            parts.append(text[i:start])
        end = _find_close(text, start + 2)
        if end < 0:
            raise fail(text, "unclosed '{{'", start)
        body = text[start + 2 : end]
        offset = start + 2 + (len(body) - len(body.lstrip()))
        try:
            parts.append(parse(body.strip()))
        except ExpressionError as exc:
            # Re-anchor the column to the template text so the user can find the marker.
            col = offset + (exc.position or 1)
            raise ExpressionError(
                f"{exc.message}, in template {short(text)!r}", expression=text, position=col
            ) from None
        i = end + 2


def is_template(text: Any) -> bool:
    """True if `text` is a string containing a `{{` marker."""
    return isinstance(text, str) and "{{" in text


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render templates in every str inside dicts/lists; returns `value` itself if none changed."""
    if isinstance(value, str):
        return Template.parse(value).render(scope) if "{{" in value else value
    if isinstance(value, Mapping):
        out: dict | None = None
        for key, item in value.items():
            new = render_value(item, scope)
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items = [render_value(item, scope) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


def iter_templates(value: Any, path: str = "") -> Iterator[tuple[str, Template]]:
    """Yield (path, Template) for every templated str; parse errors name the path."""
    if isinstance(value, str):
        if "{{" in value:
            try:
                template = Template.parse(value)
            except ExpressionError as exc:
                if not path:
                    raise
                raise ExpressionError(
                    f"{path}: {exc.message}", expression=exc.expression, position=exc.position
                ) from None
            yield path, template
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from iter_templates(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from iter_templates(item, f"{path}[{index}]")


def strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string inside a JSON value with its path (the templates a validation checks):
    params.a, params.items[2], params.cfg.name."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from strings(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from strings(v, f"{path}[{i}]")
