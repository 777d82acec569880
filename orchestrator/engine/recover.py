"""Recovery of live runs from the audit store after Redis lost their hot state.

A Redis restarted empty (no persistence, a lost AOF, a FLUSHALL, a failover to an empty
replica) forgets every run in flight; the audit store still has each one's row, steps,
attempts with their outputs and definition. :func:`recover` rebuilds the hot state of every
run that is not final in SQL and unknown to Redis, and sends what is left through the
:class:`~orchestrator.engine.dispatch.Dispatcher`:

- RUNNING / PENDING: the steps that settled keep their outcome (never run again); a step that
  was RUNNING (or RETRYING) is PENDING again and runs as a new attempt, its old attempt closed
  LOST (``attempt_lost``); the rest of the run is sent as for a resume.
- PAUSING comes back PAUSED (nothing of it runs any more); PAUSED stays PAUSED until resumed.
- CANCELLING finishes cancelling (its lone settle); COMPENSATING continues its compensations
  newest first; COMPENSATION_FAILED is written back and waits for the operator.

The new epoch is greater than any the run had: an epoch only moves with an event, so every
earlier one is at most the run's event count, and recovery takes the clock in seconds. A
message or a finishing attempt of the lost dispatch is refused as stale (docs/design.md).
The seq continues from the audit store's last recorded event. Each recovery appends
``run_recovered`` (the recorder writes an audit-log row, action ``recovered``).

Sub-workflows: children are recovered before their parents, each child with its parent link
(``parent_run``, ``parent_step``, depth), and a parent's sub-workflow step that still waits is
linked to its recovered child again (``RunState.relink_child``): the re-sent step finds the
child and waits on it instead of starting a second one. A child that had already ended, or was
not recovered, is not linked: that step starts a new child (docs/design.md).

Known limit: events the recorder had not yet written when Redis lost them are lost with it;
a step that COMPLETED in Redis but not yet in SQL runs again (at-least-once, as for a lost
worker). Run ``canvasflow recover`` after the recorder caught up (``canvasflow recorder``
prints its lag).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select

from orchestrator.audit import registry
from orchestrator.audit.models import runs, step_attempts, steps, workflow_definitions
from orchestrator.audit.store import AuditStore
from orchestrator.engine import slots
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.runstate import RunState
from orchestrator.engine.states import (
    SETTLED_STEP_STATUSES,
    SLOT_HOLDING_STATUSES,
    RunStatus,
    StepStatus,
)
from orchestrator.errors import DefinitionError
from orchestrator.keys import item_of
from orchestrator.model.definition import Definition, from_stored
from orchestrator.records import RunRecord, StepRecord, encode_step_fields

FINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
# Steps whose attempt was under way: they run again as a new attempt.
INTERRUPTED = frozenset({StepStatus.RUNNING, StepStatus.RETRYING})
LOST_REASON = "Redis lost the run's state while this attempt ran; recovered from the audit store"


class RecoveryRefused(Exception):
    """Raised (inside recover, reported per run) when a run cannot be rebuilt from SQL."""


@dataclass(frozen=True)
class Recovered:
    """What recover did with one run: ``verdict`` recovered | present | refused."""

    run_id: str
    status: str  # as the audit store had it
    verdict: str
    detail: str = ""
    epoch: int = 0
    rerun: tuple[str, ...] = ()  # steps that were running, now a new attempt


@dataclass
class Report:
    runs: list[Recovered] = field(default_factory=list)
    # Workflow versions written back to the registry from the store: (workflow, version).
    registered: list[tuple[str, str]] = field(default_factory=list)

    def of(self, verdict: str) -> list[Recovered]:
        return [r for r in self.runs if r.verdict == verdict]

    @property
    def recovered(self) -> list[Recovered]:
        return self.of("recovered")

    @property
    def refused(self) -> list[Recovered]:
        return self.of("refused")


def candidates(
    store: AuditStore, state: RunState, run_ids: Iterable[str] = (), *, force: bool = False
) -> list[tuple[str, str]]:
    """(run id, SQL status) of the runs to recover: not final in the audit store and unknown to
    Redis; with ``run_ids`` only those (and with ``force`` even when Redis knows them)."""
    wanted = list(run_ids)
    q = select(runs.c.id, runs.c.status).where(runs.c.status.not_in([s.value for s in FINAL]))
    if wanted:
        q = q.where(runs.c.id.in_(wanted))
    with store.connect() as conn:
        rows = [(r[0], r[1]) for r in conn.execute(q.order_by(runs.c.created_at, runs.c.id))]
    if force and wanted:
        return rows
    out: list[tuple[str, str]] = []
    for i in range(0, len(rows), 500):
        chunk = rows[i : i + 500]
        known = state.runs([rid for rid, _ in chunk], "status")
        out.extend(row for row, hot in zip(chunk, known, strict=True) if hot is None)
    return out


def recover(
    store: AuditStore,
    state: RunState,
    dispatcher: Dispatcher,
    *,
    run_ids: Iterable[str] = (),
    force: bool = False,
    actor: str = "recover",
    reason: str = "",
    progress: Callable[[Recovered], None] | None = None,
) -> Report:
    """Rebuild and re-dispatch every lost run (see the module). A run that cannot be rebuilt
    (its definition unreadable, say) is reported ``refused`` with why; the others go on."""
    ids = list(run_ids)
    # The registry first: a recovered run's sub-workflow step, a schedule or an event trigger
    # reads it (Redis lost it with the runs).
    report = Report(registered=registry.restore(store, state.r, state.keys))
    todo = candidates(store, state, ids, force=force)
    found = {rid for rid, _ in todo}
    for rid in ids:
        if rid not in found:
            status = state.status(rid)
            report.runs.append(
                Recovered(
                    rid,
                    status or "",
                    "present" if status is not None else "refused",
                    "Redis knows it (use --force to rebuild it from the audit store anyway)"
                    if status is not None
                    else "not a live run in the audit store (unknown, or already final)",
                )
            )
    todo = _children_first(store, todo)
    for rid, status in todo:
        try:
            one = _recover_one(store, state, dispatcher, rid, force, actor, reason)
        except RecoveryRefused as exc:
            one = Recovered(rid, status, "refused", str(exc))
        report.runs.append(one)
        if progress is not None:
            progress(one)
    return report


def _parents(store: AuditStore, run_ids: list[str]) -> dict[str, str]:
    """{run: its parent run} for the child runs among ``run_ids``."""
    out: dict[str, str] = {}
    with store.connect() as conn:
        for i in range(0, len(run_ids), 500):
            q = select(runs.c.id, runs.c.parent_run).where(
                runs.c.id.in_(run_ids[i : i + 500]), runs.c.parent_run.is_not(None)
            )
            out.update({r[0]: r[1] for r in conn.execute(q) if r[1]})
    return out


def _children_first(store: AuditStore, todo: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``todo`` with every child before its parent (deepest first, otherwise in order): a
    parent's waiting step is linked to its child only once the child is back in Redis."""
    parent_of = _parents(store, [rid for rid, _ in todo])
    if not parent_of:
        return todo

    def depth(rid: str) -> int:
        n, seen = 0, {rid}
        while rid in parent_of and parent_of[rid] not in seen and n < 100:
            rid = parent_of[rid]
            seen.add(rid)
            n += 1
        return n

    order = {rid: i for i, (rid, _) in enumerate(todo)}
    return sorted(todo, key=lambda t: (-depth(t[0]), order[t[0]]))


