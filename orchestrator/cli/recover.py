"""``canvasflow recover``: rebuild the runs Redis lost from the audit store, with progress
(the work is orchestrator/engine/recover.py); ``canvasflow upgrade-keys``: rename the keys of
runs written before the hash tag. main.py registers it with its helpers, so this
module does not import main."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from orchestrator.audit.cli import CliConsole
from orchestrator.cli import publish as publish_cli
from orchestrator.cli import schedules as schedules_cli
from orchestrator.errors import CanvasflowError

console = CliConsole()
err = CliConsole(stderr=True)
deps: dict[str, Callable[..., Any]] = {}


def register(group: click.Group, **helpers: Callable[..., Any]) -> None:
    """Add the commands to ``group`` (``notify`` too: orchestrator/cli/notify.py); ``helpers``:
    handle_errors, make_client, actor and existing_store of main.py."""
    from orchestrator.cli import notify  # main.py is at its 800-line limit: registered from here

    deps.update(helpers)
    group.add_command(recover)
    group.add_command(upgrade_keys)
    schedules_cli.register(group, **helpers)  # canvasflow scheduler, canvasflow schedules
    publish_cli.register(group, **helpers)  # canvasflow publish
    notify.register(group, deps)  # canvasflow notify


@click.command("upgrade-keys")
def upgrade_keys() -> None:
    """Rename the Redis keys of runs written before 2026-12 (no hash tag) to their names now.
    Stop every canvasflow process first; start the new version after."""
    deps["handle_errors"](_upgrade_keys)()


def _upgrade_keys() -> None:
    state = deps["make_client"]().state
    moved = state.adopt_legacy_keys()
    console.print(f"upgrade-keys: renamed the keys of {len(moved)} run(s)")
    for rid in moved:
        console.print(f"  {rid}")


@click.command("recover")
@click.argument("run_ids", nargs=-1)
@click.option(
    "--force",
    is_flag=True,
    help="Rebuild the named runs from the audit store even though Redis knows them (their hot "
    "state is replaced; the epoch moves on, so what is left of their old dispatch is refused).",
)
@click.option("--reason", default=None, help="Why; recorded in the audit log.")
@click.option(
    "--database-url", default=None, help="The audit store [default: CANVASFLOW_DATABASE_URL]."
)
def recover(
    run_ids: tuple[str, ...], force: bool, reason: str | None, database_url: str | None
) -> None:
    """Rebuild, from the audit store, the runs Redis lost (not final in SQL, unknown to Redis)
    and send what is left of them: completed steps are not run again, running ones run as a new
    attempt, paused runs stay paused. Running it twice does nothing the second time."""
    deps["handle_errors"](_recover)(run_ids, force, reason, database_url)


def _recover(
    run_ids: tuple[str, ...], force: bool, reason: str | None, database_url: str | None
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from orchestrator.engine.recover import candidates
    from orchestrator.engine.recover import recover as recover_runs

    if force and not run_ids:
        raise click.UsageError("--force needs the run ids to rebuild (it never applies to all)")
    client = deps["make_client"]()
    url = database_url or client.settings.database_url
    store = deps["existing_store"](url)
    if store is None:
        raise CanvasflowError(
            f"no audit store at {url}: recovery reads the runs from it; set "
            "CANVASFLOW_DATABASE_URL or --database-url to the fleet's store"
        )
    try:
        total = len(candidates(store, client.state, run_ids, force=force))
        with Progress(
            TextColumn("recovering"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            console=err,
            transient=True,
            disable=total < 2,
        ) as bar:
            task = bar.add_task("", total=total)
            report = recover_runs(
                store,
                client.state,
                client.dispatcher,
                run_ids=run_ids,
                force=force,
                actor=deps["actor"](),
                reason=reason or "",
                progress=lambda one: bar.update(task, advance=1, description=one.run_id),
            )
    finally:
        store.dispose()
    if report.registered:
        console.print(
            f"registered again from the audit store: {len(report.registered)} workflow "
            "version(s): " + ", ".join(f"{w} {v}" for w, v in report.registered),
            highlight=False,
            markup=False,
        )
    for one in report.runs:
        if one.verdict == "recovered":
            rerun = f"; re-running {', '.join(one.rerun)}" if one.rerun else ""
            console.print(
                f"recovered {one.run_id} ({one.status}, epoch {one.epoch}): {one.detail}{rerun}",
                highlight=False,
                markup=False,
            )
        elif one.verdict == "present":
            console.print(f"left alone {one.run_id}: {one.detail}", highlight=False, markup=False)
        else:
            err.print(
                f"not recovered {one.run_id} ({one.status or 'unknown'}): {one.detail}",
                style="red",
                highlight=False,
                markup=False,
            )
    console.print(
        f"{len(report.recovered)} run(s) recovered, {len(report.refused)} not recovered"
        + ("" if report.runs else " (no run of the audit store is missing from Redis)"),
        highlight=False,
    )
    if report.refused:
        sys.exit(1)
