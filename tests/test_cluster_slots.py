"""Redis Cluster readiness (issue 18 item 3): every key of one run lies in one hash slot; the
slot audit lists, script by script, exactly which fleet-wide keys each real call passes next to
the run's keys (the calls that a Redis Cluster refuses today); a real three-master cluster runs
the run-only scripts and refuses exactly the calls the audit lists."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster, key_slot
from redis.exceptions import RedisClusterException

from orchestrator.connect import state_redis
from orchestrator.engine.runstate import RunState, lua_source
from orchestrator.engine.states import Move, RunStatus
from orchestrator.errors import ConfigurationError
from orchestrator.keys import Keys, step_field
from orchestrator.records import RunRecord
from orchestrator.settings import Settings
from tests.redis_cluster import LocalCluster

# The fleet-wide keys each script is passed besides the keys of its run (Keys attribute names).
# Each non-empty entry is a script a Redis Cluster refuses: its keys hash to several slots. The
# plan that empties this table is in docs/design.md, "Redis Cluster".
CROSS_SLOT: dict[str, set[str]] = {
    "begin_step": {"events"},
    "finish_step": {"events", "controlled", "control_channel"},
    "run_once": {"events", "controlled", "control_channel"},
    "fail_killed": {"events", "controlled", "control_channel"},
    "emit_batch": {"events"},
    "set_step": {"events"},
    "transition": {"events", "controlled", "control_channel", "live"},
    "restart": {"events", "controlled", "control_channel", "live"},
    "cancel": {"events", "controlled", "control_channel"},
    "claim_stalled": {"events", "controlled", "control_channel", "watchdog"},
    "audit": {"events"},
    "sla_mark": {"events"},
    "refresh_lease": set(),
    "leased": set(),
    "read_run": set(),
    # Also builds the keys of many runs from templates: one slot only with a hash-tag prefix.
    "list_live": {"runs"},
    # canvasflow recover writes a lost run back with its indexes (its workflow's run index too).
    "recover": {"events", "runs", "live", "runs_of", "sla_watch", "controlled", "control_channel"},
    # A run asks for a concurrency slot: its group's keys (transition and restart reach the
    # group through the name the run hash keeps, and the runs of the group through templates:
    # one slot only with a hash-tag prefix, like list_live).
    "admit": {
        "conc_group",
        "conc_active",
        "conc_waiting",
        "conc_index",
        "conc_seq",
        "events",
        "live",
    },
    # mapped steps (engine/itemstate.py)
    "expand": {"events"},
    "claim_item": set(),
    "close_items": {"events"},
    "items_live": set(),
}
FLEET = ("events", "controlled", "control_channel", "live", "watchdog", "runs", "sla_watch")


def script_names(state: RunState) -> dict[str, str]:
    """RunState attribute -> the .lua file it runs, for every script RunState registers."""
    files = [p.stem for p in (Path(__file__).parents[1] / "orchestrator/engine/lua").glob("*.lua")]
    by_source = {lua_source(f"{f}.lua"): f for f in files if f != "common"}
    return {
        attr: by_source[value.script]
        for attr, value in vars(state).items()
        if hasattr(value, "script") and hasattr(value, "sha")
    }


def record_calls(state: RunState) -> list[tuple[str, list[str]]]:
    """Wrap every script of ``state`` so each real call is recorded as (script, KEYS)."""
    calls: list[tuple[str, list[str]]] = []
    for attr, name in script_names(state).items():
        script = getattr(state, attr)

        def wrapped(keys: Any = None, args: Any = None, client: Any = None, *, _s=script, _n=name):
            calls.append((_n, [str(k) for k in keys or ()]))
            return _s(keys=keys, args=args, client=client)

        setattr(state, attr, wrapped)
    return calls


def exercise(state: RunState, run_id: str) -> None:
    """Every RunState call that runs a script, as the engine makes them."""
    state.create(RunRecord(run_id, workflow="slots", definition_json="{}"), ["a", "b", "c"])
    state.transition(run_id, Move.BEGIN, RunStatus.RUNNING)
    attempt = {"worker": "w", "task_id": "t1"}
    state.begin_step(run_id, "a", 1, intent="run", owner="o1", lease_ttl=30, task_id="t1",
                     worker="w")  # fmt: skip
    state.refresh_lease(run_id, "a", "o1", 30)
    state.leased([run_id])
    state.finish_step(run_id, "a", 1, status="COMPLETED", owner="o1", attempt=attempt,
                      batch=[["log", "a", "", 0.0, "text"]])  # fmt: skip
    state.run_once(run_id, "b", 1, status="COMPLETED", started=0.0, attempt=attempt, worker="w",
                   task_id="t2")  # fmt: skip
    state.fail_killed_step(run_id, "c", 1, error="killed", critical=False, attempt=attempt)
    state.emit(run_id, [["note", "", "", 0.0, {"x": 1}]])
    state.set_step(run_id, "c", "PENDING", "walk")
    state.audit(run_id, {"action": "look"})
    state.sla_mark(run_id, "warning", {})
    state.transition(run_id, Move.PAUSE, RunStatus.PAUSED)
    state.restart(run_id, Move.RESUME, RunStatus.RUNNING, reset=["c"])
    (head,) = state.runs([run_id], "status", "seq")
    state.claim_stalled(run_id, head.status, str(head.seq), {"reason": "audit"})
    state.recover(
        RunRecord(run_id, workflow="slots", definition_json="{}", status="RUNNING"),
        {"a": {"status": "COMPLETED"}},
        attempts=[],
        completed=["a"],
        lost=[],
        data={"actor": "audit"},
        force=True,
    )
    # a mapped step 'm' and its items
    state.r.hset(state.keys.steps(run_id), mapping={"m|status": "PENDING"})
    state.begin_step(run_id, "m", head.epoch + 1, intent="run", owner="o3", lease_ttl=30,
                     task_id="t3", worker="w")  # fmt: skip
    state.expand(run_id, "m", head.epoch + 1, owner="o3", elements=["1", "2"])
    state.claim_item(run_id, "m", head.epoch + 1, "L0")
    state.items_live(run_id)
    state.close_items(run_id, ["m[1]"], reason="audit")
    state.cancel(run_id, terminate=True)
    state.read(run_id)
    state.live_page([run_id], ["status"])
    state.admit(run_id, state.slot_group("slots", "k", 1), strategy="queue", priority="normal")


def slot_of_key_owner(keys: Keys, key: str, run_id: str) -> str:
    """'run' for a key of the run, else the name of the fleet-wide Keys attribute it is."""
    if keys.run_tag(run_id) in key:
        return "run"
    group = keys.conc_group("slots", "k")
    conc = {
        group: "conc_group",
        keys.conc_active(group): "conc_active",
        keys.conc_waiting(group): "conc_waiting",
        keys.conc_index("slots"): "conc_index",
        keys.conc_seq: "conc_seq",
    }
    if key in conc:
        return conc[key]
    for name in FLEET:
        if getattr(keys, name) == key:
            return name
    if key.startswith(keys.runs_of("")):
        return "runs_of"
    raise AssertionError(f"{key!r} is neither a key of run {run_id} nor a known fleet key")


# -- the layout ----------------------------------------------------------------------------


def test_every_key_of_a_run_lies_in_one_slot() -> None:
    keys = Keys("cf")
    for run_id in ("0b20a00c90b9cc73", "r1", uuid.uuid4().hex):
        of_run = [
            keys.run(run_id),
            keys.steps(run_id),
            keys.attempts(run_id),
            keys.completed(run_id),
            keys.run(run_id) + ":completed",  # as finish_step.lua and run_once.lua build it
            keys.lease(run_id, "load"),
            keys.lease(run_id, "") + "step_b",  # as leased.lua and cancel.lua build it
            keys.settled_channel(run_id),
        ]
        slots = {key: key_slot(key.encode()) for key in of_run}
        assert len(set(slots.values())) == 1, slots
    # Different runs spread over the slots (the tag is the run id, not the prefix).
    assert len({key_slot(keys.run(uuid.uuid4().hex).encode()) for _ in range(50)}) > 40


# -- the slot audit, on a real Redis -------------------------------------------------------


@pytest.fixture
def state(redis_client: redis.Redis) -> Iterator[RunState]:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    yield RunState(redis_client, keys, state_ttl=600)
    for key in redis_client.scan_iter(f"{keys.prefix}:*", count=1000):
        redis_client.delete(key)


def test_each_script_call_passes_one_runs_keys_and_only_the_fleet_keys_the_audit_lists(
    state: RunState,
) -> None:
    run_id = uuid.uuid4().hex[:16]
    registered = set(script_names(state).values())
    calls = record_calls(state)
    exercise(state, run_id)

    run_slot = key_slot(state.keys.run(run_id).encode())
    seen: dict[str, set[str]] = {}
    for name, keys in calls:
        owners = [slot_of_key_owner(state.keys, k, run_id) for k in keys]
        run_keys = [k for k, o in zip(keys, owners, strict=True) if o == "run"]
        assert {key_slot(k.encode()) for k in run_keys} <= {run_slot}, (name, run_keys)
        seen.setdefault(name, set()).update(o for o in owners if o != "run")
    assert registered == set(CROSS_SLOT), "a script without an audit entry"
    assert set(seen) == registered, f"not exercised: {registered - set(seen)}"
    assert {n: seen[n] for n in CROSS_SLOT} == CROSS_SLOT


# -- on a real three-master Redis Cluster --------------------------------------------------


@pytest.fixture
def cluster_state(redis_cluster: LocalCluster) -> Iterator[RunState]:
    client = RedisCluster.from_url(redis_cluster.url)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    yield RunState(client, keys, state_ttl=600)
    client.close()


def seed_run(state: RunState, run_id: str) -> None:
    """A RUNNING run whose step 'a' is RUNNING under a lease (written key by key: creating a run
    is a multi-slot transaction a cluster refuses, see the test below)."""
    r, k = state.r, state.keys
    r.hset(k.run(run_id), mapping={"status": "RUNNING", "epoch": "1", "seq": "3", "total": "2"})
    r.hset(k.steps(run_id), mapping={step_field("a", "status"): "RUNNING",
                                     step_field("b", "status"): "PENDING"})  # fmt: skip
    r.rpush(k.attempts(run_id), '{"attempt":1}')
    r.set(k.lease(run_id, "a"), "o1", ex=60)


def test_on_a_redis_cluster_the_run_only_scripts_run_on_runs_of_every_master(
    cluster_state: RunState,
) -> None:
    state = cluster_state
    run_ids = [uuid.uuid4().hex[:16] for _ in range(12)]
    nodes = {state.r.get_node_from_key(state.keys.run(rid)).name for rid in run_ids}
    assert len(nodes) > 1, "the runs should spread over the masters"
    for rid in run_ids:
        seed_run(state, rid)
    for rid in run_ids:
        hot = state.read(rid)
        assert hot is not None and hot.run.status == "RUNNING", rid
        assert sorted(hot.steps) == ["a", "b"]
        assert state.refresh_lease(rid, "a", "o1", 60) is True
        assert state.refresh_lease(rid, "a", "someone else", 60) is False
        assert state.head(rid) == ("RUNNING", "1", "")
        assert state.step(rid, "a", "status").status == "RUNNING"
        assert state.lease_holder(rid, "a") == "o1"
    assert state.runs(run_ids, "status") == [RunRecord(rid, status="RUNNING") for rid in run_ids]
    for rid in run_ids:  # leased.lua builds the lease keys from the prefix: same slot
        assert state.leased([rid]) == {rid}


def test_on_a_redis_cluster_exactly_the_audited_cross_slot_calls_are_refused(
    cluster_state: RunState,
) -> None:
    state = cluster_state
    run_id = uuid.uuid4().hex[:16]
    seed_run(state, run_id)
    attempt = {"worker": "w", "task_id": "t1"}
    refused = {
        "create": lambda: state.create(RunRecord(run_id, workflow="w"), ["a"]),
        "begin_step": lambda: state.begin_step(
            run_id, "b", 1, intent="run", owner="o2", lease_ttl=30, task_id="t2", worker="w"
        ),
        "finish_step": lambda: state.finish_step(
            run_id, "a", 1, status="COMPLETED", owner="o1", attempt=attempt
        ),
        "run_once": lambda: state.run_once(
            run_id,
            "b",
            1,
            status="COMPLETED",
            started=0.0,
            attempt=attempt,
            worker="w",
            task_id="t2",
        ),
        "fail_killed": lambda: state.fail_killed_step(
            run_id, "a", 1, error="x", critical=True, attempt=attempt
        ),
        "emit_batch": lambda: state.emit(run_id, [["note", "", "", 0.0, {}]]),
        "set_step": lambda: state.set_step(run_id, "b", "SKIPPED", "walk"),
        "transition": lambda: state.transition(run_id, Move.PAUSE, RunStatus.PAUSED),
        "restart": lambda: state.restart(run_id, Move.RESUME, RunStatus.RUNNING),
        "cancel": lambda: state.cancel(run_id, terminate=False),
        "claim_stalled": lambda: state.claim_stalled(run_id, "RUNNING", "3", {}),
        "audit": lambda: state.audit(run_id, {}),
        "sla_mark": lambda: state.sla_mark(run_id, "warning", {}),
    }
    # list_live reads runs on every master (Redis refuses a key of another node in a script).
    others = [uuid.uuid4().hex[:16] for _ in range(12)]
    refused["list_live"] = lambda: state.live_page([run_id, *others], ["status"])
    refused["recover"] = lambda: state.recover(
        RunRecord(run_id, workflow="w", definition_json="{}", status="RUNNING"),
        {},
        attempts=[],
        completed=[],
        lost=[],
        data={},
        force=True,
    )
    refused["admit"] = lambda: state.admit(
        run_id, state.slot_group("w", "k", 1), strategy="queue", priority="normal"
    )
    refused["expand"] = lambda: state.expand(run_id, "a", 1, owner="o1", elements=["1"])
    refused["close_items"] = lambda: state.close_items(run_id, ["a[0]"], reason="x")
    assert set(refused) - {"create"} == {n for n, fleet in CROSS_SLOT.items() if fleet}
    for name, call in refused.items():
        with pytest.raises(
            (RedisClusterException, redis.ResponseError), match="slot|non local key"
        ):
            call()
        # Refused before anything was written: the run is as seeded.
        assert state.head(run_id) == ("RUNNING", "1", ""), name


def test_with_a_hash_tag_prefix_every_script_runs_on_a_redis_cluster(
    redis_cluster: LocalCluster,
) -> None:
    settings = Settings(
        redis_url=redis_cluster.url,
        redis_cluster=True,
        key_prefix=f"{{t{uuid.uuid4().hex[:8]}}}",
        broker_url="redis://127.0.0.1:6379/13",
        result_backend="redis://127.0.0.1:6379/13",
    )
    client = state_redis(settings)
    assert isinstance(client, RedisCluster)
    state = RunState(client, Keys(settings.key_prefix), state_ttl=600)
    registered = set(script_names(state).values())
    calls = record_calls(state)
    run_id = uuid.uuid4().hex[:16]
    exercise(state, run_id)  # raises on any call the cluster refuses
    assert {name for name, _ in calls} == registered
    hot = state.read(run_id)
    assert hot is not None and hot.run.status == "CANCELLING"
    types = [f[b"type"] for _, f in client.xrange(state.keys.events)]
    assert types[:2] == [b"run_created", b"run_status_changed"] and b"step_completed" in types
    client.close()


def test_settings_for_a_redis_cluster_demand_a_hash_tag_prefix_and_celery_elsewhere() -> None:
    url = "redis://127.0.0.1:7000"
    with pytest.raises(ConfigurationError, match=r"CANVASFLOW_KEY_PREFIX=\{cf\}"):
        Settings(redis_url=url, redis_cluster=True, broker_url="redis://b", result_backend="x")
    with pytest.raises(ConfigurationError, match="CANVASFLOW_BROKER_URL is the Redis Cluster"):
        Settings(redis_url=url, redis_cluster=True, key_prefix="{cf}")
    with pytest.raises(ConfigurationError, match="CANVASFLOW_RESULT_BACKEND is the Redis Clus"):
        Settings(redis_url=url, redis_cluster=True, key_prefix="{cf}", broker_url="amqp://h//")
    env = {
        "CANVASFLOW_REDIS_URL": url,
        "CANVASFLOW_REDIS_CLUSTER": "true",
        "CANVASFLOW_KEY_PREFIX": "{cf}",
        "CANVASFLOW_BROKER_URL": "amqp://h//",
        "CANVASFLOW_RESULT_BACKEND": "redis://plain:6379/0",
    }
    assert Settings.from_env(env).redis_cluster is True
    assert Settings.from_env(Settings.from_env(env).as_env()).redis_cluster is True


# -- upgrading from the names without a hash tag ------------------------------------------


def test_upgrade_keys_renames_a_run_in_flight_from_the_old_names_and_it_goes_on(
    redis_url: str,
) -> None:
    from tests.conftest import make_settings
    from tests.test_cli import cli

    settings = make_settings(redis_url)
    client = redis.Redis.from_url(redis_url)
    state = RunState(client, Keys(settings.key_prefix), state_ttl=600)
    old_run, new_run = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    try:
        for rid in (old_run, new_run):
            state.create(RunRecord(rid, workflow="up", definition_json="{}"), ["a", "b"])
            state.transition(rid, Move.BEGIN, RunStatus.RUNNING)
            state.begin_step(
                rid, "a", 1, intent="run", owner="o1", lease_ttl=30, task_id="t1", worker="w"
            )
            state.finish_step(
                rid, "a", 1, status="COMPLETED", owner="o1", output='{"rows": 3}',
                attempt={"worker": "w"},
            )  # fmt: skip
        before = state.read(old_run)
        # The run as a version before 2026-12 left it: its keys without the hash tag.
        for old, new in state.keys.legacy_run_keys(old_run):
            client.rename(new, old)
        assert state.read(old_run) is None

        done = cli("upgrade-keys", settings=settings)
        assert done.returncode == 0, done.stderr
        assert "renamed the keys of 1 run(s)" in done.stdout and old_run in done.stdout
        assert new_run not in done.stdout

        assert state.read(old_run) == before
        assert state.completed_order(old_run) == ["a"]
        verdict = state.begin_step(
            old_run, "b", 1, intent="run", owner="o2", lease_ttl=30, task_id="t2", worker="w"
        )
        assert verdict == ("go", "1")
        again = cli("upgrade-keys", settings=settings)
        assert "renamed the keys of 0 run(s)" in again.stdout
    finally:
        for key in client.scan_iter(f"{settings.key_prefix}:*", count=1000):
            client.delete(key)
        client.close()
