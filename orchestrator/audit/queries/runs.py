"""Runs, steps, attempts, logs, events and operator actions: the records of one run and lists
of runs (the CLI's, with every filter), and pruning what is old.

Lists are newest first with keyset pagination: ``page.next_cursor`` goes back in as ``cursor=``
and stays correct while new runs arrive.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, tuple_

from orchestrator.audit.models import (
    RUN_CHILDREN,
    audit_log,
    events,
    run_tags,
    runs,
    step_attempts,
    step_logs,
    steps,
    workflow_definitions,
)
from orchestrator.audit.queries.common import FINAL, decode_cursor, encode_cursor, loads
from orchestrator.audit.queries.items import ItemCounts, UnknownStep, counts_in
from orchestrator.audit.store import AuditStore
from orchestrator.errors import UnknownRun


@dataclass(frozen=True)
class RunSummary:
    id: str
    workflow: str
    version: str
    name: str | None
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration: float | None
    priority: str | None
    tags: tuple[str, ...]
    triggered_by: str | None
    trigger_type: str | None
    sla_seconds: float | None
    error: str | None
    failed_step: str | None
    last_seq: int
    event_count: int
    trigger_name: str | None = None  # the schedule or event trigger that started it
    trigger_ref: str | None = None  # its fire time (ISO-8601 UTC) or event key
    # A child run's parent (a sub-workflow step's), and the run's result (its outputs).
    parent_run: str | None = None
    parent_step: str | None = None
    result: Any = None

    @property
    def complete(self) -> bool:
        """True when every event up to the last one seen is recorded (no gap)."""
        return self.event_count == self.last_seq

    @property
    def sla_met(self) -> bool | None:
        if self.sla_seconds is None or self.duration is None or self.status == "CANCELLED":
            return None
        return self.status == "COMPLETED" and self.duration <= self.sla_seconds


@dataclass(frozen=True)
class Page:
    items: tuple[Any, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    status: str
    worker: str | None
    queue: str | None
    task_id: str | None
    started_at: float | None
    finished_at: float | None
    duration: float | None
    input: Any
    output: Any
    output_size: int | None
    error: str | None
    traceback: str | None
    stats: dict[str, Any] | None


@dataclass(frozen=True)
class StepRecord:
    id: str
    position: int
    plugin: str | None
    method: str | None
    queue: str | None
    status: str
    attempts: int
    started_at: float | None
    finished_at: float | None
    duration: float | None
    worker: str | None
    error: str | None
    reason: str | None
    compensation_error: str | None
    progress: float | None
    progress_message: str | None
    stats: dict[str, Any] | None
    output: Any
    history: tuple[AttemptRecord, ...]
    items: ItemCounts | None = None  # a mapped step's items by status (None: not mapped)
    item_of: str | None = None  # an item: its mapped step and index
    item_index: int | None = None


@dataclass(frozen=True)
class LogLine:
    seq: int
    step: str
    ts: float
    level: str
    message: str
    entity_tag: str | None = None
    entity_route: str | None = None
    entity_id: str | None = None
    entity_type: str | None = None
    line: int = 0  # a log event carries a batch of lines: (seq, line) orders and pages them


@dataclass(frozen=True)
class RunDetail:
    run: RunSummary
    inputs: Any
    definition: dict[str, Any] | None
    steps: tuple[StepRecord, ...]
    logs: tuple[LogLine, ...]  # the newest ``log_limit`` lines, oldest first
    logs_total: int

    def step(self, step_id: str) -> StepRecord:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


@dataclass(frozen=True)
class PruneResult:
    runs: int
    rows: int
    batches: int


def _summary(row: Any) -> RunSummary:
    tags = loads(row.tags, [])
    return RunSummary(
        id=row.id,
        workflow=row.workflow_id,
        version=row.version,
        name=row.name,
        status=row.status,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration=row.duration,
        priority=row.priority,
        tags=tuple(tags) if isinstance(tags, list) else (),
        triggered_by=row.triggered_by,
        trigger_type=row.trigger_type,
        sla_seconds=row.sla_seconds,
        error=row.error,
        failed_step=row.failed_step,
        last_seq=row.last_seq,
        event_count=row.event_count,
        trigger_name=row.trigger_name,
        trigger_ref=row.trigger_ref,
        parent_run=row.parent_run,
        parent_step=row.parent_step,
        result=loads(row.result, None),
    )


# Which runs a run list shows: top-level runs only (the default), child runs too, or only them.
CHILDREN = ("hide", "include", "only")


def children_filter(q: Any, children: str = "hide", parent: str | None = None) -> Any:
    """``q`` restricted to the runs the list shows: the children of ``parent`` when given, else
    by ``children`` (hide | include | only)."""
    if parent:
        return q.where(runs.c.parent_run == parent)
    if children not in CHILDREN:
        raise ValueError(f"children: must be one of {', '.join(CHILDREN)}, not {children!r}")
    if children == "hide":
        return q.where(runs.c.parent_run.is_(None))
    if children == "only":
        return q.where(runs.c.parent_run.is_not(None))
    return q


def children_of(store: AuditStore, run_id: str) -> tuple[RunSummary, ...]:
    """The child runs of ``run_id`` (its sub-workflow steps'), oldest first."""
    q = select(runs).where(runs.c.parent_run == run_id).order_by(runs.c.created_at, runs.c.id)
    with store.connect() as conn:
        return tuple(_summary(r) for r in conn.execute(q.limit(10_000)).all())


def list_runs(
    store: AuditStore,
    *,
    status: str | Iterable[str] | None = None,
    workflow: str | None = None,
    tags: Iterable[str] = (),
    triggered_by: str | None = None,
    since: float | None = None,
    until: float | None = None,
    search: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    trigger_type: str | None = None,
    children: str = "hide",
    parent: str | None = None,
) -> Page:
    """Runs newest first; every filter is optional and they combine with AND. Child runs are
    left out unless ``children`` is include or only, or ``parent`` asks for a run's children."""
    limit = max(1, min(int(limit), 1000))
    q = children_filter(select(runs), children, parent)
    statuses = [status] if isinstance(status, str) else list(status or ())
    if statuses:
        q = q.where(runs.c.status.in_([s.upper() for s in statuses]))
    if workflow:
        q = q.where(runs.c.workflow_id == workflow)
    for tag in tags:
        # EXISTS: walking runs newest first, each candidate is one primary-key probe.
        q = q.where(
            select(run_tags.c.run_id)
            .where(run_tags.c.run_id == runs.c.id, run_tags.c.tag == tag)
            .exists()
        )
    if triggered_by:
        q = q.where(runs.c.triggered_by == triggered_by)
    if trigger_type:
        q = q.where(runs.c.trigger_type == trigger_type)
    if since is not None:
        q = q.where(runs.c.created_at >= since)
    if until is not None:
        q = q.where(runs.c.created_at < until)
    if search:
        q = q.where(_search(search))
    if cursor:
        ts, rid = decode_cursor(cursor)
        q = q.where(tuple_(runs.c.created_at, runs.c.id) < tuple_(ts, rid))
    q = q.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1)
    with store.connect() as conn:
        rows = conn.execute(q).all()
    items = tuple(_summary(r) for r in rows[:limit])
    nxt = encode_cursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
    return Page(items, nxt)


