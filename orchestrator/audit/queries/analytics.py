"""Aggregates over the retained history: run outcomes, SLA compliance, durations and retries for
a period (``analytics``, the CLI and the API), and the totals ``/metrics`` reports."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, and_, case, cast, func, select

from orchestrator.audit.models import runs, step_attempts, steps
from orchestrator.audit.queries.common import ENDED, FAILED, percentile
from orchestrator.audit.store import AuditStore


@dataclass(frozen=True)
class WorkflowStats:
    workflow: str
    runs: int
    ended: int
    failed: int
    failure_rate: float | None
    avg_duration: float | None
    p95_duration: float | None
    sla_met: int
    sla_breached: int


@dataclass(frozen=True)
class StepStats:
    workflow: str
    step: str
    count: int
    avg_duration: float | None
    retry_rate: float | None


@dataclass(frozen=True)
class Analytics:
    since: float
    until: float
    runs: int
    ended: int
    failed: int
    failure_rate: float | None
    sla_met: int
    sla_breached: int
    by_workflow: tuple[WorkflowStats, ...]
    slowest_steps: tuple[StepStats, ...]
    retries_by_step: tuple[StepStats, ...]
    runs_per_hour: tuple[tuple[float, int], ...] = field(default_factory=tuple)
    steps_started: int = 0  # steps of the period's runs that ran at least once
    steps_retried: int = 0  # ... and more than once

    @property
    def sla_compliance(self) -> float | None:
        total = self.sla_met + self.sla_breached
        return self.sla_met / total if total else None

    @property
    def retry_rate(self) -> float | None:
        return self.steps_retried / self.steps_started if self.steps_started else None


def analytics(
    store: AuditStore, since: float, until: float | None = None, *, top: int = 10
) -> Analytics:
    """Run outcomes, SLA compliance, durations and retries for runs created in [since, until).

    Failure rate counts FAILED and COMPENSATION_FAILED out of the runs that ended (COMPLETED,
    FAILED, COMPENSATION_FAILED); cancelled runs count in neither. A run meets its SLA when it
    COMPLETED within sla_seconds; a finished run with an SLA that did not is a breach.
    """
    until = time.time() if until is None else until
    period = (runs.c.created_at >= since, runs.c.created_at < until)
    pg = store.dialect == "postgresql"
    ended = func.sum(case((runs.c.status.in_(ENDED), 1), else_=0))
    failed = func.sum(case((runs.c.status.in_(FAILED), 1), else_=0))
    has_sla = (
        runs.c.sla_seconds.is_not(None)
        & runs.c.duration.is_not(None)
        & (runs.c.status != "CANCELLED")
    )
    met = func.sum(
        case(
            (has_sla & (runs.c.status == "COMPLETED") & (runs.c.duration <= runs.c.sla_seconds), 1),
            else_=0,
        )
    )
    breached = func.sum(
        case(
            (
                has_sla & ((runs.c.status != "COMPLETED") | (runs.c.duration > runs.c.sla_seconds)),
                1,
            ),
            else_=0,
        )
    )
    cols = [
        runs.c.workflow_id,
        func.count(),
        ended,
        failed,
        func.avg(runs.c.duration),
        met,
        breached,
    ]
    if pg:
        cols.append(func.percentile_cont(0.95).within_group(runs.c.duration.asc()))
    done_attempts = (step_attempts.c.status == "COMPLETED") & step_attempts.c.duration.is_not(None)
    slow_q = (
        select(
            runs.c.workflow_id,
            step_attempts.c.step_id,
            func.count(),
            func.avg(step_attempts.c.duration),
        )
        .select_from(step_attempts.join(runs, runs.c.id == step_attempts.c.run_id))
        .where(*period, done_attempts)
        .group_by(runs.c.workflow_id, step_attempts.c.step_id)
        .order_by(func.avg(step_attempts.c.duration).desc(), step_attempts.c.step_id)
        .limit(top)
    )
    started = func.sum(case((steps.c.attempts >= 1, 1), else_=0))
    retried = func.sum(case((steps.c.attempts > 1, 1), else_=0))
    step_key = func.coalesce(steps.c.item_of, steps.c.step_id)  # items count as their step
    retry_q = (
        select(runs.c.workflow_id, step_key, started, retried)
        .select_from(steps.join(runs, runs.c.id == steps.c.run_id))
        .where(*period, steps.c.attempts >= 1)
        .group_by(runs.c.workflow_id, step_key)
    )
    hour = func.floor(runs.c.created_at / 3600) if pg else cast(runs.c.created_at / 3600, Integer)
    hour_q = select(hour.label("h"), func.count()).where(*period).group_by("h").order_by("h")
    with store.connect() as conn:
        wf_rows = conn.execute(
            select(*cols).where(*period).group_by(runs.c.workflow_id).order_by(runs.c.workflow_id)
        ).all()
        p95: dict[str, float | None] = {}
        if not pg:
            durations: dict[str, list[float]] = {}
            for wf, d in conn.execute(
                select(runs.c.workflow_id, runs.c.duration).where(
                    *period, runs.c.duration.is_not(None)
                )
            ):
                durations.setdefault(wf, []).append(d)
            p95 = {wf: percentile(v, 0.95) for wf, v in durations.items()}
        slow_rows = conn.execute(slow_q).all()
        retry_rows = conn.execute(retry_q).all()
        hour_rows = conn.execute(hour_q).all()
    by_wf = []
    for r in wf_rows:
        n_ended, n_failed = int(r[2] or 0), int(r[3] or 0)
        by_wf.append(
            WorkflowStats(
                workflow=r[0],
                runs=int(r[1]),
                ended=n_ended,
                failed=n_failed,
                failure_rate=n_failed / n_ended if n_ended else None,
                avg_duration=float(r[4]) if r[4] is not None else None,
                p95_duration=(float(r[7]) if r[7] is not None else None) if pg else p95.get(r[0]),
                sla_met=int(r[5] or 0),
                sla_breached=int(r[6] or 0),
            )
        )
    slowest = tuple(
        StepStats(workflow=w, step=s, count=int(n), avg_duration=float(avg), retry_rate=None)
        for w, s, n, avg in slow_rows
    )
    retries = sorted(
        (
            StepStats(
                workflow=w,
                step=s,
                count=int(n),
                avg_duration=None,
                retry_rate=int(k or 0) / int(n) if n else None,
            )
            for w, s, n, k in retry_rows
        ),
        key=lambda x: (-(x.retry_rate or 0), x.workflow, x.step),
    )
    total_ended = sum(w.ended for w in by_wf)
    total_failed = sum(w.failed for w in by_wf)
    return Analytics(
        since=since,
        until=until,
        runs=sum(w.runs for w in by_wf),
        ended=total_ended,
        failed=total_failed,
        failure_rate=total_failed / total_ended if total_ended else None,
        sla_met=sum(w.sla_met for w in by_wf),
        sla_breached=sum(w.sla_breached for w in by_wf),
        by_workflow=tuple(by_wf),
        slowest_steps=slowest,
        retries_by_step=tuple(r for r in retries if r.retry_rate)[:top],
        runs_per_hour=tuple((float(h) * 3600, int(n)) for h, n in hour_rows),
        steps_started=sum(int(n) for _, _, n, _ in retry_rows),
        steps_retried=sum(int(k or 0) for _, _, _, k in retry_rows),
    )


# ---------------------------------------------------------------------------------------------
# Totals for /metrics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTally:
    workflow: str
    status: str
    runs: int
    started: int
    sla_breached: int  # finished, with an SLA, and not COMPLETED within it (cancelled runs aside)
    trigger: str = ""  # how they started (cf_runs.trigger_type)


@dataclass(frozen=True)
class Histogram:
    """Durations of one label set: how many, their sum, and how many were <= each bound."""

    labels: tuple[str, ...]
    count: int
    total: float
    at_most: tuple[int, ...]  # one per bound, in the order the bounds were given


@dataclass(frozen=True)
class MetricTotals:
    """Totals over the whole retained history; labels that are NULL in SQL are ""."""

    runs: tuple[RunTally, ...]  # per workflow, status and trigger type
    run_durations: tuple[Histogram, ...]  # finished runs, per workflow
    step_durations: tuple[Histogram, ...]  # step attempts, per (plugin, method)
    attempts: dict[tuple[str, str], tuple[int, int]]  # (plugin, method): (retries, failures)
    failed_steps: dict[tuple[str, str], int]  # (plugin, method): steps that ended FAILED


def _histograms(
    conn: Any,
    value: Any,
    keys: Sequence[Any],
    where: Any,
    bounds: Sequence[float],
    select_from: Any = None,
) -> tuple[Histogram, ...]:
    cols = [*keys, func.count(), func.sum(value)] + [
        func.sum(case((value <= b, 1), else_=0)) for b in bounds
    ]
    q = select(*cols).where(where).group_by(*keys)
    if select_from is not None:
        q = q.select_from(select_from)
    n = len(keys)
    return tuple(
        Histogram(
            labels=tuple(str(v or "") for v in r[:n]),
            count=int(r[n]),
            total=float(r[n + 1] or 0.0),
            at_most=tuple(int(r[n + 2 + i] or 0) for i in range(len(bounds))),
        )
        for r in conn.execute(q)
    )


def metric_totals(
    store: AuditStore, *, run_bounds: Sequence[float], step_bounds: Sequence[float]
) -> MetricTotals:
    """What ``/metrics`` reports from SQL: runs by workflow and status, duration histograms of
    runs and step attempts (bucket bounds in seconds), retries and failures by plugin method."""
    has_sla = (
        runs.c.sla_seconds.is_not(None)
        & runs.c.duration.is_not(None)
        & (runs.c.status != "CANCELLED")
    )
    breached = has_sla & ((runs.c.status != "COMPLETED") | (runs.c.duration > runs.c.sla_seconds))
    joined = step_attempts.join(
        steps,
        and_(steps.c.run_id == step_attempts.c.run_id, steps.c.step_id == step_attempts.c.step_id),
    )
    with store.connect() as conn:
        tallies = tuple(
            RunTally(wf or "", status, int(n), int(n_started), int(n_breached or 0), trig or "")
            for wf, status, trig, n, n_started, n_breached in conn.execute(
                select(
                    runs.c.workflow_id,
                    runs.c.status,
                    runs.c.trigger_type,
                    func.count(),
                    func.count(runs.c.started_at),
                    func.sum(case((breached, 1), else_=0)),
                ).group_by(runs.c.workflow_id, runs.c.status, runs.c.trigger_type)
            )
        )
        run_h = _histograms(
            conn,
            runs.c.duration,
            [runs.c.workflow_id],
            runs.c.duration.is_not(None) & runs.c.finished_at.is_not(None),
            run_bounds,
        )
        step_h = _histograms(
            conn,
            step_attempts.c.duration,
            [steps.c.plugin, steps.c.method],
            step_attempts.c.duration.is_not(None),
            step_bounds,
            joined,
        )
        attempts = {
            (plugin or "", method or ""): (int(n_retry or 0), int(n_failed or 0))
            for plugin, method, n_retry, n_failed in conn.execute(
                select(
                    steps.c.plugin,
                    steps.c.method,
                    func.sum(case((step_attempts.c.attempt > 1, 1), else_=0)),
                    func.sum(case((step_attempts.c.status == "FAILED", 1), else_=0)),
                )
                .select_from(joined)
                .group_by(steps.c.plugin, steps.c.method)
            )
        }
        failed = {
            (plugin or "", method or ""): int(n)
            for plugin, method, n in conn.execute(
                select(steps.c.plugin, steps.c.method, func.count())
                .where(steps.c.status == "FAILED")
                .group_by(steps.c.plugin, steps.c.method)
            )
        }
    return MetricTotals(tallies, run_h, step_h, attempts, failed)
