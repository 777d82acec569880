"""Log lines on the wire: one ``log`` event carries a batch of lines, as columns.

A step's ``ctx.log`` calls only append tuples; the heartbeat thread (and the step's final write)
turns each batch into one event with :func:`log_event_data`. Consumers (the recorder, the
dashboard, exports) read it back with :func:`log_lines`. The format is in docs/api.md.
"""

from __future__ import annotations

import json
from typing import Any

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_MESSAGE = 64 * 1024  # longer log messages are cut (documented in docs/user-guide.md)
_LEVEL_SET = frozenset(LEVELS)
_ENTITIES = ("entity_tag", "entity_route", "entity_id", "entity_type")
_TEXT_TYPES = frozenset({str, type(None)})
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode


def _text(message: Any) -> str:
    """A log message as stored: str()-ed, cut to 64 KiB."""
    text = message if isinstance(message, str) else str(message)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + f"… [truncated from {len(text)} characters]"
    return text


def _level(level: Any) -> str:
    lvl = str(level).upper()
    return lvl if lvl in _LEVEL_SET else "INFO"


def _column(values: tuple[Any, ...], clean: Any) -> tuple[set[Any], tuple[Any, ...]]:
    """(distinct values, column) of one field; the column is cleaned when a value needs it."""
    first = values[0]
    if type(first) in _TEXT_TYPES and values.count(first) == len(values):
        # the usual column: one value (often the very same object) on every line; count() is a
        # C loop that compares by identity first, far cheaper than hashing every value
        return {first}, values
    try:
        distinct = set(values)
        if {type(v) for v in distinct} <= _TEXT_TYPES:
            return distinct, values
    except TypeError:  # an unhashable value (a list as entity id...)
        pass
    values = tuple(map(clean, values))
    return set(values), values


FIELDS = (
    7  # a buffered line: ts_us, message, level, entity_tag, entity_route, entity_id, entity_type
)


def log_event_data(rows: list[tuple[Any, ...]]) -> str:
    """The JSON data of one ``log`` event for buffered lines ``(ts_us, message, level, entity...)``.

    Columns, not one object per line: ``{"n", "ts": [µs...], "message": [...], "level", and
    entity_tag/entity_route/entity_id/entity_type}``; a column whose lines all share one value is
    that value (an absent entity column means none).
    """
    return log_event_data_flat([v for row in rows for v in row])


def log_event_data_flat(flat: list[Any]) -> str:
    """:func:`log_event_data` for lines kept as one flat list, FIELDS values a line (the step
    context's buffer): each column is a C-level slice, and checking and encoding them takes a few
    C-level passes, so 10,000 lines cost a step a few milliseconds (docs/performance.md)."""
    ts, messages, levels, *entities = (tuple(flat[i::FIELDS]) for i in range(FIELDS))
    if set(map(type, messages)) != {str} or max(map(len, messages)) > MAX_MESSAGE:
        messages = tuple(map(_text, messages))
    distinct, levels = _column(levels, _level)
    if not distinct <= _LEVEL_SET:
        levels = tuple(map(_level, levels))
        distinct = set(levels)
    data: dict[str, Any] = {
        "n": len(ts),
        "ts": ts,
        "message": messages,
        "level": next(iter(distinct)) if len(distinct) == 1 else levels,
    }
    for name, column in zip(_ENTITIES, entities, strict=True):
        distinct, column = _column(column, lambda v: None if v is None else str(v))
        if distinct != {None}:
            data[name] = next(iter(distinct)) if len(distinct) == 1 else column
    return _encode(data)


def log_lines(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The lines of a ``log`` event's data as dicts ``{ts (s), level, message, entity_*}``; also
    reads the one-line shape ``{message, level, entity_*}`` of events written before batches."""
    if "n" not in data:
        return [{"ts": None, **data}]
    n = int(data["n"])
    cols: dict[str, list[Any]] = {
        k: v if isinstance(v, list) else [v] * n
        for k, v in ((k, data.get(k)) for k in ("level", *_ENTITIES))
    }
    return [
        {"ts": us / 1e6, "message": data["message"][i], **{k: v[i] for k, v in cols.items()}}
        for i, us in enumerate(data["ts"])
    ]
