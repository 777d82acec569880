"""A small TCP load balancer for tests: round-robin per connection over loopback backends, as a
non-sticky load balancer (nginx ``stream`` without ``hash``, HAProxy ``mode tcp`` with
``balance roundrobin``) spreads connections over several web processes."""

from __future__ import annotations

import contextlib
import socket
import threading


class RoundRobinProxy:
    """Listens on a free 127.0.0.1 port; every accepted connection goes to the next backend
    (``route(i)`` sends the next one to backend ``i`` instead) and its bytes are copied both
    ways until either side closes. ``routed`` lists the backend index of every connection.

    ``sticky=True`` sends every connection to the first backend instead, as a balancer with
    client-IP affinity (nginx ``ip_hash``) does for clients that all come from one address."""

    def __init__(self, backends: list[tuple[str, int]], *, sticky: bool = False) -> None:
        self.backends = backends
        self.sticky = sticky
        self.routed: list[int] = []
        self._next = 0
        self._forced: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, name="rr-proxy", daemon=True)
        self._thread.start()

    def route(self, index: int) -> None:
        """Send the next connection to backend ``index`` (then round-robin goes on after it)."""
        with self._lock:
            self._forced = index

    def _pick(self) -> int:
        with self._lock:
            if self.sticky:
                i = 0
            elif self._forced is not None:
                i, self._forced = self._forced, None
            else:
                i = self._next
            self._next = (i + 1) % len(self.backends)
            self.routed.append(i)
            return i

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            i = self._pick()
            try:
                upstream = socket.create_connection(self.backends[i], timeout=10)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            conn.settimeout(None)
            with self._lock:
                self._sockets.update((conn, upstream))
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # One side closed: close both, so the other pump and both peers see the end.
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._sockets.difference_update((src, dst))

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(5)
        with self._lock:
            open_ = list(self._sockets)
        for s in open_:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
