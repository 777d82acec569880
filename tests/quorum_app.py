"""A worker app on RabbitMQ quorum queues: extra_celery is not read from the environment, so a
fleet that wants quorum queues starts its workers from a module like this one
(docs/operations.md, "Quorum queues or classic queues")."""

from __future__ import annotations

from orchestrator.settings import Settings
from workers.app import create_worker_app

QUORUM = {"task_default_queue_type": "quorum"}

app = create_worker_app(Settings.from_env(extra_celery=QUORUM))
