"""Event triggers: publishing an event starts a run of every registered workflow whose event
trigger matches it (``client.publish``, ``POST /api/v1/events``, ``canvasflow publish``: this
module is the one implementation behind all three).

An event is ``{"name", "payload", "key"}``. For each registered workflow (its latest version) and
each of its event triggers whose ``event`` is the name: the trigger's ``filter`` is evaluated with
``event`` in scope (false: nothing starts; an error: reported, the other triggers go on), its
``inputs`` templates are rendered with ``event``, and a run is submitted with trigger_type
"event", trigger_name the event name and trigger_ref the key.

Idempotency (docs/design.md "Event triggers"): an event with a ``key`` starts at most one run per
trigger while its claim lives (``Settings.event_key_ttl``, at least 24 h). The claim is written by
the same Redis transaction that creates the run (``RunState.create``), so there is no moment at
which a key is claimed and its run does not exist: a publisher that dies before that transaction
leaves nothing (publishing again starts the run), one that dies after it leaves a PENDING run
that the watchdog dispatches if its canvas was never sent.

Finding the triggers of an event does not read every definition per event: each process keeps an
index event name -> triggers, rebuilt when the registry's generation counter (moved on by every
registration, ``Client.register``) changes; an event costs one GET of that counter.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import CanvasflowError, EventError
from orchestrator.model import expressions, limits
from orchestrator.model.definition import Definition, from_stored
from orchestrator.model.triggers import EVENT_NAME_PATTERN
from orchestrator.records import text

log = logging.getLogger(__name__)

MAX_NAME = 200  # characters of an event name (and of a key)
# (workflow, trigger name, key) -> the id of a run the audit store holds for them, or None.
Recorded = Callable[[str, str, str], "str | None"]
# The names an event trigger may listen to (the model's pattern): nothing else can match one.
EVENT_NAME = re.compile(EVENT_NAME_PATTERN)
EVENT_NAME_TEXT = "[A-Za-z0-9][A-Za-z0-9_.:-]*"


@dataclass(frozen=True)
class EventTrigger:
    """One event trigger of a registered workflow's latest version."""

    workflow: str
    version: str
    index: int  # its position in the definition's ``triggers``
    name: str  # unique in the workflow (default: the event name)
    event: str
    filter: str | None
    inputs: Mapping[str, Any]
    definition: Definition

    @property
    def path(self) -> str:
        return f"triggers[{self.index}]"

    def describe(self) -> dict[str, Any]:
        return {"workflow": self.workflow, "version": self.version, "trigger": self.name}


@dataclass
class Published:
    """What one event did: the runs it started, and the triggers that started none (and why)."""

    name: str
    key: str | None
    started: list[dict[str, Any]] = field(default_factory=list)
    deduplicated: list[dict[str, Any]] = field(default_factory=list)
    filtered: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_ids(self) -> list[str]:
        return [r["run_id"] for r in self.started]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "started": self.started,
            "deduplicated": self.deduplicated,
            "filtered": self.filtered,
            "errors": self.errors,
        }


def check_event(
    name: Any, payload: Any, key: Any, lim: limits.Limits | None = None
) -> list[tuple[str, str]]:
    """Every problem of an event as (field, message); empty when it may be published."""
    problems: list[tuple[str, str]] = []
    if name is None:
        problems.append(("name", "required: the event's name"))
    elif not isinstance(name, str):
        problems.append(("name", f"must be a string, not {type(name).__name__}"))
    elif not name.strip():
        problems.append(("name", "must not be empty"))
    elif len(name) > MAX_NAME:
        problems.append(("name", f"at most {MAX_NAME} characters, not {len(name)}"))
    elif not EVENT_NAME.match(name):
        problems.append(("name", f"must match {EVENT_NAME_TEXT}, not {name!r}"))
    if not isinstance(payload, Mapping):
        problems.append(("payload", f"must be an object, not {_kind(payload)}"))
    else:
        problems.extend(limits.check_payload(payload, "payload", lim, what="event payload"))
        if not problems or problems[-1][0] != "payload":
            try:
                json.dumps(payload)
            except (TypeError, ValueError) as exc:
                problems.append(("payload", f"must be JSON: {exc}"))
    if key is not None:
        if not isinstance(key, str):
            problems.append(("key", f"must be a string or null, not {_kind(key)}"))
        elif not key or len(key) > MAX_NAME:
            problems.append(("key", f"must be 1 to {MAX_NAME} characters, not {len(key)}"))
        elif not _utf8(key):
            problems.append(("key", "must be text without lone surrogates (UTF-8)"))
    return problems


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
    }.get(type(value), type(value).__name__)


