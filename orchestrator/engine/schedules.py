"""What operators do with schedules: list them with their next fire times, pause, resume and
"run now" (the CLI, `canvasflow schedules`, and the REST API call these). Every action is in the
operator audit log; a pause lives in the audit store (cf_schedules) and in Redis (what the
schedulers read on every tick)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.audit import schedules as sql
from orchestrator.audit.store import AuditStore, StoreError
from orchestrator.engine.scheduler import Catalogue, Schedule, iso, schedule_field, seconds
from orchestrator.errors import CanvasflowError
from orchestrator.model.schedule import next_fire
from orchestrator.records import text

log = logging.getLogger(__name__)
SCHEDULER_FRESH = 10.0  # a scheduler that ticked within this many seconds counts as running


class UnknownSchedule(CanvasflowError):
    """No schedule trigger of that name in the latest registered version of the workflow."""


@dataclass(frozen=True)
class ScheduleView:
    workflow: str
    version: str
    name: str
    schedule: str  # "cron '0 2 * * *' (Europe/Berlin)" / "every 300 s"
    cron: str | None
    every: int | None
    timezone: str
    catchup: bool
    inputs: dict[str, Any]
    paused: bool
    paused_by: str | None
    paused_at: str | None
    reason: str | None
    next_fire: str | None  # ISO-8601 UTC; None while paused
    last_fire: str | None
    last_run_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _schedules(client: Any) -> list[Schedule]:
    return Catalogue(client).current()


def list_schedules(
    client: Any, store: AuditStore | None, *, now: float | None = None
) -> list[ScheduleView]:
    """Every schedule of the latest registered versions, by workflow then trigger."""
    now_dt = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    found = _schedules(client)
    paused = {text(m) for m in client.redis.smembers(client.keys.schedule_paused)}
    rows: dict[tuple[str, str], sql.ScheduleRow] = {}
    if store is not None:
        try:
            rows = sql.rows(store)
        except StoreError as exc:
            log.warning("cannot read schedules from the audit store: %s", exc)
    out = []
    for s in found:
        row = rows.get((s.workflow, s.name))
        is_paused = row.paused if row is not None else schedule_field(s.workflow, s.name) in paused
        t = s.trigger
        out.append(
            ScheduleView(
                workflow=s.workflow,
                version=s.version,
                name=s.name,
                schedule=t.describe(),
                cron=t.cron,
                every=t.every,
                timezone=t.timezone,
                catchup=t.catchup,
                inputs=dict(t.inputs),
                paused=is_paused,
                paused_by=row.paused_by if row and is_paused else None,
                paused_at=iso(row.paused_at) if row and is_paused else None,
                reason=row.reason if row and is_paused else None,
                next_fire=None if is_paused else iso(next_fire(t, now_dt)),
                last_fire=iso(row.last_fire) if row else None,
                last_run_id=row.last_run_id if row else None,
            )
        )
    return out


def schedulers(client: Any, *, now: float | None = None) -> list[str]:
    """The schedulers that ticked in the last SCHEDULER_FRESH seconds."""
    now = time.time() if now is None else now
    alive = client.redis.hgetall(client.keys.schedulers)
    return sorted(text(k) for k, v in alive.items() if now - seconds(v) < SCHEDULER_FRESH)


def find(client: Any, workflow: str, name: str) -> Schedule:
    for s in _schedules(client):
        if s.workflow == workflow and s.name == name:
            return s
    known = [f"{s.workflow}/{s.name}" for s in _schedules(client)]
    raise UnknownSchedule(
        f"no schedule '{name}' in the latest registered version of '{workflow}'"
        + (f" (schedules: {', '.join(known[:10])})" if known else " (no workflow has a schedule)")
    )


def set_paused(
    client: Any,
    store: AuditStore | None,
    workflow: str,
    name: str,
    paused: bool,
    *,
    actor: str,
    reason: str | None = None,
) -> ScheduleView:
    """Pause or resume: the audit store first (the record, with its audit-log line), then Redis
    (what schedulers read at once). Without an audit store the pause lives in Redis only."""
    find(client, workflow, name)
    if store is not None:
        sql.set_paused(store, workflow, name, paused, actor=actor, reason=reason)
    else:
        log.warning(
            "no audit store: the %s of %s/%s is not in the audit log",
            "pause" if paused else "resume",
            workflow,
            name,
        )
    field = schedule_field(workflow, name)
    if paused:
        client.redis.sadd(client.keys.schedule_paused, field)
    else:
        client.redis.srem(client.keys.schedule_paused, field)
    return next(
        v for v in list_schedules(client, store) if v.workflow == workflow and v.name == name
    )


def run_now(
    client: Any,
    store: AuditStore | None,
    workflow: str,
    name: str,
    *,
    actor: str,
    reason: str | None = None,
) -> str:
    """Start a run of the schedule now (its inputs, the version that holds it), paused or not;
    returns the run id. Recorded in the audit log with the run id."""
    s = find(client, workflow, name)
    run = client.submit(
        s.workflow,
        version=s.version,
        inputs=dict(s.trigger.inputs),
        triggered_by=actor,
        trigger_type="schedule",
        trigger_name=s.name,
        trigger_ref="run now",
    )
    if store is not None:
        try:
            store.record_action(
                actor=actor,
                action="schedule.run_now",
                target_type="schedule",
                target_id=f"{workflow}/{name}",
                reason=reason,
                detail={"run_id": run.id, "version": s.version},
            )
        except StoreError as exc:
            log.warning("run now of %s/%s: not in the audit log: %s", workflow, name, exc)
    return str(run.id)
