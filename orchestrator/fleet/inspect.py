"""Inspect and steer the Celery worker fleet: queue lengths, ``inspect`` replies, remote control.

Queue lengths are read straight from the broker: on Redis a queue with priorities is one list per
priority step (``queue`` for priority 0, ``queue:1`` .. ``queue:9``), all under the broker's
``global_keyprefix`` (``<key_prefix>:celery:``); on AMQP (RabbitMQ) a passive ``queue.declare``
answers a queue's ready messages in one number (RabbitMQ does not count them per priority).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orchestrator.errors import CanvasflowError
from orchestrator.fleet.events import worker_states
from orchestrator.keys import Keys
from orchestrator.settings import Settings

PRIORITY_STEPS = range(10)
INSPECT_TIMEOUT = 1.0
DETAIL_COMMANDS = (
    "stats",
    "active",
    "reserved",
    "scheduled",
    "revoked",
    "active_queues",
    "conf",
    "registered",
)


class FleetError(CanvasflowError):
    """Raised when a control command is refused or unknown."""


def broker_prefix(key_prefix: str) -> str:
    return Keys(key_prefix).broker


def queue_keys(key_prefix: str, queue: str, sep: str = ":") -> list[tuple[int, str]]:
    base = broker_prefix(key_prefix) + queue
    return [(p, base if p == 0 else f"{base}{sep}{p}") for p in PRIORITY_STEPS]


def queue_lengths(
    redis_client: Any, key_prefix: str, queues: Iterable[str]
) -> dict[str, dict[str, int]]:
    """{queue: {"total": n, "by_priority": {"0": n, ...}}} for each queue (absent lists count 0)."""
    names = sorted(set(queues))
    pipe = redis_client.pipeline(transaction=False)
    for q in names:
        for _, key in queue_keys(key_prefix, q):
            pipe.llen(key)
    values = iter(pipe.execute())
    out: dict[str, dict[str, Any]] = {}
    for q in names:
        by = {str(p): int(next(values)) for p in PRIORITY_STEPS}
        out[q] = {"total": sum(by.values()), "by_priority": {p: n for p, n in by.items() if n}}
    return out


def amqp_queue_lengths(celery_app: Any, queues: Iterable[str]) -> dict[str, dict[str, Any]]:
    """:func:`queue_lengths` on an AMQP broker: ready messages (delivered, unacknowledged ones
    are not counted) of each queue, 0 for a queue not declared yet; no per-priority split."""
    out: dict[str, dict[str, Any]] = {}
    with celery_app.connection_for_read() as conn:
        channel = conn.channel()
        try:
            for q in sorted(set(queues)):
                try:
                    ok = channel.queue_declare(q, passive=True)
                except conn.channel_errors:
                    # the broker closed the channel with the 404: the next queue needs a new one
                    channel = conn.channel()
                    out[q] = {"total": 0, "by_priority": {}}
                    continue
                out[q] = {"total": int(ok.message_count), "by_priority": {}}
        finally:
            conn.maybe_close_channel(channel)
    return out


def broker_queue_lengths(
    settings: Settings, redis_client: Any, celery_app: Any, queues: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Queue lengths from whichever broker ``settings`` names (Redis or AMQP)."""
    if settings.broker_is_amqp:
        return amqp_queue_lengths(celery_app, queues)
    return queue_lengths(redis_client, settings.key_prefix, queues)


def known_queues(fleet: Mapping[str, Mapping[str, Any]], default: str) -> set[str]:
    qs = {default}
    for entry in fleet.values():
        qs.update(entry.get("queues") or [])
    return qs


