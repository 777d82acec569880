"""Admin routes on accounts beyond users and tokens (which web/api.py serves): permissions granted
to a user, and login lockouts. Added to the REST API's blueprint (/api/v1) when imported, which
web/app.py does before registering it."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import abort
from sqlalchemy import exc

from web import audit as web_audit
from web import auth, schemas
from web.api import audited_check, blp
from web.settings import PERMISSIONS
from web.throttle import throttle


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
    except exc.SQLAlchemyError as e:
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
