"""Which server ``python -m web`` runs, and what it does to each connection (web/serving.py)."""

from __future__ import annotations

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
    assert serving.choose(["--server=Threading"], {"CANVASFLOW_WEB_SERVER": "gevent"}) == "threading"
    assert serving.choose(["users", "list"], {"CANVASFLOW_WEB_SERVER": "gevent"}) == "gevent"


def test_a_process_gevent_has_not_patched_serves_socketio_with_threads():
    assert serving.async_mode() == "threading"
    assert serving.off_the_loop(sum, [1, 2, 3]) == 6  # no loop to keep free: runs here


def nodelay_app(environ, start_response):
    """Answers with the TCP_NODELAY option of the connection it is served on."""
    sock = environ.get("werkzeug.socket") or environ["wsgi.input"].rfile.raw._sock
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(int(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))).encode()]


def test_the_threaded_server_sends_without_waiting_for_acks():
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, nodelay_app, threaded=True, **serving.handler_options("threading"))
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
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    try:
        port, mode = proc.stdout.readline().split()
        assert mode == "gevent"
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "1"
    finally:
        proc.terminate()
        proc.wait(10)
