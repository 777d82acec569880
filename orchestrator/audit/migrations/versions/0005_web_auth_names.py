"""The dashboard's account tables that revision 0004 adopted get the constraint names a fresh store
has.

Before 0004 the web process created cf_web_users, cf_web_tokens and cf_web_login_throttle itself
(``create_all`` without the store's naming convention); 0004 kept those tables and their rows, and
with them the database's own names for their keys (``cf_web_tokens_digest_key`` on PostgreSQL,
none on SQLite). A later migration that names a key would then fail on those stores only. The
keys are renamed (PostgreSQL) or the table is copied with them (SQLite); a table whose keys have
the right names is left alone. Nothing to undo on downgrade: the names are the ones a fresh store
has at every revision.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

NAME = sa.String(200)


def _tables() -> list[sa.Table]:
    """The account tables as revision 0004 creates them (named keys)."""
    meta = sa.MetaData()
    return [
        sa.Table(
            "cf_web_users",
            meta,
            sa.Column("username", NAME, nullable=False),
            sa.Column("password_hash", sa.String(300), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("disabled", sa.Boolean, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("updated_at", sa.Double, nullable=False),
            sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
            sa.Column("permissions", sa.String(200), nullable=False, server_default=""),
            sa.PrimaryKeyConstraint("username", name="pk_cf_web_users"),
        ),
        sa.Table(
            "cf_web_tokens",
            meta,
            sa.Column("id", sa.String(16), nullable=False),
            sa.Column("username", NAME, nullable=False),
            sa.Column("name", NAME, nullable=False),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("last_used_at", sa.Double),
            sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
            sa.PrimaryKeyConstraint("id", name="pk_cf_web_tokens"),
            sa.UniqueConstraint("digest", name="uq_cf_web_tokens_digest"),
            sa.Index("ix_cf_web_tokens_username", "username"),
        ),
        sa.Table(
            "cf_web_login_throttle",
            meta,
            sa.Column("scope", sa.String(16), nullable=False),
            sa.Column("subject", sa.String(256), nullable=False),
            sa.Column("failures", sa.Integer, nullable=False),
            sa.Column("first_failure_at", sa.Double, nullable=False),
            sa.Column("last_failure_at", sa.Double, nullable=False),
            sa.Column("locked_until", sa.Double),
            sa.PrimaryKeyConstraint("scope", "subject", name="pk_cf_web_login_throttle"),
        ),
    ]


def _renames(inspector: sa.Inspector, table: sa.Table) -> list[tuple[str | None, str]]:
    """(name the database has, name wanted) of each key of ``table`` whose name differs."""
    out = []
    pk = inspector.get_pk_constraint(table.name)
    if pk.get("name") != table.primary_key.name:
        out.append((pk.get("name"), str(table.primary_key.name)))
    have = {
        tuple(u["column_names"]): u["name"] for u in inspector.get_unique_constraints(table.name)
    }
    for c in table.constraints:
        if isinstance(c, sa.UniqueConstraint):
            name = have.get(tuple(col.name for col in c.columns))
            if name != c.name:
                out.append((name, str(c.name)))
    return out


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table in _tables():
        renames = _renames(inspector, table)
        if not renames:
            continue
        if bind.dialect.name == "postgresql":
            for old, new in renames:
                op.execute(f'ALTER TABLE {table.name} RENAME CONSTRAINT "{old}" TO "{new}"')
        else:  # SQLite cannot rename a constraint: copy the table with the named keys
            with op.batch_alter_table(table.name, recreate="always", copy_from=table):
                pass


def downgrade() -> None:
    pass
