"""Fleet inspection (issue 6): /metrics, /healthz, /readyz, /api/v1/inspect workers, queues and
tasks, against real Celery workers on a key prefix of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from orchestrator.audit.models import runs, step_attempts, steps
from orchestrator.fleet.events import merge_event, run_and_step
from orchestrator.fleet.inspect import queue_keys
from tests.conftest import WorkerProcess, make_settings
from tests.web_helpers import ADMIN, OPERATOR, VIEWER, Api, wait_for, wait_recorded

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "COMPENSATION_FAILED"}


def echo_wf(wid: str, queue: str = "default", **extra: Any) -> dict[str, Any]:
    return {
        "id": wid,
        "mode": "sequential",
        "steps": [
            {"id": "a", "plugin": "builtin", "method": "echo", "params": {"x": 1}, "queue": queue},
            {"id": "b", "plugin": "builtin", "method": "echo", "params": {"y": 2}, "queue": queue},
        ],
        **extra,
    }


def flaky_wf() -> dict[str, Any]:
    return {
        "id": "fi_flaky",
        "sla_seconds": 0.000001,
        "steps": [
            {
                "id": "f",
                "plugin": "builtin",
                "method": "fail",
                "params": {"times": 1},
                "retries": 1,
                "retry_delay": 0.1,
            }
        ],
    }


def failing_wf() -> dict[str, Any]:
    return {
        "id": "fi_fail",
        "steps": [{"id": "x", "plugin": "builtin", "method": "fail", "params": {}}],
    }


def make_app(settings: Any) -> Any:
    from web import create_app
    from web.settings import WebSettings

    app = create_app(
        settings,
        WebSettings(
            admin_password=ADMIN[1],
            secret_key="t",
            recorder=True,
            inspect_task_allow="tests.inspect_tasks.*",
        ),
    )
    app.config["TESTING"] = True
    users = app.extensions["canvasflow"].users
    users.put(OPERATOR[0], password=OPERATOR[1], role="operator")
    users.put(VIEWER[0], password=VIEWER[1], role="viewer")
    return app


class Env:
    def __init__(
        self, settings: Any, app: Any, workers: dict[str, WorkerProcess], client: Any
    ) -> None:
        self.settings, self.app, self.workers, self.client = settings, app, workers, client


@pytest.fixture(scope="module")
def env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from orchestrator import Client

    tmp: Path = tmp_path_factory.mktemp("fleet")
    settings = make_settings(
        redis_url,
        key_prefix=f"fi{uuid.uuid4().hex[:8]}",
        lease_ttl=3,
        visibility_timeout=60,
        database_url=f"sqlite:///{tmp / 'audit.db'}",
    )
    app = make_app(settings)  # first, so its event receiver sees the workers come online
    wait_for(lambda: app.extensions["canvasflow_fleet"].monitor.connected, 10, "event receiver")
    tag = uuid.uuid4().hex[:4]
    workers = {
        "a": WorkerProcess(
            settings,
            f"fa{tag}",
            queues="default,io",
            concurrency=2,
            log_dir=tmp,
            include="tests.inspect_tasks",
        ),
        "b": WorkerProcess(settings, f"fb{tag}", queues="cpu", concurrency=1, log_dir=tmp),
    }
    client = Client(settings)
    try:
        for w in workers.values():
            w.wait_ready()
        yield Env(settings, app, workers, client)
    finally:
        for w in workers.values():
            w.stop()
        app.extensions["canvasflow"].stop()
        client.close()


@pytest.fixture(scope="module")
def finished_runs(env: Env) -> list[str]:
    c = env.client
    ids = [
        c.submit(echo_wf("fi_echo")).id,
        c.submit(echo_wf("fi_echo")).id,
        c.submit(flaky_wf()).id,
        c.submit(failing_wf()).id,
    ]
    store = env.app.extensions["canvasflow"].store
    for rid in ids:
        wait_recorded(store, rid, FINAL, timeout=60)
    return ids


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], name: str, **labels: str) -> float:
    for fam in fams.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


# ---------------------------------------------------------------------------------------------
# Unit: event folding, run/step extraction, queue keys
# ---------------------------------------------------------------------------------------------


def test_args_repr_links_a_task_to_its_run_and_step() -> None:
    args = "({'a': ['COMPLETED', None]}, {'id': 'load', 'plugin': 'builtin', 'method': 'echo'}, {'run': 'r1', 'epoch': 1})"
    assert run_and_step(args) == ("r1", "load")
    cut = args[:-20] + "..."  # a repr Celery truncated still links by pattern
    assert run_and_step("(" + cut)[0] is None or run_and_step("(" + cut) == ("r1", "load")
    assert run_and_step("(1, 2)") == (None, None)
    # today's step tasks: the run header rides in the outcomes, the spec is a list
    now = "({'@': ['r2', 1, 'wf'], 'a': ['COMPLETED', None]}, ['load', 'builtin', 'echo', 0, {'deps': ['a']}])"
    assert run_and_step(now) == ("r2", "load")
    assert run_and_step(now[:-12]) == ("r2", "load")  # a repr Celery cut short
    assert run_and_step("({'@': ['r3', 2, '']}, {'run': 'r3', 'epoch': 2})") == (
        "r3",
        None,
    )  # a merge task


def test_events_fold_into_one_row_whatever_their_order() -> None:
    evs = [
        {
            "type": "task-succeeded",
            "uuid": "u",
            "timestamp": 3.0,
            "result": "'ok'",
            "runtime": 0.5,
            "hostname": "w1",
        },
        {
            "type": "task-sent",
            "uuid": "u",
            "timestamp": 1.0,
            "name": "t",
            "args": "()",
            "kwargs": "{}",
            "queue": "q",
        },
        {
            "type": "task-received",
            "uuid": "u",
            "timestamp": 2.0,
            "hostname": "w1",
            "name": "t",
            "retries": 0,
        },
    ]
    row = None
    for ev in evs:
        row = merge_event(row, ev, 10.0)
    assert row is not None
    assert (row["state"], row["ts"], row["worker"], row["queue"], row["runtime"]) == (
        "SUCCESS",
        1.0,
        "w1",
        "q",
        0.5,
    )
    assert (row["sent_at"], row["received_at"], row["succeeded_at"]) == (1.0, 2.0, 3.0)


def test_a_sent_event_stamped_after_the_workers_events_keeps_the_task_finished() -> None:
    # The client dispatches task-sent after publishing the message; a worker can run the task
    # first, so the sent event arrives last with the latest timestamp (seen under load).
    evs = [
        {"type": "task-received", "uuid": "u", "timestamp": 2.0, "hostname": "w1", "name": "t"},
        {"type": "task-succeeded", "uuid": "u", "timestamp": 3.0, "hostname": "w1"},
        {"type": "task-sent", "uuid": "u", "timestamp": 4.0, "name": "t", "queue": "q"},
    ]
    row = None
    for ev in evs:
        row = merge_event(row, ev, 10.0)
    assert row is not None
    assert (row["state"], row["sent_at"], row["queue"]) == ("SUCCESS", 4.0, "q")
    # A retry's new message is sent again: the task waits PENDING until a worker takes it.
    retried = merge_event(
        row | {"state": "RETRY", "state_ts": 5.0}, evs[2] | {"timestamp": 6.0}, 10.0
    )
    assert retried["state"] == "PENDING"


def test_queue_keys_include_the_priority_sub_queues() -> None:
    keys = [k for _, k in queue_keys("cf", "io")]
    assert keys[0] == "cf:celery:io" and keys[1] == "cf:celery:io:1" and keys[9] == "cf:celery:io:9"


# ---------------------------------------------------------------------------------------------
# Integration
# ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_metrics_parse_and_counters_match_the_store(env: Env, finished_runs: list[str]) -> None:
    http = env.app.test_client()
    r = http.get("/metrics")
    assert r.status_code == 200
    fams = families(r.get_data(as_text=True))
    store = env.app.extensions["canvasflow"].store
    with store.connect() as conn:
        by_wf_status = {
            (w, s): n
            for w, s, n in conn.execute(
                select(runs.c.workflow_id, runs.c.status, func.count()).group_by(
                    runs.c.workflow_id, runs.c.status
                )
            )
        }
        n_retries = conn.execute(
            select(func.count()).select_from(step_attempts).where(step_attempts.c.attempt > 1)
        ).scalar_one()
        n_failed = conn.execute(
            select(func.count()).select_from(steps).where(steps.c.status == "FAILED")
        ).scalar_one()
        n_attempts = conn.execute(
            select(func.count())
            .select_from(step_attempts)
            .where(step_attempts.c.duration.is_not(None))
        ).scalar_one()
    for (wf, status), n in by_wf_status.items():
        if status in FINAL:
            assert sample(fams, "canvasflow_runs_finished_total", workflow=wf, status=status) == n
    assert (
        sample(fams, "canvasflow_runs_finished_total", workflow="fi_echo", status="COMPLETED") >= 2
    )
    assert sample(fams, "canvasflow_runs_submitted_total", workflow="fi_echo") == sum(
        n for (w, _), n in by_wf_status.items() if w == "fi_echo"
    )
    assert sample(fams, "canvasflow_run_duration_seconds_count", workflow="fi_echo") >= 2
    assert (
        sum(s.value for s in fams["canvasflow_step_retries"].samples if s.name.endswith("_total"))
        == n_retries
        >= 1
    )
    assert (
        sample(fams, "canvasflow_step_failures_total", plugin="builtin", method="fail")
        == n_failed
        >= 1
    )
    assert (
        sum(
            s.value
            for s in fams["canvasflow_step_duration_seconds"].samples
            if s.name.endswith("_count")
        )
        == n_attempts
    )
    assert sample(fams, "canvasflow_sla_breaches_total", workflow="fi_flaky") == 1
    assert sample(fams, "canvasflow_workers_online") >= 2
    assert "canvasflow_queue_length" in fams and "canvasflow_recorder_lag" in fams
    assert {s.labels["queue"] for s in fams["canvasflow_queue_length"].samples} >= {
        "default",
        "io",
        "cpu",
    }
    assert all(s.value == 0 for s in fams["canvasflow_scrape_error"].samples)


@pytest.mark.integration
def test_queue_length_counts_priority_sub_queues(env: Env) -> None:
    r = env.client.redis
    keys = dict(queue_keys(env.settings.key_prefix, "fi_idle"))
    r.rpush(keys[0], b"x")
    r.rpush(keys[4], b"y", b"z")
    try:
        out = Api(env.app, VIEWER).get("/inspect/queues?queue=fi_idle").json["queues"]["fi_idle"]
        assert out == {"total": 3, "by_priority": {"0": 1, "4": 2}}
    finally:
        r.delete(keys[0], keys[4])


@pytest.mark.integration
def test_healthz_and_readyz_report_each_dependency(env: Env) -> None:
    http = env.app.test_client()
    assert http.get("/healthz").status_code == 200
    r = http.get("/readyz")
    assert r.status_code == 200, r.json
    assert (
        set(r.json["checks"]) == {"redis", "store", "workers"}
        and r.json["checks"]["workers"]["online"] >= 2
    )


@pytest.mark.integration
def test_two_workers_on_different_queues_appear_with_queues_and_plugins(env: Env) -> None:
    api = Api(env.app, VIEWER)
    rows = {w["name"]: w for w in api.get("/inspect/workers").json["workers"]}
    a, b = rows[env.workers["a"].hostname], rows[env.workers["b"].hostname]
    assert a["online"] and b["online"]
    assert a["queues"] == ["default", "io"] and b["queues"] == ["cpu"]
    assert "builtin" in a["plugins"] and "builtin" in b["plugins"]
    assert (
        a["pool"]["implementation"]
        and a["pool"]["concurrency"] == 2
        and b["pool"]["concurrency"] == 1
    )
    detail = api.get(f"/inspect/workers/{env.workers['b'].hostname}").json
    assert detail["answered_inspect"] and detail["broker"] and detail["rusage"] is not None
    assert [q["name"] for q in detail["active_queues"]] == ["cpu"]
    assert "canvasflow.step" in detail["registered"]
    assert api.get("/inspect/workers/nobody@nowhere").status_code == 404


@pytest.mark.integration
def test_pool_grow_changes_the_reported_concurrency_and_is_audited(env: Env) -> None:
    host = env.workers["a"].hostname
    assert (
        Api(env.app, VIEWER).post(f"/inspect/workers/{host}/pool_grow", {"n": 1}).status_code == 403
    )
    op = Api(env.app, OPERATOR)
    r = op.post(f"/inspect/workers/{host}/pool_grow", {"n": 1})
    assert r.status_code == 200, r.json
    try:
        # the pool starts the new process asynchronously
        wait_for(
            lambda: (
                {w["name"]: w for w in op.get("/inspect/workers").json["workers"]}[host]["pool"][
                    "concurrency"
                ]
                == 3
            ),
            20,
            "the pool to grow",
            every=0.2,
        )
    finally:
        assert op.post(f"/inspect/workers/{host}/pool_shrink", {"n": 1}).status_code == 200
    assert op.post(f"/inspect/workers/{host}/explode", {}).status_code == 404
    from orchestrator.audit.models import audit_log

    store = env.app.extensions["canvasflow"].store
    with store.connect() as conn:
        acts = [
            (a, t, o)
            for a, t, o in conn.execute(
                select(audit_log.c.action, audit_log.c.target_id, audit_log.c.actor)
            )
        ]
    assert ("worker_pool_grow", host, OPERATOR[0]) in acts


@pytest.mark.integration
def test_tasks_are_listed_linked_to_runs_and_survive_a_restart(
    env: Env, finished_runs: list[str]
) -> None:
    api = Api(env.app, VIEWER)
    rid = finished_runs[0]
    rows = wait_for(
        lambda: (
            (rs := api.get(f"/inspect/tasks?run={rid}&state=SUCCESS").json["tasks"])
            and {t["step_id"] for t in rs} >= {"a", "b"}
            and rs
        ),
        20,
        "step tasks recorded",
    )
    step_task = next(t for t in rows if t["step_id"] == "a")
    assert (
        step_task["name"] == "canvasflow.step" and step_task["worker"] == env.workers["a"].hostname
    )
    detail = api.get(f"/inspect/tasks/{step_task['uuid']}").json
    assert (
        detail["run_id"] == rid
        and detail["args"]
        and detail["received_at"]
        and detail["runtime"] is not None
    )
    # a step that fails records its outcome as data (the Celery task succeeds); a retried one
    # goes through Celery's own retry, so the history shows it
    retried = wait_for(
        lambda: [
            t
            for t in api.get("/inspect/tasks?q=step:f name:canvasflow.step").json["tasks"]
            if t["retried_at"] and t["state"] == "SUCCESS"
        ],
        20,
        "retried step task",
    )
    assert retried[0]["retries"] >= 1
    assert "traceback" in api.get(f"/inspect/tasks/{retried[0]['uuid']}").json
    # keyset pagination walks every task exactly once (the receiver may still be writing: every
    # task recorded before the walk must be in it, and none twice)
    before = wait_for(
        lambda: (ts := api.get("/inspect/tasks?limit=500").json["tasks"]) and len(ts) >= 6 and ts,
        20,
        "tasks recorded",
    )
    seen, cursor = [], None
    while True:
        page = api.get("/inspect/tasks?limit=3" + (f"&cursor={cursor}" if cursor else "")).json
        seen += [t["uuid"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen))
    assert {t["uuid"] for t in before} <= set(seen)
    assert api.get("/inspect/tasks?sort=bogus").status_code == 400
    # a new web process on the same database still has the history
    again = make_app(env.settings)
    try:
        rows2 = Api(again, VIEWER).get(f"/inspect/tasks?run={rid}").json["tasks"]
        assert {t["uuid"] for t in rows2} >= {t["uuid"] for t in rows}
    finally:
        again.extensions["canvasflow"].stop()


@pytest.mark.integration
def test_revoke_from_the_api_stops_a_queued_task(env: Env) -> None:
    c = env.client
    blocker = c.submit(
        {
            "id": "fi_block",
            "steps": [
                {
                    "id": "s",
                    "plugin": "builtin",
                    "method": "sleep",
                    "params": {"seconds": 3},
                    "queue": "cpu",
                }
            ],
        }
    )
    queued = c.submit(echo_wf("fi_victim", queue="cpu"))
    api = Api(env.app, OPERATOR)

    def queued_task() -> Any:
        rows = api.get(f"/inspect/tasks?run={queued.id}&state=PENDING").json["tasks"]
        return rows[0] if rows else None

    task = wait_for(queued_task, 20, "the queued step's task-sent event")
    r = api.post(f"/inspect/tasks/{task['uuid']}/revoke", {"reason": "test"})
    assert r.status_code == 200, r.json
    wait_for(
        lambda: api.get(f"/inspect/tasks/{task['uuid']}").json["state"] == "REVOKED",
        30,
        "task revoked",
    )
    detail = api.get(f"/inspect/tasks/{task['uuid']}").json
    assert detail["started_at"] is None and detail["succeeded_at"] is None
    assert c.state.status(queued.id) != "COMPLETED"
    for rid in (blocker.id, queued.id):
        try:
            c.control.cancel(rid, actor="test")
        except Exception:  # noqa: BLE001 - already final
            pass


@pytest.mark.integration
def test_a_stopped_worker_goes_offline(env: Env) -> None:
    w = WorkerProcess(
        env.settings,
        f"fc{uuid.uuid4().hex[:4]}",
        queues="spare",
        concurrency=1,
        log_dir=env.workers["a"].log_path.parent,
    )
    try:
        w.wait_ready()
        api = Api(env.app, VIEWER)
        wait_for(
            lambda: {
                x["name"]: x for x in api.get("/inspect/workers?refresh=0").json["workers"]
            }.get(w.hostname, {}).get("online"),
            20,
            "worker online",
        )
    finally:
        w.stop()
    row = wait_for(
        lambda: (
            (
                x := {
                    x["name"]: x for x in api.get("/inspect/workers?refresh=0").json["workers"]
                }.get(w.hostname)
            )
            and not x["online"]
            and x
        ),
        40,
        "worker offline",
    )
    assert row["status"] == "offline"
    op = Api(env.app, OPERATOR)
    assert (
        op.http.delete(
            f"/api/v1/inspect/workers/{w.hostname}", headers={"X-CSRF-Token": op.csrf}
        ).json["forgotten"]
        is True
    )


@pytest.mark.integration
def test_rate_and_time_limits_are_set_through_the_api(env: Env) -> None:
    op = Api(env.app, OPERATOR)
    host = env.workers["b"].hostname
    r = op.post(
        f"/inspect/workers/{host}/rate_limit", {"task": "canvasflow.merge", "rate": "100/s"}
    )
    assert r.status_code == 200 and "ok" in r.json["reply"], r.json
    r = op.post(
        f"/inspect/workers/{host}/time_limit", {"task": "canvasflow.merge", "soft": 30, "hard": 40}
    )
    assert r.status_code == 200 and "ok" in r.json["reply"], r.json
    r = op.post(f"/inspect/workers/{host}/rate_limit", {"task": "no.such.task", "rate": "1/s"})
    assert r.status_code == 409 and "error" in r.json["reply"]
    assert op.post(f"/inspect/workers/{host}/rate_limit", {"rate": "1/s"}).status_code == 400
    assert op.post(f"/inspect/workers/{host}/autoscale", {"max": 2}).status_code == 400
    assert (
        op.post(
            f"/inspect/workers/{host}/rate_limit", {"task": "canvasflow.merge", "rate": "0"}
        ).status_code
        == 200
    )


@pytest.mark.integration
def test_send_task_result_and_task_types(env: Env) -> None:
    op = Api(env.app, OPERATOR)
    assert "canvasflow.step" in op.get("/inspect/task-types").json["task-types"]
    # canvasflow's own tasks are never sent by hand (tests/test_web_security.py has the rules)
    assert (
        op.post("/inspect/tasks/send", {"name": "canvasflow.merge", "args": [[1, 2]]}).status_code
        == 403
    )
    r = op.post(
        "/inspect/tasks/send", {"name": "tests.inspect_tasks.add", "args": [1, 2], "kwargs": {}}
    )
    assert r.status_code == 200, r.json
    tid = r.json["task"]
    done = wait_for(
        lambda: (
            (t := op.get(f"/inspect/tasks/{tid}")).status_code == 200
            and t.json["state"] == "SUCCESS"
            and t.json
        ),
        20,
        "the sent task to run",
    )
    assert done["name"] == "tests.inspect_tasks.add" and done["worker"] == env.workers["a"].hostname
    assert done["resend"] == {"args": [1, 2], "kwargs": {}}  # what "Send again" sends
    assert op.get(f"/inspect/tasks/{tid}/result").json == {
        "task": tid,
        "state": "SUCCESS",
        "result": 3,
    }
    # a result stored in the backend the way any Celery task stores it
    backend = env.client.celery.backend
    other = str(uuid.uuid4())
    backend.store_result(other, {"rows": 3}, "SUCCESS")
    assert op.get(f"/inspect/tasks/{other}/result").json == {
        "task": other,
        "state": "SUCCESS",
        "result": {"rows": 3},
    }


def test_apply_waits_for_the_result_and_answers_202_for_a_task_still_unfinished(env: Env) -> None:
    op = Api(env.app, OPERATOR)
    r = op.post(
        "/inspect/tasks/apply", {"name": "tests.inspect_tasks.add", "args": [1, 2], "timeout": 20}
    )
    assert r.status_code == 200, r.json
    assert (
        r.json["state"] == "SUCCESS"
        and r.json["result"] == 3
        and r.json["name"] == "tests.inspect_tasks.add"
    )
    # a task still running when the wait ends: 202 with the task's id to ask later
    r = op.post(
        "/inspect/tasks/apply", {"name": "tests.inspect_tasks.nap", "args": [2], "timeout": 0.3}
    )
    assert r.status_code == 202 and r.json["state"] in ("PENDING", "STARTED") and r.json["task"], (
        r.json
    )
    bad = op.post("/inspect/tasks/apply", {"name": "tests.inspect_tasks.add", "timeout": 600})
    assert bad.status_code == 400 and "timeout" in str(bad.json), bad.json
    assert (
        Api(env.app, VIEWER)
        .post("/inspect/tasks/apply", {"name": "tests.inspect_tasks.add"})
        .status_code
        == 403
    )


def test_a_tasks_arguments_are_read_back_from_their_reprs_for_sending_it_again() -> None:
    from web.inspect import resend_arguments

    assert resend_arguments("(1, 'a', {'k': [None, True]})", "{'x': 1.5}") == {
        "args": [1, "a", {"k": [None, True]}],
        "kwargs": {"x": 1.5},
    }
    assert resend_arguments(None, None) == {"args": [], "kwargs": {}}
    assert resend_arguments("({'rows': [1, 2, ...", "{}") is None  # cut short by Celery
    assert resend_arguments("(<object at 0x1>,)", "{}") is None  # not a literal
    assert resend_arguments("({1, 2},)", "{}") is None  # a set: not JSON


def test_the_event_queue_is_bounded_and_drops_are_counted() -> None:
    from orchestrator.fleet.events import FleetMonitor

    mon = FleetMonitor(None, object(), None, "k", max_queue=100)  # type: ignore[arg-type]
    for i in range(1000):
        mon.on_event({"type": "task-sent", "uuid": f"u{i}", "timestamp": float(i)})
    assert mon.queue.qsize() == 100 and mon.dropped == 900


# ---------------------------------------------------------------------------------------------
# Parity gaps: workers?detail=1, settings, rate limits, heartbeat expiry, task-history metrics
# ---------------------------------------------------------------------------------------------


def test_a_worker_is_online_within_its_heartbeat_window_and_offline_past_it() -> None:
    from orchestrator.fleet.events import heartbeat_expired

    hb = {"timestamp": 100.0, "freq": 2.0}
    assert not heartbeat_expired(
        hb, 100.0 + 2 * 2.0 + 1.0
    )  # two missed heartbeats (+1 s drift) tolerated
    assert heartbeat_expired(hb, 100.0 + 2 * 2.0 + 1.01)
    assert heartbeat_expired({"timestamp": 100.0, "freq": 5.0}, 111.5) and not heartbeat_expired(
        {"timestamp": 100.0, "freq": 5.0}, 110.5
    )


def test_offline_workers_are_purged_after_the_configured_time(redis_url: str) -> None:
    import json
    import time

    import redis

    from orchestrator.fleet.events import worker_states

    r = redis.Redis.from_url(redis_url)
    key = f"fi{uuid.uuid4().hex[:8]}:inspect:workers"
    now = time.time()
    r.hset(
        key,
        mapping={
            "up@h": json.dumps({"timestamp": now, "freq": 2.0, "online": True}),
            "gone@h": json.dumps({"timestamp": now - 700, "freq": 2.0, "online": False}),
            "recent@h": json.dumps({"timestamp": now - 60, "freq": 2.0, "online": True}),
        },
    )
    try:
        states = worker_states(r, key, now=now, purge_after=600)
        assert (
            set(states) == {"up@h", "recent@h"}
            and states["up@h"]["online"]
            and not states["recent@h"]["online"]
        )
        assert not r.hexists(key, "gone@h")
        assert set(worker_states(r, key, now=now + 560, purge_after=600)) == {
            "up@h"
        }  # up@h offline, not yet purged
    finally:
        r.delete(key)
        r.close()


def test_web_settings_configure_fleet_events_purge_time_and_retention(
    redis_url: str, tmp_path: Path
) -> None:
    from orchestrator.errors import ConfigurationError
    from web import create_app
    from web.settings import WebSettings

    web = WebSettings.from_env(
        {
            "CANVASFLOW_WEB_FLEET_EVENTS": "false",
            "CANVASFLOW_WEB_WORKER_PURGE_AFTER": "600",
            "CANVASFLOW_WEB_TASK_RETENTION": "3600",
        }
    )
    assert (web.fleet_events, web.worker_purge_after, web.task_retention) == (False, 600.0, 3600.0)
    assert WebSettings().fleet_events and WebSettings().task_retention == 7 * 86400
    with pytest.raises(ConfigurationError, match="CANVASFLOW_WEB_TASK_RETENTION"):
        WebSettings(task_retention=0)
    settings = make_settings(
        redis_url,
        key_prefix=f"fs{uuid.uuid4().hex[:8]}",
        database_url=f"sqlite:///{tmp_path / 'audit.db'}",
    )
    on = create_app(
        settings,
        WebSettings(
            admin_password=ADMIN[1], secret_key="t", worker_purge_after=600, task_retention=3600
        ),
        start=False,
    )
    fleet = on.extensions["canvasflow_fleet"]
    assert (
        fleet.purge_after == 600 and fleet.monitor is not None and fleet.monitor.retention == 3600
    )
    off = create_app(settings, web.with_(admin_password=ADMIN[1], secret_key="t"), start=False)
    off.config["TESTING"] = True
    assert off.extensions["canvasflow_fleet"].monitor is None
    # without a monitor in this process the history written by another one is still served
    r = Api(off, ADMIN).get("/inspect/tasks")
    assert r.status_code == 200 and r.json["monitor"] is None


@pytest.mark.integration
def test_workers_detail_gives_every_worker_its_inspect_details_in_one_call(env: Env) -> None:
    api = Api(env.app, VIEWER)
    rows = {w["name"]: w for w in api.get("/inspect/workers?detail=1").json["workers"]}
    a, b = rows[env.workers["a"].hostname], rows[env.workers["b"].hostname]
    for w, queues in ((a, ["default", "io"]), (b, ["cpu"])):
        assert w["answered_inspect"] and w["broker"] and w["rusage"] is not None and w["conf"]
        assert sorted(q["name"] for q in w["active_queues"]) == queues
        assert "canvasflow.step" in w["registered"]
        assert set(w["tasks"]) == {"active", "reserved", "scheduled", "revoked"}
        assert w["pool_detail"] and "max-concurrency" in w["pool_detail"]
    one = api.get(f"/inspect/workers/{env.workers['b'].hostname}").json
    assert set(one) == set(b)
    assert "registered" not in api.get("/inspect/workers").json["workers"][0]


@pytest.mark.integration
def test_a_rate_limit_set_from_the_api_slows_the_task(env: Env) -> None:
    op = Api(env.app, OPERATOR)
    host = env.workers["b"].hostname
    # 20/m: one token every 3 s (bucket of one), so the worker starts them 3 s apart
    r = op.post(f"/inspect/workers/{host}/rate_limit", {"task": "canvasflow.merge", "rate": "20/m"})
    assert r.status_code == 200, r.json
    try:
        celery = env.client.celery
        ids = [
            celery.send_task("canvasflow.merge", args=[{}, {"n": i}], queue="cpu").id
            for i in range(3)
        ]

        def done() -> Any:
            rows = [op.get(f"/inspect/tasks/{t}").json for t in ids]
            return all(x.get("state") == "SUCCESS" and x.get("started_at") for x in rows) and rows

        rows = wait_for(done, 60, "the rate-limited tasks to run", every=0.5)
    finally:
        assert (
            op.post(
                f"/inspect/workers/{host}/rate_limit", {"task": "canvasflow.merge", "rate": "0"}
            ).status_code
            == 200
        )
    starts = sorted(x["started_at"] for x in rows)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # a lower bound (the limit's spacing, less timer slack): a slow machine only widens the gaps
    assert all(g >= 2.5 for g in gaps), gaps


@pytest.mark.integration
def test_a_killed_worker_goes_offline_when_its_heartbeats_stop(env: Env) -> None:
    import json
    import time

    from orchestrator.fleet.events import heartbeat_expired

    w = WorkerProcess(
        env.settings,
        f"fk{uuid.uuid4().hex[:4]}",
        queues="spare2",
        concurrency=1,
        log_dir=env.workers["a"].log_path.parent,
    )
    api = Api(env.app, VIEWER)
    try:
        w.wait_ready()
        wait_for(
            lambda: {
                x["name"]: x for x in api.get("/inspect/workers?refresh=0").json["workers"]
            }.get(w.hostname, {}).get("online"),
            20,
            "worker online",
        )
    finally:
        w.kill()  # SIGKILL: no worker-offline event, only silence
        w.stop()
    row = wait_for(
        lambda: (
            (
                x := {
                    x["name"]: x for x in api.get("/inspect/workers?refresh=0").json["workers"]
                }.get(w.hostname)
            )
            and not x["online"]
            and x
        ),
        40,
        "worker offline",
    )
    fleet = env.app.extensions["canvasflow_fleet"]
    raw = json.loads(env.client.redis.hget(fleet.workers_key, w.hostname))
    # offline because the heartbeat window passed, not because the worker said goodbye
    assert raw["last_event"] in ("worker-heartbeat", "worker-online") and raw["online"] is True
    assert heartbeat_expired(raw, time.time()) and row["last_heartbeat"] == raw["timestamp"]
    fleet_forget = Api(env.app, OPERATOR)
    assert (
        fleet_forget.http.delete(
            f"/api/v1/inspect/workers/{w.hostname}", headers={"X-CSRF-Token": fleet_forget.csrf}
        ).json["forgotten"]
        is True
    )


@pytest.mark.integration
def test_metrics_task_history_gauge_matches_the_table(env: Env, finished_runs: list[str]) -> None:
    from orchestrator.audit.models import celery_tasks

    store = env.app.extensions["canvasflow"].store

    def table() -> dict[str, int]:
        with store.connect() as conn:
            return {
                s: int(n)
                for s, n in conn.execute(
                    select(celery_tasks.c.state, func.count()).group_by(celery_tasks.c.state)
                )
            }

    def stable_scrape() -> Any:
        before = table()
        fams = families(env.app.test_client().get("/metrics").get_data(as_text=True))
        # the monitor may be writing: compare only a scrape the table did not move under
        return before == table() and (before, fams)

    counts, fams = wait_for(stable_scrape, 30, "a scrape while the history is still", every=0.2)
    assert counts.get("SUCCESS", 0) > 0
    assert {
        s.labels["state"]: int(s.value) for s in fams["canvasflow_celery_tasks"].samples
    } == counts
    assert sample(fams, "canvasflow_task_events_dropped_total") == 0
    assert sample(fams, "canvasflow_event_receiver_connected") == 1
