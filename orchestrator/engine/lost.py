"""Runs whose hot state was lost: the audit store shows them live, Redis does not know them.

That happens when Redis restarts without persistence (docs/operations.md, "Redis persistence"):
every run in flight vanishes with its canvas, and nothing will ever end it in SQL. Such a run is
shown "state lost" (``state_lost: true`` in the API, a badge on the dashboard) and an operator
resolves it as FAILED or CANCELLED with a reason.

**Decision** (docs/design.md): the resolution is written to the audit store directly, in one
transaction, not sent as an event through the recorder. An event needs the run's next sequence
number, which lives in the run's Redis hash — the very thing that was lost (creating it again
would bring a phantom run back to Redis); the recorder may be the process that is down; and the
operator needs a synchronous answer (409 when the run is already final). The transaction still
writes what the recorder would have: a ``run_resolved`` row in ``cf_events`` with the next seq,
the run's status (newest-wins by that seq), its unfinished steps CANCELLED, and the audit log row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from orchestrator.audit.models import audit_log, events, runs, steps
from orchestrator.audit.store import AuditStore
from orchestrator.engine.runstate import RunState
from orchestrator.engine.states import RunStatus
from orchestrator.errors import CanvasflowError, ControlError, UnknownRun

FINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
TARGETS = {"failed": RunStatus.FAILED, "cancelled": RunStatus.CANCELLED}
# The statuses a lost run can be resolved from: every status that is not final.
RESOLVABLE = sorted(s.value for s in RunStatus if s not in FINAL)
UNFINISHED_STEPS = ("PENDING", "RUNNING", "RETRYING", "COMPENSATING")


class RunNotLost(ControlError):
    """Raised when a run to be resolved as lost is known to Redis (use the ordinary actions)."""

    def __init__(self, run_id: str, status: str):
        CanvasflowError.__init__(
            self,
            f"cannot resolve run {run_id} as lost: Redis still knows it ({status}); "
            "pause, cancel or retry it instead",
        )
        self.action, self.run_id, self.status, self.allowed = "resolve", run_id, status, []


@dataclass(frozen=True)
class Resolution:
    action: str
    run_id: str
    status_before: str
    status: str
    detail: dict[str, Any]


def target_of(as_: str) -> RunStatus:
    try:
        return TARGETS[as_.strip().lower()]
    except KeyError:
        raise CanvasflowError(f"resolve as {as_!r}: expected one of {', '.join(TARGETS)}") from None


def lost_status(store: AuditStore, state: RunState, run_id: str) -> str | None:
    """The SQL status of a run that is not final in SQL and unknown to Redis, else None."""
    if state.status(run_id) is not None:
        return None
    with store.connect() as conn:
        status = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
    return status if status is not None and status not in FINAL else None


def resolve_lost(
    store: AuditStore, state: RunState, run_id: str, *, as_: str, actor: str, reason: str
) -> Resolution:
    """End a lost run in the audit store as FAILED or CANCELLED, audited with who and why.

    UnknownRun if neither SQL nor Redis knows it; RunNotLost if Redis knows it; ControlError
    if SQL already has it final. Refusals are audited as well.
    """
    target = target_of(as_)
    if not (reason or "").strip():
        raise CanvasflowError("resolve: a reason is required (it goes to the audit log)")
    known = state.status(run_id)
    if known is not None:
        _refused(store, run_id, actor, reason, as_, f"refused: {known} in Redis")
        raise RunNotLost(run_id, known)
    now = time.time()
    refused = ""
    with store.begin() as conn:
        q = select(runs).where(runs.c.id == run_id)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        row = conn.execute(q).mappings().first()
        before = row["status"] if row is not None else ""
        if row is None or before in FINAL:
            refused = before or "unknown run"
        else:
            _write(conn, row, target, actor, reason, as_, now)
    if refused:
        _refused(store, run_id, actor, reason, as_, f"refused: {refused}")
        if row is None:
            raise UnknownRun(run_id)
        raise ControlError("resolve", run_id, before, RESOLVABLE)
    return Resolution(
        "resolve", run_id, before, target.value, {"as": target.value, "state_lost": True}
    )


def _write(
    conn: Any, row: Any, target: RunStatus, actor: str, reason: str, as_: str, now: float
) -> None:
    """What the recorder would have written for a run_resolved event with the next seq."""
    run_id, before = row["id"], row["status"]
    seq = (row["last_seq"] or 0) + 1
    error = f"state lost: resolved as {target.value} by {actor}: {reason}"
    data = {
        "action": "resolve",
        "actor": actor,
        "reason": reason,
        "as": target.value,
        "status_before": before,
        "state_lost": True,
    }
    conn.execute(
        events.insert().values(
            run_id=run_id,
            seq=seq,
            type="run_resolved",
            step_id="",
            status=target.value,
            ts=now,
            data=json.dumps(data),
            stream_id=None,
            recorded_at=now,
        )
    )
    started = row["started_at"]
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(
            status=target.value,
            status_seq=seq,
            finished_at=now,
            error=error,
            duration=(now - started) if started is not None else None,
            last_seq=seq,
            event_count=(row["event_count"] or 0) + 1,
            updated_at=now,
        )
    )
    conn.execute(
        update(steps)
        .where(steps.c.run_id == run_id, steps.c.status.in_(UNFINISHED_STEPS))
        .values(
            status="CANCELLED",
            status_seq=seq,
            finished_at=now,
            error="state lost: the run was resolved by hand",
        )
    )
    conn.execute(
        audit_log.insert().values(
            **_audit(
                run_id,
                actor,
                reason,
                as_,
                "ok",
                now,
                {"as": target.value, "status_before": before, "state_lost": True},
            )
        )
    )


def _audit(
    run_id: str,
    actor: str,
    reason: str,
    as_: str,
    outcome: str,
    ts: float,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "ts": ts,
        "actor": actor,
        "action": "resolve",
        "target_type": "run",
        "target_id": run_id,
        "reason": reason,
        "outcome": outcome[:32],
        "detail": json.dumps(detail or {"as": as_, "state_lost": True}),
    }


def _refused(
    store: AuditStore, run_id: str, actor: str, reason: str, as_: str, outcome: str
) -> None:
    with store.begin() as conn:
        conn.execute(
            audit_log.insert().values(**_audit(run_id, actor, reason, as_, outcome, time.time()))
        )
