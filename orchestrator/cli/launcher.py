"""Start and stop a local fleet of canvasflow processes (the demo, and tests of the demo).

Processes are started the way a user starts them: ``celery -A workers.app worker`` and
``canvasflow <command>`` subprocesses with CANVASFLOW_* variables, so the orchestrator
package never imports the worker or web packages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.connect import state_redis
from orchestrator.errors import ConfigurationError
from orchestrator.keys import Keys
from orchestrator.settings import Settings


@dataclass
class Fleet:
    settings: Settings
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.settings.as_env()}
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{name}.log"
        fh = open(path, "ab")  # noqa: SIM115 - the child owns it; closed when we stop
        proc = subprocess.Popen(
            argv, env=self._env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        fh.close()
        self.procs[name] = proc
        self.logs[name] = path
        return proc

    def start_worker(
        self,
        name: str = "worker",
        queues: str = "default,io,notify",
        concurrency: int = 2,
        timeout: float = 60,
    ) -> str:
        hostname = f"{name}@{os.uname().nodename}"
        self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "worker",
                "-n",
                hostname,
                "-Q",
                queues,
                "-c",
                str(concurrency),
                "-l",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
        )
        client = state_redis(self.settings)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if client.hexists(Keys(self.settings.key_prefix).catalog, hostname):
                    return hostname
                if self.procs[name].poll() is not None:
                    break
                time.sleep(0.1)
        finally:
            client.close()
        tail = self.logs[name].read_text(errors="replace")[-2000:]
        raise ConfigurationError(
            f"worker '{name}' did not start; its log ({self.logs[name]}) ends with:\n{tail}"
        )

    def alive(self) -> dict[str, bool]:
        return {n: p.poll() is None for n, p in self.procs.items()}

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        self.procs.clear()
