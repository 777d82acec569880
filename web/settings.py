"""Settings of the web process, read from CANVASFLOW_WEB_* variables (next to orchestrator's Settings)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from orchestrator.errors import ConfigurationError
from orchestrator.settings import parse_bool

ROLES = ("viewer", "operator", "admin")
# Outside the hierarchy: publishes events (POST /api/v1/events) and nothing else; operators and
# admins may publish too (docs/security.md "The publisher role").
PUBLISHER = "publisher"
ALL_ROLES = (*ROLES, PUBLISHER)
# Permissions an admin grants to a user beyond its role (admins have them all).
PERMISSIONS = ("submit_inline",)
TASK_ALLOW_SETTING = "CANVASFLOW_WEB_INSPECT_TASK_ALLOW"
# Celery's and canvasflow's own tasks: sending one by hand forges a step or a chord part.
NEVER_SENT = ("canvasflow.", "celery.")
MISSING_SECRET = (
    "the dashboard needs a session signing key: set CANVASFLOW_WEB_SECRET_KEY (the same value for every "
    "web process of the fleet) or CANVASFLOW_WEB_SECRET_KEY_FILE (a file holding it), e.g. "
    "python -c 'import secrets; print(secrets.token_urlsafe(48))' > web.key && chmod 600 web.key; "
    "only `canvasflow demo` makes one up by itself"
)
_TASK_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z_][A-Za-z0-9_\-]*)*(?:\.\*)?\Z")


def parse_task_allow(raw: str) -> tuple[str, ...]:
    """The entries of CANVASFLOW_WEB_INSPECT_TASK_ALLOW ("a.b, c.*"); ConfigurationError names a bad one."""
    entries: list[str] = []
    for item in raw.split(","):
        entry = item.strip()
        if not entry:
            continue
        if not _TASK_ENTRY.match(entry):
            raise ConfigurationError(
                f"{TASK_ALLOW_SETTING}: {entry!r} is not a task name or a name prefix; expected names like "
                "'myapp.tasks.cleanup' (that task only) or 'myapp.tasks.*' (every task whose name starts with "
                "'myapp.tasks.'), separated by commas ('*' alone is not allowed)"
            )
        entries.append(entry)
    return tuple(entries)


def task_allowed(allow: tuple[str, ...], name: str) -> bool:
    """True when the allow-list names the task, exactly or by a ``prefix.*`` entry; never one of
    canvasflow's or Celery's own tasks."""
    if name.startswith(NEVER_SENT) or name in ("canvasflow", "celery"):
        return False
    return any(name.startswith(e[:-1]) if e.endswith(".*") else name == e for e in allow)


@dataclass(frozen=True)
class WebSettings:
    """What the dashboard process needs beyond orchestrator.Settings; immutable."""

    # Signs session cookies; every web process of a fleet needs the same one. Required (the
    # embedded demo writes its own): a key kept in Redis would be readable by anyone who can run
    # code on the fleet, and with it they forge any user's session (docs/security.md).
    secret_key: str = ""
    # A file holding the key (first line), e.g. a Docker/Kubernetes secret; used when secret_key
    # is empty.
    secret_key_file: str = ""
    # Refuse every mutating request (403), whatever the user's role.
    read_only: bool = False
    # Role of a visitor who has not logged in: "" (log in first), viewer, operator or admin.
    anonymous_role: str = ""
    # When set, the user "admin" exists with this password (created or reset at start).
    admin_password: str = ""
    # Run the audit recorder inside the web process (the demo does; a fleet runs its own).
    recorder: bool = False
    # Run the scheduler (schedule triggers) inside the web process; several may: each fire time
    # still starts one run (docs/operations.md, "Schedules").
    scheduler: bool = False
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
    # Task names POST /api/v1/inspect/tasks/send|apply may send: exact names or "pkg.*" prefixes,
    # comma-separated. Empty (the default) refuses sending tasks by name; canvasflow.* and celery.*
    # are refused whatever this says.
    inspect_task_allow: str = ""
    # Number of reverse proxies in front of the dashboard whose X-Forwarded-For/-Proto/-Host to
    # trust (0: none). Behind a TLS-terminating proxy, 1 makes cookies Secure and the login
    # throttle see client addresses.
    proxy_fix: int = 0
    # Mark session cookies Secure always (they are whenever the request came over HTTPS).
    cookie_secure: bool = False
    # Login throttle: failed logins per account and per client address within login_window
    # seconds before that account / address is locked out (429 with Retry-After) for
    # login_lockout seconds, doubled for every further failure, at most login_lockout_max.
    login_max_failures: int = 5
    login_max_failures_address: int = 20
    login_window: float = 900.0
    login_lockout: float = 60.0
    login_lockout_max: float = 3600.0
    # Largest request body accepted (413 past it), and seconds the CPU-heavy part of a request
    # (parsing, validating, planning a definition; run off the gevent loop) may take (503 past it).
    max_request_bytes: int = 8 * 1024 * 1024
    cpu_deadline: float = 30.0

    def __post_init__(self) -> None:
        if self.anonymous_role not in ("", *ROLES):
            raise ConfigurationError(
                f"CANVASFLOW_WEB_ANONYMOUS_ROLE={self.anonymous_role!r}: "
                f"expected one of {', '.join(ROLES)} or empty"
            )
        if self.relay_window < 0:
            raise ConfigurationError(
                "CANVASFLOW_WEB_RELAY_WINDOW must be zero or a positive number of seconds"
            )
        for name in (
            "worker_purge_after",
            "task_retention",
            "login_window",
            "login_lockout",
            "login_lockout_max",
            "max_request_bytes",
            "cpu_deadline",
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(
                    f"CANVASFLOW_WEB_{name.upper()} must be a positive number of seconds"
                )
        for name in ("login_max_failures", "login_max_failures_address"):
            if getattr(self, name) < 1:
                raise ConfigurationError(
                    f"CANVASFLOW_WEB_{name.upper()} must be a positive number of failures"
                )
        if self.proxy_fix < 0:
            raise ConfigurationError(
                "CANVASFLOW_WEB_PROXY_FIX must be the number of proxies to trust (0: none)"
            )
        parse_task_allow(self.inspect_task_allow)  # a bad entry fails at start, not on first use

    @property
    def task_allow(self) -> tuple[str, ...]:
        return parse_task_allow(self.inspect_task_allow)

    def signing_key(self) -> str:
        """The session signing key: secret_key, else the first line of secret_key_file.
        ConfigurationError names the variables when neither gives one."""
        if self.secret_key:
            return self.secret_key
        if self.secret_key_file:
            try:
                with open(self.secret_key_file, encoding="utf-8") as fh:
                    key = fh.readline().strip()
            except OSError as exc:
                raise ConfigurationError(
                    f"CANVASFLOW_WEB_SECRET_KEY_FILE={self.secret_key_file!r}: cannot read "
                    f"it ({exc.strerror})"
                ) from None
            if not key:
                raise ConfigurationError(
                    f"CANVASFLOW_WEB_SECRET_KEY_FILE={self.secret_key_file!r} is empty"
                )
            return key
        raise ConfigurationError(MISSING_SECRET)

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
        return {
            f"CANVASFLOW_WEB_{f.name.upper()}": str(getattr(self, f.name)).lower()
            if isinstance(getattr(self, f.name), bool)
            else str(getattr(self, f.name))
            for f in fields(self)
        }
