"""The schedules' SQL record (cf_schedules): paused flags and last fire times.

A pause and its line in the operator audit log commit in one transaction. The schedulers
(orchestrator/engine/scheduler.py) copy the paused flags into Redis and read them there; a fire
is written here after its run was created (best effort: Redis holds the cursor that matters).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from orchestrator.audit.models import schedules
from orchestrator.audit.sqlbatch import insert_ignore
from orchestrator.audit.store import AuditStore, append_action


@dataclass(frozen=True)
class ScheduleRow:
    workflow_id: str
    trigger_name: str
    paused: bool
    paused_by: str | None
    paused_at: float | None
    reason: str | None
    last_fire: float | None
    last_run_id: str | None


def rows(store: AuditStore) -> dict[tuple[str, str], ScheduleRow]:
    """Every recorded schedule by (workflow, trigger)."""
    with store.connect() as conn:
        found = conn.execute(select(schedules)).mappings().all()
    return {
        (r["workflow_id"], r["trigger_name"]): ScheduleRow(
            r["workflow_id"],
            r["trigger_name"],
            bool(r["paused"]),
            r["paused_by"],
            r["paused_at"],
            r["reason"],
            r["last_fire"],
            r["last_run_id"],
        )
        for r in found
    }


def _ensure(conn: Any, workflow_id: str, trigger_name: str, ts: float) -> None:
    """The schedule's row, created if missing (two schedulers at once: one insert wins)."""
    row = {"workflow_id": workflow_id, "trigger_name": trigger_name, "paused": False}
    insert_ignore(conn, schedules, [{**row, "updated_at": ts}])


def set_paused(
    store: AuditStore,
    workflow_id: str,
    trigger_name: str,
    paused: bool,
    *,
    actor: str,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Pause or resume a schedule and append the action to the audit log, in one transaction."""
    ts = time.time()
    with store.begin() as conn:
        _ensure(conn, workflow_id, trigger_name, ts)
        conn.execute(
            update(schedules)
            .where(schedules.c.workflow_id == workflow_id, schedules.c.trigger_name == trigger_name)
            .values(
                paused=paused,
                paused_by=actor if paused else None,
                paused_at=ts if paused else None,
                reason=reason if paused else None,
                updated_at=ts,
            )
        )
        append_action(
            conn,
            {
                "ts": ts,
                "actor": actor,
                "action": "schedule.pause" if paused else "schedule.resume",
                "target_type": "schedule",
                "target_id": f"{workflow_id}/{trigger_name}",
                "reason": reason,
                "outcome": "ok",
                "detail": json.dumps(detail) if detail is not None else None,
            },
        )


def record_fire(
    store: AuditStore, workflow_id: str, trigger_name: str, fire: float, run_id: str
) -> None:
    """Remember the latest fire time of a schedule and its run (never moves backwards)."""
    ts = time.time()
    with store.begin() as conn:
        _ensure(conn, workflow_id, trigger_name, ts)
        conn.execute(
            update(schedules)
            .where(
                schedules.c.workflow_id == workflow_id,
                schedules.c.trigger_name == trigger_name,
                (schedules.c.last_fire.is_(None)) | (schedules.c.last_fire < fire),
            )
            .values(last_fire=fire, last_run_id=run_id, updated_at=ts)
        )
