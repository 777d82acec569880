"""Marshmallow schemas of the REST API: request arguments (validated, 400 with per-field
messages) and response shapes (they drive the OpenAPI document at /api/v1/openapi.json)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema

from web.runs import VIEWS
from web.settings import ROLES

RUN_STATUSES = (
    "PENDING",
    "RUNNING",
    "PAUSING",
    "PAUSED",
    "CANCELLING",
    "CANCELLED",
    "COMPENSATING",
    "COMPLETED",
    "FAILED",
    "COMPENSATION_FAILED",
)


MAX_SEQ = 2**63 - 1  # sequence numbers are SQL BIGINTs: a larger "after" is a 400, not an overflow
SEQ_RANGE = validate.Range(0, MAX_SEQ, error=f"a sequence number: 0 to {MAX_SEQ}")

# What a Timestamp accepts, exactly (the OpenAPI pattern and the check are this one expression):
# empty (no bound), unix seconds, or an ISO 8601 date or date-time with an optional offset.
_DAY = r"((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-9]))"
_TIME = r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?"
TIMESTAMP_PATTERN = rf"^(|-?[0-9]{{1,12}}(\.[0-9]{{1,9}})?|[1-9][0-9]{{3}}-{_DAY}{_TIME})$"
_TIMESTAMP_RE = re.compile(TIMESTAMP_PATTERN)


class Timestamp(fields.Field):
    """Unix seconds, or an ISO 8601 date/time (UTC unless it says otherwise); empty means none."""

    def __init__(self, **kwargs: Any) -> None:
        meta = {"type": "string", "pattern": TIMESTAMP_PATTERN, **kwargs.pop("metadata", {})}
        super().__init__(allow_none=True, metadata=meta, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        text = str(value)
        if not _TIMESTAMP_RE.match(text):
            raise ValidationError(
                "expected unix seconds or an ISO 8601 date like 2026-01-31T12:00:00Z"
            )
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            pass
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:  # 29 February of a year that has none
            raise ValidationError(f"not a date: {exc}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()


class StrictBoolean(fields.Boolean):
    """true or false, as the document says: not 0, 1, "yes" or "on" (marshmallow's Boolean takes those)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class StrictInteger(fields.Integer):
    """A JSON body's integer: not 2.5, "2" or true (marshmallow's Integer takes those)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid", input=value)
        return super()._deserialize(value, attr, data, **kwargs)


class StrictFloat(fields.Float):
    """A JSON body's number: not "2.5" or true."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid", input=value)
        return super()._deserialize(value, attr, data, **kwargs)


def _split_lists(data: Any, names: tuple[str, ...]) -> Any:
    """Accept ?status=A,B as well as ?status=A&status=B."""
    if not hasattr(data, "getlist"):
        return data
    out = {k: data.getlist(k) if k in names else data.get(k) for k in data}
    for k in names:
        if k in out:
            out[k] = [p.strip() for v in out[k] for p in str(v).split(",") if p.strip()]
    return out


class ProblemSchema(Schema):
    path = fields.String(metadata={"description": "where, e.g. steps[1].depends_on[0]"})
    message = fields.String()


class ErrorSchema(Schema):
    """Every error under /api: code, status and message, and what else the status explains."""

    code = fields.Integer()
    status = fields.String()
    message = fields.String()
    errors = fields.Dict(metadata={"description": '400: {"query"|"json": {field: [messages]}}'})
    problems = fields.List(
        fields.Nested(ProblemSchema),
        metadata={"description": "400 on an invalid definition: every problem with its path"},
    )
    current_status = fields.String(
        allow_none=True, metadata={"description": "409: the run's status now"}
    )
    allowed = fields.List(
        fields.String(), metadata={"description": "409: the statuses the action is allowed in"}
    )
    action = fields.String(metadata={"description": "409: the action refused"})
    reply = fields.Raw(metadata={"description": "409 of a worker action: the worker's reply"})


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


class RunListArgs(Schema):
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

    @pre_load
    def lists(self, data: Any, **_: Any) -> Any:
        return _split_lists(data, ("status", "tag", "ids"))


class WorkflowRefSchema(Schema):
    id = fields.String()
    name = fields.String()
    version = fields.String()


class ProgressSchema(Schema):
    current_steps = fields.List(fields.String())
    current_step = fields.Integer(
        metadata={"description": "1-based position of the next step to settle"}
    )
    settled = fields.Integer()
    total = fields.Integer()
    percent = fields.Float()


class SlaSchema(Schema):
    target = fields.Float(allow_none=True, metadata={"description": "seconds"})
    elapsed = fields.Float()
    status = fields.String(
        allow_none=True, metadata={"description": "on_track, at_risk (>= 90 %), breached"}
    )


class SlaFigureSchema(Schema):
    elapsed = fields.Float()
    status = fields.String(allow_none=True)
    ended_at = fields.Float(allow_none=True)
    started_at = fields.Float(allow_none=True)
    count = fields.Integer()


class RunSlaSchema(SlaSchema):
    """A run's SLA in its detail: an operator retry does not restart the clock (``elapsed`` is
    from the run's creation); a retried run also has the first dispatch's figure and the latest
    retry's own."""

    first = fields.Nested(
        SlaFigureSchema,
        allow_none=True,
        metadata={"description": "creation to the end reached before the first operator retry"},
    )
    retry = fields.Nested(
        SlaFigureSchema,
        allow_none=True,
        metadata={"description": "the latest operator retry to now or the run's end"},
    )


class RunSummarySchema(Schema):
    id = fields.String()
    workflow = fields.Nested(WorkflowRefSchema)
    status = fields.String()
    progress = fields.Nested(ProgressSchema)
    created_at = fields.Float()
    started_at = fields.Float(allow_none=True)
    finished_at = fields.Float(allow_none=True)
    duration = fields.Float(allow_none=True)
    sla = fields.Nested(SlaSchema)
    triggered_by = fields.String(allow_none=True)
    trigger_type = fields.String(allow_none=True)
    priority = fields.String()
    tags = fields.List(fields.String())
    error = fields.String(allow_none=True)
    failed_step = fields.String(allow_none=True)
    seq = fields.Integer(metadata={"description": "sequence number of the run's latest event"})
    cloned_from = fields.String(allow_none=True)
    can_pause = fields.Boolean()
    can_resume = fields.Boolean()
    can_cancel = fields.Boolean()
    can_retry = fields.Boolean()
    can_retry_compensation = fields.Boolean()
    can_resolve = fields.Boolean()
    state_lost = fields.Boolean(
        metadata={
            "description": "not final in the audit store but unknown to Redis "
            "(lost with a Redis restart): resolve it by hand"
        }
    )


class SubmittedRunSchema(RunSummarySchema):
    warnings = fields.List(
        fields.String(),
        metadata={
            "description": "what the submit warns about: a queue the run needs that no live "
            "worker consumes (the run waits PENDING there until one does); [] when nothing"
        },
    )


class CountsSchema(Schema):
    active = fields.Integer()
    pending = fields.Integer()
    slow = fields.Integer()
    completed_today = fields.Integer()
    failed_today = fields.Integer()
    sla_compliance_today = fields.Float(allow_none=True)


class RunListSchema(Schema):
    runs = fields.List(fields.Nested(RunSummarySchema))
    next_cursor = fields.String(allow_none=True)
    counts = fields.Nested(CountsSchema)
    source = fields.String(metadata={"description": "audit (SQL + live state) or hot (Redis only)"})
    warnings = fields.List(fields.String())


class DetailArgs(Schema):
    steps_offset = fields.Integer(load_default=0, validate=validate.Range(0, MAX_SEQ))
    steps_limit = fields.Integer(load_default=100, validate=validate.Range(1, 2000))
    log_limit = fields.Integer(load_default=200, validate=validate.Range(0, 5000))


class AttemptSchema(Schema):
    attempt = fields.Integer(allow_none=True)
    status = fields.String()
    started_at = fields.Float(allow_none=True)
    finished_at = fields.Float(allow_none=True)
    duration = fields.Float(allow_none=True)
    worker = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    input = fields.Raw(
        allow_none=True, metadata={"description": "the params this attempt ran with, rendered"}
    )


class LogSchema(Schema):
    seq = fields.Integer()
    line = fields.Integer()
    step = fields.String()
    ts = fields.Float()
    level = fields.String()
    message = fields.String()
    entity_tag = fields.String(allow_none=True)
    entity_route = fields.String(allow_none=True)
    entity_id = fields.String(allow_none=True)
    entity_type = fields.String(allow_none=True)


class CompensationSchema(Schema):
    plugin = fields.String()
    method = fields.String()
    status = fields.String(
        allow_none=True, metadata={"description": "COMPENSATING, COMPENSATED, FAILED or null"}
    )
    error = fields.String(allow_none=True)


class StepSchema(Schema):
    number = fields.Integer()
    id = fields.String()
    name = fields.String()
    plugin = fields.String(allow_none=True)
    method = fields.String(allow_none=True)
    status = fields.String()
    depends_on = fields.List(fields.String())
    when = fields.String(allow_none=True)
    critical = fields.Boolean()
    queue = fields.String()
    started_at = fields.Float(allow_none=True)
    finished_at = fields.Float(allow_none=True)
    duration = fields.Float(allow_none=True)
    input = fields.Raw(
        allow_none=True,
        metadata={
            "description": "the input of the latest attempt, templates rendered; before a step ran, its params"
        },
    )
    input_rendered = fields.Boolean(
        metadata={"description": "false while input is still the params as written"}
    )
    params = fields.Raw(
        allow_none=True, metadata={"description": "the step's params as the definition writes them"}
    )
    output = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    traceback = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    worker = fields.String(allow_none=True)
    attempts = fields.Integer()
    retry_count = fields.Integer()
    max_retries = fields.Integer()
    operator_retries = fields.Integer()  # operator retries of the run that ran this step again
    attempt = fields.Integer()  # its attempt within the latest dispatch that ran it
    attempts_allowed = fields.Integer()  # 1 + its configured retries
    history = fields.List(fields.Nested(AttemptSchema))
    progress = fields.Dict(allow_none=True)
    logs = fields.List(fields.Nested(LogSchema))
    compensation = fields.Nested(CompensationSchema, allow_none=True)


class BranchSchema(Schema):
    branch = fields.String()
    name = fields.String()
    steps = fields.List(fields.String())
    status = fields.String()


class BranchGroupSchema(Schema):
    group = fields.Integer()
    branches = fields.List(fields.Nested(BranchSchema))


class RunDetailSchema(RunSummarySchema):
    sla = fields.Nested(RunSlaSchema)
    definition = fields.Dict()
    inputs = fields.Raw()
    resolved_by = fields.String(allow_none=True)
    epoch = fields.Integer(allow_none=True)
    steps = fields.List(fields.Nested(StepSchema))
    steps_offset = fields.Integer()
    steps_total = fields.Integer()
    step_counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    parallel_branches = fields.List(fields.Nested(BranchGroupSchema))
    logs_total = fields.Integer()
    operator_actions = fields.List(fields.Dict())
    source = fields.String()
    warnings = fields.List(fields.String())


class ActionBody(Schema):
    reason = fields.String(load_default=None, validate=validate.Length(max=2000))


class ResolveBody(ActionBody):
    as_ = fields.String(
        data_key="as",
        load_default=None,
        validate=validate.OneOf(["failed", "cancelled"]),
        metadata={
            "description": "how the run ends: failed or cancelled (required for a run "
            "whose state was lost; default for COMPENSATION_FAILED: "
            "what the compensation was for)"
        },
    )


class CancelBody(ActionBody):
    terminate = StrictBoolean(load_default=True, metadata={"description": "revoke running steps"})


class RetryBody(ActionBody):
    from_step = fields.String(
        load_default=None, metadata={"description": "default: the first failed step"}
    )
    from_start = StrictBoolean(load_default=False)
    compensation = StrictBoolean(
        load_default=False, metadata={"description": "retry the failed compensation instead"}
    )


class CloneBody(ActionBody):
    inputs = fields.Dict(
        load_default=dict, metadata={"description": "inputs overriding the original run's"}
    )


class ActionResultSchema(Schema):
    action = fields.String()
    run_id = fields.String()
    status_before = fields.String()
    status = fields.String()
    detail = fields.Dict()
    message = fields.String()
    run = fields.Nested(RunSummarySchema, allow_none=True)


def _one_of(*names: str) -> dict[str, Any]:
    """OpenAPI for "exactly one of these fields" (marshmallow states it in a validates_schema)."""
    return {"oneOf": [{"required": [n]} for n in names]}


class SubmitBody(Schema):
    workflow = fields.String(
        load_default=None,
        allow_none=False,
        validate=validate.Length(min=1),
        metadata={"description": "a registered workflow id"},
    )
    version = fields.String(
        load_default=None, metadata={"description": "default (or null): the latest"}
    )
    definition = fields.Raw(
        load_default=None,
        allow_none=False,
        metadata={
            "description": "an inline definition: an object, or YAML/JSON text",
            "oneOf": [{"type": "object"}, {"type": "string"}],
        },
    )
    inputs = fields.Dict(load_default=dict)
    # null: the definition's own priority (the dashboard's run form sends null for "default")
    priority = fields.String(load_default=None, validate=validate.OneOf(["high", "normal", "low"]))
    tags = fields.List(fields.String(validate=validate.Length(1, 200)), load_default=list)

    @validates_schema
    def one_source(self, data: dict[str, Any], **_: Any) -> None:
        if (data.get("workflow") is not None) == (data.get("definition") is not None):
            raise ValidationError(
                "give either workflow (a registered id) or definition (inline)", "workflow"
            )
        if data.get("definition") is not None and not isinstance(data["definition"], (dict, str)):
            raise ValidationError("an object or YAML/JSON text", "definition")


class EventsArgs(Schema):
    after = fields.Integer(
        load_default=0,
        validate=SEQ_RANGE,
        metadata={"description": "the last seq the client has applied"},
    )
    limit = fields.Integer(load_default=1000, validate=validate.Range(1, 10_000))


class EventSchema(Schema):
    run = fields.String()
    seq = fields.Integer()
    type = fields.String()
    step = fields.String(allow_none=True)
    status = fields.String(allow_none=True)
    ts = fields.Float()
    data = fields.Raw()


class EventListSchema(Schema):
    run = fields.String()
    after = fields.Integer()
    events = fields.List(fields.Nested(EventSchema))
    latest_seq = fields.Integer()
    warnings = fields.List(
        fields.String(), metadata={"description": "e.g. Redis unreachable: recorded events only"}
    )


class LogArgs(Schema):
    step = fields.String(load_default=None)
    after = fields.Integer(load_default=0, validate=SEQ_RANGE)
    # A log event carries a batch of lines: (after, after_line) is the last line read.
    after_line = fields.Integer(load_default=None, validate=SEQ_RANGE)
    limit = fields.Integer(load_default=500, validate=validate.Range(1, 5000))
    level = fields.String(
        load_default=None,
        validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
    )


class LogListSchema(Schema):
    logs = fields.List(fields.Nested(LogSchema))
    next_after = fields.Integer(allow_none=True)
    next_after_line = fields.Integer(allow_none=True)
    warnings = fields.List(
        fields.String(), metadata={"description": "e.g. Redis unreachable: may be stale"}
    )


class BarSchema(Schema):
    step = fields.String()
    number = fields.Integer()
    kind = fields.String(metadata={"description": "step or compensation"})
    attempt = fields.Integer(allow_none=True)
    status = fields.String()
    start = fields.Float()
    end = fields.Float(allow_none=True)
    duration = fields.Float(allow_none=True)
    worker = fields.String(allow_none=True)
    error = fields.String(allow_none=True)


class TimelineSchema(Schema):
    run = fields.Nested(RunSummarySchema)
    steps = fields.List(fields.Dict())
    bars = fields.List(fields.Nested(BarSchema))
    now = fields.Float()


class GraphSchema(Schema):
    run = fields.Nested(RunSummarySchema, required=False)
    nodes = fields.List(fields.Dict())
    edges = fields.List(fields.Dict())
    mode = fields.String()


# ---------------------------------------------------------------------------------------------
# Workflows, analytics, users
# ---------------------------------------------------------------------------------------------


class WorkflowSummarySchema(Schema):
    id = fields.String()
    name = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    versions = fields.List(fields.String())
    latest = fields.String()
    mode = fields.String()
    steps = fields.Integer()
    tags = fields.List(fields.String())
    sla_seconds = fields.Float(allow_none=True)
    inputs = fields.Dict()


class WorkflowListSchema(Schema):
    workflows = fields.List(fields.Nested(WorkflowSummarySchema))


class WorkflowArgs(Schema):
    version = fields.String(load_default=None)


class WorkflowDetailSchema(WorkflowSummarySchema):
    version = fields.String()
    definition = fields.Dict()
    yaml = fields.String()
    graph = fields.Nested(GraphSchema)


class WorkflowPutBody(Schema):
    yaml = fields.String(
        load_default=None,
        allow_none=False,
        metadata={"description": "the definition as YAML (or JSON) text"},
    )
    definition = fields.Dict(
        load_default=None, allow_none=False, metadata={"description": "the definition as an object"}
    )

    @validates_schema
    def one_form(self, data: dict[str, Any], **_: Any) -> None:
        if (data.get("yaml") is None) == (data.get("definition") is None):
            raise ValidationError("give either yaml (text) or definition (an object)", "yaml")


# Schema-level OpenAPI that marshmallow fields cannot say, by component name (web/rest.py adds it).
OPENAPI_EXTRAS = {
    "SubmitBody": _one_of("workflow", "definition"),
    "WorkflowPutBody": _one_of("yaml", "definition"),
    "UnlockBody": {"anyOf": [{"required": ["username"]}, {"required": ["address"]}]},
}


class AnalyticsArgs(Schema):
    period = fields.String(load_default="24h", validate=validate.OneOf(["1h", "24h", "7d", "30d"]))
    workflow = fields.String(load_default=None)


class AnalyticsSchema(Schema):
    period = fields.String()
    since = fields.Float()
    until = fields.Float()
    runs = fields.Integer()
    ended = fields.Integer()
    failed = fields.Integer()
    failure_rate = fields.Float(allow_none=True, metadata={"description": "percent of ended runs"})
    sla_compliance = fields.Dict()
    by_workflow = fields.List(fields.Dict())
    slowest_steps = fields.List(fields.Dict())
    retry_rate = fields.Dict()
    runs_per_hour = fields.List(fields.Dict())


class UserSchema(Schema):
    name = fields.String()
    role = fields.String()
    disabled = fields.Boolean()
    created_at = fields.Float()
    permissions = fields.List(
        fields.String(),
        metadata={"description": "what the user may do beyond its role (admins: every permission)"},
    )
    granted = fields.List(
        fields.String(),
        metadata={
            "description": "permissions an admin granted (PUT "
            "/users/{name}/permissions/{permission})"
        },
    )


PASSWORD_RULE = "a password has at least 8 characters"


# A user name has no surrounding white space (the handler once stripped it, refusing "  " late).
USER_NAME = validate.Regexp(
    r"^\S(.*\S)?$", error="1 to 200 characters, not starting or ending with a space"
)


class UserBody(Schema):
    name = fields.String(required=True, validate=[validate.Length(1, 200), USER_NAME])
    password = fields.String(
        required=True,
        validate=validate.Length(min=8, error=PASSWORD_RULE),
        metadata={
            "description": "required: POST creates (or resets) a user; "
            "PATCH /users/{name} changes only the role"
        },
    )
    role = fields.String(load_default=None, allow_none=False, validate=validate.OneOf(list(ROLES)))


class UserPatch(Schema):
    password = fields.String(
        load_default=None, allow_none=False, validate=validate.Length(min=8, error=PASSWORD_RULE)
    )
    role = fields.String(load_default=None, allow_none=False, validate=validate.OneOf(list(ROLES)))
    disabled = StrictBoolean(
        load_default=None,
        allow_none=False,
        metadata={
            "description": "true: the user cannot log in and its sessions and "
            "tokens stop working; false: enabled again"
        },
    )


class LoginBody(Schema):
    username = fields.String(required=True)
    password = fields.String(required=True)


class MeSchema(Schema):
    name = fields.String(allow_none=True)
    role = fields.String(allow_none=True)
    permissions = fields.List(fields.String(), metadata={"description": "e.g. submit_inline"})
    via = fields.String()
    read_only = fields.Boolean()
    csrf_token = fields.String(allow_none=True)


class TokenBody(Schema):
    name = fields.String(load_default="api", validate=validate.Length(1, 200))
    username = fields.String(
        load_default=None,
        validate=validate.Length(1, 200),
        metadata={"description": "admins: the user the token is for (default: you)"},
    )


class AuditEntrySchema(Schema):
    ts = fields.Float()
    actor = fields.String()
    action = fields.String()
    target_type = fields.String()
    target_id = fields.String()
    outcome = fields.String()
    detail = fields.Dict(allow_none=True)


class AuditListSchema(Schema):
    actions = fields.List(fields.Nested(AuditEntrySchema))


class TokenSchema(Schema):
    id = fields.String()
    username = fields.String()
    name = fields.String()
    created_at = fields.Float()
    last_used_at = fields.Float(allow_none=True)
    token = fields.String(metadata={"description": "shown once, when created"})


def fast_dump(schema: Schema, obj: Any) -> Any:
    """What ``schema.dump(obj)`` returns for data that already has the schema's types: only the
    declared fields, nested schemas followed. marshmallow's field-by-field dump took about half a
    200-step run detail's time; the schema still documents the response (OpenAPI)."""
    plan = _plan(type(schema))
    if schema.many:
        return [_project(plan, o) for o in obj]
    return _project(plan, obj)


_PLANS: dict[type, list[tuple[str, str, Any]]] = {}


def _plan(cls: type) -> list[tuple[str, str, Any]]:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = []
        for name, f in cls().dump_fields.items():
            sub: Any = None
            inner = f.inner if isinstance(f, fields.List) else f
            if isinstance(inner, fields.Nested):
                nested = inner.nested if isinstance(inner.nested, type) else type(inner.nested)
                sub = (_plan(nested), isinstance(f, fields.List) or inner.many)
            plan.append((f.attribute or name, f.data_key or name, sub))
        _PLANS[cls] = plan
    return plan


def _project(plan: list[tuple[str, str, Any]], obj: Any) -> dict[str, Any]:
    out = {}
    for attr, key, sub in plan:
        if attr not in obj:
            continue
        v = obj[attr]
        if sub is not None and v is not None:
            p, many = sub
            v = [_project(p, x) for x in v] if many else _project(p, v)
        out[key] = v
    return out


class LockoutSchema(Schema):
    scope = fields.String(
        metadata={"description": "user (an account) or address (a client address)"}
    )
    subject = fields.String(metadata={"description": "the user name as typed, or the address"})
    failures = fields.Integer()
    locked_until = fields.Float()
    retry_after = fields.Integer(metadata={"description": "seconds until the lock ends by itself"})
    first_failure_at = fields.Float()
    last_failure_at = fields.Float()


class LockoutListSchema(Schema):
    lockouts = fields.List(fields.Nested(LockoutSchema))


class UnlockBody(Schema):
    # At least one of the two (OPENAPI_EXTRAS says so too); null is not "absent".
    username = fields.String(load_default=None, allow_none=False, validate=validate.Length(1, 256))
    address = fields.String(load_default=None, allow_none=False, validate=validate.Length(1, 256))
    reason = fields.String(load_default=None, allow_none=True)


class UnlockedSchema(Schema):
    scope = fields.String()
    subject = fields.String()


class UnlockResultSchema(Schema):
    unlocked = fields.List(fields.Nested(UnlockedSchema))
