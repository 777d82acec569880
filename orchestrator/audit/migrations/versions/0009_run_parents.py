"""Child runs and run results: the cf_runs columns of sub-workflow steps and workflow outputs.

A sub-workflow step starts a child run; the store records its parent run and step
(``parent_run``, indexed with ``created_at`` for "the children of run X", and ``parent_step``),
and every run's ``result`` (JSON: its definition's outputs, evaluated when it completed).
Rows written before this revision get NULLs: top-level runs without a result.

Revision ID: 0009
Revises: 0008 (the lead re-chains it after 0008_step_items)
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLE = "cf_runs"
INDEX = "ix_cf_runs_parent"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    have = {c["name"] for c in inspector.get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        if "parent_run" not in have:
            batch.add_column(sa.Column("parent_run", sa.String(64)))
        if "parent_step" not in have:
            batch.add_column(sa.Column("parent_step", sa.String(200)))
        if "result" not in have:
            batch.add_column(sa.Column("result", sa.Text))
    if INDEX not in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(TABLE)}:
        op.create_index(INDEX, TABLE, ["parent_run", "created_at"])


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if INDEX in {i["name"] for i in inspector.get_indexes(TABLE)}:
        op.drop_index(INDEX, table_name=TABLE)
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        for name in ("result", "parent_step", "parent_run"):
            if name in have:
                batch.drop_column(name)
