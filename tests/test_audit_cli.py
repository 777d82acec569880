"""The audit store's commands, run through the real `canvasflow` click group."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from orchestrator.audit import AuditStore
from orchestrator.audit.store import HEAD
from orchestrator.cli.main import main
from tests.audit_helpers import mixed_runs


@pytest.fixture
def db_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = AuditStore(url)
    store.upgrade()
    evs, lk = mixed_runs(6)
    store.apply(evs, lk)
    store.dispose()
    return url


def invoke(*args: str, url: str | None = None) -> str:
    env = {"CANVASFLOW_DATABASE_URL": url} if url else {}
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_db_upgrade_creates_then_reports_the_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert f"upgraded from empty to revision {HEAD}" in invoke("db", "upgrade", url=url)
    assert f"already at revision {HEAD}" in invoke("db", "upgrade", "--database-url", url)


def test_runs_lists_newest_first_with_filters(db_url):
    out = invoke("runs", url=db_url)
    assert out.index("run005") < out.index("run000")
    failed = invoke("runs", "--status", "FAILED", url=db_url)
    assert "run002" in failed and "run000" not in failed
    page = invoke("runs", "--limit", "2", url=db_url)
    assert "--cursor" in page


def test_show_prints_the_timeline_with_attempts_errors_and_last_logs(db_url):
    out = invoke("show", "run002", url=db_url)
    for text in ("FAILED", "check", "boom 2", "#1", "#2", "CANCELLED"):
        assert text in out
    assert "load line" in invoke("show", "run000", url=db_url)


def test_logs_prints_a_steps_lines(db_url):
    out = invoke("logs", "run000", "load", url=db_url)
    assert out.count("load line") == 3


def test_prune_removes_old_finished_runs(db_url):
    assert "6 runs finished" in invoke("prune", "--older-than", "1d", "--dry-run", url=db_url)
    assert "removed 6 runs" in invoke("prune", "--older-than", "1d", url=db_url)


def test_an_unknown_run_and_a_missing_schema_are_one_line_errors(db_url, tmp_path):
    result = CliRunner().invoke(main, ["show", "nope"], env={"CANVASFLOW_DATABASE_URL": db_url})
    assert result.exit_code == 1 and "unknown run 'nope'" in result.output
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    result = CliRunner().invoke(main, ["runs"], env={"CANVASFLOW_DATABASE_URL": empty})
    assert result.exit_code == 1 and "canvasflow db upgrade" in result.output


def test_show_on_an_80_column_terminal_breaks_its_header_between_fields(db_url, monkeypatch):
    # The walk of issue 17 found "finished 2026-12-03 \n17:06:57" at 80 columns.
    from orchestrator.audit import cli as audit_cli

    monkeypatch.setattr(audit_cli, "console", audit_cli.CliConsole(width=80))
    lines = invoke("show", "run002", url=db_url).splitlines()
    header = lines[1:3]
    assert header[0].startswith("created ") and header[1].startswith(("finished ", "duration "))
    fields = "  ".join(header).split("  ")
    for name in ("created", "started", "finished", "duration"):
        (field,) = [f for f in fields if f.startswith(name + " ")]
        assert field in header[0] or field in header[1], (field, header)
    assert all(len(line) <= 80 for line in header)


def test_fields_line_starts_a_new_line_between_fields_only():
    from orchestrator.audit.cli import fields_line

    fields = ["transactional_update 1.0.0", "run d58a528ae24967df", "FAILED", "6/6 steps (100%)"]
    assert fields_line([*fields, "577 ms"], 80).plain == "  ".join(fields) + "\n577 ms"
    assert fields_line([*fields, "", "577 ms"], 10_000).plain == "  ".join([*fields, "577 ms"])
    assert fields_line(["a" * 30, "b"], 20).plain == "a" * 30 + "\nb"
