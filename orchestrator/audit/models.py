"""The audit store's tables (SQLAlchemy Core), portable across SQLite and PostgreSQL.

Times are unix seconds as doubles, exactly as the hot state in Redis keeps them, so a value
read from Redis and from SQL compares equal. JSON is stored as text: the store never queries
inside it, and text round-trips byte for byte on both databases.

The migration in ``migrations/versions`` creates exactly these tables; a test compares the two.
Each index below serves a named query in ``queries/``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

ID = String(64)  # run ids, Celery task ids
NAME = String(200)  # workflow and step ids, workers, actors
STATUS = String(32)
# SQLite makes only INTEGER PRIMARY KEY an alias of the rowid (auto-increment).
AUTO_ID = BigInteger().with_variant(Integer(), "sqlite")

# One row per distinct definition body a run has used; ``digest`` is a hash of the body, so
# unversioned definitions that changed between runs are both kept.
workflow_definitions = Table(
    "cf_workflow_definitions",
    metadata,
    Column("workflow_id", NAME, nullable=False),
    Column("digest", String(32), nullable=False),
    Column("version", String(64), nullable=False, server_default=""),
    Column("name", NAME),
    Column("body", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    PrimaryKeyConstraint("workflow_id", "digest"),
)

runs = Table(
    "cf_runs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("workflow_id", NAME, nullable=False, server_default=""),
    Column("version", String(64), nullable=False, server_default=""),
    Column("definition_digest", String(32)),
    Column("name", NAME),
    Column("status", STATUS, nullable=False),
    # seq of the event that set ``status``: an older event arriving late never overwrites it.
    Column("status_seq", Integer, nullable=False, server_default="0"),
    Column("inputs", Text),
    Column("priority", String(16)),
    Column("tags", Text),  # JSON list, for display; filtering uses cf_run_tags
    Column("triggered_by", NAME),
    Column("trigger_type", String(64)),
    Column("sla_seconds", Double),
    Column("created_at", Double, nullable=False),
    Column("started_at", Double),
    Column("finished_at", Double),
    Column("duration", Double),
    Column("error", Text),
    Column("failed_step", NAME),
    # Highest seq seen and how many distinct events were applied: equal when nothing is missing.
    Column("last_seq", Integer, nullable=False, server_default="0"),
    Column("event_count", Integer, nullable=False, server_default="0"),
    Column("updated_at", Double, nullable=False),
    # Which schedule or event trigger started the run, and its fire time or event key (0010).
    Column("trigger_name", NAME),
    Column("trigger_ref", NAME),
    # A child run of a sub-workflow step: its parent run and step (0009); the run's result.
    Column("parent_run", ID),
    Column("parent_step", NAME),
    Column("result", Text),  # JSON: the definition's outputs, evaluated when the run completed
    Index("ix_cf_runs_created", "created_at", "id"),
    Index("ix_cf_runs_parent", "parent_run", "created_at"),
    Index("ix_cf_runs_status_created", "status", "created_at", "id"),
    Index("ix_cf_runs_workflow_created", "workflow_id", "created_at", "id"),
    Index("ix_cf_runs_triggered_by_created", "triggered_by", "created_at"),
    Index("ix_cf_runs_trigger_type_created", "trigger_type", "created_at", "id"),
    # An event key's run (queries.event_run: its dedupe after a Redis loss; migration 0013).
    Index("ix_cf_runs_trigger_ref", "trigger_ref", "trigger_name"),
    Index("ix_cf_runs_finished", "finished_at"),
)

run_tags = Table(
    "cf_run_tags",
    metadata,
    Column("run_id", ID, nullable=False),
    Column("tag", NAME, nullable=False),
    PrimaryKeyConstraint("run_id", "tag"),
    Index("ix_cf_run_tags_tag", "tag", "run_id"),
)

steps = Table(
    "cf_steps",
    metadata,
    Column("run_id", ID, nullable=False),
    Column("step_id", NAME, nullable=False),
    Column("position", Integer, nullable=False, server_default="0"),  # order in the definition
    Column("plugin", NAME),
    Column("method", NAME),
    Column("queue", NAME),
    Column("status", STATUS, nullable=False),
    Column("status_seq", Integer, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("started_at", Double),
    Column("finished_at", Double),
    Column("duration", Double),
    Column("worker", NAME),
    Column("error", Text),
    Column("reason", Text),  # why it was skipped
    Column("compensation_error", Text),
    Column("progress", Double),
    Column("progress_message", Text),
    Column("progress_seq", Integer, nullable=False, server_default="0"),
    Column("progress_at", Double),
    Column("stats", Text),
    Column("stats_seq", Integer, nullable=False, server_default="0"),
    # The newest operator retry that reset the step (the seq of its run_status_changed event)
    # and the step's attempts before it: the step's start and end are those of its attempts
    # after that retry (orchestrator/audit/projection.py, docs/audit-store.md).
    Column("reset_seq", Integer, nullable=False, server_default="0"),
    Column("reset_attempts", Integer, nullable=False, server_default="0"),
    # Items of a mapped step are rows here too, ``step_id`` = ``resize[3]``: ``item_of`` is the
    # mapped step and ``item_index`` the item's (both NULL on a real step); the mapped step's row
    # has ``items_total`` once it expanded (migration 0008, docs/audit-store.md "Mapped steps").
    Column("item_of", NAME),
    Column("item_index", Integer),
    Column("items_total", Integer),
    PrimaryKeyConstraint("run_id", "step_id"),
    # a run's real steps (item_of IS NULL), a mapped step's counts and its items by status
    Index("ix_cf_steps_run_id_item_of_status", "run_id", "item_of", "status"),
)

step_attempts = Table(
    "cf_step_attempts",
    metadata,
    Column("run_id", ID, nullable=False),
    Column("step_id", NAME, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", STATUS, nullable=False),
    Column("status_seq", Integer, nullable=False, server_default="0"),
    Column("worker", NAME),
    Column("queue", NAME),
    Column("task_id", ID),
    Column("started_at", Double),
    Column("finished_at", Double),
    Column("duration", Double),
    Column("input", Text),  # rendered params, when the event carries them
    Column("output", Text),  # full JSON output of a completed attempt, kept once
    Column("output_size", Integer),
    Column("error", Text),
    Column("traceback", Text),
    Column("stats", Text),
    PrimaryKeyConstraint("run_id", "step_id", "attempt"),
    Index("ix_cf_step_attempts_started", "started_at"),
    Index("ix_cf_step_attempts_task", "task_id"),  # a task history row's step (migration 0006)
)

step_logs = Table(
    "cf_step_logs",
    metadata,
    Column("run_id", ID, nullable=False),
    Column("seq", Integer, nullable=False),
    # One log event carries a batch of lines: line numbers them within the event.
    Column("line", Integer, nullable=False, server_default="0"),
    Column("step_id", NAME, nullable=False, server_default=""),
    Column("ts", Double, nullable=False),
    Column("level", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("entity_tag", NAME),
    Column("entity_route", Text),
    Column("entity_id", NAME),
    Column("entity_type", NAME),
    PrimaryKeyConstraint("run_id", "seq", "line", name="pk_cf_step_logs"),
    Index("ix_cf_step_logs_step", "run_id", "step_id", "seq"),
)

# Append-only: every event of every run, keyed by (run, seq). The key is the idempotency key
# of the whole pipeline: an event whose key is here has been applied.
events = Table(
    "cf_events",
    metadata,
    Column("run_id", ID, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("type", String(40), nullable=False),
    Column("step_id", NAME, nullable=False, server_default=""),
    Column("status", STATUS, nullable=False, server_default=""),
    Column("ts", Double, nullable=False),
    Column("data", Text, nullable=False),
    Column("stream_id", String(40)),
    Column("recorded_at", Double, nullable=False),
    PrimaryKeyConstraint("run_id", "seq"),
)

audit_log = Table(
    "cf_audit_log",
    metadata,
    Column("id", AUTO_ID, primary_key=True, autoincrement=True),
    Column("ts", Double, nullable=False),
    Column("actor", NAME, nullable=False),
    Column("action", String(64), nullable=False),
    Column("target_type", String(32), nullable=False),
    Column("target_id", NAME, nullable=False),
    Column("reason", Text),
    Column("outcome", String(32), nullable=False),
    Column("detail", Text),
    Index("ix_cf_audit_log_target", "target_id", "ts"),
    Index("ix_cf_audit_log_ts", "ts"),
)

# One row per schedule trigger an operator touched or a scheduler fired (issue 16): whether it
# is paused (state that must survive a Redis restart), and its last fire time, the cursor a
# scheduler falls back to when Redis lost its own (orchestrator/engine/scheduler.py).
# The workflow registry's versions, copied from Redis by the recorder (registry.py, 0013).
registry = Table(
    "cf_registry",
    metadata,
    Column("workflow_id", NAME, primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("position", Integer, nullable=False),  # in the workflow's version list
    Column("body", Text, nullable=False),
    Column("copied_at", Double, nullable=False),
)

schedules = Table(
    "cf_schedules",
    metadata,
    Column("workflow_id", NAME, nullable=False),
    Column("trigger_name", NAME, nullable=False),
    Column("paused", Boolean, nullable=False, default=False),
    Column("paused_by", NAME),
    Column("paused_at", Double),
    Column("reason", Text),
    Column("last_fire", Double),
    Column("last_run_id", ID),
    Column("updated_at", Double, nullable=False),
    PrimaryKeyConstraint("workflow_id", "trigger_name"),
)

# Child tables of a run, in the order prune deletes them.
RUN_CHILDREN = (events, step_logs, step_attempts, steps, run_tags)

# Celery task history (fleet inspection, Flower's task list), one row per Celery task id, written
# in batches from Celery events by orchestrator.fleet.events; pruned by ``ts`` (first seen).
celery_tasks = Table(
    "cf_celery_tasks",
    metadata,
    Column("uuid", ID, primary_key=True),
    Column("name", NAME),
    Column("state", String(16), nullable=False),
    Column("state_ts", Double, nullable=False),
    Column("ts", Double, nullable=False),  # first time the task was seen (sent or received)
    Column("worker", NAME),
    Column("queue", NAME),
    Column("args", Text),
    Column("kwargs", Text),
    Column("result", Text),
    Column("exception", Text),
    Column("traceback", Text),
    Column("retries", Integer, nullable=False, server_default="0"),
    Column("eta", String(64)),
    Column("expires", String(64)),
    Column("parent_id", ID),
    Column("root_id", ID),
    Column("run_id", ID),
    Column("step_id", NAME),
    Column("sent_at", Double),
    Column("received_at", Double),
    Column("started_at", Double),
    Column("succeeded_at", Double),
    Column("failed_at", Double),
    Column("retried_at", Double),
    Column("revoked_at", Double),
    Column("rejected_at", Double),
    Column("runtime", Double),
    Column("updated_at", Double, nullable=False),
    Index("ix_cf_celery_tasks_ts", "ts", "uuid"),
    Index("ix_cf_celery_tasks_state_ts", "state", "ts"),
    Index("ix_cf_celery_tasks_worker_ts", "worker", "ts"),
    Index("ix_cf_celery_tasks_worker_state", "worker", "state"),  # per-worker totals
    Index("ix_cf_celery_tasks_name_ts", "name", "ts"),
    Index("ix_cf_celery_tasks_run", "run_id"),
    Index("ix_cf_celery_tasks_root", "root_id"),
    Index("ix_cf_celery_tasks_parent", "parent_id"),
)


# The dashboard's accounts (web/auth.py, web/throttle.py use them; declared here because the
# migrations create them with the rest of the store). Users and tokens: a user's generation moves
# on with every password, role or disabled change, and a session or token from an older one is
# refused; ``permissions`` lists what an admin granted beyond the role, comma-separated.
web_users = Table(
    "cf_web_users",
    metadata,
    Column("username", NAME, primary_key=True),
    Column("password_hash", String(300), nullable=False),
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("generation", Integer, nullable=False, server_default="0"),
    Column("permissions", String(200), nullable=False, server_default=""),
)
web_tokens = Table(
    "cf_web_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("username", NAME, nullable=False),
    Column("name", NAME, nullable=False),
    Column(
        "digest", String(64), nullable=False, unique=True
    ),  # SHA-256 of the token; never the token
    Column("created_at", Double, nullable=False),
    Column("last_used_at", Double),
    Column("generation", Integer, nullable=False, server_default="0"),  # the user's, when issued
    Index("ix_cf_web_tokens_username", "username"),
)
# Failed logins per account ("user", the name as typed) and per client address ("address").
web_login_throttle = Table(
    "cf_web_login_throttle",
    metadata,
    Column("scope", String(16), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("failures", Integer, nullable=False),
    Column("first_failure_at", Double, nullable=False),
    Column("last_failure_at", Double, nullable=False),
    Column("locked_until", Double),
    PrimaryKeyConstraint("scope", "subject", name="pk_cf_web_login_throttle"),
)
WEB_TABLES = (web_users, web_tokens, web_login_throttle)

# Outgoing notifications (orchestrator/audit/notifications.py): fleet-level webhook endpoints,
# one delivery per (endpoint, run, event, status seq) — its id is derived from those, which is
# what makes a re-read event deliver nothing twice — and every attempt of each. A delivery whose
# attempts ran out has status "dead" (the dead-letter list) until an admin replays it.
notify_endpoints = Table(
    "cf_notify_endpoints",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("url", Text, nullable=False),
    Column("secret", String(128), nullable=False),
    Column("events", Text, nullable=False),  # JSON list of event names
    Column("workflows", Text, nullable=False),  # JSON list; empty: every workflow
    Column("tags", Text, nullable=False),  # JSON list; empty: any tags, else any of these
    Column("format", String(16), nullable=False),
    Column("description", Text),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", Double, nullable=False),
    Column("created_by", NAME),
)
notify_deliveries = Table(
    "cf_notify_deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("endpoint_id", String(32), nullable=False),
    Column("run_id", ID, nullable=False),
    Column("event", String(32), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("workflow_id", NAME),
    Column("status", STATUS, nullable=False),  # pending | sending | delivered | dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("attempt_limit", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("claimed_until", Double),
    Column("next_attempt_at", Double),
    Column("delivered_at", Double),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("replays", Integer, nullable=False, server_default="0"),
    Index("ix_cf_notify_deliveries_endpoint_created", "endpoint_id", "created_at"),
    Index("ix_cf_notify_deliveries_status_updated", "status", "updated_at"),
)
notify_attempts = Table(
    "cf_notify_attempts",
    metadata,
    Column("id", AUTO_ID, primary_key=True, autoincrement=True),
    Column("delivery_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", Double, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("duration", Double, nullable=False),
    Index("ix_cf_notify_attempts_delivery", "delivery_id", "attempt"),
)
NOTIFY_TABLES = (notify_endpoints, notify_deliveries, notify_attempts)
