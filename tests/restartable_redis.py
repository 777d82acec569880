"""A private redis-server that a test can stop and start again on the same port, data kept."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from orchestrator.cli.embedded import _free_port, find_redis_server


class RestartableRedis:
    """AOF with ``appendfsync everysec``, as a production Redis would run: a restart keeps the
    queues and the run state, so what a test sees is the blip itself, not a data loss."""

    def __init__(self, workdir: Path) -> None:
        binary = find_redis_server()
        if not binary:
            raise RuntimeError("no redis-server")
        self.binary = binary
        self.dir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RestartableRedis:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError, OSError):
                    # LOADING is an error until the AOF is read back: wait for a real PONG
                    if client.ping():
                        return self
                time.sleep(0.02)
        finally:
            client.close()
        raise RuntimeError(f"redis-server on {self.port} did not come up")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: the AOF is flushed), as a restart by an operator does."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
