"""The watchdog: finds live runs that stalled and re-dispatches what is left of them.

A run stalls when its canvas is gone while the run is not final: Redis lost the queued message
(no persistence, a purge, a worker killed and its unacknowledged message dropped), or Celery did
not continue a chain. Nothing on the step path can notice that, because nothing runs any more.

``check_once`` reads the live set (``cf:live``: runs not final, maintained by the Lua scripts
that create, restart and end runs) and remembers, in ``cf:watchdog``, the event sequence number
each run had and since when. A run whose seq has not moved for ``watchdog_stall_seconds``, that
holds no step lease, and of which no broker message mentions the id (queued, or delivered and
not yet acknowledged — a retry waiting for its countdown, or a message a dead worker held, which
the transport restores after its visibility timeout) is claimed by one Lua call that compares
the seq it was judged at: so of several watchdogs judging the same run, one re-dispatches it.
The claim bumps the dispatch epoch (whatever is left of the old canvas becomes inert) and
appends a ``run_redispatched`` event, which the recorder writes to the operator audit log.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from orchestrator.audit.store import AuditStore
from orchestrator.connect import broker_redis
from orchestrator.engine import slots
from orchestrator.engine.states import (
    FINAL_RUN_STATUSES,
    SETTLED_STEP_STATUSES,
    Move,
    RunStatus,
    StepStatus,
    sources,
)
from orchestrator.fleet.inspect import amqp_queue_lengths, queue_keys
from orchestrator.model.definition import from_stored
from orchestrator.records import text
from orchestrator.settings import Settings

log = logging.getLogger("canvasflow.watchdog")

# Statuses in which a run waits for an operator, not for a message: never stalled.
WAITING = frozenset({RunStatus.PAUSED, RunStatus.COMPENSATION_FAILED})
FINAL = FINAL_RUN_STATUSES
# Statuses the watchdog may re-dispatch: the redispatch move of the transition table.
REDISPATCHABLE = frozenset(sources(Move.REDISPATCH))
# A run of a group in these statuses may be waiting for a concurrency slot.
SLOT_WAITING = frozenset({RunStatus.PENDING, RunStatus.PAUSING})
# At most this many broker messages are decoded per tick looking for stalled runs' ids.
SCAN_LIMIT = 200_000


@dataclass
class TickReport:
    """What one ``check_once`` saw and did."""

    live: int = 0
    candidates: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # no longer in Redis, or already final
    failed: list[str] = field(default_factory=list)  # re-dispatch raised (logged)
    recovered: list[str] = field(default_factory=list)  # rebuilt from the audit store


class Watchdog:
    """Finds stalled live runs and re-dispatches them; safe to run several at once."""

    def __init__(
        self,
        client: Any,
        *,
        stall_seconds: float | None = None,
        name: str | None = None,
        recover_store: AuditStore | None = None,
    ) -> None:
        self.client = client
        self.settings: Settings = client.settings
        self.r = client.redis
        # The queues and kombu's unacked hash live in the broker's Redis, which need not be the
        # state Redis (a Redis Cluster for the state always has its broker elsewhere).
        self.broker = broker_redis(self.settings, self.r)
        self.keys = client.keys
        self.state = client.state
        self.dispatcher = client.dispatcher
        self.stall = float(
            stall_seconds if stall_seconds is not None else self.settings.watchdog_stall_seconds
        )
        self.name = name or f"watchdog@{socket.gethostname()}:{os.getpid()}"
        # The audit store to rebuild lost runs from (--recover), and the instance token seen.
        self.recover_store = recover_store
        self._token: str | None = None

    # -- one pass -----------------------------------------------------------------------------

    def check_once(self, at: float | None = None) -> TickReport:
        t = time.time() if at is None else at
        report = TickReport()
        if self.recover_store is not None:
            report.recovered = self.recover_if_lost()
        ids = [text(i) for i in self.r.zrange(self.keys.live, 0, -1)]
        report.live = len(ids)
        if not ids:
            return report
        heads = self.state.runs(ids, "status", "seq", "conc_group")
        seen_raw = self.r.hmget(self.keys.watchdog, ids)
        waiting = self.slot_pass(ids, heads)
        stale, remember, forget = [], {}, []
        candidates: dict[str, tuple[str, str, float]] = {}
        for rid, head, seen in zip(ids, heads, seen_raw, strict=True):
            st, sq = (head.status, str(head.seq)) if head else ("", "")
            if not st or st in FINAL:
                stale.append(rid)  # expired, lost with Redis, or ended before the live set existed
                continue
            if st in WAITING or st not in REDISPATCHABLE or rid in waiting:
                forget.append(rid)  # the clock starts again when an operator moves it
                continue
            mark = f"{st}:{sq}"
            old_mark, _, since = text(seen).rpartition(" ")
            if old_mark != mark:
                remember[rid] = f"{mark} {t:.3f}"
            elif t - float(since or t) >= self.stall:
                candidates[rid] = (st, sq, t - float(since))
        pipe = self.r.pipeline(transaction=False)
        if stale:
            pipe.zrem(self.keys.live, *stale)
        if stale or forget:
            pipe.hdel(self.keys.watchdog, *stale, *forget)
        if remember:
            pipe.hset(self.keys.watchdog, mapping=remember)
        pipe.execute()
        report.dropped = stale
        report.candidates = sorted(candidates)
        if not candidates:
            return report
        alive = self._alive(candidates)
        if alive:
            # Progress of another kind (a lease, a message): judge again after another stall period.
            self.r.hset(
                self.keys.watchdog,
                mapping={
                    rid: f"{candidates[rid][0]}:{candidates[rid][1]} {t:.3f}" for rid in alive
                },
            )
        for rid in sorted(set(candidates) - alive):
            st, sq, stalled_for = candidates[rid]
            try:
                if self.redispatch(rid, st, sq, stalled_for):
                    report.redispatched.append(rid)
            except Exception:
                # One run that cannot be re-sent (a broker error after the claim: it is judged
                # again after another stall period) must not keep the others waiting.
                log.exception("watchdog: re-dispatching run %s failed", rid)
                report.failed.append(rid)
        return report

    def slot_pass(self, ids: list[str], heads: list[Any]) -> set[str]:
        """Concurrency slots: the live runs waiting for a slot (not stalled: they wait), after
        reclaiming the stale slots of their groups and sending the runs that get one (a slot
        held by a run whose state expired, or that Redis lost, frees here)."""
        slotted = {
            rid: head.conc_group
            for rid, head in zip(ids, heads, strict=True)
            if head is not None and head.conc_group and head.status in SLOT_WAITING
        }
        if not slotted:
            return set()
        place = slots.places(self.state, slotted)
        groups = {slotted[rid] for rid, p in place.items() if p == "waiting"}
        for group in sorted(groups):
            try:
                self.dispatcher.admitted(slots.fill(self.state, group))
            except Exception:
                log.exception("watchdog: filling the slots of %s failed", group)
        return {rid for rid, p in place.items() if p == "waiting"}

    def _alive(self, candidates: Mapping[str, tuple[str, str, float]]) -> set[str]:
        """The candidates that hold a step lease or have a message in the broker."""
        alive = self.state.leased(candidates)
        rest = [rid for rid in candidates if rid not in alive]
        if rest:
            alive |= self.mentioned(rest, self._queues(rest))
        return alive

    def _queues(self, run_ids: Iterable[str]) -> set[str]:
        queues = {self.settings.default_queue}
        for run in self.state.runs(run_ids, "definition_json"):
            try:
                body = run.definition if run else {}
            except ValueError:
                continue
            default = (body.get("defaults") or {}).get("queue")
            for s in body.get("steps") or ():
                if isinstance(s, dict):
                    queues.add(s.get("queue") or default or self.settings.default_queue)
                    comp = s.get("compensate")
                    if isinstance(comp, dict) and comp.get("queue"):
                        queues.add(comp["queue"])
        return queues

    def mentioned(self, run_ids: Iterable[str], queues: Iterable[str]) -> set[str]:
        """The runs of ``run_ids`` whose id appears in a message queued on one of ``queues`` or
        delivered and not acknowledged yet (kombu's ``unacked`` hash)."""
        wanted = {rid: rid.encode() for rid in run_ids}
        if self.settings.broker_is_amqp:
            return self._mentioned_amqp(set(wanted), queues)
        found: set[str] = set()
        scanned = 0

        def look(raw: bytes) -> None:
            nonlocal scanned
            scanned += 1
            body = message_text(raw)
            for rid, b in wanted.items():
                if rid not in found and b in body:
                    found.add(rid)

        for q in sorted(set(queues)):
            for _, key in queue_keys(self.settings.key_prefix, q):
                start = 0
                while scanned < SCAN_LIMIT and len(found) < len(wanted):
                    chunk = self.broker.lrange(key, start, start + 999)
                    if not chunk:
                        break
                    start += len(chunk)
                    for raw in chunk:
                        look(raw)
        for _, raw in self.broker.hscan_iter(self.keys.broker_unacked, count=500):
            if len(found) == len(wanted) or scanned >= SCAN_LIMIT:
                break
            look(raw)
        if scanned >= SCAN_LIMIT:
            # Too many messages to be sure: count every candidate as alive rather than duplicate work.
            log.warning(
                "watchdog: more than %d broker messages, not judging %d run(s) this time",
                SCAN_LIMIT,
                len(wanted) - len(found),
            )
            return set(wanted)
        return found

    def _mentioned_amqp(self, run_ids: set[str], queues: Iterable[str]) -> set[str]:
        """On AMQP a queued message cannot be read without taking it, and a delivered,
        unacknowledged one (a retry waiting for its countdown is held by a worker) cannot be seen
        at all: a candidate counts as alive while any queue its steps use holds a message, and
        one whose queues are all empty is judged on its lease and events alone
        (docs/operations.md, "RabbitMQ as broker")."""
        lengths = amqp_queue_lengths(self.client.celery, queues)
        waiting = {q for q, v in lengths.items() if v["total"]}
        alive = {rid for rid in run_ids if self._queues([rid]) & waiting}
        if alive:
            log.info(
                "watchdog: %d run(s) not judged: messages wait on the AMQP broker in %s",
                len(alive),
                ", ".join(sorted(waiting)),
            )
        return alive

    # -- re-dispatch --------------------------------------------------------------------------

    def redispatch(self, run_id: str, status: str, seq: str, stalled_for: float) -> bool:
        """Claim the run (if it is still at ``seq``) and send what is left of it."""
        data = self.state.read(run_id)
        if data is None:
            return False
        run, steps, _ = data
        defn = from_stored(run.definition)
        if run.conc_group and status == RunStatus.PENDING:
            place = slots.places(self.state, {run_id: run.conc_group})[run_id]
            if place == "":
                # Its submit died between recording it and asking for a slot: ask now.
                adm = self.dispatcher.readmit(run_id)
                if adm is not None and adm.victim:
                    self.client._evict(adm.victim, run_id, defn)
                log.warning("watchdog %s: run %s asked for its slot again", self.name, run_id)
                return adm is not None
        # COMPENSATING counts as left: its compensation is what is sent again.
        left = [
            s
            for s in defn.step_ids
            if s not in steps
            or steps[s].status not in SETTLED_STEP_STATUSES
            or steps[s].status == StepStatus.COMPENSATING
        ]
        reason = (
            f"no lease, no queued message and no event for {stalled_for:.0f}s "
            f"(CANVASFLOW_WATCHDOG_STALL_SECONDS={self.stall:g})"
        )
        verdict, epoch = self.state.claim_stalled(
            run_id,
            status,
            seq,
            {
                "watchdog": self.name,
                "reason": reason,
                "stalled_for": round(stalled_for, 1),
                "status": status,
                "steps": left,
            },
        )
        if verdict != "ok":
            return False
        log.warning(
            "watchdog %s: run %s (%s) stalled for %.0fs: re-dispatched with epoch %d (steps left: %s)",
            self.name,
            run_id,
            status,
            stalled_for,
            epoch,
            ", ".join(left) or "none",
        )
        self.dispatcher.resend(run_id, epoch, status, run, defn, steps)
        return True

    # -- the process --------------------------------------------------------------------------

    def seed_live(self, chunk: int = 1000) -> int:
        """Add to the live set the runs that are not final but missing from it (runs started
        before the live set existed); returns how many. Reads the run index once."""
        added, start = 0, 0
        while True:
            ids = [
                text(i)
                for i in self.r.zrange(self.keys.runs, start, start + chunk - 1, withscores=False)
            ]
            if not ids:
                return added
            start += len(ids)
            missing = {
                rid: run.created_at or 0.0
                for rid, run in zip(ids, self.state.runs(ids, "status", "created_at"), strict=True)
                if run is not None and run.status not in FINAL
            }
            if missing:
                added += int(self.r.zadd(self.keys.live, missing, nx=True))

    def recover_if_lost(self) -> list[str]:
        """With an audit store (``canvasflow watchdog --recover``): when the instance token this
        watchdog saw in Redis is gone or changed, Redis came back without canvasflow's state;
        rebuild the lost runs from the store (orchestrator/engine/recover.py). Returns them."""
        from orchestrator.engine.recover import recover

        token = self.r.get(self.keys.instance)
        if token is not None and text(token) == self._token:
            return []
        if token is None:
            self.r.set(self.keys.instance, os.urandom(8).hex(), nx=True)
            token = self.r.get(self.keys.instance)
        seen, self._token = self._token, text(token)
        if seen is None:
            return []  # the first look: nothing to compare with (`canvasflow recover` by hand)
        log.warning("watchdog %s: Redis lost canvasflow's state; recovering runs", self.name)
        assert self.recover_store is not None
        report = recover(
            self.recover_store,
            self.state,
            self.dispatcher,
            actor=f"watchdog {self.name}",
            reason="Redis came back without canvasflow's state (seen by the watchdog)",
        )
        if report.registered:
            log.warning(
                "watchdog: registered %d workflow version(s) again from the audit store",
                len(report.registered),
            )
        for one in report.refused:
            log.error("watchdog: run %s not recovered: %s", one.run_id, one.detail)
        return [one.run_id for one in report.recovered]

    def run_forever(self, stop: threading.Event, interval: float | None = None) -> None:
        every = interval if interval is not None else max(0.5, min(10.0, self.stall / 4))
        try:
            if n := self.seed_live():
                log.info("watchdog: %d live run(s) from before the live set were added to it", n)
        except Exception:
            log.exception("watchdog: could not seed the live set")
        log.info(
            "watchdog %s: checking live runs every %.1fs, stalled after %gs",
            self.name,
            every,
            self.stall,
        )
        while not stop.is_set():
            try:
                rep = self.check_once()
                if rep.redispatched:
                    log.info("watchdog: re-dispatched %s", ", ".join(rep.redispatched))
                if rep.recovered:
                    log.info("watchdog: recovered %s", ", ".join(rep.recovered))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("watchdog: Redis unreachable (%s); checking again in %.1fs", exc, every)
            except Exception:  # a bug must not end the process either: log it, try again
                log.exception("watchdog: check failed")
            stop.wait(every)


def message_text(raw: bytes) -> bytes:
    """A kombu Redis message (JSON, its body base64) as bytes in which a run id can be found;
    an unacked entry is ``[message, exchange, routing_key]``."""
    try:
        msg = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(msg, list) and msg:
        msg = msg[0]
    if not isinstance(msg, dict):
        return raw
    body = msg.get("body", "")
    if (msg.get("properties") or {}).get("body_encoding") == "base64" and isinstance(body, str):
        try:
            return base64.b64decode(body) + raw
        except ValueError:
            return raw
    return raw
