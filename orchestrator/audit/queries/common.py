"""What every query module shares: status groups, keyset cursors, JSON columns, durations."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from orchestrator.errors import StoreError

FINAL = ("COMPLETED", "FAILED", "CANCELLED")
FAILED = ("FAILED", "COMPENSATION_FAILED")
ENDED = ("COMPLETED", "FAILED", "COMPENSATION_FAILED")  # what failure rates are out of


def loads(text: str | None, default: Any = None) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return text


def encode_cursor(created_at: float, run_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, run_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, rid = json.loads(raw)
        return float(ts), str(rid)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"invalid cursor {cursor!r}: pass back the next_cursor of a page") from exc


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' (or plain seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
    if not m:
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit, like 30d, 12h or 90m"
        )
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]
