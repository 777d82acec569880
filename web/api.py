"""The REST API under /api/v1 (flask-smorest): runs, operator actions, events, workflows,
analytics, users and tokens. Every error is JSON: ``{"code", "status", "message"}`` plus
``errors`` (per-field messages) on a 400 and ``current_status``/``allowed`` on a 409.

Every view declares who may call it with ``@auth.require(role, ...)`` or ``@auth.public(...)``
(and ``errors=`` for the error statuses only it knows of); web/rest.py checks that before the
arguments are parsed and documents the responses (docs/api.md, "Declaring a route")."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import yaml
from flask import Response, current_app, g, request, session
from flask.views import MethodView
from flask_smorest import abort

from orchestrator.audit import queries
from orchestrator.engine.control import ALLOWED
from orchestrator.errors import (
    CanvasflowError,
    ControlError,
    DefinitionError,
    StoreError,
    UnknownRun,
    UnknownWorkflow,
)
from orchestrator.model.definition import dump_definition, parse_text
from web import audit as web_audit
from web import auth, schemas
from web.detail import dag, log_dict
from web.events import client_event
from web.rest import Blueprint
from web.runs import REDIS_UNREACHABLE, RunFilter
from web.serving import cooperate

ACTION_MESSAGES = {
    "pause": "pausing: running steps finish, no new step starts, then the run is PAUSED",
    "resume": "resumed: the steps that have not settled run now",
    "cancel": "cancelling: queued steps will not start, then completed steps are compensated newest first",
    "retry": "retrying: the step and everything downstream run again",
    "retry_compensation": "retrying the compensations that have not succeeded",
    "resolve": "resolved by hand",
}


def ext() -> Any:
    return current_app.extensions["canvasflow"]


def user_name() -> str:
    user = auth.current_user()
    return user.name if user else "anonymous"


blp = Blueprint("api", __name__, url_prefix="/api/v1", description="canvasflow REST API")


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


@blp.route("/runs")
class Runs(MethodView):
    @auth.require("viewer")
    @blp.arguments(schemas.RunListArgs, location="query")
    @blp.response(200, schemas.RunListSchema)
    def get(self, args: dict[str, Any]) -> Response:
        """Runs newest first, filtered, one keyset page at a time, with the tab counts."""
        flt = RunFilter(
            view=args["view"],
            statuses=tuple(args["status"]),
            workflow=args["workflow"],
            tags=tuple(args["tag"]),
            triggered_by=args["triggered_by"],
            since=args["since"],
            until=args["until"],
            search=args["search"],
            ids=tuple(args["ids"]),
        )
        try:
            page = ext().views.list(
                flt, limit=args["limit"], cursor=args["cursor"], with_counts=True
            )
        except StoreError as exc:  # a malformed cursor
            abort(400, errors={"query": {"cursor": [str(exc)]}})
        payload = schemas.fast_dump(
            _LIST_SCHEMA,
            {
                "runs": page.items,
                "next_cursor": page.next_cursor,
                "counts": page.counts if page.counts is not None else ext().views.counts(),
                "source": page.source,
                "warnings": page.warnings,
            },
        )
        cooperate()
        return json_response(payload)

    @auth.require("operator", mutating=True)
    @blp.arguments(schemas.SubmitBody)
    @blp.response(201, schemas.RunSummarySchema)
    @blp.alt_response(413, response="REQUEST_ENTITY_TOO_LARGE")  # web/limits.py
    @blp.alt_response(503, response="SERVICE_UNAVAILABLE")
    def post(self, body: dict[str, Any]) -> Any:
        """Submit a run of a registered workflow (by id) or of an inline definition."""
        client = ext().client
        common = {
            "inputs": body["inputs"],
            "priority": body["priority"],
            "tags": body["tags"],
            "triggered_by": user_name(),
            "trigger_type": "dashboard" if g.auth_via == "session" else "api",
        }
        try:
            if body["workflow"]:
                defn = client.get_definition(body["workflow"], body["version"])
                run = client.submit(defn, **common)
            else:
                require_inline_permission()
                inline = body["definition"]
                if isinstance(inline, str):
                    inline = parse_definition(inline, "definition")
                if not isinstance(inline, dict):
                    abort(400, errors={"json": {"definition": ["must be a mapping"]}})
                run = client.submit(inline, **common)
        except UnknownWorkflow as exc:
            abort(400, message=str(exc), errors={"json": {"workflow": [str(exc)]}})
        except DefinitionError as exc:
            definition_error(exc)
        summary = ext().views.summary(run.id)
        return summary, 201, {"Location": f"/api/v1/runs/{run.id}"}


INLINE_REFUSED = (
    "'{name}' may run registered workflows only (send \"workflow\": an id): submitting an inline "
    "definition runs code of the sender's choosing, and needs the submit_inline permission, which "
    "an admin grants (PUT /api/v1/users/{name}/permissions/submit_inline)"
)


def require_inline_permission() -> None:
    """An inline definition is a permission of its own (submit_inline): admins, and users an admin
    granted it. The refusal is audited."""
    user = auth.current_user()
    assert user is not None
    if not user.may("submit_inline"):
        web_audit.record(
            "submit_inline",
            "run",
            "-",
            {"needs": "submit_inline", "role": user.role},
            outcome="refused: no permission",
            what="the refusal was not recorded",
        )
        abort(403, message=INLINE_REFUSED.format(name=user.name))


def parse_definition(text: str, source: str) -> Any:
    """YAML/JSON text of a request, parsed off the loop and within the limits (web/limits.py)."""
    client = ext().client
    return client.cpu(
        functools.partial(parse_text, source=source, limits=client.settings.limits), text
    )


def definition_error(exc: DefinitionError, field: str = "definition") -> None:
    problems = [{"path": p, "message": m} for p, m in exc.problems]
    errors: dict[str, list[str]] = {}
    for p, m in exc.problems:
        errors.setdefault(p or field, []).append(m)
    abort(
        400,
        message=str(exc).splitlines()[0].rstrip(":"),
        errors={"json": errors},
        extra={"problems": problems},
    )


def known_run(run_id: str) -> None:
    if not ext().details.exists(run_id):
        abort(404, message=f"unknown run '{run_id}'")


@blp.route("/runs/<run_id>")
class RunDetail(MethodView):
    @auth.require("viewer")
    @blp.arguments(schemas.DetailArgs, location="query")
    @blp.response(200, schemas.RunDetailSchema)
    def get(self, args: dict[str, Any], run_id: str) -> dict[str, Any]:
        """A run with its steps (paged), attempts, logs, compensations and parallel branches."""
        try:
            detail = ext().details.detail(
                run_id,
                steps_offset=args["steps_offset"],
                steps_limit=args["steps_limit"],
                log_limit=args["log_limit"],
            )
        except UnknownRun:
            abort(404, message=f"unknown run '{run_id}'")
            raise
        payload = schemas.fast_dump(_DETAIL_SCHEMA, detail)
        cooperate()
        return json_response(payload)


_DETAIL_SCHEMA = schemas.RunDetailSchema()
_LIST_SCHEMA = schemas.RunListSchema()


def json_response(payload: Any, status: int = 200) -> Response:
    """A JSON response without a second pass through marshmallow (the payload is dumped already)."""
    return current_app.response_class(
        json.dumps(payload, separators=(",", ":"), default=str) + "\n",
        status=status,
        mimetype="application/json",
    )


def run_action(action: str, run_id: str, call: Callable[[str], Any]) -> dict[str, Any]:
    """Run the action (the role was checked by the route's declaration), map refusals to 404/409."""
    actor = user_name()
    try:
        result = call(actor)
    except UnknownRun:
        lost = _lost_status(run_id)
        if lost:  # Redis lost it, the audit store has it live: say what to do instead
            abort(
                404,
                message=f"run '{run_id}' is {lost} in the audit store but Redis no longer knows it (its state "
                f'was lost): resolve it with POST /api/v1/runs/{run_id}/resolve {{"as", "reason"}}',
                extra={"state_lost": True, "current_status": lost},
            )
        abort(404, message=f"unknown run '{run_id}'")
    except ControlError as exc:
        abort(
            409,
            message=str(exc),
            extra={"current_status": exc.status, "allowed": exc.allowed, "action": action},
        )
    except CanvasflowError as exc:
        abort(
            409,
            message=str(exc),
            extra={"current_status": ext().client.state.status(run_id), "action": action},
        )
    if hasattr(result, "id") and not hasattr(result, "action"):  # clone returns the new run
        return {
            "action": action,
            "run_id": result.id,
            "status_before": "",
            "status": "PENDING",
            "detail": {"cloned_from": run_id},
            "message": f"cloned as run {result.id}",
            "run": ext().views.summary(result.id),
        }
    return {
        "action": result.action,
        "run_id": run_id,
        "status_before": result.status_before,
        "status": str(result.status),
        "detail": dict(result.detail),
        "message": ACTION_MESSAGES.get(action, "ok"),
        "run": ext().views.summary(run_id),
    }


def _lost_status(run_id: str) -> str | None:
    """The recorded status of a run whose state Redis lost, or None (no audit store, not lost)."""
    if ext().store is None:
        return None
    from orchestrator.engine.lost import lost_status

    try:
        return lost_status(ext().store, ext().client.state, run_id)
    except StoreError:
        return None


@blp.route("/runs/<run_id>/pause", methods=["POST"])
@auth.require("operator", mutating=True, errors=(409,), audit="pause")
@blp.arguments(schemas.ActionBody, required=False)
@blp.response(200, schemas.ActionResultSchema)
def pause(body: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Pause: no new step starts; running steps finish (409 unless RUNNING or PENDING)."""
    return run_action(
        "pause",
        run_id,
        lambda actor: ext().client.control.pause(run_id, actor=actor, reason=body.get("reason")),
    )


@blp.route("/runs/<run_id>/resume", methods=["POST"])
@auth.require("operator", mutating=True, errors=(409,), audit="resume")
@blp.arguments(schemas.ActionBody, required=False)
@blp.response(200, schemas.ActionResultSchema)
def resume(body: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Resume a PAUSED run from where it stopped."""
    return run_action(
        "resume",
        run_id,
        lambda actor: ext().client.control.resume(run_id, actor=actor, reason=body.get("reason")),
    )


@blp.route("/runs/<run_id>/cancel", methods=["POST"])
@auth.require("operator", mutating=True, errors=(409,), audit="cancel")
@blp.arguments(schemas.CancelBody, required=False)
@blp.response(200, schemas.ActionResultSchema)
def cancel(body: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Cancel: stop the run and compensate its completed steps, newest first."""
    return run_action(
        "cancel",
        run_id,
        lambda actor: ext().client.control.cancel(
            run_id, actor=actor, reason=body.get("reason"), terminate=body.get("terminate", True)
        ),
    )


@blp.route("/runs/<run_id>/retry", methods=["POST"])
@auth.require("operator", mutating=True, errors=(409,), audit="retry")
@blp.arguments(schemas.RetryBody, required=False)
@blp.response(200, schemas.ActionResultSchema)
def retry(body: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Retry a finished run from a step (default: the first failed), from the start, or retry
    its failed compensation (``compensation: true``)."""
    from_step = body.get("from_step")
    if from_step:
        data = ext().client.state.read(run_id)
        if data is not None:
            ids = data.run.step_ids
            if from_step not in ids:
                abort(
                    400,
                    errors={
                        "json": {
                            "from_step": [
                                f"no step '{from_step}' in this run (steps: {', '.join(ids)})"
                            ]
                        }
                    },
                )
    control = ext().client.control
    if body.get("compensation"):
        return run_action(
            "retry_compensation",
            run_id,
            lambda actor: control.retry_compensation(
                run_id, actor=actor, reason=body.get("reason")
            ),
        )
    return run_action(
        "retry",
        run_id,
        lambda actor: control.retry(
            run_id,
            from_step=from_step,
            from_start=body.get("from_start", False),
            actor=actor,
            reason=body.get("reason"),
        ),
    )


@blp.route("/runs/<run_id>/resolve", methods=["POST"])
@auth.require("operator", mutating=True, errors=(409,), audit="resolve")
@blp.arguments(schemas.ResolveBody, required=False)
@blp.response(200, schemas.ActionResultSchema)
def resolve(body: dict[str, Any], run_id: str) -> dict[str, Any]:
    """End a run by hand, as FAILED or CANCELLED, with a reason (audited): a COMPENSATION_FAILED
    run, or a run whose state was lost (not final in the audit store, unknown to Redis)."""
    as_, reason = body.get("as_"), body.get("reason")
    if ext().client.state.status(run_id) is not None or ext().store is None:
        return run_action(
            "resolve",
            run_id,
            lambda actor: ext().client.control.resolve(run_id, actor=actor, reason=reason, as_=as_),
        )
    from orchestrator.engine.lost import resolve_lost

    def lost(actor: str) -> Any:
        if ext().views.summary(run_id) is None:  # known to neither: 404 before judging the body
            raise UnknownRun(run_id)
        missing = {
            k: ["required to resolve a run whose state was lost"]
            for k, v in (("as", as_), ("reason", (reason or "").strip()))
            if not v
        }
        if missing:
            abort(400, errors={"json": missing})
        return resolve_lost(
            ext().store, ext().client.state, run_id, as_=str(as_), actor=actor, reason=str(reason)
        )

    return run_action("resolve", run_id, lost)


@blp.route("/runs/<run_id>/clone", methods=["POST"])
@auth.require("operator", mutating=True, errors=(409,), audit="clone")
@blp.arguments(schemas.CloneBody, required=False)
@blp.response(201, schemas.ActionResultSchema)
def clone(body: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Start a new run of the same definition version with the same (or overridden) inputs."""
    return run_action(
        "clone",
        run_id,
        lambda actor: ext().client.clone(
            run_id, inputs=body.get("inputs"), actor=actor, reason=body.get("reason")
        ),
    )


@blp.route("/runs/<run_id>/export")
@auth.require("viewer")
@blp.doc(
    responses={200: {"description": "the trace (docs/api.md, Trace format) as a JSON download"}}
)
def export(run_id: str) -> Response:
    """Everything about a run as one JSON document, as a file download."""
    try:
        trace = ext().details.export(run_id)
    except UnknownRun:
        abort(404, message=f"unknown run '{run_id}'")
        raise
    return Response(
        json.dumps(trace, indent=2, default=str),
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="canvasflow-run-{run_id}.json"'},
    )


@blp.route("/runs/<run_id>/events")
@auth.require("viewer")
@blp.arguments(schemas.EventsArgs, location="query")
@blp.response(200, schemas.EventListSchema)
def run_events(args: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The run's events with seq > after, in order: what a reconnecting client missed."""
    known_run(run_id)
    events, latest, warnings = ext().details.events_or_recorded(
        run_id, args["after"], args["limit"]
    )
    events = [client_event(e) for e in events]
    return {
        "run": run_id,
        "after": args["after"],
        "events": events,
        "latest_seq": max([latest] + [e["seq"] for e in events]),
        "warnings": warnings,
    }


@blp.route("/runs/<run_id>/logs")
@auth.require("viewer")
@blp.arguments(schemas.LogArgs, location="query")
@blp.response(200, schemas.LogListSchema)
def run_logs(args: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Log lines of the run (or one step), oldest first; page with ``after`` = next_after."""
    known_run(run_id)
    warnings = [] if ext().views.redis_ok() else [REDIS_UNREACHABLE]
    if ext().store is None:
        return {"logs": [], "next_after": None, "next_after_line": None, "warnings": warnings}
    lines = queries.logs(
        ext().store,
        run_id,
        args["step"],
        after_seq=args["after"],
        after_line=args["after_line"],
        limit=args["limit"],
        level=args["level"],
    )
    out = [log_dict(x) for x in lines]
    more = len(out) == args["limit"]
    return {
        "logs": out,
        "next_after": out[-1]["seq"] if more else None,
        "next_after_line": out[-1]["line"] if more else None,
        "warnings": warnings,
    }


@blp.route("/runs/<run_id>/timeline")
@auth.require("viewer")
@blp.response(200, schemas.TimelineSchema)
def run_timeline(run_id: str) -> dict[str, Any]:
    """Gantt bars: one per step attempt and per compensation."""
    try:
        return ext().details.timeline(run_id)
    except UnknownRun:
        abort(404, message=f"unknown run '{run_id}'")
        raise


@blp.route("/runs/<run_id>/graph")
@auth.require("viewer")
@blp.response(200, schemas.GraphSchema)
def run_graph(run_id: str) -> dict[str, Any]:
    """The definition's DAG with each step's live status."""
    try:
        return ext().details.graph(run_id)
    except UnknownRun:
        abort(404, message=f"unknown run '{run_id}'")
        raise


# ---------------------------------------------------------------------------------------------
# Workflows
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Analytics, health, fleet
# ---------------------------------------------------------------------------------------------

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


@blp.route("/health")
@auth.public()
@blp.doc(
    responses={
        200: {"description": "Redis and the audit store answer"},
        503: {"description": "Redis or the audit store does not answer (the same fields)"},
    }
)
def health() -> dict[str, Any]:
    """Liveness of Redis, the audit store and the event relay (no authentication)."""
    e = ext()
    out: dict[str, Any] = {
        "redis": "ok",
        "audit_store": "ok",
        "read_only": e.web.read_only,
        "server": e.server,
    }
    try:
        e.client.redis.ping()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        out["redis"] = f"error: {exc}"
    if e.store is None:
        out["audit_store"] = "none"
    else:
        try:
            e.store.check()
        except StoreError as exc:
            out["audit_store"] = f"error: {exc}"
    if e.relay is not None:
        out["relay"] = {
            "delivered": e.relay.delivered,
            "batches": e.relay.batches,
            "errors": e.relay.errors,
            "last_id": e.relay.last_id,
            "messages": e.live.messages if e.live is not None else 0,
        }
    ok = out["redis"] == "ok" and out["audit_store"] in ("ok", "none")
    return out, 200 if ok else 503  # type: ignore[return-value]


@blp.route("/workers")
@auth.require("viewer")
def fleet() -> dict[str, Any]:
    """The workers that published a plugin catalog: {hostname: {plugins, queues, pid, started_at}}."""
    return {"workers": ext().client.fleet()}


# ---------------------------------------------------------------------------------------------
# Authentication, tokens, users
# ---------------------------------------------------------------------------------------------


@blp.route("/auth/login", methods=["POST"])
@auth.public(errors=(401, 429))
@blp.arguments(schemas.LoginBody)
@blp.response(200, schemas.MeSchema)
def login(body: dict[str, Any]) -> dict[str, Any]:
    """Log in with a password: sets the session cookie; send csrf_token as X-CSRF-Token. Failed
    logins are throttled per account and per address (429 with Retry-After)."""
    from web import throttle

    try:
        user = throttle.attempt(body["username"], body["password"], auth.users().verify)
    except throttle.Throttled as exc:
        abort(429, message=exc.message, headers={"Retry-After": str(exc.retry_after)})
        raise
    if user is None:
        abort(401, message="unknown user or wrong password")
    csrf = auth.start_session(user)
    return {
        **user.as_dict(),
        "via": "session",
        "read_only": ext().web.read_only,
        "csrf_token": csrf,
    }


@blp.route("/auth/logout", methods=["POST"])
@auth.public(errors=(403,))
def logout() -> dict[str, Any]:
    """End this browser's session; needs the session's X-CSRF-Token (so no other page can)."""
    if session.get("user") and not auth.csrf_matches(request.headers.get("X-CSRF-Token")):
        abort(403, message="missing or wrong X-CSRF-Token header (reload the page)")
    session.clear()
    return {"message": "logged out"}


@blp.route("/auth/me")
@auth.require("viewer")
@blp.response(200, schemas.MeSchema)
def me() -> dict[str, Any]:
    """Who the request authenticates as (401 if nobody)."""
    user = auth.current_user()
    assert user is not None
    return {
        **user.as_dict(),
        "via": g.auth_via,
        "read_only": ext().web.read_only,
        "csrf_token": auth.csrf_token() if g.auth_via == "session" else None,
    }


@blp.route("/auth/tokens")
class Tokens(MethodView):
    @auth.require("viewer")
    @blp.response(200, schemas.TokenSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """Your API tokens (admins: everyone's)."""
        user = auth.current_user()
        assert user is not None
        return auth.users().tokens(None if user.can("admin") else user.name)

    @auth.require("viewer", mutating=True, errors=(404,))
    @blp.arguments(schemas.TokenBody, required=False)
    @blp.response(201, schemas.TokenSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new API token with your role (admins: for any user, ``username``); the token is shown
        only in this response."""
        user = auth.current_user()
        assert user is not None
        owner = body.get("username") or user.name
        if owner != user.name:
            audited_check("admin", "token_create", "token", owner)
        name = body.get("name", "api")
        try:
            with web_audit.recorded(f"the token for '{owner}'"):
                token_id, token = auth.users().create_token(
                    owner,
                    name,
                    audit=lambda tid: web_audit.entry(
                        "token_create", "token", tid, {"user": owner, "name": name}
                    ),
                )
        except auth.AuthError as exc:
            abort(404, message=str(exc))
            raise
        return {
            "id": token_id,
            "username": owner,
            "name": name,
            "created_at": time.time(),
            "token": token,
        }


@blp.route("/auth/tokens/<token_id>", methods=["DELETE"])
@auth.require("viewer", mutating=True)
@blp.response(204)
def revoke_token(token_id: str) -> None:
    """Revoke a token (your own; admins: anyone's). It stops working at once."""
    user = auth.current_user()
    assert user is not None
    mine = None if user.can("admin") else user.name
    owner = next((t["username"] for t in auth.users().tokens(mine) if t["id"] == token_id), None)
    with web_audit.recorded(f"the revocation of token '{token_id}'"):
        gone = owner is not None and auth.users().revoke(
            token_id,
            mine,
            audit=web_audit.entry("token_revoke", "token", token_id, {"user": owner}),
        )
    if not gone:
        abort(404, message=f"unknown token '{token_id}'")


@blp.route("/users")
class UsersView(MethodView):
    @auth.require("admin")
    @blp.response(200, schemas.UserSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """Every user with its role (admin)."""
        return auth.users().list()

    @auth.require(
        "admin",
        mutating=True,
        errors=(409,),
        audit="user_create",
        target_type="user",
        target="name",
    )
    @blp.arguments(schemas.UserBody)
    @blp.response(201, schemas.UserSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a user (or change an existing one's password / role) (admin)."""
        name = body["name"].strip()
        existed = any(u["name"] == name for u in auth.users().list())
        if existed:
            _not_yourself(name, body["role"], "change")
        try:
            with web_audit.recorded(f"the change of user '{name}'"):
                user = auth.users().put(
                    name,
                    password=body["password"],
                    role=body["role"],
                    audit=web_audit.entry(
                        "user_update" if existed else "user_create",
                        "user",
                        name,
                        {"role": body["role"], "password_changed": body["password"] is not None},
                    ),
                )
        except auth.AuthError as exc:
            abort(
                400, errors={"json": {"password" if "password" in str(exc) else "name": [str(exc)]}}
            )
            raise
        auth.restamp_session(user)
        return auth.users().row(user.name)


@blp.route("/users/<name>")
class UserView(MethodView):
    @auth.require("admin", mutating=True, errors=(409,), audit="user_update", target_type="user")
    @blp.arguments(schemas.UserPatch)
    @blp.response(200, schemas.UserSchema)
    def patch(self, body: dict[str, Any], name: str) -> dict[str, Any]:
        """Change a user's role and/or password, or disable / enable it (admin). A password or role
        change, or disabling, ends the user's sessions and API tokens at once."""
        audited_check("admin", "user_update", "user", name)
        if not auth.users().exists(name):
            abort(404, message=f"unknown user '{name}'")
        _not_yourself(name, body["role"], "change")
        if body.get("disabled") is True:
            _not_yourself(name, None, "disable")
        user: auth.User | None = None
        with web_audit.recorded(f"the change of user '{name}'"):
            if body["password"] is not None or body["role"] is not None:
                user = auth.users().put(
                    name,
                    password=body["password"],
                    role=body["role"],
                    audit=web_audit.entry(
                        "user_update",
                        "user",
                        name,
                        {"role": body["role"], "password_changed": body["password"] is not None},
                    ),
                )
            if body.get("disabled") is not None:
                user = auth.users().set_disabled(
                    name,
                    body["disabled"],
                    audit=web_audit.entry(
                        "user_disable" if body["disabled"] else "user_enable", "user", name, None
                    ),
                )
        auth.restamp_session(user)
        return auth.users().row(name)

    @auth.require("admin", mutating=True, errors=(409,), audit="user_delete", target_type="user")
    @blp.response(204)
    def delete(self, name: str) -> None:
        """Delete a user and revoke its tokens (admin)."""
        _not_yourself(name, None, "delete")
        with web_audit.recorded(f"the deletion of user '{name}'"):
            gone = auth.users().delete(
                name, audit=web_audit.entry("user_delete", "user", name, None)
            )
        if not gone:
            abort(404, message=f"unknown user '{name}'")


@blp.route("/audit/users")
@auth.require("admin")
@blp.response(200, schemas.AuditListSchema)
def users_audit() -> dict[str, Any]:
    """The latest 100 actions on users and tokens (admin), newest first: who did what."""
    store = ext().store
    if store is None:
        return {"actions": []}
    try:
        rows = queries.audit_entries(store, target_types=("user", "token", "address"), limit=100)
    except StoreError as exc:
        abort(503, message=f"the audit store is unavailable: {exc}")
        raise
    return {
        "actions": [
            {
                "ts": r["ts"],
                "actor": r["actor"],
                "action": r["action"],
                "target_type": r["target_type"],
                "target_id": r["target_id"],
                "outcome": r["outcome"],
                "detail": r["detail"],
            }
            for r in rows
        ]
    }


def _not_yourself(name: str, role: str | None, what: str) -> None:
    """An admin may not delete or demote themselves: there must always be an admin left."""
    user = auth.current_user()
    if (
        user is not None
        and user.name == name
        and (what in ("delete", "disable") or (role is not None and role != "admin"))
    ):
        verb = what if what in ("delete", "disable") else "demote"
        web_audit.record(
            f"user_{'update' if what == 'change' else what}",
            "user",
            name,
            {"role": role},
            outcome="refused: own account",
            what="the refusal was not recorded",
        )
        abort(
            409,
            message=f"you cannot {verb} your own account (ask another admin, so that an admin is always left)",
        )


def audited_check(role: str, action: str, target_type: str, target_id: str) -> auth.User:
    """``auth.check(role, mutating=True)``; a refusal of a known user is written to the audit log."""
    try:
        return auth.check(role, mutating=True)
    except Exception:
        user = auth.current_user()
        if user is not None:
            web_audit.record(
                action,
                target_type,
                target_id,
                {"needs": role, "role": user.role},
                outcome=f"refused: {user.role}",
                what="the refusal was not recorded",
            )
        raise


def allowed_actions() -> dict[str, list[str]]:
    return {k: [str(s) for s in v] for k, v in ALLOWED.items()}
