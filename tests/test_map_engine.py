"""Mapped steps (``map``) on real Redis and real Celery worker processes: expansion, item
outputs in element order, empty and non-list ``over``, item retries, non-critical items, fail
fast, ``max_parallel`` (measured from the items' recorded start and end times)."""

from __future__ import annotations

import json

import pytest

from orchestrator import Client, Workflow
from orchestrator.keys import Keys

pytestmark = pytest.mark.integration


def mapped(
    over: object,
    params: dict | None = None,
    *,
    method: str = "echo",
    after: bool = True,
    **fields: object,
) -> Workflow:
    mapping = fields.pop("map", {})
    wf = (
        Workflow("mapwf")
        .step("list", "builtin", "echo", params={"files": over})
        .step(
            "each",
            "builtin",
            method,
            depends_on=["list"],
            map={"over": "{{ steps.list.output.files }}", **mapping},
            params=params if params is not None else {"name": "{{ item }}", "i": "{{ map.index }}"},
            **fields,
        )
    )
    if after:
        wf.step(
            "after",
            "builtin",
            "echo",
            depends_on=["each"],
            params={"third": "{{ steps.each.output[2] }}"},
        )
    return wf


def items(client: Client, run_id: str, step: str) -> dict[str, dict[str, str]]:
    """The items' fields in the hot state: {item id: {field: value}}."""
    flat = client.state.r.hgetall(Keys(client.settings.key_prefix).items(run_id))
    out: dict[str, dict[str, str]] = {}
    for k, v in flat.items():
        sid, _, name = k.decode().rpartition("|")
        if sid.startswith(step + "["):
            out.setdefault(sid, {})[name] = v.decode()
    return out


def events(client: Client, run_id: str) -> list[dict[str, str]]:
    key = Keys(client.settings.key_prefix).events
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.state.r.xrange(key)
        if fields.get(b"run", b"").decode() == run_id
    ]


@pytest.mark.brokers
def test_outputs_come_in_element_order_and_downstream_reads_one(client: Client) -> None:
    files = [f"f{i}.png" for i in range(12)]
    snap = client.submit(mapped(files)).wait(60)
    assert snap.status == "COMPLETED", snap
    out = snap.step("each").output
    assert out == [{"name": f, "i": i} for i, f in enumerate(files)]
    assert snap.step("after").output == {"third": {"name": "f2.png", "i": 2}}
    got = items(client, snap.id, "each")
    assert set(got) == {f"each[{i}]" for i in range(12)}
    assert {v["status"] for v in got.values()} == {"COMPLETED"}
    evs = events(client, snap.id)
    mapped_ev = [e for e in evs if e["type"] == "step_mapped"]
    assert len(mapped_ev) == 1 and json.loads(mapped_ev[0]["data"]) == {"step": "each", "total": 12}
    done = {e["step"] for e in evs if e["type"] == "step_completed"}
    assert {f"each[{i}]" for i in range(12)} <= done
    assert snap.settled == snap.total == 3  # items do not count as steps


def test_empty_list_completes_with_an_empty_list(client: Client) -> None:
    snap = client.submit(
        mapped([], after=False).step(
            "last", "builtin", "echo", depends_on=["each"], params={"n": "{{ steps.each.output }}"}
        )
    ).wait(30)
    assert snap.status == "COMPLETED", snap
    assert snap.step("each").status == "COMPLETED"
    assert snap.step("each").output == []
    assert snap.step("last").output == {"n": []}


def test_over_that_is_not_a_list_fails_the_step_with_what_it_got(client: Client) -> None:
    snap = client.submit(mapped({"a": 1})).wait(30)
    assert snap.status == "FAILED"
    each = snap.step("each")
    assert each.status == "FAILED"
    assert "map.over of step 'each' must give a list, but gave object" in each.error
    assert snap.step("after").status == "CANCELLED"
    assert items(client, snap.id, "each") == {}


def test_an_item_retries_with_its_own_attempts(client: Client) -> None:
    wf = mapped(
        [1, 2, 3],
        {"message": "boom", "times": "{{ item - 1 }}"},
        method="fail",
        retries=3,
        retry_delay=0.1,
    )
    snap = client.submit(wf).wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("each").output == [{"attempt": 1}, {"attempt": 2}, {"attempt": 3}]
    got = items(client, snap.id, "each")
    assert [got[f"each[{i}]"]["attempts"] for i in range(3)] == ["1", "2", "3"]


