"""Commands of the audit store: ``db upgrade``, ``recorder``, ``runs``, ``show``, ``logs``, ``prune``.

``register(main)`` adds them to the ``canvasflow`` group; ``python -m orchestrator.audit.cli``
runs them on their own. Heavy imports (SQLAlchemy, redis) happen inside the commands so the
rest of the CLI starts fast.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console, ConsoleDimensions, RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.records import TRIGGER_TYPES

# Piped output (a file, `grep`, CI logs) is never cut or wrapped: a run id or worker name cut to
# fit 80 columns, or an error broken mid-sentence, is what a pipe must not get.
PIPED_WIDTH = 10_000


class CliConsole(Console):
    """A rich console that is as wide as the terminal, and as wide as its lines when piped
    (whatever COLUMNS says: that is the width of a terminal, and there is none)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fixed_width = kwargs.get("width") is not None

    @property
    def size(self) -> ConsoleDimensions:
        if not self._fixed_width and not self.is_terminal:
            return ConsoleDimensions(PIPED_WIDTH, super().size.height)
        return super().size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size
        self._fixed_width = True

    @property
    def width(self) -> int:
        return self.size.width

    @width.setter
    def width(self, width: int) -> None:
        self._width = width
        self._fixed_width = True


console = CliConsole()
err = CliConsole(stderr=True)


@dataclass(frozen=True)
class Col:
    """A column of :func:`fitted_table`. ``drop``: the order in which columns that matter less
    leave the table when it is wider than the terminal (1 first; None: always in it); a column
    with ``below`` is then shown under the table, row by row, instead of being left out."""

    header: str
    drop: int | None = None
    below: bool = False
    no_wrap: bool = True  # ids, names, statuses, times: one line each, never cut
    overflow: str = "fold"
    min_width: int | None = None
    max_width: int | None = None


def _plain(cell: RenderableType) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _cell_width(cell: RenderableType) -> int:
    return max((len(line) for line in _plain(cell).splitlines()), default=0)


@dataclass(frozen=True)
class Fitted:
    table: Table
    left_out: list[str]  # headers of the columns not shown
    below: list[tuple[str, list[tuple[str, RenderableType]]]]  # (row label, [(header, cell)])


def fitted_table(
    width: int,
    cols: list[Col],
    rows: list[list[RenderableType]],
    labels: list[str] | None = None,
    **table_options: Any,
) -> Fitted:
    """A table for ``target``'s width: a ``no_wrap`` column is as wide as its widest cell (never
    cut), the others fold down to their ``min_width``; while even that is wider than the terminal,
    the columns with a ``drop`` rank leave the table, lowest rank first. ``labels`` name the rows
    for the columns shown below it (default: the first cell)."""
    widest = [max([len(c.header)] + [_cell_width(r[i]) for r in rows]) for i, c in enumerate(cols)]
    # A folding column needs its min_width, or less when its widest cell is narrower.
    floor = [
        None if c.no_wrap else min(w, c.min_width or w) for c, w in zip(cols, widest, strict=True)
    ]
    least = [w if f is None else f for w, f in zip(widest, floor, strict=True)]
    keep = list(range(len(cols)))
    gone: list[int] = []
    table_options.setdefault("box", None)
    per_column = 2 if table_options["box"] is None else 3  # padding either side (and a rule)
    while sum(least[i] + per_column for i in keep) + (per_column - 2) > width:
        droppable = sorted((d, i) for i in keep if (d := cols[i].drop) is not None)
        if not droppable:
            break
        keep.remove(droppable[0][1])
        gone.append(droppable[0][1])
    table = Table(header_style="bold", **table_options)
    for i in keep:
        c = cols[i]
        table.add_column(
            c.header,
            no_wrap=c.no_wrap,
            overflow="fold" if c.no_wrap else c.overflow,  # type: ignore[arg-type]
            min_width=widest[i] if c.no_wrap else floor[i],
            max_width=None if c.no_wrap else c.max_width,
        )
    for r in rows:
        table.add_row(*(r[i] for i in keep))
    moved = sorted(i for i in gone if cols[i].below)
    below = []
    for n, r in enumerate(rows):
        cells = [(cols[i].header, r[i]) for i in moved if _plain(r[i]).strip() not in ("", "-")]
        if cells:
            below.append((labels[n] if labels else _plain(r[0]).strip(), cells))
    return Fitted(table, [cols[i].header for i in gone if not cols[i].below], below)


