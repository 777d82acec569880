"""Fleet inspection under /api/v1/inspect — Flower's workers, tasks and queues, workflow-aware and
persistent. The dashboard's Workers and Tasks pages (web/pages.py) are drawn from it.

The task history is the ``cf_celery_tasks`` table that :class:`orchestrator.fleet.events.FleetMonitor`
fills from Celery events in this process; worker details come from ``inspect`` with a short
timeout. Control actions need the operator role and are written to the audit log.

Settings (``WebSettings``): ``fleet_events`` (``CANVASFLOW_WEB_FLEET_EVENTS``, default true: run
the event monitor in this process), ``worker_purge_after`` (``CANVASFLOW_WEB_WORKER_PURGE_AFTER``,
seconds an offline worker stays listed, default 86400), ``task_retention``
(``CANVASFLOW_WEB_TASK_RETENTION``, seconds of task history, default 7 days).
"""

from __future__ import annotations

import ast
import json
import time
import uuid
from typing import Any

from flask import Flask, current_app, request
from flask_smorest import abort
from marshmallow import Schema, fields, validate
from werkzeug.routing import BaseConverter

from orchestrator.connect import state_redis
from orchestrator.fleet import events as fleet_events
from orchestrator.fleet.events import FleetMonitor, TaskQuery
from orchestrator.fleet.inspect import (
    FleetError,
    Inspector,
    broker_queue_lengths,
    fleet_workers,
    known_queues,
)
from web import audit as web_audit
from web import auth
from web.rest import Blueprint
from web.schemas import StrictBoolean, StrictFloat, StrictInteger
from web.serving import cooperate
from web.settings import NEVER_SENT, TASK_ALLOW_SETTING, task_allowed

blp = Blueprint(
    "inspect",
    __name__,
    url_prefix="/api/v1/inspect",
    description="Fleet inspection: workers, tasks, queues (Flower parity)",
)

MAX_COUNTDOWN = 365 * 86400  # Celery turns a countdown into a datetime: a huge one overflows
WORKER_ACTIONS = (
    "pool_grow",
    "pool_shrink",
    "pool_restart",
    "autoscale",
    "add_consumer",
    "cancel_consumer",
    "rate_limit",
    "time_limit",
    "shutdown",
)


class Fleet:
    """What this module keeps per app: ``app.extensions['canvasflow_fleet']``."""

    def __init__(self, services: Any) -> None:
        web = services.web
        self.services = services
        self.workers_key = services.client.keys.inspect_workers
        self.purge_after = web.worker_purge_after
        self.inspector = Inspector(services.client.celery)
        store = services.store
        self.engine = store.engine if store is not None else None
        self._totals: tuple[float, dict[str, dict[str, int]]] = (-1e9, {})
        self.monitor: FleetMonitor | None = None
        if web.fleet_events:
            r = state_redis(services.settings, health_check_interval=30)
            # the table comes with the audit store's migrations (create_app runs them)
            self.monitor = FleetMonitor(
                services.client.celery,
                store.writer if store is not None else None,
                r,
                self.workers_key,
                retention=web.task_retention,
                prepare=store.upgrade if store is not None else None,
                pause=cooperate,
            )
            self.monitor.stop_event = services.stop_event

    def totals(self) -> dict[str, dict[str, int]]:
        """Per-worker task totals, cached for 2 s (a GROUP BY over the whole history)."""
        if self.engine is None:
            return {}
        at, value = self._totals
        if time.monotonic() - at < 2.0:
            return value
        try:
            value = fleet_events.counts(self.engine)
        except Exception:  # noqa: BLE001 - totals are optional
            return {}
        self._totals = (time.monotonic(), value)
        return value

    def workers(self, live: bool = True) -> list[dict[str, Any]]:
        return fleet_workers(
            self.services.client,
            self.inspector,
            self.workers_key,
            self.totals(),
            purge_after=self.purge_after,
            live=live,
        )


class TaskId(BaseConverter):
    """A task id in a path: anything but ``send`` and ``apply``, so that /tasks/send is only the
    POST it is (and its 405 says ``Allow: POST``, not a GET of a task named "send")."""

    regex = r"(?!(?:send|apply)(?:/|$))[^/]+"


def _task_id_schema(_: Any) -> dict[str, Any]:
    return {"type": "string", "pattern": r"^(?!(send|apply)$)[^/]+$"}


