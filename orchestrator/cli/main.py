"""The ``canvasflow`` command line."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
import redis
from rich.text import Text

from orchestrator.audit import cli as audit_cli
from orchestrator.audit.cli import CliConsole, Col, print_fitted
from orchestrator.cli import items as items_cli
from orchestrator.cli import recover as recover_cli
from orchestrator.cli.demo import (
    DEMO_CALL_ALLOW,
    EXAMPLES,
    demo_inputs,
    examples_dir,
    start_dashboard,
)
from orchestrator.engine import compiler, describe
from orchestrator.engine.states import FINAL_RUN_STATUSES, RunStatus
from orchestrator.errors import CanvasflowError, DefinitionError, UnknownRun
from orchestrator.model import callallow
from orchestrator.settings import Settings

console = CliConsole()  # as wide as the terminal; piped, never cut (orchestrator/audit/cli.py)
err = CliConsole(stderr=True)
# Exit codes of following a run that has not ended (`run --follow`, `status --follow`).
EXIT_FOLLOW_TIMEOUT = 124  # --timeout reached, as timeout(1) exits
EXIT_FOLLOW_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


def _redis_hint(settings: Settings, exc: Exception) -> str:
    return (
        f"cannot reach Redis at {settings.redis_url} ({exc}); start Redis or set "
        "CANVASFLOW_REDIS_URL"
    )


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn canvasflow and connection errors into one clear line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DefinitionError as exc:
            err.print(str(exc), style="red", markup=False, highlight=False)
            sys.exit(2)
        except CanvasflowError as exc:
            err.print(f"error: {exc}", style="red", markup=False, highlight=False)
            sys.exit(1)
        except redis.ConnectionError as exc:
            err.print(
                f"error: {_redis_hint(audit_cli.fleet_settings(), exc)}",
                style="red",
                markup=False,
                highlight=False,
            )
            sys.exit(1)

    return wrapper


def make_client(settings: Settings | None = None) -> Any:
    from orchestrator.engine.client import Client

    return Client(settings or audit_cli.fleet_settings())


CLIENT_LOGGER = "orchestrator.engine.client"


@contextlib.contextmanager
def _printed_here(logger: str) -> Iterator[None]:
    """The warnings this logger gives during the block are printed by the command (with the
    run they are about): not a second time by Python's last-resort handler."""
    log = logging.getLogger(logger)
    propagate, quiet = log.propagate, logging.NullHandler()
    log.addHandler(quiet)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(quiet)
        log.propagate = propagate


def _print_warnings(lines: Iterable[str]) -> None:
    for line in lines:
        err.print(f"warning: {line}", style="yellow", markup=False, highlight=False)


