"""Child runs in the hot state: the part of :class:`RunState` (runstate.py) that links a
sub-workflow step to its child run and keeps the continuation that joins the parent when the
child ends (workers/subrun.py; docs/design.md, "Sub-workflow steps")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from orchestrator.keys import Keys
from orchestrator.records import RunRecord, run_field_names, text


class ChildState:
    """Mixed into RunState: ``self.r``, ``self.keys``, ``self.state_ttl`` are RunState's."""

    r: Any
    keys: Keys
    state_ttl: int

    def claim_child(
        self, run_id: str, step: str, new_id: str
    ) -> tuple[RunRecord | None, str, bool]:
        """For a sub-workflow step, in one round trip: the parent run's depth, priority and tags;
        the step's child run id (SET NX of ``new_id``: a redelivered or retried copy of the step
        finds the same child); and whether that child run exists already (asked only of a child id
        claimed before: one round trip less for the common first claim)."""
        key = self.keys.child_of(run_id, step)
        names = run_field_names(("depth", "priority", "tags_json"))
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.keys.run(run_id), names)
        pipe.set(key, new_id, nx=True, ex=self.state_ttl)
        pipe.get(key)
        values, _, current = pipe.execute()
        child = text(current) or new_id
        parent = (
            RunRecord.from_hash(run_id, dict(zip(names, values, strict=True)))
            if values[0] is not None or values[1] is not None
            else None
        )
        if child == new_id:  # claimed now: a fresh random id names no run yet
            return parent, child, False
        return parent, child, bool(self.r.exists(self.keys.run(child)))

    def forget_children(self, run_id: str, steps: Iterable[str]) -> None:
        """An operator retry resets these steps: a reset sub-workflow step starts a fresh child."""
        names = [self.keys.child_of(run_id, s) for s in steps]
        if names:
            self.r.delete(*names)

    def add_child(self, run_id: str, child_id: str) -> None:
        key = self.keys.children(run_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.sadd(key, child_id)
        pipe.expire(key, self.state_ttl)
        pipe.execute()

    def relink_child(self, run_id: str, step: str, child_id: str) -> None:
        """Recovery (recover.py): the child run ``step`` of a recovered parent started, which is
        in Redis again, claimed for that step once more and listed among the parent's children;
        the re-sent step then waits on it instead of starting another."""
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.keys.child_of(run_id, step), child_id, ex=self.state_ttl)
        pipe.sadd(self.keys.children(run_id), child_id)
        pipe.expire(self.keys.children(run_id), self.state_ttl)
        pipe.execute()

    def children(self, run_id: str) -> list[str]:
        """The child runs the run's sub-workflow steps started (every one, retried ones too)."""
        return sorted(text(c) for c in self.r.smembers(self.keys.children(run_id)))

    def await_child(
        self, child_id: str, join: str, run_id: str, step: str, owner: str, ttl: int
    ) -> tuple[str | None, str | None]:
        """Store what continues the parent when the child ends, and hold the parent step's lease
        for as long as the child may run (the step is alive: no watchdog or settle takes it for
        a lost worker). Returns the statuses of the child and of the parent, read after."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.keys.child_join(child_id), join, ex=self.state_ttl)
        pipe.set(self.keys.lease(run_id, step), owner, ex=ttl)
        pipe.hget(self.keys.run(child_id), "status")
        pipe.hget(self.keys.run(run_id), "status")
        _, _, child, parent = pipe.execute()
        return (text(child) if child is not None else None), (
            text(parent) if parent is not None else None
        )

    def peek_join(self, child_id: str) -> str | None:
        raw = self.r.get(self.keys.child_join(child_id))
        return text(raw) if raw is not None else None

    def take_join(self, child_id: str) -> str | None:
        """The parent's continuation, taken (GETDEL): whoever takes it sends it, once."""
        raw = self.r.execute_command("GETDEL", self.keys.child_join(child_id))
        return text(raw) if raw is not None else None

    def settle_head(self, run_id: str) -> tuple[str, str, str, str, str] | None:
        """(status, epoch, halt, has_outputs, parent_run) in one HMGET, or None if unknown."""
        values = self.r.hmget(
            self.keys.run(run_id), "status", "epoch", "halt", "has_outputs", "parent_run"
        )
        if values[0] is None:
            return None
        status, epoch, halt, outputs, parent = (text(v) for v in values)
        return status, epoch, halt, outputs, parent
