"""The SQL audit store: engine, migrations, idempotent event batches, operator audit log.

``AuditStore(url)`` works with ``sqlite:///path.db`` (the default, WAL mode) and
``postgresql+psycopg://...``. Nothing connects until the store is first used; every database
error reaches the caller as a :class:`StoreError` that names the URL (password masked) and
says what to do.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    exc,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from orchestrator.audit.events import Event, Lookups
from orchestrator.audit.models import audit_log, celery_tasks
from orchestrator.audit.projection import apply_batch
from orchestrator.errors import StoreError

log = logging.getLogger(__name__)

HEAD = "0013"  # the newest migration; a test checks it against migrations/versions
MIGRATIONS = "orchestrator.audit:migrations"
VERSION_TABLE = "cf_alembic_version"
# PostgreSQL: a pooled connection idle this long is pinged before use (_ping_when_idle).
PING_IDLE = 10.0
# SQLite: how long the driver waits for a lock before a writer sleeps in Python and tries again.
SQLITE_LOCK_POLL = 0.005
_MIGRATION_LOCK = 7_411_270  # pg_advisory_xact_lock key: one upgrade at a time per database


class StoreUnavailable(StoreError):
    """Raised when the audit store cannot be reached or is busy; retrying later may succeed."""


class StoreNotReady(StoreError):
    """Raised when the database is reachable but its schema is missing or out of date."""


def normalize_url(url: str | URL) -> URL:
    """A SQLAlchemy URL, with bare ``postgresql://`` mapped to the psycopg 3 driver we ship."""
    u = make_url(url) if isinstance(url, str) else url
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def mask(url: str | URL) -> str:
    try:
        return normalize_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


class AuditStore:
    """One database: ``upgrade()`` it, ``apply()`` event batches to it, read it with queries."""

    def __init__(
        self,
        url: str | URL = "sqlite:///canvasflow.db",
        *,
        busy_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        pool_size: int = 5,
        echo: bool = False,
    ) -> None:
        try:
            self.url = normalize_url(url)
        except exc.ArgumentError as e:
            raise StoreError(
                f"CANVASFLOW_DATABASE_URL {str(url)!r} is not a database URL: {e}"
            ) from None
        self.display_url = mask(self.url)
        self.dialect = self.url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise StoreError(
                f"audit store {self.display_url}: only sqlite and postgresql are supported"
            )
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            db = self.url.database or ""
            if db and db != ":memory:" and not db.startswith("file:"):
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            if db in ("", ":memory:"):
                # One connection for every thread (and greenlet): each new one would be a new,
                # empty database (the dashboard's accounts when it has no audit store).
                kwargs["poolclass"] = StaticPool
            # The driver's own wait for a lock is short: a longer one (busy_timeout) is a loop in
            # _sqlite_pragmas that sleeps in Python, so a gevent process keeps serving meanwhile.
            kwargs["connect_args"] = {"timeout": SQLITE_LOCK_POLL, "check_same_thread": False}
        else:
            kwargs.update(
                pool_size=pool_size, connect_args={"connect_timeout": max(1, int(connect_timeout))}
            )
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except ModuleNotFoundError as e:
            raise StoreError(
                f"cannot open the audit store at {self.display_url}: {e}; for PostgreSQL "
                "install the driver with pip install 'canvasflow[postgres]'"
            ) from None
        except Exception as e:  # a bad option in the URL
            raise StoreError(f"cannot open the audit store at {self.display_url}: {e}") from None
        if self.dialect == "sqlite":
            _sqlite_pragmas(self.engine, busy_timeout)
        else:
            _ping_when_idle(self.engine)

        # Writers take the database lock up front on SQLite (BEGIN IMMEDIATE), so two recorders
        # never fail half-way through a batch on a lock upgrade.
        self.writer = self.engine.execution_options(cf_immediate=True)

    def __repr__(self) -> str:
        return f"<AuditStore {self.display_url}>"

    # -- connections --------------------------------------------------------------------------

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A read connection; database errors become StoreError."""
        with self.errors(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction, committed on success."""
        with self.errors(), self.writer.begin() as conn:
            yield conn

    @contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except (exc.OperationalError, exc.InterfaceError, exc.ProgrammingError) as e:
            detail = _first_line(e)
            if "no such table" in detail or ("does not exist" in detail and "relation" in detail):
                raise self._not_ready(detail) from e
            if isinstance(e, exc.ProgrammingError):
                raise StoreError(f"audit store {self.display_url}: {detail}") from e
            raise StoreUnavailable(
                f"cannot use the audit store at {self.display_url}: {detail}. Check that the database "
                "is running and reachable, and that CANVASFLOW_DATABASE_URL points at it."
            ) from e

    def _not_ready(self, detail: str) -> StoreNotReady:
        return StoreNotReady(
            f"the audit store at {self.display_url} has no canvasflow tables or an old "
            f"schema ({detail}); run `canvasflow db upgrade` first"
        )

    # -- schema -------------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> str:
        """Run the Alembic migrations up to ``revision``; safe to call from several processes."""
        from alembic import command
        from alembic.config import Config

        with self.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg = Config()
            cfg.set_main_option("script_location", MIGRATIONS)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return self.revision() or ""

    def revision(self) -> str | None:
        """The schema revision the database is at, or None before the first upgrade."""
        from alembic.migration import MigrationContext

        with self.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return ctx.get_current_revision()

    def missing_file(self) -> Path | None:
        """The SQLite file of this store when it does not exist (connecting would create it,
        empty), else None."""
        db = (self.url.database or "") if self.dialect == "sqlite" else ""
        if not db or db == ":memory:" or db.startswith("file:"):
            return None
        path = Path(db).expanduser().resolve()
        return None if path.exists() else path

    def check(self) -> None:
        """Raise StoreUnavailable / StoreNotReady unless the store is reachable and up to date.
        A missing SQLite file is reported, not created."""
        missing = self.missing_file()
        if missing is not None:
            raise StoreNotReady(
                f"no audit store at {self.display_url}: {missing} does not exist. Point "
                "CANVASFLOW_DATABASE_URL (or --database-url) at your fleet's store (while "
                "`canvasflow demo` runs, commands without settings use its store), or create an "
                "empty one there with `canvasflow db upgrade`"
            )
        current = self.revision()
        if current != HEAD:
            raise self._not_ready(f"schema revision {current or 'none'}, expected {HEAD}")

    def dispose(self) -> None:
        self.engine.dispose()

    # -- writes -------------------------------------------------------------------------------

    def apply(
        self, batch: Sequence[Event], lookups: Lookups | None = None, *, retries: int = 3
    ) -> list[Event]:
        """Record a batch in one transaction; returns the events that were new.

        Applying an event that is already recorded changes nothing. A deadlock or a lost race
        with another recorder rolls the transaction back and tries again.
        """
        attempt = 0
        while True:
            try:
                with self.errors(), self.writer.begin() as conn:
                    return apply_batch(conn, batch, lookups or Lookups(), time.time())
            except (exc.IntegrityError, StoreUnavailable) as e:
                attempt += 1
                transient = isinstance(e, exc.IntegrityError) or _is_conflict(e)
                if not transient or attempt > retries:
                    if isinstance(e, exc.IntegrityError):
                        raise StoreError(f"audit store {self.display_url}: {e.orig}") from e
                    raise
                log.info("batch conflicted with another writer (%s); retrying", e)
                time.sleep(0.01 * attempt)

    def record_action(
        self,
        *,
        actor: str,
        action: str,
        target_id: str,
        target_type: str = "run",
        reason: str | None = None,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> int:
        """Append one operator action (who, what, on what, why, with what outcome)."""
        row = {
            "ts": ts or time.time(),
            "actor": actor,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "reason": reason,
            "outcome": outcome,
            "detail": json.dumps(detail) if detail is not None else None,
        }
        with self.begin() as conn:
            return append_action(conn, row)


def append_action(conn: Connection, row: dict[str, Any]) -> int:
    """Append one row to the operator audit log in the caller's transaction, so that a change and
    its record commit together (web/auth.py, web/throttle.py); returns its id."""
    return int(conn.execute(insert(audit_log).returning(audit_log.c.id), row).scalar_one())


def prune_celery_tasks(
    engine: Engine, cutoff: float, *, batch_size: int = 500, dry_run: bool = False
) -> int:
    """Delete the Celery task history (``cf_celery_tasks``) first seen before ``cutoff`` (unix
    seconds), ``batch_size`` rows per short transaction; returns how many rows went (or would go)."""
    old = celery_tasks.c.ts < cutoff
    if dry_run:
        with engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(celery_tasks).where(old)).scalar_one()
            )
    total = 0
    while True:
        with engine.begin() as conn:
            ids = select(celery_tasks.c.uuid).where(old).limit(batch_size).scalar_subquery()
            n = int(
                conn.execute(delete(celery_tasks).where(celery_tasks.c.uuid.in_(ids))).rowcount or 0
            )
        total += n
        if n < batch_size:
            return total


