"""Settings of the web process, read from CANVASFLOW_WEB_* variables (next to orchestrator's Settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from orchestrator.errors import ConfigurationError
from orchestrator.settings import parse_bool

ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class WebSettings:
    """What the dashboard process needs beyond orchestrator.Settings; immutable."""

    # Signs session cookies. Empty: a random key shared through Redis by every web process.
    secret_key: str = ""
    # Refuse every mutating request (403), whatever the user's role.
    read_only: bool = False
    # Role of a visitor who has not logged in: "" (log in first), viewer, operator or admin.
    anonymous_role: str = ""
    # When set, the user "admin" exists with this password (created or reset at start).
    admin_password: str = ""
    # Run the audit recorder inside the web process (the demo does; a fleet runs its own).
    recorder: bool = False
    # Emit sla_warning / sla_breached events (at most once per run, so every process may).
    sla_monitor: bool = True
    sla_interval: float = 1.0
    # Relay the event stream to this process's Socket.IO clients.
    relay: bool = True
    # Seconds the relay coalesces events over: a room gets at most one message per window, and an
    # event after a quiet spell goes out at once (0 = every stream read is sent as it is).
    relay_window: float = 0.01
    # Flask-SocketIO message queue shared by web processes; "" = the Redis URL, "none" = off.
    message_queue: str = ""
    # Origins allowed to open Socket.IO connections besides the dashboard's own ("*" = any).
    cors_origins: str = ""
    session_hours: int = 12
    # Step rows per page of the run detail; the page asks for more.
    steps_page: int = 100
    # Fleet inspection: capture Celery events into the task history and worker list in this
    # process (one web process is enough; every process reads the shared history).
    fleet_events: bool = True
    # Seconds an offline worker stays listed before it is forgotten.
    worker_purge_after: float = 86400.0
    # Seconds of Celery task history kept (by first-seen time); older rows are pruned.
    task_retention: float = 7 * 86400.0
    # Largest request body accepted (413 past it), and seconds the CPU-heavy part of a request
    # (parsing, validating, planning a definition; run off the gevent loop) may take (503 past it).
    max_request_bytes: int = 8 * 1024 * 1024
    cpu_deadline: float = 30.0

    def __post_init__(self) -> None:
        if self.anonymous_role not in ("", *ROLES):
            raise ConfigurationError(f"CANVASFLOW_WEB_ANONYMOUS_ROLE={self.anonymous_role!r}: "
                                     f"expected one of {', '.join(ROLES)} or empty")
        if self.relay_window < 0:
            raise ConfigurationError("CANVASFLOW_WEB_RELAY_WINDOW must be zero or a positive number of seconds")
        for name in ("worker_purge_after", "task_retention", "max_request_bytes", "cpu_deadline"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"CANVASFLOW_WEB_{name.upper()} must be a positive number of seconds")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> WebSettings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"CANVASFLOW_WEB_{f.name.upper()}"
            if name not in env:
                continue
            raw = env[name]
            try:
                if f.type in ("bool", bool):
                    values[f.name] = parse_bool(name, raw)
                elif f.type in ("int", int):
                    values[f.name] = int(raw)
                elif f.type in ("float", float):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise ConfigurationError(f"{name}={raw!r}: expected a number") from None
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> WebSettings:
        return replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        return {f"CANVASFLOW_WEB_{f.name.upper()}": str(getattr(self, f.name)).lower()
                if isinstance(getattr(self, f.name), bool) else str(getattr(self, f.name))
                for f in fields(self)}
