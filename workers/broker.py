"""Riding out a Redis outage on the worker: patient state writes, patient publishing.

A step that cannot reach Redis for a moment (a restart, a failover, a network blip) must neither
fail nor vanish: its state writes retry with bounded backoff until Redis is back, the message
that continues its canvas is published with a retry budget as long, and when the budget
(``CANVASFLOW_REDIS_RETRY_SECONDS``) runs out the task raises :class:`RedisUnavailable`, which the
task shell turns into ``Reject(requeue=True)``: the message is not acknowledged and comes back.
Repeated writes are safe: the state scripts recognise their own attempt (orchestrator/engine/runstate.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from celery.exceptions import OperationalError, Reject
from kombu.transport import redis as kombu_redis

from orchestrator.errors import CanvasflowError
from orchestrator.fleet.inspect import broker_prefix
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

# BusyLoadingError (a restarted Redis reading its AOF back) is a ConnectionError subclass.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    OperationalError,
    ConnectionError,
    TimeoutError,
)
FIRST_DELAY = 0.05
MAX_DELAY = 2.0


class RedisUnavailable(CanvasflowError, ConnectionError):
    """Raised when Redis stayed unreachable for the whole retry budget of a step."""

    def __init__(self, what: str, seconds: float, cause: BaseException) -> None:
        super().__init__(f"Redis unreachable for {seconds:g}s during {what}: {cause}")
        self.what = what
        self.seconds = seconds
        self.cause = str(cause)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions travel from the pool process to the worker's main process pickled; one that
        # cannot be rebuilt there is an "Unrecoverable error" that stops the whole worker.
        return (type(self), (self.what, self.seconds, self.cause))


def is_transient(exc: BaseException) -> bool:
    """A connection error, or an outage that outlasted the budget (RedisUnavailable)."""
    return isinstance(exc, TRANSIENT)


def patiently(fn: Callable[..., Any], budget: float, what: str) -> Callable[..., Any]:
    """``fn`` retried on connection errors with exponential backoff for ``budget`` seconds."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + budget
        delay = FIRST_DELAY
        warned = False
        while True:
            try:
                return fn(*args, **kwargs)
            except TRANSIENT as exc:
                if isinstance(exc, RedisUnavailable):
                    raise
                if time.monotonic() + delay > deadline:
                    raise RedisUnavailable(what, budget, exc) from exc
                if not warned:
                    log.warning(
                        "canvasflow: Redis unreachable during %s (%s); retrying for up to %gs",
                        what,
                        exc,
                        budget,
                    )
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)

    return call


@contextlib.contextmanager
def hand_back_on_outage(task: Any) -> Iterator[None]:
    """Turn an outage that outlasted the retry budget into ``Reject(requeue=True)``: the message
    is not acknowledged (acks_late) and runs again once Redis is back."""
    try:
        yield
    except TRANSIENT as exc:
        log.error(
            "canvasflow: %s[%s]: %s; handing its message back", task.name, task.request.id, exc
        )
        # The reason as text: Celery pickles the Reject to the main process.
        raise Reject(f"{type(exc).__name__}: {exc}", requeue=True) from exc


class Patient:
    """A stand-in for an object (the worker's RunState) whose every method call is retried
    through a Redis outage; attributes that are not methods (``r``, ``keys``) pass through."""

    def __init__(self, target: Any, budget: float) -> None:
        self._target = target
        self._budget = budget

    @property
    def target(self) -> Any:
        return self._target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr) or name.startswith("_"):
            return attr
        return patiently(attr, self._budget, name)


def publish_retry_policy(seconds: int) -> dict[str, Any]:
    """kombu's retry policy for messages a worker publishes (the next link of a chain, a chord's
    body, a retry), bounded by about ``seconds``: 0.2 s steps up to 2 s between tries."""
    step, cap = 0.2, MAX_DELAY
    total, tries = 0.0, 0
    while total < seconds:
        tries += 1
        total += min(step * tries, cap)
    return {"max_retries": tries, "interval_start": 0, "interval_step": step, "interval_max": cap}


class _Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        # kombu (5.6) closes the channel after the transport's connection was let go on a broker
        # restart: closing restores the unacknowledged messages, which builds a new pool from
        # ``self.connection.client``, by then None, and the AttributeError that follows is not a
        # connection error, so Celery stops the whole worker ("Unrecoverable error: 'NoneType'
        # object has no attribute 'hostname'", 1 Redis restart in 3 in benchmarks/drills.py). A
        # connection error here is what kombu ignores while closing; the messages stay in the
        # unacked index and are restored by the visibility-timeout sweep.
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is already closed")
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, without the worker-killing AttributeError on a Redis restart."""

    Channel = _Channel


def worker_celery_options(settings: Settings) -> dict[str, Any]:
    """Celery settings of the worker app (not the client's) for riding out a Redis outage."""
    seconds = settings.redis_retry_seconds
    extra: dict[str, Any] = {}
    if settings.broker_url.startswith("redis://"):
        extra["broker_transport"] = f"{__name__}:RedisTransport"
    return {
        **extra,
        "task_publish_retry": True,
        "task_publish_retry_policy": publish_retry_policy(seconds),
        # The chord counter and the result backend: the Redis backend's ensure() retries for
        # this long before giving up (its default is 20 tries 1 s apart).
        "result_backend_transport_options": {
            "retry_policy": {
                "timeout": float(seconds),
                "max_retries": None,
                "interval_start": 0,
                "interval_step": 0.5,
                "interval_max": MAX_DELAY,
            },
            "global_keyprefix": broker_prefix(
                settings.key_prefix
            ),  # as in orchestrator/engine/celery_app.py
        },
        # Keep consuming after the broker connection comes back (Celery's default; stated here
        # because a worker that exits on a Redis restart is what this module exists to prevent).
        "broker_connection_retry": True,
    }
