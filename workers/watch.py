"""Which runs an operator action or a failure has touched, as one worker process sees it.

The step runtime's fast path (workers/step.py) runs a step first and records its start and end
in one round trip afterwards. That is only safe for a run nothing has happened to: no pause,
cancel, retry, resume, re-dispatch, and no failed critical step. The Lua scripts that make
those changes add the run to a sorted set and publish it on the control channel
(orchestrator/engine/runstate.py ``controlled``); this watcher, one thread per process, subscribes to
the channel, then reads the set (so nothing published in between is missed), and answers
``clean(run_id)``. While it is not subscribed — at process start, after a lost connection —
every run counts as touched, so every step asks Redis before it starts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import redis

from orchestrator.engine.runstate import CONTROL_WINDOW
from orchestrator.keys import Keys

log = logging.getLogger(__name__)

Listener = Callable[[str, str, str], None]  # (run id, action, flag)


class ControlWatch:
    """A per-process view of the runs whose steps must ask before they start."""

    def __init__(self, client: redis.Redis, keys: Keys, window: float = CONTROL_WINDOW) -> None:
        self._client = client
        self._keys = keys
        self._window = window
        self._touched: dict[str, float] = {}
        self._ready = threading.Event()
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopped = threading.Event()

    def listen(self, fn: Listener) -> None:
        """Call ``fn(run_id, action, flag)`` for every change published (in the watcher's thread)."""
        self._listeners.append(fn)

    def clean(self, run_id: str) -> bool:
        """True when this process knows for sure that nothing has touched the run."""
        self._ensure_started()
        return self._ready.is_set() and run_id not in self._touched

    def stop(self) -> None:
        """End the thread within a second (the in-process runner closes); every run counts as
        touched from then on."""
        self._stopped.set()
        self._ready.clear()

    def touch(self, run_id: str) -> None:
        """Count a run as touched from now on (a step saw it halting before the news came)."""
        self._touched[run_id] = time.time()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def _ensure_started(self) -> None:
        # The prefork pool forks worker processes after the app is built: each process needs
        # its own thread and connection.
        if self._stopped.is_set():
            return
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._ready.clear()
            self._touched = {}
            self._thread = threading.Thread(
                target=self._run, name="canvasflow-control-watch", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        delay = 0.5
        while not self._stopped.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(self._keys.control_channel)
                # The subscription is only in place once Redis confirms it; read the set after.
                deadline = time.monotonic() + 10
                while (pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
                    if time.monotonic() > deadline:
                        raise redis.ConnectionError("no subscription confirmation from Redis")
                since = time.time() - self._window
                for member in self._client.zrangebyscore(self._keys.controlled, since, "+inf"):
                    self._touched[_s(member)] = time.time()
                self._ready.set()
                delay = 0.5
                last_prune = time.monotonic()
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._handle(_s(message.get("data")))
                    if time.monotonic() - last_prune > 60:
                        last_prune = time.monotonic()
                        self._prune()
            except Exception:  # Redis away: every step asks first until we are back
                self._ready.clear()
                log.warning(
                    "canvasflow: control watch lost its subscription; retrying in %.1fs",
                    delay,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                self._stopped.wait(delay)
                delay = min(delay * 2, 10.0)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    pass

    def _handle(self, text: str) -> None:
        run_id, _, rest = text.partition(" ")
        action, _, flag = rest.partition(" ")
        if not run_id:
            return
        self._touched[run_id] = time.time()
        for fn in self._listeners:
            try:
                fn(run_id, action, flag)
            except Exception:
                log.exception("canvasflow: control listener failed for %s %s", run_id, action)

    def _prune(self) -> None:
        horizon = time.time() - self._window
        for run_id, at in list(self._touched.items()):
            if at < horizon:
                self._touched.pop(run_id, None)


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))
