"""Fault injection for sub-workflow steps: the worker process that ran ``arm_kill`` (tests
start such workers with concurrency 1) is SIGKILLed right after the next child run it starts
was dispatched, before the parent step stored its continuation."""

from __future__ import annotations

import os
import signal
from typing import Any


def arm_kill() -> dict:
    from workers import app as worker_app

    rt = worker_app.app.canvasflow_runtime
    original = rt.dispatcher.start

    def start_then_die(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    rt.dispatcher.start = start_then_die
    return {"armed": "kill after child start", "pid": os.getpid()}
