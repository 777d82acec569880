"""Marshmallow schemas of event triggers and of how a run started: the body and the answer of
``POST /api/v1/events``, and the trigger fields that web/schemas.py's run summaries and run list
arguments take from here (mixins, so that those classes stay where they are)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from orchestrator.engine.publish import EVENT_NAME_TEXT, MAX_NAME
from orchestrator.records import TRIGGER_TYPES

# The event name pattern as OpenAPI states it (ECMA: "$" is the very end); the publisher checks
# the model's own pattern, which ends in \Z, again.
EVENT_NAME_JSON = "^" + EVENT_NAME_TEXT + "$"


class RunTriggerFields(Schema):
    """How a run started, beside ``triggered_by`` and ``trigger_type``."""

    trigger_name = fields.String(
        allow_none=True, metadata={"description": "the schedule's or event trigger's name"}
    )
    trigger_ref = fields.String(
        allow_none=True,
        metadata={"description": "the fire time (ISO-8601 UTC) or the event key"},
    )


class TriggerFilterArgs(Schema):
    trigger_type = fields.String(
        load_default=None,
        validate=validate.OneOf(TRIGGER_TYPES),
        metadata={"description": "how the runs started: " + ", ".join(TRIGGER_TYPES)},
    )


class PublishBody(Schema):
    """An event. The publisher (orchestrator/engine/publish.py) checks it again, with the
    payload's size and depth (CANVASFLOW_MAX_INPUTS_BYTES, CANVASFLOW_MAX_DEPTH): 400 with the
    field at fault either way."""

    name = fields.String(
        required=True,
        validate=[  # a list, not validate.And: apispec documents each (maxLength, pattern)
            validate.Length(min=1, max=MAX_NAME, error=f"must be 1 to {MAX_NAME} characters"),
            validate.Regexp(EVENT_NAME_JSON, error=f"must match {EVENT_NAME_TEXT}"),
        ],
        error_messages={"invalid": "must be a string", "required": "required: the event's name"},
        metadata={"description": "the event's name; event triggers listen to it"},
    )
    payload = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        error_messages={"invalid": "must be an object", "null": "must be an object, not null"},
        metadata={"description": "a JSON object; filters and inputs read it as event.payload"},
    )
    key = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(min=1, max=MAX_NAME, error=f"must be 1 to {MAX_NAME} characters"),
        error_messages={"invalid": "must be a string or null"},
        metadata={
            "description": "optional; a repeated key starts no second run of a trigger "
            "(for at least 24 h, CANVASFLOW_EVENT_KEY_TTL)"
        },
    )


class TriggeredSchema(Schema):
    workflow = fields.String()
    version = fields.String()
    trigger = fields.String(metadata={"description": "the trigger's name in the workflow"})
    run_id = fields.String(metadata={"description": "the run it started (or had started)"})


class FilteredSchema(Schema):
    workflow = fields.String()
    version = fields.String()
    trigger = fields.String()


class TriggerErrorSchema(Schema):
    workflow = fields.String()
    version = fields.String()
    trigger = fields.String()
    path = fields.String(metadata={"description": "where in the definition: triggers[0].filter"})
    error = fields.String()


class PublishedSchema(Schema):
    name = fields.String()
    key = fields.String(allow_none=True)
    started = fields.List(fields.Nested(TriggeredSchema), metadata={"description": "runs started"})
    deduplicated = fields.List(
        fields.Nested(TriggeredSchema),
        metadata={"description": "triggers whose run for this key had already started"},
    )
    filtered = fields.List(
        fields.Nested(FilteredSchema),
        metadata={"description": "triggers whose filter was false"},
    )
    errors = fields.List(
        fields.Nested(TriggerErrorSchema),
        metadata={"description": "triggers that started nothing because of an error"},
    )
