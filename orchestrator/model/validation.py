"""Semantic checks of a raw definition: ids, dependencies, cycles, expressions, plugins.

Runs on the raw dict next to the marshmallow schema so that every problem is reported at
once, even when the structure is partly wrong. Every check yields ``(path, message)``.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from orchestrator.errors import ExpressionError
from orchestrator.model import callallow, concurrency, expressions, triggers

ROOT_NAMES = {"inputs", "steps", "run"}
RUN_FIELDS = {"id", "workflow", "version"}
STEP_FIELDS = {"output", "status"}


def _steps(data: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    steps = data.get("steps")
    if not isinstance(steps, list):
        return []
    return [(i, s) for i, s in enumerate(steps) if isinstance(s, Mapping)]


def _deps(step: Mapping[str, Any]) -> list[Any]:
    deps = step.get("depends_on") or []
    return deps if isinstance(deps, list) else []


def check(
    data: Mapping[str, Any], catalog: Mapping[str, Any] | None = None
) -> list[tuple[str, str]]:
    """Every semantic problem of a raw definition, each as (path, message)."""
    token = _hints.set([MAX_HINTS])
    try:
        return _check(data, catalog)
    finally:
        _hints.reset(token)


def _check(data: Mapping[str, Any], catalog: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    steps = _steps(data)
    problems: list[tuple[str, str]] = []
    index: dict[str, int] = {}
    for i, s in steps:
        sid = s.get("id")
        if not isinstance(sid, str):
            continue
        if sid in index:
            problems.append(
                (f"steps[{i}].id", f"duplicate step id '{sid}' (first used by steps[{index[sid]}])")
            )
        else:
            index[sid] = i
    sequential = data.get("mode") == "sequential"
    problems.extend(_check_dependencies(steps, index, sequential))
    graph = {
        s["id"]: [d for d in _deps(s) if d in index and d != s["id"]]
        for _, s in steps
        if isinstance(s.get("id"), str)
    }
    cycle = find_cycle(graph)
    if cycle:
        problems.append(("steps", "cycle: " + " -> ".join(cycle)))
    problems.extend(_check_expressions(steps, index, graph, sequential))
    if catalog is not None:
        problems.extend(_check_plugins(steps, catalog))
    problems.extend(callallow.check_steps(data, catalog))  # who may run what (builtin.call)
    problems.extend(triggers.check(data))
    problems.extend(concurrency.check(data))
    return problems


def _check_dependencies(
    steps: list[tuple[int, Mapping[str, Any]]], index: dict[str, int], sequential: bool
) -> Iterator[tuple[str, str]]:
    for i, s in steps:
        seen: set[str] = set()
        for j, dep in enumerate(_deps(s)):
            path = f"steps[{i}].depends_on[{j}]"
            if not isinstance(dep, str):
                continue  # the schema reports the type
            if dep not in index:
                several = [d for d in re.split(r"[\s,]+", dep.strip(" []")) if d]
                if len(several) > 1 and all(d in index for d in several):
                    hint = f" (to depend on several steps write a list: [{', '.join(several)}])"
                else:
                    hint = did_you_mean(_suggest(dep, index, 1))
                yield path, f"unknown step '{dep}'" + hint
            elif dep == s.get("id"):
                yield path, "a step cannot depend on itself"
            elif sequential and index[dep] > i:
                yield (
                    path,
                    f"in sequential mode a step may only depend on earlier steps; '{dep}' comes later",
                )
            if dep in seen:
                yield path, f"'{dep}' is listed twice"
            seen.add(dep)


# "Did you mean" hints one check() may compute: each compares a name with every known one, so
# 10,000 steps naming 10,000 unknown steps would otherwise cost 10^8 string comparisons.
MAX_HINTS = 50
_hints: ContextVar[list[int] | None] = ContextVar("canvasflow_hints", default=None)


def _closest(name: str, known: Iterable[str]) -> str | None:
    match = _suggest(name, known, 1)
    return match[0] if match else None


def _suggest(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` known names close to ``name``: spelling first (difflib), then names that
    contain it or that it contains (``csv`` -> ``csv_loader``). Counts against the hint budget."""
    budget = _hints.get()
    if budget is not None:
        if budget[0] <= 0:
            return []
        budget[0] -= 1
    return suggest(name, known, n)


