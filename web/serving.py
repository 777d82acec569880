"""Which server ``python -m web`` runs: gevent (the default) or Werkzeug's threads.

- ``gevent``: gevent's WSGI server, WebSocket through simple-websocket, Flask-SocketIO in gevent
  mode. Every connection, request and background service (relay, recorder, fleet-event capture)
  is a greenlet of one OS thread, so an event sent to 200 sockets costs 200 greenlet switches.
  It needs the standard library monkey-patched before redis, kombu, psycopg or Flask are imported:
  :func:`prepare` does it first thing in ``web/__main__.py``.
- ``threading``: Werkzeug's threaded server, Flask-SocketIO in threading mode. Each WebSocket
  client holds four threads (request, reader, writer, pinger) and every message to every client is
  a handoff to its writer thread; with hundreds of clients those handoffs, not the CPU, bound the
  delivery rate (docs/performance.md, "Dashboard"). Kept as a fallback and for the in-process app
  of the tests, which is never monkey-patched.

gevent never preempts, so long CPU work in web/ (the run detail, the runs list) calls
:func:`cooperate` between its parts; it does nothing under threads.

Imports nothing but the standard library at module level: it runs before anything else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

SERVERS = ("gevent", "threading")
DEFAULT = "gevent"
ENV = "CANVASFLOW_WEB_SERVER"


def choose(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The server asked for: ``--server NAME`` (or ``--server=NAME``), else $CANVASFLOW_WEB_SERVER,
    else gevent. Read before argparse runs, because the patching must precede every other import;
    argparse validates the same option later."""
    env = os.environ if env is None else env
    name = env.get(ENV, "") or DEFAULT
    for i, arg in enumerate(argv):
        if arg == "--server" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--server="):
            name = arg.split("=", 1)[1]
    return name.strip().lower()


def prepare(name: str) -> str:
    """Monkey-patch the standard library for gevent; return the server that will really run
    (``threading`` when gevent is not installed, with one line saying so)."""
    if name != "gevent":
        return name
    try:
        from gevent import monkey
    except ImportError:
        print(
            "canvasflow web: gevent is not installed; serving with threads "
            "(pip install gevent, or pass --server threading to silence this)",
            file=sys.stderr,
        )
        return "threading"
    monkey.patch_all()
    return "gevent"


def async_mode() -> str:
    """The Flask-SocketIO async mode that fits this process: gevent once the standard library is
    patched for it, else threading (the tests' in-process app, scripts that call create_app)."""
    monkey = sys.modules.get("gevent.monkey")
    return "gevent" if monkey is not None and monkey.is_module_patched("socket") else "threading"


def off_the_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in gevent's pool of native threads when this process runs gevent, else here.
    For pure CPU work that releases the GIL (scrypt password hashes, ~50-100 ms): run on the
    loop, it would hold up every socket, the relay included, until it returned. ``fn`` must not
    touch gevent objects (sockets, locks, queues) of the loop."""
    if async_mode() != "gevent":
        return fn(*args)
    import gevent

    return gevent.get_hub().threadpool.apply(fn, args)  # type: ignore[no-any-return]


class CpuDeadline(Exception):
    """Raised when CPU-heavy request work (parsing, validating, planning a definition) did not
    finish within CANVASFLOW_WEB_CPU_DEADLINE seconds; it has been abandoned (web answers 503)."""

    def __init__(self, deadline: float, what: str = "") -> None:
        self.deadline = deadline
        super().__init__(
            f"{what or 'this request'} took longer than {deadline:g} s of computing "
            "(CANVASFLOW_WEB_CPU_DEADLINE) and was abandoned; submit a smaller definition "
            "or raise the deadline"
        )


class _Abandoned(BaseException):
    """Raised inside an abandoned computation's thread to end it (never seen by callers)."""


def _thread_ident() -> Callable[[], int]:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return monkey.get_original("_thread", "get_ident")  # type: ignore[no-any-return]
    import threading

    return threading.get_ident


