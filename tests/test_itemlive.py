"""The folding of item events for the live relay (web/itemlive.py), as a table of cases: pure
functions and a clock passed in, no server."""

from __future__ import annotations

from web.itemlive import ITEMS_EVENT, ItemCoalescer, coalesce


def ev(seq: int, step: str = "", status: str = "", run: str = "r") -> dict:
    return {"run": run, "seq": seq, "type": "step_completed" if status else "log", "step": step,
            "status": status, "ts": float(seq), "data": {}}  # fmt: skip


def test_a_stretch_of_item_events_becomes_one_summary_covering_its_seqs():
    events = [ev(1, "a", "COMPLETED"), ev(2, "m[0]", "RUNNING"), ev(3, "m[0]", "COMPLETED"),
              ev(4, "m[1]", "FAILED"), ev(5, "m[1]"), ev(6, "m", "FAILED")]  # fmt: skip
    out = coalesce(events)
    assert [e["type"] for e in out] == ["step_completed", ITEMS_EVENT, "step_completed"]
    s = out[1]
    assert (s["first_seq"], s["seq"], s["step"]) == (2, 5, "m")
    m = s["data"]["steps"]["m"]
    assert m["events"] == 4 and m["changed"] == 2
    assert m["statuses"] == {"COMPLETED": 1, "FAILED": 1}  # each item's latest status once
    assert m["items"] == {"0": "COMPLETED", "1": "FAILED"}


def test_runs_fold_apart_and_another_runs_event_does_not_cut_a_stretch():
    out = coalesce([ev(1, "m[0]", "RUNNING"), ev(1, "x", "RUNNING", run="other"),
                    ev(2, "m[1]", "RUNNING")])  # fmt: skip
    (other, summary) = sorted(out, key=lambda e: e["run"] == "r")
    assert other["run"] == "other" and summary["first_seq"] == 1 and summary["seq"] == 2


def test_the_relay_holds_items_until_the_interval_or_the_runs_next_other_event():
    c = ItemCoalescer(interval=0.5)
    assert c.split([ev(1, "m[0]", "RUNNING"), ev(2, "m[1]", "RUNNING")], now=0.0) == []
    assert c.split([ev(3, "m[0]", "COMPLETED")], now=0.3) == []  # not due yet
    (due,) = c.split([], now=0.5)
    assert (due["first_seq"], due["seq"]) == (1, 3)
    assert c.split([ev(4, "m[1]", "COMPLETED")], now=0.6) == []
    out = c.split([ev(5, "m", "COMPLETED")], now=0.7)  # the step's own event: summary first
    assert [(e["type"], e["seq"]) for e in out] == [(ITEMS_EVENT, 4), ("step_completed", 5)]
    assert c.due(now=10.0) == [] and c.sent == 2 and c.folded == 4
