"""REST shapes of concurrency limits (issue 16): a run's wait for a slot in its run detail, and a
workflow's slots in use per key (the route is in workflows.py). Kept apart from schemas.py,
which is at the size limit: ``RunDetailSchema`` here is schemas.py's with ``waiting`` added, and
is the one the run detail route declares."""

from __future__ import annotations

from marshmallow import Schema, fields

from web import schemas


class WaitingSchema(Schema):
    key = fields.String(metadata={"description": "the concurrency group: its key, or the workflow"})
    ahead = fields.Integer(metadata={"description": "runs before it in the group's queue"})
    reason = fields.String(metadata={"description": "waiting for a slot in <key>: N ahead"})


class RunDetailSchema(schemas.RunDetailSchema):
    waiting = fields.Nested(
        WaitingSchema,
        allow_none=True,
        metadata={"description": "set while the run waits for a concurrency slot"},
    )


class ConcurrencyGroupSchema(Schema):
    key = fields.String(metadata={"description": "the rendered key ('' for the one group)"})
    limit = fields.Integer()
    in_use = fields.Integer(metadata={"description": "slots held"})
    active = fields.List(fields.String(), metadata={"description": "run ids holding a slot"})
    waiting = fields.Integer(metadata={"description": "runs waiting for a slot"})


class WorkflowConcurrencySchema(Schema):
    workflow = fields.String()
    concurrency = fields.Dict(
        allow_none=True, metadata={"description": "the latest version's limit, key, strategy"}
    )
    groups = fields.List(fields.Nested(ConcurrencyGroupSchema))