class Inspector:
    """``app.control.inspect`` and remote control, addressed to named workers, with short timeouts."""

    def __init__(self, celery_app: Any, timeout: float = INSPECT_TIMEOUT) -> None:
        self.app = celery_app
        self.timeout = timeout

    def _inspect(self, destination: Sequence[str] | None) -> Any:
        return self.app.control.inspect(
            list(destination) if destination else None, timeout=self.timeout
        )

    def call(self, command: str, destination: Sequence[str] | None = None) -> dict[str, Any]:
        return getattr(self._inspect(destination), command)() or {}

    def summary(self, hosts: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{host: {"stats": ..., "active_queues": [...]}} for the hosts that answer."""
        if not hosts:
            return {}
        stats = self.call("stats", hosts)
        queues = self.call("active_queues", hosts)
        return {
            h: {"stats": stats.get(h), "active_queues": queues.get(h)}
            for h in set(stats) | set(queues)
        }

    def detail(self, host: str) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for cmd in DETAIL_COMMANDS:
            out[cmd] = self.call(cmd, [host]).get(host)
            if cmd == "stats" and out[cmd] is None:
                return None  # not answering: skip the other round trips
        return out

    def details(self, hosts: Sequence[str]) -> dict[str, dict[str, Any]]:
        """:meth:`detail` for several workers, one broadcast per command (as Flower's
        ``/api/workers`` does); hosts that do not answer ``stats`` are left out."""
        if not hosts:
            return {}
        replies = {cmd: self.call(cmd, hosts) for cmd in DETAIL_COMMANDS}
        return {
            h: {cmd: replies[cmd].get(h) for cmd in DETAIL_COMMANDS}
            for h in hosts
            if h in replies["stats"]
        }

    def control(self, host: str, action: str, **params: Any) -> Any:
        """Run one control action on one worker and return its reply (None when it did not answer)."""
        ctl = self.app.control
        dest = [host]
        common = {"destination": dest, "reply": True, "timeout": self.timeout}
        if action == "pool_grow":
            replies = ctl.pool_grow(int(params.get("n", 1)), **common)
        elif action == "pool_shrink":
            replies = ctl.pool_shrink(int(params.get("n", 1)), **common)
        elif action == "pool_restart":
            replies = ctl.pool_restart(reload=bool(params.get("reload", False)), **common)
        elif action == "autoscale":
            replies = ctl.autoscale(int(params["max"]), int(params["min"]), **common)
        elif action == "add_consumer":
            replies = ctl.add_consumer(_need(params, "queue"), **common)
        elif action == "cancel_consumer":
            replies = ctl.cancel_consumer(_need(params, "queue"), **common)
        elif action == "rate_limit":
            replies = ctl.rate_limit(_need(params, "task"), str(_need(params, "rate")), **common)
        elif action == "time_limit":
            replies = ctl.time_limit(
                _need(params, "task"), soft=params.get("soft"), hard=params.get("hard"), **common
            )
        elif action == "shutdown":
            ctl.shutdown(destination=dest)
            return {"ok": "shutdown sent"}
        else:
            raise FleetError(f"unknown worker action {action!r}")
        for reply in replies or []:
            if host in reply:
                return reply[host]
        return None

    def revoke(self, task_id: str, *, terminate: bool = False, signal: str = "SIGTERM") -> None:
        self.app.control.revoke(task_id, terminate=terminate, signal=signal)


def _need(params: Mapping[str, Any], key: str) -> Any:
    if params.get(key) in (None, ""):
        raise FleetError(f"{key} is required")
    return params[key]


def worker_rows(
    fleet: Mapping[str, Mapping[str, Any]],
    events: Mapping[str, Mapping[str, Any]],
    live: Mapping[str, Mapping[str, Any]],
    totals: Mapping[str, Mapping[str, int]],
    now: float | None = None,
) -> list[dict[str, Any]]:
    """The worker list: the plugin catalog, event state (heartbeats), ``inspect`` replies and the
    task history's per-worker totals, merged per hostname."""
    now = time.time() if now is None else now
    rows = []
    for host in sorted(set(fleet) | set(events)):
        cat, ev, info = fleet.get(host, {}), events.get(host, {}), live.get(host, {})
        stats = info.get("stats") or {}
        pool = stats.get("pool") or {}
        online = bool(ev["online"]) if ev else bool(cat.get("online"))
        tot = totals.get(host, {})
        rows.append(
            {
                "name": host,
                "online": online,
                "status": "online" if online else "offline",
                "last_heartbeat": ev.get("timestamp"),
                "active": ev.get("active") if ev.get("active") is not None else None,
                "processed": ev.get("processed"),
                "succeeded": tot.get("SUCCESS", 0),
                "failed": tot.get("FAILURE", 0),
                "retried": tot.get("RETRY", 0),
                "loadavg": ev.get("loadavg") or stats.get("rusage", {}).get("loadavg"),
                "pool": {
                    "implementation": pool.get("implementation"),
                    "concurrency": len(pool["processes"])
                    if isinstance(pool.get("processes"), list)
                    else pool.get("max-concurrency"),
                    "max_concurrency": pool.get("max-concurrency"),
                    "processes": pool.get("processes"),
                    "autoscaler": stats.get("autoscaler") or None,
                },
                "prefetch_count": stats.get("prefetch_count"),
                "queues": sorted(q["name"] for q in info["active_queues"])
                if info.get("active_queues") is not None
                else sorted(cat.get("queues") or []),
                "plugins": sorted((cat.get("plugins") or {}).keys()),
                "pid": cat.get("pid") or stats.get("pid"),
                "started_at": cat.get("started_at"),
                "software": {
                    "ident": ev.get("sw_ident"),
                    "version": ev.get("sw_ver"),
                    "system": ev.get("sw_sys"),
                },
                "answered_inspect": bool(stats),
            }
        )
    return rows


def fleet_workers(
    client: Any,
    inspector: Inspector | None,
    workers_key: str,
    totals: Mapping[str, Any],
    *,
    purge_after: float | None = None,
    live: bool = True,
) -> list[dict[str, Any]]:
    fleet = client.fleet()
    events = worker_states(client.redis, workers_key, purge_after=purge_after)
    online = [
        h
        for h in set(fleet) | set(events)
        if (events[h]["online"] if h in events else fleet[h].get("online"))
    ]
    info = inspector.summary(online) if inspector is not None and live else {}
    return worker_rows(fleet, events, info, totals)
