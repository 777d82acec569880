"""Events as the recorder reads them from the Redis Stream, and the clamp rules applied to them.

A stream entry has the fields run, seq, type, step, status, ts, data (JSON text); see
orchestrator/engine/runstate.py. ``(run, seq)`` identifies an event everywhere: in the stream, in the
``cf_events`` table and in what the recorder hands to its hooks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from orchestrator.errors import StoreError
from orchestrator.records import RunRecord

# The same rules as workers/context.py, applied again so that an event written by any producer
# (an older worker, a script calling XADD) cannot put an oversized or malformed row in SQL.
MAX_MESSAGE = 64 * 1024
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class BadEvent(StoreError, ValueError):
    """Raised when a stream entry is not an event (no run or seq) and cannot be recorded."""

    def __init__(self, stream_id: str, reason: str):
        self.stream_id = stream_id
        self.reason = reason
        super().__init__(f"stream entry {stream_id} is not a canvasflow event: {reason}")


@dataclass(frozen=True)
class Event:
    run: str
    seq: int
    type: str
    step: str = ""
    status: str = ""
    ts: float = 0.0
    data_json: str = "{}"
    stream_id: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.run, self.seq)

    @cached_property
    def data(self) -> dict[str, Any]:
        try:
            value = json.loads(self.data_json)
        except ValueError:
            return {"raw": self.data_json}
        return value if isinstance(value, dict) else {"value": value}

    def as_dict(self) -> dict[str, Any]:
        """The event as the Socket.IO relay and the REST API show it."""
        return {
            "run": self.run,
            "seq": self.seq,
            "type": self.type,
            "step": self.step,
            "status": self.status,
            "ts": self.ts,
            "data": self.data,
        }

    @classmethod
    def from_stream(cls, stream_id: Any, fields: Mapping[Any, Any]) -> Event:
        sid = _text(stream_id)
        # Inlined _text: this runs for every field of every event the recorder reads.
        f = {
            (k.decode("utf-8", "replace") if k.__class__ is bytes else str(k)): (
                v.decode("utf-8", "replace") if v.__class__ is bytes else str(v)
            )
            for k, v in fields.items()
        }
        run = f.get("run", "")
        if not run:
            raise BadEvent(sid, "no 'run' field")
        try:
            seq = int(f.get("seq", ""))
        except ValueError:
            raise BadEvent(sid, f"seq {f.get('seq')!r} is not a number") from None
        if seq < 1 and not (seq == 0 and f.get("type") == "operator_action"):
            # seq 0 is how an operator action on a run Redis does not know is appended
            # (orchestrator/engine/runstate.py _AUDIT): recorded in the audit log, not as a run event.
            raise BadEvent(sid, f"seq {seq} is not positive")
        try:
            ts = float(f.get("ts") or 0.0)
        except ValueError:
            ts = 0.0
        if not math.isfinite(ts) or ts <= 0:
            ts = int(sid.split("-")[0]) / 1000 if sid[:1].isdigit() else 0.0
        return cls(
            run=run,
            seq=seq,
            type=f.get("type", "") or "unknown",
            step=f.get("step", ""),
            status=f.get("status", ""),
            ts=ts,
            data_json=f.get("data") or "{}",
            stream_id=sid,
        )


@dataclass
class Lookups:
    """What the store needs from the hot state to apply a batch, read by the recorder in one
    Redis round trip before the SQL transaction: nothing here is read inside it."""

    runs: dict[str, RunRecord] = field(default_factory=dict)  # created runs (RUN_META fields)
    outputs: dict[tuple[str, str], str | None] = field(default_factory=dict)
    tracebacks: dict[tuple[str, str], str | None] = field(default_factory=dict)
    run_errors: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)


def clamp_message(message: Any) -> str:
    text = (
        message if isinstance(message, str) else json.dumps(message) if message is not None else ""
    )
    # Room for the "… [truncated from N characters]" that workers/context.py already appended.
    if len(text) > MAX_MESSAGE + 64:
        text = text[:MAX_MESSAGE] + f"… [truncated from {len(text)} characters]"
    return text


def clamp_level(level: Any) -> str:
    lvl = str(level or "INFO").upper()
    return lvl if lvl in LEVELS else "INFO"


def clamp_fraction(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if f != f:
        return 0.0
    return min(1.0, max(0.0, f))


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
