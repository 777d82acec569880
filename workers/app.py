"""The Celery app that workers run: ``celery -A workers.app worker -Q default,io,notify``.

Nothing is built at import time: the module attribute ``app`` is created on first access
(PEP 562), from :class:`orchestrator.settings.Settings` read from the environment.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import redis
from celery import Celery, Task, signals
from celery.worker.request import Request
from celery.worker.state import task_ready

from orchestrator.connect import state_redis
from orchestrator.engine import stepcore
from orchestrator.engine.celery_app import create_celery
from orchestrator.engine.compiler import (
    COLLECT_TASK,
    COMPENSATE_TASK,
    COMPENSATED_TASK,
    ITEM_TASK,
    MERGE_TASK,
    SETTLE_TASK,
    STEP_TASK,
)
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.runstate import RunState
from orchestrator.keys import Keys
from orchestrator.model import callallow
from orchestrator.settings import Settings
from workers import broker, compensation, guard, mapstep, subrun
from workers import notify as notify_tasks
from workers import step as steps
from workers.builtin import Builtin
from workers.plugins import Registry

log = logging.getLogger(__name__)
ALIVE_TTL = 30


def catalog_entry(registry: Registry, settings: Settings, queues: list[str]) -> dict[str, Any]:
    """What a worker publishes about itself: its plugins, the queues it consumes, and its
    builtin.call allow-list (so that validation at submit refuses a call it would refuse)."""
    return {
        "plugins": registry.catalog(),
        "queues": queues,
        "pid": os.getpid(),
        "started_at": time.time(),
        "call_allow": list(settings.call_allow),
    }


def amqp_consumer_timeout_note(settings: Settings) -> str:
    """What a worker on an AMQP broker says at start about RabbitMQ's consumer_timeout."""
    limit = settings.amqp_consumer_timeout
    if limit <= 0:
        return (
            "broker is AMQP and CANVASFLOW_AMQP_CONSUMER_TIMEOUT=0 says its consumer_timeout "
            "is disabled: a step may hold its message for as long as it runs"
        )
    return (
        f"broker is AMQP: RabbitMQ closes the channel of a worker that holds a step's message "
        f"longer than its consumer_timeout (CANVASFLOW_AMQP_CONSUMER_TIMEOUT={limit} s) and "
        f"hands the step to another worker; give longer steps a timeout below {limit} s, or raise "
        f"consumer_timeout in rabbitmq.conf and CANVASFLOW_AMQP_CONSUMER_TIMEOUT with it "
        f"(docs/operations.md, 'RabbitMQ as broker')"
    )