def test_non_critical_items_leave_null_in_their_places(client: Client) -> None:
    wf = mapped(
        [0, 1, 0, 1],
        {"message": "odd", "times": "{{ item * 5 }}"},
        method="fail",
        critical=False,
    )
    snap = client.submit(wf).wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("each").status == "COMPLETED"
    assert snap.step("each").output == [{"attempt": 1}, None, {"attempt": 1}, None]
    got = items(client, snap.id, "each")
    assert [got[f"each[{i}]"]["status"] for i in range(4)] == [
        "COMPLETED",
        "FAILED",
        "COMPLETED",
        "FAILED",
    ]


def test_a_failed_critical_item_fails_the_step_and_items_not_started_are_cancelled(
    client: Client,
) -> None:
    wf = mapped(
        [0, 0, 1, 0, 0, 0],
        {"message": "item broke", "times": "{{ item }}"},
        method="fail",
        map={"max_parallel": 1},
    )
    snap = client.submit(wf).wait(60)
    assert snap.status == "FAILED"
    each = snap.step("each")
    assert each.status == "FAILED"
    assert each.error == "item each[2] failed: item broke"
    assert snap.step("after").status == "CANCELLED"
    got = items(client, snap.id, "each")
    assert [got[f"each[{i}]"]["status"] for i in range(6)] == (
        ["COMPLETED", "COMPLETED", "FAILED"] + ["CANCELLED"] * 3
    )
    started = {e["step"] for e in events(client, snap.id) if e["type"] == "step_started"}
    assert not started & {"each[3]", "each[4]", "each[5]"}  # fail fast: never began


def most_at_once(got: dict[str, dict[str, str]]) -> int:
    """The largest number of items whose recorded [start, end] intervals overlap."""
    edges = []
    for v in got.values():
        edges.append((float(v["attempt_started_at"]), 1))
        edges.append((float(v["finished_at"]), -1))
    running = peak = 0
    for _, d in sorted(edges, key=lambda e: (e[0], e[1])):
        running += d
        peak = max(peak, running)
    return peak


def test_max_parallel_caps_the_items_running_at_once(fleet_settings, start_worker) -> None:
    # A worker with room for 4 items at once, on its own queue: the cap, not the pool, limits.
    start_worker(fleet_settings, queues="mapwide", concurrency=4)
    client = Client(fleet_settings)
    try:

        def run(cap: int | None) -> dict[str, dict[str, str]]:
            wf = mapped(
                list(range(12)),
                {"seconds": 0.3},
                method="sleep",
                after=False,
                queue="mapwide",
                map={"max_parallel": cap} if cap else {},
            )
            snap = client.submit(wf).wait(90)
            assert snap.status == "COMPLETED", snap
            assert snap.step("each").output == [{"slept": 0.3}] * 12
            return items(client, snap.id, "each")

        assert most_at_once(run(2)) == 2
        # the same items without a cap do run more at once: the measure sees a cap, not the pool
        assert most_at_once(run(None)) >= 3
    finally:
        client.close()


def test_items_of_a_big_list_read_inputs_and_upstream_from_the_stored_context(
    client: Client,
) -> None:
    # The list (from the inputs) is far over what an item message may carry: each item reads the
    # inputs and upstream outcomes stored once at expansion, and its message stays small.
    names = [f"file-{i:012d}.png" for i in range(300)]
    wf = (
        Workflow("mapbig", inputs={"names": names, "prefix": "thumb-"})
        .step("cfg", "builtin", "echo", params={"size": 64, "pad": "x" * 5000})
        .step(
            "each",
            "builtin",
            "echo",
            depends_on=["cfg"],
            map={"over": "{{ inputs.names }}", "as": "name"},
            params={"out": "{{ inputs.prefix }}{{ name }}", "size": "{{ steps.cfg.output.size }}"},
        )
    )
    snap = client.submit(wf, inputs={"names": names, "prefix": "thumb-"}).wait(90)
    assert snap.status == "COMPLETED", snap
    assert snap.step("each").output == [{"out": f"thumb-{n}", "size": 64} for n in names]


def test_timeout_applies_per_item(client: Client) -> None:
    wf = mapped(
        [0.05, 5, 0.05],
        {"seconds": "{{ item }}"},
        method="sleep",
        after=False,
        timeout=1,
        critical=False,
    )
    snap = client.submit(wf).wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("each").output == [{"slept": 0.05}, None, {"slept": 0.05}]
    got = items(client, snap.id, "each")
    assert got["each[1]"]["status"] == "FAILED"
    assert "timeout: step 'each[1]' ran past its timeout of 1.0s" in got["each[1]"]["error"]


