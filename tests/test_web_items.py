"""Items of mapped steps through the REST API (issue 15): the run detail's ``map`` counts, the
paged and filtered item list, one item in full, the grouped Gantt and the DAG node, and the
400s of bad parameters. The audit store is filled through the recorder's projection with events
of the engine's shape (tests/items_helpers.py)."""

from __future__ import annotations

import uuid

import pytest

from tests.items_helpers import default_outcome, mapped_run
from tests.web_helpers import VIEWER, Api

pytest_plugins = ("tests.web_fixtures",)
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mapped(web_app):
    """A finished run whose step ``resize`` mapped over 120 items (every 7th failed)."""
    rid = f"items-{uuid.uuid4().hex[:8]}"
    evs, lk = mapped_run(rid, 120, logs_every=10)
    web_app.extensions["canvasflow"].store.apply(evs, lk)
    return rid


@pytest.fixture(scope="module")
def api(web_app):
    return Api(web_app, VIEWER)


def test_run_detail_shows_a_mapped_step_as_one_row_with_counts_by_status(api, mapped):
    r = api.get(f"/runs/{mapped}")
    assert r.status_code == 200, r.json
    d = r.json
    assert [s["id"] for s in d["steps"]] == ["list_files", "resize", "publish"]
    assert d["steps_total"] == 3
    resize = d["steps"][1]
    assert resize["map"] == {"total": 120, "counts": {"COMPLETED": 103, "FAILED": 17}}
    assert d["steps"][0]["map"] is None


def test_items_page_in_order_with_the_total_and_a_status_filter(api, mapped):
    r = api.get(f"/runs/{mapped}/steps/resize/items", query_string={"limit": 50, "offset": 50})
    assert r.status_code == 200, r.json
    page = r.json
    assert page["total"] == 120 and page["offset"] == 50 and page["limit"] == 50
    assert [i["index"] for i in page["items"]] == list(range(50, 100))
    first = page["items"][0]
    assert first["id"] == "resize[50]" and first["status"] == "COMPLETED"
    assert first["output"] == {"path": "f50.png", "index": 50}
    assert first["attempts"] == 1 and first["duration"] == pytest.approx(0.01)
    assert page["map"]["counts"] == {"COMPLETED": 103, "FAILED": 17}

    failed = api.get(f"/runs/{mapped}/steps/resize/items", query_string={"status": "failed"}).json
    want = [i for i in range(120) if default_outcome(i)[0] == "FAILED"]
    assert failed["status"] == "FAILED" and failed["total"] == len(want)
    assert [i["index"] for i in failed["items"]] == want
    assert failed["items"][0]["error"] == "boom 3"


def test_one_item_opens_like_a_step_with_attempts_output_and_logs(api, mapped):
    r = api.get(f"/runs/{mapped}/steps/resize/items/3")
    assert r.status_code == 200, r.json
    item = r.json
    assert item["id"] == "resize[3]" and item["step"] == "resize" and item["index"] == 3
    assert item["status"] == "FAILED" and item["attempts"] == 3
    assert [a["status"] for a in item["history"]] == ["RETRYING", "RETRYING", "FAILED"]
    ok = api.get(f"/runs/{mapped}/steps/resize/items/20").json
    assert ok["output"] == {"path": "f20.png", "index": 20}
    assert ok["history"][0]["output"] == {"path": "f20.png", "index": 20}
    assert [x["message"] for x in ok["logs"]] == ["resize[20] line 0", "resize[20] line 1"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "DONE"}, "status"),
        ({"offset": -1}, "offset"),
        ({"limit": 0}, "limit"),
        ({"limit": 100_000}, "limit"),
        ({"offset": "x"}, "offset"),
    ],
)
def test_bad_item_parameters_are_400s_naming_the_parameter(api, mapped, query, field):
    r = api.get(f"/runs/{mapped}/steps/resize/items", query_string=query)
    assert r.status_code == 400, r.json
    assert field in r.json["errors"]["query"], r.json


def test_a_bad_item_index_is_a_400_and_unknown_ones_are_404s(api, mapped):
    r = api.get(f"/runs/{mapped}/steps/resize/items/-1")
    assert r.status_code == 400 and "index" in r.json["message"], r.json
    r = api.get(f"/runs/{mapped}/steps/resize/items/abc")
    assert r.status_code == 400, r.json
    assert api.get(f"/runs/{mapped}/steps/resize/items/500").status_code == 404
    assert api.get(f"/runs/{mapped}/steps/nosuch/items").status_code == 404
    assert api.get("/runs/nosuchrun/steps/resize/items").status_code == 404