def fields_line(fields: list[str | Text], width: int) -> Text:
    """``fields`` two spaces apart, starting a new line *between* fields when the next one would
    pass ``width``: a header such as "6/6 steps (100%)  577 ms" never breaks inside a field (a
    field wider than ``width`` on its own still folds)."""
    line = Text()
    used = 0
    for field in fields:
        part = field if isinstance(field, Text) else Text(field)
        if not part.plain:
            continue
        if used and used + 2 + len(part.plain) > width:
            line.append("\n")
            used = 0
        elif used:
            line.append("  ")
            used += 2
        line.append_text(part)
        used += len(part.plain)
    return line


def print_fitted(
    target: Console,
    cols: list[Col],
    rows: list[list[RenderableType]],
    labels: list[str] | None = None,
) -> None:
    """Print :func:`fitted_table`, then what left it: the columns shown below it, and a note
    naming the ones left out."""
    fitted = fitted_table(target.width, cols, rows, labels)
    target.print(fitted.table)
    for label, cells in fitted.below:
        target.print(Text(label, style="bold"))
        for header, cell in cells:
            target.print(
                Text.assemble(f"  {header}: ", cell if isinstance(cell, Text) else str(cell))
            )
    if fitted.left_out and rows:
        target.print(
            f"({', '.join(fitted.left_out)} left out at {target.width} columns: widen the "
            "terminal, or pipe the output, which is never cut)",
            style="dim",
            highlight=False,
        )


STATUS_STYLE = {
    "COMPLETED": "green",
    "FAILED": "red",
    "COMPENSATION_FAILED": "bold red",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
    "RETRYING": "magenta",
    "SKIPPED": "dim",
    "PENDING": "dim",
    "COMPENSATED": "yellow",
    "COMPENSATING": "yellow",
    "PAUSED": "blue",
    "PAUSING": "blue",
    "CANCELLING": "yellow",
}
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
SETTINGS_META = "canvasflow.settings"


def fleet_settings() -> Any:
    """The command's Settings: CANVASFLOW_* variables, or the running demo's fleet when none
    that points at a fleet is set (said once per command on stderr: the user did not choose
    it). Kept in the click context, so each invocation reads its own environment."""
    from orchestrator.settings import cli_settings

    ctx = click.get_current_context(silent=True)
    if ctx is not None and SETTINGS_META in ctx.meta:
        return ctx.meta[SETTINGS_META]
    settings, demo = cli_settings()
    if demo is not None:
        err.print(demo.note(), style="dim", highlight=False, markup=False, soft_wrap=True)
    if ctx is not None:
        ctx.meta[SETTINGS_META] = settings
    return settings


def _settings(database_url: str | None) -> Any:
    from orchestrator.settings import Settings

    if database_url:  # chosen on the command line: no demo is looked for
        return Settings.from_env().with_(database_url=database_url)
    return fleet_settings()


def _store(database_url: str | None, *, check: bool = True) -> Any:
    from orchestrator.audit.store import AuditStore

    store = AuditStore(_settings(database_url).database_url)
    if check:
        store.check()
    return store


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis

        from orchestrator.errors import CanvasflowError

        try:
            return fn(*args, **kwargs)
        except CanvasflowError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            sys.exit(1)
        except redis.ConnectionError as exc:
            url = _settings(kwargs.get("database_url")).redis_url
            err.print(
                f"[red]error:[/] cannot reach Redis at {url} ({exc}); start Redis or set "
                "CANVASFLOW_REDIS_URL",
                highlight=False,
            )
            sys.exit(1)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return wrapper


db_option = click.option(
    "--database-url",
    "database_url",
    default=None,
    metavar="URL",
    help="Audit store URL (default: CANVASFLOW_DATABASE_URL, else sqlite:///canvasflow.db).",
)


def _when(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime(fmt)


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.2f}s" if v < 60 else f"{v / 60:.1f}m"


def _status(s: str) -> Text:
    return Text(s, style=STATUS_STYLE.get(s, ""))


