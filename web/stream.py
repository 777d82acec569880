"""Reading the event stream: the live tail a relay follows. The catch-up of one run's events
after a sequence number (the audit store for what is recorded, the stream for the rest) is
``run_events`` of orchestrator/engine/runevents.py, which the trace export shares.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from orchestrator.engine.runevents import parse_entry, run_events
from orchestrator.keys import Keys
from orchestrator.records import text

__all__ = ["StreamTail", "parse_entry", "run_events"]

log = logging.getLogger(__name__)


class StreamTail:
    """Follows the stream from its end (XREAD, no consumer group: nothing is held back from the
    recorder's trimming) and hands each batch of events to ``deliver``. After a Redis error it
    resumes from the last id it saw, so nothing still in the stream is skipped.

    Batches are coalesced over ``window`` seconds, Nagle-style: an event that comes after a quiet
    spell is delivered at once; one that comes less than ``window`` after the last delivery waits
    for the rest of the window and goes out with everything that arrived meanwhile. So a busy
    stream costs each Socket.IO room at most one message per window, whatever the event rate, and
    a quiet one adds no latency."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        deliver: Callable[[list[dict[str, Any]]], None],
        *,
        block_ms: int = 1000,
        count: int = 500,
        window: float = 0.0,
        idle: Callable[[], None] | None = None,
    ) -> None:
        self.r = r
        self.stream = keys.events
        self.deliver = deliver
        self.block_ms = block_ms
        self.count = count
        self.window = window
        self.idle = idle  # called after a read that found nothing (the relay's timed flushes)
        self.last_id: str | None = None
        self.delivered = 0
        self.batches = 0
        self.errors = 0
        self._last_delivery = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start_id(self) -> str:
        last = self.r.xrevrange(self.stream, count=1)
        return text(last[0][0]) if last else "0-0"

    def _read(self, count: int, block: int | None) -> list[dict[str, Any]]:
        resp = self.r.xread({self.stream: self.last_id}, count=count, block=block)
        out = []
        for _, items in resp or []:
            for entry_id, fields in items:
                self.last_id = text(entry_id)
                e = parse_entry(entry_id, fields)
                if e is not None:
                    e.pop("id", None)
                    out.append(e)
        return out

    def step(self) -> int:
        if self.last_id is None:
            self.last_id = self._start_id()
        out = self._read(self.count, self.block_ms)
        if out and self.window > 0:
            wait = self._last_delivery + self.window - time.monotonic()
            if wait > 0 and len(out) < self.count:
                self._stop.wait(wait)
                out += self._read(self.count - len(out), None)  # what came meanwhile; no blocking
        if out:
            self.deliver(out)
            self._last_delivery = time.monotonic()
            self.delivered += len(out)
            self.batches += 1
        elif self.idle is not None:
            self.idle()
        return len(out)

    def run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self.step()
                backoff = 0.0
            except redis.RedisError as exc:
                self.errors += 1
                backoff = min(5.0, backoff * 2 or 0.2)
                log.warning("event relay: %s; retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
            except Exception:
                self.errors += 1
                log.exception("event relay: delivering a batch failed")
                self._stop.wait(0.2)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="canvasflow-relay", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


class SlaMonitor:
    """Runs orchestrator.engine.sla.check_once every ``interval`` seconds (at most once per run per event,
    so several web processes may all run it)."""

    def __init__(self, state: Any, interval: float = 1.0) -> None:
        self.state = state
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        from orchestrator.engine.sla import check_once

        while not self._stop.wait(self.interval):
            try:
                check_once(self.state, time.time())
            except Exception as exc:  # Redis away for a moment
                log.warning("SLA monitor: %s", exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="canvasflow-sla", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