def _relink_children(store: AuditStore, state: RunState, run_id: str, b: _Rebuilt) -> list[str]:
    """Link the parent's sub-workflow steps (or items of them) that still wait to the children
    they started, where the child is in Redis again; returns the steps linked."""
    with store.connect() as conn:
        rows = conn.execute(
            select(runs.c.id, runs.c.parent_step)
            .where(runs.c.parent_run == run_id)
            .order_by(runs.c.created_at, runs.c.id)
        ).all()
    latest: dict[str, str] = {}
    for child_id, step in rows:
        if step:
            latest[step] = child_id  # a retried step's newest child is the one it waits on
    if not latest:
        return []
    waiting = {sid for sid, f in b.steps.items() if f["status"] not in SETTLED_STEP_STATUSES}
    wanted = [
        (step, child) for step, child in latest.items() if (item_of(step) or (step,))[0] in waiting
    ]
    known = state.runs([child for _, child in wanted], "status") if wanted else []
    linked = []
    for (step, child), hot in zip(wanted, known, strict=True):
        if hot is not None and hot.status not in FINAL:
            state.relink_child(run_id, step, child)
            linked.append(step)
    return linked


@dataclass(frozen=True)
class _Rebuilt:
    run: RunRecord
    defn: Definition
    steps: dict[str, dict[str, Any]]
    attempts: list[str]
    completed: list[str]
    lost: list[tuple[str, str]]
    rerun: tuple[str, ...]
    before: str
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    item_attempts: list[str] = field(default_factory=list)


