"""REST routes on registered workflows and on how their runs went: list, read and register
workflow versions; analytics over a period. Added to the REST API's blueprint (/api/v1) when
imported, which web/app.py does before registering it."""

from __future__ import annotations

import time
from typing import Any

import yaml
from flask.views import MethodView
from flask_smorest import abort

from orchestrator.audit import queries
from orchestrator.errors import DefinitionError, StoreError, UnknownWorkflow
from orchestrator.model.definition import dump_definition
from web import audit as web_audit
from web import auth, schemas, slots
from web.api import blp, definition_error, ext, parse_definition
from web.detail import dag


def workflow_summary(defn: Any, versions: list[str]) -> dict[str, Any]:
    return {
        "id": defn.id,
        "name": defn.name,
        "description": defn.description,
        "versions": versions,
        "latest": versions[-1] if versions else (defn.version or ""),
        "mode": defn.mode,
        "steps": len(defn.steps),
        "tags": list(defn.tags),
        "sla_seconds": defn.sla_seconds,
        "inputs": dict(defn.inputs),
    }


def workflow_detail(defn: Any, versions: list[str]) -> dict[str, Any]:
    body = dump_definition(defn)
    return {
        **workflow_summary(defn, versions),
        "version": defn.version or "",
        "definition": body,
        "yaml": yaml.safe_dump(body, sort_keys=False, allow_unicode=True),
        "graph": dag(body, {}),
    }


@blp.route("/workflows")
@auth.require("viewer")
@blp.response(200, schemas.WorkflowListSchema)
def workflows() -> dict[str, Any]:
    """Registered workflows with their versions (the latest described)."""
    client = ext().client
    out = []
    for wid in client.workflows():
        versions = client.versions(wid)
        if versions:
            out.append(workflow_summary(client.get_definition(wid, versions[-1]), versions))
    return {"workflows": out}


@blp.route("/workflows/<workflow_id>")
class Workflow(MethodView):
    @auth.require("viewer")
    @blp.arguments(schemas.WorkflowArgs, location="query")
    @blp.response(200, schemas.WorkflowDetailSchema)
    def get(self, args: dict[str, Any], workflow_id: str) -> dict[str, Any]:
        """One version (default: the latest) with its YAML and DAG."""
        client = ext().client
        try:
            defn = client.get_definition(workflow_id, args["version"])
        except UnknownWorkflow as exc:
            abort(404, message=str(exc))
            raise
        return workflow_detail(defn, client.versions(workflow_id))

    @auth.require("admin", mutating=True)
    @blp.arguments(schemas.WorkflowPutBody)
    @blp.response(200, schemas.WorkflowDetailSchema)
    @blp.alt_response(413, response="REQUEST_ENTITY_TOO_LARGE")  # web/limits.py
    @blp.alt_response(503, response="SERVICE_UNAVAILABLE")
    def put(self, body: dict[str, Any], workflow_id: str) -> dict[str, Any]:
        """Register a new version (validated first; every problem reported with its path)."""
        client = ext().client
        try:
            data = (
                body["definition"]
                if body["definition"] is not None
                else parse_definition(body["yaml"], "yaml")
            )
        except DefinitionError as exc:
            definition_error(exc, "yaml")
        if not isinstance(data, dict):
            abort(400, errors={"json": {"yaml": ["the definition must be a mapping"]}})
        data = {"id": workflow_id, **data}
        if data["id"] != workflow_id:
            abort(
                400,
                errors={"json": {"id": [f"must be '{workflow_id}', the workflow id in the URL"]}},
            )
        try:
            defn = client.register(data)
        except DefinitionError as exc:
            definition_error(exc)
        web_audit.record_after(
            "register",
            "workflow",
            workflow_id,
            {"version": defn.version},
            what=f"workflow '{workflow_id}' version {defn.version} was registered",
        )
        return workflow_detail(defn, client.versions(workflow_id))


@blp.route("/workflows/<workflow_id>/concurrency")
@auth.require("viewer")
@blp.response(200, slots.WorkflowConcurrencySchema)
def workflow_concurrency(workflow_id: str) -> dict[str, Any]:
    """The workflow's concurrency limit (latest version) and the slots in use per key."""
    client = ext().client
    groups = client.concurrency(workflow_id)
    try:
        defn = client.get_definition(workflow_id)
    except UnknownWorkflow as exc:
        if not groups:  # neither registered nor submitted inline with a limit
            abort(404, message=str(exc))
        defn = None
    conc = defn.concurrency if defn is not None else None
    return {
        "workflow": workflow_id,
        "concurrency": conc.to_dict() if conc is not None else None,
        "groups": groups,
    }


PERIODS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 1)


@blp.route("/analytics")
@auth.require("viewer")
@blp.arguments(schemas.AnalyticsArgs, location="query")
@blp.response(200, schemas.AnalyticsSchema)
def analytics(args: dict[str, Any]) -> dict[str, Any]:
    """SLA compliance, failure rates, durations (avg, p95), slowest steps, retries, runs per hour."""
    store = ext().store
    if store is None:
        abort(503, message="analytics need the audit store (CANVASFLOW_DATABASE_URL)")
    until = time.time()
    since = until - PERIODS[args["period"]]
    try:
        a = queries.analytics(store, since, until)
    except StoreError as exc:
        abort(503, message=str(exc))
        raise
    judged = a.sla_met + a.sla_breached
    return {
        "period": args["period"],
        "since": since,
        "until": until,
        "runs": a.runs,
        "ended": a.ended,
        "failed": a.failed,
        "failure_rate": _pct(a.failure_rate),
        "sla_compliance": {
            "percent": round(100.0 * a.sla_met / judged, 1) if judged else None,
            "met": a.sla_met,
            "breached": a.sla_breached,
        },
        "by_workflow": [
            {
                "workflow": w.workflow,
                "runs": w.runs,
                "ended": w.ended,
                "failed": w.failed,
                "failure_rate": _pct(w.failure_rate),
                "avg_duration": w.avg_duration,
                "p95_duration": w.p95_duration,
                "sla_met": w.sla_met,
                "sla_breached": w.sla_breached,
            }
            for w in a.by_workflow
        ],
        "slowest_steps": [
            {
                "workflow": s.workflow,
                "step": s.step,
                "avg_duration": s.avg_duration,
                "occurrences": s.count,
            }
            for s in a.slowest_steps
        ],
        "retry_rate": {
            "overall": _pct(a.retry_rate),
            "top_steps": [
                {
                    "workflow": s.workflow,
                    "step": s.step,
                    "retry_rate": _pct(s.retry_rate),
                    "occurrences": s.count,
                }
                for s in a.retries_by_step
            ],
        },
        "runs_per_hour": [{"hour": h, "runs": n} for h, n in a.runs_per_hour],
    }
