"""Mapped steps on the workers: expansion, items, the collector.

A mapped step's task begins the step like any other (``begin_step``: a lease, an attempt),
evaluates ``map.over``, stores the element list once in the run's hot state (``expand``) and
replaces itself, Celery-natively (``Task.replace``), with ``chord(items, collector)``: the rest of
the canvas follows the collector. Each item message carries the step's spec, the run header and
the item's index, never the element or the list; an item reads its element from Redis.

With ``max_parallel: k`` the chord's header is k lanes: a lane runs one item, claims the next
index atomically (``claim_item``, a claim that a redelivered message repeats, never one more) and
replaces itself with it, so at most k items run at once.

Every item runs through ``workers.step.execute``, the body of a plain step, with its id
``resize[3]`` and its scope (the element under ``as``, ``map.index``): begin/finish/run_once,
leases, lost attempts, retries with backoff (``self.retry``), timeouts, logs and progress are the
step's. The collector reads the items' statuses and outputs and ends the step: COMPLETED with the
outputs in element order, FAILED when a critical item failed (items not started: CANCELLED),
back to PENDING when the run paused (the resume expands again and runs the items not done),
CANCELLED when the run was cancelled. docs/design.md, "Mapped steps".

An item of a mapped sub-workflow step parks on its child run like a sub-workflow step
(workers/subrun.py): its task ends without counting its chord part, and its join
(``item_joined``) records the item, counts the part and goes on with the item's lane.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from orchestrator.engine import compiler
from orchestrator.engine import stepcore as core
from orchestrator.engine.states import StepStatus
from orchestrator.errors import EvaluationError, ExpressionError
from orchestrator.keys import item_id, item_of
from orchestrator.model import expressions
from orchestrator.model.definition import AMQP_PRIORITIES, PRIORITIES
from workers import step as shell
from workers import subrun
from workers.context import StepContext

INLINE_UPSTREAM = 4096  # characters of upstream outcomes an item message may carry itself
WAIT = 0.5  # seconds before a collector looks again at items still running


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    names: dict[type, str] = {dict: "object", str: "string", bool: "boolean"}
    return names.get(type(value), type(value).__name__)


def _roots(text: str) -> set[str]:
    try:
        exprs = (
            expressions.Template.parse(text).expressions
            if "{{" in text
            else (expressions.parse(text),)
        )
    except ExpressionError:
        return set()
    return {str(p[0]) for e in exprs for p in e.paths()}


def per_item_when(spec: Mapping[str, Any]) -> bool:
    """A mapped step's ``when`` that reads the item (or ``map``) is evaluated for each item (a
    false one skips the item); any other ``when`` decides for the whole step."""
    when = spec.get("when")
    return isinstance(when, str) and bool(_roots(when) & {spec["map"][1], "map"})


def _item_context(
    spec: Mapping[str, Any], hdr: Mapping[str, Any], known: core.Outcomes
) -> tuple[list[Any], Any]:
    """(the run header an item message carries, the upstream outcomes it carries). Only what the
    item's params and ``when`` read, and only if small: else the header goes without the inputs
    and the outcomes are None, and each item reads both from what expansion stored. So an item
    message does not grow with the list (``over`` often reads the inputs or an upstream list)."""
    paths: list[tuple] = []
    texts = [t.text for _, t in expressions.iter_templates(spec.get("params") or {})]
    if spec.get("when"):
        texts.append("{{ " + spec["when"] + " }}")
    for text in texts:
        try:
            for e in expressions.Template.parse(text).expressions:
                paths.extend(e.paths())
        except ExpressionError:
            continue
    refs = {str(p[1]) for p in paths if p[0] == "steps" and len(p) > 1}
    picked: core.Outcomes = {sid: known[sid] for sid in refs if sid in known}
    if core.HALTING in known:
        picked[core.HALTING] = 1
    small = dict(hdr)
    if not any(p[0] == "inputs" for p in paths):
        small.pop("inputs", None)
    else:
        picked["@inputs"] = 1  # the inputs are read: they ride in the header, or in the stash
    size = len(json.dumps([small.get("inputs"), picked], separators=(",", ":")))
    if size > INLINE_UPSTREAM:
        small.pop("inputs", None)
        return compiler.wire_header(small), None
    picked.pop("@inputs", None)
    return compiler.wire_header(small), picked


_PRIORITY: dict[str, str] = {}  # run id -> its priority, as this process last read it


def _run_priority(rt: shell.Runtime, run_id: str) -> str:
    if run_id not in _PRIORITY:
        if len(_PRIORITY) > 1024:
            _PRIORITY.clear()
        (run,) = rt.state.runs([run_id], "priority")
        _PRIORITY[run_id] = (run.priority if run else "") or "normal"
    return _PRIORITY[run_id]


def _options(task: Task, rt: shell.Runtime, spec: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """The item tasks' queue, priority and time limits: the mapped step's own (its queue is
    where its message came from; its priority the run's, as the compiler gives every task)."""
    info = task.request.delivery_info or {}
    opts: dict[str, Any] = {}
    if info.get("routing_key"):
        opts["queue"] = info["routing_key"]
    priority = _run_priority(rt, run_id)
    if priority != "normal":
        table = AMQP_PRIORITIES if rt.settings.broker_is_amqp else PRIORITIES
        opts["priority"] = table[priority]
    if spec.get("timeout"):
        opts["soft_time_limit"] = spec["timeout"]
        opts["time_limit"] = spec["timeout"] + rt.hard_timeout_grace
    return opts


# -- the mapped step's own task ----------------------------------------------------------------


def expand(
    task: Task,
    rt: shell.Runtime,
    spec: dict[str, Any],
    hdr: dict[str, Any],
    known: core.Outcomes,
    who: Any,
) -> Any:
    """Begin the mapped step, evaluate ``over``, store the list, replace the task with its items."""
    run_id, epoch, sid = hdr["run"], int(hdr["epoch"]), spec["id"]
    whole = {**spec, "when": None} if per_item_when(spec) else spec
    entry = core.admit(whole, hdr, known)
    # Never the fast path: whether the step began must be known before its items run.
    ctx = shell._begin(task, rt, {**spec, "comp": 1}, hdr, known, entry, who)
    if not isinstance(ctx, StepContext):
        return ctx
    rt.heartbeat.remove(ctx)
    started = ctx.started
    go = entry if isinstance(entry, core.Go) else core.Go()
    try:
        if go.error:
            raise EvaluationError(go.error)
        over = expressions.Template.parse(spec["map"][0]).render(core.scope_for(hdr, known))
        if not isinstance(over, list):
            raise EvaluationError(
                f"map.over of step '{sid}' must give a list, but gave {_type_name(over)}"
            )
        elements = [json.dumps(e, separators=(",", ":"), allow_nan=False) for e in over]
    except (EvaluationError, TypeError, ValueError) as exc:
        message = (
            str(exc) if isinstance(exc, EvaluationError) else f"map.over of step '{sid}': {exc}"
        )
        if go.error:
            message = go.error  # the step's `when` could not be evaluated
        elif not message.startswith("map.over"):
            message = f"map.over of step '{sid}': {message}"
        return _end(
            task, rt, spec, hdr, known, StepStatus.FAILED, "null", message, who.owner, started
        )
    cap = int(spec["map"][2] or 0)
    verdict, n, todo = rt.state.expand(
        run_id, sid, epoch, owner=who.owner, elements=elements, max_parallel=cap
    )
    if verdict not in ("ok", "again"):
        raise Ignore()
    rt.state.stash_known(run_id, sid, epoch, json.dumps(known, separators=(",", ":")))
    if not todo:
        return collect_now(task, rt, spec, hdr, wait=True)
    lanes = cap if cap and cap < len(todo) else 0
    item_hdr, upstream = _item_context(spec, hdr, known)
    canvas = compiler.compile_items(
        compiler.wire_spec(spec),
        item_hdr,
        todo,
        lanes,
        upstream,
        options=_options(task, rt, spec, run_id),
        app=task.app,
    )
    with _results_unwatched(task.app):
        return task.replace(canvas)


@contextmanager
def _results_unwatched(app: Any) -> Iterator[None]:
    """``Task.replace`` freezes the chord, and freezing a group makes Celery's Redis result
    backend SUBSCRIBE to the result channel of every header task (one command each), holding
    each pending result until it arrives — with ``ignore_result`` never: 10,000 round trips and
    10,000 results kept per expansion. Nothing here waits on them (the chord counts its parts in
    the backend, not through these subscriptions), so none is made."""
    backend = app.backend
    had = "add_pending_result" in vars(backend)
    saved = vars(backend).get("add_pending_result")
    backend.add_pending_result = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if had:
            backend.add_pending_result = saved
        else:
            del backend.add_pending_result


def _end(
    task: Task,
    rt: shell.Runtime,
    spec: Mapping[str, Any],
    hdr: Mapping[str, Any],
    known: core.Outcomes,
    status: str,
    output: str,
    error: str,
    owner: str,
    started: float | None,
    attempt: int = 0,
) -> core.Outcomes:
    """Record the mapped step's end (its lease is gone: the owner of its attempt may end it)."""
    run_id, sid, epoch = hdr["run"], spec["id"], int(hdr["epoch"])
    request = task.request
    critical = spec.get("critical", True)
    if status == StepStatus.CANCELLED:
        rt.state.set_step(
            run_id,
            sid,
            status,
            "step_cancelled",
            expect=StepStatus.RUNNING,
            fields={"error": error},
            data={"reason": error},
        )
        return core.flow_on(known, spec, status)
    failure = core.Failure(error) if error else None
    record = core.attempt_record(
        spec,
        status,
        started=started or time.time(),
        finished=time.time(),
        worker=request.hostname or shell.HOST,
        task_id=request.id or "",
        failure=failure,
        stats={},
    )
    if not attempt:
        attempt = rt.state.step(run_id, sid, "attempts").attempts or 1
    result = rt.state.finish_step(
        run_id,
        sid,
        epoch,
        status=status,
        owner=owner,
        output=output,
        error=error,
        critical=critical,
        attempt={"attempt": attempt, **record},
    )
    if result != "ok":
        raise Ignore()
    if status == StepStatus.FAILED and critical:
        rt.watch.touch(run_id)
        known[core.HALTING] = 1
    return core.flow_on(known, spec, status, core.kept_output(spec, status, output))


# -- items ---------------------------------------------------------------------------------------


def run_item(
    task: Task, rt: shell.Runtime, wire: Any, hdr_wire: Any, index: int, lane: int, upstream: Any
) -> None:
    """One item (``index``), or in a lane (``lane`` >= 0) the item it holds and then the next."""
    spec = compiler.read_spec(wire)
    hdr = compiler.read_header(hdr_wire)
    run_id, epoch, sid = hdr["run"], int(hdr["epoch"]), spec["id"]
    if index < 0:
        index = rt.state.claim_item(run_id, sid, epoch, f"L{lane}")
        if index < 0:
            return None
    try:
        lane_info = [lane, wire, hdr_wire, upstream] if lane >= 0 else None
        _one_item(task, rt, spec, hdr, index, upstream, lane_info)
    except subrun.Parked:
        raise  # the item waits on its child run; its join takes its place (item_joined)
    except Ignore:
        head = rt.state.head(run_id)
        if head is None or head[1] != str(epoch):
            raise  # the run moved on to another dispatch, or is gone: this chord is dead
    except BaseException as exc:
        if not shell.unexpected(exc):
            raise
        known = upstream if isinstance(upstream, dict) else {}
        shell.fail_step(task, rt, _item_spec(spec, index), hdr, dict(known), exc)
    if lane < 0:
        return None
    return _next_in_lane(task, rt, spec, wire, hdr_wire, run_id, epoch, index, lane, upstream)


def _next_in_lane(
    task: Task,
    rt: shell.Runtime,
    spec: Mapping[str, Any],
    wire: Any,
    hdr_wire: Any,
    run_id: str,
    epoch: int,
    index: int,
    lane: int,
    upstream: Any,
) -> None:
    """A lane's item ``index`` is done: the task replaces itself with the lane's next item."""
    nxt = rt.state.claim_item(run_id, spec["id"], epoch, str(index))
    if nxt < 0:
        return None
    options = _options(task, rt, spec, run_id)
    return task.replace(
        compiler.item_signature(wire, hdr_wire, nxt, lane, upstream, options, app=task.app)
    )


def item_joined(
    task: Task,
    rt: shell.Runtime,
    known: Any,
    wire: Any,
    child_id: str,
    owner: str,
    attempt: int,
    started: float,
) -> None:
    """The join of an item of a mapped sub-workflow step (workers/subrun.py): record the item's
    outcome from its child run, then, in a lane (``max_parallel``), go on with the lane's next
    item, as the item task would have. Flows nothing on: the collector reads the items."""
    spec = compiler.read_spec(wire)
    hdr = compiler.read_header(core.merge(known)[core.HEADER])
    run_id, epoch = hdr["run"], int(hdr["epoch"])
    try:
        subrun.joined(task, rt, known, wire, child_id, owner, attempt, started)
    except Ignore:
        head = rt.state.head(run_id)
        if head is None or head[1] != str(epoch):
            raise
    except BaseException as exc:
        if not shell.unexpected(exc):
            raise
        shell.fail_step(task, rt, spec, hdr, {}, exc)
    lane_info = spec.get("lane")
    base = item_of(spec["id"])
    if not lane_info or base is None:
        return None
    lane, mwire, hdr_wire, upstream = lane_info
    mapped = compiler.read_spec(mwire)
    return _next_in_lane(task, rt, mapped, mwire, hdr_wire, run_id, epoch, base[1], lane, upstream)


def _item_spec(spec: Mapping[str, Any], index: int) -> dict[str, Any]:
    out = {k: v for k, v in spec.items() if k not in ("map", "keep", "settle", "when")}
    out["id"] = item_id(spec["id"], index)
    out["drop"] = 1
    return out


def _one_item(
    task: Task,
    rt: shell.Runtime,
    spec: dict[str, Any],
    hdr: dict[str, Any],
    index: int,
    upstream: Any,
    lane_info: list[Any] | None = None,
) -> None:
    run_id, epoch, sid = hdr["run"], int(hdr["epoch"]), spec["id"]
    text = rt.state.element(run_id, sid, index)
    if text is None:
        raise Ignore()
    if isinstance(upstream, dict):
        known: core.Outcomes = dict(upstream)
    else:  # too big to ride in each message: what the mapped step received, stored once
        known = rt.state.stashed_known(run_id, sid, epoch)
        if core.HEADER in known:
            hdr = {**compiler.read_header(known[core.HEADER]), **hdr, "epoch": hdr["epoch"]}
            hdr.setdefault("inputs", compiler.read_header(known[core.HEADER]).get("inputs", {}))
    scope = core.scope_for(hdr, known)
    scope[spec["map"][1]] = json.loads(text)
    scope["map"] = {"index": index}
    entry: core.Go | core.Skip = core.Go(scope)
    if per_item_when(spec):
        try:
            if not expressions.parse(spec["when"]).evaluate(scope):
                entry = core.Skip(f"when is false: {spec['when']}")
        except EvaluationError as exc:
            entry = core.Go(scope, f"when: {exc}")
    ispec = _item_spec(spec, index)
    if lane_info is not None and subrun.is_sub_step(spec):
        # A sub-workflow item parks on its child run; its join goes on with the lane.
        ispec["lane"] = lane_info
    shell.execute(task, rt, ispec, hdr, known, entry, shell._who(task))


def item_compensation_scope(
    rt: shell.Runtime, run_id: str, iid: str, name: str, scope: dict[str, Any]
) -> None:
    """An item's compensation reads its own output as ``steps.<step>.output``, its element under
    the step's ``as`` name and ``map.index``."""
    base = item_of(iid)
    if base is None:
        return
    sid, index = base
    rec = rt.state.step(run_id, iid, "status", "output_json")
    text = rt.state.element(run_id, sid, index)
    scope["steps"] = {**scope["steps"], sid: {"status": rec.status, "output": rec.output}}
    scope[name] = json.loads(text) if text else None
    scope["map"] = {"index": index}


# -- the collector -------------------------------------------------------------------------------


def collect(task: Task, rt: shell.Runtime, wire: Any, hdr_wire: Any) -> Any:
    """The chord body: end the mapped step from its items; the canvas goes on from here (and
    the mapped step that ends the canvas settles the run)."""
    spec = compiler.read_spec(wire)
    hdr = compiler.read_header(hdr_wire)
    try:
        known = collect_now(task, rt, spec, hdr)
    except Ignore:
        if spec.get("settle"):
            shell.safe_settle(task, rt, hdr)
        raise
    except BaseException as exc:
        if not shell.unexpected(exc):
            raise
        known = shell.fail_step(task, rt, spec, hdr, {}, exc)
    if spec.get("settle"):
        shell.safe_settle(task, rt, hdr)
    return known


def collect_now(
    task: Task, rt: shell.Runtime, spec: dict[str, Any], hdr: dict[str, Any], *, wait: bool = False
) -> core.Outcomes:
    run_id, epoch, sid = hdr["run"], int(hdr["epoch"]), spec["id"]
    head = rt.state.head(run_id)
    if head is None or head[1] != str(epoch):
        raise Ignore()
    status, _, halt = head
    rec = rt.state.step(
        run_id, sid, "status", "owner", "items", "attempts", "attempt_started_at", "output_json"
    )
    known = rt.state.stashed_known(run_id, sid, epoch) or {core.HEADER: compiler.wire_header(hdr)}
    if rec.status != StepStatus.RUNNING:
        redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
        if redelivered and rec.status in (
            StepStatus.COMPLETED,
            StepStatus.FAILED,
            StepStatus.CANCELLED,
        ):
            # This collector ended the step and died before the canvas went on: it goes on now.
            return core.flow_on(
                known,
                spec,
                rec.status,
                core.kept_output(spec, rec.status, rec.output_json or "null"),
                always=True,
            )
        raise Ignore()
    n = rec.items
    statuses, outputs, errors = rt.state.item_fields(run_id, sid, n, ["status", "output", "error"])
    while True:
        running = [i for i, st in enumerate(statuses) if st == StepStatus.RUNNING]
        if not any(rt.state.lease_holder(run_id, item_id(sid, i)) for i in running):
            break
        if not wait:
            raise task.retry(countdown=WAIT, max_retries=None)
        time.sleep(WAIT)
        statuses, outputs, errors = rt.state.item_fields(
            run_id, sid, n, ["status", "output", "error"]
        )
    critical = spec.get("critical", True)
    failed = [i for i, st in enumerate(statuses) if st == StepStatus.FAILED]
    settled = (StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED)
    not_done = [i for i, st in enumerate(statuses) if st not in settled]
    args = (task, rt, spec, hdr, known)
    if failed and critical:
        first = failed[0]
        rt.state.close_items(
            run_id,
            [item_id(sid, i) for i in not_done],
            reason=f"item {item_id(sid, first)} failed: fail fast",
        )
        error = f"item {item_id(sid, first)} failed: {errors[first]}"
        return _end(
            *args,
            StepStatus.FAILED,
            "null",
            error,
            rec.owner or "",
            rec.attempt_started_at,
            rec.attempts,
        )
    if not_done:
        if status in ("PAUSING", "PAUSED") and not halt:
            # Paused: the step waits PENDING with its items; the resume expands it again and
            # runs the items not done.
            rt.state.set_step(
                run_id,
                sid,
                StepStatus.PENDING,
                "step_paused",
                expect=StepStatus.RUNNING,
                data={"done": n - len(not_done), "total": n},
            )
            return core.flow_on(known, spec, StepStatus.PENDING)
        reason = "its run was cancelled" if status == "CANCELLING" else "its run failed"
        rt.state.close_items(run_id, [item_id(sid, i) for i in not_done], reason=reason, lost=True)
        return _end(
            *args, StepStatus.CANCELLED, "null", reason, rec.owner or "", rec.attempt_started_at
        )
    output = (
        "["
        + ",".join(
            (outputs[i] or "null") if st == StepStatus.COMPLETED else "null"
            for i, st in enumerate(statuses)
        )
        + "]"
    )
    return _end(
        *args,
        StepStatus.COMPLETED,
        output,
        "",
        rec.owner or "",
        rec.attempt_started_at,
        rec.attempts,
    )


def on_item_hard_timeout(rt: shell.Runtime, args: Any, limit: float) -> None:
    """In the worker's main process, after Celery killed an item's pool process at its hard time
    limit: the item fails (as a step would), and what is left of the run is sent again (the
    chord of this dispatch will not complete: a part of it failed under Celery)."""
    try:
        wire, hdr_wire, index, *_ = args
        spec = compiler.read_spec(wire)
        hdr = compiler.read_header(hdr_wire)
        run_id, epoch = hdr["run"], int(hdr["epoch"])
        iid = item_id(spec["id"], int(index))
    except (TypeError, ValueError, KeyError, IndexError):
        return
    if int(index) < 0:
        return  # a lane killed before it claimed an item
    shell.fail_at_hard_limit(rt, run_id, iid, epoch, _item_spec(spec, int(index)), limit, "item")


def next_compensation(task: Task, rt: shell.Runtime, spec: Mapping[str, Any], hdr: Any) -> None:
    """After an item's compensation, the link of its run replaces itself with the next item's
    (the rest of the compensation chain follows the last); nothing when it was the last."""
    name, k, n = spec["seq"]
    if k + 1 >= n:
        return
    run_id = hdr["run"]
    nxt = rt.state.sequence_item(run_id, name, k + 1)
    if nxt is None:
        return
    info = task.request.delivery_info or {}
    opts: dict[str, Any] = {}
    if info.get("routing_key"):
        opts["queue"] = info["routing_key"]
    priority = _run_priority(rt, run_id)
    if priority != "normal":
        opts["priority"] = (AMQP_PRIORITIES if rt.settings.broker_is_amqp else PRIORITIES)[priority]
    hard, soft = task.request.timelimit or (None, None)
    if soft:
        opts["soft_time_limit"] = soft
    if hard:
        opts["time_limit"] = hard
    sig = compiler.compensation_signature(
        {"ok": True}, {**spec, "id": nxt, "seq": [name, k + 1, n]}, hdr, opts, app=task.app
    )
    with _results_unwatched(task.app):
        task.replace(sig)
