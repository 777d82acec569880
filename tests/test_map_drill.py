"""The 10,000-item drill: a mapped step of 10,000 items on a real worker completes with every
output in order, and the hot state per item stays compact (slow: run with -m slow)."""

from __future__ import annotations

import pytest

from orchestrator import Client, Workflow
from orchestrator.keys import Keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 10_000


def test_a_map_of_ten_thousand_items_completes_in_order_with_compact_state(client: Client) -> None:
    wf = Workflow("drill10k", inputs={"xs": []}).step(
        "each",
        "builtin",
        "echo",
        map={"over": "{{ inputs.xs }}"},
        params={"v": "{{ item }}"},
    )
    snap = client.submit(wf, inputs={"xs": list(range(N))}).wait(900)
    assert snap.status == "COMPLETED", snap
    out = snap.step("each").output
    assert out == [{"v": i} for i in range(N)]
    keys = Keys(client.settings.key_prefix)
    r = client.state.r
    statuses = r.hmget(keys.items(snap.id), [f"each[{i}]|status" for i in range(N)])
    assert set(statuses) == {b"COMPLETED"}
    # compact: the items' fields and the stored list, per item
    per_item = (r.memory_usage(keys.items(snap.id)) + r.memory_usage(keys.map_data(snap.id))) / N
    assert per_item < 1024, f"{per_item:.0f} bytes of hot state per item"
    # the steps hash (what every reader of the run reads) holds the step, not its items
    assert r.hlen(keys.steps(snap.id)) < 20
