"""Helpers of the "state lost" tests: a run that Redis loses while the audit store has it live."""

from __future__ import annotations

from typing import Any

# A queue no worker consumes: the run stays PENDING with its message queued until Redis "loses" it.
NOWHERE = {
    "id": "lost_run",
    "steps": [
        {"id": "a", "plugin": "builtin", "method": "echo", "queue": "nowhere"},
        {"id": "b", "plugin": "builtin", "method": "echo", "depends_on": ["a"]},
    ],
}


def lose(client: Any, run_id: str) -> None:
    """What a Redis restart without persistence does to a run in flight."""
    k = client.keys
    client.redis.delete(
        k.run(run_id),
        k.steps(run_id),
        k.attempts(run_id),
        k.completed(run_id),
        f"{k.prefix}:celery:nowhere",
    )
    client.redis.zrem(k.live, run_id)
    client.redis.zrem(k.runs, run_id)
