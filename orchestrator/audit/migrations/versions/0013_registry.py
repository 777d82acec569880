"""The workflow registry, kept in the audit store too: every registered version's body.

The registry lives in Redis (``Client.register``); the recorder copies each version here, so a
Redis that lost everything gets it back from ``canvasflow recover`` (schedules, event triggers
and sub-workflow steps all need it). A version's body never changes once registered.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "cf_registry" not in have:
        op.create_table(
            "cf_registry",
            sa.Column("workflow_id", sa.String(200), nullable=False),
            sa.Column("version", sa.String(64), nullable=False),
            sa.Column("position", sa.Integer, nullable=False),
            sa.Column("body", sa.Text, nullable=False),
            sa.Column("copied_at", sa.Double, nullable=False),
            sa.PrimaryKeyConstraint("workflow_id", "version", name="pk_cf_registry"),
        )


def downgrade() -> None:
    op.drop_table("cf_registry")
