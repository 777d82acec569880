"""Plain functions that tests run through the builtin `call` plugin on real workers."""

from __future__ import annotations


def returns_a_set() -> object:
    return {1, 2, 3}


def divide_by_zero() -> float:
    return 1 / 0


def add(a: int, b: int) -> int:
    return a + b


def fail_after(seconds: float, message: str = "boom") -> None:
    import time

    from orchestrator.errors import StepError

    time.sleep(seconds)
    raise StepError(message)


def fail_unless_exists(path: str) -> dict:
    from pathlib import Path

    from orchestrator.errors import StepError

    if not Path(path).exists():
        raise StepError(f"not fixed yet: {path} is missing")
    return {"fixed": path}


def ignores_soft_timeout(seconds: float) -> dict:
    """A badly behaved plugin: swallows the soft time limit and keeps going (hangs)."""
    import time

    from celery.exceptions import SoftTimeLimitExceeded

    end = time.time() + seconds
    while time.time() < end:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            pass
    return {"finished": True}


def record_call(redis_url: str, key: str, tag: str) -> dict:
    """Leave a trace that the step's plugin ran: RPUSH ``tag`` to the list ``key``."""
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        r.rpush(key, tag)
    finally:
        r.close()
    return {"ran": tag}


def wait_for_key(redis_url: str, key: str, timeout: float = 60) -> dict:
    """Block until ``key`` exists in Redis (a test releases the step by setting it)."""
    import time

    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while not r.exists(key):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{key} was never set")
            time.sleep(0.02)
    finally:
        r.close()
    return {"released": key}


def record_then_sleep(redis_url: str, key: str, tag: str, seconds: float) -> dict:
    """Leave a trace, then sleep: a step that is certainly running once the trace is there."""
    import time

    record_call(redis_url, key, tag)
    time.sleep(seconds)
    record_call(redis_url, key, f"{tag}:end")
    return {"slept": seconds}


def mark(path: str, tag: str) -> dict:
    """Append ``tag`` to a file: counts executions in a way a Redis loss cannot erase."""
    with open(path, "a") as f:
        f.write(tag + "\n")
    return {"tag": tag}


def mark_then_wait(path: str, tag: str, gate: str, timeout: float = 300) -> dict:
    """``mark``, then wait until the file ``gate`` exists (a step a test holds RUNNING)."""
    import os
    import time

    mark(path, tag)
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.05)
    return {"tag": tag}
