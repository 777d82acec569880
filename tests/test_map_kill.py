"""A worker SIGKILLed while it runs items of a mapped step: no item is lost, none runs twice to
completion (real worker processes; the kill is of the whole worker, main process and pool)."""

from __future__ import annotations

import time

import pytest

from orchestrator import Client, Workflow
from tests.conftest import make_settings
from tests.test_map_control import wait_for
from tests.test_map_engine import events, items

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("cap", [2, None], ids=["lanes", "chord"])
def test_sigkill_during_items_loses_none_and_completes_none_twice(
    redis_url: str, start_worker, cap: int | None
) -> None:
    settings = make_settings(redis_url, lease_ttl=2, visibility_timeout=4)
    first = start_worker(settings, concurrency=2)
    client = Client(settings)
    try:
        wf = (
            Workflow("mapkill")
            .step("list", "builtin", "echo", params={"xs": list(range(10))})
            .step(
                "each",
                "builtin",
                "sleep",
                depends_on=["list"],
                map={
                    "over": "{{ steps.list.output.xs }}",
                    **({"max_parallel": cap} if cap else {}),
                },
                params={"seconds": 0.6},
            )
        )
        run = client.submit(wf)

        def midway() -> bool:
            got = items(client, run.id, "each").values()
            done = sum(1 for v in got if v.get("status") == "COMPLETED")
            running = sum(1 for v in got if v.get("status") == "RUNNING")
            return done >= 2 and running >= 1

        wait_for(midway, 30, 0.02)
        first.kill()
        killed_at = time.time()
        start_worker(settings, concurrency=2)
        snap = run.wait(120)
        assert snap.status == "COMPLETED", snap
        assert snap.step("each").output == [{"slept": 0.6}] * 10
        completed = [e["step"] for e in events(client, run.id) if e["type"] == "step_completed"]
        item_done = [s for s in completed if s.startswith("each[")]
        assert sorted(item_done) == sorted(f"each[{i}]" for i in range(10))  # each exactly once
        got = items(client, run.id, "each")
        retaken = [k for k, v in got.items() if int(v["attempts"]) > 1]
        assert retaken, "an item was running at the kill: it ran again in a new attempt"
        lost = [e["step"] for e in events(client, run.id) if e["type"] == "attempt_lost"]
        assert set(lost) >= set(retaken)
        assert all(float(got[k]["finished_at"]) > killed_at for k in retaken)
    finally:
        client.close()


def test_an_item_killed_at_its_hard_limit_fails_and_the_run_settles(
    redis_url: str, start_worker
) -> None:
    from tests.conftest import TEST_CALL_ALLOW

    settings = make_settings(redis_url, hard_timeout_grace=1, call_allow=TEST_CALL_ALLOW)
    start_worker(settings, concurrency=2)
    client = Client(settings)
    try:
        wf = (
            Workflow("mapreap")
            .step("list", "builtin", "echo", params={"xs": [0, 30, 0]})
            .step(
                "each",
                "builtin",
                "call",
                depends_on=["list"],
                timeout=1,
                map={"over": "{{ steps.list.output.xs }}", "max_parallel": 1},
                params={"function": "tests.helpers:ignores_soft_timeout", "args": ["{{ item }}"]},
            )
        )
        snap = client.submit(wf).wait(60)
        assert snap.status == "FAILED", snap
        got = items(client, snap.id, "each")
        assert got["each[0]"]["status"] == "COMPLETED"
        assert got["each[1]"]["status"] == "FAILED"
        assert "killed at the hard limit" in got["each[1]"]["error"]
        assert got["each[2]"]["status"] == "CANCELLED"  # fail fast: never started
    finally:
        client.close()
