"""REST routes on accounts: log in and out, the caller's identity, API tokens, users and the
permissions granted to them, login lockouts, and the audit log of those changes. Added to the REST
API's blueprint (/api/v1) when imported, which web/app.py does before registering it."""

from __future__ import annotations

import time
from typing import Any

from flask import g, request, session
from flask.views import MethodView
from flask_smorest import abort
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.audit import queries
from orchestrator.errors import StoreError
from web import audit as web_audit
from web import auth, schemas
from web.api import blp, ext
from web.settings import PERMISSIONS
from web.throttle import Throttled, attempt, throttle


@blp.route("/auth/login", methods=["POST"])
@auth.public(errors=(401, 429))
@blp.arguments(schemas.LoginBody)
@blp.response(200, schemas.MeSchema)
def login(body: dict[str, Any]) -> dict[str, Any]:
    """Log in with a password: sets the session cookie; send csrf_token as X-CSRF-Token. Failed
    logins are throttled per account and per address (429 with Retry-After)."""
    try:
        user = attempt(body["username"], body["password"], auth.users().verify)
    except Throttled as exc:
        abort(429, message=exc.message, headers={"Retry-After": str(exc.retry_after)})
        raise
    if user is None:
        abort(401, message="unknown user or wrong password")
    csrf = auth.start_session(user)
    return {
        **user.as_dict(),
        "via": "session",
        "read_only": ext().web.read_only,
        "csrf_token": csrf,
    }


@blp.route("/auth/logout", methods=["POST"])
@auth.public(errors=(403,))
def logout() -> dict[str, Any]:
    """End this browser's session; needs the session's X-CSRF-Token (so no other page can)."""
    if session.get("user") and not auth.csrf_matches(request.headers.get("X-CSRF-Token")):
        abort(403, message="missing or wrong X-CSRF-Token header (reload the page)")
    session.clear()
    return {"message": "logged out"}


@blp.route("/auth/me")
@auth.require("viewer")
@blp.response(200, schemas.MeSchema)
def me() -> dict[str, Any]:
    """Who the request authenticates as (401 if nobody)."""
    user = auth.current_user()
    assert user is not None
    return {
        **user.as_dict(),
        "via": g.auth_via,
        "read_only": ext().web.read_only,
        "csrf_token": auth.csrf_token() if g.auth_via == "session" else None,
    }