def _hex_after(prefix: str) -> str | None:
    """The smallest hex string above every string that starts with ``prefix``."""
    digits = "0123456789abcdef"
    p = prefix.rstrip("f")
    if not p:
        return None
    return p[:-1] + digits[digits.index(p[-1]) + 1]


def _search(text: str) -> Any:
    """A run id (exact, or a hex prefix) or text in a workflow id or name.

    Every branch is served by an index (the primary key range, and workflow ids looked up in
    the small definitions table), so a search that matches little does not scan every run.
    """
    s = text.strip().lower()
    wd = workflow_definitions
    names = select(wd.c.workflow_id).where(
        or_(
            func.lower(wd.c.workflow_id).contains(s, autoescape=True),
            func.lower(wd.c.name).contains(s, autoescape=True),
        )
    )
    conds = [
        runs.c.id == text.strip(),
        runs.c.workflow_id == text.strip(),
        runs.c.workflow_id.in_(names),
    ]
    if re.fullmatch(r"[0-9a-f]{1,64}", s):
        upper = _hex_after(s)
        conds.append((runs.c.id >= s) & (runs.c.id < upper) if upper else runs.c.id >= s)
    return or_(*conds)


def get_run(store: AuditStore, run_id: str) -> RunSummary:
    with store.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
    if row is None:
        raise UnknownRun(run_id)
    return _summary(row)


