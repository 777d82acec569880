"""Terminal views of runs: a live per-step table on a terminal, one line per change elsewhere."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from orchestrator.audit.cli import (
    PIPED_WIDTH,
    CliConsole,
    Col,
    fields_line,
    fitted_table,
    trigger_text,
)
from orchestrator.engine.client import RESTING, Client, RunSnapshot

STYLE = {
    "PENDING": "dim",
    "RUNNING": "cyan",
    "RETRYING": "yellow",
    "COMPLETED": "green",
    "FAILED": "bold red",
    "SKIPPED": "dim",
    "CANCELLED": "magenta",
    "COMPENSATING": "yellow",
    "COMPENSATED": "blue",
    "PAUSED": "yellow",
    "COMPENSATION_FAILED": "bold red",
}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s"


PAUSED_HINT = "paused: still following until `canvasflow resume {run}` (Ctrl-C stops following)"


def run_table(
    snap: RunSnapshot,
    *,
    paused_hint: bool = False,
    width: int = PIPED_WIDTH,
    maps: Mapping[str, str] | None = None,
) -> Group:
    """The run as a header line, its steps as a table and the run's error (or the paused hint)
    under it, ``width`` columns wide at most: the header breaks between its fields only, step
    ids and statuses stay whole on one line, the detail (an error) folds; at a narrow width the
    attempts, then the duration, leave the table. ``maps``: a mapped step's item summary, shown
    as its detail (orchestrator/cli/items.py)."""
    pct = int(snap.progress * 100)
    # Not the table's title: a title wraps at the table's width, which cut "5/5 steps (100%)"
    # and "577 ms" in two on an 80-column terminal.
    header = fields_line(
        [
            f"{snap.workflow} {snap.version}".strip(),
            f"run {snap.id}",
            Text(snap.status, style=STYLE.get(snap.status, "")),
            f"{snap.settled}/{snap.total} steps ({pct}%)",
            fmt_duration(snap.duration),
            *(
                [f"via {trigger_text(snap.trigger_type, snap.trigger_name, snap.trigger_ref)}"]
                if snap.trigger_type
                else []
            ),
        ],
        width,
    )
    cols = [
        Col("step"),
        Col("status"),
        Col("attempts", drop=1),
        Col("duration", drop=2),
        Col("detail", no_wrap=False, min_width=16),
    ]
    rows: list[list[RenderableType]] = []
    now = time.time()
    for s in snap.steps:
        dur = (
            s.duration if s.duration is not None else (now - s.started_at if s.started_at else None)
        )
        detail = s.compensation_error or s.error or ""
        if maps and s.id in maps:
            detail = f"{maps[s.id]}{f' - {detail}' if detail else ''}"
        rows.append(
            [
                s.id,
                Text(s.status, style=STYLE.get(s.status, "")),
                str(s.attempts or ""),
                fmt_duration(dur),
                Text(detail[:200]),
            ]
        )
    table = fitted_table(width, cols, rows, box=box.HEAVY_HEAD, expand=False).table
    parts: list[RenderableType] = [header]
    if snap.parent_run:
        parts.append(Text(f"child run of run {snap.parent_run} (step {snap.parent_step})"))
    parts.append(table)
    if snap.result is not None:
        parts.append(Text.assemble(("result", "green"), f": {result_text(snap.result)}"))
    # Under the table, not its caption: a caption wraps at the table's width, not the terminal's.
    if snap.error:
        parts.append(Text.assemble(("error", "red"), f": {snap.error}"))
    elif paused_hint and snap.status == "PAUSED":
        parts.append(Text(PAUSED_HINT.format(run=snap.id), style="yellow"))
    if snap.waiting:  # a concurrency limit holds it back
        parts.append(Text(str(snap.waiting["reason"]), style="yellow"))
    return Group(*parts)


def follow(
    client: Client,
    run_ids: Iterable[str],
    *,
    timeout: float | None = None,
    console: Console | None = None,
    interval: float = 0.2,
    until: Collection[str] = RESTING,
) -> list[RunSnapshot]:
    """Show runs until each is in a status of ``until`` (by default: until each rests — final,
    paused, or waiting on a failed compensation), or ``timeout`` seconds have passed. A run that
    pauses while ``until`` does not hold PAUSED is followed on, through its resume."""
    console = console or CliConsole()
    ids = list(run_ids)
    deadline = None if timeout is None else time.monotonic() + timeout
    if console.is_terminal:
        hint = "PAUSED" not in until
        with Live(console=console, refresh_per_second=8) as live:
            while True:
                snaps = [client.snapshot(i) for i in ids]
                live.update(
                    Group(*(run_table(s, paused_hint=hint, width=console.width) for s in snaps))
                )
                if all(s.status in until for s in snaps) or (
                    deadline and time.monotonic() > deadline
                ):
                    return snaps
                time.sleep(interval)
    # Not a terminal (CI, pipes): one line per step change, flushed as it happens.
    seen: dict[tuple[str, str], str] = {}
    while True:
        snaps = [client.snapshot(i) for i in ids]
        for snap in snaps:
            key = (snap.id, "")
            if seen.get(key) != snap.status:
                seen[key] = snap.status
                print(
                    f"[{snap.workflow}] run {snap.id}: {snap.status} "
                    f"({snap.settled}/{snap.total} steps)",
                    flush=True,
                )
                if snap.status == "COMPLETED" and snap.result is not None:
                    print(f"[{snap.workflow}]   result: {result_text(snap.result)}", flush=True)
                if snap.status == "PAUSED" and "PAUSED" not in until:
                    print(f"[{snap.workflow}]   {PAUSED_HINT.format(run=snap.id)}", flush=True)
            for s in snap.steps:
                k = (snap.id, s.id)
                label = f"{s.status}#{s.attempts}"
                if seen.get(k) != label and s.status != "PENDING":
                    seen[k] = label
                    extra = f" attempt {s.attempts}" if s.attempts > 1 else ""
                    err = f" - {s.error}" if s.error and s.status in ("FAILED", "RETRYING") else ""
                    print(f"[{snap.workflow}]   {s.id}: {s.status}{extra}{err}", flush=True)
        if all(s.status in until for s in snaps) or (deadline and time.monotonic() > deadline):
            return snaps
        time.sleep(interval)


RESULT_CAP = 2000  # characters of a run's result printed (the API and the export have it all)


def result_text(result: Any) -> str:
    text = json.dumps(result, separators=(", ", ": "), default=str)
    return text if len(text) <= RESULT_CAP else text[:RESULT_CAP] + "…"


def print_summary(
    snap: RunSnapshot,
    console: Console | None = None,
    maps: Mapping[str, str] | None = None,
    client: Client | None = None,
) -> None:
    """The run as ``run_table`` shows it (``maps``: a mapped step's item summary); with
    ``client``, the child runs its sub-workflow steps started, one line each."""
    console = console or CliConsole()
    console.print(run_table(snap, width=console.width, maps=maps))
    kids = client.state.children(snap.id) if client is not None else []
    if kids:
        console.print(f"{len(kids)} child run(s):")
        for kid in client.state.runs(kids, "status", "workflow", "parent_step") if client else ():
            if kid is not None:
                console.print(
                    Text.assemble(
                        f"  {kid.id}  step {kid.parent_step}  {kid.workflow}  ",
                        (kid.status, STYLE.get(kid.status, "")),
                    )
                )
