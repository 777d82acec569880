"""Task history rows of fan-in steps link to their run and step again.

Before this revision the task history writer (orchestrator/fleet/events.py) read a task's run only
from a dict among its arguments. A fan-in step (a Celery chord body) gets its branches' outcomes
as one list, so its run was not found, and rows written by some versions hold the text 'None'
instead of NULL. This revision:

- adds an index on ``cf_step_attempts.task_id``: the writer now fills a step task's run and step
  from the attempt that ran under its task id when its arguments do not name them (a repr Celery
  cut at 1 KB);
- turns 'None' / 'null' / '' in ``cf_celery_tasks.run_id`` and ``step_id`` into NULL;
- fills the run and step of the rows still missing them, from their arguments (read the way the
  writer reads them now) or else from the step attempt recorded with their task id.

The repair is not undone on downgrade (the NULLs and filled ids are right at every revision); the
index is dropped.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-18
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NOT_AN_ID = ("None", "null", "")
BATCH = 500
STEP_TASK = "canvasflow.step"

# The argument reader as of this revision (a frozen copy: a migration must not change when the
# writer's code does later).
_RUN_RE = re.compile(r"\{'run': '([^']+)'|\{'@': \['([^']+)'")
_STEP_RE = re.compile(r"\{'id': '([^']+)', 'plugin': |\['([^']+)', '[^']*', '[^']*', \d+[,\]]")


def _is_id(v: Any) -> bool:
    return isinstance(v, str) and v not in NOT_AN_ID


def _run_of(arg: Any) -> str | None:
    if isinstance(arg, dict):
        if _is_id(arg.get("run")):
            return str(arg["run"])
        hdr = arg.get("@")
        if isinstance(hdr, list) and hdr and _is_id(hdr[0]):
            return str(hdr[0])
    elif isinstance(arg, (list, tuple)):
        return next((r for r in map(_run_of, arg) if r), None)
    return None


def _step_of(arg: Any) -> str | None:
    if isinstance(arg, dict) and "plugin" in arg and _is_id(arg.get("id")):
        return str(arg["id"])
    if (
        isinstance(arg, list)
        and len(arg) >= 4
        and all(isinstance(v, str) for v in arg[:3])
        and isinstance(arg[3], int)
        and _is_id(arg[0])
    ):
        return str(arg[0])
    return None


def run_and_step(args: str | None) -> tuple[str | None, str | None]:
    if not args or ("'run'" not in args and "'@'" not in args):
        return None, None
    try:
        value = ast.literal_eval(args)
        items = value if isinstance(value, (list, tuple)) else [value]
        run = next((r for r in map(_run_of, items) if r), None)
        step = next((s for s in map(_step_of, items) if s), None)
        return run, step
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        run_m, steps = _RUN_RE.search(args), _STEP_RE.findall(args)
        run_id = (run_m.group(1) or run_m.group(2)) if run_m else None
        step = next(a or b for a, b in reversed(steps)) if steps else None
        return (run_id if _is_id(run_id) else None), (step if _is_id(step) else None)


meta = sa.MetaData()
tasks = sa.Table(
    "cf_celery_tasks",
    meta,
    sa.Column("uuid", sa.String(64)),
    sa.Column("name", sa.String(200)),
    sa.Column("args", sa.Text),
    sa.Column("run_id", sa.String(64)),
    sa.Column("step_id", sa.String(200)),
)
attempts = sa.Table(
    "cf_step_attempts",
    meta,
    sa.Column("run_id", sa.String(64)),
    sa.Column("step_id", sa.String(200)),
    sa.Column("task_id", sa.String(64)),
)


def upgrade() -> None:
    op.create_index("ix_cf_step_attempts_task", "cf_step_attempts", ["task_id"])
    bind = op.get_bind()
    t = tasks.c
    for col in (t.run_id, t.step_id):
        bind.execute(sa.update(tasks).where(col.in_(NOT_AN_ID)).values({col.name: None}))
    # The rows to read, a page at a time in primary-key order: a task table of millions of rows
    # is never held in memory at once (each row's arguments are parsed in Python).
    wanted = sa.and_(
        sa.or_(t.run_id.is_(None), t.step_id.is_(None)),
        # only canvasflow's tasks can name a run: other tasks' rows are not read
        sa.or_(t.name == STEP_TASK, t.args.like("%'run'%"), t.args.like("%'@'%")),
    )
    after: str | None = None
    while True:
        page = sa.select(t.uuid, t.name, t.args, t.run_id, t.step_id).where(wanted)
        if after is not None:
            page = page.where(t.uuid > after)
        rows = bind.execute(page.order_by(t.uuid).limit(BATCH)).all()
        if not rows:
            return
        after = rows[-1][0]
        _repair(bind, rows)


def _repair(bind: Any, rows: Sequence[Any]) -> None:
    t = tasks.c
    fixes: dict[str, dict[str, Any]] = {}
    unresolved: list[str] = []
    for uid, name, args, run_id, step_id in rows:
        run, step = run_and_step(args)
        new_run, new_step = run_id or run, step_id or step
        if (new_run, new_step) != (run_id, step_id):
            fixes[uid] = {"k_uuid": uid, "v_run": new_run, "v_step": new_step}
        if name == STEP_TASK and (new_run is None or new_step is None):
            unresolved.append(uid)
    if unresolved:
        a = attempts.c
        for uid, run_id, step_id in bind.execute(
            sa.select(a.task_id, a.run_id, a.step_id).where(a.task_id.in_(unresolved)).distinct()
        ):
            fixes[uid] = {"k_uuid": uid, "v_run": run_id, "v_step": step_id}
    if fixes:
        bind.execute(
            sa.update(tasks)
            .where(t.uuid == sa.bindparam("k_uuid"))
            .values(run_id=sa.bindparam("v_run"), step_id=sa.bindparam("v_step")),
            list(fixes.values()),
        )


def downgrade() -> None:
    op.drop_index("ix_cf_step_attempts_task", table_name="cf_step_attempts")
