"""Users, API tokens and roles: who may look (viewer), steer runs (operator) or change
definitions and users (admin).

Users and tokens live in two tables of the audit store's database (``cf_web_users``,
``cf_web_tokens``; its migration 0004 creates them), so they survive restarts like the history
does.
Passwords are hashed with werkzeug.security (scrypt); API tokens are random 256-bit strings of
which only a SHA-256 digest is kept. A browser authenticates with the login page (a signed
session cookie, CSRF token on every mutating request, the login form and logout included); scripts
send ``Authorization: Bearer``.

Each user has a *generation*, stored with it and stamped into its sessions and tokens: changing the
password or the role, disabling or deleting the user moves it on, so every session and token issued
before stops working at the next request. Beyond the role, an admin may grant permissions
(``submit_inline``: run a definition sent with the request rather than a registered workflow).
Failed logins are throttled per account and per address (web/throttle.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for
from flask_smorest import abort
from sqlalchemy import delete, insert, select, update
from werkzeug.exceptions import HTTPException
from werkzeug.security import check_password_hash, generate_password_hash

from orchestrator.audit.models import web_tokens as tokens_table
from orchestrator.audit.models import web_users as users_table
from orchestrator.audit.store import AuditStore, append_action
from web import audit as web_audit
from web import throttle
from web.serving import off_the_loop
from web.settings import ALL_ROLES, PERMISSIONS, PUBLISHER, ROLES


@cache
def _dummy_hash() -> str:
    """A hash to check a password against when the user does not exist (made once, when needed)."""
    return generate_password_hash(secrets.token_urlsafe(16))


TOKEN_PREFIX = "cft_"
PUBLISHER_ONLY = (
    "'{name}' is a publisher: it may publish events (POST /api/v1/events) and nothing else; "
    "ask an admin for the viewer role to see runs"
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class User:
    name: str
    role: str
    permissions: frozenset[str] = frozenset()
    generation: int = 0

    def can(self, role: str) -> bool:
        """The user's role is ``role`` or above it; a publisher is below every other role and
        only the publisher role (operators and admins) is at or above it."""
        if role == PUBLISHER:
            return self.role in (PUBLISHER, "operator", "admin")
        if self.role not in ROLES:
            return False
        return ROLES.index(self.role) >= ROLES.index(role)

    def may(self, permission: str) -> bool:
        """Admins have every permission; others those an admin granted them."""
        return self.role == "admin" or permission in self.permissions

    @property
    def effective_permissions(self) -> list[str]:
        return [p for p in PERMISSIONS if self.may(p)]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "permissions": self.effective_permissions}


def _perms(raw: str | None) -> frozenset[str]:
    return frozenset(p for p in (raw or "").split(",") if p)


def _user(row: Any) -> User:
    return User(row.username, row.role, _perms(row.permissions), int(row.generation))


def _new_generation() -> int:
    return secrets.randbelow(2**30)


def _next_generation(current: int) -> int:
    return (int(current) + 1) % 2**31


class AuthError(ValueError):
    """Raised when a user or token operation is not possible (unknown user, bad role...)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_role(role: str) -> str:
    if role not in ALL_ROLES:
        raise AuthError(f"role must be one of {', '.join(ALL_ROLES)}, not {role!r}")
    return role


def check_permission(permission: str) -> str:
    if permission not in PERMISSIONS:
        raise AuthError(
            f"unknown permission {permission!r}; permissions are: {', '.join(PERMISSIONS)}"
        )
    return permission


Audit = dict[str, Any]  # a row of the audit log (web/audit.py makes them), written with the change


