"""Log lines arrive in batches: one event (one seq) carries many lines, so a line is keyed by
(run, seq, line) instead of (run, seq).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: PostgreSQL alters in place, SQLite copies the table (it cannot change a key).
    with op.batch_alter_table("cf_step_logs") as batch:
        batch.add_column(sa.Column("line", sa.Integer, nullable=False, server_default="0"))
        batch.drop_constraint("pk_cf_step_logs", type_="primary")
        batch.create_primary_key("pk_cf_step_logs", ["run_id", "seq", "line"])


def downgrade() -> None:
    op.execute("DELETE FROM cf_step_logs WHERE line > 0")
    with op.batch_alter_table("cf_step_logs") as batch:
        batch.drop_constraint("pk_cf_step_logs", type_="primary")
        batch.create_primary_key("pk_cf_step_logs", ["run_id", "seq"])
        batch.drop_column("line")