def _recover_one(
    store: AuditStore,
    state: RunState,
    dispatcher: Dispatcher,
    run_id: str,
    force: bool,
    actor: str,
    reason: str,
) -> Recovered:
    b = rebuild(store, run_id)
    data = {
        "action": "recovered",
        "actor": actor,
        "reason": reason or "Redis lost the run's state; rebuilt from the audit store",
        "status_before": b.before,
        "steps_reset": list(b.rerun),
        "host": socket.gethostname(),
    }
    # Its concurrency group (the key rendered again from its inputs): Redis lost the slots too.
    try:
        group = slots.group_of(state, b.defn, b.run.inputs)
    except DefinitionError:
        group = None  # a key its inputs no longer render: it runs without a slot
    run = b.run if group is None else replace(b.run, conc_group=group.name, conc_key=group.key)
    verdict, _, epoch = state.recover(
        run,
        b.steps,
        attempts=b.attempts,
        completed=b.completed,
        lost=b.lost,
        data=data,
        force=force,
        items=b.items,
        item_attempts=b.item_attempts,
    )
    if verdict != "ok":
        return Recovered(run_id, b.before, "present", "Redis knows it")
    linked = _relink_children(store, state, run_id, b)
    status = b.run.status
    # By their Redis names (``output``, not ``output_json``): decoded by attribute names, every
    # settled step was seeded with no output, and a step after it read None for it.
    records = {sid: StepRecord.from_hash(sid, encode_step_fields(f)) for sid, f in b.steps.items()}
    if group is not None and b.defn.concurrency is not None and status in SLOT_HOLDING_STATUSES:
        # A run past PENDING holds its slot again; a PENDING one asks for one like a new run.
        adm = state.admit(
            run_id,
            group,
            strategy=b.defn.concurrency.strategy,
            priority=b.run.priority,
            reason=f"cancelled at recovery: every slot in {slots.display(b.defn.id, group.key)} "
            f"is taken (strategy cancel_newest)",
        )
        dispatcher.admitted([r for r in adm.admitted if r != run_id])
        if adm.verdict != "admitted":
            return Recovered(
                run_id, b.before, "recovered", f"sent nothing ({adm.verdict} for a slot)", epoch
            )
    if status in (RunStatus.RUNNING, RunStatus.PENDING):
        dispatcher.remaining(run_id, epoch, b.run, b.defn, records)
        sent = "the remaining steps"
    elif status in (RunStatus.CANCELLING, RunStatus.COMPENSATING):
        dispatcher.resend(run_id, epoch, status, b.run, b.defn, records)
        sent = "its settle" if status == RunStatus.CANCELLING else "its compensations"
    else:
        sent = f"nothing ({status}: waits for an operator)"
    if linked:
        sent += f"; {', '.join(linked)} waiting on {'its child' if len(linked) == 1 else 'their children'}"
    return Recovered(run_id, b.before, "recovered", f"sent {sent}", epoch, b.rerun)