def run_detail(store: AuditStore, run_id: str, *, log_limit: int = 100) -> RunDetail:
    """A run with its steps, every attempt, the newest log lines, progress and stats."""
    with store.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise UnknownRun(run_id)
        body = None
        if row.definition_digest:
            body = conn.execute(
                select(workflow_definitions.c.body).where(
                    workflow_definitions.c.workflow_id == row.workflow_id,
                    workflow_definitions.c.digest == row.definition_digest,
                )
            ).scalar()
        # real steps only: the items of a mapped step are read paged (queries/items.py)
        step_rows = conn.execute(
            select(steps)
            .where(steps.c.run_id == run_id, steps.c.item_of.is_(None))
            .order_by(steps.c.position, steps.c.started_at, steps.c.step_id)
        ).all()
        att_rows = conn.execute(
            select(step_attempts)
            .where(
                step_attempts.c.run_id == run_id,
                step_attempts.c.step_id.in_([s.step_id for s in step_rows]),
            )
            .order_by(step_attempts.c.step_id, step_attempts.c.attempt)
        ).all()
        mapped = counts_in(conn, run_id)
        newest_logs, total = _recent_logs(conn, run_id, log_limit)
    history: dict[str, list[AttemptRecord]] = {}
    for a in att_rows:
        history.setdefault(a.step_id, []).append(_attempt(a))
    step_records = []
    for s in step_rows:
        hist = tuple(history.get(s.step_id, ()))
        step_records.append(_step_record(s, hist, mapped.get(s.step_id)))
    return RunDetail(
        run=_summary(row),
        inputs=loads(row.inputs, {}),
        definition=loads(body),
        steps=tuple(step_records),
        logs=newest_logs,
        logs_total=total,
    )


def _attempt(a: Any) -> AttemptRecord:
    return AttemptRecord(
        number=a.attempt,
        status=a.status,
        worker=a.worker,
        queue=a.queue,
        task_id=a.task_id,
        started_at=a.started_at,
        finished_at=a.finished_at,
        duration=a.duration,
        input=loads(a.input),
        output=loads(a.output),
        output_size=a.output_size,
        error=a.error,
        traceback=a.traceback,
        stats=loads(a.stats),
    )


def attempts_of(store: AuditStore, run_id: str, ids: list[str]) -> dict[str, list[AttemptRecord]]:
    """{step or item id: its attempts, oldest first} for ``ids`` of one run (one query)."""
    out: dict[str, list[AttemptRecord]] = {}
    if not ids:
        return out
    a = step_attempts.c
    with store.connect() as conn:
        for row in conn.execute(
            select(step_attempts)
            .where(a.run_id == run_id, a.step_id.in_(ids))
            .order_by(a.step_id, a.attempt)
        ):
            out.setdefault(row.step_id, []).append(_attempt(row))
    return out


def step_record(store: AuditStore, run_id: str, step_id: str) -> StepRecord:
    """One step, or one item of a mapped step (``resize[3]``), with every attempt. Raises
    UnknownRun, or UnknownStep when the run has no such step or item in the store."""
    with store.connect() as conn:
        if conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is None:
            raise UnknownRun(run_id)
        row = conn.execute(
            select(steps).where(steps.c.run_id == run_id, steps.c.step_id == step_id)
        ).first()
        if row is None:
            raise UnknownStep(run_id, step_id)
        hist = tuple(
            _attempt(a)
            for a in conn.execute(
                select(step_attempts)
                .where(step_attempts.c.run_id == run_id, step_attempts.c.step_id == step_id)
                .order_by(step_attempts.c.attempt)
            )
        )
        mapped = counts_in(conn, run_id, [step_id]) if row.item_of is None else {}
    return _step_record(row, hist, mapped.get(step_id))


def _step_record(s: Any, hist: tuple[AttemptRecord, ...], items: ItemCounts | None) -> StepRecord:
    done = [a for a in hist if a.status == "COMPLETED"]
    return StepRecord(
        id=s.step_id,
        position=s.position,
        plugin=s.plugin,
        method=s.method,
        queue=s.queue,
        status=s.status,
        attempts=s.attempts,
        started_at=s.started_at,
        finished_at=s.finished_at,
        duration=s.duration,
        worker=s.worker,
        error=s.error,
        reason=s.reason,
        compensation_error=s.compensation_error,
        progress=s.progress,
        progress_message=s.progress_message,
        stats=loads(s.stats),
        output=done[-1].output if done else None,
        history=hist,
        items=items,
        item_of=s.item_of,
        item_index=s.item_index,
    )


