"""One Settings object, read from CANVASFLOW_* environment variables."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigurationError
from orchestrator.model.callallow import parse_allow
from orchestrator.model.limits import Limits

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Broker URL schemes kombu serves over AMQP (RabbitMQ).
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")


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
    # The state Redis (redis_url) is a Redis Cluster: every process connects with RedisCluster.
    # Needs a key prefix that is a hash tag ("{cf}") and Celery's broker and result backend
    # elsewhere (docs/operations.md "Redis topologies").
    redis_cluster: bool = False
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
    # How deep sub-workflow steps may nest child runs (a top-level run is depth 0): a step that
    # would start a child deeper than this fails (docs/user-guide.md "Sub-workflows").
    max_workflow_depth: int = 10
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
    # AMQP (RabbitMQ) brokers only: the broker's consumer_timeout (rabbitmq.conf; 30 min by
    # default). With acks_late a step holds its message unacknowledged while it runs, and RabbitMQ
    # closes the channel of a consumer that holds one longer than this, which hands the step to
    # another worker. Workers warn at start; say here what your broker is set to (0: disabled).
    amqp_consumer_timeout: int = 1800
    # Schedules (`canvasflow scheduler`, docs/operations.md "Schedules"): a fire time at most this
    # many seconds old is still started (a scheduler that was busy, restarting or without Redis
    # for a moment); older ones were missed while no scheduler ran, and `catchup` decides.
    schedule_grace: int = 60
    # With `catchup: true`, at most this many missed fire times run (the latest, oldest first).
    schedule_catchup_max: int = 10
    # An event's key starts at most one run per trigger for this long (at least 24 h, the
    # promise of docs/definition-reference.md "Event triggers").
    event_key_ttl: int = 7 * 24 * 3600
    # The dashboard's address as users reach it (https://canvasflow.example.com): notifications
    # link to the run page under it; empty: they carry no link (docs/operations.md).
    public_url: str = ""
    # Outgoing notifications (docs/operations.md, "Notifications"): attempts per delivery before
    # it goes to the dead letters, the first retry's delay in seconds (doubling each time, capped
    # at notify_backoff_max), and how long one attempt may wait for the receiver.
    notify_max_attempts: int = 5
    notify_backoff: int = 10
    notify_backoff_max: int = 3600
    notify_timeout: int = 10
    extra_celery: dict[str, Any] = field(default_factory=dict)
    # What a definition, run inputs or an event payload may be (CANVASFLOW_MAX_*; limits.py).
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.broker_url:
            object.__setattr__(self, "broker_url", self.redis_url)
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.redis_url)
        if self.redis_cluster:
            self._check_cluster()
        object.__setattr__(self, "call_allow", parse_allow(self.call_allow))
        if self.schedule_grace < 0 or self.schedule_catchup_max < 0:
            raise ConfigurationError(
                "CANVASFLOW_SCHEDULE_GRACE and CANVASFLOW_SCHEDULE_CATCHUP_MAX must not be negative"
            )
        for name in ("visibility_timeout", "lease_ttl", "state_ttl", "watchdog_stall_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"CANVASFLOW_{name.upper()} must be a positive number")
        if self.event_key_ttl < 24 * 3600:
            raise ConfigurationError(
                f"CANVASFLOW_EVENT_KEY_TTL={self.event_key_ttl}: an event key must dedupe for at "
                f"least 24 h (86400 s)"
            )
        for name in ("notify_max_attempts", "notify_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"CANVASFLOW_{name.upper()} must be a positive number")
        if self.notify_backoff < 0 or self.notify_backoff_max < 0:
            raise ConfigurationError("CANVASFLOW_NOTIFY_BACKOFF(_MAX) must not be negative")

    def _check_cluster(self) -> None:
        where = 'see docs/operations.md, "Redis topologies"'
        prefix = self.key_prefix
        if not (prefix.startswith("{") and "}" in prefix[2:]):
            raise ConfigurationError(
                f"CANVASFLOW_REDIS_CLUSTER=true needs a key prefix that is a hash tag, such as "
                f"CANVASFLOW_KEY_PREFIX={{cf}} (got {prefix!r}): every canvasflow key must lie "
                f"in one slot of the cluster; {where}"
            )
        for name in ("broker_url", "result_backend"):
            if getattr(self, name) == self.redis_url:
                raise ConfigurationError(
                    f"CANVASFLOW_{name.upper()} is the Redis Cluster of CANVASFLOW_REDIS_URL "
                    f"({self.redis_url}), which Celery cannot use: point it at a plain Redis "
                    f"(or RabbitMQ, for the broker); {where}"
                )

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

    @property
    def broker_is_amqp(self) -> bool:
        """True when Celery's broker is AMQP (RabbitMQ) rather than Redis: message priorities,
        queue arguments and queue lengths differ (docs/operations.md "RabbitMQ as broker")."""
        return self.broker_url.split("://", 1)[0].lower() in AMQP_SCHEMES

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


# ---------------------------------------------------------------------------------------------
# The running demo's fleet file
# ---------------------------------------------------------------------------------------------

# The settings that point a process at a fleet. The demo writes them to its fleet file; a CLI
# process with none of them set uses the file's (and with any of them set, its own).
FLEET_SETTINGS = ("redis_url", "broker_url", "result_backend", "database_url", "key_prefix")
FLEET_VARIABLES = tuple(f"CANVASFLOW_{name.upper()}" for name in FLEET_SETTINGS)


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """canvasflow's per-user state directory: $XDG_STATE_HOME/canvasflow, else
    ~/.local/state/canvasflow (the XDG base directory default)."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        home = env.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".local", "state")
    return Path(base) / "canvasflow"


