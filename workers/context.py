"""The step context a plugin method receives, and the per-process heartbeat that keeps leases
alive and flushes buffered logs, progress and stats while steps run.

``ctx.log``/``ctx.progress``/``ctx.stats`` only append to an in-memory buffer (a plugin may
log ten thousand lines); the heartbeat thread flushes it a few times a second in one Redis
round trip, and the step's final write carries the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from time import time_ns
from typing import Any

from orchestrator.logbatch import LEVELS, MAX_MESSAGE, log_event_data  # noqa: F401 (re-exported)
from orchestrator.runtime import RunState

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.25


class StepContext:
    """What a plugin method sees of its run: ids, attempt, and the action-logger calls."""

    __slots__ = ("run_id", "step_id", "attempt", "workflow_id", "_buffer", "_progress", "_stats",
                 "_lock", "_cancelled", "started")

    def __init__(self, run_id: str, step_id: str, attempt: int, workflow_id: str = "") -> None:
        self.run_id = run_id
        self.step_id = step_id
        self.attempt = attempt
        self.workflow_id = workflow_id
        self._buffer: list[tuple[Any, ...]] = []
        self._progress: tuple[float, str | None] | None = None
        self._stats: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cancelled = False
        self.started = time.time()

    @property
    def cancelled(self) -> bool:
        """True once the run is being cancelled: long loops should stop early."""
        return self._cancelled

    def log(self, message: Any, level: str = "INFO", entity_tag: str | None = None,
            entity_route: str | None = None, entity_id: str | None = None,
            entity_type: str | None = None) -> None:
        """Record a log line for this step; non-strings are str()-ed, long ones cut to 64 KiB."""
        # Only an append here (a plugin may log thousands of lines): checks, clamps and JSON
        # happen when the heartbeat thread drains the buffer, in one event per batch.
        self._buffer.append((time_ns() // 1000, message, level, entity_tag, entity_route, entity_id, entity_type))

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the step is, 0..1 (values outside are clamped); the latest one wins."""
        try:
            f = float(fraction)
        except (TypeError, ValueError):
            raise ValueError(f"ctx.progress() takes a number between 0 and 1, not {fraction!r}") from None
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
            out.append(["log", self.step_id, "", f"{rows[0][0] / 1e6:.6f}", log_event_data(rows)])
        if self._progress is not None:
            frac, msg = self._progress
            self._progress = None
            out.append(["progress", self.step_id, "", f"{time.time():.6f}", {"fraction": frac, "message": msg}])
        return out

    def final_stats(self) -> dict[str, Any]:
        return {**self._stats, "duration": round(time.time() - self.started, 6)}


class Heartbeat:
    """One daemon thread per process: refreshes the leases of running steps and flushes their
    buffered events; it also notices a cancel so that ``ctx.cancelled`` turns true."""

    def __init__(self, state: RunState, lease_ttl: int) -> None:
        self.state = state
        self.lease_ttl = lease_ttl
        self._active: dict[tuple[str, str], tuple[str, StepContext, list[float]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, ctx: StepContext, owner: str) -> None:
        import os

        with self._lock:
            self._active[(ctx.run_id, ctx.step_id)] = (owner, ctx, [time.time()])
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="canvasflow-heartbeat", daemon=True)
                self._thread.start()

    def remove(self, ctx: StepContext) -> None:
        with self._lock:
            self._active.pop((ctx.run_id, ctx.step_id), None)

    def _loop(self) -> None:
        refresh_every = max(0.5, self.lease_ttl / 3)
        while True:
            time.sleep(FLUSH_INTERVAL)
            with self._lock:
                active = list(self._active.values())
            now = time.time()
            for owner, ctx, last in active:
                try:
                    batch = ctx.drain()
                    if batch:
                        self.state.emit(ctx.run_id, batch)
                    if now - last[0] >= refresh_every:
                        last[0] = now
                        self.state.refresh_lease(ctx.run_id, ctx.step_id, owner, self.lease_ttl)
                        status = self.state.status(ctx.run_id)
                        if status in ("CANCELLING", None):
                            ctx._cancelled = True
                except Exception:  # Redis away for a moment: the step goes on, we try again
                    log.warning("heartbeat for %s/%s failed", ctx.run_id, ctx.step_id, exc_info=True)
