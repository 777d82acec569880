"""Marshmallow schemas of the REST API: request arguments (validated, 400 with per-field
messages) and response shapes (they drive the OpenAPI document at /api/v1/openapi.json)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema

from web.runs import VIEWS
from web.settings import ROLES

RUN_STATUSES = ("PENDING", "RUNNING", "PAUSING", "PAUSED", "CANCELLING", "CANCELLED", "COMPENSATING",
                "COMPLETED", "FAILED", "COMPENSATION_FAILED")


class Timestamp(fields.Field):
    """Unix seconds, or an ISO 8601 date/time (UTC unless it says otherwise)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("expected unix seconds or an ISO 8601 date like 2026-01-31T12:00:00Z") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()


def _split_lists(data: Any, names: tuple[str, ...]) -> Any:
    """Accept ?status=A,B as well as ?status=A&status=B."""
    if not hasattr(data, "getlist"):
        return data
    out = {k: data.getlist(k) if k in names else data.get(k) for k in data}
    for k in names:
        if k in out:
            out[k] = [p.strip() for v in out[k] for p in str(v).split(",") if p.strip()]
    return out


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


class RunListArgs(Schema):
    view = fields.String(load_default="all", validate=validate.OneOf(list(VIEWS)),
                         metadata={"description": "tab: all, active, pending, completed, failed, slow"})
    status = fields.List(fields.String(validate=validate.OneOf(RUN_STATUSES)), load_default=list)
    workflow = fields.String(load_default=None)
    tag = fields.List(fields.String(), load_default=list, metadata={"description": "runs having every tag"})
    triggered_by = fields.String(load_default=None)
    since = Timestamp(load_default=None, metadata={"description": "created at or after"})
    until = Timestamp(load_default=None, metadata={"description": "created before"})
    search = fields.String(load_default=None, validate=validate.Length(max=200),
                           metadata={"description": "run id prefix, or part of the workflow id or name"})
    ids = fields.List(fields.String(), load_default=list)
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    cursor = fields.String(load_default=None, metadata={"description": "next_cursor of the previous page"})

    @pre_load
    def lists(self, data: Any, **_: Any) -> Any:
        return _split_lists(data, ("status", "tag", "ids"))


class WorkflowRefSchema(Schema):
    id = fields.String()
    name = fields.String()
    version = fields.String()


class ProgressSchema(Schema):
    current_steps = fields.List(fields.String())
    current_step = fields.Integer(metadata={"description": "1-based position of the next step to settle"})
    settled = fields.Integer()
    total = fields.Integer()
    percent = fields.Float()


class SlaSchema(Schema):
    target = fields.Float(allow_none=True, metadata={"description": "seconds"})
    elapsed = fields.Float()
    status = fields.String(allow_none=True, metadata={"description": "on_track, at_risk (>= 90 %), breached"})


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
    steps_offset = fields.Integer(load_default=0, validate=validate.Range(min=0))
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
    input = fields.Raw(allow_none=True, metadata={"description": "the params this attempt ran with, rendered"})


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
    status = fields.String(allow_none=True, metadata={"description": "COMPENSATING, COMPENSATED, FAILED or null"})
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
    input = fields.Raw(allow_none=True, metadata={
        "description": "the input of the latest attempt, templates rendered; before a step ran, its params"})
    input_rendered = fields.Boolean(metadata={"description": "false while input is still the params as written"})
    params = fields.Raw(allow_none=True, metadata={"description": "the step's params as the definition writes them"})
    output = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    traceback = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    worker = fields.String(allow_none=True)
    attempts = fields.Integer()
    retry_count = fields.Integer()
    max_retries = fields.Integer()
    history = fields.List(fields.Nested(AttemptSchema))
    progress = fields.Dict(allow_none=True)
    logs = fields.List(fields.Nested(LogSchema))
    compensation = fields.Nested(CompensationSchema, allow_none=True)


class BranchSchema(Schema):
    branch = fields.String()
    steps = fields.List(fields.String())
    status = fields.String()


class BranchGroupSchema(Schema):
    group = fields.Integer()
    branches = fields.List(fields.Nested(BranchSchema))


class RunDetailSchema(RunSummarySchema):
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


class CancelBody(ActionBody):
    terminate = fields.Boolean(load_default=True, metadata={"description": "revoke running steps"})


class RetryBody(ActionBody):
    from_step = fields.String(load_default=None, metadata={"description": "default: the first failed step"})
    from_start = fields.Boolean(load_default=False)
    compensation = fields.Boolean(load_default=False,
                                  metadata={"description": "retry the failed compensation instead"})


