"""Initial audit store schema: definitions, runs, tags, steps, attempts, logs, events, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(64)
NAME = sa.String(200)
STATUS = sa.String(32)


def upgrade() -> None:
    op.create_table(
        "cf_workflow_definitions",
        sa.Column("workflow_id", NAME, nullable=False),
        sa.Column("digest", sa.String(32), nullable=False),
        sa.Column("version", sa.String(64), nullable=False, server_default=""),
        sa.Column("name", NAME),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", "digest", name="pk_cf_workflow_definitions"),
    )
    op.create_table(
        "cf_runs",
        sa.Column("id", ID, nullable=False),
        sa.Column("workflow_id", NAME, nullable=False, server_default=""),
        sa.Column("version", sa.String(64), nullable=False, server_default=""),
        sa.Column("definition_digest", sa.String(32)),
        sa.Column("name", NAME),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("status_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("inputs", sa.Text),
        sa.Column("priority", sa.String(16)),
        sa.Column("tags", sa.Text),
        sa.Column("triggered_by", NAME),
        sa.Column("trigger_type", sa.String(64)),
        sa.Column("sla_seconds", sa.Double),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.Column("duration", sa.Double),
        sa.Column("error", sa.Text),
        sa.Column("failed_step", NAME),
        sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("event_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cf_runs"),
    )
    op.create_index("ix_cf_runs_created", "cf_runs", ["created_at", "id"])
    op.create_index("ix_cf_runs_status_created", "cf_runs", ["status", "created_at", "id"])
    op.create_index("ix_cf_runs_workflow_created", "cf_runs", ["workflow_id", "created_at", "id"])
    op.create_index("ix_cf_runs_triggered_by_created", "cf_runs", ["triggered_by", "created_at"])
    op.create_index("ix_cf_runs_finished", "cf_runs", ["finished_at"])

    op.create_table(
        "cf_run_tags",
        sa.Column("run_id", ID, nullable=False),
        sa.Column("tag", NAME, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "tag", name="pk_cf_run_tags"),
    )
    op.create_index("ix_cf_run_tags_tag", "cf_run_tags", ["tag", "run_id"])

    op.create_table(
        "cf_steps",
        sa.Column("run_id", ID, nullable=False),
        sa.Column("step_id", NAME, nullable=False),
        sa.Column("position", sa.Integer, nullable=False, server_default="0"),
        sa.Column("plugin", NAME),
        sa.Column("method", NAME),
        sa.Column("queue", NAME),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("status_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.Column("duration", sa.Double),
        sa.Column("worker", NAME),
        sa.Column("error", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("compensation_error", sa.Text),
        sa.Column("progress", sa.Double),
        sa.Column("progress_message", sa.Text),
        sa.Column("progress_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("progress_at", sa.Double),
        sa.Column("stats", sa.Text),
        sa.Column("stats_seq", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("run_id", "step_id", name="pk_cf_steps"),
    )

    op.create_table(
        "cf_step_attempts",
        sa.Column("run_id", ID, nullable=False),
        sa.Column("step_id", NAME, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("status_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("worker", NAME),
        sa.Column("queue", NAME),
        sa.Column("task_id", ID),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.Column("duration", sa.Double),
        sa.Column("input", sa.Text),
        sa.Column("output", sa.Text),
        sa.Column("output_size", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("traceback", sa.Text),
        sa.Column("stats", sa.Text),
        sa.PrimaryKeyConstraint("run_id", "step_id", "attempt", name="pk_cf_step_attempts"),
    )
    op.create_index("ix_cf_step_attempts_started", "cf_step_attempts", ["started_at"])

    op.create_table(
        "cf_step_logs",
        sa.Column("run_id", ID, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("step_id", NAME, nullable=False, server_default=""),
        sa.Column("ts", sa.Double, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("entity_tag", NAME),
        sa.Column("entity_route", sa.Text),
        sa.Column("entity_id", NAME),
        sa.Column("entity_type", NAME),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_cf_step_logs"),
    )
    op.create_index("ix_cf_step_logs_step", "cf_step_logs", ["run_id", "step_id", "seq"])

    op.create_table(
        "cf_events",
        sa.Column("run_id", ID, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("step_id", NAME, nullable=False, server_default=""),
        sa.Column("status", STATUS, nullable=False, server_default=""),
        sa.Column("ts", sa.Double, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("stream_id", sa.String(40)),
        sa.Column("recorded_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_cf_events"),
    )

    op.create_table(
        "cf_audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("ts", sa.Double, nullable=False),
        sa.Column("actor", NAME, nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_id", NAME, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_cf_audit_log"),
    )
    op.create_index("ix_cf_audit_log_target", "cf_audit_log", ["target_id", "ts"])
    op.create_index("ix_cf_audit_log_ts", "cf_audit_log", ["ts"])


def downgrade() -> None:
    for table in (
        "cf_audit_log",
        "cf_events",
        "cf_step_logs",
        "cf_step_attempts",
        "cf_steps",
        "cf_run_tags",
        "cf_runs",
        "cf_workflow_definitions",
    ):
        op.drop_table(table)
