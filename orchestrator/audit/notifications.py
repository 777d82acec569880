"""Outgoing notifications in the audit store: webhook endpoints, deliveries, attempts.

Endpoints are fleet settings (never definition fields: URLs and secrets do not belong in a
workflow file). A delivery is one (endpoint, run, event, status seq); its id is a hash of those,
so however often the recorder hands the same event on, the insert finds the row and nothing is
sent twice. A delivery is ``pending`` until a worker claims it (``sending``, for a lease), then
``delivered``, or ``pending`` again for its next attempt, or ``dead`` once ``attempt_limit``
attempts failed: the dead-letter list, which an admin replays. The sending itself (HTTP,
signatures, Celery) is orchestrator/engine/notify.py; this module only reads and writes rows.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from orchestrator.audit.models import (
    notify_attempts,
    notify_deliveries,
    notify_endpoints,
    runs,
)
from orchestrator.audit.store import AuditStore
from orchestrator.errors import CanvasflowError

EVENTS = (
    "completed",
    "failed",
    "cancelled",
    "compensation_failed",
    "sla_warning",
    "sla_breached",
)
DEFAULT_EVENTS = ("failed", "compensation_failed", "sla_breached")
FORMATS = ("json", "slack")
DELIVERY_STATUSES = ("pending", "sending", "delivered", "dead")
MAX_URL = 2000
MIN_SECRET = 16
MAX_SECRET = 128
MAX_FILTERS = 100
MAX_NAME = 200
MAX_ERROR = 2000


class EndpointError(CanvasflowError, ValueError):
    """Raised when a notification endpoint's settings are invalid; ``problems`` lists each
    as ``path: what is wrong``."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class UnknownEndpoint(CanvasflowError, LookupError):
    """Raised when no notification endpoint has the id asked for."""

    def __init__(self, endpoint_id: str):
        self.endpoint_id = endpoint_id
        super().__init__(f"no notification endpoint {endpoint_id!r} (canvasflow notify list)")


class UnknownDelivery(CanvasflowError, LookupError):
    """Raised when no notification delivery has the id asked for."""

    def __init__(self, delivery_id: str):
        self.delivery_id = delivery_id
        super().__init__(f"no notification delivery {delivery_id!r}")


