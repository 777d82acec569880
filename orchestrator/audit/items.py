"""Items of mapped steps as the audit store knows them: an item is a step row whose id is
``<step>[<index>]`` (``resize[3]``), and the mapped step announces how many it has with a
``step_mapped`` event (``{"step": "resize", "total": N}``). docs/audit-store.md, "Mapped steps".
"""

from __future__ import annotations

import re
from typing import Any

ITEM_ID = re.compile(r"^(.+)\[(\d+)\]$")
# The event a mapped step emits when it expands. The engine names its events with an underscore;
# the dotted spelling of the contract is read too.
MAPPED_EVENTS = frozenset({"step_mapped", "step.mapped"})
MAX_INDEX = 2**31 - 1  # an item index beyond a 32-bit integer column is not an item


def parse_item(step_id: str) -> tuple[str, int] | None:
    """(mapped step, index) of an item id, or None for a real step's id."""
    if not step_id.endswith("]"):
        return None
    m = ITEM_ID.match(step_id)
    if m is None:
        return None
    index = int(m[2])
    return (m[1], index) if index <= MAX_INDEX else None


def item_id(step_id: str, index: int) -> str:
    return f"{step_id}[{index}]"


def mapped_total(data: dict[str, Any]) -> int | None:
    """The item count a ``step_mapped`` event carries, or None when it is not a count."""
    total = data.get("total")
    if isinstance(total, bool) or not isinstance(total, int) or not 0 <= total <= MAX_INDEX:
        return None
    return total