class Users:
    """The users and tokens tables of an audit store's database (its migrations create them)."""

    def __init__(self, store: AuditStore, *, audited: bool = True) -> None:
        self.store = store
        self.engine = store.engine
        # SQLite: writers must take the lock up front (the store's BEGIN IMMEDIATE engine), or a
        # read-then-write transaction fails at once while a recorder writes.
        self.writer = store.writer
        # Changes are written to the audit log in the same transaction: a change the log cannot
        # record does not happen (audited=False: the in-memory store of a dashboard without one).
        self.audited = audited

    def _audit(self, conn: Any, audit: Audit | None) -> None:
        if audit is not None and self.audited:
            append_action(conn, audit)

    # -- users --------------------------------------------------------------------------------

    def get(self, username: str) -> User | None:
        """The user if it exists and is not disabled."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(users_table).where(
                    users_table.c.username == username, users_table.c.disabled.is_(False)
                )
            ).first()
        return _user(row) if row else None

    def exists(self, username: str) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    select(users_table.c.username).where(users_table.c.username == username)
                ).first()
                is not None
            )

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(users_table).order_by(users_table.c.username)).all()
        return [self.describe(r) for r in rows]

    @staticmethod
    def describe(row: Any) -> dict[str, Any]:
        return {
            "name": row.username,
            "role": row.role,
            "disabled": bool(row.disabled),
            "created_at": row.created_at,
            "permissions": _user(row).effective_permissions,
            "granted": sorted(_perms(row.permissions)),
        }

    def row(self, username: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(users_table).where(users_table.c.username == username)
            ).first()
        return self.describe(row) if row else None

    def put(
        self,
        username: str,
        *,
        password: str | None = None,
        role: str | None = None,
        audit: Audit | None = None,
    ) -> User:
        """Create the user (password and role required) or change its password and/or role (which
        ends its sessions and tokens)."""
        username = username.strip()
        if not username or len(username) > 200:
            raise AuthError("a user name is 1 to 200 characters")
        if password is not None and len(password) < 8:
            raise AuthError("a password has at least 8 characters")
        # Hash before the write transaction: off_the_loop yields gevent's loop for the ~50-100 ms
        # of scrypt, and a SQLite write lock held across that yield let the embedded recorder's
        # BEGIN IMMEDIATE busy-wait in C, holding the whole loop (this request included) until
        # SQLite's busy timeout.
        pw_hash = None if password is None else off_the_loop(generate_password_hash, password)
        now = time.time()
        with self.writer.begin() as conn:
            row = conn.execute(
                select(users_table).where(users_table.c.username == username)
            ).first()
            if row is None:
                if pw_hash is None:
                    raise AuthError(f"new user '{username}' needs a password")
                gen = _new_generation()
                conn.execute(
                    insert(users_table).values(
                        username=username,
                        password_hash=pw_hash,
                        role=_check_role(role or "viewer"),
                        disabled=False,
                        created_at=now,
                        updated_at=now,
                        generation=gen,
                        permissions="",
                    )
                )
                self._audit(conn, audit)
                return User(username, role or "viewer", frozenset(), gen)
            values: dict[str, Any] = {"updated_at": now, "disabled": False}
            if pw_hash is not None:
                values["password_hash"] = pw_hash
            if role is not None:
                values["role"] = _check_role(role)
            gen = int(row.generation)
            if pw_hash is not None or (role is not None and role != row.role) or row.disabled:
                gen = values["generation"] = _next_generation(gen)
            conn.execute(
                update(users_table).where(users_table.c.username == username).values(**values)
            )
            self._audit(conn, audit)
            return User(username, role or row.role, _perms(row.permissions), gen)

    def set_disabled(
        self, username: str, disabled: bool, audit: Audit | None = None
    ) -> User | None:
        """Disable (its sessions and tokens stop working) or enable a user; None if unknown."""
        with self.writer.begin() as conn:
            row = conn.execute(
                select(users_table).where(users_table.c.username == username)
            ).first()
            if row is None:
                return None
            gen = _next_generation(row.generation)
            conn.execute(
                update(users_table)
                .where(users_table.c.username == username)
                .values(disabled=disabled, generation=gen, updated_at=time.time())
            )
            self._audit(conn, audit)
            return User(username, row.role, _perms(row.permissions), gen)

    def set_permission(
        self, username: str, permission: str, granted: bool, audit: Audit | None = None
    ) -> bool:
        """Grant or withdraw a permission; False if the user does not exist. It applies from the
        user's next request (permissions are read on each one)."""
        check_permission(permission)
        with self.writer.begin() as conn:
            row = conn.execute(
                select(users_table).where(users_table.c.username == username)
            ).first()
            if row is None:
                return False
            perms = set(_perms(row.permissions))
            if granted:
                perms.add(permission)
            else:
                perms.discard(permission)
            conn.execute(
                update(users_table)
                .where(users_table.c.username == username)
                .values(
                    permissions=",".join(p for p in PERMISSIONS if p in perms),
                    updated_at=time.time(),
                )
            )
            self._audit(conn, audit)
            return True

    def delete(self, username: str, audit: Audit | None = None) -> bool:
        with self.writer.begin() as conn:
            conn.execute(delete(tokens_table).where(tokens_table.c.username == username))
            gone = bool(
                conn.execute(delete(users_table).where(users_table.c.username == username)).rowcount
            )
            if gone:
                self._audit(conn, audit)
            return gone

    def verify(self, username: str, password: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(users_table).where(users_table.c.username == username)
            ).first()
        if row is None or row.disabled:
            off_the_loop(check_password_hash, _dummy_hash(), password)  # same time either way
            return None
        ok = off_the_loop(check_password_hash, row.password_hash, password)
        return _user(row) if ok else None

    # -- tokens -------------------------------------------------------------------------------

    def create_token(
        self, username: str, name: str = "api", audit: Callable[[str], Audit] | None = None
    ) -> tuple[str, str]:
        """A new API token for the user; returns (token id, token). Only the digest is stored.
        ``audit(token_id)`` gives the audit row written with it."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(6)
        with self.writer.begin() as conn:
            row = conn.execute(
                select(users_table.c.generation).where(
                    users_table.c.username == username, users_table.c.disabled.is_(False)
                )
            ).first()
            if row is None:
                raise AuthError(f"unknown user '{username}'")
            conn.execute(
                insert(tokens_table).values(
                    id=token_id,
                    username=username,
                    name=name[:200],
                    digest=_digest(token),
                    created_at=time.time(),
                    generation=row.generation,
                )
            )
            self._audit(conn, audit(token_id) if audit is not None else None)
        return token_id, token

    def tokens(self, username: str | None = None) -> list[dict[str, Any]]:
        q = select(
            tokens_table.c.id,
            tokens_table.c.username,
            tokens_table.c.name,
            tokens_table.c.created_at,
            tokens_table.c.last_used_at,
        ).order_by(tokens_table.c.created_at)
        if username is not None:
            q = q.where(tokens_table.c.username == username)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def revoke(
        self, token_id: str, username: str | None = None, audit: Audit | None = None
    ) -> bool:
        q = delete(tokens_table).where(tokens_table.c.id == token_id)
        if username is not None:
            q = q.where(tokens_table.c.username == username)
        with self.writer.begin() as conn:
            gone = bool(conn.execute(q).rowcount)
            if gone:
                self._audit(conn, audit)
            return gone

    def user_for_token(self, token: str) -> User | None:
        """The token's user, if the token exists and was issued in the user's current generation."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                select(users_table)
                .select_from(
                    tokens_table.join(
                        users_table, users_table.c.username == tokens_table.c.username
                    )
                )
                .where(
                    tokens_table.c.digest == _digest(token),
                    users_table.c.disabled.is_(False),
                    tokens_table.c.generation == users_table.c.generation,
                )
            ).first()
        return _user(row) if row else None