class NotReplayable(CanvasflowError, ValueError):
    """Raised when a replay names a delivery that is not in the dead-letter list."""


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    events: tuple[str, ...]
    workflows: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    format: str = "json"
    description: str | None = None
    enabled: bool = True
    created_at: float = 0.0
    created_by: str | None = None
    secret: str = field(default="", repr=False)

    def matches(self, event: str, workflow: str, tags: Iterable[str]) -> bool:
        """Subscribed to ``event`` and, when filters are set, the run's workflow and a tag."""
        if not self.enabled or event not in self.events:
            return False
        if self.workflows and workflow not in self.workflows:
            return False
        return not self.tags or bool(set(self.tags) & set(tags))

    def as_dict(self) -> dict[str, Any]:
        """What the CLI and the API show: everything but the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "workflows": list(self.workflows),
            "tags": list(self.tags),
            "format": self.format,
            "description": self.description,
            "enabled": self.enabled,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


def _names(value: Any, path: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        problems.append(f"{path}: expected a list of names, got {type(value).__name__}")
        return ()
    if len(value) > MAX_FILTERS:
        problems.append(f"{path}: at most {MAX_FILTERS} entries, got {len(value)}")
        return ()
    out: list[str] = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            problems.append(f"{path}[{i}]: expected a non-empty name, got {v!r:.60}")
        elif len(v) > MAX_NAME:
            problems.append(f"{path}[{i}]: longer than {MAX_NAME} characters")
        elif v.strip() not in out:
            out.append(v.strip())
    return tuple(out)


def check_url(url: Any) -> list[str]:
    """The problems of a webhook URL (empty when it is an http or https URL with a host)."""
    if not isinstance(url, str) or not url.strip():
        return ["url: required: the http(s) URL the notifications are POSTed to"]
    if len(url) > MAX_URL:
        return [f"url: longer than {MAX_URL} characters"]
    if any(c.isspace() or ord(c) < 32 for c in url):
        return ["url: must not contain spaces or control characters"]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return [f"url: {url[:100]!r} is not a valid URL: {exc}"]
    if parts.scheme.lower() not in ("http", "https"):
        return [
            f"url: {url[:100]!r} is not an http(s) URL (scheme {parts.scheme or 'missing'!r}); "
            "notifications are sent only over http or https"
        ]
    if not parts.hostname:
        return [f"url: {url[:100]!r} has no host"]
    return []


def check_endpoint(
    url: Any,
    *,
    events: Any = None,
    workflows: Any = None,
    tags: Any = None,
    format: Any = "json",
    secret: Any = None,
    description: Any = None,
) -> Endpoint:
    """Validate an endpoint's settings; every problem at once, each with its field's path."""
    problems = check_url(url)
    ev = DEFAULT_EVENTS if events is None else _names(events, "events", problems)
    if events is not None and not ev and not any(p.startswith("events") for p in problems):
        problems.append(f"events: at least one of {', '.join(EVENTS)}")
    for i, e in enumerate(ev):
        if e not in EVENTS:
            problems.append(f"events[{i}]: unknown event {e!r}; known: {', '.join(EVENTS)}")
    wf = _names(workflows, "workflows", problems)
    tg = _names(tags, "tags", problems)
    fmt = "json" if format is None else format
    if fmt not in FORMATS:
        problems.append(f"format: {fmt!r:.40} is not one of {', '.join(FORMATS)}")
    if secret is not None and (
        not isinstance(secret, str) or not MIN_SECRET <= len(secret) <= MAX_SECRET
    ):
        problems.append(
            f"secret: must be a string of {MIN_SECRET} to {MAX_SECRET} characters "
            "(leave it out to have one generated)"
        )
    if description is not None and (not isinstance(description, str) or len(description) > 500):
        problems.append("description: must be a string of at most 500 characters")
    if problems:
        raise EndpointError(problems)
    return Endpoint(
        id="",
        url=str(url).strip(),
        events=ev,
        workflows=wf,
        tags=tg,
        format=str(fmt),
        description=description,
        secret=secret or "",
    )


def delivery_id(endpoint_id: str, run_id: str, event: str, seq: int) -> str:
    """The one id of a delivery: the same event read twice is the same delivery."""
    raw = f"{endpoint_id}\x1f{run_id}\x1f{event}\x1f{seq}".encode()
    return "dl-" + hashlib.sha256(raw).hexdigest()[:29]


def _row_endpoint(r: Any) -> Endpoint:
    return Endpoint(
        id=r.id,
        url=r.url,
        events=tuple(json.loads(r.events)),
        workflows=tuple(json.loads(r.workflows)),
        tags=tuple(json.loads(r.tags)),
        format=r.format,
        description=r.description,
        enabled=bool(r.enabled),
        created_at=r.created_at,
        created_by=r.created_by,
        secret=r.secret,
    )


def _delivery(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "endpoint": r.endpoint_id,
        "run": r.run_id,
        "event": r.event,
        "seq": r.seq,
        "workflow": r.workflow_id,
        "status": r.status,
        "attempts": r.attempts,
        "attempt_limit": r.attempt_limit,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "next_attempt_at": r.next_attempt_at,
        "claimed_until": r.claimed_until,
        "delivered_at": r.delivered_at,
        "last_status_code": r.last_status_code,
        "last_error": r.last_error,
        "replays": r.replays,
    }


class Notifications:
    """The notification tables of one audit store."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store

    # -- endpoints ----------------------------------------------------------------------------

    def add_endpoint(self, url: Any, *, actor: str = "cli", **options: Any) -> Endpoint:
        """Check and store an endpoint; the returned Endpoint carries its secret (shown once)."""
        ep = check_endpoint(url, **options)
        now = time.time()
        ep_id = "ep-" + secrets.token_hex(5)
        row: dict[str, Any] = {
            "id": ep_id,
            "url": ep.url,
            "secret": ep.secret or secrets.token_urlsafe(32),
            "events": json.dumps(list(ep.events)),
            "workflows": json.dumps(list(ep.workflows)),
            "tags": json.dumps(list(ep.tags)),
            "format": ep.format,
            "description": ep.description,
            "enabled": True,
            "created_at": now,
            "created_by": actor[:MAX_NAME],
        }
        with self.store.begin() as conn:
            conn.execute(insert(notify_endpoints).values(**row))
        self.store.record_action(
            actor=actor,
            action="notify_add",
            target_type="notify_endpoint",
            target_id=ep_id,
            detail={"url": ep.url, "events": list(ep.events)},
        )
        return self.endpoint(ep_id)

    def endpoints(self) -> list[Endpoint]:
        with self.store.connect() as conn:
            rows = conn.execute(select(notify_endpoints).order_by(notify_endpoints.c.created_at))
            return [_row_endpoint(r) for r in rows]

    def endpoint(self, endpoint_id: str) -> Endpoint:
        with self.store.connect() as conn:
            r = conn.execute(
                select(notify_endpoints).where(notify_endpoints.c.id == str(endpoint_id)[:32])
            ).first()
        if r is None:
            raise UnknownEndpoint(endpoint_id)
        return _row_endpoint(r)

    def set_enabled(self, endpoint_id: str, enabled: bool, *, actor: str = "cli") -> Endpoint:
        """Pause (nothing is sent to it, nothing is recorded for it) or resume an endpoint."""
        self.endpoint(endpoint_id)
        with self.store.begin() as conn:
            conn.execute(
                update(notify_endpoints)
                .where(notify_endpoints.c.id == endpoint_id)
                .values(enabled=bool(enabled))
            )
        self.store.record_action(
            actor=actor,
            action="notify_enable" if enabled else "notify_disable",
            target_type="notify_endpoint",
            target_id=endpoint_id,
        )
        return self.endpoint(endpoint_id)

    def remove_endpoint(self, endpoint_id: str, *, actor: str = "cli") -> None:
        """Delete an endpoint with its deliveries and their attempts."""
        self.endpoint(endpoint_id)
        with self.store.begin() as conn:
            ids = select(notify_deliveries.c.id).where(
                notify_deliveries.c.endpoint_id == endpoint_id
            )
            conn.execute(delete(notify_attempts).where(notify_attempts.c.delivery_id.in_(ids)))
            conn.execute(
                delete(notify_deliveries).where(notify_deliveries.c.endpoint_id == endpoint_id)
            )
            conn.execute(delete(notify_endpoints).where(notify_endpoints.c.id == endpoint_id))
        self.store.record_action(
            actor=actor,
            action="notify_remove",
            target_type="notify_endpoint",
            target_id=endpoint_id,
        )

    def any_enabled(self) -> bool:
        with self.store.connect() as conn:
            n = conn.execute(
                select(func.count())
                .select_from(notify_endpoints)
                .where(notify_endpoints.c.enabled.is_(True))
            ).scalar()
        return bool(n)

    # -- runs ---------------------------------------------------------------------------------

    def run_summary(self, run_id: str) -> dict[str, Any] | None:
        """The recorded run a notification describes, or None when the store has no such run."""
        with self.store.connect() as conn:
            r = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if r is None:
            return None
        try:
            tags = json.loads(r.tags) if r.tags else []
        except ValueError:
            tags = []
        return {
            "id": r.id,
            "workflow": r.workflow_id,
            "version": r.version,
            "name": r.name,
            "status": r.status,
            "created_at": r.created_at,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "duration": r.duration,
            "error": (r.error or None) and r.error[:MAX_ERROR],
            "failed_step": r.failed_step,
            "tags": [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else [],
            "trigger_type": r.trigger_type,
            "triggered_by": r.triggered_by,
            # The trigger's name and fire time or event key (columns of issue 16 item 5, read
            # when the store has them).
            "trigger_name": r._mapping.get("trigger_name"),
            "trigger_ref": r._mapping.get("trigger_ref"),
            "sla_seconds": r.sla_seconds,
        }

    # -- deliveries ---------------------------------------------------------------------------

    def create_delivery(
        self,
        endpoint: Endpoint,
        *,
        run_id: str,
        event: str,
        seq: int,
        workflow: str,
        payload: str,
        attempt_limit: int,
    ) -> tuple[str, bool]:
        """Insert the delivery unless it exists; returns (id, whether it still needs sending:
        new, or never attempted — a dispatcher that died between insert and enqueue)."""
        did = delivery_id(endpoint.id, run_id, event, seq)
        now = time.time()
        try:
            with self.store.begin() as conn:
                conn.execute(
                    insert(notify_deliveries).values(
                        id=did,
                        endpoint_id=endpoint.id,
                        run_id=run_id,
                        event=event,
                        seq=seq,
                        workflow_id=workflow[:MAX_NAME],
                        status="pending",
                        attempts=0,
                        attempt_limit=max(1, attempt_limit),
                        payload=payload,
                        created_at=now,
                        updated_at=now,
                        next_attempt_at=now,
                    )
                )
            return did, True
        except IntegrityError:
            d = self.delivery(did)
            return did, d["status"] == "pending" and d["attempts"] == 0

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        with self.store.connect() as conn:
            r = conn.execute(
                select(notify_deliveries).where(notify_deliveries.c.id == str(delivery_id)[:64])
            ).first()
        if r is None:
            raise UnknownDelivery(delivery_id)
        return _delivery(r)

    def claim(self, delivery_id: str, lease: float) -> tuple[Endpoint, dict[str, Any], str] | None:
        """Take a pending delivery (or one whose sender's lease ran out) for one attempt.

        Returns (endpoint, delivery, payload), or None when it is delivered, dead, being sent by
        someone else, or its endpoint is gone: two copies of a task never both send.
        """
        now = time.time()
        d = notify_deliveries.c
        with self.store.begin() as conn:
            n = conn.execute(
                update(notify_deliveries)
                .where(d.id == delivery_id)
                .where(
                    (d.status == "pending") | ((d.status == "sending") & (d.claimed_until < now))
                )
                .values(status="sending", claimed_until=now + lease, updated_at=now)
            ).rowcount
            if n != 1:
                return None
            r = conn.execute(select(notify_deliveries).where(d.id == delivery_id)).one()
            e = conn.execute(
                select(notify_endpoints).where(notify_endpoints.c.id == r.endpoint_id)
            ).first()
            if e is None:
                conn.execute(delete(notify_deliveries).where(d.id == delivery_id))
                return None
        return _row_endpoint(e), _delivery(r), r.payload

    def finish_attempt(
        self,
        delivery_id: str,
        *,
        ok: bool,
        status_code: int | None,
        error: str | None,
        duration: float,
        retry_in: float,
    ) -> dict[str, Any]:
        """Log an attempt and move the delivery on: delivered, pending (retry) or dead."""
        now = time.time()
        d = notify_deliveries.c
        with self.store.begin() as conn:
            r = conn.execute(select(notify_deliveries).where(d.id == delivery_id)).first()
            if r is None:
                raise UnknownDelivery(delivery_id)
            attempt = r.attempts + 1
            conn.execute(
                insert(notify_attempts).values(
                    delivery_id=delivery_id,
                    attempt=attempt,
                    at=now,
                    status_code=status_code,
                    error=(error or None) and error[:MAX_ERROR],
                    duration=duration,
                )
            )
            if ok:
                status, nxt = "delivered", None
            elif attempt >= r.attempt_limit:
                status, nxt = "dead", None
            else:
                status, nxt = "pending", now + retry_in
            conn.execute(
                update(notify_deliveries)
                .where(d.id == delivery_id)
                .values(
                    status=status,
                    attempts=attempt,
                    claimed_until=None,
                    next_attempt_at=nxt,
                    delivered_at=now if ok else None,
                    last_status_code=status_code,
                    last_error=(error or None) and error[:MAX_ERROR],
                    updated_at=now,
                )
            )
            row = conn.execute(select(notify_deliveries).where(d.id == delivery_id)).first()
        return _delivery(row)

    def overdue(self, *, late: float, limit: int = 100) -> list[str]:
        """Deliveries ``late`` seconds past their next attempt, or whose sender's claim lapsed
        that long ago: their task message was lost (a broker that restarted empty). Each is
        given a fresh due time, so one sweep re-queues it once."""
        now = time.time()
        d = notify_deliveries.c
        with self.store.begin() as conn:
            ids = [
                r.id
                for r in conn.execute(
                    select(d.id)
                    .where(
                        ((d.status == "pending") & (d.next_attempt_at < now - late))
                        | ((d.status == "sending") & (d.claimed_until < now - late))
                    )
                    .order_by(d.updated_at)
                    .limit(limit)
                )
            ]
            if ids:
                conn.execute(
                    update(notify_deliveries)
                    .where(d.id.in_(ids))
                    .where(d.status == "pending")
                    .values(next_attempt_at=now)
                )
                conn.execute(
                    update(notify_deliveries)
                    .where(d.id.in_(ids))
                    .where(d.status == "sending")
                    .values(claimed_until=now)
                )
        return ids

    def deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        status: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The delivery log, newest first."""
        d = notify_deliveries.c
        q = select(notify_deliveries).order_by(d.created_at.desc(), d.id).limit(min(limit, 1000))
        if endpoint_id:
            q = q.where(d.endpoint_id == endpoint_id)
        if status:
            q = q.where(d.status == status)
        if run_id:
            q = q.where(d.run_id == run_id)
        with self.store.connect() as conn:
            return [_delivery(r) for r in conn.execute(q)]

    def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        a = notify_attempts.c
        with self.store.connect() as conn:
            rows = conn.execute(
                select(notify_attempts).where(a.delivery_id == delivery_id).order_by(a.attempt)
            )
            return [
                {
                    "attempt": r.attempt,
                    "at": r.at,
                    "status_code": r.status_code,
                    "error": r.error,
                    "duration": r.duration,
                }
                for r in rows
            ]

    def replay(self, delivery_id: str, *, attempt_limit: int, actor: str = "cli") -> dict[str, Any]:
        """Put a dead delivery back to pending with ``attempt_limit`` more attempts."""
        d = notify_deliveries.c
        now = time.time()
        with self.store.begin() as conn:
            r = conn.execute(select(notify_deliveries).where(d.id == delivery_id)).first()
            if r is None:
                raise UnknownDelivery(delivery_id)
            if r.status != "dead":
                raise NotReplayable(
                    f"delivery {delivery_id} is {r.status}, not dead: only dead letters are replayed"
                )
            conn.execute(
                update(notify_deliveries)
                .where(d.id == delivery_id)
                .where(d.status == "dead")
                .values(
                    status="pending",
                    attempt_limit=r.attempts + max(1, attempt_limit),
                    replays=r.replays + 1,
                    next_attempt_at=now,
                    updated_at=now,
                )
            )
        self.store.record_action(
            actor=actor,
            action="notify_replay",
            target_type="notify_delivery",
            target_id=delivery_id,
            detail={"endpoint": r.endpoint_id, "run": r.run_id, "event": r.event},
        )
        return self.delivery(delivery_id)
