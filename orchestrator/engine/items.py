"""A step of a run as the Python client reads it beyond the run's snapshot: the items of a
mapped step, paged and filtered, from the audit store (``run.step("resize").items(...)``).

The hot state keeps items compactly for the workers; their records (status, attempts, output,
logs) are the audit store's, where the recorder writes them a few milliseconds after the fact.
"""

from __future__ import annotations

from orchestrator.audit import queries
from orchestrator.audit.items import item_id
from orchestrator.audit.store import AuditStore


class StepHandle:
    """One step of one run: ``items()`` pages a mapped step's items, ``item(i)`` reads one in
    full, ``counts()`` gives its items by status."""

    def __init__(self, database_url: str, run_id: str, step_id: str) -> None:
        self.database_url = database_url  # the audit store's
        self.run_id = run_id
        self.id = step_id

    def __repr__(self) -> str:
        return f"<Step {self.run_id}/{self.id}>"

    def _store(self) -> AuditStore:
        return AuditStore(self.database_url)

    def items(
        self, status: str | None = None, offset: int = 0, limit: int = 100
    ) -> queries.ItemPage:
        """A page of the step's items in item order (only those at ``status`` if given), with
        how many match (``total``) and the step's counts (``counts``). Raises ValueError for a
        bad status, offset or limit (1 to 1000); UnknownRun / UnknownStep when the store has
        neither."""
        store = self._store()
        try:
            return queries.items(
                store, self.run_id, self.id, status=status, offset=offset, limit=limit
            )
        finally:
            store.dispose()

    def item(self, index: int) -> queries.StepRecord:
        """Item ``index`` with every attempt (input, output, error, traceback)."""
        store = self._store()
        try:
            return queries.step_record(store, self.run_id, item_id(self.id, index))
        finally:
            store.dispose()

    def counts(self) -> queries.ItemCounts | None:
        """The step's items by status; None when it has no items (not mapped, or not expanded)."""
        store = self._store()
        try:
            return queries.item_counts(store, self.run_id, [self.id]).get(self.id)
        finally:
            store.dispose()
