"""The SQL audit store and the event pipeline that fills it.

``AuditStore`` (store.py) owns the database; ``Recorder`` (recorder.py) moves events from the
Redis Stream into it; ``queries`` reads it for the CLI and the REST API. This package imports
``orchestrator`` (keys, settings, errors) and never Flask, Celery or ``web/``.
"""

from orchestrator.audit.events import BadEvent, Event, Lookups
from orchestrator.audit.store import AuditStore, StoreNotReady, StoreUnavailable

__all__ = ["AuditStore", "BadEvent", "Event", "Lookups", "StoreNotReady", "StoreUnavailable"]
