"""The `triggers` list of a definition: schedule entries and event entries.

```yaml
triggers:
  - schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}   # or {every: 300} (seconds)
    name: nightly                 # optional; default "schedule-<index>"
    inputs: {mode: nightly}       # plain values
    catchup: false                # fire times missed while no scheduler ran: skip them
  - event: files.uploaded         # the event name; also the trigger's name unless `name` is set
    filter: "event.payload.count > 0"          # may read `event` only
    inputs: {folder: "{{ event.payload.folder }}"}  # templates may read `event` only
```

The marshmallow schemas here are nested into the workflow schema (definition.py), so a problem
is reported with its path like every other one: ``triggers[0].schedule.cron: ...``. Cron
expressions are checked by croniter (never parsed by hand), time zones by zoneinfo; the
scheduling maths lives in :mod:`orchestrator.model.schedule`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from orchestrator.errors import ExpressionError
from orchestrator.model import expressions

TRIGGER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*\Z"
EVENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*\Z"
EVENT_FIELDS = ("name", "payload", "key")
MAX_NAME = 200
MAX_CRON = 200


@dataclass(frozen=True)
class Trigger:
    """One entry of ``Definition.triggers``: a schedule or an event trigger.

    Schedule: ``cron`` or ``every`` (whole seconds), ``timezone`` (cron only), ``catchup``.
    Event: ``event`` (its name), ``filter`` (an expression reading ``event``).
    Both: ``name`` (unique in the workflow) and ``inputs`` (the run's inputs; for an event
    trigger they may be templates reading ``event``)."""

    kind: str  # "schedule" | "event"
    name: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"
    catchup: bool = False
    event: str | None = None
    filter: str | None = None

    @property
    def is_schedule(self) -> bool:
        return self.kind == "schedule"

    def describe(self) -> str:
        """``cron '0 2 * * *' (Europe/Berlin)``, ``every 300 s``, ``event files.uploaded``."""
        if self.kind == "event":
            return f"event {self.event}"
        if self.cron is not None:
            return f"cron '{self.cron}' ({self.timezone})"
        return f"every {self.every} s"


def cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not a cron expression canvasflow accepts, or None.

    Five fields (minute hour day-of-month month day-of-week) or a croniter alias (@daily...);
    croniter's six- and seven-field forms (seconds, years) are refused: `every` is the way to
    fire more often than once a minute."""
    if not expr.strip():
        return "may not be empty"
    if len(expr) > MAX_CRON:
        return f"is {len(expr)} characters long; at most {MAX_CRON} are allowed"
    if not expr.strip().startswith("@") and len(expr.split()) != 5:
        return (
            f"invalid cron expression {expr!r}: cron has 5 fields (minute hour day-of-month "
            f"month day-of-week), this has {len(expr.split())}; use `every` for seconds"
        )
    try:
        it = croniter(expr.strip())
        it.get_next(float)
    except CroniterError as exc:
        detail = str(exc).strip() or type(exc).__name__
        if "failed to find next date" in detail:
            detail = "it never fires (no date matches it)"
        return f"invalid cron expression {expr!r}: {detail}"
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # croniter's odd corners
        return f"invalid cron expression {expr!r}: {exc}"
    return None


def timezone_problem(name: str) -> str | None:
    """Why ``name`` is not a zoneinfo time zone, or None."""
    if not name or len(name) > 100 or name.startswith(("/", ".")) or ".." in name:
        return f"unknown time zone {name!r} (an IANA name like Europe/Berlin or UTC)"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"unknown time zone {name!r} (an IANA name like Europe/Berlin or UTC)"
    return None


def _validate_cron(value: str) -> None:
    why = cron_problem(value)
    if why:
        raise ValidationError(why)


def _validate_timezone(value: str) -> None:
    why = timezone_problem(value)
    if why:
        raise ValidationError(why)