def _is_conflict(e: BaseException) -> bool:
    msg = _first_line(e.__cause__).lower() if e.__cause__ else ""
    return "deadlock" in msg or "could not serialize" in msg


def _first_line(e: BaseException) -> str:
    text_ = str(getattr(e, "orig", None) or e).strip()
    return text_.splitlines()[0] if text_ else type(e).__name__


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled PostgreSQL connection before use only if it sat idle for PING_IDLE seconds.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: a round trip before every query of a
    request, and under load each round trip of the web process waits for its turn on the loop (the
    run list spent as long on its ping as on its query). A connection used within the last few
    seconds is alive unless the server went away just then; that query fails, the pool discards
    the connection (a disconnect error) and the next checkout connects anew."""

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_conn: Any, record: Any) -> None:
        record.info["cf_used"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["cf_used"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("cf_used", 0.0) < PING_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as e:  # noqa: BLE001 - whatever the driver raises, the connection is gone
            raise exc.DisconnectionError(f"stale connection: {e}") from e  # the pool connects anew


def _sqlite_pragmas(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event issue BEGIN itself (pysqlite's implicit BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(
            f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}"
        )  # the first switch to WAL locks
        cur.execute("PRAGMA journal_mode = WAL")  # readers never wait for the recorder
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_LOCK_POLL * 1000)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("cf_immediate")
        if not immediate:
            conn.exec_driver_sql("BEGIN")
            return
        # A writer waits here for another process's write (the recorder's batch). SQLite's own
        # busy wait sleeps in C, holding the only thread of a gevent process, every request and
        # socket with it: wait in short polls and sleep between them in Python instead (under
        # gevent the sleep lets the loop run).
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except exc.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
            time.sleep(SQLITE_LOCK_POLL)
