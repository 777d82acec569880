"""``canvasflow scheduler`` (the process that fires schedule triggers) and ``canvasflow
schedules list|pause|resume|run-now`` (operators). The work is orchestrator/engine/scheduler.py
and orchestrator/engine/schedules.py; recover.py's register() adds these commands with main.py's
helpers, so this module does not import main."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from orchestrator.audit.cli import CliConsole

console = CliConsole()
err = CliConsole(stderr=True)
deps: dict[str, Callable[..., Any]] = {}


def register(group: click.Group, **helpers: Callable[..., Any]) -> None:
    """Add the commands to ``group``; ``helpers``: handle_errors, make_client, actor and
    existing_store of main.py."""
    deps.update(helpers)
    group.add_command(scheduler)
    group.add_command(schedules)


def _store(client: Any, database_url: str | None) -> Any:
    """The audit store (paused flags, the audit log), or None: CANVASFLOW_DATABASE_URL=none, or
    a SQLite file that does not exist (pauses then live in Redis only)."""
    url = database_url or client.settings.database_url
    if not url or url.lower() == "none":
        return None
    return deps["existing_store"](url)


DATABASE_OPTION = click.option(
    "--database-url", default=None, help="The audit store [default: CANVASFLOW_DATABASE_URL]."
)


@click.command()
@click.option("--once", is_flag=True, help="Fire what is due now, print what was done, and exit.")
@DATABASE_OPTION
def scheduler(once: bool, database_url: str | None) -> None:
    """Fire the schedule triggers of the registered workflows until SIGTERM/SIGINT. Run one or
    several (each fire time starts exactly one run however many run; docs/operations.md)."""
    deps["handle_errors"](_scheduler)(once, database_url)


def _scheduler(once: bool, database_url: str | None) -> None:
    import logging
    import signal
    import threading

    from orchestrator.engine.scheduler import Scheduler

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    client = deps["make_client"]()
    store = _store(client, database_url)
    sched = Scheduler(client, store)
    if once:
        sched.tick()
        console.print(f"scheduler: {sched.fired} run(s) started", highlight=False)
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sched.run_forever(stop)


@click.group()
def schedules() -> None:
    """List schedules with their next fire times; pause, resume, run now."""


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@DATABASE_OPTION
def list_(as_json: bool, database_url: str | None) -> None:
    """Every schedule of the latest registered versions, with its next fire time."""
    deps["handle_errors"](_list)(as_json, database_url)


def _list(as_json: bool, database_url: str | None) -> None:
    from rich.table import Table

    from orchestrator.engine.schedules import list_schedules, schedulers

    client = deps["make_client"]()
    store = _store(client, database_url)
    views = list_schedules(client, store)
    running = schedulers(client)
    if as_json:
        click.echo(
            json.dumps({"schedules": [v.as_dict() for v in views], "schedulers": running}, indent=2)
        )
        return
    if not views:
        console.print("no schedules (no registered workflow has a schedule trigger)")
        return
    table = Table(box=None)
    for col in ("workflow", "trigger", "schedule", "next fire (UTC)", "last fire", "state"):
        table.add_column(col)
    for v in views:
        state = ("paused" + (f" by {v.paused_by}" if v.paused_by else "")) if v.paused else "active"
        table.add_row(
            v.workflow,
            v.name,
            v.schedule,
            v.next_fire or "-",
            v.last_fire or "-",
            state,
        )
    console.print(table)
    if not running:
        err.print(
            "note: no scheduler is running (start `canvasflow scheduler`, or the web process "
            "with CANVASFLOW_WEB_SCHEDULER=true)",
            style="yellow",
            highlight=False,
            markup=False,
        )


def _action(verb: str) -> Callable[..., None]:
    def run(workflow: str, name: str, reason: str | None, database_url: str | None) -> None:
        from orchestrator.engine import schedules as ops

        client = deps["make_client"]()
        store = _store(client, database_url)
        actor = deps["actor"]()
        if verb == "run-now":
            run_id = ops.run_now(client, store, workflow, name, actor=actor, reason=reason)
            console.print(run_id, highlight=False)
            return
        view = ops.set_paused(
            client, store, workflow, name, verb == "pause", actor=actor, reason=reason
        )
        state = "paused" if view.paused else f"active, next fire {view.next_fire}"
        console.print(f"{verb}: {workflow}/{name} {state}", highlight=False, markup=False)

    return run


def _command(verb: str, doc: str) -> None:
    @schedules.command(verb, help=doc)
    @click.argument("workflow")
    @click.argument("name")
    @click.option("--reason", default=None, help="Why; recorded in the audit log.")
    @DATABASE_OPTION
    def cmd(workflow: str, name: str, reason: str | None, database_url: str | None) -> None:
        deps["handle_errors"](_action(verb))(workflow, name, reason, database_url)


_command("pause", "Stop firing a schedule (fire times while paused are skipped).")
_command("resume", "Fire a paused schedule again, from its next fire time.")
_command("run-now", "Start a run of a schedule now (its inputs); prints the run id.")
