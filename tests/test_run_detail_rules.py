"""The run page's derived figures as tables of cases (web/detail.py): a parallel branch's name
and status from its steps', and a retried run's operator-retry counts and SLA figures."""

from __future__ import annotations

import pytest

from web.detail import branch_name, branch_status, retry_sla, step_retries


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["SKIPPED", "SKIPPED"], "SKIPPED"),
        (["COMPLETED", "SKIPPED"], "COMPLETED"),
        (["COMPLETED", "COMPLETED"], "COMPLETED"),
        (["COMPLETED", "FAILED"], "FAILED"),
        (["SKIPPED", "RUNNING"], "RUNNING"),
        (["COMPENSATING", "COMPLETED"], "RUNNING"),
        (["COMPLETED", "PENDING"], "PENDING"),
        (["CANCELLED", "CANCELLED"], "CANCELLED"),
        (["COMPLETED", "CANCELLED"], "CANCELLED"),
        (["COMPENSATED", "COMPENSATED"], "COMPENSATED"),
        (["COMPENSATED", "SKIPPED"], "COMPENSATED"),
        (["COMPENSATED", "CANCELLED"], "COMPENSATED"),
        ([], "PENDING"),
    ],
)
def test_a_branch_status_is_derived_honestly_from_its_steps(statuses, expected):
    assert branch_status(statuses) == expected


def test_a_branch_is_named_by_its_steps():
    assert branch_name(("resize",)) == "resize"
    assert branch_name(("resize", "upload")) == "resize → upload"
    assert branch_name(("a", "b", "c", "d", "e")) == "a → … → e · 5 steps"


RETRY = {
    "ts": 110.0,
    "detail": {
        "reset": ["backup", "verify"],
        "attempts_before": {"backup": 1, "verify": 3},
        "ended_at": 105.0,
        "status_before": "FAILED",
    },
}


def test_an_operator_retry_is_counted_apart_from_the_steps_own_attempts():
    assert step_retries("verify", 5, 2, [RETRY]) == {
        "operator_retries": 1,
        "attempt": 2,
        "attempts_allowed": 3,
    }
    assert step_retries("other", 1, 0, [RETRY]) == {
        "operator_retries": 0,
        "attempt": 1,
        "attempts_allowed": 1,
    }


def test_a_retry_keeps_the_runs_sla_clock_and_adds_the_first_runs_and_its_own_figure():
    summary = {
        "created_at": 100.0,
        "finished_at": 112.0,
        "status": "COMPLETED",
        "sla": {"target": 4.0, "elapsed": 12.0, "status": "breached"},
    }
    figures = retry_sla(summary, [RETRY], now=200.0)
    assert figures["first"]["elapsed"] == 5.0 and figures["first"]["status"] == "breached"
    assert figures["retry"]["elapsed"] == 2.0 and figures["retry"]["status"] == "met"
    assert retry_sla(summary, [], now=200.0) == {"first": None, "retry": None}