def register(app: Flask, api: Any) -> None:
    """Add the inspect API, /metrics, /healthz and /readyz to ``app``."""
    from web import metrics

    app.url_map.converters["task_id"] = TaskId
    api.register_converter(TaskId, _task_id_schema)
    services = app.extensions["canvasflow"]
    fleet = Fleet(services)
    app.extensions["canvasflow_fleet"] = fleet
    api.register_blueprint(blp)
    metrics.register(app)
    start, stop = services.start, services.stop

    def start_all() -> None:
        already = services.started
        start()
        if not already and fleet.monitor is not None:
            fleet.monitor.start()

    def stop_all() -> None:
        stop()
        if fleet.monitor is not None:
            fleet.monitor.stop()

    services.start, services.stop = start_all, stop_all


def fleet() -> Fleet:
    return current_app.extensions["canvasflow_fleet"]


def _need_store() -> Any:
    if fleet().engine is None:
        abort(503, message="the task history needs the audit store (CANVASFLOW_DATABASE_URL)")
    return fleet().engine


def _audit(
    action: str, target_type: str, target: str, detail: dict[str, Any], outcome: str = "ok"
) -> None:
    """Record a control action whose outcome is known only once it is taken: when the log cannot
    take it the request fails with 503 saying so (never a silently missing record)."""
    web_audit.record_after(
        action,
        target_type,
        target,
        detail,
        outcome=outcome,
        what=f"{action} on {target_type} {target!r} was done ({outcome})",
    )


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


@blp.route("/workers")
@auth.require("viewer")
def list_workers() -> dict[str, Any]:
    """Every worker: online/offline, active, processed, succeeded/failed, load, pool, prefetch,
    queues and plugins. ``?refresh=0`` skips the ``inspect`` round trip (events and catalog only);
    ``?detail=1`` adds to each online worker what ``/workers/<name>`` gives (pool, broker, queues,
    tasks, registered, conf, rusage) in one call, like Flower's ``/api/workers``."""
    a = request.args
    live = a.get("refresh", "1") not in ("0", "false")
    rows = fleet().workers(live=live)
    if a.get("detail", "0") not in ("0", "false", ""):
        details = fleet().inspector.details([w["name"] for w in rows if w["online"]])
        rows = [_with_detail(w, details.get(w["name"])) for w in rows]
    return {"workers": rows}


def _with_detail(row: dict[str, Any], detail: dict[str, Any] | None) -> dict[str, Any]:
    """A worker's list row plus its ``inspect`` details (null fields when it did not answer)."""
    d = detail or {}
    stats = d.get("stats") or {}
    return {
        **row,
        "answered_inspect": detail is not None,
        "stats": stats,
        "broker": stats.get("broker"),
        "rusage": stats.get("rusage"),
        "pool_detail": stats.get("pool"),
        "total": stats.get("total"),
        "active_queues": d.get("active_queues"),
        "tasks": {k: d.get(k) for k in ("active", "reserved", "scheduled", "revoked")},
        "registered": d.get("registered"),
        "conf": d.get("conf"),
    }


@blp.route("/workers/<name>")
@auth.require("viewer")
def worker_detail(name: str) -> dict[str, Any]:
    """One worker: its list row plus pool, broker, queues, active/scheduled/reserved/revoked tasks,
    registered tasks, configuration and rusage, from ``inspect`` (null when it does not answer)."""
    rows = {w["name"]: w for w in fleet().workers(live=False)}
    if name not in rows:
        abort(404, message=f"no worker {name!r}")
    row = rows[name]
    return _with_detail(row, fleet().inspector.detail(name) if row["online"] else None)


class WorkerAction(Schema):
    n = StrictInteger(load_default=1, validate=validate.Range(min=1, max=1000))
    min = StrictInteger(validate=validate.Range(min=0))
    max = StrictInteger(validate=validate.Range(min=1))
    queue = fields.String()
    task = fields.String()
    rate = fields.String(metadata={"description": "e.g. 10/m; '0' removes the limit"})
    soft = StrictFloat(allow_none=True)
    hard = StrictFloat(allow_none=True)
    reload = StrictBoolean(load_default=False)
    reason = fields.String(load_default=None, allow_none=True)


