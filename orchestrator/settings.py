"""One Settings object, read from CANVASFLOW_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from orchestrator.errors import ConfigurationError
from orchestrator.model.callallow import parse_allow
from orchestrator.model.limits import Limits

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def parse_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigurationError(f"{name}={raw!r}: expected true or false")


@dataclass(frozen=True)
class Settings:
    """Everything a canvasflow process needs to know; immutable, built once per process."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = ""  # defaults to redis_url
    result_backend: str = ""  # defaults to redis_url
    database_url: str = "sqlite:///canvasflow.db"
    key_prefix: str = "cf"
    default_queue: str = "default"
    # Redis transport: an unacknowledged message is redelivered after this many seconds.
    # Step leases (below) make an early redelivery harmless, so it can be far shorter than
    # Celery's one hour; see docs/design.md "Worker loss".
    visibility_timeout: int = 300
    # A running step holds a lease refreshed every lease_ttl/3 s; a redelivered copy of the
    # step waits while the lease is alive and takes over once it has expired.
    lease_ttl: int = 15
    # Hot state of a finished run stays in Redis this long; the audit store keeps it forever.
    state_ttl: int = 7 * 24 * 3600
    result_expires: int = 24 * 3600
    # Extra seconds between a step's soft time limit (timeout) and the hard kill.
    hard_timeout_grace: int = 10
    event_stream_maxlen: int = 0  # 0: never trimmed by producers (the recorder trims)
    worker_concurrency: int = 0  # 0: Celery's default (number of CPUs)
    # Short steps of untouched runs start before telling Redis and record start and end in one
    # round trip (workers/step.py, docs/design.md "The fast path"); false: every step asks first.
    fast_steps: bool = True
    # A fast-path step still running after this many milliseconds is shown RUNNING and leased
    # (at the worker's next heartbeat tick, every 0.25 s).
    fast_step_begin_ms: int = 50
    # Modules whose functions builtin.call may run on this worker ("a.b" that module, "a.*" a
    # and below; orchestrator/model/callallow.py). Empty: call is refused (docs/operations.md).
    call_allow: tuple[str, ...] = ()
    # A step (start, finish, settle, the message continuing its canvas) that cannot reach Redis
    # retries with backoff for this long; past it its message is handed back unacknowledged
    # (workers/broker.py, docs/operations.md "Redis outages").
    redis_retry_seconds: int = 60
    # A worker refuses (fails the step, dead-letters the message) a message nested deeper or
    # larger than this before running it: such a message could kill the worker process
    # (workers/guard.py). 0 turns a check off.
    message_max_depth: int = 200
    message_max_bytes: int = 64 * 1024 * 1024
    # The watchdog (`canvasflow watchdog`) re-dispatches a live run that has had no lease, no
    # queued message and no event for this many seconds (docs/operations.md, "Watchdog").
    watchdog_stall_seconds: int = 120
    extra_celery: dict[str, Any] = field(default_factory=dict)
    # What a definition, run inputs or an event payload may be (CANVASFLOW_MAX_*; limits.py).
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.broker_url:
            object.__setattr__(self, "broker_url", self.redis_url)
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.redis_url)
        object.__setattr__(self, "call_allow", parse_allow(self.call_allow))
        for name in ("visibility_timeout", "lease_ttl", "state_ttl", "watchdog_stall_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"CANVASFLOW_{name.upper()} must be a positive number")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Read CANVASFLOW_<FIELD> for every field; bad values raise ConfigurationError."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        values["limits"] = Limits.from_env(env)
        for f in fields(cls):
            if f.name in ("extra_celery", "limits"):
                continue
            name = f"CANVASFLOW_{f.name.upper()}"
            if name not in env:
                continue
            raw = env[name]
            if f.type in ("int", int):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ConfigurationError(f"{name}={raw!r}: expected a whole number") from None
            elif f.type in ("bool", bool):
                values[f.name] = parse_bool(name, raw)
            else:
                values[f.name] = raw
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """The CANVASFLOW_* variables that reproduce these settings in a child process."""
        out = self.limits.as_env()
        for f in fields(self):
            if f.name in ("extra_celery", "limits"):
                continue
            value = getattr(self, f.name)
            out[f"CANVASFLOW_{f.name.upper()}"] = (
                ",".join(value) if isinstance(value, tuple) else str(value)
            )
        return out
