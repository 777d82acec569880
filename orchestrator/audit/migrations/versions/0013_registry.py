"""The workflow registry, kept in the audit store too: every registered version's body; and an
index on cf_runs (trigger_ref, trigger_name), by which an event key finds its earlier run after
a Redis loss (orchestrator/engine/publish.py).

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
    have_ix = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("cf_runs")}
    if "ix_cf_runs_trigger_ref" not in have_ix:
        op.create_index("ix_cf_runs_trigger_ref", "cf_runs", ["trigger_ref", "trigger_name"])


def downgrade() -> None:
    op.drop_index("ix_cf_runs_trigger_ref", table_name="cf_runs")
    op.drop_table("cf_registry")