def test_the_gantt_groups_items_under_their_step_collapsed_unless_expanded(api, mapped):
    t = api.get(f"/runs/{mapped}/timeline").json
    assert not [b for b in t["bars"] if b.get("item_of")]
    (group,) = [b for b in t["bars"] if b["kind"] == "items"]
    attempts = sum(default_outcome(i)[1] for i in range(120))  # one bar per item attempt
    assert group["step"] == "resize" and group["item_count"] == attempts
    assert group["status"] == "FAILED" and group["end"] is not None
    resize = next(s for s in t["steps"] if s["id"] == "resize")
    assert resize["map"]["total"] == 120
    t = api.get(f"/runs/{mapped}/timeline", query_string={"expand": "resize"}).json
    items = [b for b in t["bars"] if b.get("item_of") == "resize"]
    assert {b["step"] for b in items} == {f"resize[{i}]" for i in range(120)}
    assert all(b["number"] == group["number"] for b in items)


def test_the_dag_shows_a_mapped_step_as_one_node_with_its_count(api, mapped):
    g = api.get(f"/runs/{mapped}/graph").json
    assert [n["id"] for n in g["nodes"]] == ["list_files", "resize", "publish"]
    node = g["nodes"][1]
    assert node["map"] == {"total": 120, "counts": {"COMPLETED": 103, "FAILED": 17}}


def test_the_export_includes_each_mapped_steps_items_with_attempts_and_logs(api, mapped):
    r = api.get(f"/runs/{mapped}/export")
    assert r.status_code == 200
    trace = r.get_json() if r.is_json else __import__("json").loads(r.data)
    steps = {s["id"]: s for s in trace["steps"]}
    assert list(steps) == ["list_files", "resize", "publish"]  # items are not steps
    resize = steps["resize"]
    assert resize["map"] == {"total": 120, "counts": {"COMPLETED": 103, "FAILED": 17}}
    assert [i["index"] for i in resize["items"]] == list(range(120))
    three = resize["items"][3]
    assert three["id"] == "resize[3]" and three["status"] == "FAILED"
    assert [a["status"] for a in three["attempts"]] == ["RETRYING", "RETRYING", "FAILED"]
    twenty = resize["items"][20]
    assert twenty["output"] == {"path": "f20.png", "index": 20}
    assert [x["message"] for x in twenty["logs"]] == ["resize[20] line 0", "resize[20] line 1"]
    assert "items" not in steps["publish"]


def test_without_a_store_a_mapped_steps_counts_come_from_the_items_the_hot_state_lists():
    from web.mapped import map_counts

    specs = {
        "a": {"id": "a"},
        "resize": {"id": "resize", "map": {"over": "x"}},
        "m2": {"map": {"over": "y"}},
    }
    steps = {
        "a": {"status": "COMPLETED"},
        "resize": {"status": "RUNNING"},
        "resize[0]": {"status": "COMPLETED"},
        "resize[1]": {"status": "RUNNING"},
        "resize[2]": {"status": "COMPLETED"},
    }
    assert map_counts(None, "r", specs, steps) == {
        "resize": {"total": 3, "counts": {"COMPLETED": 2, "RUNNING": 1}},
        "m2": {"total": 0, "counts": {}},  # mapped, not expanded yet
    }


def test_gantt_groups_are_open_while_an_item_runs_and_failed_when_one_failed():
    from web.mapped import group_item_bars

    def bar(step, status, start, end):
        return {"step": step, "number": 0, "kind": "step", "attempt": 1, "status": status,
                "start": start, "end": end, "worker": None, "error": None}  # fmt: skip

    bars = [
        bar("a", "COMPLETED", 0, 1),
        bar("m[0]", "COMPLETED", 1, 2),
        bar("m[1]", "RUNNING", 1.5, None),
    ]
    (a, group) = group_item_bars(bars, {"a": 1, "m": 2})
    assert group["kind"] == "items" and group["number"] == 2 and group["end"] is None
    assert group["item_count"] == 2 and group["start"] == 1
    bars[2] = bar("m[1]", "FAILED", 1.5, 3)
    out = group_item_bars(bars, {"a": 1, "m": 2}, ["m"])
    assert out[1]["status"] == "FAILED" and out[1]["end"] == 3
    assert [b["step"] for b in out if b.get("item_of")] == ["m[0]", "m[1]"]


def test_the_gantt_of_a_run_past_10000_events_keeps_the_bars_of_its_later_steps(api, web_app):
    # The events of a run are read 10,000 at most from the store: the items' would crowd out
    # the steps that ran after them. The Gantt reads the steps' events only, the items' rows.
    rid = f"items-{uuid.uuid4().hex[:8]}"
    evs, lk = mapped_run(rid, 2500, outcome=lambda i: ("COMPLETED", 1))
    assert len(evs) > 10_000
    web_app.extensions["canvasflow"].store.apply(evs, lk)
    t = api.get(f"/runs/{rid}/timeline").json
    assert [b["step"] for b in t["bars"] if b["kind"] == "step"] == [
        "list_files",
        "resize",
        "publish",
    ]
    (group,) = [b for b in t["bars"] if b["kind"] == "items"]
    assert group["item_count"] == 2500 and group["status"] == "COMPLETED"
