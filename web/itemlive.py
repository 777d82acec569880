"""Live updates of mapped steps without one Socket.IO message per item event: the relay folds
the events of items (``resize[17]``: started, completed, logs, progress...) into one
``step.items`` event per run and interval, and the catch-up of a reconnecting client folds them
the same way. Events of real steps and of the run go as they always did.

A ``step.items`` event stands for a contiguous range of the run's seqs, ``first_seq`` to
``seq``, all of them item events: a client that has applied everything up to ``first_seq - 1``
applies it and moves on to ``seq`` (web/frontend/src/live.js), so no gap is seen and nothing is
asked again. To keep the range contiguous, a run's pending summary goes out before the run's
next event that is not an item's. Its data says, per mapped step, how many item events it folds
and the status items reached (``statuses``: status -> items whose latest event in the range set
it), and the latest status of up to ``SAMPLE`` items, so a page updates counts and an open item
list at once and reads the exact counts from the items API when it needs them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from orchestrator.audit.queries import parse_item

ITEMS_EVENT = "step.items"
INTERVAL = 0.5  # seconds between two summaries of one run at most (a few per second per step)
SAMPLE = 50  # items whose latest status a summary names, per mapped step


def _new(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": e["run"],
        "first_seq": e["seq"],
        "seq": e["seq"],
        "type": ITEMS_EVENT,
        "step": "",
        "status": "",
        "ts": e.get("ts"),
        "data": {"steps": {}},
    }


def _fold(summary: dict[str, Any], e: dict[str, Any], of: str, index: int) -> None:
    summary["seq"] = max(summary["seq"], e["seq"])
    summary["first_seq"] = min(summary["first_seq"], e["seq"])
    summary["ts"] = e.get("ts")
    steps = summary["data"]["steps"]
    st = steps.get(of)
    if st is None:
        st = steps[of] = {"events": 0, "statuses": {}, "items": {}, "latest": {}}
    st["events"] += 1
    status = e.get("status")
    if status:
        latest = st["latest"]
        old = latest.get(index)
        if old is not None:
            st["statuses"][old] -= 1
            if not st["statuses"][old]:
                del st["statuses"][old]
        latest[index] = status
        st["statuses"][status] = st["statuses"].get(status, 0) + 1
        if index in st["items"] or len(st["items"]) < SAMPLE:
            st["items"][index] = status
    summary["step"] = of if len(steps) == 1 else ""


def finish(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary as clients get it (its per-item bookkeeping left out)."""
    steps = {
        of: {
            "events": st["events"],
            "statuses": dict(st["statuses"]),
            "items": {str(i): s for i, s in st["items"].items()},
            "changed": len(st["latest"]),
        }
        for of, st in summary["data"]["steps"].items()
    }
    return {**summary, "data": {"steps": steps}}


def coalesce(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's events (in seq order) with each contiguous stretch of item events folded into one
    ``step.items`` event: what a reconnecting client is sent instead of thousands of events."""
    out: list[dict[str, Any]] = []
    pending: dict[str, dict[str, Any]] = {}
    for e in events:
        item = parse_item(e.get("step") or "")
        run = e["run"]
        if item is None:
            if run in pending:
                out.append(finish(pending.pop(run)))
            out.append(e)
            continue
        summary = pending.get(run)
        if summary is None:
            summary = pending[run] = _new(e)
        _fold(summary, e, *item)
    out.extend(finish(s) for s in pending.values())
    return out


class ItemCoalescer:
    """The relay's side: holds each run's item events since its last summary and says when a
    summary is due. Thread-safe (the relay thread adds, a timer flushes)."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.pending: dict[str, dict[str, Any]] = {}
        self.since: dict[str, float] = {}  # run -> when its pending summary began
        self.sent = 0  # summaries handed out
        self.folded = 0  # item events folded into them
        self.lock = threading.Lock()

    def split(self, batch: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
        """The batch with item events taken out (held for their run's summary), each run's
        pending summary put before its next other event, and the summaries that are due
        appended."""
        now = time.monotonic() if now is None else now
        out: list[dict[str, Any]] = []
        with self.lock:
            for e in batch:
                item = parse_item(e.get("step") or "")
                run = e["run"]
                if item is None:
                    if run in self.pending:
                        out.append(self._take(run))
                    out.append(e)
                    continue
                summary = self.pending.get(run)
                if summary is None:
                    summary = self.pending[run] = _new(e)
                    self.since[run] = now
                _fold(summary, e, *item)
                self.folded += 1
            out.extend(self._due(now))
        return out

    def due(self, now: float | None = None) -> list[dict[str, Any]]:
        """The summaries whose interval has passed (for the flush timer)."""
        with self.lock:
            return self._due(time.monotonic() if now is None else now)

    def _due(self, now: float) -> list[dict[str, Any]]:
        runs = [r for r, t in self.since.items() if now - t >= self.interval]
        return [self._take(r) for r in runs]

    def _take(self, run: str) -> dict[str, Any]:
        self.since.pop(run, None)
        self.sent += 1
        return finish(self.pending.pop(run))