def _waiting(database_url: str | None, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The concurrency wait of those PENDING runs that wait for a slot, from Redis (the store
    does not know it); nothing when Redis cannot be asked: the list stands without it."""
    if not run_ids:
        return {}
    import redis

    from orchestrator.keys import Keys
    from orchestrator.records import waiting_of

    settings = _settings(database_url)
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
        try:
            return waiting_of(client, Keys(settings.key_prefix), run_ids)
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return {}


def _since(text: str | None) -> float | None:
    if not text:
        return None
    from orchestrator.audit.queries import parse_duration

    return time.time() - parse_duration(text)


# ---------------------------------------------------------------------------------------------


@click.group("db")
def db() -> None:
    """The audit store's schema."""


@db.command("upgrade")
@db_option
@_errors
def db_upgrade(database_url: str | None) -> None:
    """Create or migrate the audit store's tables (Alembic, safe to repeat)."""
    store = _store(database_url, check=False)
    before = store.revision()
    after = store.upgrade()
    what = "already at" if before == after else f"upgraded from {before or 'empty'} to"
    console.print(f"audit store {store.display_url}: {what} revision {after}", highlight=False)


@click.command("recorder")
@db_option
@click.option("--group", default="cf-recorder", show_default=True, help="Consumer group name.")
@click.option("--consumer", default=None, help="Consumer name (default: host:pid:random).")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--batch-latency",
    default=0.25,
    show_default=True,
    type=float,
    help="Seconds a batch may wait to fill (how stale the SQL store may be; live views do not wait).",
)
@click.option(
    "--claim-idle",
    default=30.0,
    show_default=True,
    type=float,
    help="Claim entries another consumer left pending this many seconds.",
)
@click.option("--claim-interval", default=5.0, show_default=True, type=float)
@click.option(
    "--start-id", default="0", show_default=True, help="Where a new group starts reading."
)
@click.option("--no-trim", is_flag=True, help="Never trim the stream.")
@click.option(
    "--lag-interval", default=10.0, show_default=True, type=float, help="Print the lag this often."
)
@click.option(
    "--upgrade/--no-upgrade", default=True, show_default=True, help="Migrate the store first."
)
@click.option(
    "--nice",
    "niceness",
    default=0,
    show_default=True,
    type=click.IntRange(0, 19),
    help="Lower the recorder's CPU priority by this much, so that workers sharing its machine "
    "come first; it catches up when they leave CPU time (docs/operations.md).",
)
@_errors
def recorder(
    database_url: str | None,
    group: str,
    consumer: str | None,
    batch_size: int,
    batch_latency: float,
    claim_idle: float,
    claim_interval: float,
    start_id: str,
    no_trim: bool,
    lag_interval: float,
    upgrade: bool,
    niceness: int,
) -> None:
    """Record the event stream into the audit store until SIGTERM/SIGINT."""
    import logging

    if niceness:
        os.nice(niceness)

    from orchestrator.audit.recorder import serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    code = serve(
        _settings(database_url),
        upgrade=upgrade,
        lag_interval=lag_interval,
        echo=lambda line: console.print(line, highlight=False, soft_wrap=True),
        group=group,
        consumer=consumer,
        batch_size=batch_size,
        batch_latency=batch_latency,
        claim_idle=claim_idle,
        claim_interval=claim_interval,
        start_id=start_id,
        trim=not no_trim,
    )
    sys.exit(code)


