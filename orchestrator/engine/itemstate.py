"""The hot state of mapped steps' items: the part of :class:`RunState` (runstate.py) that stores
a mapped step's element list, hands items to lanes (``max_parallel``) and reads items back.

An item's own fields (status, attempts, lease, output...) are a step's, in the run's ``items``
hash instead of ``steps`` (keys.py ``step_hash``): the begin/finish/run_once scripts of steps run
items unchanged, so leases, lost attempts and retries work for them as for steps. What is
item-only lives here. docs/design.md, "Mapped steps".
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.keys import Keys, item_id, item_of, map_field, step_field
from orchestrator.records import text

READ_CHUNK = 2000  # fields per HMGET when reading a mapped step's items


def _now() -> str:
    return f"{time.time():.6f}"


def digest(elements: Sequence[str]) -> str:
    """What tells one element list from another (the same list expanded again keeps items)."""
    h = hashlib.sha1(usedforsecurity=False)
    for e in elements:
        h.update(e.encode())
        h.update(b"\x00")
    return h.hexdigest()


def item_runs(order: list[str]) -> list[tuple[int, int]]:
    """(start, length) of each run of two or more consecutive items of one mapped step in a
    compensation order: one chain link each, the link replacing itself item by item (a chain
    of 10,000 links would carry the rest of the chain in each of its messages)."""
    runs, i = [], 0
    while i < len(order):
        base, j = item_of(order[i]), i + 1
        while base and j < len(order) and (item_of(order[j]) or ("",))[0] == base[0]:
            j += 1
        if j - i > 1:
            runs.append((i, j - i))
        i = j
    return runs


class ItemState:
    """Mixed into RunState: ``self.r``, ``self.keys``, ``self.maxlen`` are RunState's."""

    r: Any
    keys: Keys
    maxlen: int

    def _load_item_scripts(self, load: Any) -> None:
        self._expand = load("expand")
        self._claim_item = load("claim_item")
        self._close_items = load("close_items")
        self._items_live = load("items_live")

    def expand(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        owner: str,
        elements: Sequence[str],
        max_parallel: int = 0,
    ) -> tuple[str, int, list[int]]:
        """Store ``elements`` (JSON texts) of RUNNING mapped ``step`` once and get this
        dispatch's items to run: (verdict 'ok'|'again'|'stale'|'lost'|'gone', n, indices)."""
        k = self.keys
        res = self._expand(
            keys=[
                k.run(run_id),
                k.steps(run_id),
                k.items(run_id),
                k.map_data(run_id),
                k.events,
                k.lease(run_id, step),
                k.completed(run_id),
            ],
            args=[
                run_id,
                step,
                str(epoch),
                _now(),
                self.maxlen,
                owner,
                digest(elements),
                k.lease(run_id, ""),
                max_parallel,
                *elements,
            ],
        )
        verdict = text(res[0])
        if len(res) < 3:
            return verdict, 0, []
        return verdict, int(text(res[1])), [int(text(x)) for x in res[3:]]

    def claim_item(self, run_id: str, step: str, epoch: int, after: str) -> int:
        """The next item index for a lane (-1: none left or the run stops; -2: stale)."""
        k = self.keys
        return int(
            self._claim_item(
                keys=[k.run(run_id), k.map_data(run_id)], args=[step, str(epoch), after]
            )
        )

    def element(self, run_id: str, step: str, index: int) -> str | None:
        """Element ``index`` (JSON text) of a mapped step's stored list."""
        v = self.r.hget(self.keys.map_data(run_id), map_field(step, index))
        return None if v is None else text(v)

    def stash_known(self, run_id: str, step: str, epoch: int, known: str) -> None:
        """The outcomes a mapped step received (JSON), for its items and its collector: they
        are stored once, not carried in every item message."""
        self.r.hset(self.keys.map_data(run_id), map_field(step, "known", epoch), known)

    def stashed_known(self, run_id: str, step: str, epoch: int) -> dict[str, Any]:
        v = self.r.hget(self.keys.map_data(run_id), map_field(step, "known", epoch))
        return json.loads(text(v)) if v is not None else {}

    def store_sequence(self, run_id: str, name: str, ids: Sequence[str]) -> None:
        """A list of item ids (a run of compensations), read one by one by position."""
        mapping = {map_field("@" + name, k): sid for k, sid in enumerate(ids)}
        for lo in range(0, len(ids), 5000):
            chunk = dict(list(mapping.items())[lo : lo + 5000])
            self.r.hset(self.keys.map_data(run_id), mapping=chunk)

    def sequence_item(self, run_id: str, name: str, position: int) -> str | None:
        v = self.r.hget(self.keys.map_data(run_id), map_field("@" + name, position))
        return None if v is None else text(v)

    def item_fields(self, run_id: str, step: str, n: int, names: Sequence[str]) -> list[list[str]]:
        """For each of ``names`` (item field names: status, output, error...), its value for
        items 0..n-1 ('' when absent), read in chunks in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        key = self.keys.items(run_id)
        for name in names:
            for lo in range(0, n, READ_CHUNK):
                pipe.hmget(
                    key,
                    [
                        step_field(item_id(step, i), name)
                        for i in range(lo, min(n, lo + READ_CHUNK))
                    ],
                )
        replies = pipe.execute() if n else []
        out: list[list[str]] = []
        per = (n + READ_CHUNK - 1) // READ_CHUNK
        for j in range(len(names)):
            values: list[str] = []
            for chunk in replies[j * per : (j + 1) * per]:
                values.extend(text(v) for v in chunk)
            out.append(values)
        return out

    def close_items(
        self, run_id: str, ids: Iterable[str], *, reason: str, lost: bool = False
    ) -> int:
        """Items of ``ids`` that never started (or, with ``lost``, lost their worker) end
        CANCELLED with ``reason``; returns how many."""
        ids = list(ids)
        if not ids:
            return 0
        k = self.keys
        closed = 0
        for lo in range(0, len(ids), 5000):
            closed += int(
                self._close_items(
                    keys=[k.run(run_id), k.items(run_id), k.events],
                    args=[
                        run_id,
                        _now(),
                        self.maxlen,
                        k.lease(run_id, ""),
                        "1" if lost else "0",
                        reason,
                        *ids[lo : lo + 5000],
                    ],
                )
            )
        return closed

    def items_live(self, run_id: str) -> dict[str, tuple[str, bool]]:
        """Every item of the run: id -> (status, holds a live lease)."""
        flat = self._items_live(keys=[self.keys.items(run_id)], args=[self.keys.lease(run_id, "")])
        return {
            text(flat[i]): (text(flat[i + 1]), text(flat[i + 2]) == "1")
            for i in range(0, len(flat), 3)
        }
