"""Mapped sub-workflow steps (``workflow:`` with ``map:``) against real Redis and real Celery
workers: one child run per item, the step's output the children's outputs in element order, a
failing child failing its item, cancel and pause reaching the children of items,
``max_parallel`` capping the children running at once, and exactly one child per item when a
worker is killed while starting one."""

from __future__ import annotations

import pytest

from orchestrator import Client, Workflow
from tests.test_map_engine import items as hot_items
from tests.test_subworkflows import uid, wait_for

pytestmark = pytest.mark.integration


def doubler(client: Client, wid: str, *, seconds: float = 0.0, fail_on: int | None = None) -> str:
    """Register a 3-step child: echo n -> sleep (or fail when n == fail_on) -> echo 2n."""
    wf = Workflow(wid, mode="sequential", inputs={"n": 0})
    wf = wf.step("first", "builtin", "echo", params={"n": "{{ inputs.n }}"})
    wf = wf.step("mid", "builtin", "sleep", params={"seconds": seconds})
    if fail_on is not None:
        wf = wf.step(
            "check",
            "builtin",
            "fail",
            params={"message": "child refused n"},
            when=f"inputs.n == {fail_on}",
        )
    wf = wf.step("last", "builtin", "echo", params={"double": "{{ steps.first.output.n * 2 }}"})
    wf = wf.outputs(doubled="{{ steps.last.output.double }}", n="{{ inputs.n }}")
    client.register(wf)
    return wid


def mapped_parent(
    child: str, values: list, *, max_parallel: int | None = None, **fields
) -> Workflow:
    mapping: dict = {"over": "{{ steps.list.output.values }}", "as": "v"}
    if max_parallel:
        mapping["max_parallel"] = max_parallel
    return (
        Workflow(uid("mparent"))
        .step("list", "builtin", "echo", params={"values": values})
        .subworkflow(
            "per",
            child,
            inputs={"n": "{{ v }}"},
            depends_on="list",
            map=mapping,
            **fields,
        )
        .step(
            "after",
            "builtin",
            "echo",
            params={"third": "{{ steps.per.output[2] }}"},
            depends_on="per",
        )
        .outputs(all="{{ steps.per.output }}")
    )


def kids_by_step(run) -> dict[str, object]:
    """{parent_step: child snapshot} of the run's children."""
    out = {}
    for kid in run.children():
        snap = kid.snapshot()
        out[snap.parent_step] = snap
    return out


def test_each_item_runs_one_child_and_the_output_is_their_outputs_in_element_order(
    client: Client,
) -> None:
    child = doubler(client, uid("dbl"))
    values = [5, 1, 4, 2, 3]
    run = client.submit(mapped_parent(child, values))
    snap = run.wait(90)
    assert snap.status == "COMPLETED", snap
    expected = [{"doubled": 2 * v, "n": v} for v in values]
    assert snap.step("per").output == expected
    assert snap.step("after").output == {"third": {"doubled": 8, "n": 4}}
    assert snap.result == {"all": expected}
    kids = kids_by_step(run)
    assert sorted(kids) == [f"per[{i}]" for i in range(len(values))]
    for i, v in enumerate(values):
        k = kids[f"per[{i}]"]
        assert k.status == "COMPLETED" and k.parent_run == run.id
        assert k.result == {"doubled": 2 * v, "n": v}
        assert all(s.attempts == 1 for s in k.steps)
    assert hot_items(client, run.id, "per")["per[3]"]["status"] == "COMPLETED"


def test_an_empty_list_starts_no_child_and_completes_with_an_empty_list(client: Client) -> None:
    child = doubler(client, uid("dbl0"))
    run = client.submit(
        Workflow(uid("mparent"))
        .step("list", "builtin", "echo", params={"values": []})
        .subworkflow(
            "per",
            child,
            inputs={"n": "{{ v }}"},
            depends_on="list",
            map={"over": "{{ steps.list.output.values }}", "as": "v"},
        )
    )
    snap = run.wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("per").output == []
    assert run.children() == []


