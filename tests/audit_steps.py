"""Step functions the recorder tests run through the builtin `call` plugin on real workers."""

from __future__ import annotations

from typing import Any


def chatty(ctx: Any, lines: int = 10) -> dict[str, int]:
    """Log `lines` lines with entity fields, report progress and counters."""
    for i in range(lines):
        ctx.log(f"line {i}", entity_tag="row", entity_id=str(i), entity_route="/rows")
    ctx.progress(0.5, "half way")
    ctx.stats(items=lines, created=lines // 2)
    return {"lines": lines}


def log_badly(fraction: float, ctx: Any) -> dict[str, Any]:
    """Everything a careless plugin might pass to the action logger."""
    ctx.log(12345)
    ctx.log({"nested": [1, 2]}, level="shout", entity_tag=7)
    ctx.log("x" * 1_000_000, level="warning")
    try:
        ctx.progress("most of it")
    except ValueError as exc:
        ctx.log(f"refused: {exc}", level="ERROR")
    ctx.progress(fraction)
    return {"survived": True}
