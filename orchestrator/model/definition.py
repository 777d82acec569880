"""Workflow definitions: the frozen model, the one marshmallow schema, files and the builder.

YAML, JSON and the Python builder all end in :func:`load_definition`, so a user sees one set
of error messages with one style of path (``steps[3].depends_on[0]: unknown step 'lod_data'``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from orchestrator.errors import DefinitionError
from orchestrator.model import concurrency as concurrency_
from orchestrator.model import limits as limits_
from orchestrator.model import triggers as triggers_
from orchestrator.model.limits import Limits
from orchestrator.model.triggers import Trigger

# \Z, not $: "$" also matches before a trailing newline, so "etl\n" passed as an id.
ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*\Z"
STEP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z"
QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*\Z"
MODES = ("sequential", "parallel", "conditional")
# A run's priority as a Celery message priority. The two transports order them oppositely: kombu's
# Redis transport serves its lower-numbered sub-queues first, an AMQP queue with x-max-priority
# delivers higher numbers first. "normal" is 4 on both (the app's task_default_priority).
PRIORITIES = {"high": 0, "normal": 4, "low": 8}  # Redis transport: lower runs first
AMQP_PRIORITIES = {"high": 8, "normal": 4, "low": 0}  # AMQP (RabbitMQ): higher runs first
AMQP_MAX_PRIORITY = 9  # the x-max-priority of the queues canvasflow declares on AMQP
MAX_RETRIES = 100

# Step settings a workflow's `defaults` may set, with the built-in default of each.
STEP_DEFAULTS: dict[str, Any] = {
    "timeout": None,
    "retries": 0,
    "retry_delay": 1.0,
    "retry_backoff": "fixed",
    "retry_delay_max": 120.0,  # keep below the broker's visibility timeout (operations.md)
    "critical": True,
    "queue": "default",
}


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def backoff_seconds(delay: float, backoff: str, cap: float, attempt: int) -> float:
    """The retry wait after attempt ``attempt`` (1-based) failed: fixed, or doubling, capped."""
    if backoff == "exponential":
        return float(min(delay * 2 ** (attempt - 1), cap))
    return float(min(delay, cap))


@dataclass(frozen=True)
class Compensation:
    """The rollback step run when the workflow later fails or is cancelled."""

    plugin: str
    method: str = "run"
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    retries: int = 0
    queue: str | None = None


@dataclass(frozen=True)
class MapSpec:
    """``map`` of a mapped step: one item per element of the list ``over`` gives at run time."""

    over: str
    as_: str = "item"
    max_parallel: int | None = None


@dataclass(frozen=True)
class Step:
    id: str
    plugin: str  # "" for a sub-workflow step (``workflow`` set instead)
    method: str = "run"
    params: Mapping[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    join: str = "all"
    when: str | None = None
    name: str | None = None
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 1.0
    retry_backoff: str = "fixed"
    retry_delay_max: float = 120.0
    critical: bool = True
    queue: str = "default"
    compensate: Compensation | None = None
    # A sub-workflow step (model/subflows.py): the child workflow, its version (pinned at
    # submit), and the child's inputs (templates).
    workflow: str | None = None
    version: str | None = None
    inputs: Mapping[str, Any] | None = None
    map: MapSpec | None = None

    def retry_countdown(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` after attempt ``attempt`` failed."""
        return backoff_seconds(self.retry_delay, self.retry_backoff, self.retry_delay_max, attempt)


