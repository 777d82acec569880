"""``canvasflow notify``: webhook endpoints (add, list, remove, test), the delivery log, the
dead letters and their replay. The store side is orchestrator/audit/notifications.py, the
sending orchestrator/engine/notify.py. main.py registers the group (and, with it, the recorder
hook that queues notifications, so every ``canvasflow recorder`` sends them)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from orchestrator.audit import cli as audit_cli
from orchestrator.audit.cli import CliConsole
from orchestrator.audit.notifications import (
    DELIVERY_STATUSES,
    EVENTS,
    FORMATS,
    EndpointError,
    Notifications,
)
from orchestrator.audit.recorder import HOOK_FACTORIES

console = CliConsole()
err = CliConsole(stderr=True)
deps: dict[str, Callable[..., Any]] = {}


def register(group: click.Group, helpers: dict[str, Callable[..., Any]]) -> None:
    """Add ``notify`` to ``group`` and the notification hook to every recorder ``serve`` starts;
    ``helpers``: main.py's (actor, ...), as recover.py received them."""
    from orchestrator.engine.notify import recorder_hook

    deps.update(helpers)
    if recorder_hook not in HOOK_FACTORIES:
        HOOK_FACTORIES.append(recorder_hook)
    group.add_command(notify)


def _actor() -> str:
    return deps["actor"]() if "actor" in deps else "cli"


def _notes(database_url: str | None) -> Notifications:
    return Notifications(audit_cli._store(database_url))


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@click.group("notify")
def notify() -> None:
    """Outgoing webhook notifications of run events (fleet settings, never in definitions)."""


@notify.command("add")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice(EVENTS),
    help="An event to send (repeat); default: failed, compensation_failed, sla_breached.",
)
@click.option("--workflow", "workflows", multiple=True, help="Only runs of this workflow (repeat).")
@click.option("--tag", "tags", multiple=True, help="Only runs with this tag (repeat: any of them).")
@click.option("--format", "fmt", default="json", show_default=True, type=click.Choice(FORMATS))
@click.option("--secret", default=None, help="The signing secret (default: one is generated).")
@click.option("--description", default=None)
@audit_cli.db_option
@audit_cli._errors
def add(
    url: str,
    events: tuple[str, ...],
    workflows: tuple[str, ...],
    tags: tuple[str, ...],
    fmt: str,
    secret: str | None,
    description: str | None,
    database_url: str | None,
) -> None:
    """Add an endpoint; its signing secret is printed once, now."""
    try:
        ep = _notes(database_url).add_endpoint(
            url,
            actor=_actor(),
            events=list(events) or None,
            workflows=list(workflows),
            tags=list(tags),
            format=fmt,
            secret=secret,
            description=description,
        )
    except EndpointError as exc:
        for problem in exc.problems:
            err.print(f"error: {problem}", style="red", markup=False, highlight=False)
        sys.exit(2)
    console.print(f"added endpoint {ep.id}: {ep.url}", highlight=False, markup=False)
    console.print(f"events: {', '.join(ep.events)}", highlight=False, markup=False)
    console.print(
        f"secret: {ep.secret}\n(shown once: receivers verify X-Canvasflow-Signature with it; "
        "docs/operations.md 'Verifying a notification')",
        highlight=False,
        markup=False,
    )


@notify.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@audit_cli.db_option
@audit_cli._errors
def list_cmd(as_json: bool, database_url: str | None) -> None:
    """List the endpoints (without their secrets)."""
    eps = _notes(database_url).endpoints()
    if as_json:
        _print_json([e.as_dict() for e in eps])
        return
    if not eps:
        console.print("no notification endpoints (canvasflow notify add URL)")
        return
    table = Table("id", "url", "events", "workflows", "tags", "format", "created")
    for e in eps:
        table.add_row(
            e.id if e.enabled else f"{e.id} (disabled)",
            e.url,
            ", ".join(e.events),
            ", ".join(e.workflows) or "all",
            ", ".join(e.tags) or "any",
            e.format,
            _when(e.created_at),
        )
    console.print(table)


@notify.command("remove")
@click.argument("endpoint_id")
@audit_cli.db_option
@audit_cli._errors
def remove(endpoint_id: str, database_url: str | None) -> None:
    """Remove an endpoint with its delivery log."""
    _notes(database_url).remove_endpoint(endpoint_id, actor=_actor())
    console.print(f"removed endpoint {endpoint_id}", highlight=False, markup=False)


@notify.command("disable")
@click.argument("endpoint_id")
@audit_cli.db_option
@audit_cli._errors
def disable(endpoint_id: str, database_url: str | None) -> None:
    """Pause an endpoint: nothing is sent to it until it is enabled again."""
    _notes(database_url).set_enabled(endpoint_id, False, actor=_actor())
    console.print(f"disabled endpoint {endpoint_id}", highlight=False, markup=False)