def create_worker_app(
    settings: Settings | None = None,
    registry: Registry | None = None,
    *,
    redis_client: redis.Redis | None = None,
) -> Celery:
    """A Celery app with canvasflow's tasks registered and the plugin catalog published.

    ``redis_client`` replaces the connections to ``settings.redis_url`` (the in-process runner,
    workers/testing.py, passes a fake Redis).
    """
    settings = settings or Settings.from_env()
    app = create_celery(settings)
    app.conf.update(broker.worker_celery_options(settings))
    registry = registry or Registry.discover(extra={"builtin": Builtin})
    if "builtin" in registry.names():
        registry.configure("builtin", call_allow=settings.call_allow)
    keys = Keys(settings.key_prefix)
    # The catalog and liveness writes run in the worker's main process: they must not wait
    # through an outage. The step path's own client does (broker.Patient).
    client = redis_client or state_redis(settings, socket_timeout=30, health_check_interval=30)
    step_client = redis_client or state_redis(settings, socket_timeout=30, health_check_interval=30)
    state = RunState(
        step_client, keys, state_ttl=settings.state_ttl, maxlen=settings.event_stream_maxlen
    )
    patient = broker.Patient(state, settings.redis_retry_seconds)
    dispatcher = Dispatcher(app, settings, patient)  # type: ignore[arg-type]
    rt = steps.Runtime(patient, registry, settings, dispatcher)  # type: ignore[arg-type]
    # The runs a settle here admits to the concurrency slot it freed are sent from here.
    state.on_admit = dispatcher.admitted

    class StepRequest(Request):
        """Celery's request, plus canvasflow's recovery when a step is killed at its hard limit,
        and a message handed back (not acknowledged) when what follows could not be published."""

        def on_failure(
            self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
        ) -> None:
            exc = getattr(exc_info, "exception", None)
            exc = getattr(exc, "exc", exc)  # billiard's ExceptionWithTraceback
            if self.task.acks_late and exc is not None and broker.is_transient(exc):
                # Celery acknowledges a task that failed, and a failure to publish the next link
                # past the retry budget is one: the run would stop there. Requeue instead; the
                # copy re-sends the continuation (step.py, 'settled' by the same task).
                log.error(
                    "canvasflow: %s[%s]: %s; handing its message back", self.task.name, self.id, exc
                )
                task_ready(self)
                self.reject(requeue=True)
                return
            super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

        def on_timeout(self, soft: bool, timeout: float) -> None:
            super().on_timeout(soft, timeout)
            if not soft:
                try:
                    if self.task.name == ITEM_TASK:
                        mapstep.on_item_hard_timeout(rt, self.args, timeout)
                        return
                    steps.on_hard_timeout(rt, self.args, timeout)
                except Exception:
                    log.exception("canvasflow: could not recover from a hard time limit")

    rt.mapped = mapstep
    rt.revoke = lambda task_id: app.control.revoke(task_id, terminate=True, signal="SIGTERM")
    app.canvasflow_runtime = rt  # type: ignore[attr-defined]
    app.canvasflow_settings = settings  # type: ignore[attr-defined]

    # ignore_result: run state lives in canvasflow's own keys and nothing waits on a Celery
    # result, so the result backend write (a round trip per task) is skipped. Chords still
    # work: Celery hands a header task's return value to the chord counter either way.
    # max_retries=None on the task: ``self.retry(max_retries=None)`` means "the task's own
    # limit", Celery's default 3, and a step with more retries, or a settle waiting for running
    # steps, would stop with MaxRetriesExceededError and strand its run. Steps count their own.
    # shared=False: these tasks close over this app's runtime; shared, Celery would keep them
    # for ever and add them to every app created after (a process that builds several apps,
    # tests and the in-process runner, would never let one go).
    @app.task(
        shared=False,
        name=STEP_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        Request=StepRequest,
        ignore_result=True,
        max_retries=None,
    )
    def step(self: Task, incoming: Any, spec: Any, hdr: dict | None = None) -> Any:
        with broker.hand_back_on_outage(self):
            return steps.run_step(self, rt, incoming, spec, hdr)

    @app.task(
        shared=False,
        name=ITEM_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        Request=StepRequest,
        ignore_result=True,
        max_retries=None,
    )
    def item(self: Task, spec: Any, hdr: Any, index: int, lane: int, upstream: Any) -> Any:
        with broker.hand_back_on_outage(self):
            return mapstep.run_item(self, rt, spec, hdr, index, lane, upstream)

    @app.task(
        shared=False,
        name=COLLECT_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        Request=StepRequest,
        ignore_result=True,
        max_retries=None,
    )
    def collect(self: Task, results: Any, spec: Any, hdr: Any) -> Any:
        with broker.hand_back_on_outage(self):
            return mapstep.collect(self, rt, spec, hdr)

    @app.task(shared=False, name=MERGE_TASK, ignore_result=True)
    def merge(incoming: Any, hdr: dict) -> Any:
        return stepcore.merge(incoming)

    @app.task(
        shared=False,
        name=SETTLE_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=None,
        Request=StepRequest,
    )
    def settle(self: Task, incoming: Any, hdr: dict) -> str:
        with broker.hand_back_on_outage(self):
            return str(steps.safe_settle(self, rt, hdr))

    @app.task(
        shared=False,
        name=COMPENSATE_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=None,
        Request=StepRequest,
    )
    def compensate(self: Task, prev: Any, spec: dict, hdr: dict) -> Any:
        with broker.hand_back_on_outage(self):
            return compensation.safe_compensate(self, rt, prev, spec, hdr)

    @app.task(
        shared=False,
        name=COMPENSATED_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
    )
    def compensated(self: Task, prev: Any, hdr: dict, target: str) -> str:
        with broker.hand_back_on_outage(self):
            return str(compensation.compensated(rt, prev, hdr, target, app))

    @app.task(
        shared=False,
        name=subrun.JOIN_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=None,
        Request=StepRequest,
    )
    def child_joined(
        self: Task, known: Any, wire: Any, child_id: str, owner: str, attempt: int, started: float
    ) -> Any:
        with broker.hand_back_on_outage(self):
            return steps.join_child(self, rt, known, wire, child_id, owner, attempt, started)

    # Every message of these tasks is checked before Celery handles it (workers/guard.py). The
    # guard writes from the main process, with the state as it is (not patient: it must not
    # stall the consumer; it hands the message back if Redis does not answer).
    message_guard = guard.Guard(state, Dispatcher(app, settings, state), settings)
    # Outgoing notifications, on the "notify" queue; their messages are guarded too (a refused
    # one names no run: it is dead-lettered and acknowledged).
    notify_dispatch, notify_deliver = notify_tasks.register(app, settings)
    for task in (
        step,
        item,
        collect,
        merge,
        settle,
        compensate,
        compensated,
        child_joined,
        notify_dispatch,
        notify_deliver,
    ):
        task.Strategy = message_guard.strategy

    def publish_catalog(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is not app:
            return  # another app in this process (tests build several)
        hostname = getattr(sender, "hostname", None) or os.uname().nodename
        queues = []
        try:
            queues = sorted(q.name for q in app.amqp.queues.consume_from.values())
        except Exception:
            pass
        entry = catalog_entry(registry, settings, queues)
        published[hostname] = json.dumps(entry)
        client.hset(keys.catalog, hostname, published[hostname])
        client.set(keys.worker_alive(hostname), "1", ex=ALIVE_TTL)
        pool_module = type(getattr(sender, "pool", None)).__module__
        if not pool_module.endswith("prefork"):
            log.warning(
                "canvasflow: the %s pool does not enforce step timeouts; steps with a timeout "
                "need the prefork pool (-P prefork)",
                pool_module.rsplit(".", 1)[-1],
            )
        if settings.broker_is_amqp:
            log.warning("canvasflow: %s", amqp_consumer_timeout_note(settings))
        log.info(
            "canvasflow: published %d plugins for %s; builtin.call: %s",
            len(entry["plugins"]),
            hostname,
            callallow.describe(settings.call_allow),
        )

    def withdraw_catalog(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is not app:
            return
        hostname = getattr(sender, "hostname", None)
        if hostname:
            published.pop(hostname, None)
            try:
                client.hdel(keys.catalog, hostname)
            except redis.RedisError:
                pass

    last_beat = [0.0]
    published: dict[str, str] = {}  # hostname -> the catalog entry it published

    def heartbeat(sender: Any = None, **_: Any) -> None:
        # Celery sends a heartbeat every 2 s; refreshing every 10 s is plenty for a 30 s TTL.
        now = time.monotonic()
        if now - last_beat[0] < ALIVE_TTL / 3:
            return
        last_beat[0] = now
        hostname = getattr(getattr(sender, "eventer", None), "hostname", None)
        if hostname:
            try:
                pipe = client.pipeline(transaction=False)
                pipe.set(keys.worker_alive(hostname), "1", ex=ALIVE_TTL)
                if hostname in published:
                    # A Redis that restarted empty lost the catalog: without it this worker's
                    # queues look unserved to every submit, and plugins go unchecked.
                    pipe.hsetnx(keys.catalog, hostname, published[hostname])
                pipe.execute()
            except redis.RedisError:
                log.warning("canvasflow: could not refresh the liveness of %s", hostname)

    # Weak receivers held by the app: they go when the app goes (an app of a test, or of the
    # in-process runner), instead of keeping it and its Redis client alive for ever.
    app.canvasflow_receivers = (publish_catalog, heartbeat, withdraw_catalog)  # type: ignore[attr-defined]
    signals.worker_ready.connect(publish_catalog)
    signals.heartbeat_sent.connect(heartbeat)
    signals.worker_shutdown.connect(withdraw_catalog)
    return app


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    global _app
    if name in ("app", "celery"):
        if _app is None:
            _app = create_worker_app()
        return _app
    raise AttributeError(name)
