"""The step context a plugin method receives, and the per-process heartbeat that keeps leases
alive and flushes buffered logs, progress and stats while steps run.

``ctx.log``/``ctx.progress``/``ctx.stats`` only append to an in-memory buffer (a plugin may
log ten thousand lines); the heartbeat thread flushes it a few times a second in one Redis
round trip, and the step's final write carries the rest.

A step on the fast path (workers/step.py) starts without telling Redis. If it is still running
after BEGIN_AFTER seconds (give or take a tick), the heartbeat tells Redis for it ("late" begin: RUNNING, the lease,
step_started with the real start time), so a long step is visible and protected like any other;
a short one ends before that and records start and end in one round trip.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from time import time_ns
from typing import Any

from orchestrator.engine.runstate import RunState
from orchestrator.logbatch import LEVELS, MAX_MESSAGE, log_event_data, log_event_data_flat  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.25
# A fast-path step still running this long (at the heartbeat's next tick) is begun late
# (Settings.fast_step_begin_ms).
BEGIN_AFTER = 0.05

# Where a step stands with Redis (StepContext.phase).
FRESH = 0  # running on the fast path, Redis not told yet
BEGINNING = 1  # the heartbeat is telling Redis (late begin) right now
BEGUN = 2  # Redis knows: begun before the plugin ran, or late
REFUSED = 3  # the late begin was refused (another epoch, a duplicate...): see StepContext.verdict
FINISHING = 4  # the step's own thread is recording its end in one round trip


class StepContext:
    """What a plugin method sees of its run: ids, attempt, and the action-logger calls."""

    __slots__ = (
        "run_id",
        "step_id",
        "attempt",
        "workflow_id",
        "_buffer",
        "_progress",
        "_stats",
        "_lock",
        "_cancelled",
        "started",
        "phase",
        "verdict",
        "_phase_changed",
    )

    def __init__(self, run_id: str, step_id: str, attempt: int, workflow_id: str = "") -> None:
        self.run_id = run_id
        self.step_id = step_id
        self.attempt = attempt
        self.workflow_id = workflow_id
        self._buffer: list[Any] = []  # log lines, logbatch.FIELDS values each, one flat list
        self._progress: tuple[float, str | None] | None = None
        self._stats: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cancelled = False
        self.started = time.time()
        self.phase = BEGUN
        self.verdict: tuple[str, ...] = ()
        self._phase_changed: threading.Condition | None = None

    @property
    def cancelled(self) -> bool:
        """True once the run is being cancelled: long loops should stop early."""
        return self._cancelled

    def log(
        self,
        message: Any,
        level: str = "INFO",
        entity_tag: str | None = None,
        entity_route: str | None = None,
        entity_id: str | None = None,
        entity_type: str | None = None,
    ) -> None:
        """Record a log line for this step; non-strings are str()-ed, long ones cut to 64 KiB."""
        # Only an extend here (a plugin may log thousands of lines): checks, clamps and JSON
        # happen when the heartbeat thread drains the buffer, in one event per batch.
        self._buffer.extend(
            (time_ns() // 1000, message, level, entity_tag, entity_route, entity_id, entity_type)
        )

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the step is, 0..1 (values outside are clamped); the latest one wins."""
        try:
            f = float(fraction)
        except (TypeError, ValueError):
            raise ValueError(
                f"ctx.progress() takes a number between 0 and 1, not {fraction!r}"
            ) from None
        if f != f:  # NaN
            f = 0.0
        self._progress = (min(1.0, max(0.0, f)), None if message is None else str(message)[:1000])

    def stats(self, **counters: Any) -> None:
        """Set job-level counters (items processed/created/failed...); the last value wins."""
        self._stats.update(counters)

    def drain(self) -> list[list[Any]]:
        """Take the buffered events as [type, step, status, ts, data_json] rows."""
        with self._lock:
            rows, self._buffer = self._buffer, []
        out: list[list[Any]] = []
        if rows:
            out.append(["log", self.step_id, "", f"{rows[0] / 1e6:.6f}", log_event_data_flat(rows)])
        if self._progress is not None:
            frac, msg = self._progress
            self._progress = None
            out.append(
                [
                    "progress",
                    self.step_id,
                    "",
                    f"{time.time():.6f}",
                    {"fraction": frac, "message": msg},
                ]
            )
        return out

    @property
    def has_counters(self) -> bool:
        """Whether the plugin set counters with ctx.stats()."""
        return bool(self._stats)

    def final_stats(self) -> dict[str, Any]:
        return {**self._stats, "duration": round(time.time() - self.started, 6)}

    def run_fresh(self) -> None:
        """Put the step on the fast path: it runs before Redis is told (see the module doc)."""
        self.phase = FRESH
        self._phase_changed = threading.Condition()

    def claim_end(self) -> int:
        """From the step's own thread when the plugin returned: the phase it ends in. A FRESH
        step becomes FINISHING (no late begin after this); a late begin in flight is waited for."""
        cond = self._phase_changed
        if cond is None:
            return self.phase
        with cond:
            while self.phase == BEGINNING:
                cond.wait(1.0)
            if self.phase == FRESH:
                self.phase = FINISHING
                return FRESH
            return self.phase

    def _begin_late(self, begin: Any) -> None:
        cond = self._phase_changed
        assert cond is not None
        with cond:
            if self.phase != FRESH:
                return
            self.phase = BEGINNING
        verdict: tuple[str, ...] | None = None
        try:
            verdict = begin()
        except Exception:  # Redis away for a moment: still fresh, the next tick tries again
            log.warning("late begin of %s/%s failed", self.run_id, self.step_id, exc_info=True)
        with cond:
            if verdict is None:
                self.phase = FRESH
            elif verdict[0] == "go":
                self.attempt = int(verdict[1])
                self.phase = BEGUN
            else:
                self.verdict = verdict
                self.phase = REFUSED
                self._cancelled = True
            cond.notify_all()

    def _refuse(self, verdict: tuple[str, ...]) -> bool:
        """Drop a FRESH step (its run was cancelled): True if it was still fresh."""
        cond = self._phase_changed
        if cond is None:
            return False
        with cond:
            self._cancelled = True
            if self.phase != FRESH:
                return False
            self.verdict = verdict
            self.phase = REFUSED
            cond.notify_all()
            return True