@dataclass(frozen=True)
class Definition:
    """A validated workflow definition (format version 1); build one with :class:`Workflow`."""

    id: str
    steps: tuple[Step, ...]
    name: str | None = None
    description: str | None = None
    version: str | None = None
    mode: str = "parallel"
    sla_seconds: float | None = None
    priority: str = "normal"
    tags: tuple[str, ...] = ()
    inputs: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    triggers: tuple[Trigger, ...] = ()
    # The run's result: templates evaluated when the run completes (model/subflows.py).
    outputs: Mapping[str, Any] = field(default_factory=dict)
    concurrency: concurrency_.Concurrency | None = (
        None  # runs active at once (model/concurrency.py)
    )

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    @property
    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]

    def descendants(self, step_id: str) -> set[str]:
        """Every step that depends on ``step_id``, directly or not (list order in sequential
        mode): what a retry from that step runs again."""
        ids = self.step_ids
        children: dict[str, list[str]] = {s: [] for s in ids}
        for s in self.steps:
            for d in s.depends_on:
                children[d].append(s.id)
        if self.mode == "sequential":
            for a, b in zip(ids, ids[1:], strict=False):
                children[a].append(b)
        out: set[str] = set()
        stack = list(children[step_id])
        while stack:
            n = stack.pop()
            if n not in out:
                out.add(n)
                stack.extend(children[n])
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as a user would write it (only fields that differ from defaults)."""
        return dump_definition(self)


# ---------------------------------------------------------------------------------------------
# The one schema
# ---------------------------------------------------------------------------------------------


class Name(validate.Validator):
    """An id or a name: no control characters, bidi controls or lone surrogates (said once,
    plainly), then the field's own pattern when it has one."""

    def __init__(
        self, pattern: str | None = None, error: str = "", *, non_empty: bool = False
    ) -> None:
        self.pattern = validate.Regexp(pattern, error=error) if pattern else None
        self.non_empty = non_empty

    def __call__(self, value: Any) -> Any:
        why = limits_.forbidden_character(value) if isinstance(value, str) else None
        if why:
            raise ValidationError(why)
        if self.non_empty and not value:
            raise ValidationError("may not be empty")
        return self.pattern(value) if self.pattern else value


class _StrictSchema(Schema):
    class Meta:
        unknown = RAISE


def _positive(msg: str) -> validate.Range:
    return validate.Range(min=0, min_inclusive=False, error=msg)


class CompensationSchema(_StrictSchema):
    plugin = fields.String(required=True, validate=Name(non_empty=True))
    method = fields.String(load_default="run", validate=Name(non_empty=True))
    params = fields.Dict(keys=fields.String(), load_default=dict)
    timeout = fields.Float(
        allow_none=True, validate=_positive("must be a positive number of seconds")
    )
    retries = fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_RETRIES))
    queue = fields.String(validate=Name(QUEUE_PATTERN, "invalid queue name"))


class MapSchema(_StrictSchema):
    over = fields.String(required=True, validate=validate.Regexp(r"\S", error="may not be empty"))
    as_ = fields.String(data_key="as", load_default="item")
    max_parallel = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(min=1, error="must be at least 1")
    )


class StepSchema(_StrictSchema):
    id = fields.String(
        required=True, validate=Name(STEP_ID_PATTERN, "must match [A-Za-z0-9][A-Za-z0-9_.-]*")
    )
    name = fields.String(allow_none=True, validate=Name())
    # required unless ``workflow`` is given: model/subflows.py says which of the two is missing
    plugin = fields.String(validate=Name(non_empty=True))
    method = fields.String(load_default="run", validate=Name(non_empty=True))
    params = fields.Dict(keys=fields.String(), load_default=dict)
    workflow = fields.String(validate=Name(ID_PATTERN, "must match [a-z0-9][a-z0-9_.-]*"))
    version = fields.String(allow_none=True, validate=Name(non_empty=True))
    inputs = fields.Dict(keys=fields.String(), allow_none=True)
    depends_on = fields.List(fields.String(validate=Name()), load_default=list)
    join = fields.String(load_default="all", validate=validate.OneOf(["all", "any"]))
    when = fields.String(allow_none=True, validate=validate.Regexp(r"\S", error="may not be empty"))
    timeout = fields.Float(
        allow_none=True, validate=_positive("must be a positive number of seconds")
    )
    retries = fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_RETRIES))
    retry_delay = fields.Float(validate=validate.Range(min=0))
    retry_backoff = fields.String(validate=validate.OneOf(["fixed", "exponential"]))
    retry_delay_max = fields.Float(validate=validate.Range(min=0))
    critical = fields.Boolean()
    queue = fields.String(validate=Name(QUEUE_PATTERN, "invalid queue name"))
    compensate = fields.Nested(CompensationSchema, allow_none=True)
    map = fields.Nested(MapSchema, allow_none=True)


