"""The dashboard's users, tokens and login throttle (web/auth.py, web/throttle.py): a user's
generation (sessions and tokens from before a password, role or disabled change are refused) and
granted permissions, the generation a token was issued in, and the failed-login counts.

Before this revision the web process created cf_web_users and cf_web_tokens itself with
``create_all``; a database that has them keeps its rows and gains the columns. Existing users get
generation 0 and existing tokens generation 0, so they keep working; existing sessions carry no
generation and end (their users log in once more).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

NAME = sa.String(200)


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("cf_web_users"):
        op.create_table(
            "cf_web_users",
            sa.Column("username", NAME, nullable=False),
            sa.Column("password_hash", sa.String(300), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("disabled", sa.Boolean, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("updated_at", sa.Double, nullable=False),
            sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
            sa.Column("permissions", sa.String(200), nullable=False, server_default=""),
            sa.PrimaryKeyConstraint("username", name="pk_cf_web_users"),
        )
    else:
        have = {c["name"] for c in inspector.get_columns("cf_web_users")}
        with op.batch_alter_table("cf_web_users") as batch:
            if "generation" not in have:
                batch.add_column(
                    sa.Column("generation", sa.Integer, nullable=False, server_default="0")
                )
            if "permissions" not in have:
                batch.add_column(
                    sa.Column("permissions", sa.String(200), nullable=False, server_default="")
                )
    if not inspector.has_table("cf_web_tokens"):
        op.create_table(
            "cf_web_tokens",
            sa.Column("id", sa.String(16), nullable=False),
            sa.Column("username", NAME, nullable=False),
            sa.Column("name", NAME, nullable=False),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("last_used_at", sa.Double),
            sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
            sa.PrimaryKeyConstraint("id", name="pk_cf_web_tokens"),
            sa.UniqueConstraint("digest", name="uq_cf_web_tokens_digest"),
        )
        op.create_index("ix_cf_web_tokens_username", "cf_web_tokens", ["username"])
    elif "generation" not in {c["name"] for c in inspector.get_columns("cf_web_tokens")}:
        with op.batch_alter_table("cf_web_tokens") as batch:
            batch.add_column(
                sa.Column("generation", sa.Integer, nullable=False, server_default="0")
            )
    if inspector.has_table("cf_web_login_throttle"):  # made by a web process's create_all before
        return
    op.create_table(
        "cf_web_login_throttle",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("first_failure_at", sa.Double, nullable=False),
        sa.Column("last_failure_at", sa.Double, nullable=False),
        sa.Column("locked_until", sa.Double),
        sa.PrimaryKeyConstraint("scope", "subject", name="pk_cf_web_login_throttle"),
    )


def downgrade() -> None:
    op.drop_table("cf_web_login_throttle")
    with op.batch_alter_table("cf_web_tokens") as batch:
        batch.drop_column("generation")
    with op.batch_alter_table("cf_web_users") as batch:
        batch.drop_column("permissions")
        batch.drop_column("generation")
