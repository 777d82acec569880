"""``python -m web``: serve the dashboard, or manage its users and tokens.

    python -m web [serve] [--host 127.0.0.1] [--port 8080] [--read-only] [--recorder]
    python -m web users add NAME --role {viewer,operator,admin,publisher} [--password-stdin]
    python -m web users list | delete NAME
    python -m web users grant|revoke NAME submit_inline   # a permission beyond the role
    python -m web users unlock NAME [--address]     # lift a login lockout
    python -m web token NAME [--name LABEL]       # prints a new API token for NAME

Settings come from CANVASFLOW_* (orchestrator.Settings) and CANVASFLOW_WEB_* (web.settings).
Served by gevent's WSGI server with Flask-SocketIO in gevent mode (WebSocket through
simple-websocket); ``--server threading`` (or CANVASFLOW_WEB_SERVER=threading) serves with
Werkzeug's threads instead. See web/serving.py.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # First, before redis, kombu, psycopg or Flask import socket, select or threading.
    from web import serving

    SERVER = serving.prepare(serving.choose(sys.argv[1:]))
else:
    SERVER = "threading"

import argparse  # noqa: E402
import gc  # noqa: E402
import getpass  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
from typing import Any  # noqa: E402

from orchestrator.errors import CanvasflowError  # noqa: E402
from web.settings import PERMISSIONS  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canvasflow web", description="The canvasflow dashboard.")
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the dashboard (the default)")
    for target in (p, serve):
        target.add_argument("--host", default=os.environ.get("CANVASFLOW_WEB_HOST", "127.0.0.1"))
        target.add_argument(
            "--port", type=int, default=int(os.environ.get("CANVASFLOW_WEB_PORT", "8080"))
        )
        target.add_argument("--read-only", action="store_true", help="refuse every change (403)")
        target.add_argument(
            "--recorder", action="store_true", help="run the audit recorder in this process"
        )
        target.add_argument(
            "--scheduler", action="store_true", help="fire schedule triggers in this process"
        )
        target.add_argument(
            "--anonymous-role",
            choices=["viewer", "operator", "admin"],
            default=None,
            help="role of visitors who have not logged in (default: they must log in)",
        )
        target.add_argument(
            "--log-level", default=os.environ.get("CANVASFLOW_LOG_LEVEL", "WARNING")
        )
        target.add_argument(
            "--server",
            choices=["gevent", "threading"],
            default=None,
            help="gevent (default; $CANVASFLOW_WEB_SERVER) or Werkzeug's threads",
        )
    users = sub.add_parser("users", help="manage users")
    usub = users.add_subparsers(dest="users_command", required=True)
    add = usub.add_parser("add", help="create a user, or change its role / password")
    add.add_argument("name")
    add.add_argument("--role", choices=["viewer", "operator", "admin", "publisher"], default=None)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    usub.add_parser("list", help="list users")
    delete = usub.add_parser("delete", help="delete a user and its tokens")
    delete.add_argument("name")
    for verb, text in (
        ("grant", "grant a permission beyond the role (admins have all)"),
        ("revoke", "withdraw a permission"),
    ):
        perm = usub.add_parser(verb, help=text)
        perm.add_argument("name")
        perm.add_argument("permission", choices=list(PERMISSIONS))
    unlock = usub.add_parser("unlock", help="lift a login lockout and forget the failed logins")
    unlock.add_argument("name", help="the user name (or, with --address, the client address)")
    unlock.add_argument("--address", action="store_true", help="NAME is a client address")
    token = sub.add_parser("token", help="create an API token for a user and print it")
    token.add_argument("name")
    token.add_argument("--name", dest="label", default="cli")
    return p


def _users() -> Any:
    from orchestrator.audit.store import AuditStore
    from orchestrator.settings import Settings
    from web.auth import Users

    store = AuditStore(Settings.from_env().database_url)
    store.upgrade()
    return Users(store)


def _cli_audit(
    action: str, target_type: str, target: str, detail: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The audit row of a change made on the server with this command (actor ``cli:<login>``)."""
    import json
    import time

    try:
        who = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        who = str(os.getuid())
    return {
        "ts": time.time(),
        "actor": f"cli:{who}"[:200],
        "action": action,
        "target_type": target_type,
        "target_id": target[:200],
        "reason": None,
        "outcome": "ok",
        "detail": json.dumps(detail) if detail is not None else None,
    }


