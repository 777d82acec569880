"""Sub-workflow steps and workflow outputs: their checks, and the cycle among registered workflows.

A sub-workflow step (``workflow: <id>``, optional ``version``, ``inputs`` templates) starts a
child run instead of calling a plugin; ``outputs`` (templates over the workflow's steps) is the
run's result, evaluated when it completes. Like every check, these yield ``(path, message)``
and run next to the schema, so every problem is reported at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from orchestrator.errors import EvaluationError, ExpressionError
from orchestrator.model import expressions, validation

# What a sub-workflow step may not carry (it has no plugin to give them to).
PLUGIN_ONLY = ("method", "params", "compensate")
# What only a sub-workflow step carries.
WORKFLOW_ONLY = ("version", "inputs")


def check(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem of the sub-workflow steps and the outputs of a raw definition."""
    steps = validation._steps(data)
    index: dict[str, int] = {}
    for i, s in steps:
        sid = s.get("id")
        if isinstance(sid, str) and sid not in index:
            index[sid] = i
    problems = list(_check_kinds(steps))
    graph = {
        s["id"]: [d for d in validation._deps(s) if d in index and d != s["id"]]
        for _, s in steps
        if isinstance(s.get("id"), str)
    }
    if validation.find_cycle(graph) is None:  # a cycle is reported (once) by validation
        upstream = validation.Upstream(graph)
        sequential = data.get("mode") == "sequential"
        for i, s in steps:
            sid, inputs = s.get("id"), s.get("inputs")
            if isinstance(sid, str) and isinstance(inputs, Mapping):
                visible = validation._Visible(sid, i, upstream, index, sequential)
                problems.extend(
                    validation._check_templates(
                        inputs, f"steps[{i}].inputs", sid, visible, index, _item_names(s)
                    )
                )
    outputs = data.get("outputs")
    if isinstance(outputs, Mapping):
        # Outputs are evaluated once the run completed: every step of the workflow is visible.
        problems.extend(validation._check_templates(outputs, "outputs", "", set(index), index))
    return problems


def _item_names(step: Mapping[str, Any]) -> frozenset[str]:
    """The names a mapped sub-workflow step's inputs may read besides the usual ones: its item
    (``map.as``) and ``map`` (``map.index``), as its params would."""
    mapping = step.get("map")
    if not isinstance(mapping, Mapping):
        return frozenset()
    name = mapping.get("as", "item")
    if (
        isinstance(name, str)
        and validation.MAP_AS.match(name)
        and name not in validation.MAP_RESERVED
    ):
        return frozenset({name, "map"})
    return frozenset()


def _check_kinds(steps: list[tuple[int, Mapping[str, Any]]]) -> Iterator[tuple[str, str]]:
    for i, s in steps:
        path = f"steps[{i}]"
        has_plugin, has_workflow = "plugin" in s, "workflow" in s
        if has_plugin and has_workflow:
            yield (
                f"{path}.workflow",
                "a step runs either a plugin or a workflow, not both (remove plugin or workflow)",
            )
            continue
        if not has_plugin and not has_workflow:
            yield f"{path}.plugin", "required (or workflow: <id> for a sub-workflow step)"
            continue
        if has_workflow:
            for name in PLUGIN_ONLY:
                if name in s:
                    yield (
                        f"{path}.{name}",
                        f"a sub-workflow step (workflow: {s.get('workflow')}) takes no {name}"
                        + (" (give the child's inputs under inputs)" if name == "params" else ""),
                    )
        else:
            for name in WORKFLOW_ONLY:
                if name in s:
                    yield (
                        f"{path}.{name}",
                        f"only a sub-workflow step (workflow: <id>) takes {name}"
                        + (" (a plugin step takes params)" if name == "inputs" else ""),
                    )


def references(data: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """The (workflow, version or None) pairs a definition's sub-workflow steps name."""
    return [
        (s["workflow"], s.get("version"))
        for _, s in validation._steps(data)
        if isinstance(s.get("workflow"), str)
    ]


def find_reference_cycle(
    start: str,
    refs: list[tuple[str, str | None]],
    lookup: Callable[[str, str | None], list[tuple[str, str | None]] | None],
) -> list[str] | None:
    """A cycle of sub-workflow references through ``start`` (``[a, b, a]``), or None.

    ``refs`` are the references of the workflow ``start`` being registered; ``lookup(id,
    version)`` gives the references of a registered version (None: not registered; a version of
    None means the latest). Every registered version a reference may resolve to is followed."""
    stack: list[tuple[str, list[str], list[tuple[str, str | None]]]] = [(start, [start], refs)]
    seen: set[tuple[str, str | None]] = set()
    while stack:
        _, path, children = stack.pop()
        for wf, version in children:
            if wf == start:
                return path + [wf]
            if (wf, version) in seen:
                continue
            seen.add((wf, version))
            sub = lookup(wf, version)
            if sub:
                stack.append((wf, path + [wf], sub))
    return None


def evaluate_outputs(outputs: Mapping[str, Any], scope: Mapping[str, Any]) -> Any:
    """The run's result: ``outputs`` rendered in ``scope``. A template that cannot be evaluated
    raises EvaluationError naming its entry (``outputs.thumbnails: ...``)."""
    result: dict[str, Any] = {}
    for name, value in outputs.items():
        try:
            result[name] = expressions.render_value(value, scope)
        except (EvaluationError, ExpressionError) as exc:
            raise EvaluationError(f"outputs.{name}: {exc}") from None
    return result
