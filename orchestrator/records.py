"""How a run and its steps lie in Redis: the one codec of the run hash and the step fields,
and the batched reads of them.

rq's ``Job.to_dict``/``restore`` is the model: :class:`RunRecord` and :class:`StepRecord` are
the only code that knows the field names, how each value is written and how it reads back.
:class:`~orchestrator.engine.runstate.RunState` reads and writes through them, and so does
everything else. Importable without Celery (the recorder uses it).

A record decodes whatever subset of fields was read (an ``HMGET`` of three fields gives a record
with the other attributes at their defaults). JSON values stay text (``definition_json``,
``inputs_json``, ``output_json``...) and are decoded by the properties beside them when read,
so a reader that only passes them on (the recorder, the dashboard's detail page) never parses
them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, NamedTuple

from orchestrator.keys import STEP_FIELD_SEP, Keys, step_field


def text(v: Any) -> str:
    """A Redis reply value as text ('' for a missing one)."""
    return v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))


def _float(v: str) -> float | None:
    try:
        return float(v) if v else None
    except ValueError:
        return None


def _int(v: str) -> int:
    try:
        return int(v) if v else 0
    except ValueError:
        return 0


def _decode(kind: str, raw: str) -> Any:
    if kind == "int":
        return _int(raw)
    if kind == "float":
        return _float(raw)
    if kind == "opt":
        return raw or None
    return raw


def _encode(kind: str, value: Any) -> str | None:
    """Text to write, or None for a value that is not written."""
    if value is None or value == "":
        return value
    if kind == "float":
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


# How a run started (RunRecord.trigger_type); docs/user-guide.md "How a run started".
TRIGGER_TYPES = (
    "manual",
    "api",
    "cli",
    "dashboard",
    "demo",
    "clone",
    "schedule",
    "event",
    "parent",
)


@dataclass(frozen=True)
class RunRecord:
    """The run hash ``<prefix>:run:{<id>}``. Attribute names are the field names, except that
    JSON fields carry ``_json`` (the text as stored)."""

    id: str
    status: str = ""
    epoch: int = 0
    seq: int = 0
    halt: str | None = None  # "failed" once a critical step failed (fail fast)
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    workflow: str = ""
    version: str = ""
    name: str | None = None
    definition_json: str = ""
    inputs_json: str = ""
    priority: str = "normal"
    tags_json: str = ""
    triggered_by: str | None = None
    trigger_type: str | None = None
    # The trigger that started it: a schedule's or event's name, and the fire time (ISO-8601 UTC)
    # or event key.
    trigger_name: str | None = None
    trigger_ref: str | None = None
    cloned_from: str | None = None
    sla_seconds: float | None = None
    total: int = 0
    settled: int = 0
    error: str | None = None
    failed_step: str | None = None
    compensate_target: str | None = None
    resolved_by: str | None = None
    sla_warning: float | None = None  # when the SLA warning was emitted
    sla_breached: float | None = None
    # What the submit warned about (a JSON list of lines, e.g. no live worker on a step's
    # queue); absent when it warned about nothing.
    warnings_json: str | None = None
    # A child run (a sub-workflow step's): its parent run and step, and how deep it nests.
    parent_run: str | None = None
    parent_step: str | None = None
    depth: int = 0
    # "1" when the definition has outputs (the settle then evaluates them); the run's result.
    has_outputs: str | None = None
    result_json: str | None = None
    # Concurrency limits (orchestrator/engine/lua/conc.lua): the name of the run's group hash
    # (keys.py conc_group), its rendered key, and the run that had it cancelled to take its
    # slot (cancel_in_progress).
    conc_group: str | None = None
    conc_key: str | None = None
    conc_evicted: str | None = None

    @classmethod
    def from_hash(cls, run_id: str, values: Mapping[Any, Any]) -> RunRecord:
        """Decode the fields of a run hash that were read (bytes or text keys and values)."""
        return cls(id=run_id, **_decode_fields(RUN_FIELDS, values))

    def to_hash(self) -> dict[str, str]:
        """The fields to write, as text; unset ones (None) are left out."""
        return _encode_fields(RUN_FIELDS, self)

    @cached_property
    def definition(self) -> dict[str, Any]:
        """The stored definition (``model.definition.from_stored`` makes it a Definition)."""
        return json.loads(self.definition_json) if self.definition_json else {}

    @property
    def inputs(self) -> dict[str, Any]:
        return json.loads(self.inputs_json) if self.inputs_json else {}

    @property
    def result(self) -> Any:
        """The run's result (its definition's outputs, evaluated when it completed), or None."""
        return json.loads(self.result_json) if self.result_json else None

    @property
    def warnings(self) -> list[str]:
        try:
            lines = json.loads(self.warnings_json) if self.warnings_json else []
        except ValueError:
            return []
        return [str(w) for w in lines] if isinstance(lines, list) else []

    @property
    def tags(self) -> list[str]:
        try:
            tags = json.loads(self.tags_json) if self.tags_json else []
        except ValueError:
            return []
        return tags if isinstance(tags, list) else []

    @property
    def step_ids(self) -> list[str]:
        """The run's steps in definition order."""
        return [s["id"] for s in self.definition.get("steps", ())]


