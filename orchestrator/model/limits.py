"""What a submission may be: size and depth limits, a YAML loader that bounds aliases, and the
characters ids and names may not contain.

Issue 13's drill: a parameter nested 500 levels deep was accepted and then killed every worker;
a 50 MB definition and a 1.5 KB YAML alias bomb (10^7 items) were accepted. Everything here is
checked before the schema, the semantic checks or the planner look at the data, walks without
recursion, and stops at the first place that is over a limit, so refusing costs no more than the
limit allows. Each limit is a setting (``CANVASFLOW_MAX_*``) with a default; every message says
what, where (the path), the limit and the setting that raises it.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from orchestrator.errors import ConfigurationError, LimitExceeded

MiB = 1024 * 1024
# Containers a definition's own structure adds above a field's value (root, steps, a step,
# compensate): the YAML composer is allowed that much more than max_depth before it refuses on
# its own, so deep documents never reach PyYAML's recursion, and the precise per-field check
# (with its path) still gets to speak first.
STRUCTURE = 8


@dataclass(frozen=True)
class Limits:
    """How big and how deep a definition, run inputs or an event payload may be."""

    # Containers nested inside any one field of a definition (params, inputs, ...), run inputs
    # or an event payload: {"a": {"b": 1}} is 2.
    max_depth: int = 32
    max_steps: int = 10_000
    # A definition as text (YAML or JSON) or as compact JSON when given as data.
    max_definition_bytes: int = 4 * MiB
    # A run's inputs (the definition's defaults merged with the submit's) as compact JSON;
    # they ride in step messages. Event payloads get the same limit.
    max_inputs_bytes: int = 1 * MiB
    # Nodes that YAML aliases (*name, <<: *name) may expand to in one document, in total.
    max_yaml_alias_nodes: int = 10_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigurationError(
                    f"{env_name(f.name)}={value!r}: expected a positive whole number"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        """Read CANVASFLOW_MAX_* (e.g. CANVASFLOW_MAX_DEPTH); unset ones keep their default."""
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None or not raw.strip():
                continue
            try:
                values[f.name] = int(raw)
            except ValueError:
                raise ConfigurationError(
                    f"{env_name(f.name)}={raw!r}: expected a whole number"
                ) from None
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        return {env_name(f.name): str(getattr(self, f.name)) for f in fields(self)}


def env_name(field_name: str) -> str:
    return f"CANVASFLOW_{field_name.upper()}"


def current(limits: Limits | None = None) -> Limits:
    """``limits``, else this process's CANVASFLOW_MAX_* settings (file, builder, CLI)."""
    return limits if limits is not None else Limits.from_env()


def _over(what: str, size: int, limit: int, setting: str, unit: str = "bytes") -> str:
    return f"{size} {unit}{' of ' + what if what else ''}: at most {limit} are allowed ({env_name(setting)})"


# ---------------------------------------------------------------------------------------------
# Depth and size
# ---------------------------------------------------------------------------------------------


def too_deep(value: Any, path: str, limit: int) -> tuple[str, str] | None:
    """The first place where ``value`` nests more than ``limit`` containers, as (path, message).

    Iterative and stops descending at the limit: a value 100,000 levels deep (or one that
    contains itself, from the Python builder) costs ``limit`` steps per branch, never recursion.
    """
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterator[tuple[Any, str]] = (
                (v, f"{where}.{k}" if where else str(k)) for k, v in item.items()
            )
        elif isinstance(item, list | tuple):
            children = ((v, f"{where}[{i}]") for i, v in enumerate(item))
        else:
            continue
        if depth + 1 > limit:
            return where, f"nested deeper than {limit} levels ({env_name('max_depth')})"
        stack.extend((v, p, depth + 1) for v, p in children)
    return None


def json_size(value: Any) -> int | None:
    """Bytes of ``value`` as compact UTF-8 JSON; None when it is not JSON (the schema says why)."""
    try:
        return len(
            json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        )
    except (TypeError, ValueError, RecursionError):
        return None


def check_definition(
    data: Mapping[str, Any], limits: Limits | None = None
) -> list[tuple[str, str]]:
    """Every limit a raw definition exceeds, as (path, message); depth counts from each field's
    value (a step's params, the inputs, a compensation's params ...)."""
    lim = current(limits)
    problems: list[tuple[str, str]] = []
    steps = data.get("steps")
    n_steps = len(steps) if isinstance(steps, list) else 0
    too_many = n_steps > lim.max_steps
    if too_many:
        problems.append(("steps", _over("", n_steps, lim.max_steps, "max_steps", "steps")))
    for key, value in data.items():
        if key == "steps" and isinstance(value, list) and not too_many:
            for i, step in enumerate(value):
                problems.extend(_step_depth(step, f"steps[{i}]", lim.max_depth))
        elif key != "steps":
            found = too_deep(value, str(key), lim.max_depth)
            if found:
                problems.append(found)
    if problems:
        return problems  # sizes of a structure this deep are not worth measuring
    size = json_size(data)
    if size is not None and size > lim.max_definition_bytes:
        problems.append(
            ("", _over("definition", size, lim.max_definition_bytes, "max_definition_bytes"))
        )
    elif isinstance(data.get("inputs"), Mapping):
        problems.extend(check_inputs(data["inputs"], lim))
    return problems


