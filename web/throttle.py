"""Login throttling: failed logins counted per account and per client address in SQL
(``cf_web_login_throttle``), so every web process of a fleet sees the same counts and a restart
forgets nothing.

Within ``login_window`` seconds of the previous failure, failures add up. When an account reaches
``login_max_failures`` (or an address ``login_max_failures_address``) it is locked for
``login_lockout`` seconds, doubled with every further failure, at most ``login_lockout_max``.
While locked, a login is refused with 429 and Retry-After before the password is even checked
(so guessing on costs the attacker nothing but tells them nothing either). A successful login
clears its account's count, never its address's: one valid account must not reset the budget of
an address that guesses at others. Each lockout is written to the audit log with the count; an
admin lifts one with ``POST /api/v1/auth/lockouts/unlock`` or ``canvasflow web users unlock``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from flask import current_app, request
from flask_smorest import abort
from sqlalchemy import and_, delete, exc, insert, or_, select, update

from orchestrator.audit.models import web_login_throttle as throttle_table
from orchestrator.audit.store import AuditStore, append_action
from web import audit as audit_log
from web.settings import WebSettings

SCOPES = ("user", "address")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


UserT = TypeVar("UserT", bound=_Named)


class Throttled(Exception):
    """Raised when a login is refused because its account or address is locked out."""

    def __init__(self, scope: str, subject: str, retry_after: int) -> None:
        self.scope, self.subject, self.retry_after = scope, subject, retry_after
        who = "this account" if scope == "user" else "your address"
        self.message = (
            f"too many failed logins for {who}: try again in {retry_after} s "
            f"(or ask an admin to unlock it)"
        )
        super().__init__(self.message)


@dataclass(frozen=True)
class Lock:
    scope: str
    subject: str
    failures: int
    locked_until: float


class Throttle:
    """The throttle table of an audit store's database (the real one, or the in-memory one)."""

    def __init__(self, store: AuditStore, web: WebSettings, *, audited: bool = True) -> None:
        self.engine, self.writer, self.web, self.audited = store.engine, store.writer, web, audited

    def _limit(self, scope: str) -> int:
        return (
            self.web.login_max_failures if scope == "user" else self.web.login_max_failures_address
        )

    def locked(self, subjects: dict[str, str], now: float) -> Lock | None:
        """The lock that holds one of ``{scope: subject}`` now, the longest first."""
        cond = or_(
            *(
                and_(throttle_table.c.scope == sc, throttle_table.c.subject == su)
                for sc, su in subjects.items()
            )
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(throttle_table)
                .where(cond, throttle_table.c.locked_until > now)
                .order_by(throttle_table.c.locked_until.desc())
            ).all()
        return (
            Lock(rows[0].scope, rows[0].subject, rows[0].failures, rows[0].locked_until)
            if rows
            else None
        )

    def failed(self, subjects: dict[str, str], now: float, audit: Any = None) -> Lock | None:
        """Count a failure for each subject; returns the lock it engaged, if any. ``audit(lock)``
        gives the audit row written in the same transaction."""
        for attempt in range(3):
            try:
                with self.writer.begin() as conn:
                    lock = None
                    for scope, subject in subjects.items():
                        lock = self._count(conn, scope, subject, now) or lock
                    if lock is not None and audit is not None and self.audited:
                        append_action(conn, audit(lock))
                    # old, unlocked counts are forgotten (the table stays small)
                    conn.execute(
                        delete(throttle_table).where(
                            throttle_table.c.last_failure_at < now - self.web.login_window,
                            or_(
                                throttle_table.c.locked_until.is_(None),
                                throttle_table.c.locked_until < now,
                            ),
                        )
                    )
                    return lock
            except exc.IntegrityError:  # two first failures raced to insert the row: count again
                if attempt == 2:
                    raise
        return None

    def _count(self, conn: Any, scope: str, subject: str, now: float) -> Lock | None:
        key = and_(throttle_table.c.scope == scope, throttle_table.c.subject == subject)
        row = conn.execute(select(throttle_table).where(key).with_for_update()).first()
        if row is None or row.last_failure_at < now - self.web.login_window:
            failures, first = 1, now
        else:
            failures, first = row.failures + 1, row.first_failure_at
        limit = self._limit(scope)
        until = None
        if failures >= limit:
            until = now + min(
                self.web.login_lockout * 2 ** min(failures - limit, 30), self.web.login_lockout_max
            )
        values = {
            "failures": failures,
            "first_failure_at": first,
            "last_failure_at": now,
            "locked_until": until,
        }
        if row is None:
            conn.execute(insert(throttle_table).values(scope=scope, subject=subject, **values))
        else:
            conn.execute(update(throttle_table).where(key).values(**values))
        return Lock(scope, subject, failures, until) if until is not None else None

    def succeeded(self, username: str) -> None:
        with self.writer.begin() as conn:
            conn.execute(
                delete(throttle_table).where(
                    throttle_table.c.scope == "user", throttle_table.c.subject == username
                )
            )

    def lockouts(self, now: float | None = None) -> list[dict[str, Any]]:
        """Accounts and addresses locked out now, the longest lock first."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(throttle_table)
                .where(throttle_table.c.locked_until > now)
                .order_by(throttle_table.c.locked_until.desc())
            ).all()
        return [
            {
                "scope": r.scope,
                "subject": r.subject,
                "failures": r.failures,
                "locked_until": r.locked_until,
                "retry_after": retry_after(r.locked_until, now),
                "first_failure_at": r.first_failure_at,
                "last_failure_at": r.last_failure_at,
            }
            for r in rows
        ]

    def unlock(self, scope: str, subject: str, audit: dict[str, Any] | None = None) -> bool:
        """Forget the failures of an account or address (lifting its lock); False if it had none."""
        with self.writer.begin() as conn:
            gone = bool(
                conn.execute(
                    delete(throttle_table).where(
                        throttle_table.c.scope == scope, throttle_table.c.subject == subject
                    )
                ).rowcount
            )
            if gone and audit is not None and self.audited:
                append_action(conn, audit)
            return gone


def retry_after(locked_until: float, now: float) -> int:
    return max(1, math.ceil(locked_until - now))


def throttle() -> Throttle:
    return current_app.extensions["canvasflow"].throttle


def client_address() -> str:
    # remote_addr is the proxy's unless CANVASFLOW_WEB_PROXY_FIX trusts its X-Forwarded-For.
    return (request.remote_addr or "unknown")[:256]


def attempt(
    username: str, password: str, verify: Callable[[str, str], UserT | None]
) -> UserT | None:
    """Check a login against the throttle and the password (``verify``, web.auth's: it imports
    this module): the user, None for a wrong password, Throttled when the account or address is
    locked (now, or by this failure); 503 when the user store cannot be reached."""
    t = throttle()
    subjects = {"user": username[:256], "address": client_address()}
    now = time.time()
    try:
        lock = t.locked(subjects, now)
        if lock is not None:
            raise Throttled(lock.scope, lock.subject, retry_after(lock.locked_until, now))
        user = verify(username, password)
        if user is None:
            lock = t.failed(
                subjects,
                now,
                audit=lambda lk: audit_log.entry(
                    "login_lockout",
                    lk.scope,
                    lk.subject,
                    {
                        "failures": lk.failures,
                        "locked_until": lk.locked_until,
                        "address": subjects["address"],
                    },
                    actor=username[:200] or "?",
                    outcome="locked",
                ),
            )
            if lock is not None:
                raise Throttled(lock.scope, lock.subject, retry_after(lock.locked_until, now))
            return None
        t.succeeded(user.name)
        return user
    except exc.SQLAlchemyError as e:
        abort(
            503,
            message=f"the user store is unavailable, so nobody can log in right now: {str(e).splitlines()[0]}",
            headers={"Retry-After": "5"},
        )
        raise
