"""Mapped steps on the command line: ``canvasflow status`` gives a mapped step its item counts
(``resize  map 9,412/10,000 COMPLETED, 3 FAILED, 585 RUNNING``), and ``canvasflow items RUN
STEP`` lists its items a page at a time, filtered by status. Item counts and lists are read from
the audit store. main.py registers the command with its helpers, so this module does not import
main."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import click
from rich.console import Console, RenderableType
from rich.text import Text

from orchestrator.audit import queries
from orchestrator.audit.cli import CliConsole, Col, print_fitted
from orchestrator.audit.queries.items import MAX_PAGE, STEP_STATUSES
from orchestrator.errors import CanvasflowError, StoreError
from orchestrator.settings import Settings

console = CliConsole()
err = CliConsole(stderr=True)
deps: dict[str, Callable[..., Any]] = {}
# The order a mapped step's counts are written in after the completed ones.
ORDER = ("FAILED", "RUNNING", "RETRYING", "PENDING", "CANCELLED", "SKIPPED", "COMPENSATING",
         "COMPENSATED")  # fmt: skip


def register(group: click.Group, **helpers: Callable[..., Any]) -> None:
    """Add ``items`` to ``group``; ``helpers``: handle_errors, make_client and existing_store of
    main.py."""
    deps.update(helpers)
    group.add_command(items_command)


def map_summary(counts: queries.ItemCounts) -> str:
    """``map 9,412/10,000 COMPLETED, 3 FAILED, 585 RUNNING``."""
    c = counts.counts
    parts = [f"map {c.get('COMPLETED', 0):,}/{counts.total:,} COMPLETED"]
    parts += [f"{c[s]:,} {s}" for s in ORDER if c.get(s)]
    parts += [f"{n:,} {s}" for s, n in sorted(c.items()) if s not in ORDER and s != "COMPLETED"]
    return ", ".join(parts)


def mapped_counts(client: Any, run_id: str) -> tuple[dict[str, queries.ItemCounts], str | None]:
    """The run's mapped steps with their item counts from the audit store, and a note when the
    store could not say (none here, or unreachable)."""
    store = deps["existing_store"](client.settings.database_url) if deps else None
    if store is None:
        return {}, None
    try:
        return queries.item_counts(store, run_id), None
    except StoreError as exc:
        return {}, f"item counts of mapped steps: audit store unavailable ({exc})"
    finally:
        store.dispose()


def status_json(client: Any, snap: Any) -> dict[str, Any]:
    """``canvasflow status --json``: the snapshot, a mapped step with ``map: {total, counts}``."""
    counts, _ = mapped_counts(client, snap.id)
    out = asdict(snap)
    for step in out["steps"]:
        c = counts.get(step["id"])
        step["map"] = c.as_dict() if c else None
    return out


def print_status(client: Any, snap: Any, target: Console | None = None) -> None:
    from orchestrator.cli.display import print_summary

    counts, note = mapped_counts(client, snap.id)
    target = target or console
    print_summary(snap, target, {sid: map_summary(c) for sid, c in counts.items()}, client)
    if counts:
        step = next(iter(counts))
        target.print(Text(f"items: canvasflow items {snap.id} {step} [--status FAILED]", "dim"))
    if note:
        target.print(Text(note, style="yellow"))


@click.command("items")
@click.argument("run_id")
@click.argument("step")
@click.option(
    "--status",
    type=click.Choice(STEP_STATUSES, case_sensitive=False),
    default=None,
    help="Only the items at this status.",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@click.option(
    "--database-url", default=None, help="The audit store [default: CANVASFLOW_DATABASE_URL]."
)
def items_command(
    run_id: str,
    step: str,
    status: str | None,
    offset: int,
    limit: int,
    as_json: bool,
    database_url: str | None,
) -> None:
    """List the items of a mapped step (from the audit store), in item order, a page at a time."""
    deps["handle_errors"](_items)(run_id, step, status, offset, limit, as_json, database_url)


def _items(
    run_id: str,
    step: str,
    status: str | None,
    offset: int,
    limit: int,
    as_json: bool,
    database_url: str | None,
) -> None:
    url = database_url or Settings.from_env().database_url
    store = deps["existing_store"](url)
    if store is None:
        raise CanvasflowError(
            f"no audit store at {url}: the items of mapped steps are read from it"
        )
    try:
        page = queries.items(store, run_id, step, status=status, offset=offset, limit=limit)
    finally:
        store.dispose()
    if as_json:
        click.echo(json.dumps(page_json(page, run_id), default=str, indent=2))
        return
    console.print(Text(f"{step}  {map_summary(page.counts)}"))
    rows: list[list[RenderableType]] = [
        [
            str(i.index),
            Text(i.status, style=_style(i.status)),
            str(i.attempts or ""),
            "" if i.duration is None else f"{i.duration:.3f} s",
            i.worker or "",
            Text((i.error or _short(i.output))[:200]),
        ]
        for i in page.items
    ]
    cols = [
        Col("item"),
        Col("status"),
        Col("attempts", drop=2),
        Col("duration", drop=3),
        Col("worker", drop=1),
        Col("error / output", no_wrap=False, min_width=16),
    ]
    if rows:
        print_fitted(console, cols, rows)
    what = f" {page.status}" if page.status else ""
    shown = f"{offset + 1:,}-{offset + len(page.items):,}" if page.items else "none"
    line = f"items {shown} of {page.total:,}{what}"
    if offset + len(page.items) < page.total:
        line += f"; next page: --offset {offset + len(page.items)}"
    console.print(Text(line, style="dim"))


def page_json(page: queries.ItemPage, run_id: str) -> dict[str, Any]:
    return {
        "run": run_id,
        "step": page.step,
        "status": page.status,
        "offset": page.offset,
        "limit": page.limit,
        "total": page.total,
        "map": page.counts.as_dict(),
        "items": [asdict(i) for i in page.items],
    }


def _short(output: Any) -> str:
    return "" if output is None else json.dumps(output, default=str)


def _style(status: str) -> str:
    from orchestrator.cli.display import STYLE

    return STYLE.get(status, "")