@blp.route("/workers/<name>/<action>", methods=["POST"])
@blp.arguments(WorkerAction)
@auth.require(
    "operator", mutating=True, errors=(409, 504), audit="worker_action", target_type="worker"
)
def worker_action(body: dict[str, Any], name: str, action: str) -> dict[str, Any]:
    """Remote control (operator): pool_grow, pool_shrink, pool_restart, autoscale (min, max),
    add_consumer / cancel_consumer (queue), rate_limit (task, rate), time_limit (task, soft, hard),
    shutdown. Audited. 504 when the worker does not answer."""
    if action not in WORKER_ACTIONS:
        abort(404, message=f"unknown worker action {action!r}; one of {', '.join(WORKER_ACTIONS)}")
    params = {k: v for k, v in body.items() if k != "reason"}
    if action == "autoscale" and ("min" not in params or "max" not in params):
        abort(
            400,
            message="autoscale needs min and max",
            errors={"json": {"min": ["required"], "max": ["required"]}},
        )
    try:
        reply = fleet().inspector.control(name, action, **params)
    except FleetError as exc:
        _audit(f"worker_{action}", "worker", name, params, outcome="refused")
        abort(400, message=str(exc))
        raise
    if reply is None:
        _audit(f"worker_{action}", "worker", name, params, outcome="no reply")
        abort(504, message=f"worker {name!r} did not answer within {fleet().inspector.timeout}s")
    ok = not (isinstance(reply, dict) and "error" in reply)
    _audit(
        f"worker_{action}",
        "worker",
        name,
        {**params, "reply": reply},
        outcome="ok" if ok else "error",
    )
    if not ok:
        abort(409, message=str(reply["error"]), extra={"reply": reply})
    return {"worker": name, "action": action, "reply": reply}


@blp.route("/workers/<name>", methods=["DELETE"])
@auth.require("operator", mutating=True, errors=(409,))
def forget_worker(name: str) -> dict[str, Any]:
    """Forget an offline worker (purge it from the list); an online one is refused (409)."""
    rows = {w["name"]: w for w in fleet().workers(live=False)}
    if name in rows and rows[name]["online"]:
        abort(409, message=f"worker {name!r} is online")
    client = current_app.extensions["canvasflow"].client
    n = fleet_events.forget_workers(client.redis, fleet().workers_key, [name])
    n += int(client.redis.hdel(client.keys.catalog, name))
    _audit("worker_forget", "worker", name, {})
    return {"worker": name, "forgotten": bool(n)}


# ---------------------------------------------------------------------------------------------
# Queues
# ---------------------------------------------------------------------------------------------


@blp.route("/queues")
@auth.require("viewer")
def queues() -> dict[str, Any]:
    """Length of every queue the fleet consumes (plus the default), priority sub-queues counted."""
    e = current_app.extensions["canvasflow"]
    names = known_queues(e.client.fleet(), e.settings.default_queue)
    names.update(q for q in request.args.getlist("queue") if q)
    return {"queues": broker_queue_lengths(e.settings, e.client.redis, e.client.celery, names)}


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


def _num(name: str) -> float | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        abort(
            400,
            message=f"{name}: a unix time in seconds",
            errors={"query": {name: ["not a number"]}},
        )
        raise


@blp.route("/tasks")
@auth.require("viewer", errors=(400,))
def list_tasks() -> dict[str, Any]:
    """Task history, newest first. Filters: state (repeatable or comma-separated), worker, name,
    run, received_after / received_before (unix seconds); q: ``field:value`` terms (name, state,
    worker, uuid, run, step, queue, args, kwargs, result, exception, root, parent; ``*`` wildcard)
    and bare words; sort: ts|received|started|runtime|name|state|worker, ``-`` for descending;
    limit (<= 1000) and cursor (from ``next_cursor``)."""
    engine = _need_store()
    a = request.args
    states = [s for v in a.getlist("state") for s in v.split(",") if s]
    try:
        limit = int(a.get("limit", "50"))
    except ValueError:
        abort(400, message="limit: an integer", errors={"query": {"limit": ["not an integer"]}})
        raise
    q = TaskQuery(
        state=states,
        worker=a.get("worker"),
        name=a.get("name"),
        run=a.get("run"),
        since=_num("received_after"),
        until=_num("received_before"),
        search=a.get("q", ""),
        sort=a.get("sort", "-ts"),
        limit=limit,
        cursor=a.get("cursor"),
    )
    try:
        rows, cursor = fleet_events.list_tasks(engine, q)
    except fleet_events.BadQuery as exc:
        abort(400, message=str(exc))
        raise
    mon = fleet().monitor
    return {
        "tasks": rows,
        "next_cursor": cursor,
        "count": len(rows),
        "monitor": None if mon is None else {"connected": mon.connected, "dropped": mon.dropped},
    }