# ---------------------------------------------------------------------------------------------
# Request-side: who is asking, and may they?
# ---------------------------------------------------------------------------------------------


def users() -> Users:
    return current_app.extensions["canvasflow"].users


def identify(
    authorization: str | None, session_user: str | None, session_generation: int | None = None
) -> tuple[User | None, str]:
    """The user behind a Bearer token or a session, else the anonymous role; and how. A session
    from before the user's last password, role or disabled change is "expired"."""
    ext = current_app.extensions["canvasflow"]
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return ext.users.user_for_token(token.strip()), "token"
        return None, "invalid"
    if session_user:
        user = ext.users.get(session_user)
        if user is not None and user.generation == session_generation:
            return user, "session"
        return None, "expired"
    if ext.web.anonymous_role:
        return User("anonymous", ext.web.anonymous_role), "anonymous"
    return None, "none"


def load_user() -> None:
    user, via = identify(
        request.headers.get("Authorization"), session.get("user"), session.get("gen")
    )
    if via == "expired":
        session.clear()  # the browser gets a cookie without the dead login
    g.user, g.auth_via = user, via


def start_session(user: User) -> str:
    """Log ``user`` in on this browser: a fresh session stamped with the user's generation; returns
    its CSRF token."""
    session.clear()
    session.permanent = True
    session["user"] = user.name
    session["gen"] = user.generation
    return csrf_token()


