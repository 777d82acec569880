"""Which server ``python -m web`` runs, and what it does to each connection (web/serving.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading

import requests

from tests.conftest import ROOT
from web import serving


def test_the_server_is_gevent_unless_the_option_or_the_environment_says_threading():
    assert serving.choose([], {}) == "gevent"
    assert serving.choose([], {"CANVASFLOW_WEB_SERVER": "threading"}) == "threading"
    assert serving.choose(["--port", "80", "--server", "threading"], {}) == "threading"
    assert (
        serving.choose(["--server=Threading"], {"CANVASFLOW_WEB_SERVER": "gevent"}) == "threading"
    )
    assert serving.choose(["users", "list"], {"CANVASFLOW_WEB_SERVER": "gevent"}) == "gevent"


def test_a_process_gevent_has_not_patched_serves_socketio_with_threads():
    assert serving.async_mode() == "threading"
    assert serving.off_the_loop(sum, [1, 2, 3]) == 6  # no loop to keep free: runs here
    assert serving.cooperate() is None  # threads are preempted: nothing to yield to


# A greenlet parked on a socket (as the relay is in XREAD) whose data has come, and another that
# computes in five stretches, calling `pause` between them: what order do they run in?
YIELDS = textwrap.dedent("""
    import json, socket, sys, time
    from web import serving
    serving.prepare("gevent")
    import gevent

    def burn():
        t = time.perf_counter()
        while time.perf_counter() - t < 0.002:
            pass

    orders = {}
    for name, pause in (("cooperate", serving.cooperate), ("sleep(0)", lambda: time.sleep(0))):
        log = []
        waiting, peer = socket.socketpair()
        reader = gevent.spawn(lambda: (waiting.recv(1), log.append("reader")))
        gevent.sleep(0.01)  # the reader is parked in recv now
        def compute():
            for i in range(5):
                burn()
                log.append(i)
                pause()
        worker = gevent.spawn(compute)
        peer.send(b"x")
        gevent.joinall([reader, worker])
        orders[name] = log
    print(json.dumps(orders))
""")


def test_cooperate_lets_a_greenlet_whose_socket_is_ready_run_between_two_stretches_where_sleep_0_does_not():
    out = subprocess.run(
        [sys.executable, "-c", YIELDS], cwd=str(ROOT), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    orders = json.loads(out.stdout)
    assert orders["cooperate"] == [0, "reader", 1, 2, 3, 4]
    # time.sleep(0) only lets greenlets that are already runnable go: I/O waits for the end.
    assert orders["sleep(0)"] == [0, 1, 2, 3, 4, "reader"]


def nodelay_app(environ, start_response):
    """Answers with the TCP_NODELAY option of the connection it is served on."""
    sock = environ.get("werkzeug.socket") or environ["wsgi.input"].rfile.raw._sock
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(int(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))).encode()]


def test_the_threaded_server_sends_without_waiting_for_acks():
    from werkzeug.serving import make_server

    server = make_server(
        "127.0.0.1", 0, nodelay_app, threaded=True, **serving.handler_options("threading")
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert requests.get(f"http://127.0.0.1:{server.server_port}/", timeout=10).text == "1"
    finally:
        server.shutdown()
        thread.join(10)


def test_the_gevent_server_sends_without_waiting_for_acks():
    # gevent needs a process it has patched from the start, as `python -m web` is.
    script = textwrap.dedent("""
        from web import serving
        serving.prepare("gevent")
        from gevent import pywsgi
        from tests.test_web_serving import nodelay_app
        server = pywsgi.WSGIServer(("127.0.0.1", 0), nodelay_app, log=None, **serving.handler_options("gevent"))
        server.start()
        print(server.server_port, serving.async_mode(), flush=True)
        server.serve_forever()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=str(ROOT), stdout=subprocess.PIPE, text=True
    )
    try:
        port, mode = proc.stdout.readline().split()
        assert mode == "gevent"
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "1"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_password_is_hashed_before_the_user_write_takes_the_sqlite_lock(tmp_path, monkeypatch):
    # The hash runs off gevent's loop and yields it; a SQLite write lock held across that yield
    # made the embedded recorder's BEGIN IMMEDIATE busy-wait in C and hold the loop, and the
    # request with it, until the busy timeout. Another writer must get the lock while it hashes.
    import sqlite3

    from orchestrator.audit import AuditStore
    from web import auth

    path = tmp_path / "audit.db"
    store = AuditStore(f"sqlite:///{path}")
    store.upgrade()
    users = auth.Users(store, audited=False)
    hashed = []

    def hash_while_another_writer_writes(fn, *args):
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # "database is locked" if put() held the lock
            other.execute("ROLLBACK")
        finally:
            other.close()
        hashed.append(fn.__name__)
        return fn(*args)

    monkeypatch.setattr(auth, "off_the_loop", hash_while_another_writer_writes)
    users.put("ann", password="first-password", role="operator")
    users.put("ann", password="second-password")
    assert hashed == ["generate_password_hash", "generate_password_hash"]
    ann = users.verify("ann", "second-password")
    assert ann is not None and (ann.name, ann.role) == ("ann", "operator")
    store.dispose()