def parse_inputs(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="-i/--input")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="canvasflow")
def main() -> None:
    """canvasflow: workflows compiled to Celery canvas, run by ordinary Celery workers."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--offline", is_flag=True, help="Do not check plugins against the fleet's catalog.")
@handle_errors
def validate(files: tuple[str, ...], offline: bool) -> None:
    """Validate definition files; report every problem with its path (exit 2 if any)."""
    from orchestrator.model.definition import load_file

    catalog = None
    if not offline:
        try:
            catalog = make_client().catalog()
        except redis.RedisError as exc:
            err.print(
                f"[yellow]note:[/] plugins not checked: {_redis_hint(audit_cli.fleet_settings(), exc)}"
            )
        else:
            if catalog is None:
                err.print(
                    "[yellow]note:[/] plugins not checked: no worker has published its catalog yet"
                )
    failed = False
    for f in files:
        try:
            d = load_file(f, catalog=catalog)
        except DefinitionError as exc:
            failed = True
            err.print(str(exc), style="red", markup=False, highlight=False)
        else:
            console.print(f"[green]ok[/] {f}: workflow '{d.id}' ({len(d.steps)} steps, {d.mode})")
    if failed:
        sys.exit(2)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@handle_errors
def explain(file: str) -> None:
    """Show the Celery canvas a definition compiles to, and any parallelism it gives up."""
    from orchestrator.model.definition import load_file

    d = load_file(file)
    p = compiler.plan(d)
    console.print(f"workflow [bold]{d.id}[/] ({d.mode}, {len(d.steps)} steps) compiles to:")
    for line in describe.describe_plan(p, d):
        console.print("  " + line, highlight=False, markup=False)
    if compiler.blueprint(d).final is not None:
        console.print("  the last step settles the run (compensations if it failed)")
    else:
        console.print("  then canvasflow.settle (settles the run; compensations if it failed)")
    if p.lost:
        console.print(
            f"[yellow]not series-parallel:[/] {len(p.lost)} ordering(s) added that the definition does not ask for:"
        )
        for before, after in p.lost:
            console.print(f"  '{after}' waits for '{before}' though it does not depend on it")
    else:
        console.print("[green]no parallelism given up[/]")


@main.command()
@click.argument("definition")
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    help="Run input key=value (value parsed as JSON if it can be).",
)
@click.option("--priority", type=click.Choice(["high", "normal", "low"]))
@click.option("--tag", "tags", multiple=True)
@click.option(
    "--follow/--no-follow",
    default=True,
    help="Show live per-step progress until the run ends, through pauses and resumes.",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    help=f"Stop following after this many seconds (exit {EXIT_FOLLOW_TIMEOUT}; the run goes on).",
)
@handle_errors
def run(
    definition: str,
    inputs: tuple[str, ...],
    priority: str | None,
    tags: tuple[str, ...],
    follow: bool,
    timeout: float | None,
) -> None:
    """Submit a run of a definition file (or a registered workflow id). Exit code when
    following: 0 COMPLETED, 1 FAILED, CANCELLED or COMPENSATION_FAILED, 124 --timeout reached,
    130 Ctrl-C (the run goes on)."""
    client = make_client()
    with _printed_here(CLIENT_LOGGER):
        r = client.submit(
            definition,
            inputs=parse_inputs(inputs),
            priority=priority,
            tags=tags,
            triggered_by=os.environ.get("USER", "cli"),
            trigger_type="cli",
        )
    err.print(f"submitted run [bold]{r.id}[/]")
    _print_warnings(r.warnings)
    if not follow:
        console.print(r.id)
        return
    follow_to_end(client, r.id, timeout)


# Where following a run stops: it ended, or it waits on an operator for a failed compensation.
# PAUSED is not among them: a paused run is followed on until it is resumed and ends.
FOLLOW_UNTIL = frozenset(str(s) for s in FINAL_RUN_STATUSES) | {str(RunStatus.COMPENSATION_FAILED)}


def follow_to_end(client: Any, run_id: str, timeout: float | None) -> NoReturn:
    """Follow one run until it ends and exit with its outcome; Ctrl-C or ``timeout`` stop the
    following only, and say so (docs/user-guide.md, "canvasflow run": the exit codes)."""
    from orchestrator.cli.display import follow as follow_runs

    try:
        snap = follow_runs(client, [run_id], timeout=timeout, until=FOLLOW_UNTIL)[0]
    except KeyboardInterrupt:
        _stopped_following(client, run_id, "stopped following")
        sys.exit(EXIT_FOLLOW_INTERRUPTED)
    if snap.status not in FOLLOW_UNTIL:
        _stopped_following(client, run_id, f"stopped following after {timeout:g} s")
        sys.exit(EXIT_FOLLOW_TIMEOUT)
    console.print(
        f"run {snap.id} {snap.status}" + (f": {snap.error}" if snap.error else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    sys.exit(0 if snap.status == "COMPLETED" else 1)


def _stopped_following(client: Any, run_id: str, what: str) -> None:
    status = client.state.status(run_id) or "unknown to Redis"
    still = "" if status in FOLLOW_UNTIL else "still "
    err.print(
        f"{what}; run {run_id} is {still}{status} — `canvasflow status {run_id}`"
        + (f" (or `canvasflow status {run_id} --follow`)" if still else ""),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Follow the run like `canvasflow run` does, until it ends (same exit codes).",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    help=f"With --follow: stop following after this many seconds (exit {EXIT_FOLLOW_TIMEOUT}).",
)
@handle_errors
def status(run_id: str, as_json: bool, follow: bool, timeout: float | None) -> None:
    """Show a run's status and its steps; --follow follows it to its end."""
    from orchestrator.cli.items import print_status, status_json

    client = make_client()
    try:
        snap = client.snapshot(run_id)
    except UnknownRun:
        _explain_lost(client, run_id)
        raise
    if follow:
        if as_json:
            raise click.UsageError("--follow and --json do not go together")
        follow_to_end(client, run_id, timeout)
    if as_json:
        click.echo(json.dumps(status_json(client, snap), default=str, indent=2))
    else:
        print_status(client, snap, console)


