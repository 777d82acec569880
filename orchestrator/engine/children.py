"""Child runs of sub-workflow steps, on the client side: operator actions that reach them, the
checks of registration (no cycle of references) and submit (every child workflow exists; its
version is pinned).

The worker side (starting a child, joining it) is workers/subrun.py; docs/design.md
"Sub-workflows" has the whole picture.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from orchestrator.engine.states import RunStatus
from orchestrator.errors import CanvasflowError, DefinitionError
from orchestrator.model import subflows
from orchestrator.model.definition import Definition

# ``control`` below is an orchestrator.engine.control.Control (which imports this module).
Control = Any
log = logging.getLogger(__name__)

# Children a pause or cancel of their parent reaches (a final child has nothing to stop).
ACTIVE = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PAUSING, RunStatus.PAUSED)


def _each(control: Control, run_id: str, action: str, fn: Callable[[str], Any]) -> None:
    for child in control.state.children(run_id):
        try:
            fn(child)
        except CanvasflowError as exc:  # it ended meanwhile: nothing to reach
            log.info(
                "canvasflow: %s of run %s did not reach child %s: %s", action, run_id, child, exc
            )


def pause(control: Control, run_id: str, actor: str) -> None:
    """A pause of the parent pauses its active children; a child paused before lets its
    parent's step go back to waiting (the parent's canvas can then settle PAUSED)."""

    def one(child: str) -> None:
        status = control.state.status(child)
        if status in (RunStatus.PENDING, RunStatus.RUNNING):
            control.pause(child, actor=actor, reason=f"its parent run {run_id} was paused")
        elif status == RunStatus.PAUSED:
            release(control, child)

    _each(control, run_id, "pause", one)


def resume(control: Control, run_id: str, actor: str) -> None:
    def one(child: str) -> None:
        if control.state.status(child) == RunStatus.PAUSED:
            control.resume(child, actor=actor, reason=f"its parent run {run_id} was resumed")

    _each(control, run_id, "resume", one)


def cancel(control: Control, run_id: str, actor: str, terminate: bool) -> None:
    def one(child: str) -> None:
        if control.state.status(child) in ACTIVE:
            control.cancel(
                child,
                actor=actor,
                reason=f"its parent run {run_id} was cancelled",
                terminate=terminate,
            )

    _each(control, run_id, "cancel", one)


def release(control: Control, child: str) -> None:
    """Send the parent's continuation that waits on ``child`` now (a paused child)."""
    raw = control.state.take_join(child)
    if raw is not None:
        control.dispatcher.app.signature(json.loads(raw)).apply_async()


# -- registration and submit ------------------------------------------------------------------


def refuse_cycle(defn: Definition, body: dict[str, Any], registered: Callable[..., Any]) -> None:
    """Refuse to register ``defn`` when its sub-workflow references, followed through the
    registered versions, lead back to it. ``registered(id, version)`` is the stored body of a
    version (the latest for None), or None."""

    def lookup(wf: str, version: str | None) -> list[tuple[str, str | None]] | None:
        stored = registered(wf, version)
        return subflows.references(stored) if stored else None

    cycle = subflows.find_reference_cycle(defn.id, subflows.references(body), lookup)
    if cycle:
        raise DefinitionError(
            [("steps", "sub-workflow cycle: " + " -> ".join(cycle))], f"workflow '{defn.id}'"
        )


def pin_versions(
    defn: Definition, versions: Callable[[str], list[str]], known: Callable[[], list[str]]
) -> Definition:
    """``defn`` with every sub-workflow step's version pinned to a registered one (the latest
    when it names none). An unknown workflow or version is a DefinitionError naming what is
    registered."""
    problems: list[tuple[str, str]] = []
    steps = list(defn.steps)
    for i, step in enumerate(steps):
        if not step.workflow:
            continue
        have = versions(step.workflow)
        if not have:
            listing = ", ".join(known()) or "none"
            problems.append(
                (
                    f"steps[{i}].workflow",
                    f"workflow '{step.workflow}' is not registered (registered: {listing})",
                )
            )
        elif step.version is None:
            steps[i] = replace(step, version=have[-1])
        elif step.version not in have:
            problems.append(
                (
                    f"steps[{i}].version",
                    f"workflow '{step.workflow}' has no version {step.version} "
                    f"(registered: {', '.join(have)})",
                )
            )
    if problems:
        raise DefinitionError(problems, f"workflow '{defn.id}'")
    return replace(defn, steps=tuple(steps))
