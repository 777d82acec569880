"""Sub-workflow steps on the workers: start (or find) the child run, wait without a worker slot,
join when the child ends; and a run's outputs, evaluated when it completes.

A sub-workflow step is an ordinary step task whose body (``start_child``, in place of the plugin
call) claims the step's child run id (SET NX, so a redelivered or re-dispatched copy finds the
same child), creates and dispatches the child if it does not exist yet, and raises ``Waiting``.
The step task then stores its own continuation (``continuation``: the join task, with the
chain and chord of the step task's request, as ``Task.replace`` would build it) under the child,
holds the step's lease for as long as the child may run, and ends: no worker slot waits. When
the child settles (COMPLETED, FAILED, CANCELLED, COMPENSATION_FAILED; PAUSED while the parent
pauses), ``notify`` takes the continuation (GETDEL: sent exactly once) and sends it; the join
task records the step's outcome (the child's result, or why it failed) and continues the
parent's canvas. If the child ended before the continuation was stored, the step task takes it
back itself. docs/design.md "Sub-workflows" has the reasoning.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore

from orchestrator.engine import compiler, slots
from orchestrator.engine import stepcore as core
from orchestrator.engine.states import RunStatus, StepStatus
from orchestrator.errors import EvaluationError, StepError
from orchestrator.keys import is_item
from orchestrator.model import limits, subflows
from orchestrator.model.definition import Definition, dump_definition, from_stored
from orchestrator.records import RunRecord

log = logging.getLogger(__name__)

JOIN_TASK = "canvasflow.child_joined"
# A child ending in one of these ends the parent step (COMPENSATION_FAILED: the child waits
# for an operator, but its work is not done: the step fails).
ENDED = (
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
    RunStatus.COMPENSATION_FAILED,
)
# The parent in one of these takes its paused child's step back (the step waits PENDING for
# the parent's resume, which attaches it to the same child again).
PARENT_PAUSED = (RunStatus.PAUSING, RunStatus.PAUSED)


class Parked(Ignore):
    """The step task ends leaving its step RUNNING on its child: not a duplicate, nothing to
    settle (workers/step.py)."""


class Waiting(Exception):
    """Raised by the body of a sub-workflow step: its child run ``child_id`` is running."""

    def __init__(self, child_id: str) -> None:
        super().__init__(child_id)
        self.child_id = child_id


def is_sub_step(spec: Mapping[str, Any]) -> bool:
    return bool(spec.get("wf"))


# -- the body ---------------------------------------------------------------------------------


# (workflow, version) -> (definition, its stored JSON, its blueprint). A registered version never
# changes (Client.register refuses a new body under an old version), so a worker loads, validates
# and compiles a child workflow once, not once per child run.
_PREPARED: OrderedDict[tuple[str, str], tuple[Definition, str, Any]] = OrderedDict()
PREPARED_CACHE = 64


def prepared_child(rt: Any, workflow: str, version: str | None) -> tuple[Definition, str, Any]:
    """The child workflow the step names, with its stored JSON and blueprint (cached)."""
    if version is not None and (workflow, version) in _PREPARED:
        _PREPARED.move_to_end((workflow, version))
        return _PREPARED[(workflow, version)]
    defn = child_definition(rt, workflow, version)
    entry = (
        defn,
        json.dumps(dump_definition(defn), separators=(",", ":")),
        compiler.blueprint(defn),
    )
    if defn.version:
        _PREPARED[(workflow, defn.version)] = entry
        while len(_PREPARED) > PREPARED_CACHE:
            _PREPARED.popitem(last=False)
    return entry


def child_definition(rt: Any, workflow: str, version: str | None) -> Definition:
    """The registered definition the step names (its version was pinned at submit)."""
    r, keys = rt.state.r, rt.state.keys
    versions = [
        v.decode() if isinstance(v, bytes) else v
        for v in r.lrange(keys.workflow_versions(workflow), 0, -1)
    ]
    if not versions:
        raise StepError(f"sub-workflow: workflow '{workflow}' is not registered", retryable=False)
    chosen = version or versions[-1]
    raw = r.hget(keys.workflow(workflow), chosen)
    if raw is None:
        raise StepError(
            f"sub-workflow: workflow '{workflow}' has no version {chosen} "
            f"(registered: {', '.join(versions)})",
            retryable=False,
        )
    return from_stored(json.loads(raw))


def start_child(rt: Any, spec: Mapping[str, Any], inputs: Any, run_id: str, sid: str) -> NoReturn:
    """The body of a sub-workflow step (step ``sid`` of run ``run_id``): its child run exists
    and runs when this raises ``Waiting``. Raises StepError when it cannot (depth limit, unknown
    workflow, inputs that are not a mapping)."""
    workflow, version = spec["wf"], spec.get("ver")
    parent, child_id, exists = rt.state.claim_child(run_id, sid, secrets.token_hex(8))
    depth = (parent.depth if parent else 0) + 1
    limit = rt.settings.max_workflow_depth
    if depth > limit:
        raise StepError(
            f"sub-workflow '{workflow}' would be nested {depth} runs deep: the limit is {limit} "
            "(CANVASFLOW_MAX_WORKFLOW_DEPTH)",
            retryable=False,
        )
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, Mapping):
        raise StepError(
            f"inputs of sub-workflow '{workflow}' must be a mapping, not {type(inputs).__name__}",
            retryable=False,
        )
    if not exists:
        # Not created yet (or the copy that claimed it died before it did): this copy holds the
        # step's lease, so no other copy is here at the same time.
        defn, body, blueprint = prepared_child(rt, workflow, version)
        run_inputs = {**defn.inputs, **inputs}
        # The child's inputs were rendered from the parent's outputs: as big as a run may
        # receive at most, as from a submit.
        problems = limits.check_inputs(run_inputs, rt.settings.limits, "inputs")
        if problems:
            raise StepError(
                f"inputs of sub-workflow '{workflow}': "
                + "; ".join(f"{p}: {m}" for p, m in problems),
                retryable=False,
            )
        record = RunRecord(
            id=child_id,
            workflow=defn.id,
            version=defn.version or "",
            name=defn.name or defn.id,
            definition_json=body,
            inputs_json=json.dumps(run_inputs),
            priority=parent.priority if parent else defn.priority,
            tags_json=parent.tags_json if parent and parent.tags_json else "[]",
            triggered_by=f"run {run_id}",
            trigger_type="parent",
            sla_seconds=defn.sla_seconds or None,
            parent_run=run_id,
            parent_step=sid,
            depth=depth,
        )
        # The child's workflow limits its runs like any submit's (a cancel_in_progress victim is
        # not cancelled from here: the child waits for its slot as under `queue`).
        slot = slots.group_of(rt.state, defn, run_inputs)
        if slot is not None:
            record = replace(record, conc_group=slot.name, conc_key=slot.key)
        rt.state.add_child(run_id, child_id)  # before it runs: a cancel of the parent reaches it
        rt.dispatcher.start(record, defn, run_inputs, prepared=blueprint, slot=slot)
    raise Waiting(child_id)


# -- waiting and joining ----------------------------------------------------------------------


def continuation(task: Task, args: tuple) -> Any:
    """The join task in the place of ``task`` in its canvas (compiler.compile_continuation). A
    new task id: a cancel revokes the step task's id, and the join must still run."""
    req = task.request
    info = req.delivery_info or {}
    return compiler.compile_continuation(
        JOIN_TASK,
        args,
        task_id=uuid.uuid4().hex,
        chain=req.chain,
        chord=req.chord,
        group=req.group,
        group_index=req.group_index,
        root_id=req.root_id,
        queue=info.get("routing_key"),
        priority=info.get("priority"),
        links=req.callbacks,
        error_links=req.errbacks,
        app=task.app,
    )


