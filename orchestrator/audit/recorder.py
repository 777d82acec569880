"""The recorder: moves events from the Redis Stream into the audit store, losing nothing.

It reads the stream through a consumer group, so several recorders may run at once (each
batch goes to one of them), and a recorder that is down simply leaves entries unread: when it
starts again it catches up from where the group stopped. A batch is written to SQL in one
transaction and acknowledged (XACK) only after the commit, so a recorder killed at any point
leaves its batch pending; another recorder — or itself after a restart — claims entries that
have been pending longer than ``claim_idle`` (XAUTOCLAIM) and applies them again, which changes
nothing for events already committed (see projection.py).

The stream is trimmed (XTRIM MINID) only below the oldest entry that some consumer group has
not acknowledged, so a lagging group — a second recorder group, a relay — never loses entries.

Run it with ``canvasflow recorder`` or ``python -m orchestrator.audit.recorder``; embed it with
``Recorder(...).start_thread(stop_event)``.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from orchestrator.audit.events import BadEvent, Event, Lookups
from orchestrator.audit.registry import RegistryCopier
from orchestrator.audit.store import AuditStore, StoreNotReady, StoreUnavailable
from orchestrator.connect import state_redis
from orchestrator.errors import StoreError
from orchestrator.keys import Keys
from orchestrator.records import Reads, RunRecord, StepRecord

log = logging.getLogger(__name__)

DEFAULT_GROUP = "cf-recorder"
# How long a batch may wait to fill once its first event is there. Live subscribers do not wait
# for it (web/stream.py reads the stream itself); it bounds how stale the SQL store is, and
# longer windows mean bigger, cheaper batches: a recorder sharing two CPUs with a worker slowed
# a 100-step chain by about 0.1-0.25x at 50 ms and by about 0.0-0.15x at 250 ms
# (docs/performance.md "What a recorder on the same 2 CPUs costs the engine").
BATCH_LATENCY = 0.25
# What the store takes from the run's hot state when a run is created.
RUN_META = (
    "workflow",
    "version",
    "name",
    "definition_json",
    "inputs_json",
    "priority",
    "tags_json",
    "triggered_by",
    "trigger_type",
    "trigger_name",
    "trigger_ref",
    "sla_seconds",
    "parent_run",
    "parent_step",
)


class RecorderHook:
    """Observes the recorder; override what you need. A hook that raises is logged, not fatal.

    The web process relays ``after_commit`` batches to Socket.IO rooms.
    """

    def before_ack(self, events: Sequence[Event]) -> None:
        """Called with every event of a committed batch (duplicates included), before XACK: a
        recorder killed in between hands the batch on again, so what this starts must be
        idempotent (the notification sender's is: orchestrator/engine/notify.py)."""

    def after_commit(self, events: Sequence[Event]) -> None:
        """Called with the events a batch newly recorded (duplicates left out), after XACK."""

    def on_error(self, error: BaseException) -> None:
        """Called when a batch could not be written (it stays pending and is retried)."""


class _CallableHook(RecorderHook):
    def __init__(self, fn: Callable[[Sequence[Event]], None]) -> None:
        self.fn = fn

    def after_commit(self, events: Sequence[Event]) -> None:
        self.fn(events)


@dataclass(frozen=True)
class Lag:
    pending: int  # delivered to the group, not yet acknowledged
    undelivered: int  # in the stream, not yet read by the group
    oldest_age: float  # seconds since the oldest unacknowledged or unread entry was added
    length: int  # entries in the stream

    @property
    def caught_up(self) -> bool:
        return self.pending == 0 and self.undelivered == 0


@dataclass
class BatchStats:
    batches: int = 0
    events: int = 0
    duplicates: int = 0
    claimed: int = 0
    dead: int = 0
    trimmed: int = 0
    errors: int = 0


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _next_id(stream_id: str) -> str:
    ms, seq = _id_tuple(stream_id)
    return f"{ms}-{seq + 1}"


class Recorder:
    """A consumer of the event stream that writes batches to an AuditStore."""

    def __init__(
        self,
        store: AuditStore,
        client: redis.Redis,
        keys: Keys | str = "cf",
        *,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        batch_size: int = 500,
        batch_latency: float = BATCH_LATENCY,
        block: float = 1.0,
        claim_idle: float = 30.0,
        claim_interval: float = 5.0,
        trim: bool = True,
        trim_interval: float = 5.0,
        start_id: str = "0",
        hooks: Iterable[RecorderHook | Callable[[Sequence[Event]], None]] = (),
        copy_registry: bool = True,
    ) -> None:
        self.store = store
        self.r = client
        self.keys = keys if isinstance(keys, Keys) else Keys(keys)
        self.stream = self.keys.events
        self.dead_stream = f"{self.stream}:dead"
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.batch_size = batch_size
        self.batch_latency = batch_latency
        self.block = block
        self.claim_idle = claim_idle
        self.claim_interval = claim_interval
        self.trim_enabled = trim
        self.trim_interval = trim_interval
        # The workflow registry, copied into the store when it changes (registry.py).
        self.registry: RegistryCopier | None = (
            RegistryCopier(store, client, self.keys) if copy_registry else None
        )
        self.start_id = start_id
        self.hooks = [h if isinstance(h, RecorderHook) else _CallableHook(h) for h in hooks]
        self.stats = BatchStats()
        self.latencies: list[float] = []  # seconds from read to XACK, last 10,000 batches
        self._ready = False
        self._held: list[tuple[str, dict[Any, Any]]] = []  # a batch read but not yet committed
        self._last_claim = 0.0
        self._check_own = consumer is not None  # a generated name has no history
        self._last_trim = time.monotonic()  # the first trim comes one interval after start

    # -- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create the consumer group (reading from ``start_id``) if it does not exist."""
        try:
            self.r.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._ready = True

    # -- the loop -----------------------------------------------------------------------------

    def run_forever(self, stop_event: threading.Event) -> None:
        """Record batches until ``stop_event`` is set; the batch in hand is finished first."""
        backoff = 0.0
        while not stop_event.is_set():
            try:
                self.run_once()
                backoff = 0.0
            except (StoreUnavailable, redis.ConnectionError, redis.TimeoutError) as exc:
                # The batch stays in hand (and pending in the group): try again, slower each time.
                backoff = min(5.0, backoff * 2 or 0.2)
                log.warning("recorder: %s; retrying in %.1fs", exc, backoff)
                stop_event.wait(backoff)
            except StoreNotReady:
                raise
            except redis.ResponseError as exc:
                if "NOGROUP" in str(
                    exc
                ):  # group or stream deleted: recreate it; replays are harmless
                    self._ready = False
                backoff = min(5.0, backoff * 2 or 0.2)
                log.warning("recorder: %s; retrying in %.1fs", exc, backoff)
                stop_event.wait(backoff)
            except Exception:
                backoff = min(5.0, backoff * 2 or 0.2)
                log.exception("recorder: unexpected error; retrying in %.1fs", backoff)
                stop_event.wait(backoff)

    def start_thread(self, stop_event: threading.Event) -> threading.Thread:
        """Run the recorder in a daemon thread (the web process and the demo embed it so)."""
        t = threading.Thread(
            target=self.run_forever, args=(stop_event,), name="canvasflow-recorder", daemon=True
        )
        t.start()
        return t

    def run_once(self, block: float | None = None) -> int:
        """Read one batch (waiting up to ``block`` s for the first event), record it, XACK it.

        Returns how many stream entries were processed (0 when nothing arrived).
        """
        if not self._ready:
            self.setup()
        entries = (
            self._held
            or self._own_pending()
            or self._claim()
            or self._read(self.block if block is None else block)
        )
        if self.registry is not None:
            self.registry.maybe_copy()
        if not entries:
            self._maybe_trim()
            return 0
        self._held = entries
        started = time.monotonic()
        try:
            self._record(entries)
        except Exception as exc:
            self.stats.errors += 1
            for h in self.hooks:
                self._call(h.on_error, exc)
            raise
        self._held = []
        self.latencies.append(time.monotonic() - started)
        if len(self.latencies) > 10_000:
            del self.latencies[:5_000]
        self._maybe_trim()
        return len(entries)

    def drain(self, timeout: float | None = None) -> int:
        """Process batches until the group has nothing pending or unread (catch-up, tests).

        Entries another consumer holds are waited for until they can be claimed; ``timeout``
        bounds the wait. Returns how many entries were processed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        total = 0
        while True:
            got = self.run_once(block=0.0)
            total += got
            if got:
                continue
            if self.lag().caught_up or (deadline is not None and time.monotonic() > deadline):
                return total
            time.sleep(0.05)  # pending elsewhere: wait until claim_idle lets us take it

    # -- reading ------------------------------------------------------------------------------

    def _read(self, block: float) -> list[tuple[str, dict[Any, Any]]]:
        """Up to batch_size entries; after the first arrives, wait at most batch_latency more.

        The wait is one sleep and one more read, not a blocking read per arriving event: under a
        trickle of events (a chain of short steps) that woke the recorder hundreds of times a
        second for batches of a few events, and its CPU competed with the workers'.
        """
        kwargs: dict[str, Any] = {"count": self.batch_size}
        if block > 0:
            kwargs["block"] = max(1, int(block * 1000))
        out = self._xread(kwargs)
        if not out or len(out) >= self.batch_size or self.batch_latency <= 0:
            return out
        time.sleep(self.batch_latency)
        out.extend(self._xread({"count": self.batch_size - len(out)}))
        return out

    def _xread(self, kwargs: dict[str, Any]) -> list[tuple[str, dict[Any, Any]]]:
        resp: Any = self.r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, **kwargs)
        return [(_s(i), f) for _, items in resp or [] for i, f in items]

    def _own_pending(self) -> list[tuple[str, dict[Any, Any]]]:
        """After a restart under a fixed ``consumer`` name, its own unacknowledged entries first."""
        if not self._check_own:
            return []
        resp: Any = self.r.xreadgroup(
            self.group, self.consumer, {self.stream: "0"}, count=self.batch_size
        )
        items = [(_s(i), f) for _, entries in resp or [] for i, f in entries]
        gone = [i for i, f in items if not f]  # trimmed away while pending: nothing to record
        if gone:
            self.r.xack(self.stream, self.group, *gone)
        out = [(i, f) for i, f in items if f]
        if not out:
            self._check_own = False
        return out

    def _claim(self) -> list[tuple[str, dict[Any, Any]]]:
        """Take over entries other consumers (dead ones) left pending for claim_idle seconds."""
        now = time.monotonic()
        if now - self._last_claim < self.claim_interval:
            return []
        self._last_claim = now
        out: list[tuple[str, dict[Any, Any]]] = []
        cursor = "0-0"
        while len(out) < self.batch_size:
            resp = self.r.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=int(self.claim_idle * 1000),
                start_id=cursor,
                count=self.batch_size - len(out),
            )
            cursor = _s(resp[0])
            for item in resp[1]:
                if item is None or item[1] is None:
                    continue  # Redis 6.2: an entry trimmed away while pending
                out.append((_s(item[0]), item[1]))
            deleted = [_s(i) for i in (resp[2] if len(resp) > 2 else [])]
            if deleted:
                self.r.xack(self.stream, self.group, *deleted)
            if cursor == "0-0":
                break
        if out:
            self.stats.claimed += len(out)
            log.info(
                "recorder %s claimed %d pending entries of dead consumers", self.consumer, len(out)
            )
        return out

    # -- recording ----------------------------------------------------------------------------

    def _record(self, entries: list[tuple[str, dict[Any, Any]]]) -> None:
        batch: list[Event] = []
        bad: list[tuple[str, dict[Any, Any], str]] = []
        for sid, fields in entries:
            try:
                batch.append(Event.from_stream(sid, fields))
            except BadEvent as exc:
                bad.append((sid, fields, exc.reason))
        new = self._apply(batch, bad) if batch else []
        self._dead_letter(bad)
        for h in self.hooks:
            self._call(h.before_ack, batch)
        ids = [sid for sid, _ in entries]
        pipe = self.r.pipeline(transaction=False)
        for i in range(0, len(ids), 1000):
            pipe.xack(self.stream, self.group, *ids[i : i + 1000])
        pipe.execute()
        self.stats.batches += 1
        self.stats.events += len(new)
        self.stats.duplicates += len(batch) - len(new)
        if new:
            for h in self.hooks:
                self._call(h.after_commit, new)

    def _apply(self, batch: list[Event], bad: list[tuple[str, dict[Any, Any], str]]) -> list[Event]:
        lookups = self.lookups(batch)
        try:
            return self.store.apply(batch, lookups)
        except (StoreUnavailable, StoreNotReady):
            raise
        except StoreError as exc:
            if len(batch) == 1:
                e = batch[0]
                bad.append((e.stream_id, _fields(e), str(exc)))
                return []
        except Exception as exc:  # a bug or an event the projection cannot take
            if len(batch) == 1:
                e = batch[0]
                log.exception("recorder: event %s/%s cannot be recorded", e.run, e.seq)
                bad.append((e.stream_id, _fields(e), f"{type(exc).__name__}: {exc}"))
                return []
        # Split the batch to isolate the poison event(s); the rest are recorded normally.
        half = len(batch) // 2
        return self._apply(batch[:half], bad) + self._apply(batch[half:], bad)

    def _dead_letter(self, bad: list[tuple[str, dict[Any, Any], str]]) -> None:
        """Keep entries that cannot be recorded in ``<stream>:dead`` for an operator to inspect."""
        if not bad:
            return
        pipe = self.r.pipeline(transaction=False)
        for sid, fields, reason in bad:
            log.error(
                "recorder: stream entry %s set aside in %s: %s", sid, self.dead_stream, reason
            )
            pipe.xadd(
                self.dead_stream,
                {**{_s(k): v for k, v in fields.items()}, "stream_id": sid, "error": reason[:2000]},
            )
        pipe.execute()
        self.stats.dead += len(bad)

    def lookups(self, batch: Sequence[Event]) -> Lookups:
        """Read what the events do not carry (run fields, outputs, errors) in one round trip."""
        out = Lookups()
        calls: list[tuple[str, Any]] = []
        reads = Reads(self.r, self.keys)
        for e in batch:
            if e.type == "run_created":
                reads.run(e.run, *RUN_META)
                calls.append(("run", e.run))
            elif e.type == "step_completed":
                data = e.data
                if "output" not in data or data.get("output_truncated"):
                    reads.step(e.run, e.step, "output_json")
                    calls.append(("output", (e.run, e.step)))
            elif e.type == "step_failed" and "traceback" not in e.data:
                reads.step(e.run, e.step, "traceback")
                calls.append(("traceback", (e.run, e.step)))
            elif e.type == "run_status_changed" and e.status in (
                "FAILED",
                "COMPENSATION_FAILED",
                "CANCELLED",
            ):
                reads.run(e.run, "error", "failed_step")
                calls.append(("error", e.run))
        for (kind, key), record in zip(calls, reads.execute(), strict=True):
            if kind == "run":
                if isinstance(record, RunRecord):
                    out.runs[key] = record
            elif isinstance(record, StepRecord):
                if kind == "output":
                    out.outputs[key] = record.output_json
                else:
                    out.tracebacks[key] = record.traceback
            else:
                out.run_errors[key] = (
                    (record.error, record.failed_step) if record is not None else (None, None)
                )
        return out

    # -- trimming and lag ---------------------------------------------------------------------

    def _maybe_trim(self) -> None:
        if not self.trim_enabled:
            return
        now = time.monotonic()
        if now - self._last_trim >= self.trim_interval:
            self._last_trim = now
            self.trim()

    def safe_trim_id(self) -> str | None:
        """The oldest entry some consumer group still needs; everything below it may go."""
        groups = self.r.xinfo_groups(self.stream)
        if not groups:
            return None
        floor: tuple[int, int] | None = None
        for g in groups:
            name = _s(g["name"])
            need = _next_id(_s(g["last-delivered-id"]))
            if int(g["pending"]):
                summary = self.r.xpending(self.stream, name)
                if summary.get("min"):
                    need = min(need, _s(summary["min"]), key=_id_tuple)
            t = _id_tuple(need)
            floor = t if floor is None else min(floor, t)
        return f"{floor[0]}-{floor[1]}" if floor else None

    def trim(self) -> int:
        """Drop entries every group has acknowledged; returns how many were removed."""
        try:
            minid = self.safe_trim_id()
        except redis.ResponseError:
            return 0  # no stream yet
        if minid is None or minid == "0-1":
            return 0
        removed = int(self.r.xtrim(self.stream, minid=minid, approximate=False))
        self.stats.trimmed += removed
        return removed

    def lag(self) -> Lag:
        """How far this recorder's group is behind the stream."""
        pipe = self.r.pipeline(transaction=False)
        pipe.xinfo_groups(self.stream)
        pipe.xlen(self.stream)
        try:
            groups, length = pipe.execute()
        except redis.ResponseError:
            return Lag(0, 0, 0.0, 0)
        info = next((g for g in groups if _s(g["name"]) == self.group), None)
        if info is None:
            return Lag(0, length, 0.0, length)
        pending = int(info["pending"])
        last = _s(info["last-delivered-id"])
        undelivered = info.get("lag")
        nxt: Any = self.r.xrange(self.stream, min=f"({last}" if last != "0-0" else "-", count=1)
        if undelivered is None:  # Redis < 7 has no lag field: 0 or at least one
            undelivered = len(nxt)
        oldest: str | None = _s(nxt[0][0]) if nxt else None
        if pending:
            pmin = self.r.xpending(self.stream, self.group).get("min")
            if pmin:
                oldest = _s(pmin)
        age = max(0.0, time.time() - _id_tuple(oldest)[0] / 1000) if oldest else 0.0
        return Lag(pending, int(undelivered), age, int(length))

    def forget_idle_consumers(self, idle: float = 3600.0) -> int:
        """Delete consumers with nothing pending that have been idle this long (restarts leave
        one behind each time)."""
        removed = 0
        for c in self.r.xinfo_consumers(self.stream, self.group):
            name = _s(c["name"])
            if name != self.consumer and int(c["pending"]) == 0 and int(c["idle"]) >= idle * 1000:
                removed += int(self.r.xgroup_delconsumer(self.stream, self.group, name))
        return removed

    @staticmethod
    def _call(fn: Callable[..., Any], arg: Any) -> None:
        try:
            fn(arg)
        except Exception:
            log.exception("recorder hook %r failed", fn)


def _fields(e: Event) -> dict[str, Any]:
    return {
        "run": e.run,
        "seq": str(e.seq),
        "type": e.type,
        "step": e.step,
        "status": e.status,
        "ts": f"{e.ts:.6f}",
        "data": e.data_json,
    }


# -- process entry points -------------------------------------------------------------------------


def embed(
    settings: Any,
    *,
    hooks: Iterable[RecorderHook | Callable[[Sequence[Event]], None]] = (),
    upgrade: bool = True,
    **options: Any,
) -> tuple[Recorder, threading.Event, threading.Thread]:
    """Start a recorder thread in this process (the web process, the demo).

    Returns (recorder, stop_event, thread): set the event and join the thread to stop it; the
    batch in hand is committed and acknowledged first.
    """
    store = AuditStore(settings.database_url)
    if upgrade:
        store.upgrade()
    else:
        store.check()
    client = state_redis(settings, socket_timeout=30, health_check_interval=30)
    rec = Recorder(store, client, Keys(settings.key_prefix), hooks=hooks, **options)
    rec.setup()
    stop = threading.Event()
    return rec, stop, rec.start_thread(stop)


# Hooks every recorder process started by serve() adds: factories called with (settings, store).
# orchestrator/engine/notify.py registers the notification sender here when the CLI loads it (this
# package may not import the engine, which needs Celery).
HOOK_FACTORIES: list[Callable[[Any, AuditStore], RecorderHook]] = []


def serve(
    settings: Any = None,
    *,
    upgrade: bool = True,
    lag_interval: float = 10.0,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> int:
    """Run a recorder until SIGTERM or SIGINT; print the lag every ``lag_interval`` seconds."""
    from orchestrator.settings import Settings

    settings = settings or Settings.from_env()
    store = AuditStore(settings.database_url)
    if upgrade:
        store.upgrade()
    else:
        store.check()
    client = state_redis(settings, socket_timeout=30, health_check_interval=30)
    hooks = [make(settings, store) for make in HOOK_FACTORIES]
    rec = Recorder(store, client, Keys(settings.key_prefix), hooks=hooks, **options)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rec.setup()
    echo(
        f"recorder {rec.consumer}: {settings.redis_url} stream {rec.stream} group {rec.group} "
        f"-> {store.display_url}"
    )
    if not hooks:
        echo(
            "notifications: not queued by this recorder (start it as `canvasflow recorder` to "
            "send webhook notifications; docs/operations.md 'Notifications')"
        )
    thread = rec.start_thread(stop)
    code = 0
    try:
        while not stop.wait(lag_interval):
            if not thread.is_alive():  # only a store that is not ready ends the loop
                echo("recorder stopped: the audit store is not ready (see the error above)")
                code = 1
                break
            try:
                lag = rec.lag()
                rec.forget_idle_consumers()
            except redis.RedisError as exc:
                echo(f"lag: unknown ({exc})")
                continue
            st = rec.stats
            echo(
                f"lag: {lag.pending} pending, {lag.undelivered} unread, oldest {lag.oldest_age:.1f}s; "
                f"recorded {st.events} events in {st.batches} batches, {st.duplicates} duplicates, "
                f"{st.claimed} claimed, {st.trimmed} trimmed, {st.dead} set aside"
            )
    finally:
        stop.set()
        thread.join(30)
        client.close()
        store.dispose()
    st = rec.stats
    echo(
        f"recorder {rec.consumer} stopped after {st.events} events "
        f"({st.duplicates} duplicates, {st.claimed} claimed)"
    )
    return code


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("CANVASFLOW_LOG_LEVEL", "INFO"))
    raise SystemExit(serve())
