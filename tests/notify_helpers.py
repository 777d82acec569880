"""A local webhook receiver for the notification tests: ``http.server`` in a thread on
127.0.0.1 that records every request and answers by plan (fail the first N, hang, succeed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """``plan(n)`` gives the status for the n-th request (1-based); "hang" holds the request
    until ``release()``."""

    def __init__(self, plan: Callable[[int], int | str] = lambda n: 200) -> None:
        self.plan = plan
        self.requests: list[Received] = []
        self.hanging = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    n = len(receiver.requests) + 1
                    answer = receiver.plan(n)
                    status = 0 if answer == "hang" else int(answer)
                    receiver.requests.append(
                        Received(self.path, dict(self.headers.items()), body, status)
                    )
                if answer == "hang":
                    with receiver.lock:
                        receiver.hanging += 1
                    receiver.released.wait(120)
                    with receiver.lock:
                        receiver.hanging -= 1
                    status = 200
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up (its timeout)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.released.set()

    def by_event(self, event: str) -> list[Received]:
        return [r for r in self.requests if r.headers.get("X-Canvasflow-Event") == event]

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
