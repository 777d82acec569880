"""The notification tasks, on the ``notify`` queue: dispatch (events -> deliveries) and deliver
(one POST per attempt, Celery's own retry with exponential backoff between attempts).

Shells around orchestrator/engine/notify.py, which decides and does the work. Both are
idempotent: a dispatch run twice finds its deliveries already there, and a deliver task claims
its delivery in SQL first, so two copies never both send.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, Task

from orchestrator.audit.notifications import Notifications
from orchestrator.audit.store import AuditStore, StoreUnavailable
from orchestrator.engine import notify
from orchestrator.settings import Settings

log = logging.getLogger(__name__)
STORE_RETRY = 5  # seconds between tries while the audit store is unreachable
STORE_RETRIES = 60
OVERDUE = 600.0  # seconds past its due time after which a delivery's message counts as lost


def register(app: Celery, settings: Settings) -> tuple[Any, Any]:
    """Add the dispatch and deliver tasks to a worker app; returns them."""
    stores: dict[int, Notifications] = {}  # per process: a forked child opens its own

    def notes() -> Notifications:
        pid = os.getpid()
        if pid not in stores:
            stores.clear()
            stores[pid] = Notifications(AuditStore(settings.database_url))
        return stores[pid]

    # A receiver that hangs is cut off by the attempt's socket timeout; the time limits are the
    # backstop for one that trickles bytes forever.
    limit = settings.notify_timeout * 2 + 30

    @app.task(
        shared=False,
        name=notify.DISPATCH_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=None,
    )
    def dispatch(self: Task, items: Any) -> int:
        try:
            ids = notify.dispatch(notes(), settings, items)
        except StoreUnavailable as exc:
            if self.request.retries >= STORE_RETRIES:
                raise
            raise self.retry(exc=exc, countdown=STORE_RETRY) from None
        # Each dispatch also sweeps deliveries whose task message was lost: a delivery never
        # waits on a message that no longer exists for longer than OVERDUE after its due time.
        ids += [d for d in notes().overdue(late=OVERDUE) if d not in ids]
        for did in ids:
            deliver.apply_async(args=[did], queue=notify.QUEUE)
        return len(ids)

    @app.task(
        shared=False,
        name=notify.DELIVER_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=None,
        soft_time_limit=limit,
        time_limit=limit + 10,
    )
    def deliver(self: Task, delivery_id: Any) -> str:
        if not isinstance(delivery_id, str):
            log.error("notify deliver: not a delivery id: %.100r", delivery_id)
            return "skipped"
        try:
            outcome = notify.attempt(notes(), settings, delivery_id)
        except StoreUnavailable as exc:
            if self.request.retries >= STORE_RETRIES:
                raise
            raise self.retry(exc=exc, countdown=STORE_RETRY) from None
        if outcome.status in ("pending", "busy"):
            raise self.retry(countdown=outcome.retry_in, max_retries=None)
        return outcome.status

    return dispatch, deliver