def _recorded_run(recorded: Recorded | None, trig: EventTrigger, key: str) -> str | None:
    """The run the audit store holds for this trigger and key (a store that cannot answer is
    logged and not asked: Redis's claim still dedupes unless Redis lost it too)."""
    if recorded is None:
        return None
    try:
        return recorded(trig.workflow, trig.name, key)
    except Exception as exc:  # noqa: BLE001 - an event must not fail for the store's sake
        log.warning(
            "event %s: the audit store could not be asked for key %r: %s", trig.name, key, exc
        )
        return None


def event_triggers(defn: Definition) -> list[EventTrigger]:
    """The event triggers of a definition (its ``triggers`` entries of kind "event")."""
    return [
        EventTrigger(
            workflow=defn.id,
            version=defn.version or "",
            index=index,
            name=trig.name,
            event=trig.event or "",
            filter=trig.filter,
            inputs=dict(trig.inputs),
            definition=defn,
        )
        for index, trig in enumerate(defn.triggers)
        if trig.kind == "event"
    ]


class Publisher:
    """Publishes events for one client; keeps the event-name index of the registry."""

    def __init__(self, client: Any) -> None:  # a Client (client.py imports this module)
        self.client = client
        self._lock = threading.Lock()
        self._generation: bytes | None = None
        self._index: dict[str, list[EventTrigger]] = {}

    def triggers(self, name: str) -> list[EventTrigger]:
        """The event triggers of ``name`` in the registry now."""
        r, keys = self.client.redis, self.client.keys
        generation = r.get(keys.workflows_generation) or b"0"
        with self._lock:
            if generation != self._generation:
                self._index = self._build()
                self._generation = generation
            return list(self._index.get(name, ()))

    def _build(self) -> dict[str, list[EventTrigger]]:
        r, keys = self.client.redis, self.client.keys
        ids = sorted(text(w) for w in r.smembers(keys.workflows))
        pipe = r.pipeline(transaction=False)
        for wf in ids:
            pipe.lindex(keys.workflow_versions(wf), -1)
        latest = [text(v) for v in pipe.execute()]
        pipe = r.pipeline(transaction=False)
        for wf, version in zip(ids, latest, strict=True):
            pipe.hget(keys.workflow(wf), version)
        index: dict[str, list[EventTrigger]] = {}
        for raw in pipe.execute():
            if raw is None:
                continue
            try:
                defn = from_stored(json.loads(raw))
            except (ValueError, CanvasflowError):
                continue  # a body this version cannot read: it has no triggers for us
            for trig in event_triggers(defn):
                index.setdefault(trig.event, []).append(trig)
        return index

    def publish(
        self,
        name: Any,
        payload: Any = None,
        key: Any = None,
        *,
        triggered_by: str = "api",
        recorded: Recorded | None = None,
    ) -> Published:
        """Start the runs an event triggers; raises EventError for a malformed event.
        ``recorded(workflow, trigger name, key)``: a run the audit store holds for that key, if
        any (the Redis claim is gone after a Redis loss; the store still knows)."""
        payload = {} if payload is None else payload
        problems = check_event(name, payload, key, self.client.settings.limits)
        if problems:
            raise EventError(problems)
        result = Published(name, key)
        scope = {"event": {"name": name, "payload": payload, "key": key}}
        for trig in self.triggers(name):
            self._fire(trig, scope, key, triggered_by, result, recorded)
        return result

    def _fire(
        self,
        trig: EventTrigger,
        scope: Mapping[str, Any],
        key: str | None,
        triggered_by: str,
        result: Published,
        recorded: Recorded | None = None,
    ) -> None:
        where = trig.describe()
        try:
            if trig.filter and not expressions.parse(trig.filter).evaluate(scope):
                result.filtered.append(where)
                return
        except CanvasflowError as exc:
            result.errors.append({**where, "path": f"{trig.path}.filter", "error": str(exc)})
            return
        try:
            inputs = expressions.render_value(dict(trig.inputs), scope)
        except CanvasflowError as exc:
            result.errors.append({**where, "path": f"{trig.path}.inputs", "error": str(exc)})
            return
        claim = None
        if key is not None:
            claim = "\0".join(("event", trig.workflow, trig.name, key))
            earlier = _recorded_run(recorded, trig, key)
            if earlier is not None:
                result.deduplicated.append({**where, "run_id": earlier})
                return
        try:
            run = self.client.submit(
                trig.definition,
                inputs=inputs,
                triggered_by=triggered_by,
                trigger_type="event",
                trigger_name=trig.name,
                trigger_ref=key,
                idempotency_key=claim,
            )
        except CanvasflowError as exc:
            result.errors.append({**where, "path": trig.path, "error": str(exc)})
            return
        (result.deduplicated if run.duplicate else result.started).append(
            {**where, "run_id": run.id}
        )