@click.command("runs")
@db_option
@click.option("--status", "statuses", multiple=True, help="Only runs in this status (repeatable).")
@click.option("--workflow", default=None)
@click.option(
    "--tag", "tags", multiple=True, help="Only runs with this tag (repeatable: all of them)."
)
@click.option("--triggered-by", default=None)
@click.option(
    "--trigger",
    "trigger_type",
    type=click.Choice(TRIGGER_TYPES),
    default=None,
    help="Only runs that started this way.",
)
@click.option("--since", default=None, help="Created within this long, like 24h or 7d.")
@click.option("--search", default=None, help="Text in the run id, workflow id or name.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--cursor", default=None, help="The 'next page' cursor a previous call printed.")
@_errors
def runs_cmd(
    database_url: str | None,
    statuses: tuple[str, ...],
    workflow: str | None,
    tags: tuple[str, ...],
    triggered_by: str | None,
    trigger_type: str | None,
    since: str | None,
    search: str | None,
    limit: int,
    cursor: str | None,
) -> None:
    """List recorded runs, newest first."""
    from orchestrator.audit import queries

    store = _store(database_url)
    page = queries.list_runs(
        store,
        status=statuses or None,
        workflow=workflow,
        tags=tags,
        triggered_by=triggered_by,
        trigger_type=trigger_type,
        since=_since(since),
        search=search,
        limit=limit,
        cursor=cursor,
    )
    waits = _waiting(database_url, [r.id for r in page.items if r.status == "PENDING"])
    cols = [
        Col("run"),
        Col("workflow", no_wrap=False, min_width=20),
        Col("status", no_wrap=False),
        Col("created"),
        Col("duration", drop=4),
        Col("sla", drop=3),
        Col("by", drop=2, no_wrap=False, overflow="ellipsis", min_width=6),
        Col("tags", drop=1, no_wrap=False, overflow="ellipsis", min_width=6),
        Col("trigger", drop=1, no_wrap=False, overflow="ellipsis", min_width=6),
    ]
    rows: list[list[RenderableType]] = [
        [
            r.id,
            f"{r.workflow} {r.version}".strip(),
            Text.assemble(_status(r.status), ("\n" + waits[r.id]["reason"], "yellow"))
            if r.id in waits
            else _status(r.status),
            _when(r.created_at, "%m-%d %H:%M:%S"),
            _secs(r.duration),
            "-" if r.sla_met is None else ("met" if r.sla_met else Text("breached", style="red")),
            Text(r.triggered_by or "-"),
            Text(", ".join(r.tags)),
            Text(trigger_text(r.trigger_type, r.trigger_name, r.trigger_ref)),
        ]
        for r in page.items
    ]
    print_fitted(console, cols, rows)
    if not page.items:
        console.print("no runs recorded match (is a recorder running? `canvasflow recorder`)")
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}", highlight=False)


def trigger_text(kind: str | None, name: str | None, ref: str | None) -> str:
    """``event files.uploaded (key k1)``, ``schedule nightly (2026-12-04T02:00:00Z)``, ``cli``."""
    out = " ".join(p for p in (kind or "-", name) if p)
    return f"{out} ({'key ' if kind == 'event' else ''}{ref})" if ref else out


def _bar(
    start: float | None, duration: float | None, t0: float, span: float, width: int = 20
) -> str:
    if start is None or span <= 0:
        return ""
    a = int((start - t0) / span * width)
    b = max(a + 1, int((start - t0 + (duration or 0)) / span * width))
    a, b = max(0, min(a, width - 1)), min(b, width)
    return " " * a + "█" * (b - a)


@click.command("show")
@db_option
@click.argument("run_id")
@click.option("--lines", default=10, show_default=True, help="Last log lines to show.")
@_errors
def show(database_url: str | None, run_id: str, lines: int) -> None:
    """A run's timeline: steps with status, durations, attempts, errors, last log lines."""
    from orchestrator.audit import queries

    d = queries.run_detail(_store(database_url), run_id, log_limit=lines)
    r = d.run
    console.print(
        Text.assemble((f"run {r.id}", "bold"), f"  {r.workflow} {r.version}  ", _status(r.status))
    )
    console.print(
        fields_line(
            [
                f"created {_when(r.created_at)}",
                f"started {_when(r.started_at)}",
                f"finished {_when(r.finished_at)}",
                f"duration {_secs(r.duration)}",
                f"SLA {r.sla_seconds:g}s {'met' if r.sla_met else 'breached'}"
                if r.sla_met is not None
                else "",
                f"via {trigger_text(r.trigger_type, r.trigger_name, r.trigger_ref)}"
                if r.trigger_type
                else "",
            ],
            console.width,
        ),
        highlight=False,
    )
    if r.error:
        console.print(f"[red]error[/] ({r.failed_step or 'run'}): {r.error}", highlight=False)
    if not r.complete:
        console.print(
            f"[yellow]events recorded: {r.event_count} of {r.last_seq} (the recorder is catching up)[/]"
        )
    t0 = r.started_at or r.created_at
    ends = [s.finished_at for s in d.steps if s.finished_at] + [r.finished_at or time.time()]
    span = max(ends) - t0
    # Step ids and worker names stay whole on one line; the note folds; at a narrow width the
    # timeline bar, then the start offset and the tries go first.
    cols = [
        Col("step"),
        Col("status"),
        Col("tries", drop=3),
        Col("start", drop=2),
        Col("duration"),
        Col("timeline", drop=1),
        Col("worker", drop=5, below=True),
        Col("error / note", drop=4, below=True, no_wrap=False, min_width=16),
    ]
    rows: list[list[RenderableType]] = []
    labels: list[str] = []
    for s in d.steps:
        note = s.error or s.reason or s.compensation_error or ""
        if s.progress is not None and s.status not in FINAL:
            note = f"{s.progress:.0%} {s.progress_message or ''} {note}".strip()
        start = f"+{s.started_at - t0:.2f}s" if s.started_at is not None else "-"
        labels.append(s.id)
        rows.append(
            [
                s.id,
                _status(s.status),
                str(s.attempts),
                start,
                _secs(s.duration),
                Text(
                    _bar(s.started_at, s.duration, t0, span), style=STATUS_STYLE.get(s.status, "")
                ),
                s.worker or "-",
                Text(note[:200]),
            ]
        )
        if len(s.history) > 1 or any(a.error for a in s.history):
            for a in s.history:
                labels.append(f"{s.id} #{a.number}")
                rows.append(
                    [
                        f"  #{a.number}",
                        _status(a.status),
                        "",
                        "",
                        _secs(a.duration),
                        "",
                        a.worker or "-",
                        Text((a.error or "")[:200]),
                    ]
                )
    print_fitted(console, cols, rows, labels)
    if d.logs:
        console.print(f"[bold]last {len(d.logs)} of {d.logs_total} log lines[/]")
        for line in d.logs:
            console.print(
                f"{_when(line.ts)} {line.level:<7} {line.step or '-'}: {line.message[:500]}",
                highlight=False,
                markup=False,
            )


