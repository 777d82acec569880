"""How a run started: the trigger that started it and its fire time or event key.

``cf_runs.trigger_type`` (since 0001) says what kind of start it was (manual, api, cli,
dashboard, clone, schedule, event...); this revision adds ``trigger_name`` (the schedule's or
event trigger's name) and ``trigger_ref`` (the fire time, ISO-8601 UTC, or the event key), and an
index for the run list filtered by trigger type. Rows written before it get NULL in both.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLE = "cf_runs"
COLUMNS = ("trigger_name", "trigger_ref")
INDEX = "ix_cf_runs_trigger_type_created"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    have = {c["name"] for c in inspector.get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        for name in COLUMNS:
            if name not in have:
                batch.add_column(sa.Column(name, sa.String(200)))
    if INDEX not in {i["name"] for i in inspector.get_indexes(TABLE)}:
        op.create_index(INDEX, TABLE, ["trigger_type", "created_at", "id"])


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if INDEX in {i["name"] for i in inspector.get_indexes(TABLE)}:
        op.drop_index(INDEX, table_name=TABLE)
    have = {c["name"] for c in inspector.get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        for name in COLUMNS:
            if name in have:
                batch.drop_column(name)
