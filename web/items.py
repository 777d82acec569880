"""REST routes on the items of mapped steps (issue 15), added to the REST API's blueprint
(/api/v1) when imported, which web/app.py does before registering it:

- ``GET /runs/{id}/steps/{step}/items?status=&offset=&limit=``: a page of a mapped step's items in
  item order, each like a step (status, attempts, timings, output, error), with how many match
  and the step's counts by status;
- ``GET /runs/{id}/steps/{step}/items/{index}``: one item in full (every attempt with its input,
  output and error, its logs).

Items are read from the audit store (the hot state keeps them compactly for the workers); a run
detail gives a mapped step its counts as ``map: {total, counts}`` (web/mapped.py).
"""

from __future__ import annotations

from typing import Any

from flask_smorest import abort
from marshmallow import Schema, fields, pre_load, validate

from orchestrator.audit import queries
from orchestrator.errors import UnknownRun
from web import auth
from web.api import blp, ext, known_run
from web.schemas import AttemptSchema, LogSchema

NO_STORE = "no audit store is configured: items of mapped steps are read from it"


class ItemsArgs(Schema):
    status = fields.String(
        load_default=None,
        validate=validate.OneOf(queries.STEP_STATUSES),
        metadata={"description": "only items at this status (case-insensitive)"},
    )
    offset = fields.Integer(load_default=0, validate=validate.Range(0, 2**31 - 1))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, queries.MAX_ITEMS_PAGE))

    @pre_load
    def _upper(self, data: Any, **_: Any) -> Any:
        if hasattr(data, "get") and isinstance(data.get("status"), str):
            data = {**data, "status": data["status"].upper() or None}
            if data["status"] is None:
                del data["status"]
        return data


class MapSchema(Schema):
    total = fields.Integer(metadata={"description": "items the step expanded to"})
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())


class ItemSchema(Schema):
    id = fields.String(metadata={"description": "the item id, e.g. resize[3]"})
    index = fields.Integer()
    status = fields.String()
    attempts = fields.Integer()
    started_at = fields.Float(allow_none=True)
    finished_at = fields.Float(allow_none=True)
    duration = fields.Float(allow_none=True)
    worker = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    progress = fields.Dict(allow_none=True)
    output = fields.Raw(allow_none=True)


class ItemPageSchema(Schema):
    run = fields.String()
    step = fields.String()
    status = fields.String(allow_none=True)
    offset = fields.Integer()
    limit = fields.Integer()
    total = fields.Integer(metadata={"description": "items matching the status filter"})
    map = fields.Nested(MapSchema)
    items = fields.List(fields.Nested(ItemSchema))
    warnings = fields.List(fields.String())


class ItemAttemptSchema(AttemptSchema):
    output = fields.Raw(allow_none=True)
    traceback = fields.String(allow_none=True)
    task_id = fields.String(allow_none=True)


class ItemDetailSchema(ItemSchema):
    step = fields.String(metadata={"description": "the mapped step"})
    input = fields.Raw(allow_none=True, metadata={"description": "the latest attempt's input"})
    traceback = fields.String(allow_none=True)
    history = fields.List(fields.Nested(ItemAttemptSchema))
    logs = fields.List(fields.Nested(LogSchema))


def _item(i: queries.ItemRecord) -> dict[str, Any]:
    return {
        "id": i.id,
        "index": i.index,
        "status": i.status,
        "attempts": i.attempts,
        "started_at": i.started_at,
        "finished_at": i.finished_at,
        "duration": i.duration,
        "worker": i.worker,
        "error": i.error,
        "reason": i.reason,
        "progress": None
        if i.progress is None
        else {"fraction": i.progress, "message": i.progress_message},
        "output": i.output,
    }


@blp.route("/runs/<run_id>/steps/<step_id>/items")
@auth.require("viewer")
@blp.arguments(ItemsArgs, location="query")
@blp.response(200, ItemPageSchema)
def step_items(args: dict[str, Any], run_id: str, step_id: str) -> dict[str, Any]:
    """A page of a mapped step's items in item order, optionally only those at one status."""
    store = ext().store
    if store is None:
        known_run(run_id)
        empty = {"total": 0, "counts": {}}
        return {**args, "run": run_id, "step": step_id, "total": 0, "map": empty, "items": [],
                "warnings": [NO_STORE]}  # fmt: skip
    try:
        page = queries.items(
            store,
            run_id,
            step_id,
            status=args["status"],
            offset=args["offset"],
            limit=args["limit"],
        )
    except UnknownRun:
        abort(404, message=f"unknown run '{run_id}'")
        raise
    except queries.UnknownStep:
        abort(404, message=f"run '{run_id}' has no step '{step_id}'")
        raise
    return {
        "run": run_id,
        "step": step_id,
        "status": page.status,
        "offset": page.offset,
        "limit": page.limit,
        "total": page.total,
        "map": page.counts.as_dict(),
        "items": [_item(i) for i in page.items],
        "warnings": [],
    }


@blp.route("/runs/<run_id>/steps/<step_id>/items/<index>")
@auth.require("viewer")
@blp.response(200, ItemDetailSchema)
def step_item(run_id: str, step_id: str, index: str) -> dict[str, Any]:
    """One item of a mapped step with every attempt (input, output, error) and its logs."""
    if not index.isascii() or not index.isdigit() or len(index) > 10:
        abort(400, message=f"index: '{index[:40]}' is not an item index (an integer >= 0)",
              errors={"path": {"index": ["an integer >= 0"]}})  # fmt: skip
    store = ext().store
    if store is None:
        known_run(run_id)
        abort(404, message=NO_STORE)
    item_id = f"{step_id}[{int(index)}]"
    try:
        s = queries.step_record(store, run_id, item_id)
        logs = queries.item_logs(store, run_id, item_id)
    except UnknownRun:
        abort(404, message=f"unknown run '{run_id}'")
        raise
    except queries.UnknownStep:
        abort(404, message=f"run '{run_id}' has no item {item_id} recorded")
        raise
    rendered = next((a.input for a in reversed(s.history) if a.input is not None), None)
    return {
        "id": s.id,
        "step": step_id,
        "index": int(index),
        "status": s.status,
        "attempts": s.attempts,
        "started_at": s.started_at,
        "finished_at": s.finished_at,
        "duration": s.duration,
        "worker": s.worker,
        "error": s.error,
        "reason": s.reason,
        "progress": None
        if s.progress is None
        else {"fraction": s.progress, "message": s.progress_message},
        "output": s.output,
        "input": rendered,
        "traceback": s.history[-1].traceback if s.history else None,
        "history": [
            {
                "attempt": a.number,
                "status": a.status,
                "started_at": a.started_at,
                "finished_at": a.finished_at,
                "duration": a.duration,
                "worker": a.worker,
                "error": a.error,
                "input": a.input,
                "output": a.output,
                "traceback": a.traceback,
                "task_id": a.task_id,
            }
            for a in s.history
        ],
        "logs": logs,
    }