def _name(pattern: str) -> validate.Validator:
    return validate.And(
        validate.Length(min=1, max=MAX_NAME, error=f"must be 1 to {MAX_NAME} characters"),
        validate.Regexp(pattern, error="must match [A-Za-z0-9][A-Za-z0-9_.:-]*"),
    )


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class ScheduleSpecSchema(_Strict):
    cron = fields.String(validate=_validate_cron)
    every = fields.Integer(
        strict=True,
        validate=validate.Range(min=1, error="must be a whole number of seconds >= 1"),
    )
    timezone = fields.String(validate=_validate_timezone)

    @validates_schema
    def _one_of(self, data: Mapping[str, Any], **_: Any) -> None:
        has_cron, has_every = "cron" in data, "every" in data
        if has_cron and has_every:
            raise ValidationError("give either cron or every, not both")
        if not has_cron and not has_every:
            raise ValidationError("needs cron (e.g. '0 2 * * *') or every (seconds)")
        if has_every and "timezone" in data:
            raise ValidationError(
                "timezone applies to cron only: every counts seconds from 1970-01-01T00:00Z",
                "timezone",
            )


class TriggerSchema(_Strict):
    schedule = fields.Nested(ScheduleSpecSchema)
    event = fields.String(validate=_name(EVENT_NAME_PATTERN))
    name = fields.String(validate=_name(TRIGGER_NAME_PATTERN))
    inputs = fields.Dict(keys=fields.String(), load_default=dict)
    catchup = fields.Boolean()
    filter = fields.String(
        validate=validate.Regexp(r"\S", error="may not be empty"), allow_none=True
    )

    @validates_schema
    def _kind(self, data: Mapping[str, Any], **_: Any) -> None:
        has_schedule, has_event = "schedule" in data, "event" in data
        if has_schedule and has_event:
            raise ValidationError("a trigger is a schedule or an event, not both")
        if has_schedule:
            if "filter" in data:
                raise ValidationError("filter applies to event triggers only", "filter")
            for path, text in expressions.strings(data.get("inputs") or {}, "inputs"):
                if "{{" in text:
                    raise ValidationError(
                        {
                            path.removeprefix("inputs."): [
                                "schedule inputs are plain values "
                                "(templates may read `event` in event triggers only)"
                            ]
                        },
                        "inputs",
                    )
        if has_event and "catchup" in data:
            raise ValidationError("catchup applies to schedule triggers only", "catchup")


# ---------------------------------------------------------------------------------------------
# Semantic checks on the raw list (beside the schema, like validation.check)
# ---------------------------------------------------------------------------------------------


