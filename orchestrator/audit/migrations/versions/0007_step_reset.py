"""A step's start and end after an operator retry: the cf_steps columns that say which attempts
count.

An operator retry resets a step to PENDING; its start and end are then those of its attempts
after the retry, not the span since its first attempt (docs/audit-store.md, "Steps after an
operator retry"). The recorder keeps, per step, the seq of the newest retry that reset it
(``reset_seq``) and how many attempts the step had before it (``reset_attempts``), so that the
events of the earlier attempts, in whatever order they arrive, no longer move the step's times.

Rows written before this revision get 0 and 0 (no reset): their times stay as recorded.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLE = "cf_steps"
COLUMNS = ("reset_seq", "reset_attempts")


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        for name in COLUMNS:
            if name not in have:
                batch.add_column(sa.Column(name, sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        for name in COLUMNS:
            if name in have:
                batch.drop_column(name)
