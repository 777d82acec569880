"""Celery task history (fleet inspection): the cf_celery_tasks table.

Before this revision the web process created the table itself with ``create_all``; a database
that already has it keeps its rows, and only the indexes it lacks are added.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = "cf_celery_tasks"
ID = sa.String(64)
NAME = sa.String(200)
INDEXES = {
    "ix_cf_celery_tasks_ts": ["ts", "uuid"],
    "ix_cf_celery_tasks_state_ts": ["state", "ts"],
    "ix_cf_celery_tasks_worker_ts": ["worker", "ts"],
    "ix_cf_celery_tasks_worker_state": ["worker", "state"],
    "ix_cf_celery_tasks_name_ts": ["name", "ts"],
    "ix_cf_celery_tasks_run": ["run_id"],
    "ix_cf_celery_tasks_root": ["root_id"],
    "ix_cf_celery_tasks_parent": ["parent_id"],
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(TABLE):
        op.create_table(
            TABLE,
            sa.Column("uuid", ID, nullable=False),
            sa.Column("name", NAME),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("state_ts", sa.Double, nullable=False),
            sa.Column("ts", sa.Double, nullable=False),
            sa.Column("worker", NAME),
            sa.Column("queue", NAME),
            sa.Column("args", sa.Text),
            sa.Column("kwargs", sa.Text),
            sa.Column("result", sa.Text),
            sa.Column("exception", sa.Text),
            sa.Column("traceback", sa.Text),
            sa.Column("retries", sa.Integer, nullable=False, server_default="0"),
            sa.Column("eta", sa.String(64)),
            sa.Column("expires", sa.String(64)),
            sa.Column("parent_id", ID),
            sa.Column("root_id", ID),
            sa.Column("run_id", ID),
            sa.Column("step_id", NAME),
            sa.Column("sent_at", sa.Double),
            sa.Column("received_at", sa.Double),
            sa.Column("started_at", sa.Double),
            sa.Column("succeeded_at", sa.Double),
            sa.Column("failed_at", sa.Double),
            sa.Column("retried_at", sa.Double),
            sa.Column("revoked_at", sa.Double),
            sa.Column("rejected_at", sa.Double),
            sa.Column("runtime", sa.Double),
            sa.Column("updated_at", sa.Double, nullable=False),
            sa.PrimaryKeyConstraint("uuid", name="pk_cf_celery_tasks"),
        )
        existing: set[str] = set()
    else:
        existing = {ix["name"] for ix in inspector.get_indexes(TABLE) if ix["name"]}
    for name, columns in INDEXES.items():
        if name not in existing:
            op.create_index(name, TABLE, columns)


def downgrade() -> None:
    op.drop_table(TABLE)
