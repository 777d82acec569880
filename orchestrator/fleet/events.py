"""Persistent, bounded-memory Celery task history and worker liveness, from Celery events.

:class:`FleetMonitor` runs two daemon threads in the process that embeds it (the web process):

- a receiver (``app.events.Receiver``) that captures every ``task-*`` and ``worker-*`` event
  the fleet sends (workers run with ``worker_send_task_events``, senders with
  ``task_send_sent_event``) into a bounded queue — events past ``max_queue`` are dropped and
  counted, never buffered without limit;
- a writer that merges the queued events per task id and upserts them into one SQL table,
  ``cf_celery_tasks``, in batches.

The table is part of the audit store's schema (``orchestrator.audit.models.celery_tasks``,
migration 0002), so ``AuditStore.upgrade()`` creates it and ``canvasflow prune`` trims it.
Memory stays flat however many tasks run: nothing per task is kept once its batch is written.

Worker state (last heartbeat, active, processed, load average, software) is kept per worker in a
Redis hash so that every web process, and a restarted one, sees the same fleet.

Every canvasflow task carries its run: a step task in the outcomes it receives
(``{'@': [<run>, <epoch>, ...], ...}``, orchestrator/engine/compiler.py's wire format) with its spec
(``[<step>, <plugin>, <method>, <flags>, ...]``), other tasks as a header argument
(``{'run': <id>, ...}``, also what step tasks of older versions carried with a dict spec). The
run and step ids are extracted from the arguments' repr so each task links to its run and step.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, bindparam, func, insert, or_, select, text, update
from sqlalchemy import exc as sa_exc

from orchestrator.audit.models import celery_tasks, step_attempts
from orchestrator.audit.store import prune_celery_tasks

log = logging.getLogger(__name__)

tasks = celery_tasks

EVENT_STATE = {
    "sent": "PENDING",
    "received": "RECEIVED",
    "started": "STARTED",
    "failed": "FAILURE",
    "retried": "RETRY",
    "succeeded": "SUCCESS",
    "revoked": "REVOKED",
    "rejected": "REJECTED",
}
STATES = tuple(dict.fromkeys(EVENT_STATE.values()))
RANK = {
    "PENDING": 0,
    "RECEIVED": 1,
    "STARTED": 2,
    "RETRY": 3,
    "REJECTED": 4,
    "FAILURE": 5,
    "SUCCESS": 5,
    "REVOKED": 6,
}
TEXT_MAX = 16_384  # args/kwargs/result/traceback are cut here (Celery already cuts reprs at 1 KB)
_RUN_RE = re.compile(r"\{'run': '([^']+)'|\{'@': \['([^']+)'")
_STEP_RE = re.compile(r"\{'id': '([^']+)', 'plugin': |\['([^']+)', '[^']*', '[^']*', \d+[,\]]")


def _cut(v: Any) -> str | None:
    if v is None:
        return None
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= TEXT_MAX else s[:TEXT_MAX] + "…"


def run_and_step(args: str | None) -> tuple[str | None, str | None]:
    """The canvasflow run id and step id a task's args repr carries (None, None otherwise)."""
    if not args or ("'run'" not in args and "'@'" not in args):
        return None, None
    try:
        value = ast.literal_eval(args)
        items = value if isinstance(value, (list, tuple)) else [value]
        run = next((_run_of(a) for a in items if _run_of(a)), None)
        step = next((_step_of(a) for a in items if _step_of(a)), None)
        return run, step
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        run_m, steps = _RUN_RE.search(args), _STEP_RE.findall(args)
        run_id = (run_m.group(1) or run_m.group(2)) if run_m else None
        step = next(a or b for a, b in reversed(steps)) if steps else None
        return (run_id if _is_id(run_id) else None), (step if _is_id(step) else None)