@click.command("logs")
@db_option
@click.argument("run_id")
@click.argument("step", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option("--level", default=None, help="Only this level (INFO, ERROR...).")
@click.option(
    "--interval", default=0.5, show_default=True, type=float, help="Poll interval with --follow."
)
@_errors
def logs_cmd(
    database_url: str | None,
    run_id: str,
    step: str | None,
    follow: bool,
    level: str | None,
    interval: float,
) -> None:
    """Print a run's (or one step's) log lines from the audit store."""
    from orchestrator.audit import queries

    store = _store(database_url)
    run = queries.get_run(store, run_id)
    after, after_line = 0, None
    while True:
        batch = queries.logs(
            store, run_id, step, after_seq=after, after_line=after_line, limit=1000, level=level
        )
        for line in batch:
            ent = " ".join(
                f"{k}={v}"
                for k, v in (
                    ("tag", line.entity_tag),
                    ("route", line.entity_route),
                    ("id", line.entity_id),
                    ("type", line.entity_type),
                )
                if v
            )
            console.print(
                f"{_when(line.ts)} {line.level:<7} {line.step or '-'}: {line.message}"
                + (f"  [{ent}]" if ent else ""),
                highlight=False,
                markup=False,
            )
            after, after_line = line.seq, line.line
        if len(batch) == 1000:
            continue
        if not follow:
            return
        if run.status in FINAL and run.complete:
            return
        time.sleep(interval)
        run = queries.get_run(store, run_id)


@click.command("prune")
@db_option
@click.option("--older-than", required=True, help="Finished more than this long ago, like 30d.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@_errors
def prune_cmd(database_url: str | None, older_than: str, batch_size: int, dry_run: bool) -> None:
    """Delete finished runs (and all their rows) older than --older-than, in small batches, and
    the Celery task history (fleet inspection) first seen before then."""
    from orchestrator.audit import queries
    from orchestrator.audit.store import prune_celery_tasks

    seconds = queries.parse_duration(older_than)
    store = _store(database_url)
    res = queries.prune(store, seconds, batch_size=batch_size, dry_run=dry_run)
    with store.errors():
        n_tasks = prune_celery_tasks(
            store.writer, time.time() - seconds, batch_size=batch_size, dry_run=dry_run
        )
    if dry_run:
        console.print(f"{res.runs} runs finished more than {older_than} ago would be removed")
        console.print(
            f"{n_tasks} Celery tasks first seen more than {older_than} ago would be removed"
        )
    else:
        console.print(f"removed {res.runs} runs ({res.rows} rows) in {res.batches} batches")
        console.print(f"removed {n_tasks} Celery tasks from the task history")


COMMANDS = (db, recorder, runs_cmd, show, logs_cmd, prune_cmd)


def register(group: click.Group) -> None:
    """Add the audit commands to the main ``canvasflow`` group."""
    for cmd in COMMANDS:
        if cmd.name not in group.commands:
            group.add_command(cmd)


@click.group()
def main() -> None:
    """canvasflow audit store commands."""


register(main)

if __name__ == "__main__":
    main()
