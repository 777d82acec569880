"""Apply a batch of events to the SQL tables inside one transaction, idempotently.

Idempotency: ``cf_events`` is keyed by (run, seq). Inside the transaction the run rows of the
batch are locked first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite writers are serialised
by ``BEGIN IMMEDIATE``), then the keys already present are read; only events whose key is new
are inserted and projected. So an event delivered twice — a recorder killed between commit
and XACK, or two recorders racing over a claimed entry — changes nothing the second time.

Order independence: several recorders share the stream, so the events of one run may be
applied in any order across batches. Every projected field is written under a "newest wins"
rule keyed by seq (``status_seq``, ``progress_seq``, ``stats_seq``) or is a min/max/first-set
value, so the tables end up the same whatever order the events arrived in.

An operator retry resets steps (their start and end are then their later attempts'): its
``run_status_changed`` event names them with their attempts before it (``attempts_before``).
The step row keeps that retry's seq and count (``reset_seq``, ``reset_attempts``, newest retry
wins); a start counts only if its attempt number is above the count, an end only if its seq is
above the retry's; and a retry recorded after later attempts were takes the step's start from
their rows in ``cf_step_attempts``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    select,
    update,
)

from orchestrator.audit.events import Event, Lookups, clamp_fraction, clamp_level, clamp_message
from orchestrator.audit.items import MAPPED_EVENTS, mapped_total, parse_item
from orchestrator.audit.models import (
    audit_log,
    events,
    run_tags,
    runs,
    step_attempts,
    step_logs,
    steps,
    workflow_definitions,
)
from orchestrator.audit.sqlbatch import (
    fit,
    insert_ignore,
    insert_rows,
    keyed,
    update_rows,
)
from orchestrator.logbatch import log_lines
from orchestrator.records import RunRecord

FINAL_RUN = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
ERROR_RUN = frozenset({"FAILED", "COMPENSATION_FAILED", "CANCELLED"})
ATTEMPT_EVENTS = frozenset({"step_retrying", "step_completed", "step_failed"})
FINISHING = frozenset({"step_completed", "step_failed", "step_skipped", "step_cancelled"})
SETTLED_STEP = frozenset({"COMPLETED", "FAILED", "SKIPPED", "CANCELLED", "COMPENSATED"})


def apply_batch(
    conn: Connection, batch: Sequence[Event], lookups: Lookups, now: float
) -> list[Event]:
    """Write the events of ``batch`` not yet recorded; returns those (in (run, seq) order)."""
    if not batch:
        return []
    orphans = [e for e in batch if e.seq == 0]
    if orphans:
        batch = [e for e in batch if e.seq != 0]
        return unknown_run_actions(conn, orphans) + apply_batch(conn, batch, lookups, now)
    run_ids = sorted({e.run for e in batch})
    first_ts: dict[str, float] = {}
    for e in batch:
        first_ts[e.run] = min(first_ts.get(e.run, e.ts), e.ts)
    insert_ignore(
        conn,
        runs,
        [
            {
                "id": r,
                "status": "PENDING",
                "status_seq": 0,
                "created_at": first_ts[r],
                "updated_at": now,
                "last_seq": 0,
                "event_count": 0,
            }
            for r in run_ids
        ],
    )
    run_rows: dict[str, dict[str, Any]] = {}
    for row in keyed(conn, runs, (runs.c.id,), [(r,) for r in run_ids], lock=True):
        run_rows[row["id"]] = dict(row)

    existing = recorded(conn, batch, run_rows)
    seen: set[tuple[str, int]] = set()
    new: list[Event] = []
    for e in sorted(batch, key=lambda e: e.key):
        if e.key not in existing and e.key not in seen:
            seen.add(e.key)
            new.append(e)
    if not new:
        return []

    proj = _Projection(run_rows, lookups, now)
    # Only the step rows this batch touches: a run may have a thousand steps.
    wanted_steps = {(e.run, e.step) for e in new if e.step}
    resets = [(e, r) for e in new if (r := step_resets(e))]
    for e in new:
        if e.type == "run_created":
            body = proj.parsed_definition(e.run)
            wanted_steps.update(
                (e.run, str(s["id"]))
                for s in (body or {}).get("steps") or ()
                if isinstance(s, dict) and s.get("id")
            )
        elif e.type == "run_recovered":
            wanted_steps.update((e.run, str(sid)) for sid in e.data.get("steps_reset") or ())
    for e, reset in resets:
        wanted_steps.update((e.run, sid) for sid in reset)
    for row in keyed(conn, steps, (steps.c.run_id, steps.c.step_id), sorted(wanted_steps)):
        proj.steps[(row["run_id"], row["step_id"])] = dict(row)
    # An attempt row is written together with its step row, whose ``attempts`` is then at least
    # its number: attempts above it (a step that started and ended within this batch) are new.
    wanted = sorted(
        {
            (e.run, e.step, n)
            for e in new
            if (n := _attempt_no(e)) is not None
            and n <= ((proj.steps.get((e.run, e.step)) or {}).get("attempts") or 0)
        }
        # a retry's reset steps: their attempts after it recorded so far (their start)
        | {
            (e.run, sid, n)
            for e, reset in resets
            for sid, before in reset.items()
            for n in range(
                before + 1, ((proj.steps.get((e.run, sid)) or {}).get("attempts") or 0) + 1
            )
        }
    )
    a = step_attempts.c
    for row in keyed(conn, step_attempts, (a.run_id, a.step_id, a.attempt), wanted):
        proj.attempts[(row["run_id"], row["step_id"], row["attempt"])] = dict(row)

    for e in new:
        proj.apply(e)
    proj.write(conn, new)
    return new


def unknown_run_actions(conn: Connection, batch: Sequence[Event]) -> list[Event]:
    """Operator actions on runs Redis did not know (seq 0): rows of the audit log only — no run
    row, which would show a run that never existed. Idempotent by (run, time, action, actor):
    the time is the action's own, so a redelivered entry finds its row."""
    rows = [dict(fit(audit_log, _Projection.action_row(e))) for e in batch]
    for row in rows:
        detail = json.loads(row["detail"]) if row["detail"] else {}
        row["detail"] = _json(
            {**(detail if isinstance(detail, dict) else {"detail": detail}), "unknown_run": True}
        )
    a = audit_log.c
    have = {
        (r.target_id, r.ts, r.action, r.actor)
        for r in conn.execute(
            select(a.target_id, a.ts, a.action, a.actor).where(
                a.target_id.in_(sorted({e.run for e in batch}))
            )
        )
    }
    new, fresh = [], []
    for e, row in zip(batch, rows, strict=True):
        key = (row["target_id"], row["ts"], row["action"], row["actor"])
        if key not in have:
            have.add(key)
            new.append(e)
            fresh.append(row)
    insert_rows(conn, audit_log, fresh)
    return new


