"""The HTML pages: server-rendered shells that the bundled JavaScript (static/dist) fills from
the REST API and keeps live over Socket.IO."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, url_for

from orchestrator.engine.control import ALLOWED
from orchestrator.fleet import events as fleet_events
from orchestrator.records import TRIGGER_TYPES
from web import auth
from web import inspect as fleet_api

bp = Blueprint("pages", __name__)


def _page(template: str, page: str, **boot: Any) -> Any:
    user = auth.current_user()
    if user is None:
        return redirect(url_for("login.login", next=request.full_path.rstrip("?")))
    if not user.can("viewer"):  # a publisher publishes events and sees nothing
        abort(403, description=auth.PUBLISHER_ONLY.format(name=user.name))
    ext = current_app.extensions["canvasflow"]
    data = {
        "page": page,
        "user": user.as_dict(),
        "csrf": auth.csrf_token() if g.auth_via == "session" else "",
        "readOnly": ext.web.read_only,
        "stepsPage": ext.web.steps_page,
        "allowed": {k: [str(x) for x in v] for k, v in ALLOWED.items()},
        **boot,
    }
    return render_template(template, page=page, user=user, boot=json.dumps(data), **boot)


def _sees() -> bool:
    """A user who may look at runs and the fleet (not anonymous, not a publisher)."""
    user = auth.current_user()
    return user is not None and user.can("viewer")


@bp.route("/")
def index() -> Any:
    return redirect(url_for("pages.runs"))


@bp.route("/runs")
def runs() -> Any:
    # No view asked for: the page lands on Active, or on All when nothing is active (runs.js).
    return _page("runs.html", "runs", view=request.args.get("view"), trigger_types=TRIGGER_TYPES)


@bp.route("/runs/<run_id>")
@bp.route("/runs/<run_id>/<any(gantt, dag):view>")
def run(run_id: str, view: str = "timeline") -> Any:
    if _sees() and not current_app.extensions["canvasflow"].details.exists(run_id):
        abort(
            404,
            description=f"There is no run '{run_id}' (it may have been pruned from the history).",
        )
    return _page("run.html", "run", runId=run_id, view=view)


@bp.route("/analytics")
def analytics() -> Any:
    return _page("analytics.html", "analytics", period=request.args.get("period", "24h"))


@bp.route("/workflows")
@bp.route("/workflows/<workflow_id>")
def workflows(workflow_id: str | None = None) -> Any:
    return _page("workflows.html", "workflows", workflowId=workflow_id)


@bp.route("/schedules")
def schedules() -> Any:
    return _page("schedules.html", "schedules")


@bp.route("/admin/users")
def users() -> Any:
    """User and API token management (admins). Others get a 403 page that says what to do."""
    user = auth.current_user()
    if user is not None and not user.can("admin"):
        abort(
            403,
            description=f"User management needs the admin role, and you are logged in as "
            f"'{user.name}' ({user.role}). Ask an admin to change your role, or log in "
            "as an admin.",
        )
    return _page("users.html", "users")


@bp.route("/admin/notifications")
def notifications() -> Any:
    """Webhook endpoints, the delivery log and the dead letters (admins)."""
    user = auth.current_user()
    if user is not None and not user.can("admin"):
        abort(
            403,
            description=f"Notification settings need the admin role, and you are logged in as "
            f"'{user.name}' ({user.role}). Ask an admin, or log in as an admin.",
        )
    return _page("notifications.html", "notifications")


# Fleet inspection (Flower's pages), drawn from /api/v1/inspect.


@bp.route("/workers")
def workers() -> Any:
    return _page("workers.html", "workers")


@bp.route("/workers/<name>")
def worker(name: str) -> Any:
    if _sees() and name not in {w["name"] for w in fleet_api.fleet().workers(live=False)}:
        abort(
            404,
            description=f"There is no worker '{name}': it never sent a heartbeat to this fleet, or it "
            "was forgotten (offline workers are purged after a while). The Workers page "
            "lists the fleet.",
        )
    return _page("worker.html", "worker", workerName=name)


@bp.route("/tasks")
def tasks() -> Any:
    return _page("tasks.html", "tasks")


@bp.route("/tasks/<task_id>")
def task(task_id: str) -> Any:
    engine = fleet_api.fleet().engine
    if _sees() and engine is not None and fleet_events.get_task(engine, task_id) is None:
        abort(
            404,
            description=f"There is no task '{task_id}' in the history: it may be older than the "
            "retention (CANVASFLOW_WEB_TASK_RETENTION), or it was sent while no web process "
            "was capturing events. Search the Tasks page for it.",
        )
    return _page("task.html", "task", taskId=task_id)
