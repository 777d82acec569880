"""The CLI at 80 columns, on a terminal and piped (issue 17 item 7): run ids and step ids are
never cut, worker names stay whole on one line, wide columns fold or are left out (and it says
which), and piped output — tables and error messages — is never cut or wrapped.

A real worker with a long name runs the steps, the recorder embedded in the app writes the audit
store, and the CLI is a subprocess: piped, or on a pseudo-terminal 80 columns wide."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import CLI, DIAMOND, ROOT, cli, free_port, write
from tests.web_helpers import wait_recorded

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
QUEUE = f"wide_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def recorded(web_app, web_fleet, orchestrator_client, start_worker_module) -> dict[str, Any]:
    """Two recorded runs on a worker whose name is as long as real ones are."""
    worker = start_worker_module(
        web_fleet.settings, f"ingest-worker-eu-west-1a-{uuid.uuid4().hex[:4]}", queues=QUEUE
    )
    store = web_app.extensions["canvasflow"].store
    ids = []
    for wf in ("nightly_customer_invoice_reconciliation", "report"):
        run = orchestrator_client.submit(
            {
                "id": wf,
                "version": "2.14.0",
                "tags": ["finance", "nightly", "eu-west-1"],
                "steps": [
                    {
                        "id": "reconcile_invoices_against_ledger",
                        "plugin": "builtin",
                        "method": "echo",
                        "queue": QUEUE,
                    },
                    {
                        "id": "flaky",
                        "plugin": "builtin",
                        "method": "fail",
                        "queue": QUEUE,
                        "retries": 1,
                        "retry_delay": 0.1,
                        "params": {
                            "times": 1,
                            "message": "the ledger service answered 503 Service Unavailable "
                            "three times in a row; it is probably being redeployed",
                        },
                        "depends_on": ["reconcile_invoices_against_ledger"],
                    },
                ],
            },
            triggered_by="scheduler-eu-west-1",
        )
        ids.append(run.id)
    for rid in ids:
        wait_recorded(store, rid, {"COMPLETED"}, timeout=60)
    return {"runs": ids, "worker": worker.hostname, "settings": web_fleet.settings}


@pytest.fixture(scope="module")
def start_worker_module(redis_url: str):
    from tests.conftest import WorkerProcess

    started: list[WorkerProcess] = []

    def start(settings: Any, name: str, **kw: Any) -> WorkerProcess:
        w = WorkerProcess(settings, name, concurrency=1, **kw)
        started.append(w)
        return w.wait_ready()

    yield start
    for w in started:
        w.stop()


def on_terminal(*args: str, settings: Any, columns: int, timeout: float = 60) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal ``columns`` wide; (exit code, what it showed)."""
    master, slave = pty.openpty()
    env = {
        **os.environ,
        **settings.as_env(),
        "PYTHONPATH": str(ROOT),
        "COLUMNS": str(columns),
        "LINES": "50",
        "TERM": "xterm",
    }
    proc = subprocess.Popen(
        [*CLI, *args], env=env, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError(f"no output for {timeout} s:\n{out.decode(errors='replace')}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, ANSI.sub("", out.decode(errors="replace"))


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_runs_and_show_piped_at_80_columns_cut_nothing(recorded) -> None:
    settings, env = recorded["settings"], {"COLUMNS": "80"}
    runs = cli("runs", "--limit", "100", settings=settings, env=env, check=True).stdout
    for rid in recorded["runs"]:
        (line,) = lines_with(runs, rid)
        assert "nightly_customer_invoice_reconciliation 2.14.0" in runs
        assert "eu-west-1, finance, nightly" in runs and "scheduler-eu-west-1" in runs
    show = cli("show", recorded["runs"][0], settings=settings, env=env, check=True).stdout
    assert lines_with(show, recorded["worker"]), show  # the whole name on one line
    assert lines_with(show, "reconcile_invoices_against_ledger"), show
    # The attempt's error is one line too: a pipe gets the text, not a layout.
    assert lines_with(show, "three times in a row; it is probably being redeployed"), show


def test_runs_and_show_on_an_80_column_terminal_keep_ids_and_worker_names_whole(
    recorded,
) -> None:
    settings = recorded["settings"]
    code, runs = on_terminal("runs", "--limit", "100", settings=settings, columns=80)
    assert code == 0, runs
    for rid in recorded["runs"]:
        assert lines_with(runs, rid), runs
    assert all(len(line) <= 80 for line in runs.splitlines()), runs
    assert "left out at 80 columns" in runs  # the less important columns, and it says so
    code, show = on_terminal("show", recorded["runs"][0], settings=settings, columns=80)
    assert code == 0, show
    assert lines_with(show, recorded["worker"]), show
    assert lines_with(show, "reconcile_invoices_against_ledger"), show
    assert all(len(line) <= 80 for line in show.splitlines()), show
    code, status = on_terminal("status", recorded["runs"][0], settings=settings, columns=80)
    assert code == 0, status
    assert lines_with(status, "reconcile_invoices_against_ledger"), status
    assert lines_with(status, recorded["runs"][0]), status
    assert all(len(line) <= 80 for line in status.splitlines()), status


@pytest.mark.parametrize("columns", ["80", "120"])
def test_a_long_error_message_is_one_line_when_piped(tmp_path: Path, columns: str) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {"CANVASFLOW_REDIS_URL": url, "COLUMNS": columns}
    proc = cli("run", write(tmp_path, "d.yaml", DIAMOND), env=env)
    assert proc.returncode == 1
    (line,) = lines_with(proc.stderr, "cannot reach Redis")
    assert line.startswith(f"error: cannot reach Redis at {url} (")
    assert line.endswith("; start Redis or set CANVASFLOW_REDIS_URL"), proc.stderr
    runs = cli(
        "runs", "--database-url", f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", env=env
    )
    assert runs.returncode == 1
    (first, *rest) = [line for line in runs.stderr.splitlines() if line.strip()]
    assert first.startswith("error:") and rest == [], runs.stderr
