"""Run a workflow in this process, for tests: a worker's step runtime on a fake Redis.

``run_inline("etl.yaml", inputs={...}, plugins=[MyPlugin])`` validates the definition, runs
every step in the calling process and returns the :class:`~orchestrator.RunSnapshot` the
``Client`` would show for the run: statuses, attempts, outputs, errors. No Redis server, no
broker, no worker process. It is canvasflow's ``task_always_eager`` (Celery), immediate mode
(huey) or test environment (Temporal).

What runs is the real thing: the worker's own Celery app (``workers.app.create_worker_app``)
with its step, settle and compensate tasks, the plugin registry, and the run state's Lua scripts
(on fakeredis, which runs Lua through lupa). Celery's eager mode walks the canvas the compiler
built; the task annotations below add what eager mode leaves out: a step's soft time limit, and
retry countdowns when asked for. docs/design.md "Testing workflows inline" says why this and not
an in-memory broker, and what differs from a fleet.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from celery import states
from celery.exceptions import Retry, SoftTimeLimitExceeded

from orchestrator.engine.client import RESTING, Client, RunSnapshot
from orchestrator.errors import CanvasflowError, ConfigurationError, PluginError
from orchestrator.model.definition import Definition, Workflow, parse_text
from orchestrator.settings import Settings
from workers.app import catalog_entry, create_worker_app
from workers.builtin import Builtin
from workers.plugins import Registry

HOSTNAME = f"inline@{socket.gethostname()}"
# The step's soft time limit rides in the eager request's headers, which Celery keeps when it
# re-applies a task for a retry (the limit itself it takes from the task class, not the call).
SOFT_LIMIT_HEADER = "canvasflow-soft-time-limit"

Plugins = Iterable[type] | Mapping[str, type] | None
DefinitionLike = Definition | Workflow | Mapping[str, Any] | str | Path


def run_inline(
    definition: DefinitionLike,
    *,
    inputs: Mapping[str, Any] | None = None,
    plugins: Plugins = None,
    settings: Settings | None = None,
    retry_delays: bool = False,
    **submit: Any,
) -> RunSnapshot:
    """Run ``definition`` (a path, YAML or JSON text, a dict, a ``Workflow`` or a
    ``Definition``) in this process and return its snapshot once it rests.

    ``plugins``: the plugin classes (``@plugin``-decorated, or a ``{name: class}`` mapping) the
    worker has besides ``builtin``; None builds the registry a worker would (entry points and
    every ``@plugin`` class imported). ``retry_delays``: wait out retry countdowns (default: a
    retry runs at once; attempts are counted all the same). ``submit``: ``Client.submit``'s
    other options (priority, tags, ...).
    """
    with InlineRunner(plugins, settings=settings, retry_delays=retry_delays) as runner:
        return runner.run(definition, inputs=inputs, **submit)


class InlineRunner:
    """One in-process worker and its fake Redis: runs as many workflows as asked, then
    ``close()`` (or ``with``). ``client`` is a ``Client`` on the same state, for anything a test
    wants to look at or do afterwards (events, ``control.retry``)."""

    def __init__(
        self,
        plugins: Plugins = None,
        *,
        settings: Settings | None = None,
        retry_delays: bool = False,
    ) -> None:
        fake = _fakeredis()
        self.retry_delays = retry_delays
        base = settings or Settings()
        self.settings = base.with_(
            # Every step asks Redis before it runs. On the fast path a step learns that its run
            # was halted (fail fast, cancel) from the control watch, a thread; inline the next
            # step starts at once, so whether it ran would depend on that thread's timing.
            fast_steps=False,
            redis_url="redis://canvasflow-inline/0",
            broker_url="memory://",
            result_backend="cache+memory://",
            extra_celery={
                **base.extra_celery,
                "task_always_eager": True,
                "task_annotations": [_Annotations(self)],
            },
        )
        self.registry = _registry(plugins)
        self.redis = fake.FakeRedis(server=fake.FakeServer())
        self.app = create_worker_app(self.settings, self.registry, redis_client=self.redis)
        entry = catalog_entry(self.registry, self.settings, [self.settings.default_queue])
        self.client = _InlineClient(entry, self.settings, celery=self.app, redis_client=self.redis)

    def run(
        self, definition: DefinitionLike, *, inputs: Mapping[str, Any] | None = None, **submit: Any
    ) -> RunSnapshot:
        """Submit and run ``definition`` here; its snapshot once the run rests."""
        if isinstance(definition, str) and ("\n" in definition or definition.lstrip()[:1] == "{"):
            definition = parse_text(definition, limits=self.settings.limits)
        defn = self.client.load(definition)
        nested = [s.id for s in defn.steps if s.workflow]
        if nested:
            # Its step task parks until the child run ends and a join task continues the canvas
            # (workers/subrun.py): Celery's eager mode has no place to park a task in.
            raise CanvasflowError(
                f"sub-workflow step(s) {', '.join(nested)} of '{defn.id}' cannot run inline: "
                "run the child workflow on its own with run_inline, and the parent on a fleet "
                "(canvasflow demo, or workers and Redis as in docs/user-guide.md)"
            )
        snap = self.client.submit(defn, inputs=inputs, **submit).snapshot()
        if snap.status not in RESTING:
            raise CanvasflowError(
                f"run {snap.id} is still {snap.status} after its canvas ran inline: "
                "something in it did not run here (see workers/testing.py)"
            )
        return snap

    __call__ = run

    def close(self) -> None:
        """Stop the runtime's threads and let the fake Redis go."""
        runtime = self.app.canvasflow_runtime  # type: ignore[attr-defined]
        runtime.heartbeat.stop()
        runtime.watch.stop()
        self.client.close()
        self.app.close()

    def __enter__(self) -> InlineRunner:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Annotations:
    """Celery task annotations (``task_annotations``) for the runner's own app: ``@apply`` and
    ``@run`` wrap those methods of each of its task classes as the class is bound."""

    def __init__(self, runner: InlineRunner) -> None:
        self.runner = runner

    def annotate(self, task: type) -> dict[str, Any] | None:
        if str(getattr(task, "name", "")).startswith("celery."):
            return None
        bound = not isinstance(inspect.getattr_static(task, "run"), staticmethod)
        return {"@apply": self.around_apply, "@run": functools.partial(self.around_run, bound)}

    def annotate_any(self) -> None:
        return None

    @staticmethod
    def around_apply(apply: Callable[..., Any]) -> Callable[..., Any]:
        def inline_apply(task: Any, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            limit = options.get("soft_time_limit")
            if limit:
                options["headers"] = {**(options.get("headers") or {}), SOFT_LIMIT_HEADER: limit}
            result = apply(task, args, kwargs, **options)
            if result.state not in (states.SUCCESS, states.RETRY):
                # A worker would log it and leave the run to the watchdog; a test wants to know.
                raise CanvasflowError(
                    f"task {task.name} ended {result.state} when run inline: {result.result!r}"
                ) from (result.result if isinstance(result.result, BaseException) else None)
            return result

        return inline_apply

    def around_run(self, bound: bool, run: Callable[..., Any]) -> Callable[..., Any]:
        def inline_run(task: Any, *args: Any, **kwargs: Any) -> Any:
            limit = (task.request.headers or {}).get(SOFT_LIMIT_HEADER)
            try:
                with soft_time_limit(limit):
                    return run(task, *args, **kwargs) if bound else run(*args, **kwargs)
            except Retry as exc:
                # Celery's eager mode runs a retry at once; asked to, wait its countdown first.
                if self.runner.retry_delays and isinstance(exc.when, int | float):
                    time.sleep(exc.when)
                raise

        return inline_run


class _InlineClient(Client):
    """A Client whose fleet is the runner's one worker: submit validates against its plugins."""

    def __init__(self, entry: Mapping[str, Any], settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._entry = entry

    def fleet(self) -> dict[str, dict[str, Any]]:
        return {HOSTNAME: {**self._entry, "online": True}}


class _Clock:
    """A task's soft time limit while it runs. Eager mode runs what a task sends inside it (the
    compensations its settle starts, say): the outer clock stops meanwhile, since on a worker
    that work would run after the task, not within its time."""

    def __init__(self, seconds: float | None, stack: list[_Clock]) -> None:
        self.seconds = seconds
        self.left = seconds or 0.0
        self.stack = stack
        self.thread = threading.get_ident()
        self.in_main = threading.current_thread() is threading.main_thread()
        self.timer: threading.Timer | None = None
        self.since = 0.0
        self.generation = 0
        self.fired = False

    def start(self) -> None:
        if self.seconds:
            self.since = time.monotonic()
            self.generation += 1
            self.timer = threading.Timer(max(self.left, 0.0), self._fire, (self.generation,))
            self.timer.daemon = True
            self.timer.start()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.left -= time.monotonic() - self.since

    def _fire(self, generation: int) -> None:
        with _clock_lock:
            if self.timer is None or generation != self.generation or self.stack[-1] is not self:
                return  # stopped meanwhile
            self.fired = True
            if self.in_main:
                signal.pthread_kill(self.thread, signal.SIGUSR1)
            else:
                _async_raise(self.thread, SoftTimeLimitExceeded)


class _Clocks(threading.local):
    def __init__(self) -> None:
        self.stack: list[_Clock] = []
        self.previous: Any = None


_clocks = _Clocks()
_clock_lock = threading.Lock()


@contextlib.contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``SoftTimeLimitExceeded`` in this thread after ``seconds`` (None: no limit) as a
    prefork worker does: in the main thread by a signal (SIGUSR1, billiard's own), which also
    interrupts a blocking call; in another thread at its next Python instruction (a blocking
    call ends first). Nested, only the innermost clock runs."""
    stack = _clocks.stack
    clock = _Clock(seconds, stack)
    with _clock_lock:
        if stack:
            stack[-1].stop()
        elif clock.in_main:
            _clocks.previous = signal.signal(signal.SIGUSR1, _expired)
        stack.append(clock)
        clock.start()
    try:
        yield
    finally:
        with _clock_lock:
            clock.stop()
            if clock.fired and not clock.in_main:
                _async_raise(clock.thread, None)  # drop one set but not raised yet
            stack.pop()
            if stack:
                stack[-1].start()
        if not stack and clock.in_main:
            # signal.signal runs a pending handler first: a late signal finds no clock.
            previous = _clocks.previous
            signal.signal(signal.SIGUSR1, previous if previous is not None else signal.SIG_DFL)


def _expired(signum: int, frame: Any) -> None:
    stack = _clocks.stack
    if stack and stack[-1].fired:
        stack[-1].fired = False
        raise SoftTimeLimitExceeded(f"soft time limit ({stack[-1].seconds}s) exceeded")


def _async_raise(thread_id: int, kind: type[BaseException] | None) -> None:
    """Raise ``kind`` in the thread at its next instruction; None (NULL) drops a pending one."""
    exc = ctypes.py_object(kind) if kind is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


def _registry(plugins: Plugins) -> Registry:
    if plugins is None:
        return Registry.discover(extra={"builtin": Builtin})
    registry = Registry()
    registry.add("builtin", Builtin)
    pairs = plugins.items() if isinstance(plugins, Mapping) else ((_name(c), c) for c in plugins)
    for name, cls in pairs:
        registry.add(name, cls)
    return registry


def _name(cls: type) -> str:
    name = vars(cls).get("canvasflow_plugin_name") if isinstance(cls, type) else None
    if not name:
        raise PluginError(
            f"{cls!r} has no plugin name: decorate it with @plugin('name') "
            "(workers.plugins) or pass plugins={'name': cls}"
        )
    return str(name)


def _fakeredis() -> Any:
    try:
        import fakeredis
        import lupa  # noqa: F401 - fakeredis runs the run state's Lua scripts with it
    except ImportError as exc:
        raise ConfigurationError(
            f"running workflows inline needs fakeredis with Lua ({exc.name} is missing): "
            "pip install 'canvasflow[testing]'"
        ) from None
    return fakeredis