def wait_for_child(
    task: Task,
    rt: Any,
    spec: Mapping[str, Any],
    known: core.Outcomes,
    child_id: str,
    owner: str,
    attempt: int,
    started: float,
) -> NoReturn:
    """Leave the step RUNNING on its child: store the continuation, and send it at once if the
    child ended meanwhile (whoever takes it sends it). Always ends the task (Ignore)."""
    hdr = compiler.read_header(known[core.HEADER])
    run_id, sid = hdr["run"], spec["id"]
    wire = compiler.wire_spec(spec)
    # An item's join flows nothing on (its chord's collector reads the items from Redis): it
    # carries the run header, not the upstream outcomes, whatever their size.
    carried = {core.HEADER: known[core.HEADER]} if is_item(sid) else dict(known)
    sig = continuation(task, (carried, wire, child_id, owner, attempt, started))
    ttl = max(rt.settings.state_ttl, rt.lease_ttl)
    status, parent = rt.state.await_child(child_id, json.dumps(sig), run_id, sid, owner, ttl)
    if (
        status is None
        or status in ENDED
        or (status == RunStatus.PAUSED and parent in PARENT_PAUSED)
    ):
        send_join(rt, task.app, child_id)
    raise Parked()


def children_active(rt: Any, run_id: str) -> bool:
    """Whether a child run of ``run_id`` is still winding down (or running)."""
    kids = rt.state.children(run_id)
    if not kids:
        return False
    return any(
        run is not None and run.status not in ENDED and run.status != RunStatus.PAUSED
        for run in rt.state.runs(kids, "status")
    )


