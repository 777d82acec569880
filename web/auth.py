"""Users, API tokens and roles: who may look (viewer), steer runs (operator) or change
definitions and users (admin).

Users and tokens live in two tables of the audit store's database (``cf_web_users``,
``cf_web_tokens``), created on start if missing, so they survive restarts like the history does.
Passwords are hashed with werkzeug.security (scrypt); API tokens are random 256-bit strings of
which only a SHA-256 digest is kept. A browser authenticates with the login page (a signed
session cookie, CSRF token on every mutating request); scripts send ``Authorization: Bearer``.
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
from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Engine,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)
from werkzeug.exceptions import HTTPException
from werkzeug.security import check_password_hash, generate_password_hash

from web.serving import off_the_loop
from web.settings import ROLES

metadata = MetaData()


@cache
def _dummy_hash() -> str:
    """A hash to check a password against when the user does not exist (made once, when needed)."""
    return generate_password_hash(secrets.token_urlsafe(16))


users_table = Table(
    "cf_web_users", metadata,
    Column("username", String(200), primary_key=True),
    Column("password_hash", String(300), nullable=False),
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)
tokens_table = Table(
    "cf_web_tokens", metadata,
    Column("id", String(16), primary_key=True),
    Column("username", String(200), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("created_at", Double, nullable=False),
    Column("last_used_at", Double),
)

TOKEN_PREFIX = "cft_"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role}


class AuthError(ValueError):
    """Raised when a user or token operation is not possible (unknown user, bad role...)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


class Users:
    """The users and tokens tables."""

    def __init__(self, engine: Engine, writer: Any = None) -> None:
        self.engine = engine
        # SQLite: writers must take the lock up front (the store's BEGIN IMMEDIATE engine), or a
        # read-then-write transaction fails at once while a recorder writes.
        self.writer = writer if writer is not None else engine

    def setup(self) -> None:
        with self.writer.begin() as conn:
            metadata.create_all(conn, checkfirst=True)

    # -- users --------------------------------------------------------------------------------

    def get(self, username: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users_table.c.username, users_table.c.role).where(
                users_table.c.username == username, users_table.c.disabled.is_(False))).first()
        return User(row.username, row.role) if row else None

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(users_table).order_by(users_table.c.username)).mappings().all()
        return [{"name": r["username"], "role": r["role"], "disabled": bool(r["disabled"]),
                 "created_at": r["created_at"]} for r in rows]

    def put(self, username: str, *, password: str | None = None, role: str | None = None) -> User:
        """Create the user (password and role required) or change its password and/or role."""
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
            row = conn.execute(select(users_table.c.role).where(users_table.c.username == username)).first()
            if row is None:
                if pw_hash is None:
                    raise AuthError(f"new user '{username}' needs a password")
                conn.execute(insert(users_table).values(
                    username=username, password_hash=pw_hash,
                    role=_check_role(role or "viewer"), disabled=False, created_at=now, updated_at=now))
                return User(username, role or "viewer")
            values: dict[str, Any] = {"updated_at": now, "disabled": False}
            if pw_hash is not None:
                values["password_hash"] = pw_hash
            if role is not None:
                values["role"] = _check_role(role)
            conn.execute(update(users_table).where(users_table.c.username == username).values(**values))
            return User(username, role or row.role)

    def delete(self, username: str) -> bool:
        with self.writer.begin() as conn:
            conn.execute(delete(tokens_table).where(tokens_table.c.username == username))
            return bool(conn.execute(delete(users_table).where(users_table.c.username == username)).rowcount)

    def verify(self, username: str, password: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users_table).where(users_table.c.username == username)).first()
        if row is None or row.disabled:
            off_the_loop(check_password_hash, _dummy_hash(), password)  # same time either way
            return None
        ok = off_the_loop(check_password_hash, row.password_hash, password)
        return User(row.username, row.role) if ok else None

    # -- tokens -------------------------------------------------------------------------------

    def create_token(self, username: str, name: str = "api") -> tuple[str, str]:
        """A new API token for the user; returns (token id, token). Only the digest is stored."""
        if self.get(username) is None:
            raise AuthError(f"unknown user '{username}'")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(6)
        with self.writer.begin() as conn:
            conn.execute(insert(tokens_table).values(id=token_id, username=username, name=name[:200],
                                                     digest=_digest(token), created_at=time.time()))
        return token_id, token

    def tokens(self, username: str | None = None) -> list[dict[str, Any]]:
        q = select(tokens_table.c.id, tokens_table.c.username, tokens_table.c.name, tokens_table.c.created_at,
                   tokens_table.c.last_used_at).order_by(tokens_table.c.created_at)
        if username is not None:
            q = q.where(tokens_table.c.username == username)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def revoke(self, token_id: str, username: str | None = None) -> bool:
        q = delete(tokens_table).where(tokens_table.c.id == token_id)
        if username is not None:
            q = q.where(tokens_table.c.username == username)
        with self.writer.begin() as conn:
            return bool(conn.execute(q).rowcount)

    def user_for_token(self, token: str) -> User | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                select(users_table.c.username, users_table.c.role)
                .select_from(tokens_table.join(users_table, users_table.c.username == tokens_table.c.username))
                .where(tokens_table.c.digest == _digest(token), users_table.c.disabled.is_(False))).first()
        return User(row.username, row.role) if row else None