def rebuild(store: AuditStore, run_id: str) -> _Rebuilt:
    """The hot state of a run as the audit store has it (nothing is written)."""
    with store.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
        if row is None:
            raise RecoveryRefused("not in the audit store")
        body = conn.execute(
            select(workflow_definitions.c.body).where(
                workflow_definitions.c.workflow_id == row["workflow_id"],
                workflow_definitions.c.digest == (row["definition_digest"] or ""),
            )
        ).scalar()
        step_rows = {
            r["step_id"]: dict(r)
            for r in conn.execute(select(steps).where(steps.c.run_id == run_id)).mappings()
        }
        attempt_rows = [
            dict(r)
            for r in conn.execute(
                select(step_attempts)
                .where(step_attempts.c.run_id == run_id)
                .order_by(step_attempts.c.finished_at, step_attempts.c.attempt)
            ).mappings()
        ]
        depth, parent = 0, row["parent_run"]
        while parent and depth < 100:  # how deep it nests: its chain of parents in the store
            depth += 1
            parent = conn.execute(select(runs.c.parent_run).where(runs.c.id == parent)).scalar()
    before = str(row["status"])
    if body is None:
        raise RecoveryRefused(
            f"its definition ({row['workflow_id']}, digest {row['definition_digest']}) is not "
            "in the audit store; resolve it by hand (canvasflow resolve --as failed)"
        )
    try:
        definition = json.loads(body)
        defn = from_stored(definition)
    except Exception as exc:  # a schema or JSON error: the run is reported, the others go on
        raise RecoveryRefused(
            f"its stored definition cannot be read ({type(exc).__name__}: {exc}); "
            "resolve it by hand (canvasflow resolve --as failed)"
        ) from None
    status = RunStatus.PAUSED if before == RunStatus.PAUSING else RunStatus(before)
    outputs: dict[str, str] = {}
    attempts: list[str] = []
    item_attempts: list[str] = []
    for a in attempt_rows:
        if a["status"] == StepStatus.COMPLETED and a["output"] is not None:
            outputs[a["step_id"]] = a["output"]
        if a["finished_at"] is not None and a["status"] != "LOST":
            record = json.dumps(_attempt(a), separators=(",", ":"))
            # an item's attempts go to the items' own list (keys.item_attempts)
            (item_attempts if item_of(a["step_id"]) else attempts).append(record)
    hot: dict[str, dict[str, Any]] = {}
    lost: list[tuple[str, str]] = []
    rerun: list[str] = []
    halt = None
    for sid in defn.step_ids:
        r = step_rows.get(sid)
        st = str(r["status"]) if r else StepStatus.PENDING
        n = int(r["attempts"] or 0) if r else 0
        fields: dict[str, Any] = {"status": st, "attempts": n}
        if r is not None:
            for name in ("started_at", "finished_at", "worker", "error"):
                if r[name] is not None:
                    fields[name] = r[name]
        if st == StepStatus.COMPLETED or st == StepStatus.COMPENSATING:
            if sid not in outputs:
                raise RecoveryRefused(f"step {sid} is {st} but its output is not in the store")
            fields["output_json"] = outputs[sid]
        elif st in SETTLED_STEP_STATUSES:
            fields["output_json"] = "null"
        if st in INTERRUPTED:
            fields.update(status=StepStatus.PENDING, lost=n)
            fields.pop("finished_at", None)
            rerun.append(sid)
            if st == StepStatus.RUNNING and n:
                att = next(
                    (a for a in attempt_rows if a["step_id"] == sid and a["attempt"] == n), {}
                )
                lost.append((sid, _lost_data(n, att, r)))
        if st == StepStatus.FAILED and defn.step(sid).critical:
            halt = "failed"
        hot[sid] = fields
    items = _items(defn, step_rows, attempt_rows, outputs, lost)
    done = {**hot, **items}
    completed = sorted(
        (sid for sid, f in done.items() if f["status"] in (StepStatus.COMPLETED, "COMPENSATING")),
        key=lambda sid: (step_rows[sid]["finished_at"] or 0.0, sid),
    )
    failed = row["failed_step"] or next(
        (sid for sid, f in hot.items() if f["status"] == StepStatus.FAILED), None
    )
    run = RunRecord(
        id=run_id,
        status=status,
        # An epoch only moves with an event, so every earlier one is at most the run's event
        # count: the clock in seconds is past all of them, and a later forced recovery is past it.
        epoch=max(int(time.time()), int(row["last_seq"] or 0) + 1),
        seq=int(row["last_seq"] or 0),
        halt=halt,
        created_at=row["created_at"],
        started_at=row["started_at"],
        workflow=row["workflow_id"],
        version=row["version"] or "",
        name=row["name"],
        definition_json=body,
        inputs_json=row["inputs"] or "{}",
        priority=row["priority"] or "normal",
        tags_json=row["tags"] or "[]",
        triggered_by=row["triggered_by"],
        trigger_type=row["trigger_type"],
        trigger_name=row.get("trigger_name"),
        trigger_ref=row.get("trigger_ref"),
        sla_seconds=row["sla_seconds"],
        total=len(hot),
        settled=sum(1 for f in hot.values() if f["status"] in SETTLED_STEP_STATUSES),
        error=row["error"],
        failed_step=failed if halt else None,
        compensate_target=_compensate_target(status, halt),
        parent_run=row["parent_run"],
        parent_step=row["parent_step"],
        depth=depth,
        # Its settle evaluates the definition's outputs (a recovered run once completed with no
        # result: this flag is set at submit and was not rebuilt).
        has_outputs="1" if defn.outputs else None,
    )
    return _Rebuilt(
        run, defn, hot, attempts, completed, lost, tuple(rerun), before, items, item_attempts
    )


