"""The REST API under /api/v1 (flask-smorest): its blueprint, what its routes share, and the
routes on runs (list, submit, detail, operator actions, events, logs, timeline, graph, export),
health and the workers. web/workflows.py (workflows, analytics) and web/accounts.py (login,
tokens, users, permissions, lockouts) add theirs to the same blueprint. Every error is JSON:
``{"code", "status", "message"}`` plus ``errors`` (per-field messages) on a 400 and
``current_status``/``allowed`` on a 409.

Every view declares who may call it with ``@auth.require(role, ...)`` or ``@auth.public(...)``
(and ``errors=`` for the error statuses only it knows of); web/rest.py checks that before the
arguments are parsed and documents the responses (docs/api.md, "Declaring a route")."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, g
from flask.views import MethodView
from flask_smorest import abort

from orchestrator.audit import queries
from orchestrator.errors import (
    CanvasflowError,
    ControlError,
    DefinitionError,
    StoreError,
    UnknownRun,
    UnknownWorkflow,
)
from orchestrator.model.definition import parse_text
from web import audit as web_audit
from web import auth, mapped, runlist, schemas, slots
from web.detail import log_dict
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
    @blp.arguments(runlist.RunListArgs, location="query")
    @blp.response(200, schemas.RunListSchema)
    def get(self, args: dict[str, Any]) -> Response:
        """Runs newest first, filtered, one keyset page at a time, with the tab counts."""
        flt = RunFilter(
            view=args["view"],
            statuses=tuple(args["status"]),
            workflow=args["workflow"],
            tags=tuple(args["tag"]),
            triggered_by=args["triggered_by"],
            trigger_type=args["trigger_type"],
            since=args["since"],
            until=args["until"],
            search=args["search"],
            ids=tuple(args["ids"]),
            children=args["children"],
            parent=args["parent"],
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
    @blp.response(201, schemas.SubmittedRunSchema)
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
        summary = {**ext().views.summary(run.id), "warnings": list(run.warnings)}
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
    @blp.response(200, slots.RunDetailSchema)
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


_DETAIL_SCHEMA = slots.RunDetailSchema()
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
@blp.arguments(mapped.TimelineArgs, location="query")
@blp.response(200, mapped.ItemTimelineSchema)
def run_timeline(args: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Gantt bars: one per step attempt and per compensation; a mapped step's items grouped."""
    try:
        return ext().details.timeline(run_id, [args["expand"]] if args["expand"] else [])
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
# Health, fleet
# ---------------------------------------------------------------------------------------------


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
