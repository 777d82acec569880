"""``canvasflow publish NAME [--payload JSON] [--key K] [--json]``: publish an event, which
starts a run of every registered workflow whose event trigger matches it (the same
implementation as ``client.publish`` and ``POST /api/v1/events``: orchestrator/engine/publish.py).
Added to the command by ``register``, which cli/recover.py's register calls."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from orchestrator.audit.queries import event_lookup
from orchestrator.errors import EventError

deps: dict[str, Callable[..., Any]] = {}


def register(group: click.Group, **helpers: Callable[..., Any]) -> None:
    """Add the command to ``group``; ``helpers``: handle_errors, make_client, actor,
    existing_store of main.py."""
    deps.update(helpers)
    group.add_command(publish)


@click.command("publish")
@click.argument("name")
@click.option(
    "--payload",
    default=None,
    help="The event's payload: a JSON object, or @FILE to read it from a file [default: {}].",
)
@click.option("--key", default=None, help="A repeated key starts no second run of a trigger.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def publish(name: str, payload: str | None, key: str | None, as_json: bool) -> None:
    """Publish event NAME: start a run of every workflow whose event trigger matches it, and
    list the runs started and the triggers that started none (deduplicated, filtered, failed)."""
    deps["handle_errors"](_publish)(name, payload, key, as_json)


def _payload(raw: str | None) -> Any:
    if raw is None:
        return {}
    text = raw
    if raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {raw[1:]}: {exc}", param_hint="--payload"
            ) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None


def _publish(name: str, payload: str | None, key: str | None, as_json: bool) -> None:
    client = deps["make_client"]()
    # With a key, the audit store is asked too (when there is one): it still knows an earlier
    # event's run after Redis lost the key's claim.
    store = deps["existing_store"](client.settings.database_url) if key is not None else None
    try:
        out = client.publish(
            name,
            _payload(payload),
            key,
            triggered_by=deps["actor"](),
            recorded=event_lookup(store, client.settings.event_key_ttl),
        )
    except EventError as exc:
        for field, message in exc.problems:
            click.echo(f"{field}: {message}", err=True)
        sys.exit(2)
    finally:
        if store is not None:
            store.dispose()
    if as_json:
        click.echo(json.dumps(out.as_dict(), indent=2))
        return
    if not (out.started or out.deduplicated or out.filtered or out.errors):
        click.echo(f"event {name}: no registered workflow has a trigger on it")
    for r in out.started:
        click.echo(f"started {r['run_id']}  {r['workflow']} {r['version']} ({r['trigger']})")
    for r in out.deduplicated:
        click.echo(
            f"already started {r['run_id']}  {r['workflow']} ({r['trigger']}): key {key!r} seen"
        )
    for r in out.filtered:
        click.echo(f"filtered out  {r['workflow']} ({r['trigger']}): its filter was false")
    for r in out.errors:
        click.echo(f"error  {r['workflow']} {r['path']}: {r['error']}", err=True)
    if out.errors:
        sys.exit(1)