def _explain_lost(client: Any, run_id: str) -> None:
    """A run Redis does not know may still be live in the audit store: say so, and what to do."""
    from orchestrator.engine.lost import lost_status
    from orchestrator.errors import StoreError

    store = _existing_store(client.settings.database_url)
    if store is None:
        return  # no audit store here
    try:
        status = lost_status(store, client.state, run_id)
    except StoreError:
        return  # no audit store to ask: the plain "unknown run" stands
    finally:
        store.dispose()
    if status:
        raise CanvasflowError(
            f"run {run_id} is {status} in the audit store but Redis no longer knows it: its state "
            f"was lost; end it with: canvasflow resolve {run_id} --as failed|cancelled --reason TEXT"
        )


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-Q", "--queues", default="default,io,notify", show_default=True)
@click.option("-c", "--concurrency", type=int, default=None)
@click.option(
    "-P",
    "--pool",
    default="prefork",
    show_default=True,
    help="prefork enforces step timeouts; threads/solo do not (see docs).",
)
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("-n", "--hostname", default=None)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    queues: str,
    concurrency: int | None,
    pool: str,
    loglevel: str,
    hostname: str | None,
    celery_args: tuple[str, ...],
) -> None:
    """Run a Celery worker for canvasflow steps (same as `celery -A workers.app worker`)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "-l",
        loglevel,
    ]
    concurrency = concurrency or Settings.from_env().worker_concurrency
    if concurrency:
        argv += ["-c", str(concurrency)]
    if hostname:
        argv += ["-n", hostname]
    argv += list(celery_args)
    os.execv(sys.executable, argv)


@main.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    }
)
@click.pass_context
def web(ctx: click.Context) -> None:
    """Serve the dashboard: canvasflow web [--host H] [--port P] [--read-only] [--recorder];
    also `web users add NAME --role R` and `web token NAME` (see `canvasflow web --help`)."""
    os.execv(sys.executable, [sys.executable, "-m", "web", *ctx.args])


@main.command()
@handle_errors
def plugins() -> None:
    """List the plugins and methods the running workers publish."""
    fleet = make_client().fleet()
    if not fleet:
        err.print("no worker has published a catalog: start one with `canvasflow worker`")
        sys.exit(1)
    console.print(f"plugins on {len(fleet)} worker(s)", highlight=False)
    rows: dict[tuple[str, str], tuple[dict, list[str]]] = {}
    for host, entry in sorted(fleet.items()):
        for plugin, methods in entry.get("plugins", {}).items():
            for method, info in methods.items():
                queues = ",".join(entry.get("queues", []))
                rows.setdefault((plugin, method), (info, []))[1].append(f"{host} ({queues})")
    table_rows: list[list[Any]] = []
    for (plugin, method), (info, hosts) in sorted(rows.items()):
        params = ", ".join(p + ("" if p in info["required"] else "?") for p in info["params"])
        if info.get("accepts_any"):
            params = (params + ", " if params else "") + "**"
        # One worker a line: a worker name is never folded.
        table_rows.append([plugin, method, Text(params), Text("\n".join(hosts))])
    cols = [
        Col("plugin"),
        Col("method"),
        Col("parameters", no_wrap=False, min_width=12),
        Col("workers (queues)"),
    ]
    print_fitted(console, cols, table_rows)
    for host, entry in sorted(fleet.items()):
        console.print(
            f"builtin.call on {host}: {callallow.describe(entry.get('call_allow') or [])}",
            highlight=False,
            soft_wrap=True,
        )


# ---------------------------------------------------------------------------------------------
# operator control
# ---------------------------------------------------------------------------------------------


def _actor() -> str:
    return os.environ.get("CANVASFLOW_ACTOR") or os.environ.get("USER") or "cli"


def _report(result: Any) -> None:
    console.print(
        f"{result.action}: run {result.run_id} {result.status_before} -> {result.status}",
        highlight=False,
    )


@main.command()
@click.argument("run_id")
@click.option("--reason", default=None, help="Why; recorded in the audit log.")
@handle_errors
def pause(run_id: str, reason: str | None) -> None:
    """Pause a run: no new step starts, running steps finish."""
    _report(make_client().control.pause(run_id, actor=_actor(), reason=reason))


@main.command()
@click.argument("run_id")
@click.option("--reason", default=None)
@handle_errors
def resume(run_id: str, reason: str | None) -> None:
    """Resume a paused run from where it stopped."""
    _report(make_client().control.resume(run_id, actor=_actor(), reason=reason))


@main.command()
@click.argument("run_id")
@click.option("--reason", default=None)
@click.option(
    "--terminate/--no-terminate",
    default=True,
    show_default=True,
    help="Terminate running steps (else let them finish).",
)
@handle_errors
def cancel(run_id: str, reason: str | None, terminate: bool) -> None:
    """Cancel a run; completed steps are compensated newest first."""
    _report(
        make_client().control.cancel(run_id, actor=_actor(), reason=reason, terminate=terminate)
    )


@main.command()
@click.argument("run_id")
@click.option(
    "--from-step",
    default=None,
    help="Step to run again with its descendants (default: first failed).",
)
@click.option("--from-start", is_flag=True, help="Run every step again.")
@click.option(
    "--compensation",
    is_flag=True,
    help="Retry the failed compensation of a COMPENSATION_FAILED run.",
)
@click.option("--reason", default=None)
@handle_errors
def retry(
    run_id: str, from_step: str | None, from_start: bool, compensation: bool, reason: str | None
) -> None:
    """Run a finished run again from a step, or retry its failed compensation."""
    control = make_client().control
    if compensation:
        _report(control.retry_compensation(run_id, actor=_actor(), reason=reason))
    else:
        _report(
            control.retry(
                run_id, from_step=from_step, from_start=from_start, actor=_actor(), reason=reason
            )
        )


@main.command()
@click.argument("run_id")
@click.option(
    "--as",
    "as_",
    type=click.Choice(["failed", "cancelled"]),
    default=None,
    help="How the run ends (required for a run whose state was lost).",
)
@click.option(
    "--reason", default=None, help="Why; recorded in the audit log (required for a lost run)."
)
@click.option(
    "--database-url", default=None, help="The audit store [default: CANVASFLOW_DATABASE_URL]."
)
@handle_errors
def resolve(run_id: str, as_: str | None, reason: str | None, database_url: str | None) -> None:
    """End a run by hand: a COMPENSATION_FAILED run, or one whose state Redis lost (shown
    "state lost": not final in the audit store, unknown to Redis)."""
    client = make_client()
    if client.state.status(run_id) is not None:
        _report(client.control.resolve(run_id, actor=_actor(), reason=reason, as_=as_))
        return
    from orchestrator.audit.store import AuditStore
    from orchestrator.engine.lost import resolve_lost

    if not as_ or not (reason or "").strip():
        raise click.UsageError(
            f"run {run_id} is not in Redis: resolving a run whose state was lost needs "
            "--as failed|cancelled and --reason TEXT"
        )
    store = AuditStore(database_url or client.settings.database_url)
    try:
        _report(
            resolve_lost(store, client.state, run_id, as_=as_, actor=_actor(), reason=str(reason))
        )
    finally:
        store.dispose()


@main.command()
@click.argument("run_id")
@click.option("-i", "--input", "inputs", multiple=True, help="Override an input key=value.")
@click.option("--reason", default=None)
@handle_errors
def clone(run_id: str, inputs: tuple[str, ...], reason: str | None) -> None:
    """Start a new run of the same definition version with the same inputs."""
    with _printed_here(CLIENT_LOGGER):
        new = make_client().clone(
            run_id, inputs=parse_inputs(inputs), actor=_actor(), reason=reason
        )
    _print_warnings(new.warnings)
    console.print(new.id)


def _existing_store(database_url: str) -> Any:
    """The audit store at ``database_url``, or None for a SQLite file that does not exist (asking
    SQLite would create an empty one in the working directory)."""
    from sqlalchemy.engine import make_url

    from orchestrator.audit.store import AuditStore

    url = make_url(database_url)
    if url.drivername.startswith("sqlite") and not (url.database and Path(url.database).exists()):
        return None
    return AuditStore(url)


@main.command()
@click.argument("run_id")
@click.option(
    "--database-url", default=None, help="The audit store [default: CANVASFLOW_DATABASE_URL]."
)
@handle_errors
def export(run_id: str, database_url: str | None) -> None:
    """Print one JSON document with everything about a run (canvasflow export ID > trace.json):
    the same document as the dashboard's export."""
    from orchestrator.engine.export import export_run

    client = make_client()
    url = database_url or client.settings.database_url
    store = _existing_store(url)
    if store is None:
        err.print(
            f"note: no audit store at {url}: only the events still in the Redis stream are "
            "exported (set CANVASFLOW_DATABASE_URL or --database-url to the fleet's store)",
            style="yellow",
            markup=False,
            highlight=False,
        )
    try:
        trace = export_run(client, run_id, store)
    finally:
        if store is not None:
            store.dispose()
    click.echo(json.dumps(trace, indent=2, default=str))