def recorded(
    conn: Connection, batch: Sequence[Event], run_rows: dict[str, dict[str, Any]]
) -> set[tuple[str, int]]:
    """The keys of ``batch`` already in ``cf_events``, mostly without reading it.

    A run row's ``last_seq`` is the highest seq recorded for the run and ``event_count`` how
    many of its events are recorded (the locked row, so no other writer moves them now): an
    event above ``last_seq`` is new, and when ``event_count == last_seq`` every seq up to
    ``last_seq`` is recorded. Only the rest (a run whose events arrived out of order across
    recorders, or with an event set aside) is looked up — one statement less per batch.
    """
    known: set[tuple[str, int]] = set()
    ask: list[tuple[str, int]] = []
    for e in batch:
        run = run_rows[e.run]
        last = run["last_seq"] or 0
        if e.seq > last:
            continue
        if (run["event_count"] or 0) == last:
            known.add(e.key)
        else:
            ask.append(e.key)
    if ask:
        known.update(
            (r["run_id"], r["seq"])
            for r in keyed(
                conn, events, (events.c.run_id, events.c.seq), sorted(set(ask)), only_keys=True
            )
        )
    return known


def _attempt_no(e: Event) -> int | None:
    if e.type not in ("step_started", "attempt_lost") and e.type not in ATTEMPT_EVENTS:
        return None
    n = e.data.get("attempt")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def step_resets(e: Event) -> dict[str, int]:
    """The steps an operator retry's event reset, with their attempts before it ({} for any
    other event, and for a retry recorded by a version that did not say the attempts)."""
    if e.type != "run_status_changed" or e.data.get("action") != "retry":
        return {}
    before = e.data.get("attempts_before")
    if not isinstance(before, dict):
        return {}
    return {
        str(sid): n
        for sid, n in before.items()
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0
    }


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _lo(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _hi(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _str(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v)


def _json(v: Any) -> str | None:
    return None if v is None else json.dumps(v, separators=(",", ":"))


class _Projection:
    """The rows a batch touches, kept as dicts, changed event by event, written at the end."""

    def __init__(self, run_rows: dict[str, dict[str, Any]], lookups: Lookups, now: float) -> None:
        self.runs = run_rows
        self.lookups = lookups
        self.now = now
        self.steps: dict[tuple[str, str], dict[str, Any]] = {}
        self.attempts: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.new_steps: set[tuple[str, str]] = set()
        self.new_attempts: set[tuple[str, str, int]] = set()
        self.dirty_steps: set[tuple[str, str]] = set()
        self.dirty_attempts: set[tuple[str, str, int]] = set()
        self.logs: list[dict[str, Any]] = []
        self.tags: list[dict[str, Any]] = []
        self.definitions: dict[tuple[str, str], dict[str, Any]] = {}
        self.queue_fixups: list[tuple[str, str]] = []
        self.audit: list[dict[str, Any]] = []
        self.texts: dict[
            str | None, tuple[dict[str, Any] | None, str]
        ] = {}  # text -> (body, digest)

    # -- rows ---------------------------------------------------------------------------------

    def step(self, run_id: str, step_id: str) -> dict[str, Any]:
        key = (run_id, step_id)
        row = self.steps.get(key)
        if row is None:
            row = {c.name: None for c in steps.c}
            row.update(
                run_id=run_id,
                step_id=step_id,
                position=0,
                status="PENDING",
                status_seq=0,
                attempts=0,
                progress_seq=0,
                stats_seq=0,
                reset_seq=0,
                reset_attempts=0,
            )
            item = parse_item(step_id)
            if item is not None:  # an item of a mapped step (orchestrator/audit/items.py)
                row["item_of"], row["item_index"] = item
            self.steps[key] = row
            self.new_steps.add(key)
        self.dirty_steps.add(key)
        return row

    def attempt(self, run_id: str, step: dict[str, Any], n: int) -> dict[str, Any]:
        key = (run_id, step["step_id"], n)
        row = self.attempts.get(key)
        if row is None:
            row = {c.name: None for c in step_attempts.c}
            row.update(
                run_id=run_id,
                step_id=step["step_id"],
                attempt=n,
                status="RUNNING",
                status_seq=0,
                queue=step.get("queue"),
            )
            self.attempts[key] = row
            self.new_attempts.add(key)
        self.dirty_attempts.add(key)
        step["attempts"] = max(step["attempts"] or 0, n)
        return row

    # -- events -------------------------------------------------------------------------------

    def apply(self, e: Event) -> None:
        run = self.runs[e.run]
        run["last_seq"] = max(run["last_seq"] or 0, e.seq)
        run["event_count"] = (run["event_count"] or 0) + 1
        run["updated_at"] = self.now
        if e.type == "run_created":
            self.run_created(run, e)
        elif e.type == "run_status_changed":
            self.run_status(run, e, e.status)
            for sid, before in step_resets(e).items():
                self.reset(self.step(e.run, sid), e, before)
        elif e.type == "operator_action":
            self.operator_action(e)
        elif e.type == "run_redispatched":
            self.redispatched(e)
        elif e.type == "run_recovered":
            self.recovered(run, e)
        elif e.step:
            self.step_event(run, e)

    def operator_action(self, e: Event) -> None:
        """An operator action that travelled through the stream (see docs/audit-store.md)."""
        self.audit.append(self.action_row(e))

    @staticmethod
    def action_row(e: Event) -> dict[str, Any]:
        data = e.data
        detail = data.get("detail")
        return {
            "ts": e.ts,
            "actor": str(data.get("actor") or "unknown"),
            "action": str(data.get("action") or "unknown"),
            "target_type": str(data.get("target_type") or "run"),
            "target_id": str(data.get("target_id") or e.run),
            "reason": _str(data.get("reason")),
            "outcome": str(data.get("outcome") or "ok"),
            "detail": None if detail is None else _json(detail),
        }

    def redispatched(self, e: Event) -> None:
        """The watchdog re-sent a stalled run (orchestrator/engine/watchdog.py): an action in the audit
        log, by the watchdog, so that an operator sees why a step ran again."""
        data = e.data
        self.audit.append(
            {
                "ts": e.ts,
                "actor": str(data.get("watchdog") or "watchdog"),
                "action": "redispatch",
                "target_type": "run",
                "target_id": e.run,
                "reason": _str(data.get("reason")),
                "outcome": "ok",
                "detail": _json(
                    {k: data.get(k) for k in ("epoch", "status", "stalled_for", "steps")}
                ),
            }
        )

    def recovered(self, run: dict[str, Any], e: Event) -> None:
        """``canvasflow recover`` rebuilt the run from this store after Redis lost it
        (orchestrator/engine/recover.py): its status (PAUSING comes back PAUSED), the steps that
        were running PENDING again, and an audit-log row, action ``recovered``."""
        data = e.data
        self.run_status(run, e, e.status)
        for sid in data.get("steps_reset") or ():
            step = self.step(e.run, str(sid))
            if e.seq > step["status_seq"]:
                step.update(status="PENDING", status_seq=e.seq, finished_at=None, error=None)
        self.audit.append(
            {
                "ts": e.ts,
                "actor": str(data.get("actor") or "recover"),
                "action": "recovered",
                "target_type": "run",
                "target_id": e.run,
                "reason": _str(data.get("reason")),
                "outcome": "ok",
                "detail": _json(
                    {k: data.get(k) for k in ("epoch", "status_before", "steps_reset", "host")}
                ),
            }
        )

    def run_created(self, run: dict[str, Any], e: Event) -> None:
        data, hot = e.data, self.lookups.runs.get(e.run)
        meta = hot or RunRecord(e.run)  # the run left Redis: what the event says
        run["workflow_id"] = str(data.get("workflow") or meta.workflow or run["workflow_id"] or "")
        run["version"] = str(data.get("version") or meta.version or run["version"] or "")
        run["created_at"] = e.ts
        if hot is not None:
            run.update(name=hot.name, inputs=hot.inputs_json, priority=hot.priority)
            run.update(
                tags=hot.tags_json, triggered_by=hot.triggered_by, trigger_type=hot.trigger_type
            )
            run.update(trigger_name=hot.trigger_name, trigger_ref=hot.trigger_ref)
        run["sla_seconds"] = _num(meta.sla_seconds) or run.get("sla_seconds")
        # A child run: its parent (the event says it; the hot state if an older event did not).
        run["parent_run"] = _str(data.get("parent_run")) or meta.parent_run or run["parent_run"]
        run["parent_step"] = _str(data.get("parent_step")) or meta.parent_step or run["parent_step"]
        tags = meta.tags
        self.tags.extend({"run_id": e.run, "tag": str(t)} for t in tags if isinstance(t, str | int))
        body = self.parsed_definition(e.run)
        if body is not None:
            self.definition(run, body, meta.definition_json, e.ts)
        self.run_status(run, e, "PENDING")

    def parsed_definition(self, run_id: str) -> dict[str, Any] | None:
        """The definition from the run's hot state (parsed once per text and batch), or None."""
        hot = self.lookups.runs.get(run_id)
        text = hot.definition_json if hot else None
        if text not in self.texts:  # a batch of many runs of one workflow: one parse
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = None
            self.texts[text] = (
                body if isinstance(body, dict) else None,
                hashlib.sha256(text.encode()).hexdigest()[:32] if text else "",
            )
        return self.texts[text][0]

    def definition(self, run: dict[str, Any], body: dict[str, Any], text: str, ts: float) -> None:
        digest = self.texts[text][1]
        run["definition_digest"] = digest
        # The first run of the batch with this definition stands for it (as the first insert would).
        self.definitions.setdefault(
            (run["workflow_id"], digest),
            {
                "workflow_id": run["workflow_id"],
                "digest": digest,
                "version": run["version"],
                "name": body.get("name"),
                "body": text,
                "created_at": ts,
            },
        )
        default_queue = (body.get("defaults") or {}).get("queue") or "default"
        for i, spec in enumerate(body.get("steps") or ()):
            if not isinstance(spec, dict) or not spec.get("id"):
                continue
            key = (run["id"], str(spec["id"]))
            row = self.step(*key)
            if key not in self.new_steps:  # attempts recorded before the run_created event
                self.queue_fixups.append(key)
            row.update(
                position=i,
                plugin=spec.get("plugin"),
                method=spec.get("method", "run"),
                queue=spec.get("queue") or default_queue,
            )

    def run_status(self, run: dict[str, Any], e: Event, status: str) -> None:
        if status == "RUNNING":
            run["started_at"] = _lo(run["started_at"], e.ts)
        if e.seq <= run["status_seq"] or not status:
            return
        run["status"], run["status_seq"] = status, e.seq
        run["finished_at"] = e.ts if status in FINAL_RUN else None
        # The run's result comes with its COMPLETED event; any newer status (a retry) clears it.
        result = e.data.get("result") if status == "COMPLETED" else None
        run["result"] = None if result is None else _json(result)
        if status in ERROR_RUN:
            data = e.data
            looked = self.lookups.run_errors.get(e.run, (None, None))
            error = data.get("error", looked[0])
            failed = data.get("failed_step", looked[1])
            run["error"] = _str(error) or run["error"]
            run["failed_step"] = _str(failed) or run["failed_step"]
        else:
            # Only an error status sets them: any newer status ends them (a retry's RUNNING,
            # and its COMPLETED if that was recorded first, whatever the order of arrival).
            run["error"] = run["failed_step"] = None

    def reset(self, step: dict[str, Any], e: Event, before: int) -> None:
        """An operator retry reset the step (restart.lua): PENDING again, and its start and end
        are its attempts' after ``before``. The newest retry wins; a retry recorded after some
        of those attempts takes the step's start from their rows."""
        if e.seq <= (step["reset_seq"] or 0):
            return
        step["reset_seq"], step["reset_attempts"] = e.seq, before
        rid, sid = step["run_id"], step["step_id"]
        step["started_at"] = min(
            (
                a["started_at"]
                for (r, s, n), a in self.attempts.items()
                if r == rid and s == sid and n > before and a["started_at"] is not None
            ),
            default=None,
        )
        if e.seq > step["status_seq"]:
            step.update(
                status="PENDING",
                status_seq=e.seq,
                finished_at=None,
                error=None,
                reason=None,
                compensation_error=None,
            )
        elif step["status"] not in SETTLED_STEP or (
            step["finished_at"] is not None
            and step["started_at"] is not None
            and step["finished_at"] < step["started_at"]
        ):
            # events after the retry came first, and not yet the end of its attempt: the end
            # recorded so far is an earlier attempt's
            step["finished_at"] = None

    def current(self, step: dict[str, Any], e: Event, n: int | None) -> bool:
        """Whether the event belongs to the step's attempts since its newest operator retry."""
        if n is not None:
            return n > (step["reset_attempts"] or 0)
        return e.seq > (step["reset_seq"] or 0)

    def step_event(self, run: dict[str, Any], e: Event) -> None:
        step = self.step(e.run, e.step)
        data = e.data
        t = e.type
        if t == "log":
            # One event, a batch of lines (orchestrator/logbatch.py): one row per line.
            try:
                lines = log_lines(data)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                lines = [
                    {
                        "level": "ERROR",
                        "message": f"unreadable log event ({type(exc).__name__}: {exc})",
                    }
                ]
            for i, line in enumerate(lines):
                self.logs.append(
                    {
                        "run_id": e.run,
                        "seq": e.seq,
                        "line": i,
                        "step_id": e.step,
                        "ts": line.get("ts") or e.ts,
                        "level": clamp_level(line.get("level")),
                        "message": clamp_message(line.get("message")),
                        **{
                            k: _str(line.get(k))
                            for k in ("entity_tag", "entity_route", "entity_id", "entity_type")
                        },
                    }
                )
            return
        if t == "progress":
            frac = clamp_fraction(data.get("fraction"))
            if frac is not None and e.seq > step["progress_seq"]:
                msg = data.get("message")
                step.update(
                    progress=frac,
                    progress_message=None if msg is None else str(msg)[:1000],
                    progress_seq=e.seq,
                    progress_at=e.ts,
                )
            return
        if t == "stats":
            if e.seq > step["stats_seq"]:
                step.update(stats=_json(data), stats_seq=e.seq)
            return
        if t == "attempt_lost":
            # An attempt whose worker died (or was cut off) while it ran; a new attempt took
            # over. Closes that attempt's row; the step's own status is the new attempt's.
            self.attempt_lost(step, e, data)
            return
        if t == "step_started":
            self.started(step, e, data)
        elif t in ATTEMPT_EVENTS:
            self.attempt_over(step, e, data)
        elif t == "step_skipped":
            step["reason"] = _str(data.get("reason"))
        elif t == "step_compensation_failed":
            step["compensation_error"] = _str(data.get("error"))
        elif t in MAPPED_EVENTS and (total := mapped_total(data)) is not None:
            step["items_total"] = total
        if t in FINISHING and e.seq > (step["reset_seq"] or 0):
            step["finished_at"] = _hi(step["finished_at"], e.ts)
        if e.status and e.seq > step["status_seq"]:
            step["status"], step["status_seq"] = e.status, e.seq
            if t in ("step_failed", "step_retrying"):
                step["error"] = _str(data.get("error"))
            elif t == "step_completed":
                step["error"] = None

    def started(self, step: dict[str, Any], e: Event, data: dict[str, Any]) -> None:
        n = _attempt_no(e)
        if self.current(step, e, n):
            step["started_at"] = _lo(step["started_at"], e.ts)
        if n is None:
            return
        latest = n >= (step["attempts"] or 0)
        att = self.attempt(e.run, step, n)
        att["started_at"] = _lo(att["started_at"], e.ts)
        # The attempt's own record (step_retrying/completed/failed) wins over step_started.
        att["worker"] = att["worker"] or _str(data.get("worker"))
        att["task_id"] = att["task_id"] or _str(data.get("task_id"))
        if data.get("input") is not None:
            att["input"] = _str(data["input"])
        if e.seq > att["status_seq"]:
            att["status"], att["status_seq"] = "RUNNING", e.seq
        if latest:
            step["worker"] = att["worker"]

    def attempt_lost(self, step: dict[str, Any], e: Event, data: dict[str, Any]) -> None:
        n = _attempt_no(e)
        if n is None:
            return
        att = self.attempt(e.run, step, n)
        att["started_at"] = _lo(att["started_at"], _num(data.get("started_at")))
        att["worker"] = att["worker"] or _str(data.get("worker"))
        att["task_id"] = att["task_id"] or _str(data.get("task_id"))
        if e.seq > att["status_seq"]:
            att["status"], att["status_seq"] = "LOST", e.seq
            att["finished_at"] = e.ts
            att["error"] = _str(data.get("reason")) or "attempt lost"
            if att["started_at"] is not None:
                att["duration"] = round(e.ts - att["started_at"], 6)

    def attempt_over(self, step: dict[str, Any], e: Event, data: dict[str, Any]) -> None:
        n = _attempt_no(e)
        if n is None:
            return
        latest = n >= (step["attempts"] or 0)
        att = self.attempt(e.run, step, n)
        started = _num(data.get("started_at"))
        att["started_at"] = _lo(att["started_at"], started)
        if self.current(step, e, n):
            step["started_at"] = _lo(step["started_at"], started)
        att["finished_at"] = _num(data.get("finished_at")) or e.ts
        att["duration"] = _num(data.get("duration"))
        att["worker"] = _str(data.get("worker")) or att["worker"]
        att["task_id"] = _str(data.get("task_id")) or att["task_id"]
        att["error"] = _str(data.get("error"))
        if data.get("input") is not None:
            att["input"] = _str(data["input"])
        att["stats"] = _json(data.get("stats")) if data.get("stats") is not None else att["stats"]
        if latest and data.get("stats") is not None and e.seq > step["stats_seq"]:
            # the attempt's own record carries the step's final stats (a "stats" event only
            # comes for steps whose plugin set counters)
            step.update(stats=att["stats"], stats_seq=e.seq)
        tb = data.get("traceback")
        if tb is None and e.type == "step_failed":
            tb = self.lookups.tracebacks.get((e.run, e.step))
        att["traceback"] = _str(tb) or att["traceback"]
        if e.type == "step_completed":
            out = (
                data.get("output")
                if "output" in data and not data.get("output_truncated")
                else None
            )
            out = _str(out) if out is not None else self.lookups.outputs.get((e.run, e.step))
            att["output"], att["output_size"] = out, (len(out) if out is not None else None)
        if e.seq > att["status_seq"]:
            att["status"], att["status_seq"] = e.status or att["status"], e.seq
        if latest:
            step["worker"] = att["worker"]

    # -- writes -------------------------------------------------------------------------------

    def write(self, conn: Connection, new: list[Event]) -> None:
        now = self.now
        insert_rows(
            conn,
            events,
            [
                {
                    "run_id": e.run,
                    "seq": e.seq,
                    "type": e.type,
                    "step_id": e.step,
                    "status": e.status,
                    "ts": e.ts,
                    "data": e.data_json,
                    "stream_id": e.stream_id,
                    "recorded_at": now,
                }
                for e in new
            ],
        )
        insert_rows(conn, step_logs, self.logs)
        insert_rows(conn, audit_log, self.audit)
        insert_ignore(conn, run_tags, self.tags)
        insert_ignore(conn, workflow_definitions, list(self.definitions.values()))
        for row in self.steps.values():
            row["duration"] = (
                row["finished_at"] - row["started_at"]
                if row["finished_at"] is not None and row["started_at"] is not None
                else None
            )
        insert_rows(conn, steps, [self.steps[k] for k in sorted(self.new_steps)])
        update_rows(
            conn,
            steps,
            ("run_id", "step_id"),
            [self.steps[k] for k in sorted(self.dirty_steps - self.new_steps)],
        )
        for key in self.dirty_attempts:
            row = self.attempts[key]
            if row["queue"] is None:
                row["queue"] = self.steps[key[:2]]["queue"]
        insert_rows(conn, step_attempts, [self.attempts[k] for k in sorted(self.new_attempts)])
        update_rows(
            conn,
            step_attempts,
            ("run_id", "step_id", "attempt"),
            [self.attempts[k] for k in sorted(self.dirty_attempts - self.new_attempts)],
        )
        fixups = [
            {"k_run": r, "k_step": st, "v_queue": self.steps[(r, st)]["queue"]}
            for r, st in self.queue_fixups
        ]
        if fixups:
            conn.execute(
                update(step_attempts)
                .where(
                    step_attempts.c.run_id == bindparam("k_run"),
                    step_attempts.c.step_id == bindparam("k_step"),
                    step_attempts.c.queue.is_(None),
                )
                .values(queue=bindparam("v_queue")),
                fixups,
            )
        touched = sorted({e.run for e in new})
        rows = []
        for rid in touched:
            run = self.runs[rid]
            start, end = run["started_at"], run["finished_at"]
            run["duration"] = end - start if start is not None and end is not None else None
            rows.append(run)
        update_rows(conn, runs, ("id",), rows)