# ---------------------------------------------------------------------------------------------
# Request-side: who is asking, and may they?
# ---------------------------------------------------------------------------------------------


def users() -> Users:
    return current_app.extensions["canvasflow"].users


def identify(authorization: str | None, session_user: str | None) -> tuple[User | None, str]:
    """The user behind a Bearer token or a session, else the anonymous role; and how."""
    ext = current_app.extensions["canvasflow"]
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return ext.users.user_for_token(token.strip()), "token"
        return None, "invalid"
    if session_user:
        user = ext.users.get(session_user)
        if user is not None:
            return user, "session"
    if ext.web.anonymous_role:
        return User("anonymous", ext.web.anonymous_role), "anonymous"
    return None, "none"


def load_user() -> None:
    user, via = identify(request.headers.get("Authorization"), session.get("user"))
    g.user, g.auth_via = user, via


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
        fn._apidoc = {**getattr(fn, "_apidoc", {}),  # type: ignore[attr-defined]
                      "access": {"role": access.role, "mutating": access.mutating, "errors": access.errors}}
        return fn

    return deco


def require(role: str = "viewer", *, mutating: bool = False, errors: tuple[int, ...] = (), audit: str | None = None,
            target_type: str = "run", target: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the role an API view needs; ``rest.guard`` checks it before the view's arguments
    are parsed: 401 without a user, 403 for a lesser role, a read-only dashboard (``mutating``) or
    a session request without the CSRF token. ``errors``: the other error statuses the view
    answers (documented in the OpenAPI). ``audit``: write a refusal of a known user to the audit
    log as this action, on the path's first parameter (or the body field ``target``)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
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
    # outcome is at most 32 characters in the audit table; the rest goes in detail.
    store.record_action(actor=user.name, action=access.audit, target_type=access.target_type,
                        target_id=str(target if target is not None else "")[:200],
                        outcome=f"refused: {user.role}", detail={"needs": access.role, "role": user.role})


def check(role: str, *, mutating: bool = False) -> User:
    user = current_user()
    if user is None:
        if g.get("auth_via") == "token":
            _refuse(401, "invalid or revoked API token")
        _refuse(401, "authentication required: log in, or send Authorization: Bearer <token>")
        raise AssertionError  # abort raised
    if mutating and current_app.extensions["canvasflow"].web.read_only:
        _refuse(403, "this dashboard is read-only")
    if not user.can(role):
        _refuse(403, f"'{user.name}' is a {user.role}; this needs the {role} role")
    if mutating and g.get("auth_via") == "session" and request.method not in SAFE_METHODS:
        sent = request.headers.get("X-CSRF-Token", "")
        if not sent or not hmac.compare_digest(sent, str(session.get("csrf", ""))):
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
    error = None
    if request.method == "POST":
        form_csrf = request.form.get("csrf", "")
        if not hmac.compare_digest(form_csrf, str(session.get("csrf", ""))):
            error = "The form expired; please try again."
        else:
            user = users().verify(request.form.get("username", ""), request.form.get("password", ""))
            if user is None:
                error = "Unknown user or wrong password."
            else:
                session.clear()
                session.permanent = True
                session["user"] = user.name
                csrf_token()
                return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", error=error, csrf=csrf_token(), page="login",
                           next=request.args.get("next", "")), (401 if error else 200)


@login_pages.route("/logout", methods=["POST", "GET"])
def logout() -> Any:
    session.clear()
    return redirect(url_for("login.login"))