class DefaultsSchema(_StrictSchema):
    timeout = StepSchema._declared_fields["timeout"]
    retries = StepSchema._declared_fields["retries"]
    retry_delay = StepSchema._declared_fields["retry_delay"]
    retry_backoff = StepSchema._declared_fields["retry_backoff"]
    retry_delay_max = StepSchema._declared_fields["retry_delay_max"]
    critical = StepSchema._declared_fields["critical"]
    queue = StepSchema._declared_fields["queue"]


class WorkflowSchema(_StrictSchema):
    format = fields.Integer(
        strict=True, validate=validate.OneOf([1], error="only format version 1 exists")
    )
    id = fields.String(required=True, validate=Name(ID_PATTERN, "must match [a-z0-9][a-z0-9_.-]*"))
    name = fields.String(allow_none=True, validate=Name())
    description = fields.String(allow_none=True)
    version = fields.String(allow_none=True, validate=Name())
    mode = fields.String(load_default="parallel", validate=validate.OneOf(MODES))
    sla_seconds = fields.Float(
        allow_none=True, validate=_positive("must be a positive number of seconds")
    )
    priority = fields.String(load_default="normal", validate=validate.OneOf(list(PRIORITIES)))
    tags = fields.List(fields.String(validate=Name()), load_default=list)
    inputs = fields.Dict(keys=fields.String(), load_default=dict)
    defaults = fields.Nested(DefaultsSchema, load_default=dict)
    outputs = fields.Dict(keys=fields.String(), load_default=dict)
    concurrency = fields.Nested(concurrency_.ConcurrencySchema, allow_none=True)
    steps = fields.List(
        fields.Nested(StepSchema),
        required=True,
        validate=validate.Length(min=1, error="a workflow needs at least one step"),
    )
    triggers = fields.List(fields.Nested(triggers_.TriggerSchema), load_default=list)


_SCHEMA = WorkflowSchema()


def _flatten(
    errors: Any, path: str = "", schema: Schema | None = None
) -> Iterator[tuple[str, str]]:
    """Marshmallow's nested error dict as (path, message) pairs, e.g. ('steps[2].id', ...).

    ``schema`` is the schema that reported ``errors``: an unknown field is compared with the
    fields it knows, so ``steps[0].retry`` suggests ``retries``."""
    if isinstance(errors, Mapping):
        # Marshmallow finds unknown fields through a set, so their order changes from one
        # process to the next: after the other problems of the level, by name.
        for key, sub in sorted(errors.items(), key=_unknown_last):
            if key == "_schema":
                yield from _flatten(sub, path, schema)
            elif isinstance(key, int):
                yield from _flatten(sub, f"{path}[{key}]", schema)
            else:
                child = f"{path}.{key}" if path else str(key)
                if schema is not None and sub == ["Unknown field."]:
                    yield child, _unknown_field(str(key), schema)
                else:
                    yield from _flatten(sub, child, _nested(schema, str(key)))
    elif isinstance(errors, list | tuple):
        for item in errors:
            if isinstance(item, str):
                yield path, _humanise(item, path)
            else:
                yield from _flatten(item, path, schema)
    else:
        yield path, _humanise(str(errors), path)


def _unknown_last(item: tuple[Any, Any]) -> tuple[bool, str]:
    unknown = item[1] == ["Unknown field."]
    return unknown, str(item[0]) if unknown else ""


def _nested(schema: Schema | None, key: str) -> Schema | None:
    """The schema of field ``key`` of ``schema`` (through a list of them), if it has one."""
    field_ = schema.fields.get(key) if schema is not None else None
    if isinstance(field_, fields.List):
        field_ = field_.inner
    if isinstance(field_, fields.Nested) and isinstance(field_.schema, Schema):
        return field_.schema
    return None


def _unknown_field(key: str, schema: Schema) -> str:
    from orchestrator.model import validation

    if isinstance(schema, WorkflowSchema) and key in STEP_DEFAULTS:
        return f"unknown field ('{key}' is a step setting: under defaults it applies to every step)"
    names = [f.data_key or name for name, f in schema.fields.items()]
    hint = validation.did_you_mean(validation.suggest(key, names, 1))
    if not hint and len(names) <= validation.MAX_LISTED:
        hint = f" (fields: {', '.join(names)})"
    return "unknown field" + hint


