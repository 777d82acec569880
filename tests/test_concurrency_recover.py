"""Concurrency slots survive the loss of Redis: `canvasflow recover` gives each rebuilt run that
was running its slot again and puts a run that was waiting back in the queue (not sent), so the
limit still holds after the recovery. A private Redis restarted empty, a real worker, the
recorder, the audit store on SQLite and PostgreSQL (tests/test_recover.py's fleet)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_recover import Fleet, call, wait_for

pytest_plugins = ("tests.audit_fixtures",)
pytestmark = pytest.mark.integration

LIMITED = {
    "id": "recover_limited",
    "concurrency": {"limit": 1},
    "steps": [{"id": "b", **call("mark_then_wait", "b", gate="{{ inputs.gate }}")}],
}


@pytest.fixture
def fleet(tmp_path: Path, store_url: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path, store_url)
    yield f
    f.close()


def test_recovered_runs_hold_their_slots_again_and_a_waiting_run_waits_again(
    fleet: Fleet,
) -> None:
    gate = fleet.tmp / "gate"
    inputs = {"marks": str(fleet.marks), "gate": str(gate)}
    holder = str(fleet.client.submit(LIMITED, inputs=inputs).id)
    waiter = str(fleet.client.submit(LIMITED, inputs=inputs).id)
    wait_for("the holder's step RUNNING in SQL", lambda: fleet.steps(holder) == {"b": "RUNNING"})
    wait_for("the waiter PENDING in SQL", lambda: fleet.status(waiter) == "PENDING")

    fleet.lose_redis()
    assert fleet.client.concurrency("recover_limited") == []  # the slots went with Redis

    done = fleet.recover()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"recovered {holder} (RUNNING" in done.stdout
    assert f"recovered {waiter} (PENDING" in done.stdout
    assert "sent nothing (waiting for a slot)" in done.stdout
    (group,) = fleet.client.concurrency("recover_limited")
    assert group["active"] == [holder] and group["waiting"] == 1
    assert fleet.client.waiting(waiter)["ahead"] == 0  # type: ignore[index]

    gate.touch()
    wait_for("the holder COMPLETED", lambda: fleet.status(holder) == "COMPLETED")
    wait_for("the waiter COMPLETED", lambda: fleet.status(waiter) == "COMPLETED")
    assert fleet.ran(holder) == {"b": 2}  # its lost attempt, then the recovered one
    assert fleet.ran(waiter) == {"b": 1}
    assert fleet.client.concurrency("recover_limited") == []
