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