class _Active:
    __slots__ = ("owner", "ctx", "last", "begin", "terminate")

    def __init__(
        self,
        owner: str,
        ctx: StepContext,
        begin: Callable[[], tuple[str, ...]] | None,
        terminate: Callable[[], None] | None,
    ) -> None:
        self.owner, self.ctx, self.last = owner, ctx, time.time()
        self.begin, self.terminate = begin, terminate


class Heartbeat:
    """One daemon thread per process: refreshes the leases of running steps and flushes their
    buffered events; begins fast-path steps that run long (late begin); notices a cancel so that
    ``ctx.cancelled`` turns true."""

    def __init__(self, state: RunState, lease_ttl: int, begin_after: float = BEGIN_AFTER) -> None:
        self.state = state
        self.lease_ttl = lease_ttl
        self.begin_after = begin_after
        self._active: dict[tuple[str, str], _Active] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopped = threading.Event()

    def add(
        self,
        ctx: StepContext,
        owner: str,
        *,
        begin: Callable[[], tuple[str, ...]] | None = None,
        terminate: Callable[[], None] | None = None,
    ) -> None:
        """Watch a running step; ``begin`` (fast path) tells Redis late, ``terminate`` stops the
        step's task when its run is cancelled before Redis knew it was running."""
        with self._lock:
            self._active[(ctx.run_id, ctx.step_id)] = _Active(owner, ctx, begin, terminate)
            if self._stopped.is_set():
                return
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._loop, name="canvasflow-heartbeat", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """End the thread (a worker process just exits; the in-process runner closes)."""
        self._stopped.set()

    def remove(self, ctx: StepContext) -> int:
        """Stop watching; returns the phase the step ends in (StepContext.claim_end)."""
        phase = ctx.claim_end()
        with self._lock:
            self._active.pop((ctx.run_id, ctx.step_id), None)
        return phase

    def on_control(self, run_id: str, action: str, flag: str) -> None:
        """A run was cancelled (from the control watch): stop its steps that Redis does not know
        are running — with the cancel's ``terminate``, by revoking their own task."""
        if action != "cancel":
            return
        with self._lock:
            hit = [a for (rid, _), a in self._active.items() if rid == run_id]
        for a in hit:
            if a.ctx._refuse(("stale", "CANCELLING")) and flag == "1" and a.terminate is not None:
                a.terminate()

    def _loop(self) -> None:
        refresh_every = max(0.5, self.lease_ttl / 3)
        # Ticks often enough to begin fast-path steps soon after begin_after; flushes buffered
        # events every FLUSH_INTERVAL (one event per batch of log lines).
        tick = min(FLUSH_INTERVAL, max(0.01, self.begin_after))
        last_flush = time.monotonic()
        while not self._stopped.wait(tick):
            flush = time.monotonic() - last_flush >= FLUSH_INTERVAL - tick / 2
            if flush:
                last_flush = time.monotonic()
            with self._lock:
                active = list(self._active.values())
            now = time.time()
            for a in active:
                ctx = a.ctx
                try:
                    if (
                        ctx.phase == FRESH
                        and a.begin is not None
                        and now - ctx.started >= self.begin_after
                    ):
                        ctx._begin_late(a.begin)
                        a.last = now
                    if not flush or ctx.phase in (FRESH, BEGINNING, FINISHING):
                        continue  # a fresh step's events follow step_started, in its end's round trip
                    batch = ctx.drain()
                    if batch:
                        self.state.emit(ctx.run_id, batch)
                    if now - a.last >= refresh_every:
                        a.last = now
                        if ctx.phase == BEGUN:
                            self.state.refresh_lease(
                                ctx.run_id, ctx.step_id, a.owner, self.lease_ttl
                            )
                        status = self.state.status(ctx.run_id)
                        if status in ("CANCELLING", None):
                            ctx._cancelled = True
                except Exception:  # Redis away for a moment: the step goes on, we try again
                    log.warning(
                        "heartbeat for %s/%s failed", ctx.run_id, ctx.step_id, exc_info=True
                    )