def suggest(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``known`` that ``name`` was probably meant to be, closest first: those
    spelt alike (difflib ratio at least 0.6 and near the best one, so 'csv_lodaer' names
    'csv_loader' alone), else those that contain it or that it contains."""
    import difflib

    names = list(known)
    matcher = difflib.SequenceMatcher(b=name)
    scored = []
    for k in names:
        matcher.set_seq1(k)
        if matcher.real_quick_ratio() >= 0.6 and matcher.quick_ratio() >= 0.6:
            ratio = matcher.ratio()
            if ratio >= 0.6:
                scored.append((-ratio, k))
    if scored:
        scored.sort()
        best = -scored[0][0]
        return [k for r, k in scored if -r >= best - 0.1][:n]
    folded = name.lower()
    if len(folded) < 3:
        return []
    return [
        k for k in sorted(names) if len(k) >= 3 and (folded in k.lower() or k.lower() in folded)
    ][:n]


def did_you_mean(names: list[str]) -> str:
    """`` (did you mean 'a'?)``, `` (did you mean 'a', 'b' or 'c'?)``, or "" for no names."""
    if not names:
        return ""
    quoted = [f"'{n}'" for n in names]
    text = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f" (did you mean {text}?)"


# A catalog with more names than this is not listed in a message; the closest ones are named.
MAX_LISTED = 8


def find_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    """A dependency cycle in run order, [a, b, c, a] (b depends on a ... a on c), or None."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    order = {node: i for i, node in enumerate(graph)}

    def visit(root: str) -> list[str] | None:
        # Depth-first with an explicit stack: a chain of 10,000 steps declared newest first is
        # 10,000 levels deep, far past Python's recursion limit.
        color[root] = grey
        path = [root]
        todo = [iter(graph.get(root, []))]
        while todo:
            for dep in todo[-1]:
                if color.get(dep) == grey:
                    cyc = path[path.index(dep) :] + [dep]
                    return list(reversed(cyc))
                if color.get(dep) == white:
                    color[dep] = grey
                    path.append(dep)
                    todo.append(iter(graph.get(dep, [])))
                    break
            else:
                todo.pop()
                color[path.pop()] = black
        return None

    for node in graph:
        if color[node] == white:
            found = visit(node)
            if found:
                # Report in dependency order, starting from the first-declared step of the cycle.
                body = found[:-1]
                start = min(range(len(body)), key=lambda k: order[body[k]])
                body = body[start:] + body[:start]
                return body + [body[0]]
    return None


def ancestors(graph: Mapping[str, list[str]]) -> dict[str, set[str]]:
    """For each step, every step it depends on directly or transitively."""
    upstream = Upstream(graph)
    return {node: set(upstream.of(node)) for node in graph}


class Upstream:
    """Which steps lie upstream of which: bit masks built once in topological order (a chain
    of 8,000 steps costs 8,000 big-int operations, not 32 million set insertions); steps caught
    in a cycle fall back to a search of their own."""

    def __init__(self, graph: Mapping[str, list[str]]) -> None:
        self.graph = graph
        self.names = list(graph)
        self.bit = {n: 1 << i for i, n in enumerate(self.names)}
        remaining = {n: len(set(graph[n])) for n in graph}
        children: dict[str, list[str]] = {n: [] for n in graph}
        for n in graph:
            for d in set(graph[n]):
                if d in children:
                    children[d].append(n)
        ready = [n for n, k in remaining.items() if k == 0]
        self.mask: dict[str, int] = {}
        while ready:
            n = ready.pop()
            m = 0
            for d in graph[n]:
                m |= self.bit[d] | self.mask[d]
            self.mask[n] = m
            for c in children[n]:
                remaining[c] -= 1
                if remaining[c] == 0:
                    ready.append(c)

    def _search(self, node: str) -> int:
        seen = 0
        stack = list(self.graph.get(node, []))
        while stack:
            dep = stack.pop()
            if dep not in self.bit or seen & self.bit[dep]:
                continue
            seen |= self.bit[dep]
            stack.extend(self.graph.get(dep, []))
        return seen & ~self.bit.get(node, 0)

    def mask_of(self, node: str) -> int:
        if node not in self.mask:
            self.mask[node] = self._search(node)
        return self.mask[node]

    def contains(self, node: str, ref: str) -> bool:
        """Whether ``ref`` is upstream of ``node``."""
        return ref in self.bit and bool(self.mask_of(node) & self.bit[ref])

    def of(self, node: str) -> list[str]:
        m, out = self.mask_of(node), []
        while m:
            low = m & -m
            out.append(self.names[low.bit_length() - 1])
            m ^= low
        return out


class _Visible:
    """The steps whose outcome ``sid`` may read: its upstream, and in sequential mode every
    earlier step (they have settled before it starts). A membership test, never a set."""

    def __init__(
        self, sid: str, i: int, upstream: Upstream, index: dict[str, int], sequential: bool
    ) -> None:
        self.sid, self.i, self.upstream, self.index, self.sequential = (
            sid,
            i,
            upstream,
            index,
            sequential,
        )

    def __contains__(self, ref: object) -> bool:
        if not isinstance(ref, str):
            return False
        if self.sequential and self.index.get(ref, self.i) < self.i:
            return True
        return self.upstream.contains(self.sid, ref)


class _Plus:
    """``visible`` and one more step (a compensation may read its own step's output)."""

    def __init__(self, visible: _Visible, extra: str) -> None:
        self.visible, self.extra = visible, extra

    def __contains__(self, ref: object) -> bool:
        return ref == self.extra or ref in self.visible


def _check_expressions(
    steps: list[tuple[int, Mapping[str, Any]]],
    index: dict[str, int],
    graph: Mapping[str, list[str]],
    sequential: bool,
) -> Iterator[tuple[str, str]]:
    upstream = Upstream(graph)
    for i, s in steps:
        sid = s.get("id")
        if not isinstance(sid, str):
            continue
        visible = _Visible(sid, i, upstream, index, sequential)
        # A mapped step's params and when may read its item (``as``) and ``map.index``.
        roots: frozenset[str] = frozenset()
        mapping = s.get("map")
        if isinstance(mapping, Mapping):
            yield from _check_map(mapping, f"steps[{i}].map", sid, visible, index)
            name = mapping.get("as", "item")
            if isinstance(name, str) and MAP_AS.match(name) and name not in MAP_RESERVED:
                roots = frozenset({name, "map"})
        when = s.get("when")
        if isinstance(when, str) and when.strip():  # a blank one is the schema's to report
            try:
                expr = expressions.parse(when)
            except ExpressionError as exc:
                yield f"steps[{i}].when", exc.message
            else:
                yield from _check_paths(expr, f"steps[{i}].when", sid, visible, index, roots)
        params = s.get("params")
        if isinstance(params, Mapping):
            yield from _check_templates(params, f"steps[{i}].params", sid, visible, index, roots)
        comp = s.get("compensate")
        if isinstance(comp, Mapping) and isinstance(comp.get("params"), Mapping):
            # A compensation runs after its step completed, so it may read the step's own output.
            yield from _check_templates(
                comp["params"],
                f"steps[{i}].compensate.params",
                sid,
                _Plus(visible, sid),
                index,
                roots,  # an item's compensation reads its item and map.index too
            )


def _check_templates(
    params: Mapping[str, Any],
    prefix: str,
    sid: str,
    visible: Container[str],
    index: dict[str, int],
    roots: frozenset[str] = frozenset(),
) -> Iterator[tuple[str, str]]:
    for path, text in expressions.strings(params, prefix):
        if "{{" not in text:
            continue
        try:
            template = expressions.Template.parse(text)
        except ExpressionError as exc:
            yield path, exc.message
            continue
        for expr in template.expressions:
            yield from _check_paths(expr, path, sid, visible, index, roots)


def _check_paths(
    expr: expressions.Expression,
    path: str,
    sid: str,
    visible: Container[str],
    index: dict[str, int],
    roots: frozenset[str] = frozenset(),
) -> Iterator[tuple[str, str]]:
    for chain in expr.paths():
        root = chain[0]
        if root in roots:
            if root == "map" and (len(chain) < 2 or chain[1] != "index"):
                yield path, "map has one field: map.index (the item's position, from 0)"
            continue
        if root not in ROOT_NAMES:
            extra = "".join(f", {r}" for r in sorted(roots - {"map"})) + (
                ", map.index" if roots else ""
            )
            yield (
                path,
                f"unknown name '{root}' (names: inputs, steps.<id>.output, steps.<id>.status, "
                f"run.id{extra})",
            )
            continue
        if root == "run" and len(chain) > 1 and chain[1] not in RUN_FIELDS:
            yield path, f"run has no field '{chain[1]}' (fields: {', '.join(sorted(RUN_FIELDS))})"
        if root != "steps":
            continue
        if len(chain) < 2:
            yield path, "'steps' must be followed by a step id, e.g. steps.load.output"
            continue
        ref = chain[1]
        if ref not in index:
            hint = _closest(str(ref), index)
            yield path, f"unknown step '{ref}'" + (f" (did you mean '{hint}'?)" if hint else "")
        elif len(chain) > 2 and chain[2] not in STEP_FIELDS:
            yield path, f"steps.{ref} has no field '{chain[2]}' (fields: output, status)"
        elif ref == sid and not path.split(".", 1)[-1].startswith("compensate"):
            yield path, f"step '{sid}' cannot read its own output"
        elif ref not in visible:
            yield (
                path,
                f"step '{ref}' is not upstream of '{sid}': add it to depends_on to read its {chain[2] if len(chain) > 2 else 'output'}",
            )


MAP_AS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
MAP_RESERVED = ROOT_NAMES | {"map"}


def _check_map(
    mapping: Mapping[str, Any],
    prefix: str,
    sid: str,
    visible: Container[str],
    index: dict[str, int],
) -> Iterator[tuple[str, str]]:
    """``map``: ``over`` is one template read like any expression of the step (upstream steps,
    inputs, run); ``as`` a name that does not shadow another; the schema checks the types."""
    name = mapping.get("as", "item")
    if isinstance(name, str):
        if not MAP_AS.match(name):
            yield (
                f"{prefix}.as",
                f"'{name}' is not a valid name (letters, digits, _; not first a digit)",
            )
        elif name in MAP_RESERVED:
            yield (
                f"{prefix}.as",
                f"'{name}' would shadow the name {name} (reserved: {', '.join(sorted(MAP_RESERVED))})",
            )
    over = mapping.get("over")
    if not isinstance(over, str) or not over.strip():
        return  # the schema reports it
    if "{{" not in over:
        yield (
            f"{prefix}.over",
            'must be a template that gives a list, e.g. "{{ steps.list_files.output.files }}"',
        )
        return
    try:
        template = expressions.Template.parse(over)
    except ExpressionError as exc:
        yield f"{prefix}.over", exc.message
        return
    for expr in template.expressions:
        yield from _check_paths(expr, f"{prefix}.over", sid, visible, index)


def _check_plugins(
    steps: list[tuple[int, Mapping[str, Any]]], catalog: Mapping[str, Any]
) -> Iterator[tuple[str, str]]:
    for i, s in steps:
        yield from _check_call(s, f"steps[{i}]", catalog)
        comp = s.get("compensate")
        if isinstance(comp, Mapping):
            yield from _check_call(comp, f"steps[{i}].compensate", catalog)


def _check_call(
    s: Mapping[str, Any], path: str, catalog: Mapping[str, Any]
) -> Iterator[tuple[str, str]]:
    plugin, method = s.get("plugin"), s.get("method", "run")
    if not isinstance(plugin, str) or not isinstance(method, str):
        return
    methods = catalog.get(plugin)
    if methods is None:
        yield f"{path}.plugin", f"no plugin '{plugin}'" + _alternatives(plugin, catalog, "plugins")
        return
    info = methods.get(method)
    if info is None:
        yield (
            f"{path}.method",
            f"plugin '{plugin}' has no method '{method}'"
            + _alternatives(method, methods, "methods"),
        )
        return
    raw_params = s.get("params")
    params: Mapping[str, Any] = raw_params if isinstance(raw_params, Mapping) else {}
    for name in info.get("required", []):
        if name not in params:
            yield (
                f"{path}.params",
                f"missing required parameter '{name}' of {plugin}.{method} (parameters: {', '.join(info.get('params', []))})",
            )
    if not info.get("accepts_any"):
        allowed = set(info.get("params", []))
        for name in params:
            if name not in allowed:
                close = _suggest(name, allowed, 1)
                yield (
                    f"{path}.params.{name}",
                    f"unknown parameter of {plugin}.{method}"
                    + (
                        did_you_mean(close)
                        or f" (parameters: {', '.join(info.get('params', [])) or 'none'})"
                    ),
                )


def _alternatives(name: str, known: Mapping[str, Any], what: str) -> str:
    """What to write instead of an unknown plugin or method: the closest names (at most three),
    else every name when there are few, else how many there are and where to see them."""
    close = _suggest(name, known)
    if close:
        return did_you_mean(close)
    if len(known) <= MAX_LISTED:
        listing = ", ".join(sorted(known)) or "none"
        return f"; registered: {listing}" if what == "plugins" else f" (methods: {listing})"
    whose = "registered plugins" if what == "plugins" else "methods of the plugin"
    return (
        f"; none of the {len(known)} {whose} has a similar name (`canvasflow plugins` lists them)"
    )
