"""Outgoing notifications: webhook endpoints, their deliveries and every delivery attempt.

Endpoints are fleet settings (never definition fields): URL, secret, events, workflow and tag
filters, payload format. A delivery's id is derived from (endpoint, run, event, status seq), so a
recorder that re-reads an event creates no second delivery; status "dead" is the dead-letter
list (docs/operations.md, "Notifications").

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "cf_notify_endpoints" not in have:
        op.create_table(
            "cf_notify_endpoints",
            sa.Column("id", sa.String(32), nullable=False),
            sa.Column("url", sa.Text, nullable=False),
            sa.Column("secret", sa.String(128), nullable=False),
            sa.Column("events", sa.Text, nullable=False),
            sa.Column("workflows", sa.Text, nullable=False),
            sa.Column("tags", sa.Text, nullable=False),
            sa.Column("format", sa.String(16), nullable=False),
            sa.Column("description", sa.Text),
            sa.Column("enabled", sa.Boolean, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("created_by", sa.String(200)),
            sa.PrimaryKeyConstraint("id", name="pk_cf_notify_endpoints"),
        )
    if "cf_notify_deliveries" not in have:
        op.create_table(
            "cf_notify_deliveries",
            sa.Column("id", sa.String(64), nullable=False),
            sa.Column("endpoint_id", sa.String(32), nullable=False),
            sa.Column("run_id", sa.String(64), nullable=False),
            sa.Column("event", sa.String(32), nullable=False),
            sa.Column("seq", sa.Integer, nullable=False),
            sa.Column("workflow_id", sa.String(200)),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sa.Column("attempt_limit", sa.Integer, nullable=False),
            sa.Column("payload", sa.Text, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("updated_at", sa.Double, nullable=False),
            sa.Column("claimed_until", sa.Double),
            sa.Column("next_attempt_at", sa.Double),
            sa.Column("delivered_at", sa.Double),
            sa.Column("last_status_code", sa.Integer),
            sa.Column("last_error", sa.Text),
            sa.Column("replays", sa.Integer, nullable=False, server_default="0"),
            sa.PrimaryKeyConstraint("id", name="pk_cf_notify_deliveries"),
        )
        op.create_index(
            "ix_cf_notify_deliveries_endpoint_created",
            "cf_notify_deliveries",
            ["endpoint_id", "created_at"],
        )
        op.create_index(
            "ix_cf_notify_deliveries_status_updated",
            "cf_notify_deliveries",
            ["status", "updated_at"],
        )
    if "cf_notify_attempts" not in have:
        op.create_table(
            "cf_notify_attempts",
            sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
            sa.Column("delivery_id", sa.String(64), nullable=False),
            sa.Column("attempt", sa.Integer, nullable=False),
            sa.Column("at", sa.Double, nullable=False),
            sa.Column("status_code", sa.Integer),
            sa.Column("error", sa.Text),
            sa.Column("duration", sa.Double, nullable=False),
            sa.PrimaryKeyConstraint("id", name="pk_cf_notify_attempts"),
        )
        op.create_index(
            "ix_cf_notify_attempts_delivery", "cf_notify_attempts", ["delivery_id", "attempt"]
        )


def downgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    for name in ("cf_notify_attempts", "cf_notify_deliveries", "cf_notify_endpoints"):
        if name in have:
            op.drop_table(name)
