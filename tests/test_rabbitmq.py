"""RabbitMQ as Celery's broker (issue 18 item 1): what differs from the Redis transport.

The engine's own integration tests run on both brokers (the `brokers` mark, tests/conftest.py);
these are the AMQP specifics: queue arguments, the fleet pages' queue lengths and workers, the
watchdog's view of a queue it cannot read, and the consumer_timeout warning.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import Client, Workflow
from orchestrator.engine.celery_app import celery_config
from orchestrator.engine.watchdog import Watchdog
from orchestrator.settings import Settings
from tests.conftest import RabbitVhosts, WorkerProcess, make_settings
from tests.test_fleet_inspect import make_app
from tests.web_helpers import VIEWER, Api, wait_for

AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def test_an_amqp_broker_gets_priority_queues_and_no_redis_transport_options() -> None:
    conf = celery_config(Settings(broker_url=AMQP))
    assert conf["task_queue_max_priority"] == 9
    assert conf["task_default_priority"] == 4
    assert conf["broker_transport_options"] == {}  # visibility_timeout means nothing on AMQP
    redis_conf = celery_config(Settings())
    assert "task_queue_max_priority" not in redis_conf
    assert redis_conf["broker_transport_options"]["visibility_timeout"] == 300


def test_quorum_queues_are_declared_without_x_max_priority() -> None:
    # RabbitMQ refuses x-max-priority on a quorum queue (PRECONDITION_FAILED at declare).
    settings = Settings(broker_url=AMQP, extra_celery={"task_default_queue_type": "quorum"})
    assert "task_queue_max_priority" not in celery_config(settings)


def test_amqp_schemes_are_recognised_and_redis_is_not() -> None:
    for url in (AMQP, "amqps://u:p@mq:5671/prod", "pyamqp://mq//"):
        assert Settings(broker_url=url).broker_is_amqp, url
    assert not Settings().broker_is_amqp
    assert not Settings(broker_url="redis://127.0.0.1:6379/1").broker_is_amqp


def test_steps_longer_than_the_brokers_consumer_timeout_are_named_at_submit() -> None:
    from orchestrator.engine.submitchecks import consumer_timeout_warnings

    wf = (
        Workflow("long_steps")
        .step("quick", "builtin", "echo", timeout=30)
        .step("slow", "builtin", "sleep", params={"seconds": 1}, timeout=1795)
        .step(
            "patient",
            "builtin",
            "echo",
            retries=3,
            retry_delay=600,
            retry_backoff="exponential",
            retry_delay_max=3600,
        )
        .step("unbounded", "builtin", "echo")
    ).build()
    settings = Settings(broker_url=AMQP, amqp_consumer_timeout=1800)
    lines = consumer_timeout_warnings(wf, settings)
    assert len(lines) == 2
    assert lines[0].startswith("step slow: a timeout (plus 10 s grace) longer than 1800 s")
    assert "CANVASFLOW_AMQP_CONSUMER_TIMEOUT" in lines[0] and "rabbitmq.conf" in lines[0]
    assert lines[1].startswith("step patient: a retry delay longer than 1800 s")
    # Redis has no consumer timeout; 0 says the broker's is disabled
    assert consumer_timeout_warnings(wf, Settings()) == []
    assert consumer_timeout_warnings(wf, settings.with_(amqp_consumer_timeout=0)) == []


class AmqpFleet:
    def __init__(self, settings: Settings, app: Any, worker: WorkerProcess, client: Client) -> None:
        self.settings, self.app, self.worker, self.client = settings, app, worker, client


@pytest.fixture(scope="module")
def amqp_fleet(
    redis_url: str, rabbit: RabbitVhosts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AmqpFleet]:
    tmp: Path = tmp_path_factory.mktemp("amqp")
    settings = make_settings(
        redis_url,
        broker_url=rabbit.new(),
        lease_ttl=3,
        database_url=f"sqlite:///{tmp / 'audit.db'}",
    )
    app = make_app(settings)
    wait_for(lambda: app.extensions["canvasflow_fleet"].monitor.connected, 10, "event receiver")
    worker = WorkerProcess(settings, f"mq{uuid.uuid4().hex[:4]}", queues="default", log_dir=tmp)
    client = Client(settings)
    try:
        worker.wait_ready()
        yield AmqpFleet(settings, app, worker, client)
    finally:
        worker.stop()
        app.extensions["canvasflow"].stop()
        client.close()


def parked(name: str, queue: str) -> Workflow:
    return Workflow(name).step("s", "builtin", "echo", params={"x": 1}, queue=queue)


@pytest.mark.integration
def test_the_queues_page_and_metrics_count_messages_waiting_in_rabbitmq(
    amqp_fleet: AmqpFleet,
) -> None:
    queue = f"parked_{uuid.uuid4().hex[:6]}"  # no worker consumes it: its messages wait
    for i in range(3):
        amqp_fleet.client.submit(parked(f"p{i}", queue))
    api = Api(amqp_fleet.app, VIEWER)
    out = api.get(f"/inspect/queues?queue={queue}&queue=never_declared").json["queues"]
    assert out[queue] == {"total": 3, "by_priority": {}}
    assert out["never_declared"] == {"total": 0, "by_priority": {}}
    assert out["default"]["total"] == 0  # the worker took what was sent there (nothing)
    # /metrics reads the same numbers for the queues the fleet consumes
    text = amqp_fleet.app.test_client().get("/metrics").get_data(as_text=True)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    lengths = {s.labels["queue"]: s.value for s in fams["canvasflow_queue_length"].samples}
    assert lengths.get("default") == 0
    with amqp_fleet.client.celery.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


@pytest.mark.integration
def test_the_workers_page_shows_a_worker_on_rabbitmq_with_its_queues_and_inspect_replies(
    amqp_fleet: AmqpFleet,
) -> None:
    api = Api(amqp_fleet.app, VIEWER)
    name = amqp_fleet.worker.hostname
    wait_for(
        lambda: any(
            w["name"] == name and w["online"] for w in api.get("/inspect/workers").json["workers"]
        ),
        30,
        "the worker online on the workers page",
    )
    detail = api.get(f"/inspect/workers/{name}").json
    assert detail["answered_inspect"]  # remote control goes through the AMQP broker's pidbox
    assert [q["name"] for q in detail["active_queues"]] == ["default"]
    assert detail["active_queues"][0]["queue_arguments"] == {"x-max-priority": 9}
    assert detail["broker"]["transport"] == "amqp"
    snap = amqp_fleet.client.submit(Workflow("mq_echo").step("s", "builtin", "echo")).wait(30)
    assert snap.status == "COMPLETED" and snap.step("s").worker == name


@pytest.mark.integration
def test_a_submit_on_rabbitmq_warns_of_a_step_longer_than_the_consumer_timeout(
    amqp_fleet: AmqpFleet,
) -> None:
    client = Client(amqp_fleet.settings.with_(amqp_consumer_timeout=60))
    try:
        run = client.submit(Workflow("mq_long").step("s", "builtin", "echo", timeout=600))
        assert [w for w in run.warnings if "consumer_timeout" in w] == [
            "step s: a timeout (plus 10 s grace) longer than 60 s: the AMQP broker's "
            "consumer_timeout (60 s, CANVASFLOW_AMQP_CONSUMER_TIMEOUT) closes the channel of a "
            "worker holding a message longer and delivers the step again; raise "
            "consumer_timeout in rabbitmq.conf and CANVASFLOW_AMQP_CONSUMER_TIMEOUT with it, or "
            "lower the timeout"
        ]
        assert run.wait(30).status == "COMPLETED"  # a warning, not a refusal
    finally:
        client.close()


@pytest.mark.integration
def test_a_worker_on_rabbitmq_warns_at_start_about_the_consumer_timeout(
    amqp_fleet: AmqpFleet,
) -> None:
    log = amqp_fleet.worker.log()
    assert "broker is AMQP" in log and "consumer_timeout" in log
    assert "CANVASFLOW_AMQP_CONSUMER_TIMEOUT=1800 s" in log


@pytest.mark.integration
def test_the_watchdog_leaves_a_run_whose_message_waits_in_rabbitmq_and_rescues_a_purged_one(
    amqp_fleet: AmqpFleet,
) -> None:
    queue, other = f"held_{uuid.uuid4().hex[:6]}", f"busy_{uuid.uuid4().hex[:6]}"
    client = amqp_fleet.client
    run = client.submit(parked("held", queue))
    busy = client.submit(parked("busy", other))  # its message stays queued throughout
    dog = Watchdog(client, stall_seconds=5)
    t = time.time()
    dog.check_once(at=t)
    assert dog._queues([run.id]) >= {queue}
    # (runs of other tests of this module, whose queues were purged, may be re-dispatched)
    first = dog.check_once(at=t + 60)
    assert run.id in first.candidates and busy.id in first.candidates  # no event for a minute
    assert {run.id, busy.id}.isdisjoint(first.redispatched)  # ... but their messages wait
    with client.celery.connection_for_write() as conn:
        assert conn.default_channel.queue_purge(queue) == 1  # what a lost message looks like
    later = dog.check_once(at=t + 120)
    assert run.id in later.redispatched and busy.id not in later.redispatched
    assert client.redis.hget(client.keys.run(run.id), "epoch") == b"2"
    with client.celery.connection_for_write() as conn:
        for q in (queue, other):
            conn.default_channel.queue_purge(q)


@pytest.mark.integration
def test_a_fleet_on_quorum_queues_declares_them_without_x_max_priority_and_runs(
    redis_url: str, rabbit: RabbitVhosts, start_worker
) -> None:
    from tests.quorum_app import QUORUM

    settings = make_settings(redis_url, broker_url=rabbit.new(), extra_celery=QUORUM)
    worker = start_worker(settings, queues="default", concurrency=1, app="tests.quorum_app")
    client = Client(settings)
    try:
        wf = (
            Workflow("on_quorum")
            .step("a", "builtin", "echo")
            .step(
                "b",
                "builtin",
                "fail",
                params={"times": 1},
                retries=1,
                retry_delay=0.5,
                depends_on=["a"],
            )
        )
        snap = client.submit(wf, priority="high").wait(60)
        assert snap.status == "COMPLETED", snap
        assert snap.step("b").attempts == 2  # a retry's countdown works on a quorum queue
        from orchestrator.fleet.inspect import Inspector

        queues = Inspector(client.celery, timeout=5).call("active_queues", [worker.hostname])
        (default,) = queues[worker.hostname]
        assert default["name"] == "default"
        assert default["queue_arguments"] == {"x-queue-type": "quorum"}  # no x-max-priority
    finally:
        client.close()