def within(deadline: float, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a native thread (gevent's pool under gevent, a new thread otherwise),
    waited for at most ``deadline`` seconds; past it, :class:`CpuDeadline`.

    For pure CPU work of requests that would otherwise hold gevent's loop for seconds (a 5 MB
    definition once held every other request for ten minutes, and SIGTERM with them): the loop
    keeps serving while it runs, since the GIL switches threads every few ms. A computation past
    its deadline is ended by an exception raised in its thread (it runs Python, so it stops at
    its next bytecode boundary) rather than left to burn a core. ``fn`` must not touch gevent
    objects (sockets, locks, queues) of the loop."""
    import ctypes
    import threading

    state: dict[str, Any] = {}
    guard = threading.Lock() if async_mode() != "gevent" else _original_lock()
    get_ident = _thread_ident()

    def work() -> Any:
        try:
            with guard:
                state["ident"] = get_ident()
            try:
                return ("ok", fn(*args))
            except Exception as exc:  # noqa: BLE001 - handed to the caller as it is
                return ("error", exc)
            finally:
                with guard:
                    state["done"] = True
        except _Abandoned:
            return ("abandoned", None)

    def abandon() -> None:
        with guard:
            if "ident" in state and "done" not in state:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(state["ident"]), ctypes.py_object(_Abandoned)
                )

    if async_mode() == "gevent":
        import gevent

        pending = gevent.get_hub().threadpool.spawn(work)
        try:
            outcome = pending.get(timeout=deadline)
        except gevent.Timeout:
            abandon()
            raise CpuDeadline(deadline) from None
    else:
        box: list[Any] = []
        thread = threading.Thread(
            target=lambda: box.append(work()), daemon=True, name="canvasflow-cpu"
        )
        thread.start()
        thread.join(deadline)
        if not box:
            abandon()
            raise CpuDeadline(deadline)
        outcome = box[0]
    kind, value = outcome
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


def _original_lock() -> Any:
    """A lock of the real threads: the computation's thread and the loop's both take it."""
    monkey = sys.modules["gevent.monkey"]
    return monkey.get_original("threading", "Lock")()


_LAST = -2  # libev's EV_MINPRI: of the watchers due in one loop turn, invoked last


def cooperate() -> None:
    """Under gevent, let every greenlet that can run now run (a relay whose XREAD has been answered,
    a socket with a frame to read), then carry on; elsewhere nothing (threads are preempted anyway).

    gevent never preempts: a request computing for 30 ms holds every socket and the relay for
    30 ms. Long CPU work (a 200-step run's detail, a page of runs) calls this between its parts,
    so no stretch lasts more than a few ms. Not ``time.sleep(0)``: patched, that queues the
    greenlet as a loop callback and gevent runs queued callbacks back to back, ~50 at a time,
    before it polls for I/O again, so a greenlet waiting on a socket (the relay) stays parked
    until the request ends (tests/test_web_serving.py shows both). A zero timer ends the loop
    turn: the loop polls, runs what became ready, then resumes the caller; at libev's lowest
    priority the timer comes after what the poll found (at the default one, libev ran it first
    and the relay waited for the caller's next stretch)."""
    if async_mode() != "gevent":
        return
    import gevent

    hub = gevent.get_hub()
    timer = hub.loop.timer(0, priority=_LAST)
    try:
        hub.wait(timer)
    finally:
        timer.close()


def _no_delay(sock: Any) -> None:
    import socket

    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not TCP (a unix socket), or already closed
        pass


def handler_options(server: str) -> dict[str, Any]:
    """The ``socketio.run()`` keyword that makes the server set TCP_NODELAY on every connection.

    gevent's WSGI handler sends a response's headers and its body in two writes; with Nagle's
    algorithm the body then waits for the client's delayed ACK of the headers, ~40 ms a request
    (measured: the runs list 102 ms under threads, 150 ms under gevent, 114 ms with this). Small
    WebSocket frames written back to back would wait the same way."""
    if server == "gevent":
        from gevent import pywsgi

        class NoDelayHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
            def handle(self) -> None:
                _no_delay(self.socket)
                super().handle()

        return {"handler_class": NoDelayHandler}
    from werkzeug.serving import WSGIRequestHandler

    class NoDelayRequestHandler(WSGIRequestHandler):
        def setup(self) -> None:
            super().setup()
            _no_delay(self.connection)

    return {"request_handler": NoDelayRequestHandler}
