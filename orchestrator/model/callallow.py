"""Who may run what: the fleet's allow-list for ``builtin.call`` (CANVASFLOW_CALL_ALLOW).

``builtin.call`` imports and calls ``module:function``. Without a limit, anyone who may submit
a definition runs any code on every worker (``os:system``, ``builtins:eval``). So a worker
calls only functions of modules its allow-list names, checked here by one rule used in three
places: the settings (entries), validation at submit (against the allow-lists the workers
publish in their catalog) and the worker itself, before it imports anything.

The rule (docs/operations.md, "CANVASFLOW_CALL_ALLOW"):

- an entry ``pkg.mod`` allows exactly the module ``pkg.mod``: not ``pkg.mod.sub``, not
  ``pkg.module``, not ``pkg``;
- an entry ``pkg.*`` allows ``pkg`` and every module below it (``pkg.a``, ``pkg.a.b``), never
  ``pkg2`` (mypy's per-module pattern);
- a bare ``*`` is refused: "every module" is what the list exists to prevent;
- the empty list (the default) refuses ``builtin.call`` entirely.

A function is named ``module:name``: ``module`` a dotted name of ASCII identifiers, ``name``
one identifier that does not start with ``_``. No attribute paths (``mod:os.system``), no
dunders (``mod:__builtins__``), and never a template: what runs must be readable in the
definition and checkable before the run starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from orchestrator.errors import ConfigurationError

SETTING = "CANVASFLOW_CALL_ALLOW"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*\Z")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_ENTRY = re.compile(rf"{_IDENT}(?:\.{_IDENT})*(?:\.\*)?\Z")


def parse_allow(raw: str | Iterable[str]) -> tuple[str, ...]:
    """The entries of an allow-list given as ``"a, b.*"`` or as a list; ConfigurationError
    names the first bad entry."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    entries: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(f"{SETTING}: {item!r} is not a module name")
        entry = item.strip()
        if not entry:
            continue
        if entry == "*" or not _ENTRY.match(entry):
            raise ConfigurationError(
                f"{SETTING}: {entry!r} is not a module name or a module prefix; expected names "
                "like 'mypackage.jobs' (that module only) or 'mypackage.*' (mypackage and every "
                "module below it), separated by commas. '*' (every module) is not allowed: list "
                "the modules whose functions definitions may call"
            )
        if entry not in entries:
            entries.append(entry)
    return tuple(entries)


def allows(allow: Iterable[str], module: str) -> bool:
    """True when ``module`` is allowed by one of the entries (the rule in the module docstring)."""
    for entry in allow:
        if entry.endswith(".*"):
            base = entry[:-2]
            if module == base or module.startswith(base + "."):
                return True
        elif module == entry:
            return True
    return False


def describe(allow: Iterable[str]) -> str:
    """How an allow-list reads in an error: ``CANVASFLOW_CALL_ALLOW=a,b`` or that it is empty."""
    entries = list(allow)
    if not entries:
        return f"{SETTING} is empty, so builtin.call is refused entirely"
    return f"{SETTING}={','.join(entries)}"


def parse_function(spec: Any) -> tuple[str, str]:
    """``(module, name)`` of a ``"module:name"`` spec; ValueError says what is wrong with it."""
    if isinstance(spec, str) and "{{" in spec:
        raise ValueError(
            f"function {spec!r} is a template: builtin.call runs only functions "
            "named literally ('module:function'), so that what a run may execute is "
            "checked against the workers' allow-list before it starts"
        )
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(
            f"function must be a string 'module:function', got {spec!r}: expected 'module:function'"
        )
    module, name = (part.strip() for part in spec.split(":"))
    if not module or not name:
        raise ValueError(f"function {spec!r}: expected 'module:function'")
    if not _MODULE.match(module):
        raise ValueError(
            f"function {spec!r}: '{module}' is not a module name "
            "(expected dotted identifiers like mypackage.jobs)"
        )
    if not _NAME.match(name):
        if "." in name:
            why = "attribute paths are not followed; name a function the module defines"
        elif name.startswith("_"):
            why = "names starting with '_' (private names, dunders) are never called"
        else:
            why = "expected one identifier"
        raise ValueError(f"function {spec!r}: '{name}' is not a function name: {why}")
    return module, name


