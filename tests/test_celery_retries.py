"""canvasflow counts attempts itself: Celery's default limit of 3 retries never cuts a run short."""

from __future__ import annotations

import pytest

from orchestrator import Client, Workflow

pytestmark = pytest.mark.integration


def test_a_step_with_more_than_three_retries_gets_them_all_and_completes(client: Client) -> None:
    wf = Workflow("five_retries").step(
        "flaky",
        "builtin",
        "fail",
        params={"message": "not yet", "times": 4},
        retries=5,
        retry_delay=0.05,
    )
    snap = client.submit(wf).wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("flaky").attempts == 5
    assert snap.step("flaky").output == {"attempt": 5}