def demo_file(env: Mapping[str, str] | None = None) -> Path:
    return state_dir(env) / "demo.json"


@dataclass(frozen=True)
class DemoFleet:
    """What a running ``canvasflow demo`` left in its fleet file: where its fleet is. It holds
    no secret (the dashboard's password stays with the demo's own output)."""

    pid: int
    env: Mapping[str, str]  # CANVASFLOW_* variables of FLEET_VARIABLES
    dashboard_url: str = ""
    path: Path | None = None
    written_at: float | None = None  # the file's mtime: a process started later is not the demo

    def note(self) -> str:
        """The one line a CLI command prints when it uses this fleet."""
        redis_url = self.env.get("CANVASFLOW_REDIS_URL", "")
        store = self.env.get("CANVASFLOW_DATABASE_URL", "")
        return (
            f"using the running demo's fleet (pid {self.pid}): {redis_url}, audit store {store}; "
            "set CANVASFLOW_REDIS_URL to use another"
        )


def write_demo_file(
    settings: Settings,
    dashboard_url: str,
    *,
    pid: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Record a running demo's fleet in the user's state directory (0600, replaced atomically:
    the newest demo wins); remove it with :func:`remove_demo_file`."""
    path = demo_file(env)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = {
        "pid": os.getpid() if pid is None else pid,
        "dashboard_url": dashboard_url,
        "env": {
            f"CANVASFLOW_{name.upper()}": str(getattr(settings, name)) for name in FLEET_SETTINGS
        },
    }
    # A new file of a name nobody could guess or plant a symlink at (mkstemp: O_EXCL, 0600).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(body, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def remove_demo_file(pid: int | None = None, env: Mapping[str, str] | None = None) -> None:
    """Remove the fleet file if it is this demo's (a newer demo may have replaced it)."""
    path = demo_file(env)
    found = _read_demo_file(path)
    if found is not None and found.pid == (os.getpid() if pid is None else pid):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def running_demo(env: Mapping[str, str] | None = None) -> DemoFleet | None:
    """The demo whose fleet file is in the state directory, if its process is alive."""
    found = _read_demo_file(demo_file(env))
    return found if found is not None and _demo_alive(found.pid, found.written_at) else None


DEMO_FILE_MAX = 64 * 1024  # a fleet file is a few hundred bytes: more is not one we wrote


def _private(st: os.stat_result) -> bool:
    """Ours, and nobody else may write to it (what points our commands at a fleet must be)."""
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read_demo_file(path: Path) -> DemoFleet | None:
    try:
        # A file another user could have written or swapped (theirs, a symlink, in a directory
        # others may write to) would point this user's commands at any Redis and database.
        if not _private(os.lstat(path.parent)):
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not (stat.S_ISREG(st.st_mode) and _private(st)) or st.st_size > DEMO_FILE_MAX:
                return None
            body = json.loads(fh.read(DEMO_FILE_MAX).decode("utf-8"))
        pid = int(body["pid"])
        fleet_env = {k: str(v) for k, v in dict(body["env"]).items() if k in FLEET_VARIABLES and v}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None  # none, or not one we wrote: as if no demo ran
    if not fleet_env.get("CANVASFLOW_REDIS_URL"):
        return None
    return DemoFleet(pid, fleet_env, str(body.get("dashboard_url") or ""), path, st.st_mtime)


def _demo_alive(pid: int, written_at: float | None = None) -> bool:
    if not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's (the file is ours, though: a reused pid)
    # A pid the kernel gave to another process since: on Linux its command line says so, and
    # it started after the demo wrote its file (the demo starts before it writes).
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid
    if b"demo" not in argv:
        return False
    started = _started_at(pid)
    return started is None or written_at is None or started <= written_at + 2  # clock ticks


def _started_at(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None if unknown."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat_line.rsplit(")", 1)[1].split()[19])  # field 22, after "(comm)"
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def cli_settings(env: Mapping[str, str] | None = None) -> tuple[Settings, DemoFleet | None]:
    """The settings of a CLI command: from CANVASFLOW_* variables; when none of the variables
    that point at a fleet is set and a demo is running, that demo's fleet (and the demo)."""
    env = dict(os.environ if env is None else env)
    if not any(name in env for name in FLEET_VARIABLES):
        demo = running_demo(env)
        if demo is not None:
            return Settings.from_env({**env, **demo.env}), demo
    return Settings.from_env(env), None
