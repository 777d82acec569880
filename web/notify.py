"""REST routes of outgoing notifications (admins only: endpoint URLs and secrets are fleet
settings): endpoints (list, add, remove, send a test), the delivery log with each attempt, and
the replay of dead letters. Added to the REST API's blueprint (/api/v1) when imported, which
web/app.py does before registering it. Their schemas live here (web/schemas.py is full)."""

from __future__ import annotations

from typing import Any

from flask_smorest import abort
from marshmallow import Schema, fields, validate

from orchestrator.audit.notifications import (
    DELIVERY_STATUSES,
    EVENTS,
    FORMATS,
    EndpointError,
    Notifications,
    NotReplayable,
    UnknownDelivery,
    UnknownEndpoint,
)
from orchestrator.errors import StoreError
from web import auth
from web.api import blp, ext, user_name
from web.schemas import StrictBoolean

# What the document promises of a URL (the store checks it again, orchestrator/audit/notifications.py):
# http or https, a host, an optional port, printable characters without spaces.
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
URL_PATTERN = rf"^https?://[A-Za-z0-9.-]+(:{_PORT})?(/[!-~]*)?$"
URL_ERROR = "is not an http(s) URL: http:// or https://, a host, an optional port, no spaces"


class NotifyEndpointSchema(Schema):
    id = fields.String()
    url = fields.String()
    events = fields.List(fields.String(validate=validate.OneOf(EVENTS)))
    workflows = fields.List(fields.String(), metadata={"description": "empty: every workflow"})
    tags = fields.List(fields.String(), metadata={"description": "empty: any; else any of these"})
    format = fields.String(validate=validate.OneOf(FORMATS))
    description = fields.String(allow_none=True)
    enabled = fields.Boolean()
    created_at = fields.Float()
    created_by = fields.String(allow_none=True)
    secret = fields.String(
        metadata={"description": "the signing secret: in the answer to POST only, shown once"}
    )


class NotifyEndpointListSchema(Schema):
    endpoints = fields.List(fields.Nested(NotifyEndpointSchema))


class NotifyEndpointBody(Schema):
    url = fields.String(
        required=True,
        validate=[validate.Length(1, 2000), validate.Regexp(URL_PATTERN, error=URL_ERROR)],
        metadata={"description": "an http:// or https:// URL the notifications are POSTed to"},
    )
    events = fields.List(
        fields.String(validate=validate.OneOf(EVENTS)),
        load_default=None,
        validate=validate.Length(1, len(EVENTS)),
        metadata={"description": "default: failed, compensation_failed, sla_breached"},
    )
    workflows = fields.List(
        fields.String(validate=[validate.Length(1, 200), validate.Regexp(r"^\s*\S")]),
        load_default=list,
        validate=validate.Length(max=100),
    )
    tags = fields.List(
        fields.String(validate=[validate.Length(1, 200), validate.Regexp(r"^\s*\S")]),
        load_default=list,
        validate=validate.Length(max=100),
    )
    format = fields.String(load_default="json", validate=validate.OneOf(FORMATS))
    secret = fields.String(
        load_default=None,
        validate=validate.Length(16, 128),
        metadata={"description": "default: one is generated (and returned once)"},
    )
    description = fields.String(load_default=None, validate=validate.Length(max=500))


class NotifyEndpointPatch(Schema):
    enabled = StrictBoolean(
        required=True, metadata={"description": "false: nothing is sent to it until true again"}
    )


class NotifyTestResultSchema(Schema):
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    duration = fields.Float()


class NotifyAttemptSchema(Schema):
    attempt = fields.Integer()
    at = fields.Float()
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    duration = fields.Float()


class NotifyDeliverySchema(Schema):
    id = fields.String()
    endpoint = fields.String()
    run = fields.String()
    event = fields.String()
    seq = fields.Integer()
    workflow = fields.String(allow_none=True)
    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
    attempts = fields.Integer()
    attempt_limit = fields.Integer()
    created_at = fields.Float()
    updated_at = fields.Float()
    next_attempt_at = fields.Float(allow_none=True)
    delivered_at = fields.Float(allow_none=True)
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    replays = fields.Integer()
    attempt_log = fields.List(fields.Nested(NotifyAttemptSchema))


class NotifyDeliveryListSchema(Schema):
    deliveries = fields.List(fields.Nested(NotifyDeliverySchema))


class NotifyDeliveryArgs(Schema):
    endpoint = fields.String(load_default=None, validate=validate.Length(1, 32))
    status = fields.String(load_default=None, validate=validate.OneOf(DELIVERY_STATUSES))
    run = fields.String(load_default=None, validate=validate.Length(1, 64))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


def _notes() -> Notifications:
    store = ext().store
    if store is None:
        abort(503, message="notifications need the audit store (CANVASFLOW_DATABASE_URL)")
    return Notifications(store)


