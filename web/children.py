"""Child runs in the REST API: ``GET /api/v1/runs/<id>/children`` (the runs its sub-workflow
steps started, each with the step that started it), and the parent of a run. Importing this
module adds the route to ``web.api.blp``, which web/app.py does before registering it."""

from __future__ import annotations

from typing import Any

from flask_smorest import abort
from marshmallow import Schema, fields

from orchestrator.audit import queries
from orchestrator.errors import StoreError, UnknownRun
from web import auth, schemas
from web.api import blp, ext
from web.runs import REDIS_DOWN

MAX_CHILDREN = 10_000  # listed per run (a mapped sub-workflow step may start thousands)


class ChildrenSchema(Schema):
    run = fields.String(metadata={"description": "the parent run"})
    parent_run = fields.String(allow_none=True, metadata={"description": "the run's own parent"})
    children = fields.List(
        fields.Nested(schemas.RunSummarySchema),
        metadata={"description": "oldest first; parent_step says which step started each"},
    )
    warnings = fields.List(fields.String())


def child_ids(run_id: str) -> tuple[list[str], list[str]]:
    """The ids of the run's children, from the hot state and the audit store (a child whose
    hot state expired is still in the store), and what could not be read."""
    ids: dict[str, None] = {}
    warnings: list[str] = []
    try:
        ids.update(dict.fromkeys(ext().client.state.children(run_id)))
    except REDIS_DOWN as exc:
        warnings.append(f"Redis is unreachable: live children missing ({exc})")
    store = ext().store
    if store is not None:
        try:
            ids.update(dict.fromkeys(c.id for c in queries.children_of(store, run_id)))
        except StoreError as exc:
            warnings.append(f"audit store unavailable: recorded children missing ({exc})")
    return list(ids)[:MAX_CHILDREN], warnings


@blp.route("/runs/<run_id>/children")
@auth.require("viewer")
@blp.response(200, ChildrenSchema)
def run_children(run_id: str) -> dict[str, Any]:
    """The child runs of a run (started by its sub-workflow steps), oldest first."""
    views = ext().views
    parent = views.summary(run_id)
    if parent is None:
        abort(404, message=f"unknown run '{run_id}'")
        raise UnknownRun(run_id)
    ids, warnings = child_ids(run_id)
    items = [s for s in (views.summary(c) for c in ids) if s is not None]
    items.sort(key=lambda s: (s["created_at"], s["id"]))
    return {
        "run": run_id,
        "parent_run": parent.get("parent_run"),
        "children": items,
        "warnings": warnings,
    }