def test_a_mapped_step_beside_another_branch_joins_like_a_step(client: Client) -> None:
    # start -> {each (mapped), side} -> join: the mapped step replaces itself inside a chord
    # header, and the join sees both branches.
    wf = (
        Workflow("mapfan")
        .step("list", "builtin", "echo", params={"xs": [1, 2, 3]})
        .step(
            "each",
            "builtin",
            "echo",
            depends_on=["list"],
            map={"over": "{{ steps.list.output.xs }}", "max_parallel": 2},
            params={"x": "{{ item }}"},
        )
        .step("side", "builtin", "sleep", depends_on=["list"], params={"seconds": 0.2})
        .step(
            "join",
            "builtin",
            "echo",
            depends_on=["each", "side"],
            params={"xs": "{{ steps.each.output }}", "side": "{{ steps.side.output }}"},
        )
    )
    snap = client.submit(wf).wait(60)
    assert snap.status == "COMPLETED", snap
    assert snap.step("join").output == {
        "xs": [{"x": 1}, {"x": 2}, {"x": 3}],
        "side": {"slept": 0.2},
    }


def test_expansion_does_not_subscribe_to_the_results_of_its_items(client: Client) -> None:
    # Celery's Redis backend subscribes to the result of each task of a frozen group; a worker
    # that expanded 10,000 items would hold 10,000 subscriptions it never reads.
    r = client.state.r

    def channels() -> int:
        return len(r.pubsub_channels("*celery-task-meta-*"))

    before = channels()
    snap = client.submit(mapped(list(range(300)), after=False)).wait(60)
    assert snap.status == "COMPLETED", snap
    assert channels() - before < 300


def test_items_report_progress_and_logs_under_their_own_id(client: Client) -> None:
    wf = mapped([0.3, 0.3], {"seconds": "{{ item }}"}, method="sleep", after=False)
    snap = client.submit(wf).wait(60)
    assert snap.status == "COMPLETED", snap
    evs = events(client, snap.id)
    progress = {e["step"] for e in evs if e["type"] == "progress"}
    assert progress == {"each[0]", "each[1]"}
    started = [e for e in evs if e["type"] == "step_started" and e["step"] == "each[1]"]
    assert json.loads(started[0]["data"])["attempt"] == 1


def test_lane_claims_are_atomic_and_repeatable(redis_client) -> None:
    import uuid

    from orchestrator.engine.runstate import RunState
    from orchestrator.records import RunRecord

    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    state = RunState(redis_client, keys, state_ttl=60)
    state.create(RunRecord.from_hash("r1", {"workflow": "w"}), ["m"])
    assert state.begin_step("r1", "m", 1, intent="run", owner="o", lease_ttl=30, task_id="t",
                            worker="w")[0] == "go"  # fmt: skip
    verdict, n, todo = state.expand("r1", "m", 1, owner="o", elements=["1"] * 5, max_parallel=2)
    assert (verdict, n, todo) == ("ok", 5, [0, 1, 2, 3, 4])
    # the same expansion again (its message delivered twice) records nothing new
    again = state.expand("r1", "m", 1, owner="o", elements=["1"] * 5, max_parallel=2)
    assert again == ("again", 5, [0, 1, 2, 3, 4])
    mapped = [e for _, e in redis_client.xrange(keys.events) if e[b"type"] == b"step_mapped"]
    assert len(mapped) == 1
    first = [state.claim_item("r1", "m", 1, "L0"), state.claim_item("r1", "m", 1, "L1")]
    assert sorted(first) == [0, 1]
    # a lane's message delivered again repeats its claim, it does not take one more
    assert state.claim_item("r1", "m", 1, "L0") == first[0]
    nxt = state.claim_item("r1", "m", 1, str(first[0]))
    assert nxt == 2 and state.claim_item("r1", "m", 1, str(first[0])) == 2
    assert [state.claim_item("r1", "m", 1, x) for x in ("2", "3")] == [3, 4]
    assert state.claim_item("r1", "m", 1, "4") == -1  # none left
    assert state.claim_item("r1", "m", 2, "L0") == -2  # another dispatch's lane
    redis_client.delete(*redis_client.keys(f"{keys.prefix}:*"))


def test_over_that_cannot_be_evaluated_fails_the_step_naming_map_over(client: Client) -> None:
    snap = client.submit(
        mapped(None, after=False).step("x", "builtin", "echo", depends_on=["each"])
    ).wait(30)
    # files is null: over gives null, not a list
    assert snap.step("each").error == "map.over of step 'each' must give a list, but gave null"
    wf = (
        Workflow("mapbad")
        .step("list", "builtin", "echo", params={"files": 3})
        .step(
            "each",
            "builtin",
            "echo",
            depends_on=["list"],
            map={"over": "{{ steps.list.output.files.names }}"},
        )
    )
    snap = client.submit(wf).wait(30)
    assert snap.status == "FAILED"
    assert snap.step("each").error.startswith("map.over of step 'each': cannot render")