def test_a_failing_child_fails_its_critical_item_and_the_step(client: Client) -> None:
    child = doubler(client, uid("picky"), fail_on=2)
    run = client.submit(mapped_parent(child, [1, 2, 3], max_parallel=1))
    snap = run.wait(90)
    assert snap.status == "FAILED", snap
    assert snap.statuses["per"] == "FAILED"
    kids = kids_by_step(run)
    failed = kids["per[1]"]
    assert failed.status == "FAILED"
    error = snap.step("per").error
    assert "per[1]" in error and failed.id in error and "child refused n" in error
    # fail fast: the lane started no child for the item after the failed one
    assert "per[2]" not in kids
    assert snap.statuses["after"] == "CANCELLED"


def test_a_failing_child_of_a_non_critical_item_leaves_null_in_its_place(client: Client) -> None:
    child = doubler(client, uid("picky"), fail_on=2)
    run = client.submit(mapped_parent(child, [1, 2, 3], critical=False))
    snap = run.wait(90)
    assert snap.status == "COMPLETED", snap
    assert snap.step("per").output == [{"doubled": 2, "n": 1}, None, {"doubled": 6, "n": 3}]
    assert hot_items(client, run.id, "per")["per[1]"]["status"] == "FAILED"
    assert kids_by_step(run)["per[1]"].status == "FAILED"


def test_cancel_of_the_parent_reaches_the_children_of_its_items(client: Client) -> None:
    child = doubler(client, uid("slow"), seconds=30)
    run = client.submit(mapped_parent(child, [1, 2, 3]))

    def all_sleeping():
        kids = run.children()
        # the session worker has two slots: three children exist, some of them sleep
        return len(kids) == 3 and any(k.snapshot().statuses.get("mid") == "RUNNING" for k in kids)

    wait_for(all_sleeping, timeout=60)
    client.control.cancel(run.id, actor="test")
    snap = run.wait(90)
    assert snap.status == "CANCELLED", snap
    assert snap.statuses["per"] in ("CANCELLED", "FAILED")
    for kid in run.children():
        assert kid.wait(30).status == "CANCELLED"
    assert len(run.children()) == 3


