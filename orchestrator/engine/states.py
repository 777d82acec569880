"""Run and step statuses, and the one table of legal transitions for each.

Every status change is checked against these tables, in Python by :func:`run_may` and
:func:`step_may`, and in Redis by the Lua scripts, which get the tables rendered from here
(orchestrator/engine/lua/, ``-- include: states``). docs/design.md shows the tables as
:func:`table_markdown` renders them; tests/test_transitions.py compares the two and walks every
pair against both checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import NamedTuple


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


class Move(StrEnum):
    """What changes a run's status. A move may take only its own rows of ``RUN_TABLE``: a
    resolve cannot end a running run, a late ``compensated`` cannot fail a retried one."""

    BEGIN = "begin"  # a step begins (the step path's Lua)
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    RETRY = "retry"
    RETRY_COMPENSATION = "retry_compensation"
    RESOLVE = "resolve"
    SETTLE = "settle"  # the last task of a dispatch ends or pauses the run
    COMPENSATED = "compensated"  # the end of the compensation chain
    REDISPATCH = "redispatch"
    ABANDON = "abandon"


# Concurrency limits (orchestrator/engine/slots.py): the statuses in which a run admitted to its
# group holds a slot (DESIGN's active statuses, and PENDING between its admission and its first
# step); any other status (final, COMPENSATION_FAILED), or no status at all, frees it.
SLOT_HOLDING_STATUSES = (
    RunStatus.PENDING,
    RunStatus.RUNNING,
    RunStatus.PAUSING,
    RunStatus.PAUSED,
    RunStatus.CANCELLING,
    RunStatus.COMPENSATING,
)

# Steps a run is busy with: its "current steps" (the client's snapshot, the dashboard's list).
ACTIVE_STEP_STATUSES = (StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.COMPENSATING)


# Moves that start a new dispatch: the epoch is bumped (RunState.restart and cancel, the
# watchdog's claim), so whatever is left of the old canvas becomes inert.
NEW_EPOCH_MOVES = frozenset(
    {Move.RESUME, Move.RETRY, Move.RETRY_COMPENSATION, Move.REDISPATCH, Move.CANCEL}
)


class Row(NamedTuple):
    """Each of ``sources`` may move to each of ``targets``; no targets: it stays as it is."""

    move: Move | None  # None in the step table
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    why: str

    def pairs(self) -> list[tuple[str, str]]:
        return [(s, t) for s in self.sources for t in self.targets or (s,)]


R, S = RunStatus, StepStatus
_LIVE = (R.PENDING, R.RUNNING, R.PAUSING, R.PAUSED, R.CANCELLING, R.COMPENSATING)

RUN_TABLE: tuple[Row, ...] = (
    Row(Move.BEGIN, (R.PENDING,), (R.RUNNING,), "its first step begins"),
    Row(
        Move.PAUSE, (R.PENDING, R.RUNNING), (R.PAUSING,), "no new step starts; running ones finish"
    ),
    Row(Move.SETTLE, (R.PAUSING,), (R.PAUSED,), "the steps running at the pause have finished"),
    Row(Move.RESUME, (R.PAUSED,), (R.RUNNING,), "what is left is dispatched again"),
    Row(
        Move.CANCEL,
        (R.PENDING, R.RUNNING, R.PAUSING, R.PAUSED),
        (R.CANCELLING,),
        "nothing new starts; running steps are terminated or finish",
    ),
    Row(
        Move.SETTLE,
        (R.RUNNING, R.PENDING),
        (R.COMPLETED,),
        "no critical step failed (from PENDING: no step was ever begun, e.g. a non-critical "
        "fast-path step that broke before Redis knew it ran)",
    ),
    Row(
        Move.SETTLE,
        (R.RUNNING, R.PENDING, R.PAUSING),
        (R.FAILED,),
        "a critical step failed and nothing completed has a compensation",
    ),
    Row(
        Move.SETTLE,
        (R.RUNNING, R.PAUSING, R.CANCELLING),
        (R.COMPENSATING,),
        "it failed or was cancelled: completed steps are compensated, newest first",
    ),
    Row(Move.SETTLE, (R.CANCELLING,), (R.CANCELLED,), "cancelled, with nothing to compensate"),
    Row(
        Move.COMPENSATED,
        (R.COMPENSATING,),
        (R.FAILED, R.CANCELLED),
        "every compensation ran: it ends as what it compensated for",
    ),
    Row(
        Move.COMPENSATED,
        (R.COMPENSATING,),
        (R.COMPENSATION_FAILED,),
        "a compensation failed: it waits for an operator",
    ),
    Row(
        Move.RETRY_COMPENSATION,
        (R.COMPENSATION_FAILED,),
        (R.COMPENSATING,),
        "the compensations that have not succeeded run again",
    ),
    Row(
        Move.RESOLVE,
        (R.COMPENSATION_FAILED,),
        (R.FAILED, R.CANCELLED),
        "an operator handled the failed compensation by hand",
    ),
    Row(
        Move.RETRY,
        (R.FAILED, R.CANCELLED, R.COMPLETED),
        (R.RUNNING,),
        "it runs again from a step or from the start",
    ),
    Row(
        Move.REDISPATCH,
        (R.PENDING, R.RUNNING, R.PAUSING, R.CANCELLING, R.COMPENSATING),
        (),
        "its canvas broke (a step killed at its hard time limit, a refused message, a stall "
        "the watchdog found): what is left is sent again",
    ),
    Row(
        Move.ABANDON,
        _LIVE,
        (R.FAILED,),
        "the engine cannot go on with it (its dispatch failed at submit, its settle broke, "
        "a message that was not a step's was refused); COMPENSATION_FAILED waits for an operator",
    ),
)

_UNSETTLED = (S.PENDING, S.RETRYING, S.RUNNING)

STEP_TABLE: tuple[Row, ...] = (
    Row(
        None,
        _UNSETTLED,
        (S.RUNNING,),
        "an attempt begins (from RUNNING: it takes over from an attempt whose worker stopped "
        "renewing the lease)",
    ),
    Row(None, _UNSETTLED, (S.SKIPPED,), "its join rule or `when` said no"),
    Row(
        None,
        _UNSETTLED,
        (S.COMPLETED, S.FAILED, S.RETRYING),
        "an attempt ended (from PENDING or RETRYING: on the fast path, which records begin and "
        "end at once, or killed before Redis knew it began)",
    ),
    Row(
        None,
        _UNSETTLED,
        (S.CANCELLED,),
        "its run was cancelled or failed first, or it was terminated, or its worker was lost "
        "during a cancel",
    ),
    Row(
        None,
        (S.COMPLETED, S.COMPENSATING),
        (S.COMPENSATING,),
        "its compensation runs (again, when the compensation task is retried)",
    ),
    Row(None, (S.COMPENSATING,), (S.COMPENSATED,), "its compensation succeeded"),
    Row(
        None,
        (S.COMPENSATING,),
        (S.COMPLETED,),
        "its compensation failed: COMPLETED again, with the error, so a retry of the "
        "compensation finds it",
    ),
    Row(None, tuple(S), (S.PENDING,), "a retry of its run resets it to run again"),
)

RUN_TRANSITIONS: frozenset[tuple[str, str, str]] = frozenset(
    (str(row.move), s, t) for row in RUN_TABLE for s, t in row.pairs()
)
STEP_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    pair for row in STEP_TABLE for pair in row.pairs()
)


def run_may(move: Move | str, source: str, target: str) -> bool:
    """Whether ``move`` may take a run from ``source`` to ``target``: the one check."""
    return (str(move), str(source), str(target)) in RUN_TRANSITIONS


def step_may(source: str, target: str) -> bool:
    """Whether a step may go from ``source`` to ``target``: the one check."""
    return (str(source), str(target)) in STEP_TRANSITIONS


def sources(move: Move) -> list[str]:
    """Every status ``move`` may start from, in table order of the statuses."""
    found = {s for m, s, _ in RUN_TRANSITIONS if m == move}
    return [str(s) for s in RunStatus if s in found]


def lua_constants() -> str:
    """The tables as Lua string constants (a plain find in an interned string costs no table
    construction per script call) and the checks over them."""
    runs = " ".join(f"{m}:{s}>{t}" for m, s, t in sorted(RUN_TRANSITIONS))
    steps = " ".join(f"{s}>{t}" for s, t in sorted(STEP_TRANSITIONS))

    def words(values: Iterable[str]) -> str:
        return " ".join(sorted(str(v) for v in values))

    return f"""local RUN_MOVES = ' {runs} '