def _log(r: Any) -> LogLine:
    return LogLine(
        seq=r.seq,
        step=r.step_id,
        ts=r.ts,
        level=r.level,
        message=r.message,
        entity_tag=r.entity_tag,
        entity_route=r.entity_route,
        entity_id=r.entity_id,
        entity_type=r.entity_type,
        line=r.line,
    )


def _recent_logs(conn: Any, run_id: str, limit: int) -> tuple[tuple[LogLine, ...], int]:
    rows = conn.execute(
        select(step_logs)
        .where(step_logs.c.run_id == run_id)
        .order_by(step_logs.c.seq.desc(), step_logs.c.line.desc())
        .limit(max(0, limit))
    ).all()
    total = conn.execute(
        select(func.count()).select_from(step_logs).where(step_logs.c.run_id == run_id)
    ).scalar_one()
    return tuple(_log(r) for r in reversed(rows)), int(total)


def recent_logs(store: AuditStore, run_id: str, limit: int) -> tuple[tuple[LogLine, ...], int]:
    """(the newest ``limit`` log lines of a run, oldest first; how many lines it has in all)."""
    with store.connect() as conn:
        return _recent_logs(conn, run_id, limit)


def step_progress(store: AuditStore, run_id: str) -> dict[str, tuple[float, str | None]]:
    """{step: (fraction, message)} for the steps of a run that reported progress."""
    q = select(steps.c.step_id, steps.c.progress, steps.c.progress_message).where(
        steps.c.run_id == run_id, steps.c.progress.is_not(None), steps.c.item_of.is_(None)
    )
    with store.connect() as conn:
        return {sid: (fraction, message) for sid, fraction, message in conn.execute(q)}


def logs(
    store: AuditStore,
    run_id: str,
    step: str | None = None,
    *,
    after_seq: int = 0,
    after_line: int | None = None,
    limit: int = 500,
    level: str | None = None,
) -> list[LogLine]:
    """Log lines of a run (or one step) after the cursor, oldest first.

    The cursor is the last line read: ``after_seq`` and ``after_line`` (one event carries many
    lines). Without ``after_line``, every line of events after ``after_seq``."""
    after = step_logs.c.seq > after_seq
    if after_line is not None:
        after = or_(after, and_(step_logs.c.seq == after_seq, step_logs.c.line > after_line))
    q = select(step_logs).where(step_logs.c.run_id == run_id, after)
    if step is not None:
        q = q.where(step_logs.c.step_id == step)
    if level:
        q = q.where(step_logs.c.level == level.upper())
    q = q.order_by(step_logs.c.seq, step_logs.c.line).limit(max(1, min(limit, 10_000)))
    with store.connect() as conn:
        return [_log(r) for r in conn.execute(q)]


def _events_after(
    conn: Any, run_id: str, after_seq: int, limit: int, skip_items: bool = False
) -> list[dict[str, Any]]:
    q = select(events).where(events.c.run_id == run_id, events.c.seq > after_seq)
    if skip_items:  # not the events of items of mapped steps (ids like resize[3])
        q = q.where(events.c.step_id.not_like("%]"))
    q = q.order_by(events.c.seq).limit(max(1, min(limit, 10_000)))
    return [
        {
            "run": r.run_id,
            "seq": r.seq,
            "type": r.type,
            "step": r.step_id,
            "status": r.status,
            "ts": r.ts,
            "data": loads(r.data, {}),
        }
        for r in conn.execute(q)
    ]


def events_after(
    store: AuditStore, run_id: str, after_seq: int = 0, *, limit: int = 1000
) -> list[dict[str, Any]]:
    """The events of a run with seq > after_seq, in order (what a reconnecting client missed)."""
    with store.connect() as conn:
        return _events_after(conn, run_id, after_seq, limit)


@dataclass(frozen=True)
class RecordedEvents:
    events: list[dict[str, Any]]  # as events_after returns them
    # The stream entry of the newest recorded event up to the last of ``events`` (or up to
    # after_seq when there are none): where a reader of the stream takes over.
    stream_id: str | None