def refusal(
    spec: str, module: str, allow: Iterable[str], where: str = "this worker's call allow-list"
) -> str:
    """The message for a function whose module is not allowed: what, the setting, the way out."""
    return (
        f"builtin.call may not run {spec!r}: module '{module}' is not in {where} "
        f"({describe(allow)}). To allow it, add '{module}' to {SETTING} (comma-separated) "
        "in the environment of the workers that run the step, or give the step a plugin "
        "instead (docs/operations.md, CANVASFLOW_CALL_ALLOW)"
    )


# ---------------------------------------------------------------------------------------------
# The fleet's allow-lists, as published in the workers' catalog entries, and the submit check
# ---------------------------------------------------------------------------------------------


def fleet_allow(entries: Iterable[Mapping[str, Any]]) -> dict[str, list[list[str]]]:
    """``{queue: [allow-list, ...]}``: the distinct allow-lists of the online workers consuming
    each queue (a worker that publishes none allows nothing)."""
    by_queue: dict[str, list[list[str]]] = {}
    for entry in entries:
        allow = [str(e) for e in entry.get("call_allow") or []]
        for queue in entry.get("queues") or []:
            lists = by_queue.setdefault(str(queue), [])
            if allow not in lists:
                lists.append(allow)
    return {q: sorted(lists) for q, lists in sorted(by_queue.items())}


def check_steps(
    data: Mapping[str, Any], catalog: Mapping[str, Any] | None
) -> Iterator[tuple[str, str]]:
    """``(path, message)`` for every ``builtin.call`` step (or compensation) whose function is
    malformed, a template, or (with a catalog) not allowed on the workers of its queue."""
    steps = data.get("steps")
    if not isinstance(steps, list):
        return
    raw_defaults = data.get("defaults")
    defaults: Mapping[str, Any] = raw_defaults if isinstance(raw_defaults, Mapping) else {}
    raw_queue = defaults.get("queue")
    default_queue: str = raw_queue if isinstance(raw_queue, str) else "default"
    call_info = catalog.get("builtin", {}).get("call") if catalog is not None else None
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            continue
        step_queue = step.get("queue")
        queue: str = step_queue if isinstance(step_queue, str) else default_queue
        yield from _check_one(step, f"steps[{i}]", queue, catalog, call_info)
        comp = step.get("compensate")
        if isinstance(comp, Mapping):
            own_queue = comp.get("queue")
            comp_queue: str = own_queue if isinstance(own_queue, str) else queue
            yield from _check_one(comp, f"steps[{i}].compensate", comp_queue, catalog, call_info)


def _check_one(
    step: Mapping[str, Any],
    path: str,
    queue: str,
    catalog: Mapping[str, Any] | None,
    call_info: Any,
) -> Iterator[tuple[str, str]]:
    if step.get("plugin") != "builtin" or step.get("method", "run") != "call":
        return
    params = step.get("params")
    if not isinstance(params, Mapping) or "function" not in params:
        return  # a missing required parameter is the plugin check's to report
    spec = params["function"]
    path = f"{path}.params.function"
    try:
        module, _ = parse_function(spec)
    except ValueError as exc:
        yield path, str(exc)
        return
    if catalog is None or not isinstance(call_info, Mapping):
        return  # no worker online (or no builtin.call): the worker checks it when it runs
    by_queue = call_info.get("allow")
    by_queue = by_queue if isinstance(by_queue, Mapping) else {}
    # Any worker consuming the step's queue may take it, so each of them must allow it. When
    # none consumes it yet, every online worker's list is the best evidence there is.
    lists = by_queue.get(queue)
    where = f"the call allow-list of the workers on queue '{queue}'"
    if not lists:
        lists = [lst for group in by_queue.values() for lst in group] or [[]]
        where = f"the call allow-list of the online workers (none consumes queue '{queue}')"
    for allow in lists:
        if not allows(allow, module):
            yield path, refusal(spec, module, allow, where=where)
            return
