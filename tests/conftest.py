"""Shared fixtures: real Redis, real PostgreSQL, real Celery worker processes.

A fixture that needs a service skips when the service is absent on a laptop, but fails under
CI=true: CI must never pass by skipping what matters.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# A demo that a test starts records its fleet in $XDG_STATE_HOME/canvasflow/demo.json, where CLI
# commands without settings look for it: never in the user's own state directory, where their
# commands (or another test run's) would find a test's fleet.
_STATE_HOME = tempfile.mkdtemp(prefix="canvasflow-test-state-")
os.environ["XDG_STATE_HOME"] = _STATE_HOME
atexit.register(shutil.rmtree, _STATE_HOME, True)
IN_CI = os.environ.get("CI", "").lower() == "true"
# Tests start a private redis-server of their own (a real Redis, on a free loopback port) so that
# concurrent test runs on one machine cannot steal each other's queued steps; set
# CANVASFLOW_TEST_REDIS_URL to use an existing server instead.
REDIS_URL = os.environ.get("CANVASFLOW_TEST_REDIS_URL", "")
# RabbitMQ for the `brokers` tests: each fleet gets a virtual host of its own, made (and deleted
# at the end of the session, queues and all) with rabbitmqctl, which must run on the broker's host.
AMQP_URL = os.environ.get("CANVASFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
BROKERS = ("redis", "amqp")
POSTGRES_URL = os.environ.get(
    "CANVASFLOW_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/canvasflow_test"
)


def need(what: str, reason: str) -> None:
    """Skip on a laptop without the service; fail in CI."""
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true: {reason}")
    pytest.skip(f"{what} not available: {reason}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    server = None
    url = REDIS_URL
    if not url:
        from orchestrator.cli.embedded import EmbeddedRedis
        from orchestrator.errors import ConfigurationError

        try:
            server = EmbeddedRedis()
            server.start()
        except ConfigurationError as exc:
            need("Redis", str(exc))
        url = server.url.rsplit("/", 1)[0] + "/13"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
        client.flushdb()
        client.close()
    except redis.RedisError as exc:
        need("Redis", f"{url}: {exc}")
    yield url
    if server is not None:
        server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# The modules whose functions tests run through builtin.call on real workers: each worker that
# runs them is started with CANVASFLOW_CALL_ALLOW set to this, as a user would start theirs.
TEST_CALL_ALLOW = ("tests.helpers", "tests.web_helpers", "tests.audit_steps")


def make_settings(redis_url: str, **overrides: object) -> Settings:
    prefix = overrides.pop("key_prefix", f"t{uuid.uuid4().hex[:8]}")
    return Settings(redis_url=redis_url, key_prefix=str(prefix), **overrides)  # type: ignore[arg-type]


class WorkerProcess:
    """A real `celery -A workers.app worker` subprocess, started the way a user starts it."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        queues: str = "default,io",
        concurrency: int = 2,
        pool: str = "prefork",
        extra_env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        include: str = "",
        app: str = "workers.app",
    ) -> None:
        self.settings = settings
        self.name = name
        self.hostname = f"{name}@{os.uname().nodename}"
        env = {**os.environ, **settings.as_env(), **(extra_env or {})}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        log_dir = log_dir or Path(os.environ.get("CANVASFLOW_TEST_LOGS", "/tmp"))
        self.log_path = log_dir / f"worker-{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app,
                "worker",
                "-n",
                self.hostname,
                "-Q",
                queues,
                "-c",
                str(concurrency),
                "-P",
                pool,
                "-l",
                "INFO",
                "--without-mingle",
                "--without-gossip",
                *(["-I", include] if include else []),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30) -> WorkerProcess:
        from orchestrator.connect import state_redis
        from orchestrator.keys import Keys

        client = state_redis(self.settings)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if client.hexists(Keys(self.settings.key_prefix).catalog, self.hostname):
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        finally:
            client.close()
        raise RuntimeError(f"worker {self.name} did not become ready:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool children."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self._log.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test marked `brokers` that reaches the `broker` fixture (through `client` or `broker_url`)
    # runs once per broker; every other test keeps its single Redis-broker run and its name.
    # One that takes the session fleet (`client`) also runs with the run state on a real Redis
    # Cluster ("cluster": Celery's broker and results on the plain test Redis).
    if "broker" in metafunc.fixturenames and metafunc.definition.get_closest_marker("brokers"):
        fleets = BROKERS + (("cluster",) if "client" in metafunc.fixturenames else ())
        metafunc.parametrize("broker", fleets, indirect=True)


class RabbitVhosts:
    """Virtual hosts on the test RabbitMQ: one per fleet, so that concurrent test runs (and the
    fleets of one run) never consume each other's queues; all deleted at the end."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.made: list[str] = []

    def _ctl(self, *args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    def check(self) -> None:
        import socket
        from urllib.parse import urlsplit

        where = urlsplit(self.base_url)
        host, port = where.hostname or "127.0.0.1", where.port or 5672
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            need("RabbitMQ", f"{host}:{port}: {exc} (.ci/run starts it)")
        if not shutil.which("rabbitmqctl"):
            need(
                "rabbitmqctl",
                "the tests make a virtual host per fleet with it (apt rabbitmq-server)",
            )

    def new(self) -> str:
        name = f"cf-test-{uuid.uuid4().hex[:10]}"
        try:
            self._ctl("add_vhost", name)
            self.made.append(name)
            self._ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            err = getattr(exc, "stderr", b"") or b""
            need("rabbitmqctl", f"could not make virtual host {name}: {exc} {err.decode()[-500:]}")
        return f"{self.base_url}/{name}"

    def close(self) -> None:
        for name in self.made:
            try:
                self._ctl("delete_vhost", name)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass


@pytest.fixture(scope="session")
def rabbit() -> Iterator[RabbitVhosts]:
    vhosts = RabbitVhosts(AMQP_URL)
    vhosts.check()
    yield vhosts
    vhosts.close()


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """The Celery broker of this test: "redis", or "amqp" for the second run of a `brokers` test
    ("cluster": the Redis broker, with the run state on a Redis Cluster)."""
    return str(getattr(request, "param", "redis"))


@pytest.fixture
def broker_url(broker: str, request: pytest.FixtureRequest) -> str:
    """Settings.broker_url for a test that builds its own fleet: "" (the state Redis) on Redis,
    a virtual host of the test's own on AMQP."""
    if broker == "redis":
        return ""
    return request.getfixturevalue("rabbit").new()


@pytest.fixture(scope="session")
def fleet_settings(redis_url: str) -> Settings:
    """Settings shared by the session's worker and every test that uses it."""
    return make_settings(redis_url, lease_ttl=3, visibility_timeout=60, call_allow=TEST_CALL_ALLOW)


@pytest.fixture(scope="session")
def worker(fleet_settings: Settings) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(fleet_settings, f"session-{uuid.uuid4().hex[:6]}").wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def amqp_fleet_settings(redis_url: str, rabbit: RabbitVhosts) -> Settings:
    """The session fleet's settings with RabbitMQ as Celery's broker; Redis keeps the run state."""
    return make_settings(
        redis_url,
        broker_url=rabbit.new(),
        lease_ttl=3,
        visibility_timeout=60,
        call_allow=TEST_CALL_ALLOW,
    )


@pytest.fixture(scope="session")
def amqp_worker(amqp_fleet_settings: Settings) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(amqp_fleet_settings, f"amqp-{uuid.uuid4().hex[:6]}").wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[object]:
    """A real three-master Redis Cluster of the session's own (tests/redis_cluster.py)."""
    from tests.redis_cluster import LocalCluster

    local = LocalCluster(Path(tempfile.mkdtemp(prefix="cf-cluster-")))
    try:
        local.start()
    except (FileNotFoundError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        local.stop()
        need("a local Redis Cluster", str(exc))
    yield local
    local.stop()


@pytest.fixture(scope="session")
def cluster_fleet_settings(redis_url: str, redis_cluster: Any) -> Settings:
    """The session fleet's settings with the run state on the Redis Cluster (a key prefix that is
    a hash tag) and Celery's broker and results on the plain test Redis."""
    return make_settings(
        redis_cluster.url,
        key_prefix=f"{{t{uuid.uuid4().hex[:8]}}}",
        redis_cluster=True,
        broker_url=redis_url,
        result_backend=redis_url,
        lease_ttl=3,
        visibility_timeout=60,
        call_allow=TEST_CALL_ALLOW,
    )


@pytest.fixture(scope="session")
def cluster_worker(cluster_fleet_settings: Settings) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(cluster_fleet_settings, f"cluster-{uuid.uuid4().hex[:6]}").wait_ready()
    yield proc
    proc.stop()


@pytest.fixture
def client(broker: str, request: pytest.FixtureRequest) -> Iterator[object]:
    """A client of the session fleet on this test's broker (its worker started once per session)."""
    from orchestrator import Client

    if broker == "amqp":
        settings = request.getfixturevalue("amqp_fleet_settings")
        request.getfixturevalue("amqp_worker")
    elif broker == "cluster":
        settings = request.getfixturevalue("cluster_fleet_settings")
        request.getfixturevalue("cluster_worker")
    else:
        settings = request.getfixturevalue("fleet_settings")
        request.getfixturevalue("worker")
    c = Client(settings)
    yield c
    c.close()


@pytest.fixture
def start_worker(redis_url: str) -> Iterator[object]:
    """Start extra workers for a test; all are stopped at the end."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, name: str | None = None, **kw: object) -> WorkerProcess:
        w = WorkerProcess(settings, name or f"w-{uuid.uuid4().hex[:6]}", **kw)  # type: ignore[arg-type]
        started.append(w)
        return w.wait_ready()

    yield start
    for w in started:
        w.stop()