def _endpoint_or_404(notes: Notifications, endpoint_id: str) -> Any:
    try:
        return notes.endpoint(endpoint_id)
    except UnknownEndpoint as exc:
        abort(404, message=str(exc))
        raise


@blp.route("/notifications/endpoints", methods=["GET"])
@auth.require("admin")
@blp.response(200, NotifyEndpointListSchema)
def endpoints() -> dict[str, Any]:
    """Webhook endpoints (without their secrets)."""
    return {"endpoints": [e.as_dict() for e in _notes().endpoints()]}


@blp.route("/notifications/endpoints", methods=["POST"])
@auth.require("admin", mutating=True)
@blp.arguments(NotifyEndpointBody)
@blp.response(201, NotifyEndpointSchema)
def add_endpoint(body: dict[str, Any]) -> dict[str, Any]:
    """Add a webhook endpoint; the answer carries its signing secret, shown this once."""
    notes = _notes()
    try:
        ep = notes.add_endpoint(body.pop("url"), actor=user_name(), **body)
    except EndpointError as exc:
        errors: dict[str, list[str]] = {}
        for problem in exc.problems:
            path, _, what = problem.partition(": ")
            errors.setdefault(path, []).append(what)
        abort(400, errors={"json": errors}, message="invalid request: see errors")
        raise
    except StoreError as exc:
        abort(503, message=str(exc))
        raise
    return {**ep.as_dict(), "secret": ep.secret}


@blp.route("/notifications/endpoints/<endpoint_id>", methods=["DELETE"])
@auth.require("admin", mutating=True)
@blp.response(204)
def remove_endpoint(endpoint_id: str) -> None:
    """Remove an endpoint with its delivery log."""
    notes = _notes()
    _endpoint_or_404(notes, endpoint_id)
    notes.remove_endpoint(endpoint_id, actor=user_name())


@blp.route("/notifications/endpoints/<endpoint_id>", methods=["PATCH"])
@auth.require("admin", mutating=True)
@blp.arguments(NotifyEndpointPatch)
@blp.response(200, NotifyEndpointSchema)
def patch_endpoint(body: dict[str, Any], endpoint_id: str) -> dict[str, Any]:
    """Disable (nothing is sent to it) or enable an endpoint."""
    notes = _notes()
    _endpoint_or_404(notes, endpoint_id)
    return notes.set_enabled(endpoint_id, body["enabled"], actor=user_name()).as_dict()


@blp.route("/notifications/endpoints/<endpoint_id>/test", methods=["POST"])
@auth.require("admin", mutating=True)
@blp.response(200, NotifyTestResultSchema)
def test_endpoint(endpoint_id: str) -> dict[str, Any]:
    """POST a signed ``test`` event to the endpoint now; what it answered (not retried)."""
    from orchestrator.engine.notify import send_test

    ep = _endpoint_or_404(_notes(), endpoint_id)
    code, error, seconds = send_test(ep, ext().settings)
    return {"status_code": code, "error": error, "duration": seconds}


@blp.route("/notifications/deliveries")
@auth.require("admin")
@blp.arguments(NotifyDeliveryArgs, location="query")
@blp.response(200, NotifyDeliveryListSchema)
def deliveries(args: dict[str, Any]) -> dict[str, Any]:
    """The delivery log, newest first; ``status=dead`` is the dead-letter list."""
    notes = _notes()
    rows = notes.deliveries(
        endpoint_id=args["endpoint"], status=args["status"], run_id=args["run"], limit=args["limit"]
    )
    return {"deliveries": rows}


@blp.route("/notifications/deliveries/<delivery_id>")
@auth.require("admin")
@blp.response(200, NotifyDeliverySchema)
def delivery(delivery_id: str) -> dict[str, Any]:
    """One delivery with every attempt (status code, error, duration)."""
    notes = _notes()
    try:
        d = notes.delivery(delivery_id)
    except UnknownDelivery as exc:
        abort(404, message=str(exc))
        raise
    return {**d, "attempt_log": notes.attempts(delivery_id)}


@blp.route("/notifications/deliveries/<delivery_id>/replay", methods=["POST"])
@auth.require("admin", mutating=True, errors=(409,))
@blp.response(200, NotifyDeliverySchema)
def replay(delivery_id: str) -> dict[str, Any]:
    """Send a dead letter again (a new round of attempts), on the notify queue."""
    from orchestrator.engine.notify import enqueue

    notes = _notes()
    settings = ext().settings
    try:
        d = notes.replay(delivery_id, attempt_limit=settings.notify_max_attempts, actor=user_name())
    except UnknownDelivery as exc:
        abort(404, message=str(exc))
        raise
    except NotReplayable as exc:
        abort(409, message=str(exc))
        raise
    enqueue(ext().client.celery, delivery_id)
    return {**d, "attempt_log": notes.attempts(delivery_id)}