@dataclass(frozen=True)
class StepRecord:
    """One step's fields in the run's steps hash, ``<step>|<field>``."""

    id: str
    status: str = "PENDING"
    attempts: int = 0
    epoch: int = 0  # the dispatch that began its current attempt
    started_at: float | None = None  # of the first attempt
    attempt_started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    task_id: str | None = None
    owner: str | None = None  # host:pid:task_id of the attempt that holds it
    output_json: str | None = None
    error: str | None = None
    traceback: str | None = None
    lost: int = 0  # the attempt last reported lost
    compensation_output_json: str | None = None
    compensation_error: str | None = None
    compensation_traceback: str | None = None
    items: int = 0  # a mapped step's item count, once it expanded

    @classmethod
    def from_hash(cls, step_id: str, values: Mapping[Any, Any]) -> StepRecord:
        """Decode a step's fields (names without the ``<step>|`` part) that were read."""
        return cls(id=step_id, **_decode_fields(STEP_FIELDS, values))

    @property
    def output(self) -> Any:
        return json.loads(self.output_json) if self.output_json else None


class Field(NamedTuple):
    attr: str
    name: str  # in Redis
    kind: str  # str | opt (None when empty) | int | float


def _kind(annotation: str) -> str:
    if annotation == "int":
        return "int"
    if annotation.startswith("float"):
        return "float"
    return "opt" if "None" in annotation else "str"


def _field_table(cls: type) -> dict[str, Field]:
    """Redis field name -> Field, from the record's annotations (``_json``: stored as is)."""
    out = {}
    for f in fields(cls):
        if f.name != "id":
            name = f.name.removesuffix("_json")
            out[name] = Field(f.name, name, _kind(str(f.type)))
    return out


# Redis field name -> Field, for each record.
RUN_FIELDS: dict[str, Field] = _field_table(RunRecord)
STEP_FIELDS: dict[str, Field] = _field_table(StepRecord)


