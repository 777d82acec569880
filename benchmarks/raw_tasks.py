"""The benchmark's worker app: canvasflow's tasks plus one raw no-op task, on one Celery config.

Both sides of ``bench_core.py`` run on this same app, so they share every setting that
costs time per task (acks_late, prefetch 1, priority queues, task events, result backend).
Started by ``bench_core.py`` as ``celery -A raw_tasks worker`` with ``benchmarks/`` and the
repository root on PYTHONPATH; settings come from CANVASFLOW_* variables like any worker.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from orchestrator.settings import Settings
from workers.app import create_worker_app

NOOP = "bench.noop"
# A directory: every pool process runs under cProfile and writes child-<pid>.prof there when
# the worker shuts down (for finding where a shape's time goes; off by default).
PROFILE_DIR = os.environ.get("CANVASFLOW_BENCH_PROFILE", "")


def create_app(settings: Settings | None = None) -> Celery:
    app = create_worker_app(settings or Settings.from_env())

    @app.task(name=NOOP)
    def noop(value: Any = None, *args: Any, **kwargs: Any) -> Any:
        return value

    if PROFILE_DIR:
        _profile_pool_processes(PROFILE_DIR)
    return app


def _profile_pool_processes(directory: str) -> None:
    import cProfile

    profiler = cProfile.Profile()

    def start(**_: Any) -> None:
        profiler.enable()

    def stop(**_: Any) -> None:
        profiler.disable()
        profiler.dump_stats(os.path.join(directory, f"child-{os.getpid()}.prof"))

    signals.worker_process_init.connect(start, weak=False)
    signals.worker_process_shutdown.connect(stop, weak=False)


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    # Built on first access (celery -A looks up ``app``), never at import time.
    global _app
    if name in ("app", "celery"):
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
