"""Fixtures of the audit store and recorder tests; test modules load them with
``pytest_plugins = ("tests.audit_fixtures",)``. Helpers live in tests/audit_helpers.py.

``store`` runs each test on SQLite and on PostgreSQL. Every PostgreSQL test gets its own schema
in the conftest's test database (created if missing), dropped afterwards, so it can share the
server with other suites.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from orchestrator.audit import AuditStore
from tests.conftest import POSTGRES_URL, need


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """POSTGRES_URL, with its database created on first use."""
    import psycopg

    url = make_url(POSTGRES_URL)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{url.database}"')
    except psycopg.Error as exc:
        need("PostgreSQL", f"{url.render_as_string(hide_password=True)}: {exc}")
    return POSTGRES_URL


def _pg_schema_url(base: str, schema: str) -> str:
    return (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    import psycopg

    base = request.getfixturevalue("postgres_url")
    schema = f"cf_{uuid.uuid4().hex[:10]}"
    plain = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield _pg_schema_url(base, schema)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def store(store_url: str) -> Iterator[AuditStore]:
    s = AuditStore(store_url)
    s.upgrade()
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[AuditStore]:
    s = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    s.upgrade()
    yield s
    s.dispose()