def test_pause_and_resume_of_the_parent_reach_the_children_of_its_items(client: Client) -> None:
    child = uid("pchild")
    client.register(
        Workflow(child, mode="sequential", inputs={"n": 0})
        .step("c1", "builtin", "sleep", params={"seconds": 1})
        .step("c2", "builtin", "echo", params={"n": "{{ inputs.n }}"})
        .outputs(n="{{ steps.c2.output.n }}")
    )
    run = client.submit(mapped_parent(child, [1, 2, 3]))

    def all_started():
        kids = run.children()
        return len(kids) == 3 and any(k.snapshot().statuses.get("c1") == "RUNNING" for k in kids)

    wait_for(all_started, timeout=60)
    client.control.pause(run.id, actor="test")
    assert run.wait(60).status == "PAUSED"
    assert all(k.status() == "PAUSED" for k in run.children())
    client.control.resume(run.id, actor="test")
    snap = run.wait(90)
    assert snap.status == "COMPLETED", snap
    assert snap.step("per").output == [{"n": 1}, {"n": 2}, {"n": 3}]
    kids = kids_by_step(run)
    assert len(run.children()) == 3 and sorted(kids) == ["per[0]", "per[1]", "per[2]"]
    for k in kids.values():
        assert all(s.attempts == 1 for s in k.steps), k


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = [(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals]
    running = peak = 0
    for _, d in sorted(edges):
        running += d
        peak = max(peak, running)
    return peak


def test_max_parallel_caps_the_children_running_at_once(client: Client) -> None:
    child = doubler(client, uid("lane"), seconds=1)
    run = client.submit(mapped_parent(child, [1, 2, 3, 4, 5], max_parallel=2))
    snap = run.wait(120)
    assert snap.status == "COMPLETED", snap
    assert snap.step("per").output == [{"doubled": 2 * v, "n": v} for v in [1, 2, 3, 4, 5]]
    kids = list(kids_by_step(run).values())
    assert len(kids) == 5
    assert most_at_once([(k.started_at, k.finished_at) for k in kids]) == 2


def test_worker_killed_while_starting_an_items_child_starts_exactly_one_child_per_item(
    redis_url: str, start_worker
) -> None:
    from tests.conftest import TEST_CALL_ALLOW, make_settings

    settings = make_settings(
        redis_url, lease_ttl=2, call_allow=(*TEST_CALL_ALLOW, "tests.subrun_faults")
    )
    start_worker(settings, concurrency=1)
    client = Client(settings)
    try:
        child = doubler(client, uid("killdbl"))
        run = client.submit(
            Workflow(uid("p"), mode="sequential")
            .step("arm", "builtin", "call", params={"function": "tests.subrun_faults:arm_kill"})
            .step("list", "builtin", "echo", params={"values": [1, 2, 3]})
            .subworkflow(
                "per",
                child,
                inputs={"n": "{{ v }}"},
                map={"over": "{{ steps.list.output.values }}", "as": "v"},
            )
        )
        snap = run.wait(120)
        assert snap.status == "COMPLETED", snap
        assert snap.step("per").output == [{"doubled": 2 * v, "n": v} for v in [1, 2, 3]]
        kids = kids_by_step(run)
        assert len(run.children()) == 3 and sorted(kids) == ["per[0]", "per[1]", "per[2]"]
        for k in kids.values():
            assert k.status == "COMPLETED"
            assert all(s.attempts == 1 for s in k.steps)
        attempts = sorted(int(f["attempts"]) for f in hot_items(client, run.id, "per").values())
        assert attempts == [1, 1, 2]  # the killed item's attempt, then the one that attached
    finally:
        client.close()


def test_retry_from_a_mapped_sub_workflow_step_starts_fresh_children_for_items_not_completed(
    client: Client,
) -> None:
    child = doubler(client, uid("picky"), fail_on=2)
    run = client.submit(mapped_parent(child, [1, 2, 3], max_parallel=1))
    assert run.wait(90).status == "FAILED"
    first = kids_by_step(run)
    assert sorted(first) == ["per[0]", "per[1]"]
    client.control.retry(run.id, from_step="per", actor="test")
    wait_for(lambda: len(run.children()) == 3, timeout=60)
    snap = run.wait(90)
    assert snap.status == "FAILED", snap
    kids = [k.snapshot() for k in run.children()]
    again = [k for k in kids if k.parent_step == "per[1]"]
    assert len(again) == 2 and all(k.status == "FAILED" for k in again)
    # the completed item kept its child and its output; no item after the failed one started
    assert [k.id for k in kids if k.parent_step == "per[0]"] == [first["per[0]"].id]
    assert not [k for k in kids if k.parent_step == "per[2]"]


def test_the_media_groups_example_maps_over_the_files_it_finds_one_child_per_group(
    client: Client, tmp_path
) -> None:
    from orchestrator.cli.demo import demo_inputs, examples_dir

    inputs = demo_inputs(tmp_path)["media_groups"]
    (tmp_path / "input" / "media" / "extra.webm").write_bytes(b"x")  # found at run time
    client.register(examples_dir() / "media_group.yaml")
    defn = client.register(examples_dir() / "media_groups.yaml")
    run = client.submit(defn.id, version=defn.version, inputs=inputs)
    snap = run.wait(120)
    assert snap.status == "COMPLETED", snap
    groups = [o["group"] for o in snap.step("per_group").output]
    assert groups == ["jpg", "png", "wav", "webm"]  # sorted by find_files
    assert snap.result == {"found": 10, "groups": groups, "processed": 10}
    kids = kids_by_step(run)
    assert sorted(kids) == [f"per_group[{i}]" for i in range(4)]
    assert kids["per_group[3]"].inputs["group"] == "webm"


def test_the_media_groups_example_fails_clearly_on_a_missing_folder(
    client: Client, tmp_path
) -> None:
    from orchestrator.cli.demo import examples_dir

    client.register(examples_dir() / "media_group.yaml")
    defn = client.register(examples_dir() / "media_groups.yaml")
    missing = str(tmp_path / "nowhere")
    snap = client.submit(defn.id, version=defn.version, inputs={"directory": missing}).wait(60)
    assert snap.status == "FAILED"
    assert f"directory: '{missing}' is not a directory" in snap.step("find_files").error