@blp.route("/tasks/<task_id:task_id>")
@auth.require("viewer")
def task_detail(task_id: str) -> dict[str, Any]:
    """One task: args, kwargs, result, every event time, runtime, worker, retries, traceback,
    parent/root/children, and the canvasflow run and step it belongs to."""
    task = fleet_events.get_task(_need_store(), task_id)
    if task is None:
        abort(404, message=f"no task {task_id!r} in the history")
    assert task is not None
    if task.get("run_id"):
        task["links"] = {"run": f"/api/v1/runs/{task['run_id']}", "page": f"/runs/{task['run_id']}"}
    task["resend"] = resend_arguments(task.get("args"), task.get("kwargs"))
    return task


def resend_arguments(args: str | None, kwargs: str | None) -> dict[str, Any] | None:
    """The task's args and kwargs as JSON for ``/tasks/send``, read back from the reprs its
    events carried; None when they cannot be (cut short by Celery, or not plain literals)."""
    try:
        a = ast.literal_eval(args) if args else ()
        kw = ast.literal_eval(kwargs) if kwargs else {}
        if not isinstance(a, (list, tuple)) or not isinstance(kw, dict):
            return None
        out = {"args": list(a), "kwargs": kw}
        json.dumps(out)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return out


class RevokeBody(Schema):
    terminate = StrictBoolean(load_default=False)
    signal = fields.String(
        load_default="SIGTERM",
        validate=validate.OneOf(["SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGUSR1"]),
    )
    reason = fields.String(load_default=None, allow_none=True)


@blp.route("/tasks/<task_id:task_id>/revoke", methods=["POST"])
@blp.arguments(RevokeBody)
@auth.require("operator", mutating=True)
def revoke(body: dict[str, Any], task_id: str) -> dict[str, Any]:
    """Revoke a task (a worker that receives it discards it); ``terminate`` also kills it if it
    is running. Audited. For a canvasflow step prefer cancelling its run."""
    web_audit.record(
        "task_terminate" if body["terminate"] else "task_revoke",
        "task",
        task_id,
        {"signal": body["signal"], "reason": body["reason"]},
        what=f"task {task_id!r} was not revoked",
    )
    fleet().inspector.revoke(task_id, terminate=body["terminate"], signal=body["signal"])
    return {"task": task_id, "revoked": True, "terminate": body["terminate"], "at": time.time()}


@blp.route("/tasks/<task_id:task_id>/terminate", methods=["POST"])
@blp.arguments(RevokeBody)
@auth.require("operator", mutating=True)
def terminate(body: dict[str, Any], task_id: str) -> dict[str, Any]:
    """Revoke and terminate (Flower's /api/task/revoke?terminate=true and abort)."""
    web_audit.record(
        "task_terminate",
        "task",
        task_id,
        {"signal": body["signal"], "reason": body["reason"]},
        what=f"task {task_id!r} was not terminated",
    )
    fleet().inspector.revoke(task_id, terminate=True, signal=body["signal"])
    return {"task": task_id, "revoked": True, "terminate": True, "at": time.time()}


class SendBody(Schema):
    name = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata={"description": "a task name registered on the workers"},
    )
    args = fields.List(fields.Raw(allow_none=True), load_default=list)
    kwargs = fields.Dict(load_default=dict)
    queue = fields.String(load_default=None, allow_none=True)
    countdown = StrictFloat(
        load_default=None,
        allow_none=True,
        validate=validate.Range(0, MAX_COUNTDOWN),
        metadata={"description": "seconds before it may run (at most a year)"},
    )
    priority = StrictInteger(
        load_default=None, allow_none=True, validate=validate.Range(min=0, max=9)
    )
    reason = fields.String(load_default=None, allow_none=True)


@blp.route("/tasks/send", methods=["POST"])
@blp.arguments(SendBody)
@auth.require("operator", mutating=True)
def send_task(body: dict[str, Any]) -> dict[str, Any]:
    """Send a task by name (Flower's send-task and async-apply); returns its id at once. Audited.
    canvasflow steps are not meant to be sent by hand: submit or retry the run instead."""
    return {"task": _send(body, "task_send"), "name": body["name"], "state": "PENDING"}