def event_run(store: AuditStore, workflow: str, trigger: str, key: str, since: float) -> str | None:
    """The id of a run an event trigger of ``workflow`` started for event key ``key`` since
    ``since`` (the oldest such run), or None: an event key's dedupe after a Redis loss."""
    with store.connect() as conn:
        found = conn.execute(
            select(runs.c.id)
            .where(
                runs.c.trigger_ref == key,
                runs.c.trigger_name == trigger,
                runs.c.trigger_type == "event",
                runs.c.workflow_id == workflow,
                runs.c.created_at >= since,
            )
            .order_by(runs.c.created_at)
            .limit(1)
        ).scalar()
    return str(found) if found is not None else None


def event_lookup(store: AuditStore | None, ttl: float) -> Any:
    """``recorded`` for ``Client.publish``: (workflow, trigger, key) -> the run an event with
    that key started in the last ``ttl`` seconds, from the store (None without one)."""
    if store is None:
        return None

    def recorded(workflow: str, trigger: str, key: str) -> str | None:
        return event_run(store, workflow, trigger, key, time.time() - ttl)

    return recorded


def recorded_events(
    store: AuditStore,
    run_id: str,
    after_seq: int = 0,
    *,
    limit: int = 1000,
    skip_items: bool = False,
    gapless: bool = True,
) -> RecordedEvents:
    """The recorded events after ``after_seq`` and where in the stream the unrecorded rest begins
    (``skip_items``: without the events of items of mapped steps)."""
    with store.connect() as conn:
        found = _events_after(conn, run_id, after_seq, limit, skip_items)
        if gapless and not skip_items:
            # Only the gapless head: with several recorders a later batch can commit before an
            # earlier one (events 25 and 26 still pending in one, 27 recorded by another); the
            # caller reads the rest from the stream, where pending entries are never trimmed.
            for i, e in enumerate(found):
                if e["seq"] != after_seq + i + 1:
                    found = found[:i]
                    break
        known = found[-1]["seq"] if found else after_seq
        stream_id = conn.execute(
            select(events.c.stream_id)
            .where(events.c.run_id == run_id, events.c.seq <= known)
            .order_by(events.c.seq.desc())
            .limit(1)
        ).scalar()
    return RecordedEvents(found, stream_id or None)


def audit_entries(
    store: AuditStore,
    target_id: str | None = None,
    *,
    target_types: Iterable[str] = (),
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Operator actions, newest first (optionally on one target, or on targets of some types)."""
    q = select(audit_log)
    if target_id:
        q = q.where(audit_log.c.target_id == target_id)
    kinds = list(target_types)
    if kinds:
        q = q.where(audit_log.c.target_type.in_(kinds))
    q = q.order_by(audit_log.c.ts.desc(), audit_log.c.id.desc()).limit(limit)
    with store.connect() as conn:
        return [
            {
                "id": r.id,
                "ts": r.ts,
                "actor": r.actor,
                "action": r.action,
                "target_type": r.target_type,
                "target_id": r.target_id,
                "reason": r.reason,
                "outcome": r.outcome,
                "detail": loads(r.detail),
            }
            for r in conn.execute(q)
        ]


def prune(
    store: AuditStore,
    older_than: float,
    *,
    batch_size: int = 500,
    now: float | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Delete runs that finished more than ``older_than`` seconds ago, with all their rows.

    Each batch of ``batch_size`` runs is its own short transaction, so the recorder and readers
    are never held up for long. Runs that are not final (running, paused, waiting on a failed
    compensation) are never pruned, however old.
    """
    cutoff = (time.time() if now is None else now) - older_than
    old = (runs.c.status.in_(FINAL), runs.c.finished_at < cutoff)
    if dry_run:
        with store.connect() as conn:
            n = conn.execute(select(func.count()).select_from(runs).where(*old)).scalar_one()
        return PruneResult(int(n), 0, 0)
    total_runs = total_rows = batches = 0
    while True:
        with store.begin() as conn:
            ids = list(
                conn.execute(
                    select(runs.c.id).where(*old).order_by(runs.c.finished_at).limit(batch_size)
                ).scalars()
            )
            if not ids:
                break
            for table in RUN_CHILDREN:
                total_rows += (
                    conn.execute(delete(table).where(table.c.run_id.in_(ids))).rowcount or 0
                )
            total_runs += conn.execute(delete(runs).where(runs.c.id.in_(ids))).rowcount or 0
        batches += 1
    return PruneResult(total_runs, total_rows + total_runs, batches)
