"""The scheduler: starts a run for every fire time of every schedule trigger, exactly once,
however many schedulers run (docs/design.md, "Schedules: exactly once per fire time").

Schedules come from the latest registered version of each workflow. Each fire time has a
deterministic run id (a hash of workflow, trigger name and fire time) and a claim key in Redis:

1. ``SET claim <token> NX PX lease`` — one scheduler at a time holds the fire time;
2. the run is created under ``WATCH claim, run`` (``RunState.create(fence=...)``): only while
   the claim still holds this scheduler's token and no run with that id exists; a scheduler that
   stalled past its lease and lost the claim writes nothing;
3. ``SET claim done:<run id>``; the shared cursor (the latest fire time dealt with) moves on.

A scheduler killed between 1 and 3 leaves a claim that expires after the lease; the next one
to look finds the run (then marks it done) or creates it. A fire time is never skipped while
any scheduler runs within ``schedule_grace`` seconds of it, and never started twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from orchestrator.audit import schedules as sql
from orchestrator.audit.store import AuditStore, StoreError
from orchestrator.engine.runstate import FenceLost
from orchestrator.errors import CanvasflowError
from orchestrator.model.definition import from_stored
from orchestrator.model.schedule import due, next_fire
from orchestrator.model.triggers import Trigger
from orchestrator.records import text

log = logging.getLogger(__name__)

LEASE_MS = 10_000  # how long a claim protects a fire time its scheduler has not finished
DONE_TTL = 2 * 24 * 3600  # how long "done" is kept (the cursor has passed it long before)
MAX_WAIT = 1.0  # a scheduler looks at the registered workflows at least this often
PAUSED_SYNC = 10.0  # seconds between copies of the audit store's paused flags into Redis


@dataclass(frozen=True)
class Schedule:
    """A schedule trigger of the latest registered version of a workflow."""

    workflow: str
    version: str
    trigger: Trigger

    @property
    def name(self) -> str:
        return self.trigger.name

    @property
    def field(self) -> str:
        return schedule_field(self.workflow, self.trigger.name)


def schedule_field(workflow: str, trigger: str) -> str:
    return f"{workflow} {trigger}"


def fire_run_id(workflow: str, trigger: str, fire: datetime) -> str:
    """The run id of a fire time: the same in every scheduler (16 hex digits, like a run id)."""
    seed = f"{workflow}\n{trigger}\n{int(fire.timestamp())}".encode()
    return hashlib.sha256(seed).hexdigest()[:16]


def seconds(v: Any) -> float:
    """A time read from Redis; 0.0 for anything that is not a number (never an exception)."""
    try:
        return float(text(v) or 0)
    except ValueError:
        return 0.0


def iso(t: datetime | float | None) -> str | None:
    if t is None:
        return None
    if isinstance(t, int | float):
        t = datetime.fromtimestamp(t, UTC)
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Catalogue:
    """The schedules of the latest registered versions, re-read cheaply: one round trip for the
    latest version of every workflow, a definition parsed only when its latest version changed."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._seen: dict[str, tuple[str, tuple[Trigger, ...]]] = {}

    def current(self) -> list[Schedule]:
        r, keys = self.client.redis, self.client.keys
        ids = sorted(text(m) for m in r.smembers(keys.workflows))
        pipe = r.pipeline(transaction=False)
        for wf in ids:
            pipe.lindex(keys.workflow_versions(wf), -1)
        latest = [text(v) for v in pipe.execute()]
        out: list[Schedule] = []
        for wf, version in zip(ids, latest, strict=True):
            if not version:
                continue
            seen = self._seen.get(wf)
            if seen is None or seen[0] != version:
                triggers: tuple[Trigger, ...] = ()
                raw = r.hget(keys.workflow(wf), version)
                try:
                    triggers = from_stored(json.loads(raw)).triggers if raw else ()
                except Exception as exc:  # noqa: BLE001 - one bad record must not stop the rest
                    log.warning(
                        "workflow %s version %s: cannot read its triggers: %s", wf, version, exc
                    )
                seen = (version, triggers)
                self._seen[wf] = seen
            out.extend(Schedule(wf, version, t) for t in seen[1] if t.is_schedule)
        return out


