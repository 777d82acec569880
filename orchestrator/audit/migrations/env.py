"""Alembic environment for the audit store, run programmatically by AuditStore.upgrade().

The store passes an open connection in ``config.attributes["connection"]``; running alembic
by hand works too with ``-x url=...`` (``alembic -c <ini> -x url=sqlite:///canvasflow.db``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from orchestrator.audit.models import metadata

VERSION_TABLE = "cf_alembic_version"  # not "alembic_version": the database may be shared


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("pass the database with -x url=... (or run `canvasflow db upgrade`)")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
