"""REST routes on schedules (issue 16): list them with their next fire times (viewer), pause,
resume and "run now" (operator; each in the audit log). Added to the REST API's blueprint
(/api/v1) when imported, which web/app.py does before registering it. The work is
orchestrator/engine/schedules.py, shared with `canvasflow schedules`."""

from __future__ import annotations

from typing import Any

from flask_smorest import abort
from marshmallow import Schema, fields

from orchestrator.engine import schedules as ops
from orchestrator.errors import CanvasflowError, StoreError
from web import auth, schemas
from web.api import blp, ext, user_name


class ScheduleSchema(Schema):
    workflow = fields.String(required=True)
    version = fields.String(required=True)
    name = fields.String(required=True, metadata={"description": "the trigger's name"})
    schedule = fields.String(
        required=True, metadata={"description": "cron '0 2 * * *' (Europe/Berlin) / every 300 s"}
    )
    cron = fields.String(allow_none=True)
    every = fields.Integer(allow_none=True)
    timezone = fields.String(required=True)
    catchup = fields.Boolean(required=True)
    inputs = fields.Dict(keys=fields.String(), required=True)
    paused = fields.Boolean(required=True)
    paused_by = fields.String(allow_none=True)
    paused_at = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    next_fire = fields.String(
        allow_none=True, metadata={"description": "ISO-8601 UTC; null while paused"}
    )
    last_fire = fields.String(allow_none=True)
    last_run_id = fields.String(allow_none=True)


class ScheduleListSchema(Schema):
    schedules = fields.List(fields.Nested(ScheduleSchema), required=True)
    schedulers = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "schedulers that ticked in the last 10 s (empty: none runs)"},
    )


class RunNowSchema(Schema):
    run_id = fields.String(required=True)
    message = fields.String(required=True)


def _store() -> Any:
    return ext().store


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ops.UnknownSchedule as exc:
        abort(404, message=str(exc))
    except StoreError as exc:
        abort(503, message=f"the audit store is unavailable: {exc}")
    except CanvasflowError as exc:
        abort(409, message=str(exc))


@blp.route("/schedules")
@auth.require("viewer")
@blp.response(200, ScheduleListSchema)
def list_schedules() -> dict[str, Any]:
    """Every schedule of the latest registered versions with its next fire time, and the
    schedulers that are running."""
    client = ext().client
    views = ops.list_schedules(client, _store())
    return {"schedules": [v.as_dict() for v in views], "schedulers": ops.schedulers(client)}


def _toggle(workflow_id: str, name: str, paused: bool, body: dict[str, Any]) -> dict[str, Any]:
    view = _call(
        ops.set_paused,
        ext().client,
        _store(),
        workflow_id,
        name,
        paused,
        actor=user_name(),
        reason=body.get("reason"),
    )
    return dict(view.as_dict())


@blp.route("/schedules/<workflow_id>/<name>/pause", methods=["POST"])
@auth.require(
    "operator", mutating=True, errors=(404,), audit="schedule.pause", target_type="schedule"
)
@blp.arguments(schemas.ActionBody, required=False)
@blp.response(200, ScheduleSchema)
def pause_schedule(body: dict[str, Any], workflow_id: str, name: str) -> dict[str, Any]:
    """Stop firing the schedule (fire times while paused are skipped); survives restarts."""
    return _toggle(workflow_id, name, True, body)


@blp.route("/schedules/<workflow_id>/<name>/resume", methods=["POST"])
@auth.require(
    "operator", mutating=True, errors=(404,), audit="schedule.resume", target_type="schedule"
)
@blp.arguments(schemas.ActionBody, required=False)
@blp.response(200, ScheduleSchema)
def resume_schedule(body: dict[str, Any], workflow_id: str, name: str) -> dict[str, Any]:
    """Fire the schedule again from its next fire time."""
    return _toggle(workflow_id, name, False, body)


@blp.route("/schedules/<workflow_id>/<name>/run-now", methods=["POST"])
@auth.require(
    "operator", mutating=True, errors=(404, 409), audit="schedule.run_now", target_type="schedule"
)
@blp.arguments(schemas.ActionBody, required=False)
@blp.response(201, RunNowSchema)
def run_schedule_now(body: dict[str, Any], workflow_id: str, name: str) -> dict[str, Any]:
    """Start a run of the schedule now, with its inputs (paused or not)."""
    run_id = _call(
        ops.run_now,
        ext().client,
        _store(),
        workflow_id,
        name,
        actor=user_name(),
        reason=body.get("reason"),
    )
    return {"run_id": run_id, "message": f"started run {run_id}"}
