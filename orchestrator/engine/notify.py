"""Outgoing notifications: which run events notify, the payloads, the signature, one attempt.

The path of a notification (docs/design.md "Notifications"):

1. The recorder hands each batch it committed to :class:`NotifyHook` (before it acknowledges the
   batch, so a recorder killed in between hands the batch on again after its restart). The hook
   picks the run events that notify and, when any endpoint exists, sends ONE Celery message for
   them to the ``notify`` queue: no SQL write, no HTTP, nothing else on the recorder's path.
2. :func:`dispatch` (the ``canvasflow.notify.dispatch`` task) matches the endpoints and creates one
   delivery per (endpoint, run, event, status seq) — an insert of a derived id, so an event read
   twice creates nothing new — and names the deliveries still to be sent.
3. :func:`attempt` (the ``canvasflow.notify.deliver`` task) claims a delivery, POSTs it with a
   timeout, logs the attempt and says whether to retry (the task retries with Celery's own
   ``self.retry(countdown=...)``, exponential backoff) or whether it went to the dead letters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.audit.events import Event
from orchestrator.audit.notifications import (
    EVENTS,
    Endpoint,
    Notifications,
    UnknownDelivery,
    delivery_id,
)
from orchestrator.audit.recorder import RecorderHook
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

QUEUE = "notify"
DISPATCH_TASK = "canvasflow.notify.dispatch"
DELIVER_TASK = "canvasflow.notify.deliver"
USER_AGENT = "canvasflow-webhooks/1"
# A run status that notifies, and the event name it notifies as.
STATUS_EVENTS = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "COMPENSATION_FAILED": "compensation_failed",
}
SLA_EVENTS = {"sla_warning": "sla_warning", "sla_breached": "sla_breached"}
MAX_RESPONSE = 1024  # bytes of a receiver's answer kept in the attempt log
MAX_ITEMS = 500  # notifying events in one dispatch message (a recorder batch is at most 500)
# A sender's claim on a delivery lasts its timeout plus this: room to record the attempt.
LEASE_GRACE = 10.0


def notifying(events: Iterable[Event]) -> list[dict[str, Any]]:
    """The events of a batch that notify, as the dispatch task's argument (plain JSON)."""
    out: list[dict[str, Any]] = []
    for e in events:
        if e.type == "run_status_changed":
            name = STATUS_EVENTS.get(e.status)
        else:
            name = SLA_EVENTS.get(e.type)
        if name:
            item: dict[str, Any] = {"run": e.run, "seq": e.seq, "event": name, "ts": e.ts}
            if name.startswith("sla_"):
                data = e.data
                item["sla"] = {
                    k: data[k]
                    for k in ("elapsed", "sla_seconds")
                    if isinstance(data.get(k), (int, float))
                }
            out.append(item)
    return out


class NotifyHook(RecorderHook):
    """The recorder's side: one Celery message on ``notify`` per batch with notifying events.

    ``send`` publishes the message (a Celery app's ``send_task``); ``has_endpoints`` says
    whether any endpoint exists, so that a fleet without endpoints queues nothing. It is asked
    only for batches with a notifying event, and a yes is kept for ``ttl`` seconds (a no never
    is: an endpoint just added must not miss the next run's end; a message queued after the last
    endpoint went finds nothing to send).
    """

    def __init__(self, send: Any, has_endpoints: Any, ttl: float = 5.0) -> None:
        self.send = send
        self.has_endpoints = has_endpoints
        self.ttl = ttl
        self._yes_until = 0.0
        self.sent = 0

    def _any(self) -> bool:
        now = time.monotonic()
        if now < self._yes_until:
            return True
        if self.has_endpoints():
            self._yes_until = now + self.ttl
            return True
        return False

    def before_ack(self, events: Sequence[Event]) -> None:
        items = notifying(events)
        if not items or not self._any():
            return
        for i in range(0, len(items), MAX_ITEMS):
            self.send(DISPATCH_TASK, args=[items[i : i + MAX_ITEMS]], queue=QUEUE)
            self.sent += 1


def recorder_hook(settings: Settings, store: Any) -> NotifyHook:
    """The hook a recorder process adds: sends with a sender-only Celery app of ``settings``."""
    from orchestrator.engine.celery_app import create_celery

    app = create_celery(settings, sender=True)
    # No task-sent event per message: it is a second publish on the recorder's path, and the
    # workers' received/started/succeeded events still show each task (measured: about half of
    # the cost of a send; docs/performance.md "Notifications").
    app.conf.task_send_sent_event = False
    notes = Notifications(store)

    def send(name: str, *, args: list[Any], queue: str) -> None:
        # A short publish retry: the recorder's loop must not wait long on a broker outage (the
        # batch is then retried, and the hook called again, by the recorder itself).
        app.send_task(
            name,
            args=args,
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
        )

    return NotifyHook(send, notes.any_enabled)


