"""Items of mapped steps: the cf_steps columns that tie an item row to its mapped step.

An item ``i`` of the mapped step ``resize`` is recorded as an ordinary step row whose id is
``resize[i]`` (its attempts and log lines as a step's). This revision adds to ``cf_steps``:

- ``item_of`` (the mapped step's id) and ``item_index`` (``i``), both NULL on a real step, filled
  by the recorder from the id (``^(.+)\\[(\\d+)\\]$``);
- ``items_total`` on the mapped step's own row, from its ``step_mapped`` event (NULL until the
  step expands);
- an index on (run_id, item_of, status): a run's real steps (``item_of IS NULL``), a mapped
  step's counts by status (one GROUP BY) and its items filtered by status are range scans.

Rows written before this revision are real steps (every column NULL); an item id recorded by an
older recorder is filled here from its id.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-22
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLE = "cf_steps"
INDEX = "ix_cf_steps_run_id_item_of_status"
ITEM_ID = re.compile(r"^(.+)\[(\d+)\]$")
BATCH = 500


def upgrade() -> None:
    bind = op.get_bind()
    insp = sa.inspect(bind)
    have = {c["name"] for c in insp.get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        if "item_of" not in have:
            batch.add_column(sa.Column("item_of", sa.String(200), nullable=True))
        if "item_index" not in have:
            batch.add_column(sa.Column("item_index", sa.Integer, nullable=True))
        if "items_total" not in have:
            batch.add_column(sa.Column("items_total", sa.Integer, nullable=True))
    if INDEX not in {i["name"] for i in sa.inspect(bind).get_indexes(TABLE)}:
        op.create_index(INDEX, TABLE, ["run_id", "item_of", "status"])
    # Item rows an older recorder wrote (ids that end in "[n]"): fill their columns.
    t = sa.table(
        TABLE,
        sa.column("run_id", sa.String),
        sa.column("step_id", sa.String),
        sa.column("item_of", sa.String),
        sa.column("item_index", sa.Integer),
    )
    rows = bind.execute(
        sa.select(t.c.run_id, t.c.step_id).where(t.c.step_id.like("%]"), t.c.item_of.is_(None))
    ).all()
    fills = []
    for run_id, step_id in rows:
        m = ITEM_ID.match(step_id)
        if m:
            fills.append({"k_run": run_id, "k_step": step_id, "v_of": m[1], "v_index": int(m[2])})
    stmt = (
        sa.update(t)
        .where(t.c.run_id == sa.bindparam("k_run"), t.c.step_id == sa.bindparam("k_step"))
        .values(item_of=sa.bindparam("v_of"), item_index=sa.bindparam("v_index"))
    )
    for i in range(0, len(fills), BATCH):
        bind.execute(stmt, fills[i : i + BATCH])


def downgrade() -> None:
    bind = op.get_bind()
    if INDEX in {i["name"] for i in sa.inspect(bind).get_indexes(TABLE)}:
        op.drop_index(INDEX, TABLE)
    have = {c["name"] for c in sa.inspect(bind).get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        for name in ("items_total", "item_index", "item_of"):
            if name in have:
                batch.drop_column(name)
