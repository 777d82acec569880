"""Harmless Celery tasks for the fleet-inspection tests: what a fleet would list in
CANVASFLOW_WEB_INSPECT_TASK_ALLOW. Test workers load this module with ``-I tests.inspect_tasks``."""

from __future__ import annotations

import time

from celery import shared_task


@shared_task(name="tests.inspect_tasks.add")
def add(a: float, b: float) -> float:
    return a + b


@shared_task(name="tests.inspect_tasks.nap")
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@shared_task(name="tests.inspect_tasks.fail")
def fail(message: str) -> None:
    raise ValueError(message)
