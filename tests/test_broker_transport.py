"""The worker's broker transport survives the way kombu tears a channel down after a Redis restart.

benchmarks/drills.py saw a prefork worker stop with "Unrecoverable error: AttributeError('NoneType'
object has no attribute 'hostname')" in 1 Redis restart of 3: closing the channel restores the
unacknowledged messages, which builds a client from a connection kombu had already let go.
"""

from __future__ import annotations

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

from orchestrator.settings import Settings
from workers.app import create_worker_app
from workers.broker import RedisTransport


def _channel_with_an_unacked_message(conn: Connection) -> object:
    channel = conn.default_channel
    channel.queue_declare("cf-transport-test")
    channel.basic_publish(
        channel.prepare_message("x"), exchange="", routing_key="cf-transport-test"
    )
    message = channel.basic_get("cf-transport-test", no_ack=False)
    assert message is not None and channel.qos._delivered  # held, unacknowledged
    return channel


def _let_the_connection_go(conn: Connection) -> None:
    # What kombu leaves behind when the consumer's connection dropped: the transport no longer
    # has its client, and the channel is closed afterwards.
    conn.transport.client = None


@pytest.fixture(autouse=True)
def _no_unacked(redis_client) -> object:
    # kombu's keys here are unprefixed: start and leave them empty
    keys = ("unacked", "unacked_index", "unacked_mutex", "cf-transport-test")
    redis_client.delete(*keys)
    yield
    redis_client.delete(*keys)


def test_kombus_own_transport_dies_with_an_attribute_error_when_closing_after_the_connection_went(
    redis_url: str,
) -> None:
    conn = Connection(redis_url, transport=kombu_redis.Transport)
    channel = _channel_with_an_unacked_message(conn)
    channel._pool = None  # the pool went with the connection
    _let_the_connection_go(conn)
    with pytest.raises(AttributeError, match="hostname"):
        conn.maybe_close_channel(channel)  # ignores connection errors only


def test_the_workers_transport_closes_quietly_and_leaves_the_message_to_be_restored(
    redis_url: str, redis_client
) -> None:
    conn = Connection(redis_url, transport=RedisTransport)
    channel = _channel_with_an_unacked_message(conn)
    channel._pool = None
    _let_the_connection_go(conn)
    conn.maybe_close_channel(channel)  # a connection error kombu ignores, not an AttributeError
    assert redis_client.hlen("unacked") == 1  # still there for the visibility-timeout sweep


def test_the_worker_app_uses_it_for_a_redis_broker_and_leaves_other_brokers_alone() -> None:
    app = create_worker_app(Settings(redis_url="redis://127.0.0.1:6379/0"))
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, RedisTransport)
    other = create_worker_app(
        Settings(
            redis_url="redis://127.0.0.1:6379/0", broker_url="amqp://guest:guest@127.0.0.1:5672//"
        )
    )
    assert not other.conf.broker_transport
