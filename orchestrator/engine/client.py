"""The Python client: register definitions, submit runs, read and wait for them.

``from orchestrator import Client``::

    client = Client()                      # Settings from CANVASFLOW_* variables
    run = client.submit("docs/examples/data_processing.yaml", inputs={"rows": 50})
    final = run.wait(timeout=60)
    for step in final.steps: print(step.id, step.status, step.duration)
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis

from orchestrator.connect import state_redis
from orchestrator.engine import children, compiler, slots
from orchestrator.engine.celery_app import create_celery
from orchestrator.engine.control import Control
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.items import StepHandle
from orchestrator.engine.publish import Published, Publisher, Recorded
from orchestrator.engine.runstate import RunState, dumps
from orchestrator.engine.slotstate import DUPLICATE
from orchestrator.engine.states import ACTIVE_STEP_STATUSES, FINAL_RUN_STATUSES, RunStatus
from orchestrator.engine.submitchecks import (
    check_trigger,
    consumer_timeout_warnings,
    unserved_queues,
)
from orchestrator.errors import (
    CanvasflowError,
    DefinitionError,
    UnknownRun,
    UnknownWorkflow,
    WaitTimeout,
)
from orchestrator.keys import Keys
from orchestrator.model import callallow, limits
from orchestrator.model.definition import (
    Definition,
    Workflow,
    dump_definition,
    from_stored,
    load_definition,
    load_file,
)
from orchestrator.records import HotRun, RunRecord, StepRecord, text, waiting_of
from orchestrator.settings import Settings

PREPARED_CACHE = 128  # definitions a client keeps validated and planned
# How old a read of the fleet's live workers a submit may reuse (the one its validation made).
FLEET_FRESH_SECONDS = 1.0

log = logging.getLogger(__name__)


def inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


# Statuses at which a run waits for nothing but an operator: wait() returns on them too.
RESTING = {str(s) for s in FINAL_RUN_STATUSES} | {RunStatus.PAUSED, RunStatus.COMPENSATION_FAILED}


# ---------------------------------------------------------------------------------------------
# Snapshots
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    number: int
    status: str
    started_at: float | None
    finished_at: float | None
    duration: float | None
    worker: str | None
    error: str | None


@dataclass(frozen=True)
class StepSnapshot:
    id: str
    status: str
    attempts: int
    started_at: float | None
    finished_at: float | None
    duration: float | None
    output: Any
    error: str | None
    traceback: str | None
    worker: str | None
    history: tuple[Attempt, ...]
    compensation_error: str | None = None


@dataclass(frozen=True)
class RunSnapshot:
    id: str
    workflow: str
    version: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    inputs: Mapping[str, Any]
    priority: str
    tags: tuple[str, ...]
    error: str | None
    failed_step: str | None
    total: int
    settled: int
    current_steps: tuple[str, ...]
    steps: tuple[StepSnapshot, ...]
    # How it started: who, and the trigger (trigger_type: TRIGGER_TYPES), its name and its fire
    # time or event key.
    triggered_by: str | None = None
    trigger_type: str | None = None
    trigger_name: str | None = None
    trigger_ref: str | None = None
    # The run's result (its outputs, evaluated when it completed); its parent, for a child run.
    result: Any = None
    parent_run: str | None = None
    parent_step: str | None = None
    # A run waiting for a concurrency slot: {"key", "ahead", "reason"}; None otherwise.
    waiting: Mapping[str, Any] | None = None

    @property
    def progress(self) -> float:
        return self.settled / self.total if self.total else 1.0

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def step(self, step_id: str) -> StepSnapshot:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    @property
    def statuses(self) -> dict[str, str]:
        return {s.id: s.status for s in self.steps}


def _snapshot(hot: HotRun) -> RunSnapshot:
    run, steps, attempts = hot
    order = run.step_ids
    history: dict[str, list[Attempt]] = {}
    for a in attempts:
        history.setdefault(a["step"], []).append(
            Attempt(
                a["attempt"],
                a["status"],
                a.get("started_at"),
                a.get("finished_at"),
                a.get("duration"),
                a.get("worker"),
                a.get("error"),
            )
        )
    snaps = []
    for sid in order:
        step = steps.get(sid) or StepRecord(sid)
        started, finished = step.started_at, step.finished_at
        snaps.append(
            StepSnapshot(
                id=sid,
                status=step.status,
                attempts=step.attempts,
                started_at=started,
                finished_at=finished,
                duration=(finished - started) if started and finished else None,
                output=step.output,
                error=step.error,
                traceback=step.traceback,
                worker=step.worker,
                history=tuple(history.get(sid, ())),
                compensation_error=step.compensation_error,
            )
        )
    return RunSnapshot(
        id=run.id,
        workflow=run.workflow,
        version=run.version,
        status=run.status,
        created_at=run.created_at or 0.0,
        started_at=run.started_at,
        finished_at=run.finished_at,
        inputs=run.inputs,
        priority=run.priority,
        tags=tuple(run.tags),
        error=run.error,
        failed_step=run.failed_step,
        total=run.total,
        settled=run.settled,
        current_steps=tuple(s.id for s in snaps if s.status in ACTIVE_STEP_STATUSES),
        steps=tuple(snaps),
        triggered_by=run.triggered_by,
        trigger_type=run.trigger_type,
        trigger_name=run.trigger_name,
        trigger_ref=run.trigger_ref,
        result=run.result,
        parent_run=run.parent_run,
        parent_step=run.parent_step,
    )


# ---------------------------------------------------------------------------------------------
# Run handle
# ---------------------------------------------------------------------------------------------


class Run:
    """A handle on one run; every call reads the live state. ``warnings``: what its submit
    warned about (no live worker on a queue it needs), empty for a handle from get_run."""

    def __init__(
        self, client: Client, run_id: str, warnings: Iterable[str] = (), *, duplicate: bool = False
    ) -> None:
        self.client = client
        self.id = run_id
        self.warnings = tuple(warnings)
        # True when a submit with an idempotency key found the run that key already started.
        self.duplicate = duplicate

    def __repr__(self) -> str:
        return f"<Run {self.id}>"

    def snapshot(self) -> RunSnapshot:
        return self.client.snapshot(self.id)

    def status(self) -> str:
        st = self.client.state.status(self.id)
        if st is None:
            raise UnknownRun(self.id)
        return st

    def steps(self) -> tuple[StepSnapshot, ...]:
        return self.snapshot().steps

    def step(self, step_id: str) -> StepHandle:
        """One step: ``run.step("resize").items(status="FAILED")`` (orchestrator/engine/items.py)."""
        return StepHandle(self.client.settings.database_url, self.id, step_id)

    @property
    def result(self) -> Any:
        """The run's result: its definition's outputs, evaluated when it completed (else None)."""
        (run,) = self.client.state.runs([self.id], "result_json")
        if run is None:
            raise UnknownRun(self.id)
        return run.result

    def children(self) -> list[Run]:
        """Handles on the child runs its sub-workflow steps started (retried ones too)."""
        return [Run(self.client, c) for c in self.client.state.children(self.id)]

    def wait(self, timeout: float | None = None, *, until: Iterable[str] = RESTING) -> RunSnapshot:
        """Block until the run is final (or paused / waiting on a failed compensation)."""
        targets = set(until)
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.client.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.client.keys.settled_channel(self.id))
        try:
            while True:
                status = self.status()
                if status in targets:
                    return self.snapshot()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout(self.id, timeout or 0, status)
                # A message means a transition happened; re-check at least every second anyway.
                pubsub.get_message(timeout=min(1.0, remaining) if remaining is not None else 1.0)
        finally:
            pubsub.close()


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------


class Client:
    """Register workflows, submit and inspect runs."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        celery: Any = None,
        redis_client: redis.Redis | None = None,
        cpu: Callable[..., Any] | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        # Runs the CPU-heavy, I/O-free parts of register and submit (validating, planning, the
        # JSON of a big definition): ``cpu(fn, *args)``. The web process passes one that runs
        # them off its gevent loop under a deadline (web/serving.py); elsewhere: right here.
        self.cpu = cpu or inline
        self.keys = Keys(self.settings.key_prefix)
        self.redis = redis_client or state_redis(self.settings, decode_responses=False)
        self.state = RunState(
            self.redis,
            self.keys,
            state_ttl=self.settings.state_ttl,
            maxlen=self.settings.event_stream_maxlen,
        )
        self.celery = celery or create_celery(self.settings, sender=True)
        self.dispatcher = Dispatcher(self.celery, self.settings, self.state)
        # A run that frees a concurrency slot (its end, an operator's resolve...) admits the next
        # waiting ones in the same script: this process sends them.
        self.state.on_admit = self.dispatcher.admitted
        self._control = Control(self.state, self.dispatcher)
        # Submitting one definition again and again (the common case) validates and plans it
        # once per fleet catalog: (definition text, catalog) -> (definition, stored text, blueprint).
        self._prepared: OrderedDict[tuple[str, str], tuple[Definition, str, compiler.Blueprint]] = (
            OrderedDict()
        )
        self._seen_online: tuple[float, dict[str, dict[str, Any]]] = (-FLEET_FRESH_SECONDS, {})
        self._publisher: Publisher | None = None

    # -- plugins ------------------------------------------------------------------------------

    def fleet(self) -> dict[str, dict[str, Any]]:
        """Every worker's published catalog entry: {hostname: {plugins, queues, pid, started_at}}."""
        raw = self.redis.hgetall(self.keys.catalog)
        fleet: dict[str, dict[str, Any]] = {}
        for k, v in raw.items():
            try:
                entry = json.loads(v)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                fleet[text(k)] = entry
            else:  # not what a worker publishes (workers/app.py): no submit may fail on it
                log.warning("the catalog entry of %s is not a JSON object: ignored", text(k))
        pipe = self.redis.pipeline(transaction=False)
        for host in fleet:
            pipe.exists(self.keys.worker_alive(host))
        for entry, alive in zip(fleet.values(), pipe.execute(), strict=True):
            entry["online"] = bool(alive)
        return fleet

    def catalog(self) -> dict[str, dict[str, Any]] | None:
        """The union of the fleet's plugin catalogs, or None when no worker has published one."""
        return self._catalog()[0]

    def _online(self) -> dict[str, dict[str, Any]]:
        """The catalog entries of the workers online now (remembered for the submit that asks)."""
        fleet = {h: e for h, e in self.fleet().items() if e["online"]}
        self._seen_online = (time.monotonic(), fleet)
        return fleet

    def live_queues(self) -> set[str]:
        """The queues that a worker online now consumes, from the catalog each worker publishes
        with its queues and refreshes with its heartbeats (workers/app.py)."""
        seen, fleet = self._seen_online
        if time.monotonic() - seen > FLEET_FRESH_SECONDS:
            fleet = self._online()
        # An entry that is not what workers/app.py publishes (another version, a hand edit)
        # counts as consuming nothing; it must not fail the submit that reads it.
        return {
            q
            for entry in fleet.values()
            if isinstance(entry, dict) and isinstance(entry.get("queues"), list)
            for q in entry["queues"]
            if isinstance(q, str)
        }

    def _catalog(self) -> tuple[dict[str, dict[str, Any]] | None, str]:
        """(catalog, a fingerprint of it) from the workers online now."""
        fleet = self._online()
        if not fleet:
            return None, ""
        merged: dict[str, dict[str, Any]] = {}
        for entry in fleet.values():
            for plugin, methods in entry.get("plugins", {}).items():
                merged.setdefault(plugin, {}).update(methods)
        if "call" in merged.get("builtin", {}):
            # Who may run what: validation checks builtin.call against each queue's workers.
            merged["builtin"]["call"] = {
                **merged["builtin"]["call"],
                "allow": callallow.fleet_allow(fleet.values()),
            }
        return merged, hashlib.sha1(json.dumps(merged, sort_keys=True).encode()).hexdigest()

    def _prepare(
        self, definition: Definition | Workflow | Mapping[str, Any] | str | Path
    ) -> tuple[Definition, str, compiler.Blueprint]:
        """Validated definition, its stored JSON and its blueprint; cached for definitions given
        as a mapping, a Workflow or a Definition (a file or a registered id is read every time)."""
        pure = isinstance(definition, Definition | Mapping | Workflow)  # no I/O to load it
        text = self.cpu(self._cache_text, definition) if pure else ""
        catalog, fingerprint = self._catalog()
        key = (text, fingerprint)
        if text and key in self._prepared:
            self._prepared.move_to_end(key)
            return self._prepared[key]
        # A file is read and a registered id is looked up (I/O): those stay where they are.
        entry = (
            self.cpu(self._compile_entry, definition, catalog)
            if pure
            else self._compile_entry(definition, catalog)
        )
        if text:
            self._prepared[key] = entry
            while len(self._prepared) > PREPARED_CACHE:
                self._prepared.popitem(last=False)
        return entry

    def _cache_text(self, definition: Definition | Workflow | Mapping[str, Any]) -> str:
        if isinstance(definition, Definition):
            return dumps(dump_definition(definition))
        try:
            if isinstance(definition, Workflow):
                definition = definition.to_dict()
            return json.dumps(definition, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            # Not JSON, circular, or nested thousands deep: not cached, and validation (limits
            # first) will say where.
            return ""

    def _compile_entry(
        self,
        definition: Definition | Workflow | Mapping[str, Any] | str | Path,
        catalog: Mapping[str, Any] | None,
    ) -> tuple[Definition, str, compiler.Blueprint]:
        defn = self._load(definition, catalog)
        return defn, dumps(dump_definition(defn)), compiler.blueprint(defn)

    # -- definitions --------------------------------------------------------------------------

    def load(
        self,
        definition: Definition | Workflow | Mapping[str, Any] | str | Path,
        *,
        check_plugins: bool = True,
    ) -> Definition:
        """Any accepted form of a definition, validated (against the fleet's plugins when known)."""
        catalog = self.catalog() if check_plugins else None
        if isinstance(definition, Definition | Mapping | Workflow):
            return self.cpu(self._load, definition, catalog)  # type: ignore[no-any-return]
        return self._load(definition, catalog)

    def _load(
        self,
        definition: Definition | Workflow | Mapping[str, Any] | str | Path,
        catalog: Mapping[str, Any] | None,
    ) -> Definition:
        lim = self.settings.limits
        if isinstance(definition, Definition):
            return load_definition(
                dump_definition(definition),
                source=f"workflow '{definition.id}'",
                catalog=catalog,
                limits=lim,
            )
        if isinstance(definition, Workflow):
            return definition.build(catalog=catalog, limits=lim)
        if isinstance(definition, Mapping):
            return load_definition(definition, catalog=catalog, limits=lim)
        path = Path(definition)
        if path.suffix in (".yaml", ".yml", ".json") or path.exists():
            return load_file(path, catalog=catalog, limits=lim)
        return self.get_definition(str(definition))

    def register(
        self, definition: Definition | Workflow | Mapping[str, Any] | str | Path
    ) -> Definition:
        """Store a definition version; returns it with its version set (kept: every version)."""
        defn = self.load(definition)
        body = dump_definition(defn)
        children.refuse_cycle(defn, body, self._registered_body)
        key, vkey = self.keys.workflow(defn.id), self.keys.workflow_versions(defn.id)
        versions = [text(v) for v in self.redis.lrange(vkey, 0, -1)]
        if defn.version is None:
            # Unversioned: same body as the latest -> that version; else the next number.
            if versions:
                latest = json.loads(text(self.redis.hget(key, versions[-1])))
                if {**latest, "version": None} == {**body, "version": None}:
                    return from_stored(latest)
            version = str(len(versions) + 1)
            while version in versions:
                version = str(int(version) + 1)
            body["version"] = version
        else:
            version = defn.version
            if version in versions:
                existing = json.loads(text(self.redis.hget(key, version)))
                if existing != body:
                    raise DefinitionError(
                        [
                            (
                                "version",
                                f"version {version} of '{defn.id}' is already "
                                "registered with a different body: bump the version",
                            )
                        ]
                    )
                return defn
        pipe = self.redis.pipeline()
        pipe.hset(key, version, json.dumps(body))
        pipe.rpush(vkey, version)
        pipe.sadd(self.keys.workflows, defn.id)
        pipe.incr(self.keys.workflows_generation)  # event-trigger indexes rebuild (publish.py)
        pipe.execute()
        return from_stored(body)

    def _registered_body(self, workflow_id: str, version: str | None) -> dict[str, Any] | None:
        versions = self.versions(workflow_id)
        if not versions or (version is not None and version not in versions):
            return None
        raw = self.redis.hget(self.keys.workflow(workflow_id), version or versions[-1])
        return json.loads(raw) if raw else None

    def workflows(self) -> list[str]:
        return sorted(text(m) for m in self.redis.smembers(self.keys.workflows))

    def versions(self, workflow_id: str) -> list[str]:
        return [text(v) for v in self.redis.lrange(self.keys.workflow_versions(workflow_id), 0, -1)]

    def get_definition(self, workflow_id: str, version: str | None = None) -> Definition:
        versions = self.versions(workflow_id)
        if not versions:
            raise UnknownWorkflow(workflow_id, known=self.workflows())
        version = version or versions[-1]
        raw = self.redis.hget(self.keys.workflow(workflow_id), version)
        if raw is None:
            raise UnknownWorkflow(
                workflow_id, version, known=[f"{workflow_id} {v}" for v in versions]
            )
        return from_stored(json.loads(raw))

    # -- runs ---------------------------------------------------------------------------------

    def submit(
        self,
        definition: Definition | Workflow | Mapping[str, Any] | str | Path,
        *,
        inputs: Mapping[str, Any] | None = None,
        priority: str | None = None,
        tags: Iterable[str] = (),
        triggered_by: str = "api",
        trigger_type: str = "manual",
        version: str | None = None,
        cloned_from: str | None = None,
        trigger_name: str | None = None,
        trigger_ref: str | None = None,
        idempotency_key: str | None = None,
        run_id: str | None = None,
        fence: tuple[str, str] | None = None,
    ) -> Run:
        """Validate, record and dispatch a run; returns at once with a handle on it.
        ``trigger_type`` says how it started (TRIGGER_TYPES), ``trigger_name`` and
        ``trigger_ref`` which schedule or event trigger and which fire time or event key.
        With ``idempotency_key``, a second submit with the same key (within
        ``Settings.event_key_ttl``) starts nothing and returns the first run
        (``run.duplicate``). ``run_id`` and ``fence`` are the scheduler's (engine/scheduler.py):
        a deterministic id of the fire time, created only while the fence key holds the token
        (else FenceLost)."""
        check_trigger(trigger_type, trigger_name, trigger_ref)
        if isinstance(definition, str) and version is not None:
            defn = self.get_definition(definition, version)
            body, prepared = dumps(dump_definition(defn)), compiler.blueprint(defn)
        else:
            defn, body, prepared = self._prepare(definition)
        if any(s.workflow for s in defn.steps):
            # Every child workflow must exist now; its version is pinned for the whole run.
            defn = children.pin_versions(defn, self.versions, self.workflows)
            body, prepared = dumps(dump_definition(defn)), compiler.blueprint(defn)
        if priority is not None and priority not in ("high", "normal", "low"):
            raise DefinitionError(
                [("priority", f"must be one of high, normal, low, not {priority!r}")]
            )
        run_inputs = {**defn.inputs, **(inputs or {})}
        limits.refuse(limits.check_inputs(run_inputs, self.settings.limits))
        try:
            inputs_json = json.dumps(run_inputs)
        except (TypeError, ValueError) as exc:
            raise DefinitionError([("inputs", f"must be JSON: {exc}")]) from None
        record = RunRecord(
            id=run_id or secrets.token_hex(8),
            workflow=defn.id,
            version=defn.version or "",
            name=defn.name or defn.id,
            definition_json=body,
            inputs_json=inputs_json,
            priority=priority or defn.priority,
            tags_json=dumps(sorted({*defn.tags, *tags})),
            triggered_by=triggered_by,
            trigger_type=trigger_type,
            trigger_name=trigger_name,
            trigger_ref=trigger_ref,
            sla_seconds=defn.sla_seconds or None,
            cloned_from=cloned_from,
        )
        claim = None
        if idempotency_key is not None:
            digest = hashlib.sha256(idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()
            claim = (self.keys.trigger_claim(digest), self.settings.event_key_ttl)
        slot = slots.group_of(self.state, defn, run_inputs)
        if slot is not None:
            record = replace(record, conc_group=slot.name, conc_key=slot.key)
        warnings = self._unserved(defn, record.id)
        for line in consumer_timeout_warnings(defn, self.settings):
            log.warning("run %s of %s: %s", record.id, defn.id, line)
            warnings.append(line)
        if warnings:
            record = replace(record, warnings_json=json.dumps(warnings))
        adm = self.dispatcher.start(
            record, defn, run_inputs, prepared=prepared, claim=claim, fence=fence, slot=slot
        )
        if adm is not None and adm.verdict == DUPLICATE:
            return Run(self, adm.admitted[0], duplicate=True)
        if adm is not None and adm.victim:
            self._evict(adm.victim, record.id, defn)
        return Run(self, record.id, warnings)

    def _evict(self, victim: str, run_id: str, defn: Definition) -> None:
        """cancel_in_progress: cancel (with compensation) the oldest run holding a slot, so that
        ``run_id`` gets it when that run has ended. One that ends first frees it anyway."""
        try:
            self.control.cancel(
                victim,
                actor="concurrency",
                reason=f"cancel_in_progress: run {run_id} of {defn.id} takes its slot",
            )
        except CanvasflowError as exc:
            log.info("run %s was not cancelled for %s: %s", victim, run_id, exc)

    def _unserved(self, defn: Definition, run_id: str) -> list[str]:
        """Warnings for the queues of ``defn`` that no live worker consumes (logged; the submit
        goes on: a worker may start later). A failed check warns about nothing."""
        try:
            live = self.live_queues()
        except Exception as exc:  # a warning must never fail or block the submit it is for
            log.debug("run %s: live workers not checked: %s", run_id, exc)
            return []
        warnings = unserved_queues(defn, live, self.settings.default_queue)
        for line in warnings:
            log.warning("run %s of %s: %s", run_id, defn.id, line)
        return warnings

    def get_run(self, run_id: str) -> Run:
        if self.state.status(run_id) is None:
            raise UnknownRun(run_id)
        return Run(self, run_id)

    def snapshot(self, run_id: str) -> RunSnapshot:
        data = self.state.read(run_id)
        if data is None:
            raise UnknownRun(run_id)
        snap = _snapshot(data)
        if data.run.conc_group and data.run.status in (RunStatus.PENDING, RunStatus.PAUSING):
            snap = replace(snap, waiting=self.waiting(run_id))
        return snap

    def waiting(self, run_id: str) -> dict[str, Any] | None:
        """{key, ahead, reason} of a run waiting for a concurrency slot, None otherwise."""
        return waiting_of(self.redis, self.keys, [run_id]).get(run_id)

    def concurrency(self, workflow_id: str) -> list[dict[str, Any]]:
        """The workflow's concurrency groups in use: key, limit, in_use, active, waiting."""
        return slots.in_use(self.state, workflow_id)

    def list_runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        workflow: str | None = None,
        limit: int = 50,
    ) -> list[RunSnapshot]:
        """Newest first, from the hot state (finished runs stay there for state_ttl)."""
        wanted = {status} if isinstance(status, str) else set(status or ())
        index = self.keys.runs_of(workflow) if workflow else self.keys.runs
        out: list[RunSnapshot] = []
        start = 0
        while len(out) < limit:
            ids = [text(i) for i in self.redis.zrevrange(index, start, start + 4 * limit - 1)]
            if not ids:
                break
            start += len(ids)
            for rid, run in zip(ids, self.state.runs(ids, "status"), strict=True):
                if run is None:
                    self.redis.zrem(index, rid)  # expired from the hot state
                    continue
                if wanted and run.status not in wanted:
                    continue
                try:
                    out.append(self.snapshot(rid))
                except UnknownRun:
                    continue
                if len(out) >= limit:
                    break
        return out

    def clone(
        self,
        run_id: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        actor: str = "api",
        reason: str | None = None,
    ) -> Run:
        """A new run of the same definition version with the same inputs (optionally overridden);
        audited on the cloned run like an operator action."""
        data = self.state.read(run_id)
        if data is None:
            self.control.audit(run_id, "clone", actor, reason, "refused: unknown run")
            raise UnknownRun(run_id)
        run = data.run
        new = self.submit(
            from_stored(run.definition),
            inputs={**run.inputs, **(inputs or {})},
            priority=run.priority,
            triggered_by=actor,
            trigger_type="clone",
            tags=run.tags,
            cloned_from=run_id,
        )
        self.control.audit(run_id, "clone", actor, reason, "ok", {"new_run": new.id})
        return new

    def publish(
        self,
        name: str,
        payload: Mapping[str, Any] | None = None,
        key: str | None = None,
        *,
        triggered_by: str = "api",
        recorded: Recorded | None = None,
    ) -> Published:
        """Publish an event: start a run of every registered workflow whose event trigger
        matches it (filter true); a repeated ``key`` starts no second run of a trigger.
        ``recorded``: asks the audit store for a run of an earlier event with the key (the web
        and the CLI pass it: it dedupes after a Redis loss too).
        Returns what started, was deduplicated, filtered out or failed (publish.py)."""
        if self._publisher is None:
            self._publisher = Publisher(self)
        return self._publisher.publish(
            name, payload, key, triggered_by=triggered_by, recorded=recorded
        )

    @property
    def control(self) -> Control:
        """Operator actions: pause, resume, cancel, retry, retry_compensation, resolve."""
        return self._control

    def close(self) -> None:
        self.redis.close()