def serve(args: argparse.Namespace) -> int:
    from orchestrator.settings import Settings
    from web import serving
    from web.app import create_app
    from web.settings import WebSettings

    if SERVER not in serving.SERVERS:
        print(
            f"error: CANVASFLOW_WEB_SERVER={SERVER!r}: expected one of {', '.join(serving.SERVERS)}",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if SERVER == "threading":
        # The relay, recorder, fleet-event capture and page requests are Python threads here: with
        # the default 5 ms GIL switch interval a relay thread woken by XREAD waited behind them.
        sys.setswitchinterval(0.001)
    overrides: dict[str, Any] = {}
    if args.read_only:
        overrides["read_only"] = True
    if args.recorder:
        overrides["recorder"] = True
    if args.scheduler:
        overrides["scheduler"] = True
    if args.anonymous_role:
        overrides["anonymous_role"] = args.anonymous_role
    web = WebSettings.from_env(**overrides)
    app = create_app(Settings.from_env(), web)
    services = app.extensions["canvasflow"]
    # What start-up built (modules, the app, schemas, SQLAlchemy's tables: ~130,000 objects) lives
    # as long as the process: frozen, the collector no longer scans it. A full collection took
    # 30-70 ms here, in whichever request or service allocated, and under gevent that holds every
    # socket and the relay (docs/performance.md, "Dashboard"); it now scans what came since.
    gc.collect()
    gc.freeze()
    if SERVER == "gevent":
        import gevent

        # A greenlet, not a signal handler: stopping joins greenlets, which a handler may not.
        gevent.signal_handler(signal.SIGTERM, lambda: services.socketio.stop())
    else:

        def _stop(*_: Any) -> None:
            services.stop()
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, _stop)
    print(
        f"canvasflow dashboard: http://{args.host}:{args.port}/ ({services.server}, "
        f"{'read-only, ' if web.read_only else ''}{'with recorder, ' if web.recorder else ''}"
        f"audit store {services.store.display_url if services.store else 'none'})",
        flush=True,
    )
    try:
        services.socketio.run(
            app,
            host=args.host,
            port=args.port,
            allow_unsafe_werkzeug=True,
            log_output=args.log_level.upper() == "DEBUG",
            use_reloader=False,
            **serving.handler_options(SERVER),
        )
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in (None, "serve"):
            return serve(args)
        from web.auth import AuthError

        users = _users()
        if args.command == "token":
            token_id, token = users.create_token(args.name, args.label)
            print(token)
            return 0
        if args.users_command == "list":
            for u in users.list():
                print(f"{u['name']}\t{u['role']}{'  (disabled)' if u['disabled'] else ''}")
            return 0
        if args.users_command == "delete":
            if not users.delete(args.name, audit=_cli_audit("user_delete", "user", args.name)):
                print(f"no user '{args.name}'", file=sys.stderr)
                return 1
            return 0
        if args.users_command in ("grant", "revoke"):
            granted = args.users_command == "grant"
            action = "permission_grant" if granted else "permission_revoke"
            if not users.set_permission(
                args.name,
                args.permission,
                granted,
                audit=_cli_audit(action, "user", args.name, {"permission": args.permission}),
            ):
                print(f"no user '{args.name}'", file=sys.stderr)
                return 1
            print(
                f"{args.name}: {', '.join(users.row(args.name)['permissions']) or 'no permissions'}"
            )
            return 0
        if args.users_command == "unlock":
            from web.settings import WebSettings
            from web.throttle import Throttle

            scope = "address" if args.address else "user"
            t = Throttle(users.store, WebSettings())
            if not t.unlock(scope, args.name, audit=_cli_audit("login_unlock", scope, args.name)):
                print(f"no failed logins on record for {scope} '{args.name}'", file=sys.stderr)
                return 1
            print(f"unlocked {scope} '{args.name}'")
            return 0
        password = None
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        elif users.get(args.name) is None:
            password = getpass.getpass(f"password for {args.name}: ")
        try:
            user = users.put(
                args.name,
                password=password,
                role=args.role,
                audit=_cli_audit(
                    "user_update" if users.exists(args.name) else "user_create",
                    "user",
                    args.name,
                    {"role": args.role, "password_changed": password is not None},
                ),
            )
        except AuthError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{user.name}: {user.role}")
        return 0
    except CanvasflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