def _humanise(message: str, path: str = "") -> str:
    if message == "Not a valid list." and path.endswith(".depends_on"):
        return "must be a step id or a list of step ids"
    replacements = {
        "Unknown field.": "unknown field",
        "Missing data for required field.": "required",
        "Not a valid string.": "must be a string (quote it in YAML)",
        "Not a valid integer.": "must be a whole number",
        "Not a valid number.": "must be a number",
        "Not a valid boolean.": "must be true or false",
        "Not a valid list.": "must be a list",
        "Not a valid mapping type.": "must be a mapping",
        "Invalid input type.": "must be a mapping",
        "Field may not be null.": "may not be null",
        "Shorter than minimum length 1.": "may not be empty",
    }
    if message in replacements:
        return replacements[message]
    if message.startswith("Must be one of:"):
        return "must be one of " + message.removeprefix("Must be one of:").strip().rstrip(".")
    both = re.fullmatch(
        r"Must be greater than or equal to (\S+) and less than or equal to (\S+)\.", message
    )
    if both:
        return f"must be between {both.group(1)} and {both.group(2)}"
    if message.startswith("Must be greater than or equal to"):
        return "must be >= " + message.rsplit(" ", 1)[-1].rstrip(".")
    if message.startswith("Must be"):
        return message[0].lower() + message[1:].rstrip(".")
    return message.rstrip(".")


def load_definition(
    data: Any,
    *,
    source: str | None = None,
    catalog: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
) -> Definition:
    """Validate a definition given as a dict and return the frozen model.

    Every problem is reported at once, each with its path. ``catalog`` is the fleet's plugin
    catalog (``{plugin: {method: {params, required, accepts_any}}}``); without it plugins are
    not checked. ``limits`` (default: the CANVASFLOW_MAX_* settings) are checked first: a
    definition over one is refused (LimitExceeded) before anything else walks it.
    """
    from orchestrator.model import subflows, validation  # the semantic checks live next door

    if not isinstance(data, Mapping):
        raise DefinitionError(
            [("", f"a definition must be a mapping, not {type(data).__name__}")], source
        )
    limits_.refuse(limits_.check_definition(data, limits), source)
    data = _one_dependency_is_a_list(data)
    problems: list[tuple[str, str]] = []
    try:
        loaded = _SCHEMA.load(dict(data))
    except ValidationError as exc:
        problems.extend(_flatten(exc.messages, schema=_SCHEMA))
        loaded = None
    problems.extend(validation.check(data, catalog))
    problems.extend(subflows.check(data))
    if problems:
        raise DefinitionError(_dedupe(problems), source)
    assert loaded is not None
    return _build(loaded)


