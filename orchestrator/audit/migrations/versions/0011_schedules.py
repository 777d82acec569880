"""Schedules (issue 16): cf_schedules, one row per schedule trigger an operator paused or
resumed or a scheduler fired: its paused flag (which must survive a Redis restart) and its last
fire time (the cursor a scheduler falls back to when Redis lost its own).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TABLE = "cf_schedules"


def upgrade() -> None:
    if TABLE in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        TABLE,
        sa.Column("workflow_id", sa.String(200), nullable=False),
        sa.Column("trigger_name", sa.String(200), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("paused_by", sa.String(200)),
        sa.Column("paused_at", sa.Double),
        sa.Column("reason", sa.Text),
        sa.Column("last_fire", sa.Double),
        sa.Column("last_run_id", sa.String(64)),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", "trigger_name", name="pk_cf_schedules"),
    )


def downgrade() -> None:
    if TABLE in sa.inspect(op.get_bind()).get_table_names():
        op.drop_table(TABLE)