class Scheduler:
    """One scheduler process (or thread). ``tick()`` does one pass; ``run_forever`` loops."""

    def __init__(
        self,
        client: Any,
        store: AuditStore | None = None,
        *,
        grace: float | None = None,
        catchup_max: int | None = None,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.r = client.redis
        self.keys = client.keys
        self.grace = float(client.settings.schedule_grace if grace is None else grace)
        self.catchup_max = int(
            client.settings.schedule_catchup_max if catchup_max is None else catchup_max
        )
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.catalogue = Catalogue(client)
        self._paused_synced = float("-inf")
        self.fired = 0
        self.errors = 0

    # -- one pass -----------------------------------------------------------------------------

    def tick(self) -> float:
        """Fire every due fire time; returns the next fire time (unix s) of any schedule."""
        now_ts = self.clock()
        self.r.hset(self.keys.schedulers, self.owner, f"{now_ts:.3f}")
        self._sync_paused(now_ts)
        schedules = self.catalogue.current()
        paused = {text(m) for m in self.r.smembers(self.keys.schedule_paused)}
        cursors = self._cursors(schedules)
        now = datetime.fromtimestamp(now_ts, UTC)
        soonest = now_ts + MAX_WAIT
        for s in schedules:
            try:
                cursor = cursors.get(s.field)
                if s.field in paused:
                    # Fire times while paused are skipped (documented): the cursor follows now.
                    self._move(s, now_ts)
                    continue
                self._fire_due(s, cursor, now)
                soonest = min(soonest, next_fire(s.trigger, now).timestamp())
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception as exc:  # noqa: BLE001 - one schedule's trouble must not stop the rest
                self.errors += 1
                log.exception("schedule %s of %s: %s", s.name, s.workflow, exc)
        return soonest

    def _cursors(self, schedules: list[Schedule]) -> dict[str, float]:
        if not schedules:
            return {}
        raw = self.r.zmscore(self.keys.schedule_cursors, [s.field for s in schedules])
        out: dict[str, float] = {}
        missing = []
        for s, v in zip(schedules, raw, strict=True):
            if v is not None:
                out[s.field] = float(v)
            else:
                missing.append(s)
        if missing and self.store is not None:  # Redis lost its cursors: the audit store's
            try:
                rows = sql.rows(self.store)
            except StoreError as exc:
                log.warning("cannot read schedules from the audit store: %s", exc)
                rows = {}
            for s in missing:
                row = rows.get((s.workflow, s.name))
                if row is not None and row.last_fire is not None:
                    out[s.field] = row.last_fire
        return out

    def _fire_due(self, s: Schedule, cursor: float | None, now: datetime) -> None:
        cur = datetime.fromtimestamp(cursor, UTC) if cursor is not None else None
        d = due(s.trigger, cur, now, grace=self.grace, catchup_max=self.catchup_max)
        if d.skipped:
            log.warning(
                "schedule %s of %s: %d fire time(s) missed while no scheduler ran were skipped "
                "(catchup %s)",
                s.name,
                s.workflow,
                d.skipped,
                "on, at most CANVASFLOW_SCHEDULE_CATCHUP_MAX" if s.trigger.catchup else "off",
            )
        for t in d.fire:
            if not self._fire(s, t):
                # Held by another scheduler or not submitted: the cursor stays before it, so it is
                # looked at again (and taken over once its claim expires).
                if cursor is None or t.timestamp() > cursor:
                    self._move(s, max(cursor or 0.0, t.timestamp() - 1e-3))
                return
        if d.fire or d.skipped or cursor is None or d.cursor.timestamp() - cursor > self.grace / 2:
            # Nothing due: the cursor may stay behind a little (nothing lies between), which
            # saves a write per schedule per tick.
            self._move(s, d.cursor.timestamp())

    def _move(self, s: Schedule, ts: float) -> None:
        """The shared cursor only moves forward (ZADD GT: added if absent, raised if greater)."""
        self.r.zadd(self.keys.schedule_cursors, {s.field: ts}, gt=True)

    def _fire(self, s: Schedule, t: datetime) -> bool:
        """Start the run of fire time ``t`` unless some scheduler did; True once it exists."""
        run_id = fire_run_id(s.workflow, s.name, t)
        claim = self.keys.schedule_fire(run_id)
        token = f"{self.owner}:{secrets.token_hex(4)}"
        if not self.r.set(claim, token, nx=True, px=LEASE_MS):
            held = text(self.r.get(claim))
            return held.startswith("done:")
        if self.client.state.exists(run_id):  # created by a holder that died before "done"
            self._done(s, t, run_id, claim)
            return True
        try:
            self.client.submit(
                s.workflow,
                version=s.version,
                inputs=dict(s.trigger.inputs),
                triggered_by="scheduler",
                trigger_type="schedule",
                trigger_name=s.name,
                trigger_ref=iso(t),
                run_id=run_id,
                fence=(claim, token),
            )
        except FenceLost:
            exists = bool(self.client.state.exists(run_id))
            if exists:
                self._done(s, t, run_id, claim)
            return exists
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except CanvasflowError as exc:
            # The definition or its inputs cannot start a run (it will not get better by trying
            # again every tick): the fire time is dealt with, and says why.
            if self.client.state.exists(run_id):  # created, then the dispatch failed
                self._done(s, t, run_id, claim)
                return True
            log.error("schedule %s of %s at %s: not started: %s", s.name, s.workflow, iso(t), exc)
            self.r.set(claim, f"done:failed: {exc}"[:500], ex=DONE_TTL)
            self.errors += 1
            return True
        self._done(s, t, run_id, claim)
        self.fired += 1
        log.info(
            "schedule %s of %s: fire time %s started run %s", s.name, s.workflow, iso(t), run_id
        )
        return True

    def _done(self, s: Schedule, t: datetime, run_id: str, claim: str) -> None:
        self.r.set(claim, f"done:{run_id}", ex=DONE_TTL)
        if self.store is not None:
            try:
                sql.record_fire(self.store, s.workflow, s.name, t.timestamp(), run_id)
            except StoreError as exc:
                log.warning("cannot record the fire of %s/%s: %s", s.workflow, s.name, exc)

    def _sync_paused(self, now_ts: float) -> None:
        """Copy the audit store's paused flags into Redis (at start, then every PAUSED_SYNC s),
        so a Redis that restarted empty still knows which schedules are paused."""
        if now_ts - self._paused_synced < PAUSED_SYNC:
            return
        if self.store is None:
            self._paused_synced = now_ts
            self._forget_gone(now_ts)
            return
        try:
            rows = sql.rows(self.store)
        except StoreError as exc:
            log.warning("cannot read paused schedules from the audit store: %s", exc)
            return
        self._paused_synced = now_ts
        self._forget_gone(now_ts)
        paused = [schedule_field(w, n) for (w, n), row in rows.items() if row.paused]
        resumed = [schedule_field(w, n) for (w, n), row in rows.items() if not row.paused]
        pipe = self.r.pipeline(transaction=False)
        if paused:
            pipe.sadd(self.keys.schedule_paused, *paused)
        if resumed:
            pipe.srem(self.keys.schedule_paused, *resumed)
        pipe.execute()

    def _forget_gone(self, now_ts: float) -> None:
        """Drop schedulers that have not ticked for a day from the alive hash (a SIGKILLed one
        never removes itself)."""
        alive = self.r.hgetall(self.keys.schedulers)
        gone = [k for k, v in alive.items() if now_ts - seconds(v) > 86400]
        if gone:
            self.r.hdel(self.keys.schedulers, *gone)

    # -- the loop -----------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set; Redis or the store being away is waited out, not fatal."""
        log.info("scheduler %s started", self.owner)
        backoff = 0.1
        while not stop.is_set():
            try:
                soonest = self.tick()
                backoff = 0.1
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("scheduler: Redis unreachable (%s); retrying in %.1f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception:  # noqa: BLE001 - the loop outlives any one failure
                self.errors += 1
                log.exception("scheduler tick failed")
                stop.wait(1.0)
                continue
            stop.wait(max(0.0, min(soonest - self.clock(), MAX_WAIT)))
        with contextlib.suppress(Exception):
            self.r.hdel(self.keys.schedulers, self.owner)
        log.info("scheduler %s stopped", self.owner)

    def start_thread(self, stop: threading.Event) -> threading.Thread:
        """Run the scheduler in a daemon thread (the web process embeds it so)."""
        t = threading.Thread(
            target=self.run_forever, args=(stop,), name="canvasflow-scheduler", daemon=True
        )
        t.start()
        return t
