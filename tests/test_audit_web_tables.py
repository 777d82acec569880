"""The dashboard's account tables (users, tokens, login throttle) come from the audit store's
migrations, on SQLite and PostgreSQL: a fresh store gets them, a store whose tables an older
dashboard made with ``create_all`` keeps its accounts and ends up with the schema a fresh one has,
and the migrations go down and up again. The web never creates a table itself."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Boolean, Column, Double, MetaData, String, Table, insert, inspect
from werkzeug.security import generate_password_hash

from orchestrator.audit import AuditStore
from orchestrator.audit.models import metadata
from orchestrator.audit.store import HEAD, MIGRATIONS, VERSION_TABLE
from web.auth import Users
from web.settings import WebSettings
from web.throttle import Throttle

pytest_plugins = ("tests.audit_fixtures",)

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT_TABLES = {"cf_web_users", "cf_web_tokens", "cf_web_login_throttle"}


@pytest.fixture
def bare(store_url: str) -> Iterator[AuditStore]:
    """A store that was never upgraded."""
    s = AuditStore(store_url)
    yield s
    s.dispose()


def schema_drift(store: AuditStore) -> list[object]:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        return list(compare_metadata(ctx, metadata))


def tables(store: AuditStore) -> set[str]:
    with store.engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def downgrade(store: AuditStore, revision: str) -> None:
    """``alembic downgrade`` on the store's connection, the way AuditStore.upgrade() runs upgrades."""
    with store.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", MIGRATIONS)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def create_all_of_an_older_dashboard(store: AuditStore) -> None:
    """The tables web/auth.py made with ``create_all`` before revision 0004, with an account."""
    old = MetaData()  # no naming convention: the database names the keys
    users = Table(
        "cf_web_users",
        old,
        Column("username", String(200), primary_key=True),
        Column("password_hash", String(300), nullable=False),
        Column("role", String(16), nullable=False),
        Column("disabled", Boolean, nullable=False, default=False),
        Column("created_at", Double, nullable=False),
        Column("updated_at", Double, nullable=False),
    )
    tokens = Table(
        "cf_web_tokens",
        old,
        Column("id", String(16), primary_key=True),
        Column("username", String(200), nullable=False, index=True),
        Column("name", String(200), nullable=False),
        Column("digest", String(64), nullable=False, unique=True),
        Column("created_at", Double, nullable=False),
        Column("last_used_at", Double),
    )
    old.create_all(store.engine)
    with store.begin() as conn:
        conn.execute(
            insert(users),
            {
                "username": "olde",
                "password_hash": generate_password_hash("olde-password"),
                "role": "operator",
                "disabled": False,
                "created_at": 1.0,
                "updated_at": 1.0,
            },
        )
        conn.execute(
            insert(tokens),
            {
                "id": "t1",
                "username": "olde",
                "name": "ci",
                "digest": hashlib.sha256(b"cft_old-token").hexdigest(),
                "created_at": 1.0,
            },
        )


def test_a_fresh_store_gets_the_account_tables_from_its_migrations(bare):
    assert not ACCOUNT_TABLES & tables(bare)
    assert bare.upgrade() == HEAD
    assert ACCOUNT_TABLES <= tables(bare) and schema_drift(bare) == []
    users = Users(bare)
    users.put("ann", password="ann-password", role="admin")
    assert users.verify("ann", "ann-password").role == "admin"
    throttle = Throttle(bare, WebSettings.from_env({}, login_max_failures=1))
    assert throttle.failed({"user": "ann"}, 100.0) is not None


def test_an_older_dashboards_tables_are_adopted_with_their_accounts(bare):
    bare.upgrade("0003")
    create_all_of_an_older_dashboard(bare)
    assert bare.upgrade() == HEAD
    assert schema_drift(bare) == []  # the keys have the names a fresh store gives them
    users = Users(bare)
    user = users.verify("olde", "olde-password")
    assert user is not None and user.role == "operator" and user.permissions == frozenset()
    assert users.user_for_token("cft_old-token") == user
    users.put("olde", password="new-password")
    assert users.user_for_token("cft_old-token") is None  # a password change ends the token


def test_the_migrations_go_down_and_up_again_and_keep_the_accounts(bare):
    bare.upgrade()
    Users(bare).put("ann", password="ann-password", role="viewer")
    downgrade(bare, "0003")
    assert bare.revision() == "0003"
    # The accounts are back in the shape the dashboards of 0003 made and read themselves.
    assert "cf_web_login_throttle" not in tables(bare)
    with bare.engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("cf_web_users")}
    assert "generation" not in columns and "permissions" not in columns
    downgrade(bare, "base")
    assert bare.revision() is None
    assert bare.upgrade() == HEAD and schema_drift(bare) == []
    assert Users(bare).verify("ann", "ann-password").role == "viewer"


def test_the_web_creates_no_table_itself():
    sources = {p.name: p.read_text() for p in (ROOT / "web").glob("*.py")}
    assert [name for name, text in sources.items() if "create_all" in text] == []
