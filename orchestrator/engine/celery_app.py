"""The Celery configuration shared by the client (which sends) and the workers (which run)."""

from __future__ import annotations

from celery import Celery
from celery.backends.redis import RedisBackend

from orchestrator.keys import Keys
from orchestrator.model.definition import AMQP_MAX_PRIORITY
from orchestrator.settings import Settings


class SenderRedisBackend(RedisBackend):
    """The result backend of processes that only send canvas (the client, the web app).

    Celery's Redis backend subscribes to the result channel of every task a process sends, so
    that ``AsyncResult.get()`` can be woken. canvasflow never waits on task results (run state
    lives in its own keys), so a sender skips that: one less network call and no subscription
    left to unwind at exit.
    """

    def on_task_call(self, producer, task_id):  # noqa: D401 - Celery hook
        return None

    def on_result_fulfilled(self, result):  # nothing was subscribed, nothing to unsubscribe
        return None


def celery_config(settings: Settings) -> dict:
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.default_queue,
        # "normal" (orchestrator.model.definition.PRIORITIES): a message without a priority would
        # otherwise take the Redis transport's default of 0, the "high" sub-queue.
        "task_default_priority": 4,
        # A step's message is acknowledged only when the step is over, and a step whose worker
        # process died is delivered again: at-least-once, made safe by step leases.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # AMQP (RabbitMQ) redelivers on channel close and has no visibility timeout.
        "broker_transport_options": {} if settings.broker_is_amqp else redis_transport(settings),
        "result_backend_transport_options": {
            "retry_policy": {"timeout": 5.0},
            "global_keyprefix": Keys(settings.key_prefix).broker,
        },
        "result_expires": settings.result_expires,
        "broker_connection_retry_on_startup": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        **amqp_options(settings),
        **settings.extra_celery,
    }


def redis_transport(settings: Settings) -> dict:
    """kombu's Redis transport options: visibility timeout, priorities, the key prefix."""
    return {
        "visibility_timeout": settings.visibility_timeout,
        # kombu >= 5.6 sweeps for abandoned (unacked, past the timeout) messages only every
        # interval x throttle seconds (100 s by default): sweep often enough that a step
        # of a killed worker comes back soon after its visibility timeout.
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
        "unacked_restore_throttle": 1,
        # On Redis, lower numbers run first: high=0, normal=4, low=8.
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
        "sep": ":",
        # Queues and bindings live under the key prefix, so two deployments (or test
        # fleets) with different prefixes on one Redis database never take each other's
        # messages.
        "global_keyprefix": Keys(settings.key_prefix).broker,
    }


def amqp_options(settings: Settings) -> dict:
    """What an AMQP (RabbitMQ) broker needs on top (docs/operations.md "RabbitMQ as broker").

    Every queue canvasflow declares gets ``x-max-priority``, so that message priorities are
    honoured at all (a RabbitMQ queue without it ignores them); the numbers are the AMQP ones of
    orchestrator.model.definition, where higher runs first. A quorum queue
    (``task_default_queue_type="quorum"`` in ``extra_celery``) refuses ``x-max-priority``: it is
    left off, and RabbitMQ 4 serves such a queue in two levels (priority >= 5 first), which keeps
    "high" ahead of "normal" and "low".
    """
    if not settings.broker_is_amqp:
        return {}
    if settings.extra_celery.get("task_default_queue_type") == "quorum":
        return {}
    return {"task_queue_max_priority": AMQP_MAX_PRIORITY}


def create_celery(settings: Settings, name: str = "canvasflow", *, sender: bool = False) -> Celery:
    """A Celery app configured for canvasflow; tasks are registered by workers.app.

    ``sender=True`` for processes that only send canvas (see :class:`SenderRedisBackend`).
    """
    app = Celery(name, set_as_current=False)
    conf = celery_config(settings)
    if sender and conf["result_backend"].startswith(("redis://", "rediss://", "unix://")):
        conf["result_backend"] = f"{__name__}:SenderRedisBackend+{conf['result_backend']}"
    app.conf.update(conf)
    return app