def send_join(rt: Any, app: Any, child_id: str) -> bool:
    raw = rt.state.take_join(child_id)
    if raw is None:
        return False
    app.signature(json.loads(raw)).apply_async()
    return True


def notify(rt: Any, app: Any, run_id: str, status: str) -> None:
    """After run ``run_id`` settled in ``status``: continue its parent if it waits on it."""
    if status not in ENDED and status != RunStatus.PAUSED:
        return
    if status == RunStatus.PAUSED:
        raw = rt.state.peek_join(run_id)
        if raw is None:
            return
        (run,) = rt.state.runs([run_id], "parent_run")
        if run is None or rt.state.status(run.parent_run or "") not in PARENT_PAUSED:
            return  # only the child was paused: the parent step goes on waiting
    try:
        send_join(rt, app, run_id)
    except Exception:
        log.exception("canvasflow: run %s ended but its parent could not be continued", run_id)
        raise


def joined(
    task: Task,
    rt: Any,
    known: Any,
    wire: Any,
    child_id: str,
    owner: str,
    attempt: int,
    started: float,
) -> Any:
    """The join task: record the sub-workflow step's outcome from its child, continue the canvas."""
    known = core.merge(known)
    spec = compiler.read_spec(wire)
    hdr = compiler.read_header(known[core.HEADER])
    run_id, sid, epoch = hdr["run"], spec["id"], hdr["epoch"]
    (child,) = rt.state.runs([child_id], "status", "result_json", "error", "workflow")
    critical = spec.get("critical", True)
    output, error = "null", ""
    if child is None:
        status, error = StepStatus.FAILED, f"child run {child_id} is gone from Redis"
    elif child.status == RunStatus.COMPLETED:
        status, output = StepStatus.COMPLETED, child.result_json or "null"
    elif child.status == RunStatus.PAUSED:
        status = StepStatus.RETRYING  # back to waiting: the parent's resume attaches it again
        error = f"child run {child_id} paused with its parent"
    else:
        status = StepStatus.FAILED
        error = f"child run {child_id} ({child.workflow}) ended {child.status}" + (
            f": {child.error}" if child.error else ""
        )
    finished = time.time()
    record = {
        "attempt": attempt,
        "step": sid,
        "status": str(status),
        "started_at": started,
        "finished_at": finished,
        "duration": round(finished - started, 6),
        "worker": task.request.hostname or "",
        "task_id": task.request.id or "",
        "error": error or None,
        "stats": {},
        "child_run": child_id,
    }
    result = rt.state.finish_step(
        run_id,
        sid,
        epoch,
        owner=owner,
        attempt=record,
        status=str(status),
        output=output,
        error=error,
        traceback="",
        critical=critical,
        batch=[],
    )
    if result != "ok":
        raise Ignore()  # the step was taken over (its lease lapsed) or the run is gone
    flows = StepStatus.PENDING if status == StepStatus.RETRYING else status
    if status == StepStatus.FAILED and critical:
        rt.watch.touch(run_id)
        known[core.HALTING] = 1
    return core.flow_on(known, spec, str(flows), core.kept_output(spec, str(status), output))


# -- outputs ----------------------------------------------------------------------------------


def result_fields(rt: Any, run_id: str) -> tuple[dict[str, Any], str]:
    """({"result_json": ...}, "") for a run about to complete, its outputs evaluated over its
    hot state; ({}, error) when an entry cannot be evaluated (the run then fails with it)."""
    data = rt.state.read(run_id)
    if data is None:
        return {}, ""
    run, steps, _ = data
    outputs = run.definition.get("outputs") or {}
    scope = {
        "inputs": run.inputs,
        "steps": {s: {"status": st.status, "output": st.output} for s, st in steps.items()},
        "run": {"id": run_id, "workflow": run.workflow, "version": run.version},
    }
    try:
        result = subflows.evaluate_outputs(outputs, scope)
        text = json.dumps(result, separators=(",", ":"), allow_nan=False)
    except EvaluationError as exc:
        return {}, str(exc)
    except (TypeError, ValueError) as exc:
        return {}, f"outputs: not JSON: {exc}"
    return {"result_json": text}, ""
