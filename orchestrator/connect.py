"""The one factory of clients of the state Redis (``Settings.redis_url``): a plain Redis, or a
Redis Cluster when ``Settings.redis_cluster`` is set (docs/operations.md "Redis topologies")."""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster

from orchestrator.settings import Settings


def state_redis(settings: Settings, **options: Any) -> Any:
    """A new client of the state Redis: ``redis.Redis``, or ``redis.cluster.RedisCluster`` when
    ``settings.redis_cluster`` (same commands, routed by key slot). ``options`` go to from_url."""
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    return redis.Redis.from_url(settings.redis_url, **options)


def broker_redis(settings: Settings, state_client: Any = None, **options: Any) -> Any:
    """A client of Celery's Redis broker (its queue lists and kombu's ``unacked`` hash): the
    state client when the broker is the state Redis, else a new client of ``broker_url``; None
    when the broker is AMQP."""
    if settings.broker_is_amqp:
        return None
    if settings.broker_url == settings.redis_url and state_client is not None:
        return state_client
    return redis.Redis.from_url(settings.broker_url, **options)
