"""Items of mapped steps: a run's mapped steps with their item counts by status (one GROUP BY
for the whole run), a page of one step's items filtered by status, and one item in full.

An item is a row of ``cf_steps`` with ``item_of`` set (orchestrator/audit/items.py); the reads
here go through the index on (run_id, item_of, status).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from orchestrator.audit.items import parse_item
from orchestrator.audit.models import runs, step_attempts, step_logs, steps
from orchestrator.audit.queries.common import loads
from orchestrator.audit.store import AuditStore
from orchestrator.errors import UnknownRun, UnknownStep

MAX_PAGE = 1000  # items per page at most
STEP_STATUSES = (
    "PENDING",
    "RUNNING",
    "RETRYING",
    "COMPLETED",
    "FAILED",
    "SKIPPED",
    "CANCELLED",
    "COMPENSATING",
    "COMPENSATED",
)


@dataclass(frozen=True)
class ItemCounts:
    """A mapped step's items: ``total`` (the count its expansion announced, else the items
    recorded so far) and how many are at each status (statuses with none left out)."""

    total: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def recorded(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "counts": dict(sorted(self.counts.items()))}


@dataclass(frozen=True)
class ItemRecord:
    id: str  # resize[3]
    index: int
    status: str
    attempts: int
    started_at: float | None
    finished_at: float | None
    duration: float | None
    worker: str | None
    error: str | None
    reason: str | None
    progress: float | None
    progress_message: str | None
    output: Any


@dataclass(frozen=True)
class ItemPage:
    step: str
    status: str | None
    offset: int
    limit: int
    total: int  # items matching the filter
    items: tuple[ItemRecord, ...]
    counts: ItemCounts


def counts_in(
    conn: Connection, run_id: str, mapped: Iterable[str] | None = None
) -> dict[str, ItemCounts]:
    """{mapped step: its item counts} of a run: one GROUP BY over the items, one read of the
    mapped steps' announced totals. ``mapped``: only these steps (None: every step that has
    items or a total)."""
    q = (
        select(steps.c.item_of, steps.c.status, func.count())
        .where(steps.c.run_id == run_id, steps.c.item_of.is_not(None))
        .group_by(steps.c.item_of, steps.c.status)
    )
    wanted = None if mapped is None else list(mapped)
    if wanted is not None:
        if not wanted:
            return {}
        q = q.where(steps.c.item_of.in_(wanted))
    by_step: dict[str, dict[str, int]] = {}
    for of, status, n in conn.execute(q):
        by_step.setdefault(of, {})[status] = int(n)
    t = select(steps.c.step_id, steps.c.items_total).where(
        steps.c.run_id == run_id, steps.c.items_total.is_not(None)
    )
    if wanted is not None:
        t = t.where(steps.c.step_id.in_(wanted))
    totals = {sid: int(n) for sid, n in conn.execute(t)}
    out = {}
    for sid in sorted(set(by_step) | set(totals)):
        counts = by_step.get(sid, {})
        recorded = sum(counts.values())
        total = max(totals.get(sid, recorded), recorded)
        if total and recorded < total:
            # announced, not recorded yet: the items that have not emitted an event are waiting
            counts = {**counts, "PENDING": counts.get("PENDING", 0) + total - recorded}
        out[sid] = ItemCounts(total, counts)
    return out


def item_counts(
    store: AuditStore, run_id: str, mapped: Iterable[str] | None = None
) -> dict[str, ItemCounts]:
    """See :func:`counts_in`."""
    with store.connect() as conn:
        return counts_in(conn, run_id, mapped)


def check_page(status: str | None, offset: int, limit: int) -> str | None:
    """The status filter in upper case; a clear ValueError for a bad status, offset or limit."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset: must be an integer >= 0, got {offset!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit: must be an integer from 1 to {MAX_PAGE}, got {limit!r}")
    if status is None or status == "":
        return None
    st = str(status).upper()
    if st not in STEP_STATUSES:
        raise ValueError(
            f"status: {status!r} is not a step status (one of {', '.join(STEP_STATUSES)})"
        )
    return st