def _one_dependency_is_a_list(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``depends_on: fetch`` means ``[fetch]`` in a file, as it does in the Python builder."""
    steps = data.get("steps")
    if not isinstance(steps, list) or not any(
        isinstance(s, Mapping) and isinstance(s.get("depends_on"), str) for s in steps
    ):
        return data
    return {
        **data,
        "steps": [
            {**s, "depends_on": [s["depends_on"]]}
            if isinstance(s, Mapping) and isinstance(s.get("depends_on"), str)
            else s
            for s in steps
        ],
    }


def from_stored(data: Mapping[str, Any]) -> Definition:
    """A definition that was validated when it was stored: schema only, no semantic checks."""
    return _build(_SCHEMA.load(dict(data)))


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _build(d: dict[str, Any]) -> Definition:
    defaults = {**STEP_DEFAULTS, **d.get("defaults", {})}
    steps = []
    for s in d["steps"]:
        settings = {k: s.get(k, defaults[k]) for k in STEP_DEFAULTS}
        comp = s.get("compensate")
        steps.append(
            Step(
                id=s["id"],
                plugin=s.get("plugin", ""),
                method=s["method"],
                params=s["params"],
                depends_on=tuple(s["depends_on"]),
                join=s["join"],
                when=s.get("when"),
                name=s.get("name"),
                compensate=Compensation(**comp) if comp else None,
                workflow=s.get("workflow"),
                version=s.get("version"),
                inputs=s.get("inputs"),
                map=MapSpec(**s["map"]) if s.get("map") else None,
                **settings,
            )
        )
    return Definition(
        id=d["id"],
        steps=tuple(steps),
        name=d.get("name"),
        description=d.get("description"),
        version=d.get("version"),
        mode=d["mode"],
        sla_seconds=d.get("sla_seconds"),
        priority=d["priority"],
        tags=tuple(d["tags"]),
        inputs=d["inputs"],
        defaults=d.get("defaults", {}),
        triggers=triggers_.build(d.get("triggers", [])),
        outputs=d.get("outputs", {}),
        concurrency=concurrency_.build(d.get("concurrency")),
    )


def dump_definition(wf: Definition) -> dict[str, Any]:
    """The inverse of load_definition: a plain dict that loads back to an equal Definition."""
    out: dict[str, Any] = {"id": wf.id}
    for key in ("name", "description", "version", "sla_seconds"):
        if getattr(wf, key) is not None:
            out[key] = getattr(wf, key)
    out["mode"] = wf.mode
    if wf.priority != "normal":
        out["priority"] = wf.priority
    if wf.tags:
        out["tags"] = list(wf.tags)
    if wf.inputs:
        out["inputs"] = dict(wf.inputs)
    if wf.defaults:
        out["defaults"] = dict(wf.defaults)
    if wf.outputs:
        out["outputs"] = dict(wf.outputs)
    if wf.concurrency is not None:
        out["concurrency"] = wf.concurrency.to_dict()
    defaults = {**STEP_DEFAULTS, **wf.defaults}
    out["steps"] = []
    for s in wf.steps:
        d: dict[str, Any] = {"id": s.id}
        if s.workflow:
            d["workflow"] = s.workflow
            if s.version is not None:
                d["version"] = s.version
            if s.inputs is not None:
                d["inputs"] = dict(s.inputs)
        else:
            d.update(plugin=s.plugin, method=s.method)
        if s.name is not None:
            d["name"] = s.name
        if s.params:
            d["params"] = dict(s.params)
        if s.depends_on:
            d["depends_on"] = list(s.depends_on)
        if s.join != "all":
            d["join"] = s.join
        if s.when:
            d["when"] = s.when
        for k, default in defaults.items():
            if getattr(s, k) != default:
                d[k] = getattr(s, k)
        if s.compensate:
            c = s.compensate
            cd: dict[str, Any] = {"plugin": c.plugin, "method": c.method}
            if c.params:
                cd["params"] = dict(c.params)
            if c.timeout is not None:
                cd["timeout"] = c.timeout
            if c.retries:
                cd["retries"] = c.retries
            if c.queue:
                cd["queue"] = c.queue
            d["compensate"] = cd
        if s.map:
            md: dict[str, Any] = {"over": s.map.over, "as": s.map.as_}
            if s.map.max_parallel is not None:
                md["max_parallel"] = s.map.max_parallel
            d["map"] = md
        out["steps"].append(d)
    if wf.triggers:
        out["triggers"] = triggers_.dump(wf.triggers)
    return out


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def parse_text(
    text: str, *, source: str = "<string>", fmt: str | None = None, limits: Limits | None = None
) -> Any:
    """YAML or JSON text to plain data; a syntax error says where it is. Text over
    max_definition_bytes is refused unread, YAML aliases and nesting are bounded (limits.py)."""
    fmt = fmt or ("json" if source.endswith(".json") else "yaml")
    lim = limits_.current(limits)
    limits_.check_text(text, lim, source)
    try:
        if fmt == "json":
            return json.loads(text)
        return limits_.load_yaml(text, lim)
    except (
        RecursionError
    ):  # JSON nested thousands deep: the C parser gives up before the limits can
        raise limits_.LimitExceeded(
            [("", f"nested deeper than {lim.max_depth} levels ({limits_.env_name('max_depth')})")],
            source,
        ) from None
    except json.JSONDecodeError as exc:
        raise DefinitionError(
            [(f"line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}")], source
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError([(where, f"invalid YAML: {problem}")], source) from None


def load_file(
    path: str | Path, *, catalog: Mapping[str, Any] | None = None, limits: Limits | None = None
) -> Definition:
    """Load and validate a .yaml/.yml/.json definition file."""
    p = Path(path)
    lim = limits_.current(limits)
    try:
        size = p.stat().st_size
        if size > lim.max_definition_bytes:  # refused before it is read into memory
            limits_.refuse(
                [
                    (
                        "",
                        f"{size} bytes of definition: at most {lim.max_definition_bytes} are "
                        f"allowed ({limits_.env_name('max_definition_bytes')})",
                    )
                ],
                str(p),
            )
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError([("", f"cannot read file: {exc.strerror}")], str(p)) from None
    return load_definition(
        parse_text(text, source=str(p), limits=lim), source=str(p), catalog=catalog, limits=lim
    )


# ---------------------------------------------------------------------------------------------
# The Python builder
# ---------------------------------------------------------------------------------------------


class Workflow:
    """Build a definition in Python; ``.build()`` validates it through the same schema.

    ``Workflow("etl", mode="sequential").step("a", plugin="builtin", method="echo").build()``
    """

    def __init__(self, id: str, **workflow_fields: Any) -> None:
        self._data: dict[str, Any] = {"id": id, **workflow_fields, "steps": []}

    def step(self, id: str, plugin: str, method: str = "run", **step_fields: Any) -> Workflow:
        entry: dict[str, Any] = {"id": id, "plugin": plugin, "method": method, **step_fields}
        if isinstance(entry.get("depends_on"), str):
            entry["depends_on"] = [entry["depends_on"]]
        self._data["steps"].append(entry)
        return self

    def schedule(self, **schedule: Any) -> Workflow:
        """Add a schedule trigger: ``cron=`` or ``every=``, ``timezone=``, ``inputs=``,
        ``catchup=``, ``name=`` (see orchestrator/model/triggers.py)."""
        self._data.setdefault("triggers", []).append(triggers_.schedule_entry(**schedule))
        return self

    def on_event(self, event: str, **trigger: Any) -> Workflow:
        """Add an event trigger: ``filter=``, ``inputs=``, ``name=``."""
        self._data.setdefault("triggers", []).append(triggers_.event_entry(event, **trigger))
        return self

    def subworkflow(
        self,
        id: str,
        workflow: str,
        version: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        **step_fields: Any,
    ) -> Workflow:
        """A sub-workflow step: a child run of registered ``workflow`` (``version``: default
        the latest registered at submit) with ``inputs`` (templates)."""
        entry: dict[str, Any] = {"id": id, "workflow": workflow, **step_fields}
        if version is not None:
            entry["version"] = version
        if inputs is not None:
            entry["inputs"] = dict(inputs)
        if isinstance(entry.get("depends_on"), str):
            entry["depends_on"] = [entry["depends_on"]]
        self._data["steps"].append(entry)
        return self

    def outputs(self, **templates: Any) -> Workflow:
        """The run's result: templates evaluated when the run completes."""
        self._data.setdefault("outputs", {}).update(templates)
        return self

    def concurrency(
        self, limit: int, *, key: str | None = None, strategy: str = "queue"
    ) -> Workflow:
        """At most ``limit`` runs per ``key`` (a template over inputs) active at once."""
        conc: dict[str, Any] = {"limit": limit, "strategy": strategy}
        if key is not None:
            conc["key"] = key
        self._data["concurrency"] = conc
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._data, default=list))

    def build(
        self, catalog: Mapping[str, Any] | None = None, limits: Limits | None = None
    ) -> Definition:
        source = f"workflow '{self._data['id']}'"
        # Limits before the JSON round trip: a params value that contains itself (or is nested
        # thousands deep) would end it with a RecursionError instead of a message.
        limits_.refuse(limits_.check_definition(self._data, limits), source)
        return load_definition(self.to_dict(), source=source, catalog=catalog, limits=limits)