class CloneBody(ActionBody):
    inputs = fields.Dict(load_default=dict, metadata={"description": "inputs overriding the original run's"})


class ActionResultSchema(Schema):
    action = fields.String()
    run_id = fields.String()
    status_before = fields.String()
    status = fields.String()
    detail = fields.Dict()
    message = fields.String()
    run = fields.Nested(RunSummarySchema, allow_none=True)


class SubmitBody(Schema):
    workflow = fields.String(load_default=None, metadata={"description": "a registered workflow id"})
    version = fields.String(load_default=None)
    definition = fields.Raw(load_default=None,
                            metadata={"description": "an inline definition: an object, or YAML/JSON text"})
    inputs = fields.Dict(load_default=dict)
    priority = fields.String(load_default=None, validate=validate.OneOf(["high", "normal", "low"]))
    tags = fields.List(fields.String(validate=validate.Length(1, 200)), load_default=list)

    @validates_schema
    def one_source(self, data: dict[str, Any], **_: Any) -> None:
        if bool(data.get("workflow")) == (data.get("definition") is not None):
            raise ValidationError("give either workflow (a registered id) or definition (inline)", "workflow")
        if data.get("definition") is not None and not isinstance(data["definition"], (dict, str)):
            raise ValidationError("an object or YAML/JSON text", "definition")


class EventsArgs(Schema):
    after = fields.Integer(load_default=0, validate=validate.Range(min=0),
                           metadata={"description": "the last seq the client has applied"})
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


class LogArgs(Schema):
    step = fields.String(load_default=None)
    after = fields.Integer(load_default=0, validate=validate.Range(min=0))
    # A log event carries a batch of lines: (after, after_line) is the last line read.
    after_line = fields.Integer(load_default=None, validate=validate.Range(min=0))
    limit = fields.Integer(load_default=500, validate=validate.Range(1, 5000))
    level = fields.String(load_default=None, validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]))


class LogListSchema(Schema):
    logs = fields.List(fields.Nested(LogSchema))
    next_after = fields.Integer(allow_none=True)
    next_after_line = fields.Integer(allow_none=True)


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
    yaml = fields.String(load_default=None, metadata={"description": "the definition as YAML (or JSON) text"})
    definition = fields.Dict(load_default=None, metadata={"description": "the definition as an object"})

    @validates_schema
    def one_form(self, data: dict[str, Any], **_: Any) -> None:
        if (data.get("yaml") is None) == (data.get("definition") is None):
            raise ValidationError("give either yaml (text) or definition (an object)", "yaml")


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
    permissions = fields.List(fields.String(), metadata={"description": "what the user may do beyond its role "
                                                                        "(admins: every permission)"})
    granted = fields.List(fields.String(), metadata={"description": "permissions an admin granted (PUT "
                                                                    "/users/{name}/permissions/{permission})"})


PASSWORD_RULE = "a password has at least 8 characters"


class UserBody(Schema):
    name = fields.String(required=True, validate=validate.Length(1, 200))
    password = fields.String(load_default=None, validate=validate.Length(min=8, error=PASSWORD_RULE))
    role = fields.String(load_default=None, validate=validate.OneOf(list(ROLES)))


class UserPatch(Schema):
    password = fields.String(load_default=None, validate=validate.Length(min=8, error=PASSWORD_RULE))
    role = fields.String(load_default=None, validate=validate.OneOf(list(ROLES)))
    disabled = fields.Boolean(load_default=None, allow_none=True,
                              metadata={"description": "true: the user cannot log in and its sessions and "
                                                       "tokens stop working; false: enabled again"})


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
    username = fields.String(load_default=None, validate=validate.Length(1, 200),
                             metadata={"description": "admins: the user the token is for (default: you)"})


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
    scope = fields.String(metadata={"description": "user (an account) or address (a client address)"})
    subject = fields.String(metadata={"description": "the user name as typed, or the address"})
    failures = fields.Integer()
    locked_until = fields.Float()
    retry_after = fields.Integer(metadata={"description": "seconds until the lock ends by itself"})
    first_failure_at = fields.Float()
    last_failure_at = fields.Float()


class LockoutListSchema(Schema):
    lockouts = fields.List(fields.Nested(LockoutSchema))


class UnlockBody(Schema):
    username = fields.String(load_default=None, validate=validate.Length(1, 256))
    address = fields.String(load_default=None, validate=validate.Length(1, 256))
    reason = fields.String(load_default=None, allow_none=True)


class UnlockedSchema(Schema):
    scope = fields.String()
    subject = fields.String()


class UnlockResultSchema(Schema):
    unlocked = fields.List(fields.Nested(UnlockedSchema))