# -- payloads -------------------------------------------------------------------------------------


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def run_link(settings: Settings, run_id: str) -> str | None:
    base = settings.public_url.rstrip("/")
    return f"{base}/runs/{run_id}" if base else None


def json_payload(
    item: dict[str, Any], run: dict[str, Any], settings: Settings, endpoint: Endpoint, did: str
) -> dict[str, Any]:
    """The JSON body of a notification: the event and the run's summary, with a link to it."""
    body: dict[str, Any] = {
        "event": item["event"],
        "delivery": did,
        "endpoint": endpoint.id,
        "occurred_at": iso(item.get("ts")),
        "run": {
            "id": run["id"],
            "workflow": run["workflow"],
            "version": run["version"] or None,
            "name": run["name"],
            "status": run["status"],
            "created_at": iso(run["created_at"]),
            "started_at": iso(run["started_at"]),
            "finished_at": iso(run["finished_at"]),
            "duration": run["duration"],
            "error": run["error"],
            "failed_step": run["failed_step"],
            "tags": run["tags"],
            "trigger_type": run["trigger_type"],
            "triggered_by": run["triggered_by"],
            "trigger": {
                "type": run["trigger_type"],
                "name": run.get("trigger_name"),
                "ref": run.get("trigger_ref"),
                "by": run["triggered_by"],
            },
            "url": run_link(settings, run["id"]),
        },
    }
    if "sla" in item:
        body["sla"] = item["sla"]
    return body


SLACK_ICONS = {
    "completed": ":white_check_mark:",
    "failed": ":x:",
    "cancelled": ":no_entry_sign:",
    "compensation_failed": ":rotating_light:",
    "sla_warning": ":warning:",
    "sla_breached": ":alarm_clock:",
}


def slack_payload(body: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body ({"text": ...}) carrying the same facts as the JSON one."""
    run = body["run"]
    event = body["event"].replace("_", " ")
    # Slack's link syntax: <url|label>.
    name = "<" + "|".join((run["url"], run["id"])) + ">" if run["url"] else run["id"]
    text = f"{SLACK_ICONS.get(body['event'], '')} canvasflow: run {name} of *{run['workflow']}*"
    text += f" {event}" if not body["event"].startswith("sla_") else f": {event}"
    if run.get("failed_step"):
        text += f" at step `{run['failed_step']}`"
    if run.get("error"):
        text += f"\n> {run['error'][:500]}"
    return {"text": text.strip(), "canvasflow": body}


def render(
    item: dict[str, Any], run: dict[str, Any], settings: Settings, endpoint: Endpoint, did: str
) -> str:
    body = json_payload(item, run, settings, endpoint, did)
    if endpoint.format == "slack":
        body = slack_payload(body)
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


# -- signatures -----------------------------------------------------------------------------------


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>`` with the endpoint's secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str, tolerance: float = 300) -> bool:
    """What a receiver does (docs/operations.md): recent timestamp, matching signature."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(signature(secret, timestamp, body), header)


def headers(endpoint: Endpoint, did: str, event: str, body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Canvasflow-Event": event,
        "X-Canvasflow-Delivery": did,
        "X-Canvasflow-Timestamp": ts,
        "X-Canvasflow-Signature": signature(endpoint.secret, ts, body),
    }


# -- dispatch and delivery ------------------------------------------------------------------------


def dispatch(notes: Notifications, settings: Settings, items: Any) -> list[str]:
    """Create the deliveries of notifying events; returns the ids to send now."""
    if not isinstance(items, list):
        log.error("notify dispatch: expected a list of events, got %s", type(items).__name__)
        return []
    endpoints = [e for e in notes.endpoints() if e.enabled]
    if not endpoints:
        return []
    out: list[str] = []
    for item in items[:MAX_ITEMS]:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("run"), str)
            and isinstance(item.get("seq"), int)
            and item.get("event") in EVENTS
        ):
            log.error("notify dispatch: not a notifying event: %.200r", item)
            continue
        ts = item.get("ts")
        if not isinstance(ts, (int, float)) or not 0 < ts < 1e11:
            item = {**item, "ts": None}
        if not isinstance(item.get("sla", {}), dict):
            item = {k: v for k, v in item.items() if k != "sla"}
        run = notes.run_summary(item["run"])
        if run is None:  # the recorder commits before it hands events on: a run it never had
            log.warning("notify dispatch: run %s is not in the audit store", item["run"])
            continue
        for ep in endpoints:
            if not ep.matches(item["event"], run["workflow"], run["tags"]):
                continue
            did_ = delivery_id(ep.id, item["run"], item["event"], item["seq"])
            did, send = notes.create_delivery(
                ep,
                run_id=run["id"],
                event=item["event"],
                seq=item["seq"],
                workflow=run["workflow"],
                payload=render(item, run, settings, ep, did_),
                attempt_limit=settings.notify_max_attempts,
            )
            if send:
                out.append(did)
    return out