def _step_depth(step: Any, path: str, limit: int) -> Iterator[tuple[str, str]]:
    if not isinstance(step, Mapping):
        found = too_deep(step, path, limit)
        if found:
            yield found
        return
    for key, value in step.items():
        if key == "compensate" and isinstance(value, Mapping):
            for k, v in value.items():
                found = too_deep(v, f"{path}.compensate.{k}", limit)
                if found:
                    yield found
            continue
        found = too_deep(value, f"{path}.{key}", limit)
        if found:
            yield found


def check_inputs(
    inputs: Any, limits: Limits | None = None, path: str = "inputs"
) -> list[tuple[str, str]]:
    """Run inputs (or a definition's default inputs): depth, then compact JSON size."""
    return check_payload(inputs, path, limits, what="inputs as JSON")


def check_payload(
    value: Any, path: str, limits: Limits | None = None, *, what: str = "payload as JSON"
) -> list[tuple[str, str]]:
    """Any JSON value a user sends that will ride in messages (inputs, an event's payload):
    at most max_depth containers deep and max_inputs_bytes as compact JSON."""
    lim = current(limits)
    found = too_deep(value, path, lim.max_depth)
    if found:
        return [found]
    size = json_size(value)
    if size is not None and size > lim.max_inputs_bytes:
        return [(path, _over(what, size, lim.max_inputs_bytes, "max_inputs_bytes"))]
    return []


def refuse(problems: list[tuple[str, str]], source: str | None = None) -> None:
    if problems:
        raise LimitExceeded(problems, source)


def check_text(text: str, limits: Limits | None = None, source: str | None = None) -> None:
    """Refuse a definition text longer than max_definition_bytes before parsing it."""
    lim = current(limits)
    # Cheap bounds first: a str never has more UTF-8 bytes than 4 per character, nor fewer than 1.
    if len(text) * 4 <= lim.max_definition_bytes:
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > lim.max_definition_bytes:
        refuse(
            [("", _over("definition", size, lim.max_definition_bytes, "max_definition_bytes"))],
            source,
        )


# ---------------------------------------------------------------------------------------------
# Characters in ids and names
# ---------------------------------------------------------------------------------------------

# Bidi embeddings, overrides and isolates: they make an id display as something it is not.
BIDI_CONTROLS = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A))


def forbidden_character(text: str) -> str | None:
    """Why ``text`` may not be an id or a name (NUL and other C0/C1 controls, DEL, bidi
    controls, lone surrogates), naming the first offending character and its position; None
    when it is fine."""
    for i, ch in enumerate(text):
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            kind = "a control character"
        elif code in BIDI_CONTROLS:
            kind = "a bidirectional control"
        elif 0xD800 <= code <= 0xDFFF:
            kind = "a lone surrogate"
        else:
            continue
        label = unicodedata.name(ch, "")
        return (
            f"contains {kind}, U+{code:04X}{' ' + label if label else ''}, at position {i}: "
            "ids and names may not contain control characters, bidirectional controls or "
            "lone surrogates"
        )
    return None


# ---------------------------------------------------------------------------------------------
# YAML with bounded aliases
# ---------------------------------------------------------------------------------------------


class LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that counts what aliases expand to and how deep nodes nest.

    PyYAML shares an aliased node rather than copying it, so a "billion laughs" document loads
    quickly into a small graph of shared lists; everything after it (JSON encoding, validation,
    messages to workers) then walks the expanded tree. So each alias adds the expanded size of
    its target to a running total, refused past ``max_yaml_alias_nodes`` with the alias's
    line and column; an alias inside its own anchor (a recursive document) is refused too.
    """

    def __init__(self, stream: str, limits: Limits) -> None:
        super().__init__(stream)
        self.limits = limits
        self._sizes: dict[int, int] = {}
        self._expanded = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise ComposerError(
                        None,
                        None,
                        f"alias *{event.anchor} refers to a node that contains it",
                        event.start_mark,
                    )
                self._expanded += size
                if self._expanded > self.limits.max_yaml_alias_nodes:
                    raise ComposerError(
                        None,
                        None,
                        f"aliases expand to more than {self.limits.max_yaml_alias_nodes} nodes "
                        f"({env_name('max_yaml_alias_nodes')})",
                        event.start_mark,
                    )
            return super().compose_node(parent, index)  # type: ignore[no-any-return,return-value]
        self._depth += 1
        if self._depth > self.limits.max_depth + STRUCTURE:
            mark = self.peek_event().start_mark
            raise ComposerError(
                None,
                None,
                f"nested deeper than {self.limits.max_depth + STRUCTURE} levels "
                f"({env_name('max_depth')})",
                mark,
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        assert node is not None  # PyYAML's composer gives None only at the end of the stream
        self._sizes[id(node)] = self._size(node)
        return node  # type: ignore[no-any-return]

    def _size(self, node: Node) -> int:
        sizes = self._sizes
        if isinstance(node, SequenceNode):
            return 1 + sum(sizes.get(id(child), 1) for child in node.value)
        if isinstance(node, MappingNode):
            return 1 + sum(sizes.get(id(k), 1) + sizes.get(id(v), 1) for k, v in node.value)
        return 1


def load_yaml(text: str, limits: Limits | None = None) -> Any:
    """``yaml.safe_load`` with aliases and nesting bounded by ``limits``."""
    loader = LimitedLoader(text, current(limits))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