def items(
    store: AuditStore,
    run_id: str,
    step_id: str,
    *,
    status: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> ItemPage:
    """A page of a mapped step's items in item order, optionally only those at ``status``,
    with how many match and the step's counts. Raises ValueError for a bad filter or page,
    UnknownRun / UnknownStep for a run or step the store does not have."""
    st = check_page(status, offset, limit)
    with store.connect() as conn:
        if conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is None:
            raise UnknownRun(run_id)
        counts = counts_in(conn, run_id, [step_id]).get(step_id, ItemCounts(0))
        if not counts.recorded and not counts.total:
            known = conn.execute(
                select(steps.c.step_id).where(steps.c.run_id == run_id, steps.c.step_id == step_id)
            ).first()
            if known is None:
                raise UnknownStep(run_id, step_id)
        where = [steps.c.run_id == run_id, steps.c.item_of == step_id]
        if st is not None:
            where.append(steps.c.status == st)
        rows = conn.execute(
            select(steps).where(*where).order_by(steps.c.item_index).offset(offset).limit(limit)
        ).all()
        outputs = _outputs(
            conn,
            run_id,
            [r.step_id for r in rows if r.status in ("COMPLETED", "COMPENSATED", "COMPENSATING")],
        )
    recorded_matching = (
        counts.recorded if st is None else sum(n for s, n in counts.counts.items() if s == st)
    )
    total = counts.total if st is None else recorded_matching
    return ItemPage(
        step=step_id,
        status=st,
        offset=offset,
        limit=limit,
        total=total,
        items=tuple(_item(r, outputs.get(r.step_id)) for r in rows),
        counts=counts,
    )


def _outputs(conn: Connection, run_id: str, ids: list[str]) -> dict[str, Any]:
    """The output of each of ``ids``: its newest completed attempt's."""
    if not ids:
        return {}
    a = step_attempts.c
    out: dict[str, Any] = {}
    for sid, text in conn.execute(
        select(a.step_id, a.output)
        .where(a.run_id == run_id, a.step_id.in_(ids), a.status == "COMPLETED")
        .order_by(a.step_id, a.attempt)
    ):
        out[sid] = loads(text)
    return out


def _item(r: Any, output: Any) -> ItemRecord:
    return ItemRecord(
        id=r.step_id,
        index=r.item_index,
        status=r.status,
        attempts=r.attempts,
        started_at=r.started_at,
        finished_at=r.finished_at,
        duration=r.duration,
        worker=r.worker,
        error=r.error,
        reason=r.reason,
        progress=r.progress,
        progress_message=r.progress_message,
        output=output,
    )


def item_logs(store: AuditStore, run_id: str, item: str, limit: int = 500) -> list[dict[str, Any]]:
    """An item's log lines, oldest first (at most ``limit``)."""
    q = (
        select(step_logs)
        .where(step_logs.c.run_id == run_id, step_logs.c.step_id == item)
        .order_by(step_logs.c.seq, step_logs.c.line)
        .limit(max(1, min(limit, 10_000)))
    )
    with store.connect() as conn:
        return [
            {
                "seq": r.seq,
                "line": r.line,
                "step": r.step_id,
                "ts": r.ts,
                "level": r.level,
                "message": r.message,
                "entity_tag": r.entity_tag,
                "entity_route": r.entity_route,
            }
            for r in conn.execute(q)
        ]


def is_item(step_id: str) -> bool:
    return parse_item(step_id) is not None


@dataclass(frozen=True)
class ItemSpan:
    """A mapped step's items on a time axis: the first start, the last end, how many attempts
    they made, and their counts (``open``: an item still runs or retries)."""

    start: float | None
    end: float | None
    attempts: int
    counts: ItemCounts

    @property
    def open(self) -> bool:
        return bool(self.counts.counts.get("RUNNING") or self.counts.counts.get("RETRYING"))


def item_spans(store: AuditStore, run_id: str) -> dict[str, ItemSpan]:
    """{mapped step: its items' span} of a run (two grouped reads over the item rows)."""
    q = (
        select(
            steps.c.item_of,
            func.min(steps.c.started_at),
            func.max(steps.c.finished_at),
            func.sum(steps.c.attempts),
        )
        .where(steps.c.run_id == run_id, steps.c.item_of.is_not(None))
        .group_by(steps.c.item_of)
    )
    with store.connect() as conn:
        counts = counts_in(conn, run_id)
        rows = {of: (lo, hi, int(n or 0)) for of, lo, hi, n in conn.execute(q)}
    return {sid: ItemSpan(*rows.get(sid, (None, None, 0)), counts=c) for sid, c in counts.items()}


def item_attempts(
    store: AuditStore, run_id: str, step_id: str, *, limit: int = 2000
) -> list[dict[str, Any]]:
    """The attempts of a mapped step's first items (at most ``limit`` attempts), in item order:
    {step, index, attempt, status, started_at, finished_at, duration, worker, error}."""
    a = step_attempts.c
    q = (
        select(
            a.step_id,
            steps.c.item_index,
            a.attempt,
            a.status,
            a.started_at,
            a.finished_at,
            a.duration,
            a.worker,
            a.error,
        )
        .select_from(
            steps.join(
                step_attempts,
                (a.run_id == steps.c.run_id) & (a.step_id == steps.c.step_id),
            )
        )
        .where(steps.c.run_id == run_id, steps.c.item_of == step_id)
        .order_by(steps.c.item_index, a.attempt)
        .limit(max(1, limit))
    )
    with store.connect() as conn:
        return [
            {
                "step": sid,
                "index": index,
                "attempt": n,
                "status": status,
                "started_at": start,
                "finished_at": end,
                "duration": dur,
                "worker": worker,
                "error": error,
            }
            for sid, index, n, status, start, end, dur, worker, error in conn.execute(q)
        ]