@main.command()
@click.option(
    "--stall-seconds",
    type=click.IntRange(1),
    default=None,
    help="Re-dispatch a run with no lease, no queued message and no event for this long "
    "[default: CANVASFLOW_WATCHDOG_STALL_SECONDS, 120].",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.1),
    default=None,
    help="Seconds between checks [default: a quarter of the stall time, at most 10].",
)
@click.option("--once", is_flag=True, help="Check once, print what was done, and exit.")
@click.option(
    "--recover", "recover_", is_flag=True, help="Recover runs when Redis comes back empty."
)
@handle_errors
def watchdog(stall_seconds: int | None, interval: float | None, once: bool, recover_: bool) -> None:
    """Re-dispatch stalled runs until SIGTERM/SIGINT (one per fleet is enough; several are safe)."""
    import logging
    import signal
    import threading

    from orchestrator.engine.watchdog import Watchdog

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    client = make_client()
    store = _existing_store(client.settings.database_url) if recover_ else None
    if recover_ and store is None:
        raise CanvasflowError(f"--recover: no audit store at {client.settings.database_url}")
    dog = Watchdog(client, stall_seconds=stall_seconds, recover_store=store)
    if once:
        rep = dog.check_once()
        console.print(
            f"{rep.live} live run(s); stalled: {', '.join(rep.candidates) or 'none'}; "
            f"re-dispatched: {', '.join(rep.redispatched) or 'none'}",
            highlight=False,
        )
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    dog.run_forever(stop, interval)


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--keep-running/--exit",
    default=None,
    help="After the examples, leave the fleet and the dashboard up until Ctrl-C, `kill PID` "
    "(SIGTERM) or a closed terminal (SIGHUP), or exit with their outcome. Default: keep running "
    "in a terminal, exit otherwise.",
)
@click.option("--workdir", type=click.Path(file_okay=False), default=None)
@handle_errors
def demo(keep_running: bool | None, workdir: str | None) -> None:
    """Start a private fleet (Redis, a worker, the dashboard) and run the example workflows."""
    if keep_running is None:
        keep_running = sys.stdin.isatty() and sys.stdout.isatty()
    from orchestrator.cli.demo import StopSignal, export_line, shield_cleanup, stop_on_signals
    from orchestrator.cli.display import follow as follow_runs
    from orchestrator.cli.embedded import EmbeddedRedis
    from orchestrator.cli.launcher import Fleet
    from orchestrator.engine.client import Client
    from orchestrator.settings import remove_demo_file, write_demo_file

    stop_on_signals()
    work = Path(workdir or tempfile.mkdtemp(prefix="canvasflow-demo-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    embedded = None
    env_settings = Settings.from_env()
    if "CANVASFLOW_REDIS_URL" not in os.environ:
        embedded = EmbeddedRedis(workdir=str(work))
    fleet = Fleet(env_settings, work / "logs")
    try:
        if embedded is not None:
            embedded.start()
            err.print(f"started a private Redis at {embedded.url}")
            env_settings = env_settings.with_(
                redis_url=embedded.url, broker_url=embedded.url, result_backend=embedded.url
            )
        settings = env_settings.with_(
            database_url=env_settings.database_url
            if "CANVASFLOW_DATABASE_URL" in os.environ
            else f"sqlite:///{work / 'canvasflow.db'}",
            call_allow=DEMO_CALL_ALLOW,
        )
        fleet.settings = settings
        err.print("starting a worker (celery -A workers.app worker -c 2 -Q default,io,notify)...")
        host = fleet.start_worker("demo-worker")
        err.print(f"worker {host} is ready; logs in {fleet.log_dir}")
        url, password = start_dashboard(fleet)
        err.print(f"dashboard: {url} (log in as admin / {password})")
        # From here until it stops, CLI commands without settings use this fleet.
        write_demo_file(settings, url)
        client = Client(settings)
        inputs = demo_inputs(work)  # the sample data written under work
        runs = []
        for filename, expected in EXAMPLES:
            defn = client.register(examples_dir() / filename)
            r = client.submit(
                defn.id,
                version=defn.version,
                inputs=inputs.get(defn.id, {}),
                triggered_by="demo",
                trigger_type="demo",
            )
            runs.append((r, expected))
            err.print(f"submitted {defn.id} as run {r.id} (expect {expected})")
        snaps = follow_runs(client, [r.id for r, _ in runs], timeout=120)
        ok = True
        for snap, (_, expected) in zip(snaps, runs, strict=True):
            mark = (
                "[green]as expected[/]"
                if snap.status == expected
                else f"[red]expected {expected}[/]"
            )
            steps = ", ".join(f"{s.id}={s.status}" for s in snap.steps)
            console.print(
                f"{snap.workflow}: {snap.status} {mark} in {snap.duration or 0:.1f}s — {steps}",
                highlight=False,
            )
            ok &= snap.status == expected
        if keep_running:
            console.print(
                f"fleet running: dashboard {url} (admin / {password}), Redis {settings.redis_url}, "
                f"audit store {settings.database_url}; Ctrl-C, kill {os.getpid()} or closing "
                "this terminal stops it",
                highlight=False,
                soft_wrap=True,  # one line, whatever the width: tests and users read it whole
            )
            console.print(
                "commands in other shells find this fleet while it runs; to choose it "
                f"explicitly:\n  {export_line(settings)}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            try:
                while all((alive := fleet.alive()).values()):
                    time.sleep(0.5)
                gone = "; ".join(
                    f"{name} stopped (its log: {fleet.logs[name]})"
                    for name, up in alive.items()
                    if not up
                )
                err.print(
                    f"{gone}; stopping the rest", style="red", highlight=False, soft_wrap=True
                )
                sys.exit(1)
            except KeyboardInterrupt as exc:
                why = f" ({exc})" if isinstance(exc, StopSignal) else ""
                with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                    err.print(f"stopping the fleet{why}")
        sys.exit(0 if ok else 1)
    finally:
        shield_cleanup()
        remove_demo_file()
        fleet.stop()
        if embedded:
            embedded.stop()


audit_cli.register(main)  # db upgrade, recorder, runs, show, logs, prune
recover_cli.register(
    main,
    handle_errors=handle_errors,
    make_client=make_client,
    actor=_actor,
    existing_store=_existing_store,
)
items_cli.register(main, **recover_cli.deps)  # items (after recover: its helpers)

if __name__ == "__main__":
    main()
