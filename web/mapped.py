"""What the run pages show of a mapped step without listing its items: its counts by status
(``map: {total, counts}`` in the run detail and on the DAG's node), and the Gantt's grouping of
its items' bars under it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from marshmallow import Schema, fields, validate

from orchestrator.audit import queries
from orchestrator.errors import StoreError
from web.schemas import BarSchema, TimelineSchema


class TimelineArgs(Schema):
    # one step: several long names would make a URL longer than the server reads (414)
    expand = fields.String(
        load_default=None,
        validate=validate.Length(1, 200),
        metadata={"description": "a mapped step whose items get their own bars"},
    )


class ItemBarSchema(BarSchema):
    item_of = fields.String(allow_none=True, metadata={"description": "an item's mapped step"})
    item_count = fields.Integer(metadata={"description": "kind items: the item bars it groups"})


class ItemTimelineSchema(TimelineSchema):
    bars = fields.List(fields.Nested(ItemBarSchema))


def map_counts(
    store: Any, run_id: str, specs: Mapping[str, Mapping[str, Any]], steps: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """{mapped step: {total, counts}} for the run pages: the steps the audit store has items or
    a total for (one GROUP BY), and the steps the definition maps that have none yet (total 0);
    without a store (or with it unreachable), from the items the hot state lists, or the counts
    the steps read from the store came with (``steps[sid]["map"]``)."""
    mapped = [sid for sid, spec in specs.items() if spec.get("map")]
    out: dict[str, dict[str, Any]] = {sid: {"total": 0, "counts": {}} for sid in mapped}
    if store is not None:
        try:
            counts = queries.item_counts(store, run_id)
            out.update((sid, c.as_dict()) for sid, c in counts.items())
            return out
        except StoreError:
            pass  # the detail's warnings already say the store is unavailable
    out.update(hot_counts(steps.items()))
    # a run read from the audit store: its steps came with their counts
    out.update(
        (sid, st["map"]) for sid, st in steps.items() if isinstance(st, dict) and st.get("map")
    )
    return out


def hot_counts(steps: Iterable[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """Counts of the items among ``steps`` (id, fields) by their mapped step."""
    out: dict[str, dict[str, Any]] = {}
    for sid, st in steps:
        item = queries.parse_item(sid)
        if item is None:
            continue
        m = out.setdefault(item[0], {"total": 0, "counts": {}})
        status = (st or {}).get("status", "PENDING")
        m["total"] += 1
        m["counts"][status] = m["counts"].get(status, 0) + 1
    return out


EXPANDED_BARS = 2000  # item bars an expanded mapped step shows at most (its first items)


def group_item_bars(
    bars: list[dict[str, Any]], number: Mapping[str, int], expand: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The Gantt's bars with items grouped under their mapped step: each mapped step gets one
    ``kind: "items"`` bar spanning its items (``item_count``: how many bars it stands for); the
    items' own bars (``item_of`` set, numbered like their step) only for the steps in
    ``expand``, at most EXPANDED_BARS each. Collapsed by default: a 10,000-item step is one row."""
    wanted = set(expand)
    out: list[dict[str, Any]] = []
    groups: dict[str, dict[str, Any]] = {}
    shown: dict[str, int] = {}
    for bar in bars:
        item = queries.parse_item(bar["step"])
        if item is None:
            out.append(bar)
            continue
        of = item[0]
        g = groups.get(of)
        if g is None:
            g = groups[of] = {
                "step": of,
                "number": number.get(of, 0),
                "kind": "items",
                "attempt": None,
                "status": "RUNNING",
                "start": bar["start"],
                "end": bar["end"],
                "worker": None,
                "error": None,
                "item_count": 0,
                "item_of": None,
                "_open": 0,
                "_statuses": {},
            }
            out.append(g)
        g["item_count"] += 1
        g["start"] = min(g["start"], bar["start"])
        if bar["end"] is None:
            g["_open"] += 1
        elif g["end"] is None or bar["end"] > g["end"]:
            g["end"] = bar["end"]
        g["_statuses"][bar["status"]] = g["_statuses"].get(bar["status"], 0) + 1
        if of in wanted and shown.get(of, 0) < EXPANDED_BARS:
            shown[of] = shown.get(of, 0) + 1
            out.append({**bar, "number": number.get(of, 0), "item_of": of})
    for g in groups.values():
        statuses = g.pop("_statuses")
        if g.pop("_open"):
            g["end"] = None  # an item still runs: the group is open
        elif "FAILED" in statuses:
            g["status"] = "FAILED"
        else:
            g["status"] = max(statuses, key=lambda s: statuses[s])
    return out


def stored_item_bars(
    store: Any,
    run_id: str,
    bars: list[dict[str, Any]],
    number: Mapping[str, int],
    expand: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """The Gantt's item bars from the audit store instead of the events: each mapped step's
    group bar from its items' rows (first start, last end, attempts, counts: exact however many
    events the run has), an expanded step's item bars from its first items' attempt rows.
    ``bars`` are the event bars (items already grouped by ``group_item_bars``); with the store
    unreachable they are returned as they are."""
    try:
        spans = queries.item_spans(store, run_id)
        wanted = [s for s in dict.fromkeys(expand) if s in spans]
        attempts = {s: queries.item_attempts(store, run_id, s, limit=EXPANDED_BARS) for s in wanted}
    except StoreError:
        return bars
    if not spans:
        return bars
    out = [b for b in bars if b["kind"] != "items" and not b.get("item_of")]
    for sid, span in spans.items():
        if span.start is None:
            continue  # no item has started
        c = span.counts.counts
        status = (
            "FAILED"
            if c.get("FAILED")
            else "RUNNING"
            if span.open
            else max(c, key=lambda s: c[s])
            if c
            else "PENDING"
        )
        out.append(
            {
                "step": sid,
                "number": number.get(sid, 0),
                "kind": "items",
                "attempt": None,
                "status": status,
                "start": span.start,
                "end": None if span.open else span.end,
                "worker": None,
                "error": None,
                "item_count": span.attempts,
                "item_of": None,
            }
        )
        for a in attempts.get(sid, ()):
            if a["started_at"] is None:
                continue
            out.append(
                {
                    "step": a["step"],
                    "number": number.get(sid, 0),
                    "kind": "step",
                    "attempt": a["attempt"],
                    "status": a["status"],
                    "start": a["started_at"],
                    "end": a["finished_at"],
                    "worker": a["worker"],
                    "error": a["error"],
                    "item_of": sid,
                }
            )
    return out
