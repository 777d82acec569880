"""Audit writes of the web process: who changed users, tokens, permissions, lockouts, workflows
or the fleet. An audit write is never dropped: a change to users, tokens, permissions or lockouts
commits in one transaction with its audit row (the tables share the audit store's database), and
an action outside the database (sending a task, controlling a worker) is recorded before it is
taken. When the store fails, the request fails with 503 and says what was not done."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app, g
from flask_smorest import abort
from sqlalchemy import exc

from orchestrator.errors import StoreError

RETRY_AFTER = "5"


def _actor() -> str:
    # The request's user as web.auth set it (web.auth records its refusals here: no import back).
    user = g.get("user")
    return user.name if user else "anonymous"


def entry(
    action: str,
    target_type: str,
    target_id: str,
    detail: dict[str, Any] | None = None,
    *,
    outcome: str = "ok",
    actor: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """One audit-log row (cf_audit_log), to write with the change it records."""
    return {
        "ts": time.time(),
        "actor": (actor or _actor())[:200],
        "action": action,
        "target_type": target_type,
        "target_id": str(target_id)[:200],
        "reason": reason,
        "outcome": outcome[:32],
        "detail": json.dumps(detail, default=str) if detail is not None else None,
    }


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def unavailable(what: str, e: BaseException) -> None:
    """Fail the request: 503, saying that ``what`` did not happen because it could not be audited."""
    abort(
        503,
        message=f"the audit log is unavailable, so {what}: {_first_line(e)}",
        headers={"Retry-After": RETRY_AFTER},
    )


@contextmanager
def recorded(what: str) -> Iterator[None]:
    """Around a change that writes its audit row in its own transaction (users, tokens, lockouts):
    a database error becomes 503 "… was not made"."""
    try:
        yield
    except (exc.SQLAlchemyError, StoreError) as e:
        unavailable(f"{what} was not made", e)


def record(
    action: str,
    target_type: str,
    target_id: str,
    detail: dict[str, Any] | None = None,
    *,
    outcome: str = "ok",
    reason: str | None = None,
    what: str | None = None,
) -> None:
    """Write one audit row now (before the action it records, or for a refusal); 503 when it
    cannot be written. Without an audit store there is no audit log to write to."""
    store = current_app.extensions["canvasflow"].store
    if store is None:
        return
    row = entry(action, target_type, target_id, detail, outcome=outcome, reason=reason)
    try:
        store.record_action(
            actor=row["actor"],
            action=action,
            target_type=target_type,
            target_id=row["target_id"],
            detail=detail,
            outcome=row["outcome"],
            reason=reason,
            ts=row["ts"],
        )
    except (exc.SQLAlchemyError, StoreError) as e:
        unavailable(what or f"'{action}' on {target_type} '{target_id}' was not done", e)


def record_after(
    action: str,
    target_type: str,
    target_id: str,
    detail: dict[str, Any] | None = None,
    *,
    outcome: str = "ok",
    what: str,
) -> None:
    """Write the audit row of an action already taken that could not be recorded first (its
    outcome was unknown); 503 saying ``what`` happened but is not in the log."""
    store = current_app.extensions["canvasflow"].store
    if store is None:
        return
    try:
        store.record_action(
            actor=_actor(),
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            detail=detail,
            outcome=outcome[:32],
        )
    except (exc.SQLAlchemyError, StoreError) as e:
        abort(
            503,
            message=f"{what}, but the audit log is unavailable and does not show it: {_first_line(e)}",
            headers={"Retry-After": RETRY_AFTER},
        )
