"""`canvasflow status` and `canvasflow run --follow` draw a run as a header line, a table of its
steps and its error: the header breaks between its fields, never inside "6/6 steps (100%)" or
"577 ms", and the error wraps at the terminal's width, not the table's (found walking issue 17's
first hour at 80 columns, and in piped `status` output, where the header was cut at the table's
width too)."""

from __future__ import annotations

import io

import pytest

from orchestrator.audit.cli import CliConsole
from orchestrator.cli.display import print_summary
from orchestrator.engine.client import RunSnapshot, StepSnapshot

ERROR = "verification failed: health check returned 503 for app-2.1.0"


def snapshot(status: str = "FAILED", error: str | None = ERROR) -> RunSnapshot:
    steps = tuple(
        StepSnapshot(
            id=sid,
            status=st,
            attempts=1,
            started_at=1.0,
            finished_at=1.5,
            duration=0.577,
            output=None,
            error=err,
            traceback=None,
            worker="demo-worker@vm",
            history=(),
        )
        for sid, st, err in [("begin", "COMPLETED", None), ("verify", "FAILED", ERROR)]
    )
    return RunSnapshot(
        id="d58a528ae24967df",
        workflow="transactional_update",
        version="1.0.0",
        status=status,
        created_at=0.0,
        started_at=1.0,
        finished_at=1.577,
        inputs={},
        priority="normal",
        tags=(),
        error=error,
        failed_step="verify",
        total=6,
        settled=6,
        current_steps=(),
        steps=steps,
    )


def render(snap: RunSnapshot, width: int | None) -> list[str]:
    out = io.StringIO()
    console = CliConsole(file=out, width=width) if width else CliConsole(file=out)
    print_summary(snap, console)
    return [line.rstrip() for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("width", [80, 60])
def test_the_run_header_on_a_narrow_terminal_breaks_between_fields(width: int) -> None:
    lines = render(snapshot(), width)
    head = lines[: lines.index(next(line for line in lines if line.startswith("┏")))]
    text = "\n".join(head)
    for field in ("transactional_update 1.0.0", "run d58a528ae24967df", "6/6 steps (100%)"):
        assert any(field in line for line in head), (field, text)
    assert "577 ms" in head[-1], text
    assert all(len(line) <= width for line in lines), lines


def test_the_run_header_and_error_are_one_line_each_when_piped() -> None:
    long = ERROR + " and then the tail of a long error message" * 3
    lines = render(snapshot(error=long), None)
    assert lines[0] == (
        "transactional_update 1.0.0  run d58a528ae24967df  FAILED  6/6 steps (100%)  577 ms"
    )
    assert lines[-1] == "error: " + long
