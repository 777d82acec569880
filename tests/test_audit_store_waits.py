"""How the audit store waits: a SQLite writer sleeps in Python while another process writes (so a
gevent web process keeps serving), and a pooled PostgreSQL connection is pinged only when it sat
idle (so a busy request pays no extra round trip) yet a dead one is still replaced."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text

from orchestrator.audit import AuditStore
from orchestrator.audit import store as store_module
from orchestrator.audit.models import audit_log
from orchestrator.audit.store import SQLITE_LOCK_POLL, StoreUnavailable

pytest_plugins = ("tests.audit_fixtures",)

ROW = {
    "ts": 1.0,
    "actor": "test",
    "action": "pause",
    "target_type": "run",
    "target_id": "r1",
    "outcome": "ok",
}


def test_a_sqlite_writer_waits_for_another_writer_in_short_python_sleeps(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "audit.db"
    store = AuditStore(f"sqlite:///{path}")
    store.upgrade()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's batch holds the write lock
    naps: list[float] = []
    real_sleep = time.sleep

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            other.execute("COMMIT")
        real_sleep(seconds)

    monkeypatch.setattr(store_module.time, "sleep", nap)
    try:
        with store.begin() as conn:
            conn.execute(insert(audit_log), [ROW])
    finally:
        monkeypatch.undo()
        other.close()
    assert naps == [SQLITE_LOCK_POLL] * 3
    with store.connect() as conn:
        assert conn.execute(select(audit_log.c.actor)).scalars().all() == ["test"]
    store.dispose()


def test_a_sqlite_writer_gives_up_after_busy_timeout_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = AuditStore(f"sqlite:///{path}", busy_timeout=0.05)
    store.upgrade()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"), store.begin() as conn:
            conn.execute(insert(audit_log), [ROW])
    finally:
        other.close()
        store.dispose()


@pytest.mark.postgres
def test_a_postgres_connection_is_pinged_only_after_sitting_idle_and_a_dead_one_is_replaced(
    postgres_url: str, monkeypatch
) -> None:
    store = AuditStore(postgres_url, pool_size=1)
    pings: list[int] = []
    ping = store.engine.dialect.do_ping
    monkeypatch.setattr(store.engine.dialect, "do_ping", lambda c: pings.append(1) or ping(c))
    try:
        for _ in range(3):
            with store.connect() as conn:
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert pings == []  # used a moment ago: no round trip before the query
        other = AuditStore(postgres_url)  # another client ends the pooled connection's backend
        with other.connect() as killer:
            killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        other.dispose()
        monkeypatch.setattr(store_module, "PING_IDLE", 0.0)  # as if both had sat idle
        with store.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        assert pings  # the dead one failed its ping and was replaced
    finally:
        store.dispose()
