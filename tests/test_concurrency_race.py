"""The 50-run race (issue 16 item 3): four processes submit 50 runs of a workflow limited to N at
the same moment; a sampler reading the runs' statuses all along never sees more than N active,
and neither do the runs' own start and end times afterwards. Real Redis, a real worker with
more pool processes than N."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from orchestrator import Client
from tests.audit_helpers import wait_for
from tests.conftest import ROOT, make_settings

pytestmark = pytest.mark.integration

LIMIT = 3
PROCESSES = 4
RUNS = 50
ACTIVE = {"RUNNING", "PAUSING", "PAUSED", "CANCELLING", "COMPENSATING"}

SUBMITTER = textwrap.dedent(
    """
    import json, sys, time
    from orchestrator import Client
    wid, count, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    client = Client()
    wf = {"id": wid, "mode": "sequential", "concurrency": {"limit": int(sys.argv[4])},
          "steps": [{"id": "a", "plugin": "builtin", "method": "sleep", "params": {"seconds": 0.2}},
                    {"id": "b", "plugin": "builtin", "method": "echo", "params": {"x": 1}}]}
    client.load(wf)  # validated and planned before the start line
    while not client.redis.exists(go):
        time.sleep(0.001)
    print(json.dumps([client.submit(wf).id for _ in range(count)]), flush=True)
    """
)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end and a start at the same time: not both)."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, step in points:
        cur += step
        best = max(best, cur)
    return best


def test_fifty_runs_submitted_at_once_from_four_processes_never_have_more_than_limit_active(
    redis_url: str, start_worker: Any
) -> None:
    settings = make_settings(redis_url, lease_ttl=3, visibility_timeout=60)
    start_worker(settings, concurrency=LIMIT * 2)
    client = Client(settings)
    wid = f"race-{uuid.uuid4().hex[:6]}"
    go = f"{settings.key_prefix}:test:go"
    env = {**os.environ, **settings.as_env(), "PYTHONPATH": str(ROOT)}
    counts = [RUNS // PROCESSES + (1 if i < RUNS % PROCESSES else 0) for i in range(PROCESSES)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, wid, str(n), go, str(LIMIT)],
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in counts
    ]
    seen: list[int] = []
    stop = threading.Event()
    sampler_client = redis.Redis.from_url(redis_url)

    def sample() -> None:
        index = client.keys.runs_of(wid)
        while not stop.is_set():
            ids = [i.decode() for i in sampler_client.zrange(index, 0, -1)]
            if ids:
                statuses = client.state.runs(ids, "status")
                seen.append(sum(1 for r in statuses if r is not None and r.status in ACTIVE))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        time.sleep(1.0)  # every submitter is past its imports and waits on the line
        client.redis.set(go, "1")
        run_ids: list[str] = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()[-2000:]
            run_ids += json.loads(out.decode().strip().splitlines()[-1])
        assert len(set(run_ids)) == RUNS
        wait_for(
            lambda: (
                all(r.status == "COMPLETED" for r in client.list_runs(workflow=wid, limit=RUNS))
                and len(client.list_runs(workflow=wid, limit=RUNS)) == RUNS
            ),
            180,
            "every run completed",
        )
    finally:
        stop.set()
        sampler.join(10)
        sampler_client.close()
    assert len(seen) > 20, "the sampler should have looked many times"
    assert max(seen) <= LIMIT, f"more than {LIMIT} active at once: {max(seen)}"
    assert max(seen) == LIMIT, "the limit should have been reached (the worker has room for more)"
    snaps = [client.snapshot(rid) for rid in run_ids]
    intervals = [(s.started_at, s.finished_at) for s in snaps]
    assert all(a is not None and b is not None for a, b in intervals)
    assert max_overlap(intervals) <= LIMIT  # type: ignore[arg-type]
    assert client.concurrency(wid) == []
    client.close()
