"""The run list's query arguments (``GET /api/v1/runs``), with its child-run filters: child runs
(sub-workflow steps') are hidden unless ``children=include`` or ``only``; ``parent=<run id>``
lists the children of a run."""

from __future__ import annotations

from typing import Any

from marshmallow import fields, pre_load, validate

from web.eventschemas import TriggerFilterArgs
from web.runs import VIEWS
from web.schemas import RUN_STATUSES, Timestamp, _split_lists

CHILDREN = ("hide", "include", "only")


class RunListArgs(TriggerFilterArgs):
    view = fields.String(
        load_default="all",
        validate=validate.OneOf(list(VIEWS)),
        metadata={"description": "tab: all, active, pending, completed, failed, slow"},
    )
    status = fields.List(fields.String(validate=validate.OneOf(RUN_STATUSES)), load_default=list)
    workflow = fields.String(load_default=None)
    tag = fields.List(
        fields.String(), load_default=list, metadata={"description": "runs having every tag"}
    )
    triggered_by = fields.String(load_default=None)
    since = Timestamp(load_default=None, metadata={"description": "created at or after"})
    until = Timestamp(load_default=None, metadata={"description": "created before"})
    search = fields.String(
        load_default=None,
        validate=validate.Length(max=200),
        metadata={"description": "run id prefix, or part of the workflow id or name"},
    )
    ids = fields.List(fields.String(), load_default=list)
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    cursor = fields.String(
        load_default=None, metadata={"description": "next_cursor of the previous page"}
    )
    children = fields.String(
        load_default="hide",
        validate=validate.OneOf(CHILDREN),
        metadata={"description": "child runs: hide (default), include, or only them"},
    )
    parent = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "only the child runs of this run"},
    )

    @pre_load
    def lists(self, data: Any, **_: Any) -> Any:
        return _split_lists(data, ("status", "tag", "ids"))