@blp.route("/auth/tokens")
class Tokens(MethodView):
    @auth.require("viewer")
    @blp.response(200, schemas.TokenSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """Your API tokens (admins: everyone's)."""
        user = auth.current_user()
        assert user is not None
        return auth.users().tokens(None if user.can("admin") else user.name)

    @auth.require("viewer", mutating=True, errors=(404,))
    @blp.arguments(schemas.TokenBody, required=False)
    @blp.response(201, schemas.TokenSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new API token with your role (admins: for any user, ``username``); the token is shown
        only in this response."""
        user = auth.current_user()
        assert user is not None
        owner = body.get("username") or user.name
        if owner != user.name:
            audited_check("admin", "token_create", "token", owner)
        name = body.get("name", "api")
        try:
            with web_audit.recorded(f"the token for '{owner}'"):
                token_id, token = auth.users().create_token(
                    owner,
                    name,
                    audit=lambda tid: web_audit.entry(
                        "token_create", "token", tid, {"user": owner, "name": name}
                    ),
                )
        except auth.AuthError as exc:
            abort(404, message=str(exc))
            raise
        return {
            "id": token_id,
            "username": owner,
            "name": name,
            "created_at": time.time(),
            "token": token,
        }


@blp.route("/auth/tokens/<token_id>", methods=["DELETE"])
@auth.require("viewer", mutating=True)
@blp.response(204)
def revoke_token(token_id: str) -> None:
    """Revoke a token (your own; admins: anyone's). It stops working at once."""
    user = auth.current_user()
    assert user is not None
    mine = None if user.can("admin") else user.name
    owner = next((t["username"] for t in auth.users().tokens(mine) if t["id"] == token_id), None)
    with web_audit.recorded(f"the revocation of token '{token_id}'"):
        gone = owner is not None and auth.users().revoke(
            token_id,
            mine,
            audit=web_audit.entry("token_revoke", "token", token_id, {"user": owner}),
        )
    if not gone:
        abort(404, message=f"unknown token '{token_id}'")


@blp.route("/users")
class UsersView(MethodView):
    @auth.require("admin")
    @blp.response(200, schemas.UserSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """Every user with its role (admin)."""
        return auth.users().list()

    @auth.require(
        "admin",
        mutating=True,
        errors=(409,),
        audit="user_create",
        target_type="user",
        target="name",
    )
    @blp.arguments(schemas.UserBody)
    @blp.response(201, schemas.UserSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a user (or change an existing one's password / role) (admin)."""
        name = body["name"].strip()
        existed = any(u["name"] == name for u in auth.users().list())
        if existed:
            _not_yourself(name, body["role"], "change")
        try:
            with web_audit.recorded(f"the change of user '{name}'"):
                user = auth.users().put(
                    name,
                    password=body["password"],
                    role=body["role"],
                    audit=web_audit.entry(
                        "user_update" if existed else "user_create",
                        "user",
                        name,
                        {"role": body["role"], "password_changed": body["password"] is not None},
                    ),
                )
        except auth.AuthError as exc:
            abort(
                400, errors={"json": {"password" if "password" in str(exc) else "name": [str(exc)]}}
            )
            raise
        auth.restamp_session(user)
        return auth.users().row(user.name)


@blp.route("/users/<name>")
class UserView(MethodView):
    @auth.require("admin", mutating=True, errors=(409,), audit="user_update", target_type="user")
    @blp.arguments(schemas.UserPatch)
    @blp.response(200, schemas.UserSchema)
    def patch(self, body: dict[str, Any], name: str) -> dict[str, Any]:
        """Change a user's role and/or password, or disable / enable it (admin). A password or role
        change, or disabling, ends the user's sessions and API tokens at once."""
        audited_check("admin", "user_update", "user", name)
        if not auth.users().exists(name):
            abort(404, message=f"unknown user '{name}'")
        _not_yourself(name, body["role"], "change")
        if body.get("disabled") is True:
            _not_yourself(name, None, "disable")
        user: auth.User | None = None
        with web_audit.recorded(f"the change of user '{name}'"):
            if body["password"] is not None or body["role"] is not None:
                user = auth.users().put(
                    name,
                    password=body["password"],
                    role=body["role"],
                    audit=web_audit.entry(
                        "user_update",
                        "user",
                        name,
                        {"role": body["role"], "password_changed": body["password"] is not None},
                    ),
                )
            if body.get("disabled") is not None:
                user = auth.users().set_disabled(
                    name,
                    body["disabled"],
                    audit=web_audit.entry(
                        "user_disable" if body["disabled"] else "user_enable", "user", name, None
                    ),
                )
        auth.restamp_session(user)
        return auth.users().row(name)

    @auth.require("admin", mutating=True, errors=(409,), audit="user_delete", target_type="user")
    @blp.response(204)
    def delete(self, name: str) -> None:
        """Delete a user and revoke its tokens (admin)."""
        _not_yourself(name, None, "delete")
        with web_audit.recorded(f"the deletion of user '{name}'"):
            gone = auth.users().delete(
                name, audit=web_audit.entry("user_delete", "user", name, None)
            )
        if not gone:
            abort(404, message=f"unknown user '{name}'")


@blp.route("/audit/users")
@auth.require("admin")
@blp.response(200, schemas.AuditListSchema)
def users_audit() -> dict[str, Any]:
    """The latest 100 actions on users and tokens (admin), newest first: who did what."""
    store = ext().store
    if store is None:
        return {"actions": []}
    try:
        rows = queries.audit_entries(store, target_types=("user", "token", "address"), limit=100)
    except StoreError as exc:
        abort(503, message=f"the audit store is unavailable: {exc}")
        raise
    return {
        "actions": [
            {
                "ts": r["ts"],
                "actor": r["actor"],
                "action": r["action"],
                "target_type": r["target_type"],
                "target_id": r["target_id"],
                "outcome": r["outcome"],
                "detail": r["detail"],
            }
            for r in rows
        ]
    }


def _not_yourself(name: str, role: str | None, what: str) -> None:
    """An admin may not delete or demote themselves: there must always be an admin left."""
    user = auth.current_user()
    if (
        user is not None
        and user.name == name
        and (what in ("delete", "disable") or (role is not None and role != "admin"))
    ):
        verb = what if what in ("delete", "disable") else "demote"
        web_audit.record(
            f"user_{'update' if what == 'change' else what}",
            "user",
            name,
            {"role": role},
            outcome="refused: own account",
            what="the refusal was not recorded",
        )
        abort(
            409,
            message=f"you cannot {verb} your own account (ask another admin, so that an admin is always left)",
        )


def audited_check(role: str, action: str, target_type: str, target_id: str) -> auth.User:
    """``auth.check(role, mutating=True)``; a refusal of a known user is written to the audit log."""
    try:
        return auth.check(role, mutating=True)
    except Exception:
        user = auth.current_user()
        if user is not None:
            web_audit.record(
                action,
                target_type,
                target_id,
                {"needs": role, "role": user.role},
                outcome=f"refused: {user.role}",
                what="the refusal was not recorded",
            )
        raise


def _known_permission(permission: str) -> None:
    if permission not in PERMISSIONS:
        abort(
            404,
            message=f"unknown permission '{permission}'; permissions are: {', '.join(PERMISSIONS)}",
        )


@blp.route("/users/<name>/permissions/<permission>")
class UserPermission(MethodView):
    @auth.require("admin", mutating=True, audit="permission_grant", target_type="user")
    @blp.response(200, schemas.UserSchema)
    def put(self, name: str, permission: str) -> dict[str, Any]:
        """Grant a permission to a user (admin): ``submit_inline`` lets an operator submit inline
        definitions. Admins have every permission already. Audited."""
        return _set(name, permission, True)

    @auth.require("admin", mutating=True, audit="permission_revoke", target_type="user")
    @blp.response(200, schemas.UserSchema)
    def delete(self, name: str, permission: str) -> dict[str, Any]:
        """Withdraw a permission (admin); it applies from the user's next request. Audited."""
        return _set(name, permission, False)


def _set(name: str, permission: str, granted: bool) -> dict[str, Any]:
    action = "permission_grant" if granted else "permission_revoke"
    audited_check("admin", action, "user", name)
    _known_permission(permission)
    with web_audit.recorded(
        f"the {'grant' if granted else 'withdrawal'} of {permission} to '{name}'"
    ):
        found = auth.users().set_permission(
            name,
            permission,
            granted,
            audit=web_audit.entry(action, "user", name, {"permission": permission}),
        )
    if not found:
        abort(404, message=f"unknown user '{name}'")
    row = auth.users().row(name)
    assert row is not None
    return row


@blp.route("/auth/lockouts")
@auth.require("admin")
@blp.response(200, schemas.LockoutListSchema)
def lockouts() -> dict[str, Any]:
    """Accounts and addresses locked out by failed logins now (admin), the longest lock first."""
    try:
        return {"lockouts": throttle().lockouts()}
    except SQLAlchemyError as e:
        abort(
            503,
            message=f"the login throttle's table is unavailable: {str(e).splitlines()[0]}",
            headers={"Retry-After": "5"},
        )
        raise


@blp.route("/auth/lockouts/unlock", methods=["POST"])
@auth.require(
    "admin",
    mutating=True,
    errors=(404,),
    audit="login_unlock",
    target_type="user",
    target="username",
)
@blp.arguments(schemas.UnlockBody)
@blp.response(200, schemas.UnlockResultSchema)
def unlock(body: dict[str, Any]) -> dict[str, Any]:
    """Lift the lockout of an account (``username``) and/or an address (``address``) and forget
    their failed logins (admin). Audited."""
    target = body.get("username") or body.get("address") or ""
    audited_check("admin", "login_unlock", "user" if body.get("username") else "address", target)
    if not body.get("username") and not body.get("address"):
        abort(
            400,
            message="send username and/or address: what to unlock",
            errors={"json": {"username": ["username or address is required"]}},
        )
    done = []
    for scope, subject in (("user", body.get("username")), ("address", body.get("address"))):
        if not subject:
            continue
        with web_audit.recorded(f"the unlock of {scope} '{subject}'"):
            if throttle().unlock(
                scope,
                subject,
                audit=web_audit.entry(
                    "login_unlock", scope, subject, None, reason=body.get("reason")
                ),
            ):
                done.append({"scope": scope, "subject": subject})
    if not done:
        abort(404, message=f"no failed logins on record for {target!r}: nothing to unlock")
    return {"unlocked": done}