def _decode_fields(table: Mapping[str, Field], values: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        f = table.get(text(k))
        if f is not None and v is not None:
            out[f.attr] = _decode(f.kind, text(v))
    return out


def _encode_fields(table: Mapping[str, Field], record: Any) -> dict[str, str]:
    out = {}
    for f in table.values():
        value = _encode(f.kind, getattr(record, f.attr))
        if value is not None:
            out[f.name] = value
    return out


def run_field_names(attrs: Iterable[str]) -> list[str]:
    """The Redis names of RunRecord attributes (for an HMGET of some of them)."""
    return [_name(RUN_FIELDS, a) for a in attrs]


def step_field_names(attrs: Iterable[str]) -> list[str]:
    return [_name(STEP_FIELDS, a) for a in attrs]


def _name(table: Mapping[str, Field], attr: str) -> str:
    name = attr.removesuffix("_json")
    if name not in table or table[name].attr != attr:
        raise KeyError(f"no field {attr!r} in the record")
    return name


def encode_run_fields(values: Mapping[str, Any]) -> dict[str, str | None]:
    """Run fields a script sets, by attribute, checked against the record (None deletes)."""
    out = {}
    for k, v in values.items():
        name = _name(RUN_FIELDS, k)
        out[name] = _encode(RUN_FIELDS[name].kind, v)
    return out


def encode_step_fields(values: Mapping[str, Any]) -> dict[str, str]:
    """Step fields a script sets, checked against the record."""
    out = {}
    for k, v in values.items():
        name = _name(STEP_FIELDS, k)
        out[name] = _encode(STEP_FIELDS[name].kind, v) or ""
    return out


def split_steps(flat: Mapping[Any, Any]) -> dict[str, StepRecord]:
    """The steps hash (``<step>|<field>`` -> value) as one record per step, in hash order."""
    by_step: dict[str, dict[str, str]] = {}
    for k, v in flat.items():
        sid, _, name = text(k).rpartition(STEP_FIELD_SEP)
        by_step.setdefault(sid, {})[name] = v
    return {sid: StepRecord.from_hash(sid, f) for sid, f in by_step.items()}


def waiting_reason(workflow: str, key: str, ahead: int) -> str:
    """What a run waiting for a concurrency slot shows (its group named by its key, or by the
    workflow for the one group of a workflow without a key)."""
    return f"waiting for a slot in {key or workflow}: {ahead} ahead"


def waiting_of(client: Any, keys: Keys, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{run id: {key, ahead, reason}} for those of ``run_ids`` waiting for a concurrency slot
    (two round trips)."""
    ids = list(run_ids)
    reads = Reads(client, keys)
    for rid in ids:
        reads.run(rid, "workflow", "conc_group", "conc_key")
    runs = [r for r in reads.execute() if isinstance(r, RunRecord) and r.conc_group]
    if not runs:
        return {}
    pipe = client.pipeline(transaction=False)
    for r in runs:
        pipe.zrank(keys.conc_waiting(r.conc_group or ""), r.id)
    out = {}
    for r, rank in zip(runs, pipe.execute(), strict=True):
        if rank is not None:
            key = r.conc_key or ""
            out[r.id] = {
                "key": key or r.workflow,
                "ahead": int(rank),
                "reason": waiting_reason(r.workflow, key, int(rank)),
            }
    return out


class HotRun(NamedTuple):
    """All of a run's hot state: its record, its steps, its attempt records (finishing order)."""

    run: RunRecord
    steps: dict[str, StepRecord]
    attempts: list[dict[str, Any]]


class Reads:
    """Reads of several runs' and steps' fields, decoded into records, sent in one round trip
    by :meth:`execute` (``client``: a redis.Redis)."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.keys = keys
        self._pipe = client.pipeline(transaction=False)
        self._decoders: list[Any] = []

    def run(self, run_id: str, *attrs: str) -> None:
        """RunRecord attributes of a run (all of its fields when none are named); its status is
        always read, to tell a run that is not in Redis (None)."""
        if attrs:
            names = run_field_names(["status", *(a for a in attrs if a != "status")])
            self._pipe.hmget(self.keys.run(run_id), names)
            self._decoders.append(
                lambda v: (
                    None
                    if v[0] is None
                    else RunRecord.from_hash(run_id, dict(zip(names, v, strict=True)))
                )
            )
        else:
            self._pipe.hgetall(self.keys.run(run_id))
            self._decoders.append(lambda v: RunRecord.from_hash(run_id, v) if v else None)

    def step(self, run_id: str, step_id: str, *attrs: str) -> None:
        """StepRecord attributes of one step (all of them when none are named)."""
        names = step_field_names(attrs) if attrs else list(STEP_FIELDS)
        self._pipe.hmget(
            self.keys.step_hash(run_id, step_id), [step_field(step_id, n) for n in names]
        )
        self._decoders.append(
            lambda v: StepRecord.from_hash(step_id, dict(zip(names, v, strict=True)))
        )

    def execute(self) -> list[RunRecord | StepRecord | None]:
        """One record per read, in order (a run read that found no run: None)."""
        replies = self._pipe.execute() if self._decoders else []
        return [decode(v) for decode, v in zip(self._decoders, replies, strict=True)]
