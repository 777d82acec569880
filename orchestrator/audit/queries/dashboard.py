"""The dashboard's run list: a page of runs with their step counts, the newest recorded run and
the tab counts, in one statement.

Under load every round trip of the web process waits for its turn on its loop, so a page costs
one SQL statement (docs/performance.md, "The run list under load"); the web merges the Redis hot
state into the rows (web/runs.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select, true, tuple_

from orchestrator.audit.models import run_tags, runs, steps
from orchestrator.audit.queries.runs import children_filter
from orchestrator.audit.store import AuditStore

ACTIVE = ("RUNNING", "PAUSING", "PAUSED", "CANCELLING", "COMPENSATING")
PENDING = ("PENDING",)
COMPLETED = ("COMPLETED",)
UNSUCCESSFUL = ("FAILED", "COMPENSATION_FAILED", "CANCELLED")
SETTLED_STEPS = ("COMPLETED", "FAILED", "SKIPPED", "CANCELLED", "COMPENSATING", "COMPENSATED")
# The columns of cf_runs a row of the page has (not inputs, which can be large).
_ROW_COLUMNS = (
    "id",
    "status",
    "workflow_id",
    "version",
    "name",
    "created_at",
    "started_at",
    "finished_at",
    "priority",
    "tags",
    "triggered_by",
    "trigger_type",
    "trigger_name",
    "trigger_ref",
    "sla_seconds",
    "error",
    "failed_step",
    "last_seq",
    "parent_run",
    "parent_step",
    "result",
)
_COUNTS = (
    "tab_active",
    "tab_pending",
    "tab_slow",
    "tab_completed",
    "tab_failed",
    "tab_with_sla",
    "tab_sla_met",
)


@dataclass(frozen=True)
class RunSelection:
    """Which runs a page lists; the conditions combine with AND."""

    statuses: tuple[str, ...] | None = None  # None: any status (an empty tuple matches none)
    ids: tuple[str, ...] = ()
    workflow: str | None = None
    tags: tuple[str, ...] = ()  # runs having every tag
    triggered_by: str | None = None
    trigger_type: str | None = None  # how the runs started (manual, api, schedule, event...)
    since: float | None = None  # created at or after
    until: float | None = None  # created before
    search: str | None = None  # run id prefix, or part of the workflow id or name
    # Only runs whose elapsed time (to their end, or to now) reached this fraction of their SLA.
    slow: float | None = None
    # Child runs (sub-workflow steps'): hidden unless "include" or "only"; ``parent``: only the
    # children of that run. Runs asked for by id are listed whatever they are.
    children: str = "hide"
    parent: str | None = None


@dataclass(frozen=True)
class RunListPage:
    # The page's runs, newest first, as dicts: id, status, workflow, version, name, created_at,
    # started_at, finished_at, priority, tags (a list), triggered_by, trigger_type, sla_seconds,
    # error, failed_step, seq (the last recorded event), total and settled (steps).
    rows: list[dict[str, Any]]
    more: bool  # runs follow the page
    newest: float | None  # created_at of the newest run recorded at all (whatever the selection)
    counts: dict[str, Any] | None  # the tab counts (tab_counts), when asked for


def run_list_page(
    store: AuditStore,
    selection: RunSelection,
    *,
    limit: int,
    after: tuple[float, str] | None = None,
    now: float,
    counts_slow: float | None = None,
) -> RunListPage:
    """The runs before ``after`` (a decoded cursor: created_at, id), newest first, at most
    ``limit``; with ``counts_slow`` (the fraction of its SLA that makes a live run slow) also the
    tab counts. One statement; a second one when the page is empty."""
    # real steps only: the items of a mapped step are not steps of the run's progress
    real = steps.c.item_of.is_(None)
    total = select(func.count()).where(steps.c.run_id == runs.c.id, real).scalar_subquery()
    settled = (
        select(func.count())
        .where(steps.c.run_id == runs.c.id, real, steps.c.status.in_(SETTLED_STEPS))
        .scalar_subquery()
    )
    newest_runs = runs.alias("newest_runs")
    newest = select(func.max(newest_runs.c.created_at)).scalar_subquery()
    q = _selected(selection, now).with_only_columns(
        *(runs.c[c] for c in _ROW_COLUMNS),
        total.label("n_steps"),
        settled.label("n_settled"),
        newest.label("newest"),
    )
    if counts_slow is not None:
        # One row of aggregates joined to every row of the page: no round trip of its own.
        tabs = _counts_query(now, counts_slow).subquery("tabs")
        q = q.join(tabs, true()).add_columns(*tabs.c)
    if after is not None:
        q = q.where(tuple_(runs.c.created_at, runs.c.id) < tuple_(*after))
    q = q.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1)
    with store.connect() as conn:
        rows = conn.execute(q).mappings().all()
        counts = None
        if rows:
            newest_at = rows[0]["newest"]
            if counts_slow is not None:
                counts = _tab_counts(tuple(rows[0][c] for c in _COUNTS))
        elif counts_slow is None:
            newest_at = conn.execute(select(func.max(runs.c.created_at))).scalar()
        else:
            *tabs_row, newest_at = conn.execute(
                _counts_query(now, counts_slow).add_columns(newest.label("newest"))
            ).one()
            counts = _tab_counts(tuple(tabs_row))
    return RunListPage([_row(r) for r in rows[:limit]], len(rows) > limit, newest_at, counts)


def tab_counts(store: AuditStore, now: float, slow: float) -> dict[str, Any]:
    """The dashboard's tab counts: active, pending and slow (``slow``: the fraction of its SLA a
    live run has used) runs now; completed and failed today (since 00:00 UTC); today's SLA
    compliance in percent (None without a run judged)."""
    with store.connect() as conn:
        return _tab_counts(tuple(conn.execute(_counts_query(now, slow)).one()))


def _selected(sel: RunSelection, now: float) -> Select[Any]:
    q = select(runs)
    if sel.statuses is not None:
        q = q.where(runs.c.status.in_(sel.statuses or ("-",)))
    if sel.ids:
        q = q.where(runs.c.id.in_(sel.ids))
    else:
        q = children_filter(q, sel.children, sel.parent)
    if sel.workflow:
        q = q.where(runs.c.workflow_id == sel.workflow)
    for tag in sel.tags:
        q = q.where(runs.c.id.in_(select(run_tags.c.run_id).where(run_tags.c.tag == tag)))
    if sel.triggered_by:
        q = q.where(runs.c.triggered_by == sel.triggered_by)
    if sel.trigger_type:
        q = q.where(runs.c.trigger_type == sel.trigger_type)
    if sel.since is not None:
        q = q.where(runs.c.created_at >= sel.since)
    if sel.until is not None:
        q = q.where(runs.c.created_at < sel.until)
    if sel.search:
        s = sel.search.strip().lower()
        q = q.where(
            or_(
                runs.c.id.startswith(s, autoescape=True),
                func.lower(runs.c.workflow_id).contains(s, autoescape=True),
                func.lower(runs.c.name).contains(s, autoescape=True),
            )
        )
    if sel.slow is not None:
        elapsed = func.coalesce(runs.c.finished_at, now) - runs.c.created_at
        q = q.where(
            runs.c.sla_seconds.is_not(None),
            runs.c.sla_seconds > 0,
            elapsed >= sel.slow * runs.c.sla_seconds,
        )
    return q


def _row(r: Any) -> dict[str, Any]:
    try:
        tags = json.loads(r["tags"] or "[]")
    except ValueError:
        tags = []
    return {
        "id": r["id"],
        "status": r["status"],
        "workflow": r["workflow_id"],
        "version": r["version"],
        "name": r["name"],
        "created_at": r["created_at"],
        "started_at": r["started_at"],
        "finished_at": r["finished_at"],
        "priority": r["priority"],
        "tags": tags,
        "triggered_by": r["triggered_by"],
        "trigger_type": r["trigger_type"],
        "trigger_name": r["trigger_name"],
        "trigger_ref": r["trigger_ref"],
        "sla_seconds": r["sla_seconds"],
        "error": r["error"],
        "failed_step": r["failed_step"],
        "parent_run": r["parent_run"],
        "parent_step": r["parent_step"],
        "result": json.loads(r["result"]) if r["result"] else None,
        "seq": r["last_seq"],
        "total": int(r["n_steps"] or 0),
        "settled": int(r["n_settled"] or 0),
    }


def _counts_query(now: float, slow_fraction: float) -> Select[Any]:
    """The tab counts in one statement over the live runs and the runs finished today."""
    day = now - now % 86400
    elapsed = func.coalesce(runs.c.finished_at, now) - runs.c.created_at
    live = runs.c.status.in_(ACTIVE + PENDING)
    today = runs.c.finished_at >= day
    slow = and_(
        live,
        runs.c.sla_seconds.is_not(None),
        runs.c.sla_seconds > 0,
        elapsed >= slow_fraction * runs.c.sla_seconds,
    )
    has_sla = and_(
        today,
        runs.c.sla_seconds.is_not(None),
        runs.c.status.in_(("COMPLETED", "FAILED", "COMPENSATION_FAILED")),
    )
    met = and_(
        has_sla,
        runs.c.status == "COMPLETED",
        runs.c.finished_at - runs.c.created_at <= runs.c.sla_seconds,
    )

    def n(cond: Any, name: str) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0).label(name)

    conds = (
        runs.c.status.in_(ACTIVE),
        runs.c.status.in_(PENDING),
        slow,
        and_(today, runs.c.status.in_(COMPLETED)),
        and_(today, runs.c.status.in_(UNSUCCESSFUL)),
        has_sla,
        met,
    )
    return select(*(n(c, name) for c, name in zip(conds, _COUNTS, strict=True))).where(
        or_(live, today)
    )


def _tab_counts(row: tuple[Any, ...]) -> dict[str, Any]:
    active, pending, slow, completed, failed, with_sla, met = (int(x or 0) for x in row)
    return {
        "active": active,
        "pending": pending,
        "slow": slow,
        "completed_today": completed,
        "failed_today": failed,
        "sla_compliance_today": round(100.0 * met / with_sla, 1) if with_sla else None,
    }
