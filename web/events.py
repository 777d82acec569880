"""Socket.IO: authenticated connections, subscriptions to runs, the live relay of the event
stream, and the catch-up a reconnecting client asks for.

Protocol (docs/api.md): a client connects (session cookie, or ``auth={"token": ...}``, or an
``Authorization: Bearer`` header), then emits ``subscribe`` with ``{"runs": [ids]}`` and/or
``{"all": true}`` and ``{"after": {run_id: last_seq}}``; the acknowledgement carries every event
of those runs after those seqs. Live events arrive in batches: one ``events`` message per room
(``run:<id>``, ``all``) per relay delivery, a list in stream order, so each run's events in seq
order. The relay coalesces deliveries over a few milliseconds (web/stream.py), so a busy fleet
costs one send per client per window instead of one per event. A client applies an event only
if its seq is the next one it expects, and asks ``subscribe`` again (with its ``after``) on a
gap or a reconnect. The ``all`` room gets every event except the chatty ``log``, ``progress``
and ``stats``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import request, session
from flask_socketio import SocketIO, join_room, leave_room

from web import auth
from web.itemlive import ITEMS_EVENT, ItemCoalescer, coalesce

log = logging.getLogger(__name__)

NOT_FOR_ALL = frozenset({"log", "progress", "stats", ITEMS_EVENT})
MAX_RUNS_PER_SUBSCRIBE = 200
LINE_FIELDS = ("ts", "level", "message", "entity_tag", "entity_route", "entity_id", "entity_type")
_ENTITIES = LINE_FIELDS[3:]


def log_lines(data: Any, ts: float | None = None) -> list[list[Any]]:
    """The lines of a ``log`` event's data as ``[ts, level, message, entity_tag, entity_route,
    entity_id, entity_type]`` rows, whichever shape the producer wrote: a batch
    ``{"lines": [[...], ...]}``, the columns ``{"n", "ts": [µs...], "message": [...], ...}``, or
    the one-line ``{"message", "level", "entity_*"}`` of producers before batches (``ts``, the
    event's time, stands in for a line without its own)."""
    if not isinstance(data, dict):
        return [[ts, "ERROR", f"unreadable log event: {data!r}"[:2000], None, None, None, None]]
    try:
        if "lines" in data:
            out = []
            for row in data["lines"]:
                row = list(row)[:7] + [None] * (7 - min(7, len(row)))
                out.append(
                    [
                        ts if row[0] is None else float(row[0]),
                        str(row[1] or "INFO"),
                        "" if row[2] is None else str(row[2]),
                        *row[3:],
                    ]
                )
            return out
        if "n" in data:
            n = int(data["n"])
            cols = {k: data.get(k) for k in ("level", *_ENTITIES)}
            cols = {k: v if isinstance(v, list) else [v] * n for k, v in cols.items()}
            return [
                [
                    us / 1e6,
                    cols["level"][i] or "INFO",
                    data["message"][i],
                    *(cols[k][i] for k in _ENTITIES),
                ]
                for i, us in enumerate(data["ts"])
            ]
        own = data.get("ts")
        return [
            [
                ts if own is None else float(own),
                str(data.get("level") or "INFO"),
                str(data.get("message", "")),
                *(data.get(k) for k in _ENTITIES),
            ]
        ]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return [
            [
                ts,
                "ERROR",
                f"unreadable log event ({type(exc).__name__}: {exc})",
                None,
                None,
                None,
                None,
            ]
        ]


def client_event(e: dict[str, Any]) -> dict[str, Any]:
    """An event as clients get it (relay, catch-up, subscribe replay): a ``log`` event's data is
    always ``{"lines": [...]}``, one row per line, whatever shape the producer wrote."""
    if e.get("type") == "log":
        return {**e, "data": {"lines": log_lines(e.get("data"), e.get("ts"))}}
    return e


def run_room(run_id: str) -> str:
    return f"run:{run_id}"


class Live:
    """The Socket.IO side of one web process."""

    def __init__(self, socketio: SocketIO, services: Any) -> None:
        self.socketio = socketio
        self.services = services
        self.clients: dict[str, dict[str, Any]] = {}
        self.emitted = 0  # events sent (each counted once, however many rooms it went to)
        self.messages = 0  # Socket.IO messages emitted to rooms
        # Item events of mapped steps go out folded, a summary per run and interval (itemlive.py).
        self.items = ItemCoalescer()
        socketio.on_event("connect", self.on_connect)
        socketio.on_event("disconnect", self.on_disconnect)
        socketio.on_event("subscribe", self.on_subscribe)
        socketio.on_event("unsubscribe", self.on_unsubscribe)

    # -- connection ---------------------------------------------------------------------------

    def on_connect(self, auth_data: Any = None) -> bool:
        token = auth_data.get("token") if isinstance(auth_data, dict) else None
        header = f"Bearer {token}" if token else request.headers.get("Authorization")
        user, via = auth.identify(header, session.get("user"), session.get("gen"))
        if user is None:
            raise ConnectionRefusedError("unauthorized: log in, or pass auth={'token': ...}")
        if not user.can("viewer"):  # a publisher publishes events and sees nothing
            raise ConnectionRefusedError(auth.PUBLISHER_ONLY.format(name=user.name))
        self.clients[request.sid] = {
            "user": user,
            "runs": set(),
            "all": False,
            "since": time.time(),
        }
        self.socketio.emit(
            "hello",
            {"user": user.as_dict(), "via": via, "server_time": time.time()},
            to=request.sid,
        )
        return True

    def on_disconnect(self, *_: Any) -> None:
        self.clients.pop(request.sid, None)

    # -- subscriptions ------------------------------------------------------------------------

    def on_subscribe(self, data: Any = None) -> dict[str, Any]:
        data = data if isinstance(data, dict) else {}
        client = self.clients.get(request.sid)
        if client is None:
            return {"error": "not connected"}
        runs = data.get("runs") or []
        if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
            return {"error": "runs must be a list of run ids"}
        if len(runs) > MAX_RUNS_PER_SUBSCRIBE:
            return {"error": f"at most {MAX_RUNS_PER_SUBSCRIBE} runs per subscribe"}
        after = data.get("after") if isinstance(data.get("after"), dict) else {}
        if data.get("all"):
            join_room("all")
            client["all"] = True
        missed: list[dict[str, Any]] = []
        latest: dict[str, int] = {}
        details = self.services.details
        for rid in runs:
            join_room(run_room(rid))
            client["runs"].add(rid)
            try:
                seq = int(after.get(rid, -1))
            except (TypeError, ValueError):
                seq = -1
            if seq >= 0:
                events = coalesce(details.events(rid, seq))  # thousands of item events: a few
                missed.extend(client_event(e) for e in events)
            (hot,) = self.services.client.state.runs([rid], "seq")
            latest[rid] = (
                hot.seq if hot else max([e["seq"] for e in missed if e["run"] == rid], default=0)
            )
        return {
            "subscribed": sorted(client["runs"]),
            "all": client["all"],
            "events": missed,
            "latest": latest,
        }

    def on_unsubscribe(self, data: Any = None) -> dict[str, Any]:
        data = data if isinstance(data, dict) else {}
        client = self.clients.get(request.sid)
        if client is None:
            return {"error": "not connected"}
        for rid in data.get("runs") or []:
            leave_room(run_room(str(rid)))
            client["runs"].discard(rid)
        if data.get("all"):
            leave_room("all")
            client["all"] = False
        return {"subscribed": sorted(client["runs"]), "all": client["all"]}

    # -- relay --------------------------------------------------------------------------------

    def flush_items(self) -> None:
        """Send the item summaries that are due (the relay calls it when the stream is quiet)."""
        if self.items.since:
            self.deliver([])

    def deliver(self, batch: list[dict[str, Any]]) -> None:
        """Emit a batch read from the stream to this process's subscribers: ONE ``events`` message
        per room (the run's room, and ``all``) carrying that room's events in stream order, each
        with the run's current status and step counts (one Redis round trip per batch). A message
        is encoded once per room and only for rooms somebody in this process joined."""
        rooms = self.socketio.server.manager.rooms.get("/", {})
        out: dict[str, list[dict[str, Any]]] = {}
        for e in self.items.split(batch):
            room = run_room(e["run"])
            if rooms.get(room):
                out.setdefault(room, []).append(e)
            if rooms.get("all") and e["type"] not in NOT_FOR_ALL:
                out.setdefault("all", []).append(e)
        if not out:
            return
        client = self.services.client
        runs = list(dict.fromkeys(e["run"] for events in out.values() for e in events))
        state = {
            rid: {"status": hot.status, "settled": hot.settled, "total": hot.total}
            for rid, hot in zip(runs, client.state.runs(runs, "settled", "total"), strict=True)
            if hot is not None
        }
        now = time.time()
        payloads: dict[int, dict[str, Any]] = {}

        def payload(e: dict[str, Any]) -> dict[str, Any]:
            p = payloads.get(id(e))
            if p is None:
                p = payloads[id(e)] = {
                    **client_event(e),
                    "run_state": state.get(e["run"]),
                    "relayed_at": now,
                }
            return p

        # The run rooms first: the few clients watching one run are not queued behind the many
        # in "all" (which in a threaded server each cost a handoff to a writer thread).
        for room in sorted(out, key=lambda r: r == "all"):
            self.socketio.emit(
                "events", [payload(e) for e in out[room]], to=room, namespace="/", ignore_queue=True
            )
            self.messages += 1
        self.emitted += len(payloads)
