"""Concurrency slots in the hot state: the part of :class:`RunState` (runstate.py) that asks
lua/admit.lua for a run's slot and reads a waiting run's place (docs/design.md, "Concurrency
slots"). Releasing a slot is in the scripts that end a run (transition.lua, restart.lua)."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from orchestrator.keys import Keys
from orchestrator.records import text


class SlotGroup(NamedTuple):
    """One concurrency group: its hash (keys.py conc_group) and what the scripts record in it."""

    name: str
    index_key: str
    workflow: str
    key: str
    limit: int


class Admission(NamedTuple):
    """What admit.lua decided: verdict (admitted, waiting, cancelled, filled, gone, refused),
    the runs ahead in the queue, the run to cancel for this one (cancel_in_progress) or '', and
    every run given a slot (to dispatch)."""

    verdict: str
    ahead: int
    victim: str
    admitted: list[str]


# Admission.verdict of an idempotent submit (claim) that found a run holding its key: nothing was
# written, and ``admitted`` is that run's id alone (Dispatcher.start).
DUPLICATE = "duplicate"

# A waiting run's place in its queue: priority first (docs/design.md, "Concurrency slots").
SLOT_RANK = {"high": 1, "normal": 2, "low": 3}


class SlotState:
    """Mixed into RunState: ``self.r``, ``self.keys``, the scripts and the run key's head and
    tail are RunState's."""

    r: Any
    keys: Keys
    maxlen: int
    state_ttl: int
    _admit: Any
    _run_head: str
    _run_tail: str

    def slot_group(self, workflow: str, key: str, limit: int) -> SlotGroup:
        k = self.keys
        return SlotGroup(k.conc_group(workflow, key), k.conc_index(workflow), workflow, key, limit)

    def admit(
        self, run_id: str, group: SlotGroup, *, strategy: str, priority: str, reason: str = ""
    ) -> Admission:
        """Ask for a slot in ``group`` for a PENDING run (run_id '': only reclaim and admit)."""
        k = self.keys
        res = self._admit(
            keys=[
                group.name,
                k.conc_active(group.name),
                k.conc_waiting(group.name),
                group.index_key,
                k.conc_seq,
                k.run(run_id),
                k.steps(run_id),
                k.events,
                k.live,
                k.settled_channel(run_id),
            ],
            args=[
                run_id,
                group.limit,
                strategy,
                SLOT_RANK.get(priority, 2),
                f"{time.time():.6f}",
                self.maxlen,
                self.state_ttl,
                self._run_head,
                self._run_tail,
                group.workflow,
                group.key,
                reason,
            ],
        )
        out = [text(x) for x in res]
        return Admission(out[0], int(out[1] or 0), out[2], out[3:])

    def waiting(self, run_id: str) -> tuple[str, str, int] | None:
        """(group, key, runs ahead) of a run waiting for a slot, or None."""
        group, key = self.r.hmget(self.keys.run(run_id), "conc_group", "conc_key")
        if group is None:
            return None
        rank = self.r.zrank(self.keys.conc_waiting(text(group)), run_id)
        return None if rank is None else (text(group), text(key), int(rank))  # type: ignore[arg-type]