@notify.command("enable")
@click.argument("endpoint_id")
@audit_cli.db_option
@audit_cli._errors
def enable(endpoint_id: str, database_url: str | None) -> None:
    """Resume a disabled endpoint (events that happened meanwhile are not sent)."""
    _notes(database_url).set_enabled(endpoint_id, True, actor=_actor())
    console.print(f"enabled endpoint {endpoint_id}", highlight=False, markup=False)


@notify.command("test")
@click.argument("endpoint_id")
@audit_cli.db_option
@audit_cli._errors
def test_cmd(endpoint_id: str, database_url: str | None) -> None:
    """POST a signed test event to an endpoint now and say what it answered."""
    from orchestrator.engine.notify import send_test

    settings = audit_cli._settings(database_url)
    ep = _notes(database_url).endpoint(endpoint_id)
    code, error, seconds = send_test(ep, settings)
    if error is None:
        console.print(f"{ep.url}: HTTP {code} in {seconds:.2f}s", highlight=False, markup=False)
        return
    err.print(f"{ep.url}: {error} ({seconds:.2f}s)", style="red", highlight=False, markup=False)
    sys.exit(1)


def _deliveries_table(rows: list[dict[str, Any]], notes: Notifications, attempts: bool) -> None:
    table = Table("delivery", "endpoint", "run", "event", "status", "attempts", "last", "updated")
    for d in rows:
        last = d["last_error"] or (str(d["last_status_code"]) if d["last_status_code"] else "-")
        table.add_row(
            d["id"],
            d["endpoint"],
            d["run"],
            d["event"],
            d["status"],
            f"{d['attempts']}/{d['attempt_limit']}",
            last[:80],
            _when(d["updated_at"]),
        )
    console.print(table)
    if attempts:
        for d in rows:
            for a in notes.attempts(d["id"]):
                console.print(
                    f"{d['id']} #{a['attempt']} {_when(a['at'])} "
                    f"{a['status_code'] or '-'} {a['duration']:.2f}s {a['error'] or 'ok'}",
                    highlight=False,
                    markup=False,
                )


@notify.command("deliveries")
@click.argument("endpoint_id", required=False)
@click.option("--status", type=click.Choice(DELIVERY_STATUSES), default=None)
@click.option("--run", "run_id", default=None, help="Only deliveries about this run.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--attempts", is_flag=True, help="Show every attempt (status, duration, error).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (attempts included).")
@audit_cli.db_option
@audit_cli._errors
def deliveries(
    endpoint_id: str | None,
    status: str | None,
    run_id: str | None,
    limit: int,
    attempts: bool,
    as_json: bool,
    database_url: str | None,
) -> None:
    """The delivery log, newest first (of one endpoint, or of all)."""
    notes = _notes(database_url)
    if endpoint_id:
        notes.endpoint(endpoint_id)
    rows = notes.deliveries(endpoint_id=endpoint_id, status=status, run_id=run_id, limit=limit)
    if as_json:
        _print_json([{**d, "attempt_log": notes.attempts(d["id"])} for d in rows])
        return
    if not rows:
        console.print("no deliveries")
        return
    _deliveries_table(rows, notes, attempts)


@notify.command("dead")
@click.argument("endpoint_id", required=False)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@audit_cli.db_option
@audit_cli._errors
def dead(endpoint_id: str | None, limit: int, as_json: bool, database_url: str | None) -> None:
    """The dead letters: deliveries whose every attempt failed (replay them with replay)."""
    notes = _notes(database_url)
    rows = notes.deliveries(endpoint_id=endpoint_id, status="dead", limit=limit)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        console.print("no dead letters")
        return
    _deliveries_table(rows, notes, attempts=False)


@notify.command("replay")
@click.argument("delivery_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter (of --endpoint).")
@click.option("--endpoint", "endpoint_id", default=None)
@audit_cli.db_option
@audit_cli._errors
def replay(
    delivery_ids: tuple[str, ...], all_: bool, endpoint_id: str | None, database_url: str | None
) -> None:
    """Send dead letters again (a full round of attempts each), on the notify queue."""
    from orchestrator.engine.celery_app import create_celery
    from orchestrator.engine.notify import enqueue

    if not delivery_ids and not all_:
        raise click.UsageError("name the deliveries to replay, or --all")
    settings = audit_cli._settings(database_url)
    notes = _notes(database_url)
    ids = list(delivery_ids)
    if all_:
        ids += [
            d["id"] for d in notes.deliveries(endpoint_id=endpoint_id, status="dead", limit=1000)
        ]
    app = create_celery(settings, sender=True)
    for did in ids:
        notes.replay(did, attempt_limit=settings.notify_max_attempts, actor=_actor())
        enqueue(app, did)
        console.print(f"replaying {did}", highlight=False, markup=False)
    if not ids:
        console.print("no dead letters to replay")
