"""A run's events: the recorded ones from the audit store, the newest from the Redis stream.

An event is ``{run, seq, type, step, status, ts, data}``; ``seq`` numbers each run's events from 1
without gaps (orchestrator/engine/runstate.py increments it in the same Lua call that appends the
event), so a reader that remembers the last seq it applied can always ask for exactly what it
missed. The dashboard's event API, its live relay (web/stream.py) and the trace export
(export.py) all read through here.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from orchestrator.audit import queries
from orchestrator.audit.store import AuditStore
from orchestrator.engine.runstate import RunState
from orchestrator.errors import StoreError
from orchestrator.records import text

log = logging.getLogger(__name__)

SCAN_CHUNK = 2000
SCAN_MAX = 500_000  # entries read at most when scanning the stream for one run's events
PAGE = 10_000  # events read per call when reading all of a run's (the store's cap per query)


def parse_entry(entry_id: Any, fields: dict[Any, Any]) -> dict[str, Any] | None:
    """A stream entry as an event dict, or None when it is not one (a foreign entry)."""
    f = {text(k): text(v) for k, v in fields.items()}
    try:
        seq = int(f["seq"])
        ts = float(f.get("ts") or 0)
    except (KeyError, ValueError):
        return None
    try:
        data = json.loads(f.get("data") or "{}")
    except ValueError:
        data = {"raw": f.get("data")}
    return {
        "run": f.get("run", ""),
        "seq": seq,
        "type": f.get("type", ""),
        "step": f.get("step") or None,
        "status": f.get("status") or None,
        "ts": ts,
        "data": data,
        "id": text(entry_id),
    }


def run_events(
    state: RunState,
    store: AuditStore | None,
    run_id: str,
    after: int = 0,
    limit: int = 10_000,
    *,
    strict: bool = False,
    skip_items: bool = False,
) -> list[dict[str, Any]]:
    """The run's events with seq > ``after``, in seq order, without gaps that exist anywhere.
    An audit store that cannot be read is logged and the stream read alone, unless ``strict``
    (then its StoreError is raised: an export must not pass for complete without it).
    ``skip_items``: without the events of items of mapped steps (``resize[3]``): the Gantt of a
    10,000-item run reads its few step events, not 50,000 item events."""
    recorded: list[dict[str, Any]] = []
    start_id: str | None = None
    only_steps = {"skip_items": True} if skip_items else {}
    if store is not None:
        try:
            found = queries.recorded_events(store, run_id, after, limit=limit, **only_steps)
            recorded, start_id = found.events, found.stream_id
        except StoreError as exc:
            if strict:
                raise
            log.warning(
                "events of %s: audit store unavailable (%s); reading the stream only", run_id, exc
            )
            recorded = []
    for e in recorded:
        e["step"] = e["step"] or None
        e["status"] = e["status"] or None
    known = recorded[-1]["seq"] if recorded else after
    if len(recorded) >= limit:
        return recorded[:limit]
    (head,) = state.runs([run_id], "seq", "created_at")
    latest = head.seq if head is not None else None
    if latest is not None and latest <= known:
        return recorded
    if start_id is None:
        created = head.created_at if head is not None else None
        start_id = f"{int(created * 1000) - 1000}-0" if created else "-"
    r, keys = state.r, state.keys
    tail: dict[int, dict[str, Any]] = {}
    seen = 0  # the highest seq of the run met in the stream, skipped item events included
    scanned = 0
    cursor = start_id
    first_read = True
    while scanned < SCAN_MAX:
        batch = r.xrange(keys.events, min=cursor, count=SCAN_CHUNK)
        # After the first read the entry at the cursor was read already: skipped, or a run Redis
        # forgot whose last event ends the stream re-read that one entry until SCAN_MAX (500,000
        # round trips). The first read keeps it: the store's stream id may name an event its rows
        # do not hold yet (recorded in the same batch), and seq > known dedupes it otherwise.
        if batch and not first_read and text(batch[0][0]) == cursor:
            batch = batch[1:]
        first_read = False
        if not batch:
            break
        scanned += len(batch)
        for entry_id, fields in batch:
            if not fields or text(fields.get(b"run", fields.get("run"))) != run_id:
                continue
            found_event = parse_entry(entry_id, fields)
            if found_event is not None and found_event["seq"] > known:
                seen = max(seen, found_event["seq"])
                if skip_items and queries.parse_item(found_event["step"] or "") is not None:
                    continue
                found_event.pop("id", None)
                tail[found_event["seq"]] = found_event
        cursor = text(batch[-1][0])
        if latest is not None and max(seen, max(tail, default=0)) >= latest:
            break
    first = min(tail) if tail else (latest + 1 if latest is not None else known + 1)
    if store is not None and first > known + 1:
        # The recorder wrote events between the store's read and the stream's and trimmed them
        # from the stream: they are in the store now. Read it again for the gap.
        try:
            gap = queries.recorded_events(
                store, run_id, known, limit=limit, gapless=False, **only_steps
            ).events
        except StoreError:
            if strict:
                raise
            gap = []
        for e in gap:
            if e["seq"] < first:
                e["step"] = e["step"] or None
                e["status"] = e["status"] or None
                recorded.append(e)
    return (recorded + [tail[k] for k in sorted(tail)])[:limit]


def all_events(state: RunState, store: AuditStore | None, run_id: str) -> list[dict[str, Any]]:
    """Every event of a run in seq order (the store's, then the stream's), read page by page; an
    audit store that cannot be read raises StoreError."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = run_events(state, store, run_id, after, PAGE, strict=True)
        out.extend(page)
        if len(page) < PAGE:
            return out
        after = page[-1]["seq"]


def recorded_events(store: AuditStore, run_id: str) -> list[dict[str, Any]]:
    """Every event of a run the audit store recorded, in seq order (for when Redis is down)."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = queries.events_after(store, run_id, after, limit=PAGE)
        for e in page:
            e["step"] = e["step"] or None
            e["status"] = e["status"] or None
        out.extend(page)
        if len(page) < PAGE:
            return out
        after = page[-1]["seq"]
