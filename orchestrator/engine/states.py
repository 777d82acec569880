"""Run and step statuses, and the one table of legal run transitions."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSING = "PAUSING"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_RUN_STATUSES


class StepStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"

    @property
    def is_settled(self) -> bool:
        return self in SETTLED_STEP_STATUSES


FINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
# COMPENSATION_FAILED is not final: an operator retries the compensation or resolves the run.
SETTLED_STEP_STATUSES = frozenset(
    {
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATED,
    }
)

# Legal run transitions: (from, to). The Lua scripts in orchestrator/engine/runstate.py receive the
# relevant rows of this table as arguments, so Redis enforces exactly what this table says.
RUN_TRANSITIONS: frozenset[tuple[RunStatus, RunStatus]] = frozenset(
    {
        (RunStatus.PENDING, RunStatus.RUNNING),
        (RunStatus.PENDING, RunStatus.CANCELLED),
        (
            RunStatus.PENDING,
            RunStatus.FAILED,
        ),  # its first step failed before it began (refused, broke)
        (RunStatus.PENDING, RunStatus.PAUSING),
        (RunStatus.PENDING, RunStatus.CANCELLING),
        (RunStatus.RUNNING, RunStatus.COMPLETED),
        (RunStatus.RUNNING, RunStatus.FAILED),
        (RunStatus.RUNNING, RunStatus.COMPENSATING),
        (RunStatus.RUNNING, RunStatus.PAUSING),
        (RunStatus.RUNNING, RunStatus.CANCELLING),
        (RunStatus.PAUSING, RunStatus.PAUSED),
        (RunStatus.PAUSING, RunStatus.CANCELLING),
        (RunStatus.PAUSING, RunStatus.COMPENSATING),
        (RunStatus.PAUSING, RunStatus.FAILED),
        (RunStatus.PAUSING, RunStatus.COMPLETED),
        (RunStatus.PAUSED, RunStatus.RUNNING),
        (RunStatus.PAUSED, RunStatus.CANCELLING),
        (RunStatus.CANCELLING, RunStatus.COMPENSATING),
        (RunStatus.CANCELLING, RunStatus.CANCELLED),
        (RunStatus.COMPENSATING, RunStatus.FAILED),
        (RunStatus.COMPENSATING, RunStatus.CANCELLED),
        (RunStatus.COMPENSATING, RunStatus.COMPENSATION_FAILED),
        (RunStatus.COMPENSATION_FAILED, RunStatus.COMPENSATING),
        (RunStatus.COMPENSATION_FAILED, RunStatus.FAILED),
        (RunStatus.COMPENSATION_FAILED, RunStatus.CANCELLED),
        (RunStatus.FAILED, RunStatus.RUNNING),  # retry
        (RunStatus.CANCELLED, RunStatus.RUNNING),  # retry
        (RunStatus.COMPLETED, RunStatus.RUNNING),  # retry from a step
    }
)


def can_transition(current: str, target: str) -> bool:
    return (RunStatus(current), RunStatus(target)) in RUN_TRANSITIONS


# Where the engine ends a run FAILED when it cannot go on at all (its settle broke, the worker
# refused a message that was not a step's): any live status. COMPENSATION_FAILED is left to the
# operator it waits for. Not operator transitions: callers pass these as ``sources``.
ABANDON_SOURCES: tuple[RunStatus, ...] = tuple(
    s for s in RunStatus if s not in FINAL_RUN_STATUSES and s is not RunStatus.COMPENSATION_FAILED
)


def sources_of(target: RunStatus) -> list[str]:
    """Every status a run may move to ``target`` from."""
    return sorted(str(a) for a, b in RUN_TRANSITIONS if b is target)