def restamp_session(user: User | None) -> None:
    """After an admin changed their own account from this session, keep this session alive (the
    change ended every other one)."""
    me = current_user()
    if (
        user is not None
        and me is not None
        and g.get("auth_via") == "session"
        and me.name == user.name
    ):
        session["gen"] = user.generation


def csrf_matches(sent: str | None) -> bool:
    """The sent token equals this session's; never when either is missing or empty."""
    expected = str(session.get("csrf") or "")
    return bool(sent) and bool(expected) and hmac.compare_digest(str(sent), expected)


def current_user() -> User | None:
    return g.get("user")


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return str(session["csrf"])


def _refuse(code: int, message: str) -> Any:
    abort(code, message=message)


@dataclass(frozen=True)
class Access:
    """What a route declares (``require`` / ``public``); ``rest.guard`` enforces it."""

    role: str | None  # None: public
    mutating: bool = False
    errors: tuple[int, ...] = ()  # error statuses only the route itself knows of (OpenAPI)
    audit: str | None = None  # action written to the audit log when a known user is refused
    target_type: str = "run"
    target: str | None = None  # JSON body field naming the target when the path names none


ACCESS = "_cf_access"


def _declare(access: Access) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, ACCESS, access)
        # flask-smorest's doc info (copied by its decorators, whichever side of them this is)
        fn._apidoc = {
            **getattr(fn, "_apidoc", {}),  # type: ignore[attr-defined]
            "access": {"role": access.role, "mutating": access.mutating, "errors": access.errors},
        }
        return fn

    return deco