def _run_of(arg: Any) -> str | None:
    if isinstance(arg, dict):
        if _is_id(arg.get("run")):
            return str(arg["run"])
        hdr = arg.get("@")
        if isinstance(hdr, list) and hdr and _is_id(hdr[0]):
            return str(hdr[0])
    elif isinstance(arg, (list, tuple)):
        # A fan-in step (a chord body) gets its branches' outcomes as one list: the run header
        # rides in them, one level down.
        return next((r for r in map(_run_of, arg) if r), None)
    return None


def _is_id(v: Any) -> bool:
    """A run or step id (never the repr of a missing one)."""
    return isinstance(v, str) and v not in ("", "None", "null")


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


def merge_event(row: dict[str, Any] | None, ev: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Fold one ``task-*`` event into a task row (a new row when ``row`` is None)."""
    kind = str(ev.get("type", ""))[5:]
    ts = float(ev.get("timestamp") or now)
    if row is None:
        row = {c.name: None for c in tasks.c}
        row.update(
            uuid=ev["uuid"], state=EVENT_STATE.get(kind, "PENDING"), state_ts=ts, ts=ts, retries=0
        )
    else:
        row = dict(row)
        row["ts"] = min(row["ts"], ts)
        state = EVENT_STATE.get(kind)
        # A client stamps task-sent after publishing, so a fast worker's events can be stamped
        # earlier: sent never takes a task back to PENDING, unless it is a retry's new message.
        resent = kind != "sent" or row["state"] in ("PENDING", "RETRY")
        if (
            state
            and resent
            and (
                ts > row["state_ts"]
                or (ts == row["state_ts"] and RANK[state] >= RANK.get(row["state"], 0))
            )
        ):
            row["state"], row["state_ts"] = state, ts
    if kind in ("sent", "received"):
        for k in ("name", "parent_id", "root_id"):
            if ev.get(k):
                row[k] = ev[k]
        for k in ("eta", "expires"):
            if ev.get(k):
                row[k] = str(ev[k])
        if ev.get("args") is not None:
            row["args"] = _cut(ev["args"])
            row["run_id"], row["step_id"] = run_and_step(ev["args"])
        if ev.get("kwargs") is not None:
            row["kwargs"] = _cut(ev["kwargs"])
        row["retries"] = max(int(row["retries"] or 0), int(ev.get("retries") or 0))
        if kind == "sent":
            row["queue"] = ev.get("queue") or ev.get("routing_key") or row["queue"]
    if kind in (
        "received",
        "started",
        "succeeded",
        "failed",
        "retried",
        "rejected",
        "revoked",
    ) and ev.get("hostname"):
        if kind != "revoked" or not row["worker"]:
            row["worker"] = ev["hostname"]
    if kind == "succeeded":
        row["result"] = _cut(ev.get("result"))
        row["runtime"] = ev.get("runtime")
    if kind in ("failed", "retried"):
        row["exception"] = _cut(ev.get("exception"))
        row["traceback"] = _cut(ev.get("traceback"))
    if kind == "revoked" and ev.get("terminated"):
        row["exception"] = row["exception"] or f"terminated (signal {ev.get('signum')})"
    col = {
        "sent": "sent_at",
        "received": "received_at",
        "started": "started_at",
        "succeeded": "succeeded_at",
        "failed": "failed_at",
        "retried": "retried_at",
        "revoked": "revoked_at",
        "rejected": "rejected_at",
    }.get(kind)
    if col:
        row[col] = ts
    row["updated_at"] = now
    return row


# Columns a task row updates (all but its key), and the statements that write many rows at once.
_UPDATED = [c.name for c in tasks.c if c.name != "uuid"]
_UPDATE_MANY = (
    update(tasks)
    .where(tasks.c.uuid == bindparam("k_uuid"))
    .values({c: bindparam(f"k_{c}") for c in _UPDATED})
)
# PostgreSQL: the rows travel as one JSON parameter and the server unpacks them. Sent as ordinary
# parameters (psycopg's pipelined executemany) 500 rows of 30 columns cost ~100-200 ms of Python
# in the web process, and under gevent that holds every socket and request for as long
# (docs/performance.md, "The run list under load").
_PG_INSERT = text(
    f"INSERT INTO {tasks.name} SELECT * FROM json_populate_recordset(NULL::{tasks.name}, CAST(:rows AS json))"
)
_PG_UPDATE = text(
    f"UPDATE {tasks.name} AS t SET "
    + ", ".join(f"{c} = r.{c}" for c in _UPDATED)
    + f" FROM json_populate_recordset(NULL::{tasks.name}, CAST(:rows AS json)) AS r WHERE t.uuid = r.uuid"
)
MERGE_CHUNK = 50  # events merged between two calls of write_batch's ``pause``


def write_batch(
    engine: Engine,
    events: Sequence[Mapping[str, Any]],
    now: float | None = None,
    pause: Callable[[], Any] | None = None,
) -> int:
    """Upsert the tasks the events touch, in one transaction; returns how many rows changed.

    ``pause`` is called between parts of the work (every MERGE_CHUNK events merged, around the
    writes): the web process passes ``web.serving.cooperate`` so its loop is not held for long."""
    now = time.time() if now is None else now
    by_id: dict[str, list[Mapping[str, Any]]] = {}
    for ev in events:
        if ev.get("uuid"):
            by_id.setdefault(str(ev["uuid"]), []).append(ev)
    if not by_id:
        return 0
    pg = engine.dialect.name == "postgresql"
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                ids = list(by_id)
                existing: dict[str, dict[str, Any]] = {}
                for i in range(0, len(ids), 500):
                    for r in conn.execute(select(tasks).where(tasks.c.uuid.in_(ids[i : i + 500]))):
                        existing[r.uuid] = dict(r._mapping)
                new: list[dict[str, Any]] = []
                changed: list[dict[str, Any]] = []
                merged = 0
                for uid, evs in by_id.items():
                    row = existing.get(uid)
                    for ev in evs:
                        row = merge_event(row, ev, now)
                    if row is not None:
                        (changed if uid in existing else new).append(row)
                    merged += len(evs)
                    if pause is not None and merged >= MERGE_CHUNK:
                        merged = 0
                        pause()
                _fill_from_attempts(conn, new + changed)
                if pg:
                    if new:
                        conn.execute(_PG_INSERT, {"rows": json.dumps(new)})
                    if changed:
                        conn.execute(_PG_UPDATE, {"rows": json.dumps(changed)})
                else:
                    if new:
                        conn.execute(insert(tasks), new)
                    if changed:
                        conn.execute(
                            _UPDATE_MANY, [{f"k_{k}": v for k, v in row.items()} for row in changed]
                        )
                return len(new) + len(changed)
        except sa_exc.IntegrityError:  # another web process inserted one of these tasks first
            if attempt == 2:
                raise
    return 0


STEP_TASK = "canvasflow.step"


def _fill_from_attempts(conn: Any, rows: list[dict[str, Any]]) -> None:
    """Give step tasks whose arguments did not name their run or step (a fan-in step's repr that
    Celery cut at 1 KB before the spec) the ids the audit store recorded for their task id."""
    missing = {
        r["uuid"]: r
        for r in rows
        if r.get("name") == STEP_TASK and (r.get("run_id") is None or r.get("step_id") is None)
    }
    if not missing:
        return
    a = step_attempts.c
    for uid, run_id, step_id in conn.execute(
        select(a.task_id, a.run_id, a.step_id).where(a.task_id.in_(list(missing))).distinct()
    ):
        row = missing[uid]
        row["run_id"], row["step_id"] = run_id, step_id


LINK_EVERY = 2.0  # seconds between two passes of link_step_tasks while tasks are being written
LINK_WINDOW = 600.0  # tasks first seen this recently are linked late; older ones are left alone


def link_step_tasks(engine: Engine, since: float) -> int:
    """Give step tasks first seen after ``since`` that still miss their run or step (their repr
    was cut, and the recorder had not yet written their attempt when their events were merged)
    the ids of the attempt recorded under their task id; returns how many rows changed."""
    t, a = tasks.c, step_attempts.c
    with engine.begin() as conn:
        found = conn.execute(
            select(t.uuid, a.run_id, a.step_id)
            .join(step_attempts, a.task_id == t.uuid)
            .where(
                t.name == STEP_TASK,
                t.ts >= since,
                or_(t.run_id.is_(None), t.step_id.is_(None)),
            )
            .distinct()
        ).all()
        if found:
            conn.execute(
                update(tasks)
                .where(t.uuid == bindparam("k_uuid"))
                .values(run_id=bindparam("v_run"), step_id=bindparam("v_step")),
                [{"k_uuid": u, "v_run": r, "v_step": st} for u, r, st in found],
            )
    return len(found)


def prune(engine: Engine, older_than: float) -> int:
    """Delete the tasks first seen before ``older_than`` (unix seconds), in short batches."""
    return prune_celery_tasks(engine, older_than)


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------

SORTABLE = {
    "ts": tasks.c.ts,
    "received": tasks.c.received_at,
    "started": tasks.c.started_at,
    "runtime": tasks.c.runtime,
    "name": tasks.c.name,
    "state": tasks.c.state,
    "worker": tasks.c.worker,
}
SEARCHABLE = {
    "name": tasks.c.name,
    "state": tasks.c.state,
    "worker": tasks.c.worker,
    "uuid": tasks.c.uuid,
    "run": tasks.c.run_id,
    "step": tasks.c.step_id,
    "queue": tasks.c.queue,
    "args": tasks.c.args,
    "kwargs": tasks.c.kwargs,
    "result": tasks.c.result,
    "exception": tasks.c.exception,
    "root": tasks.c.root_id,
    "parent": tasks.c.parent_id,
}
LIST_COLUMNS = [c for c in tasks.c if c.name not in ("traceback", "kwargs", "args", "result")]


@dataclass
class TaskQuery:
    state: Sequence[str] = ()
    worker: str | None = None
    name: str | None = None
    run: str | None = None
    since: float | None = None  # on the received time (first-seen when never received)
    until: float | None = None
    search: str = ""
    sort: str = "-ts"
    limit: int = 50
    cursor: str | None = None
    warnings: list[str] = field(default_factory=list)


class BadQuery(ValueError):
    pass


def _encode(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def _decode(cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        out = json.loads(raw)
        assert isinstance(out, list) and len(out) == 2
        return out
    except Exception:  # noqa: BLE001 - any garbage is one error
        raise BadQuery("cursor: not a cursor this API returned") from None


def parse_search(text: str) -> list[Any]:
    """``field:value`` terms (AND-ed; ``*`` is a wildcard); bare words match name, uuid or args."""
    conds: list[Any] = []
    for term in text.split():
        key, sep, value = term.partition(":")
        if sep and key in SEARCHABLE:
            col = SEARCHABLE[key]
            conds.append(col.like(value.replace("*", "%")) if "*" in value else col == value)
        else:
            like = f"%{term.replace('%', '').replace('*', '%')}%"
            conds.append(
                or_(tasks.c.name.like(like), tasks.c.uuid.like(like), tasks.c.args.like(like))
            )
    return conds


def list_tasks(engine: Engine, q: TaskQuery) -> tuple[list[dict[str, Any]], str | None]:
    """One page of tasks, keyset-paginated on (sort key, uuid)."""
    desc = q.sort.startswith("-")
    key = q.sort.lstrip("-+")
    if key not in SORTABLE:
        raise BadQuery(
            f"sort: one of {', '.join(sorted(SORTABLE))} (prefix - for descending), not {key!r}"
        )
    col = SORTABLE[key]
    # NOT NULL columns sort on the bare column, so the (filter, ts) indexes serve the page
    sort_expr = (
        col
        if not col.nullable
        else func.coalesce(col, -1.0 if key in ("received", "started", "runtime") else "")
    )
    conds: list[Any] = []
    if q.state:
        bad = [s for s in q.state if s.upper() not in STATES]
        if bad:
            raise BadQuery(f"state: one of {', '.join(STATES)}, not {', '.join(bad)}")
        conds.append(tasks.c.state.in_([s.upper() for s in q.state]))
    for value, c in ((q.worker, tasks.c.worker), (q.name, tasks.c.name), (q.run, tasks.c.run_id)):
        if value:
            conds.append(c == value)
    when = func.coalesce(tasks.c.received_at, tasks.c.ts)
    if q.since is not None:
        conds.append(when >= q.since)
    if q.until is not None:
        conds.append(when < q.until)
    conds.extend(parse_search(q.search))
    if q.cursor:
        value, uid = _decode(q.cursor)
        conds.append(
            or_(sort_expr < value, and_(sort_expr == value, tasks.c.uuid < uid))
            if desc
            else or_(sort_expr > value, and_(sort_expr == value, tasks.c.uuid > uid))
        )
    order = (
        [sort_expr.desc(), tasks.c.uuid.desc()] if desc else [sort_expr.asc(), tasks.c.uuid.asc()]
    )
    limit = max(1, min(int(q.limit), 1000))
    stmt = (
        select(*LIST_COLUMNS, sort_expr.label("_k")).where(*conds).order_by(*order).limit(limit + 1)
    )
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = _encode([rows[-1]["_k"], rows[-1]["uuid"]]) if more and rows else None
    for r in rows:
        r.pop("_k")
    return rows, cursor


def get_task(engine: Engine, uuid: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(tasks).where(tasks.c.uuid == uuid)).first()
        if row is None:
            return None
        out = dict(row._mapping)
        out["children"] = [
            r[0]
            for r in conn.execute(
                select(tasks.c.uuid)
                .where(tasks.c.parent_id == uuid)
                .order_by(tasks.c.ts)
                .limit(200)
            )
        ]
    return out


def counts(engine: Engine) -> dict[str, dict[str, int]]:
    """{worker: {state: n}} over the whole history (the workers' succeeded/failed totals)."""
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for worker, state, n in conn.execute(
            select(tasks.c.worker, tasks.c.state, func.count()).group_by(
                tasks.c.worker, tasks.c.state
            )
        ):
            out.setdefault(worker or "", {})[state] = int(n)
    return out


# ---------------------------------------------------------------------------------------------
# The monitor: receiver thread + writer thread
# ---------------------------------------------------------------------------------------------


def heartbeat_expired(w: Mapping[str, Any], now: float) -> bool:
    """Celery's rule: a worker is gone after two missed heartbeats (``freq`` * 2)."""
    return now > float(w.get("timestamp") or 0) + 2 * float(w.get("freq") or 2.0) + 1.0


class FleetMonitor:
    """Capture Celery events into ``cf_celery_tasks`` and a Redis hash of worker state."""

    def __init__(
        self,
        celery_app: Any,
        engine: Engine | None,
        redis_client: Any,
        workers_key: str,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        max_queue: int = 20_000,
        retention: float = 7 * 86400.0,
        prepare: Callable[[], Any] | None = None,
        pause: Callable[[], Any] | None = None,
    ) -> None:
        self.app = celery_app
        # Called between parts of a batch (write_batch): the web process's cooperate().
        self.pause = pause
        self.engine = engine
        # Brings the schema up to date (``AuditStore.upgrade``) when a batch fails, e.g. because
        # the database came up after this process.
        self.prepare = prepare
        self._prepared_at = -1e9
        self.r = redis_client
        self.workers_key = workers_key
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retention = retention
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_queue)
        self.stop_event = threading.Event()
        self.dropped = 0
        self.written = 0
        self.errors = 0
        self.connected = False
        self._receiver: Any = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in (
            (self._receive_loop, "cf-fleet-events"),
            (self._write_loop, "cf-fleet-writer"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        for t in self._threads:
            t.join(timeout)

    def _prepare(self) -> None:
        if self.prepare is None or time.monotonic() - self._prepared_at < 30.0:
            return
        self._prepared_at = time.monotonic()
        try:
            self.prepare()
        except Exception as exc:  # noqa: BLE001 - the database may come later
            log.warning("task history table not ready: %s", exc)

    # -- receiving ----------------------------------------------------------------------------

    def _receive_loop(self) -> None:
        delay = 0.5
        while not self.stop_event.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    self._receiver = self.app.events.Receiver(conn, handlers={"*": self.on_event})
                    if self.stop_event.is_set():
                        return
                    self.connected = True
                    delay = 0.5
                    self._receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception as exc:  # noqa: BLE001 - the broker went away: reconnect, slower each time
                self.connected = False
                self.errors += 1
                if self.stop_event.is_set():
                    return
                log.warning("fleet event receiver: %s; reconnecting in %.1fs", exc, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, 10.0)
        self.connected = False

    def on_event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        if kind.startswith("worker-"):
            self._on_worker(kind, event)
        elif kind.startswith("task-") and self.engine is not None:
            try:
                self.queue.put_nowait(event)
            except queue.Full:
                self.dropped += 1

    def _on_worker(self, kind: str, ev: Mapping[str, Any]) -> None:
        host = ev.get("hostname")
        if not host:
            return
        state = {
            k: ev.get(k)
            for k in (
                "timestamp",
                "freq",
                "active",
                "processed",
                "loadavg",
                "sw_ident",
                "sw_ver",
                "sw_sys",
                "pid",
                "clock",
            )
        }
        state["online"] = kind != "worker-offline"
        state["last_event"] = kind
        try:
            self.r.hset(self.workers_key, host, json.dumps(state, default=str))
        except Exception as exc:  # noqa: BLE001 - next heartbeat tries again
            log.debug("worker state not saved: %s", exc)

    # -- writing ------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        last_prune = 0.0
        last_write = last_link = 0.0
        while not self.stop_event.is_set() or not self.queue.empty():
            batch = self._take()
            if batch and self.engine is not None:
                try:
                    self.written += write_batch(self.engine, batch, pause=self.pause)
                    last_write = time.time()
                except Exception as exc:  # noqa: BLE001 - keep the process up; the batch is lost
                    self.errors += 1
                    log.warning("task history batch of %d events not written: %s", len(batch), exc)
                    self._prepare()
            now = time.time()
            # A few seconds after tasks were written: link the step tasks the recorder had not
            # yet recorded then (an idle dashboard does not query).
            if self.engine is not None and now - last_write < 30 and now - last_link > LINK_EVERY:
                last_link = now
                try:
                    link_step_tasks(self.engine, now - LINK_WINDOW)
                except Exception as exc:  # noqa: BLE001
                    log.debug("linking step tasks failed: %s", exc)
            if self.engine is not None and time.time() - last_prune > 60:
                last_prune = time.time()
                try:
                    prune(self.engine, time.time() - self.retention)
                except Exception as exc:  # noqa: BLE001
                    log.debug("task history prune failed: %s", exc)

    def _take(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_interval
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every captured event is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while not self.queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(self.flush_interval + 0.1)


def worker_states(
    redis_client: Any, workers_key: str, now: float | None = None, purge_after: float | None = None
) -> dict[str, dict[str, Any]]:
    """Every worker seen through events: {hostname: state}, ``online`` judged by heartbeat age;
    workers offline for longer than ``purge_after`` seconds are forgotten."""
    now = time.time() if now is None else now
    out: dict[str, dict[str, Any]] = {}
    gone: list[str] = []
    for k, v in redis_client.hgetall(workers_key).items():
        host = k.decode() if isinstance(k, bytes) else k
        st = json.loads(v)
        st["online"] = bool(st.get("online")) and not heartbeat_expired(st, now)
        if (
            not st["online"]
            and purge_after is not None
            and now - float(st.get("timestamp") or 0) > purge_after
        ):
            gone.append(host)
            continue
        out[host] = st
    if gone:
        redis_client.hdel(workers_key, *gone)
    return out


def forget_workers(redis_client: Any, workers_key: str, hosts: Iterable[str]) -> int:
    hosts = list(hosts)
    return int(redis_client.hdel(workers_key, *hosts)) if hosts else 0