def _send(body: dict[str, Any], action: str) -> str:
    """Send the task ``body`` names (SendBody), if the allow-list lets it, audited as ``action``
    before it is sent; returns its id."""
    name = body["name"]
    web = current_app.extensions["canvasflow"].web
    if not task_allowed(web.task_allow, name):
        web_audit.record(
            action,
            "task",
            name,
            {"name": name, "reason": body["reason"]},
            outcome="refused: not allowed",
            what="the refusal was not recorded",
        )
        abort(403, message=_send_refusal(name, web.task_allow))
    opts = {k: body[k] for k in ("queue", "countdown", "priority") if body.get(k) is not None}
    task_id = str(uuid.uuid4())
    web_audit.record(
        action,
        "task",
        task_id,
        {"name": name, **opts, "reason": body["reason"]},
        what=f"task {name!r} was not sent",
    )
    celery = current_app.extensions["canvasflow"].client.celery
    celery.send_task(name, args=body["args"], kwargs=body["kwargs"], task_id=task_id, **opts)
    return task_id


def _send_refusal(name: str, allow: tuple[str, ...]) -> str:
    if name.startswith(NEVER_SENT) or name in ("canvasflow", "celery"):
        return (
            f"task {name!r} is one of canvasflow's or Celery's own tasks, which are never sent by hand (a forged "
            "step or chord message could run anything a worker can); submit, retry or cancel the run instead"
        )
    listed = (
        f"{TASK_ALLOW_SETTING}={','.join(allow)}" if allow else f"{TASK_ALLOW_SETTING} is empty"
    )
    return (
        f"task {name!r} may not be sent from the dashboard: {listed}. Sending tasks by name runs them on the "
        f"workers with the arguments given, so a fleet lists the harmless ones in {TASK_ALLOW_SETTING} "
        "(exact names or 'prefix.*')"
    )


class ApplyBody(SendBody):
    timeout = StrictFloat(
        load_default=10.0,
        validate=validate.Range(min=0.1, max=60.0),
        metadata={"description": "seconds to wait for the result (at most 60)"},
    )


@blp.route("/tasks/apply", methods=["POST"])
@blp.arguments(ApplyBody)
@auth.require("operator", mutating=True)
@blp.doc(
    responses={
        200: {"description": "the task is done: its state and result"},
        202: {"description": "still running after `timeout` seconds: its id and state"},
    }
)
def apply_task(body: dict[str, Any]) -> Any:
    """Send a task by name and wait for its result (Flower's /api/task/apply). Audited. A task
    still unfinished after ``timeout`` seconds answers 202 with its id and state: it keeps
    running; ask ``/tasks/<id>/result`` later."""
    task_id = _send(body, "task_apply")
    celery = current_app.extensions["canvasflow"].client.celery
    deadline = time.monotonic() + body["timeout"]
    while True:
        out = _result(celery, task_id)
        if out["state"] in READY or time.monotonic() >= deadline:
            break
        time.sleep(0.05)  # cooperative under gevent (patched), a thread's nap under threads
    out["name"] = body["name"]
    return out if out["state"] in READY else (out, 202)


READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def _result(celery: Any, task_id: str) -> dict[str, Any]:
    res = celery.AsyncResult(task_id)
    state = res.state
    out: dict[str, Any] = {"task": task_id, "state": state}
    if state in ("SUCCESS", "FAILURE", "RETRY", "REVOKED"):
        value = res.result
        out["result"] = (
            value
            if isinstance(value, (dict, list, str, int, float, bool, type(None)))
            else repr(value)
        )
        if state == "FAILURE":
            out["traceback"] = res.traceback
    return out


@blp.route("/tasks/<task_id:task_id>/result")
@auth.require("viewer")
def task_result(task_id: str) -> dict[str, Any]:
    """The task's state and result from the Celery result backend (Flower's /api/task/result)."""
    return _result(current_app.extensions["canvasflow"].client.celery, task_id)


@blp.route("/task-types")
@auth.require("viewer")
def task_types() -> dict[str, Any]:
    """Task names registered on the online workers (Flower's /api/task/types)."""
    names: set[str] = set()
    for tasks in fleet().inspector.call("registered").values():
        names.update(t.split(" ")[0] for t in tasks or [])
    return {"task-types": sorted(names)}
