"""A real three-master Redis Cluster on free local ports, for the tests that check what runs on
one (tests/test_cluster_slots.py): three ``redis-server --cluster-enabled yes`` processes joined
by ``redis-cli --cluster create``, in a temporary directory, stopped and removed afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A port free now whose cluster bus port (port + 10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class LocalCluster:
    """Three masters, no replicas, all slots assigned; ``url`` is a seed node for RedisCluster."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = workdir
        self.masters = masters
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 60) -> LocalCluster:
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if not server or not cli:
            raise FileNotFoundError("redis-server and redis-cli must be on PATH for a cluster")
        for _ in range(self.masters):
            port = free_port()
            node_dir = self.workdir / str(port)
            node_dir.mkdir(parents=True)
            log = (node_dir / "redis.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
            self.ports.append(port)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p).ping(), deadline, f"node {port} up")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        for port in self.ports:
            self._wait(
                lambda p=port: (
                    b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER", "INFO")
                ),
                deadline,
                f"node {port} sees cluster_state:ok",
            )
        return self

    def _wait(self, check: object, deadline: float, what: str) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():  # type: ignore[operator]
                    return
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"Redis Cluster in {self.workdir}: no {what} ({last})")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