local STEP_MOVES = ' {steps} '
local NEW_EPOCH = ' {words(NEW_EPOCH_MOVES)} '
local SETTLED = ' {words(SETTLED_STEP_STATUSES)} '
local FINAL = ' {words(FINAL_RUN_STATUSES)} '
local ACTIVE = ' {words(ACTIVE_STEP_STATUSES)} '
local HOLDS_SLOT = ' {words(SLOT_HOLDING_STATUSES)} '
local function is_in(set, word)
  return word ~= nil and word ~= false and string.find(set, ' ' .. word .. ' ', 1, true) ~= nil
end
local function is_new_epoch(move) return is_in(NEW_EPOCH, move) end
local function is_settled(status) return is_in(SETTLED, status) end
local function is_final(status) return is_in(FINAL, status) end
local function is_active(status) return is_in(ACTIVE, status) end
local function holds_slot(status) return is_in(HOLDS_SLOT, status) end
local function run_may(move, src, dst)
  return string.find(RUN_MOVES, ' ' .. move .. ':' .. src .. '>' .. dst .. ' ', 1, true) ~= nil
end
local function step_may(src, dst)
  return string.find(STEP_MOVES, ' ' .. (src or 'PENDING') .. '>' .. dst .. ' ', 1, true) ~= nil
end
"""


def table_markdown() -> str:
    """The two tables as docs/design.md shows them."""
    out = ["| move | from | to | why |", "|---|---|---|---|"]
    for row in RUN_TABLE:
        to = ", ".join(row.targets) or "(unchanged)"
        out.append(f"| {row.move} | {', '.join(row.sources)} | {to} | {row.why} |")
    out += ["", "| step: from | to | why |", "|---|---|---|"]
    for row in STEP_TABLE:
        out.append(f"| {', '.join(row.sources)} | {', '.join(row.targets)} | {row.why} |")
    return "\n".join(out)
