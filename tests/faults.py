"""Fault injection on a real worker: a step runs ``arm`` through builtin.call, and the worker
process that ran it (tests start such workers with concurrency 1) breaks the next time a chosen
part of the step path handles the step ``victim``."""

from __future__ import annotations

from typing import Any


class InjectedFault(RuntimeError):
    """Raised where a test asked the step path to break."""


def arm(stage: str, step: str = "victim") -> dict:
    from workers import app as worker_app
    from workers import step as step_module

    rt = worker_app.app.canvasflow_runtime
    state = rt.state.target  # the RunState behind the patient stand-in
    if stage == "settle":
        original = step_module.settle

        def broken_settle(*args: Any, **kwargs: Any) -> Any:
            step_module.settle = original
            raise InjectedFault("injected fault: settle")

        step_module.settle = broken_settle
        return {"armed": stage}
    original_method = getattr(state, stage)

    def broken(run_id: str, sid: str = "", *args: Any, **kwargs: Any) -> Any:
        if sid != step and stage != "transition":
            return original_method(run_id, sid, *args, **kwargs)
        del state.__dict__[stage]  # once
        raise InjectedFault(f"injected fault: {stage}")

    setattr(state, stage, broken)
    return {"armed": stage}