def _items(
    defn: Definition,
    step_rows: Mapping[str, Mapping[str, Any]],
    attempt_rows: list[dict[str, Any]],
    outputs: Mapping[str, str],
    lost: list[tuple[str, str]],
) -> dict[str, dict[str, Any]]:
    """The hot fields of the items of mapped steps, as the store has them: a settled item keeps
    its outcome (the step's expansion runs only the others, as after a pause; its compensation
    has its output); an item that was running is PENDING again, its attempt reported lost (added
    to ``lost``); a COMPLETED item whose output the store lacks runs again."""
    mapped = {s.id for s in defn.steps if s.map is not None}
    if not mapped:
        return {}
    # One pass: a lookup per item in the list would be items x attempts (10,000 squared).
    by_attempt = {(a["step_id"], a["attempt"]): a for a in attempt_rows}
    out: dict[str, dict[str, Any]] = {}
    for iid, r in step_rows.items():
        base = item_of(iid)
        if base is None or base[0] not in mapped:
            continue
        st, n = str(r["status"]), int(r["attempts"] or 0)
        fields: dict[str, Any] = {"status": st, "attempts": n}
        for name in ("started_at", "finished_at", "worker", "error"):
            if r[name] is not None:
                fields[name] = r[name]
        if st in (StepStatus.COMPLETED, StepStatus.COMPENSATING):
            if iid in outputs:
                fields["output_json"] = outputs[iid]
            else:
                fields = {"status": StepStatus.PENDING, "attempts": n}
        elif st in SETTLED_STEP_STATUSES:
            fields["output_json"] = "null"
        if st in INTERRUPTED:
            fields.update(status=StepStatus.PENDING, lost=n)
            fields.pop("finished_at", None)
            if st == StepStatus.RUNNING and n:
                lost.append((iid, _lost_data(n, by_attempt.get((iid, n), {}), r)))
        out[iid] = fields
    return out


def _compensate_target(status: str, halt: str | None) -> str | None:
    if status in (RunStatus.COMPENSATING, RunStatus.COMPENSATION_FAILED):
        return RunStatus.FAILED if halt else RunStatus.CANCELLED
    return None


def _attempt(a: Mapping[str, Any]) -> dict[str, Any]:
    """An attempt record as finish_step keeps it (the dashboard's attempt list)."""
    rec: dict[str, Any] = {
        "step": a["step_id"],
        "attempt": a["attempt"],
        "status": a["status"],
        "started_at": a["started_at"],
        "finished_at": a["finished_at"],
        "duration": a["duration"],
        "worker": a["worker"],
        "task_id": a["task_id"],
    }
    if a["error"] is not None:
        rec["error"] = a["error"]
    return rec


def _lost_data(n: int, att: Mapping[str, Any], step: Mapping[str, Any] | None) -> str:
    return json.dumps(
        {
            "attempt": n,
            "worker": att.get("worker") or (step or {}).get("worker") or "",
            "task_id": att.get("task_id") or "",
            "started_at": att.get("started_at"),
            "reason": LOST_REASON,
        },
        separators=(",", ":"),
    )
