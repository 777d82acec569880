"""Concurrency limits: which group a run belongs to, and reading the groups' slots.

A workflow's ``concurrency`` (orchestrator/model/concurrency.py) puts each of its runs in a group
(its rendered key); at most ``limit`` runs of a group hold a slot. The slots are Redis state that
only Lua writes, through :class:`~orchestrator.engine.runstate.RunState`: ``admit.lua`` at
submit, ``transition.lua`` when a run stops holding one (every end: the slot cannot leak),
``restart.lua`` when an operator retries a run. docs/design.md, "Concurrency slots".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.engine.runstate import RunState
from orchestrator.engine.slotstate import SlotGroup
from orchestrator.model.definition import Definition
from orchestrator.records import RunRecord, text


def group_of(state: RunState, defn: Definition, inputs: Mapping[str, Any]) -> SlotGroup | None:
    """The run's group, or None for a workflow without a limit; a key that does not render is a
    DefinitionError at ``concurrency.key`` (raised before anything is written)."""
    conc = defn.concurrency
    if conc is None:
        return None
    return state.slot_group(defn.id, conc.render_key(inputs), conc.limit)


def group_of_run(state: RunState, run: RunRecord, defn: Definition) -> SlotGroup | None:
    """The group a recorded run was put in at submit (its key as rendered then)."""
    if defn.concurrency is None or not run.conc_group:
        return None
    return SlotGroup(
        run.conc_group,
        state.keys.conc_index(defn.id),
        defn.id,
        run.conc_key or "",
        defn.concurrency.limit,
    )


def display(workflow: str, key: str) -> str:
    """How a group is named to people: its key, or the workflow's id for the one group."""
    return key or workflow


def fill(state: RunState, group: str) -> list[str]:
    """Reclaim the stale slots of ``group`` (a group hash name) and admit waiting runs to the
    free ones; returns them (to dispatch)."""
    slot = SlotGroup(group, state.keys.conc_index(""), "", "", 0)
    return state.admit("", slot, strategy="queue", priority="normal").admitted


def places(state: RunState, runs: Mapping[str, str]) -> dict[str, str]:
    """For each run id -> its group: 'active' (holds a slot), 'waiting', or '' (neither)."""
    k = state.keys
    pipe = state.r.pipeline(transaction=False)
    for rid, group in runs.items():
        pipe.zscore(k.conc_active(group), rid)
        pipe.zscore(k.conc_waiting(group), rid)
    res = pipe.execute()
    out = {}
    for i, rid in enumerate(runs):
        active, waiting = res[2 * i], res[2 * i + 1]
        out[rid] = "active" if active is not None else "waiting" if waiting is not None else ""
    return out


def in_use(state: RunState, workflow: str) -> list[dict[str, Any]]:
    """The groups of ``workflow`` that hold or wait for a slot: key, limit, active (run ids,
    oldest admission first), in_use, waiting (how many), sorted by key."""
    r, k = state.r, state.keys
    groups = sorted(text(g) for g in r.smembers(k.conc_index(workflow)))
    pipe = r.pipeline(transaction=False)
    for g in groups:
        pipe.hmget(g, "key", "limit")
        pipe.zrange(k.conc_active(g), 0, -1)
        pipe.zcard(k.conc_waiting(g))
    res = pipe.execute()
    out = []
    for i in range(len(groups)):
        (key, limit), holders, waiting = res[3 * i : 3 * i + 3]
        if limit is None:
            continue  # emptied between the two reads
        active = [text(h) for h in holders]
        out.append(
            {
                "key": text(key),
                "limit": int(text(limit)),
                "in_use": len(active),
                "active": active,
                "waiting": int(waiting),
            }
        )
    return out