@dataclass(frozen=True)
class Outcome:
    # delivered | pending (retry after ``retry_in``) | dead | skipped (nothing to do) |
    # busy (another sender holds it: look again after ``retry_in``)
    status: str
    retry_in: float = 0.0
    status_code: int | None = None
    error: str | None = None


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: base * 2**(attempt - 1), capped."""
    return float(
        min(settings.notify_backoff_max, settings.notify_backoff * 2 ** max(0, attempt - 1))
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is an answer, not an instruction to re-POST somewhere else


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(
    url: str, body: bytes, hdrs: dict[str, str], timeout: float
) -> tuple[int | None, str | None]:
    """POST once; (status code, error) — error None for a 2xx answer."""
    req = urllib.request.Request(url, data=body, headers=hdrs, method="POST")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            resp.read(MAX_RESPONSE)
            code = int(resp.status)
    except urllib.error.HTTPError as exc:
        try:
            text = exc.read(MAX_RESPONSE).decode("utf-8", "replace")
        except Exception:
            text = ""
        return exc.code, f"HTTP {exc.code} {exc.reason}" + (f": {text[:300]}" if text else "")
    except Exception as exc:  # noqa: BLE001 - whatever ends an attempt is that attempt's error
        # URLError, OSError, http.client's IncompleteRead and BadStatusLine, the task's soft
        # time limit: each is a failed attempt, logged and retried, never a task crash that
        # would leave the delivery claimed.
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}"[:MAX_RESPONSE]
    if 200 <= code < 300:
        return code, None
    return code, f"HTTP {code}"


def attempt(notes: Notifications, settings: Settings, did: str) -> Outcome:
    """Claim the delivery, POST it, log the attempt; what the task does next is the Outcome."""
    timeout = float(settings.notify_timeout)
    claimed = notes.claim(did, lease=timeout + LEASE_GRACE)
    if claimed is None:
        try:
            held = notes.delivery(did)
        except UnknownDelivery:
            return Outcome("skipped")  # its endpoint was removed
        if held["status"] == "sending":
            # Another copy holds it — or held it and died (a prefork child killed mid-POST is
            # requeued at once): come back when its lease has lapsed, never drop it.
            wait = max(1.0, (held["claimed_until"] or 0.0) - time.time() + 1.0)
            return Outcome("busy", retry_in=wait)
        return Outcome("skipped")  # delivered or dead
    endpoint, delivery, payload = claimed
    body = payload.encode()
    started = time.monotonic()
    code, error = post(endpoint.url, body, headers(endpoint, did, delivery["event"], body), timeout)
    duration = time.monotonic() - started
    retry_in = backoff(settings, delivery["attempts"] + 1)
    row = notes.finish_attempt(
        did,
        ok=error is None,
        status_code=code,
        error=error,
        duration=duration,
        retry_in=retry_in,
    )
    if row["status"] == "dead":
        log.warning(
            "notification %s to %s: attempt %d failed (%s); dead-lettered",
            did,
            endpoint.id,
            row["attempts"],
            error,
        )
    return Outcome(row["status"], retry_in, code, error)


def enqueue(app: Any, delivery_id: str) -> None:
    """Send a delivery task (a replay) to the ``notify`` queue."""
    app.send_task(DELIVER_TASK, args=[delivery_id], queue=QUEUE)


def send_test(endpoint: Endpoint, settings: Settings) -> tuple[int | None, str | None, float]:
    """POST a signed ``test`` event to an endpoint now, from this process (not logged, not
    retried): (status code, error or None, seconds)."""
    body = json.dumps(
        {
            "event": "test",
            "delivery": "test",
            "endpoint": endpoint.id,
            "occurred_at": iso(time.time()),
            "message": "a test notification from canvasflow",
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    if endpoint.format == "slack":
        body = json.dumps(
            {"text": "canvasflow: a test notification", "canvasflow": json.loads(body)}
        )
    raw = body.encode()
    started = time.monotonic()
    code, error = post(
        endpoint.url, raw, headers(endpoint, "test", "test", raw), float(settings.notify_timeout)
    )
    return code, error, time.monotonic() - started