def check(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems of the raw ``triggers`` list the schema cannot see: an entry that is neither a
    schedule nor an event, duplicate names, filters and templates that do not parse or read
    something other than ``event``."""
    raw = data.get("triggers")
    if not isinstance(raw, list):
        return []
    problems: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    for i, entry in enumerate(raw):
        path = f"triggers[{i}]"
        if not isinstance(entry, Mapping):
            continue  # the schema says "must be a mapping"
        if "schedule" not in entry and "event" not in entry:
            problems.append((path, "needs `schedule: {cron | every}` or `event: <name>`"))
            continue
        name = default_name(entry, i)
        if isinstance(name, str):
            if name in names:
                problems.append(
                    (
                        path + (".name" if "name" in entry else ""),
                        f"duplicate trigger name '{name}' (first used by triggers[{names[name]}]);"
                        " give one a `name`",
                    )
                )
            else:
                names[name] = i
        if "event" in entry:
            problems.extend(_check_event(entry, path))
    return problems


def default_name(entry: Mapping[str, Any], index: int) -> Any:
    if "name" in entry:
        return entry["name"]
    if "event" in entry:
        return entry["event"]
    return f"schedule-{index}"


def _check_event(entry: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    flt = entry.get("filter")
    if isinstance(flt, str) and flt.strip():
        try:
            expr = expressions.parse(flt)
        except ExpressionError as exc:
            yield f"{path}.filter", exc.message
        else:
            yield from _event_only(expr, f"{path}.filter")
    inputs = entry.get("inputs")
    if isinstance(inputs, Mapping):
        for p, text in expressions.strings(inputs, f"{path}.inputs"):
            if "{{" not in text:
                continue
            try:
                template = expressions.Template.parse(text)
            except ExpressionError as exc:
                yield p, exc.message
                continue
            for expr in template.expressions:
                yield from _event_only(expr, p)


def _event_only(expr: expressions.Expression, path: str) -> Iterator[tuple[str, str]]:
    for chain in expr.paths():
        if chain[0] != "event":
            yield (
                path,
                f"unknown name '{chain[0]}' (an event trigger reads only event.name, "
                "event.payload, event.key)",
            )
        elif len(chain) > 1 and chain[1] not in EVENT_FIELDS:
            yield path, f"event has no field '{chain[1]}' (fields: {', '.join(EVENT_FIELDS)})"


# ---------------------------------------------------------------------------------------------
# Model <-> plain data
# ---------------------------------------------------------------------------------------------


def build(loaded: list[Mapping[str, Any]]) -> tuple[Trigger, ...]:
    """The frozen triggers of a list the schema loaded."""
    out = []
    for i, t in enumerate(loaded):
        name = default_name(t, i)
        if "schedule" in t:
            spec = t["schedule"]
            out.append(
                Trigger(
                    kind="schedule",
                    name=name,
                    inputs=dict(t.get("inputs") or {}),
                    cron=spec.get("cron"),
                    every=spec.get("every"),
                    timezone=spec.get("timezone", "UTC"),
                    catchup=bool(t.get("catchup", False)),
                )
            )
        else:
            out.append(
                Trigger(
                    kind="event",
                    name=name,
                    inputs=dict(t.get("inputs") or {}),
                    event=t["event"],
                    filter=t.get("filter"),
                )
            )
    return tuple(out)


def dump(triggers: tuple[Trigger, ...]) -> list[dict[str, Any]]:
    """The inverse of :func:`build`: entries as a user writes them (defaults left out)."""
    out: list[dict[str, Any]] = []
    for i, t in enumerate(triggers):
        entry: dict[str, Any]
        if t.kind == "schedule":
            spec: dict[str, Any] = {"cron": t.cron} if t.cron is not None else {"every": t.every}
            if t.cron is not None and t.timezone != "UTC":
                spec["timezone"] = t.timezone
            entry = {"schedule": spec}
            if t.name != f"schedule-{i}":
                entry["name"] = t.name
            if t.catchup:
                entry["catchup"] = True
        else:
            entry = {"event": t.event}
            if t.name != t.event:
                entry["name"] = t.name
            if t.filter is not None:
                entry["filter"] = t.filter
        if t.inputs:
            entry["inputs"] = dict(t.inputs)
        out.append(entry)
    return out


def schedule_entry(
    *,
    cron: str | None = None,
    every: int | None = None,
    timezone: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    catchup: bool | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A raw schedule entry for the Python builder (``Workflow.schedule``)."""
    spec: dict[str, Any] = {}
    if cron is not None:
        spec["cron"] = cron
    if every is not None:
        spec["every"] = every
    if timezone is not None:
        spec["timezone"] = timezone
    entry: dict[str, Any] = {"schedule": spec}
    if name is not None:
        entry["name"] = name
    if inputs is not None:
        entry["inputs"] = dict(inputs)
    if catchup is not None:
        entry["catchup"] = catchup
    return entry


def event_entry(
    event: str,
    *,
    filter: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A raw event entry for the Python builder (``Workflow.on_event``)."""
    entry: dict[str, Any] = {"event": event}
    if name is not None:
        entry["name"] = name
    if filter is not None:
        entry["filter"] = filter
    if inputs is not None:
        entry["inputs"] = dict(inputs)
    return entry
