"""The transition tables are the authority (issue 14 item 2): every (from, to) pair of run and
step statuses is accepted exactly when the table holds it, by the Python check and by the Lua
scripts on a real Redis; docs/design.md shows the tables as the code has them."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
import redis

from orchestrator.engine.runstate import RunState
from orchestrator.engine.states import (
    NEW_EPOCH_MOVES,
    RUN_TABLE,
    STEP_TABLE,
    Move,
    RunStatus,
    StepStatus,
    run_may,
    step_may,
    table_markdown,
)
from orchestrator.keys import Keys, step_field
from orchestrator.records import RunRecord
from tests.conftest import ROOT

RUN_PAIRS = list(itertools.product(RunStatus, RunStatus))
STEP_PAIRS = list(itertools.product(StepStatus, StepStatus))
RESTARTS = sorted(NEW_EPOCH_MOVES - {Move.CANCEL})
PLAIN = sorted(set(Move) - NEW_EPOCH_MOVES)


def in_run_table(move: Move, source: str, target: str) -> bool:
    return any(r.move == move and (source, target) in r.pairs() for r in RUN_TABLE)


def in_step_table(source: str, target: str) -> bool:
    return any((source, target) in r.pairs() for r in STEP_TABLE)


@pytest.fixture
def state(redis_client: redis.Redis) -> Iterator[RunState]:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    yield RunState(redis_client, keys, state_ttl=600)
    for key in redis_client.scan_iter(f"{keys.prefix}:*", count=1000):
        redis_client.delete(key)


def new_run(state: RunState, status: str) -> str:
    run_id = uuid.uuid4().hex[:16]
    state.create(RunRecord(run_id, workflow="walk", definition_json="{}"), ["a"])
    state.r.hset(state.keys.run(run_id), "status", status)
    return run_id


# -- Python ----------------------------------------------------------------------------------


@pytest.mark.parametrize("move", list(Move))
def test_the_python_check_accepts_exactly_the_run_tables_pairs(move: Move) -> None:
    for source, target in RUN_PAIRS:
        assert run_may(move, source, target) is in_run_table(move, source, target), (source, target)


def test_the_python_check_accepts_exactly_the_step_tables_pairs() -> None:
    for source, target in STEP_PAIRS:
        assert step_may(source, target) is in_step_table(source, target), (source, target)


def test_a_settled_step_only_goes_back_to_pending_or_into_its_compensation() -> None:
    for source, target in STEP_PAIRS:
        if source.is_settled and step_may(source, target):
            assert target in (
                StepStatus.PENDING,
                StepStatus.COMPENSATING,
                StepStatus.COMPENSATED,
            ) or (source == StepStatus.COMPENSATING and target == StepStatus.COMPLETED), (
                source,
                target,
            )


def test_only_a_retry_moves_a_final_run() -> None:
    for move, source, target in itertools.product(Move, RunStatus, RunStatus):
        if source.is_final and run_may(move, source, target):
            assert move is Move.RETRY and target == RunStatus.RUNNING, (move, source)


def test_a_cancel_only_ever_goes_to_cancelling() -> None:
    assert {t for r in RUN_TABLE if r.move is Move.CANCEL for t in r.targets} == {
        RunStatus.CANCELLING
    }


def test_docs_design_shows_the_tables_as_the_code_has_them() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    start = text.index("<!-- transition tables:")
    start = text.index("\n", start) + 1
    end = text.index("<!-- end of the transition tables -->", start)
    assert text[start:end].strip() == table_markdown()


# -- Lua, on a real Redis ----------------------------------------------------------------------


@pytest.mark.parametrize("move", PLAIN)
def test_the_transition_script_accepts_exactly_the_run_tables_pairs(
    state: RunState, move: Move
) -> None:
    run_id = new_run(state, RunStatus.PENDING)
    for source, target in RUN_PAIRS:
        state.r.hset(state.keys.run(run_id), "status", source)
        done, before = state.transition(run_id, move, target)
        assert (done, before) == (in_run_table(move, source, target), source), (source, target)
        assert state.status(run_id) == (target if done else source)


@pytest.mark.parametrize("move", RESTARTS)
def test_the_restart_script_accepts_exactly_the_run_tables_pairs(
    state: RunState, move: Move
) -> None:
    run_id = new_run(state, RunStatus.PENDING)
    for source, target in RUN_PAIRS:
        state.r.hset(state.keys.run(run_id), "status", source)
        (epoch,) = state.runs([run_id], "epoch")
        verdict, before, new_epoch = state.restart(run_id, move, target)
        allowed = in_run_table(move, source, target)
        assert (verdict, before) == ("ok" if allowed else "refused", source), (source, target)
        assert state.status(run_id) == (target if allowed else source)
        assert new_epoch == (epoch.epoch + 1 if allowed else 0)


def test_the_cancel_script_accepts_exactly_the_run_tables_sources(state: RunState) -> None:
    run_id = new_run(state, RunStatus.PENDING)
    for source in RunStatus:
        state.r.hset(state.keys.run(run_id), "status", source)
        verdict, before, _, _ = state.cancel(run_id, terminate=False)
        allowed = in_run_table(Move.CANCEL, source, RunStatus.CANCELLING)
        assert (verdict, before) == ("ok" if allowed else "refused", source), source


def test_the_watchdogs_claim_accepts_exactly_the_redispatch_rows(state: RunState) -> None:
    run_id = new_run(state, RunStatus.PENDING)
    for source in RunStatus:
        state.r.hset(state.keys.run(run_id), "status", source)
        (head,) = state.runs([run_id], "seq")
        verdict, _ = state.claim_stalled(run_id, source, str(head.seq), {"reason": "walk"})
        allowed = in_run_table(Move.REDISPATCH, source, source)
        assert verdict == ("ok" if allowed else "refused"), source


def test_a_new_dispatch_is_not_a_plain_transition_nor_the_other_way_round(
    state: RunState,
) -> None:
    run_id = new_run(state, RunStatus.FAILED)
    with pytest.raises(ValueError):
        state.transition(run_id, Move.RETRY, RunStatus.RUNNING)
    with pytest.raises(ValueError):
        state.restart(run_id, Move.SETTLE, RunStatus.COMPLETED)
    with pytest.raises(ValueError):
        state.restart(run_id, Move.CANCEL, RunStatus.CANCELLING)
    assert state.status(run_id) == RunStatus.FAILED


def test_the_step_script_accepts_exactly_the_step_tables_pairs(state: RunState) -> None:
    run_id = new_run(state, RunStatus.RUNNING)
    steps = state.keys.steps(run_id)
    for source, target in STEP_PAIRS:
        state.r.hset(steps, step_field("a", "status"), source)
        done = state.set_step(run_id, "a", target, "walk")
        assert done is in_step_table(source, target), (source, target)
        assert state.step(run_id, "a", "status").status == (target if done else source)