def require(
    role: str = "viewer",
    *,
    mutating: bool = False,
    errors: tuple[int, ...] = (),
    audit: str | None = None,
    target_type: str = "run",
    target: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the role an API view needs; ``rest.guard`` checks it before the view's arguments
    are parsed: 401 without a user, 403 for a lesser role, a read-only dashboard (``mutating``) or
    a session request without the CSRF token. ``errors``: the other error statuses the view
    answers (documented in the OpenAPI). ``audit``: write a refusal of a known user to the audit
    log as this action, on the path's first parameter (or the body field ``target``)."""
    if role not in ALL_ROLES:
        raise ValueError(f"role must be one of {', '.join(ALL_ROLES)}, not {role!r}")
    return _declare(Access(role, mutating, tuple(errors), audit, target_type, target))


def public(*, errors: tuple[int, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an API view that anyone may call (login, health); ``errors`` as for ``require``."""
    return _declare(Access(None, False, tuple(errors)))


def handler_of(endpoint: str | None, method: str) -> Callable[..., Any] | None:
    """The function that serves ``method`` on ``endpoint`` (a MethodView's method or the view)."""
    view = current_app.view_functions.get(endpoint) if endpoint else None
    cls = getattr(view, "view_class", None)
    if cls is not None:
        name = "get" if method == "HEAD" else method.lower()
        return getattr(cls, name, None)
    return view


def access_of(handler: Callable[..., Any] | None) -> Access | None:
    return getattr(handler, ACCESS, None)


def enforce(handler: Callable[..., Any]) -> None:
    """Check the handler's declared access; a refusal of a known user is audited if declared."""
    access = access_of(handler)
    if access is None or access.role is None or request.method == "OPTIONS":
        return
    try:
        check(access.role, mutating=access.mutating)
    except HTTPException:
        user = current_user()
        if user is not None and access.audit:
            _audit_refusal(access, user)
        raise


def _audit_refusal(access: Access, user: User) -> None:
    store = current_app.extensions["canvasflow"].store
    if store is None:
        return
    args = request.view_args or {}
    target = next(iter(args.values()), None)
    if target is None and access.target:
        body = request.get_json(silent=True)
        target = body.get(access.target) if isinstance(body, dict) else None
    # A refusal that cannot be written fails the request with 503 (web/audit.py): an audit write
    # is never dropped silently.
    assert access.audit is not None
    web_audit.record(
        access.audit,
        access.target_type,
        str(target if target is not None else "")[:200],
        {"needs": access.role, "role": user.role},
        outcome=f"refused: {user.role}",
        what="the refusal was not recorded",
    )


def check(role: str, *, mutating: bool = False) -> User:
    user = current_user()
    if user is None:
        if g.get("auth_via") == "token":
            _refuse(
                401,
                "invalid or revoked API token (tokens end when their user's password or role changes, "
                "or the user is disabled or deleted)",
            )
        if g.get("auth_via") == "expired":
            _refuse(
                401,
                "your session ended (your password or role changed, or your account was disabled): "
                "log in again",
            )
        _refuse(401, "authentication required: log in, or send Authorization: Bearer <token>")
        raise AssertionError  # abort raised
    if mutating and current_app.extensions["canvasflow"].web.read_only:
        _refuse(403, "this dashboard is read-only")
    if not user.can(role):
        if user.role == PUBLISHER:
            _refuse(403, PUBLISHER_ONLY.format(name=user.name))
        _refuse(403, f"'{user.name}' is a {user.role}; this needs the {role} role")
    if mutating and g.get("auth_via") == "session" and request.method not in SAFE_METHODS:
        if not csrf_matches(request.headers.get("X-CSRF-Token")):
            _refuse(403, "missing or wrong X-CSRF-Token header (reload the page)")
    return user


# ---------------------------------------------------------------------------------------------
# Login page
# ---------------------------------------------------------------------------------------------

login_pages = Blueprint("login", __name__)


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("pages.runs")


@login_pages.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error, status, headers = None, 200, {}
    if request.method == "POST":
        # Login CSRF: without this check a page elsewhere could log the browser in as the
        # attacker's account. The token comes from the session that GET /login started.
        if not csrf_matches(request.form.get("csrf")):
            error, status = (
                "The form expired or was not sent from this page; please try again.",
                400,
            )
        else:
            try:
                user = throttle.attempt(
                    request.form.get("username", ""),
                    request.form.get("password", ""),
                    users().verify,
                )
            except throttle.Throttled as exc:
                error, status, headers = exc.message, 429, {"Retry-After": str(exc.retry_after)}
            else:
                if user is None:
                    error, status = "Unknown user or wrong password.", 401
                else:
                    start_session(user)
                    return redirect(_safe_next(request.args.get("next")))
    return (
        render_template(
            "login.html",
            error=error,
            csrf=csrf_token(),
            page="login",
            next=request.args.get("next", ""),
        ),
        status,
        headers,
    )


@login_pages.route("/logout", methods=["POST"])
def logout() -> Any:
    """Log out (POST with the form's CSRF token, so that no other page can log the browser out)."""
    if session.get("user") and not csrf_matches(
        request.form.get("csrf") or request.headers.get("X-CSRF-Token")
    ):
        abort(
            403, message="missing or wrong CSRF token: log out with the dashboard's Log out button"
        )
    session.clear()
    return redirect(url_for("login.login"))
