"""The app factory: ``create_app(settings, web)`` builds the Flask app, the REST API, Socket.IO
and the background services of one web process (stream relay, SLA monitor, optionally the
audit recorder). Nothing is built at import time."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, has_request_context, request, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_socketio import SocketIO
from werkzeug.middleware.proxy_fix import ProxyFix

from orchestrator.audit.store import AuditStore
from orchestrator.connect import state_redis
from orchestrator.engine.client import Client
from orchestrator.errors import StoreError
from orchestrator.keys import Keys
from orchestrator.settings import Settings
from web import (
    accounts,  # noqa: F401 - adds the account routes to api.blp
    auth,
    children,  # noqa: F401 - adds the child-run route to api.blp
    items,  # noqa: F401 - adds the routes on items of mapped steps to api.blp
    limits,
    notify,  # noqa: F401 - adds the notification routes to api.blp
    pages,
    publish,  # noqa: F401 - adds POST /events to api.blp
    rest,
    schedules,  # noqa: F401 - adds the schedule routes to api.blp
    workflows,  # noqa: F401 - adds the workflow and analytics routes to api.blp
)
from web import api as api_module
from web.detail import RunDetails
from web.events import Live
from web.runs import RunViews
from web.serving import async_mode
from web.settings import WebSettings
from web.stream import SlaMonitor, StreamTail
from web.throttle import Throttle

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
DIST = HERE / "static" / "dist"
FRONTEND_HINT = (
    "the dashboard's bundle (web/static/dist) is missing from this checkout, though it is "
    "committed: restore it with `git checkout -- web/static/dist`, or rebuild it with "
    "`npm ci && npm run build` in web/frontend (Node.js 18+)"
)


@dataclass
class Services:
    """Everything one web process holds; ``app.extensions['canvasflow']``."""

    settings: Settings
    web: WebSettings
    client: Client
    store: AuditStore | None
    users: auth.Users
    views: RunViews
    details: RunDetails
    throttle: Throttle
    socketio: SocketIO | None = None
    server: str = "threading"  # Flask-SocketIO's async mode: gevent or threading (web/serving.py)
    live: Live | None = None
    relay: StreamTail | None = None
    sla: SlaMonitor | None = None
    recorder: Any = None
    scheduler: Any = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    started: bool = False

    def start(self) -> None:
        """Start the background threads (idempotent)."""
        if self.started:
            return
        self.started = True
        if self.web.relay and self.live is not None:
            r = state_redis(self.settings, health_check_interval=30)
            self.relay = StreamTail(
                r,
                self.client.keys,
                self.live.deliver,
                window=self.web.relay_window,
                idle=self.live.flush_items,
            )
            self.relay.start()
        if self.web.sla_monitor:
            self.sla = SlaMonitor(self.client.state, self.web.sla_interval)
            self.sla.start()
        if self.web.recorder and self.store is not None:
            from orchestrator.audit.recorder import Recorder
            from orchestrator.engine.notify import recorder_hook

            r = state_redis(self.settings, socket_timeout=30, health_check_interval=30)
            hooks = [recorder_hook(self.settings, self.store)]  # notifications: one message each
            self.recorder = Recorder(self.store, r, self.client.keys, hooks=hooks)
            self.recorder.start_thread(self.stop_event)
        if self.web.scheduler:  # fires schedule triggers (orchestrator/engine/scheduler.py)
            from orchestrator.engine.scheduler import Scheduler

            self.scheduler = Scheduler(self.client, self.store)
            self.scheduler.start_thread(self.stop_event)

    def stop(self) -> None:
        self.stop_event.set()
        if self.relay is not None:
            self.relay.stop()
        if self.sla is not None:
            self.sla.stop()


def _forget_shared_key(client: Client) -> None:
    """Delete the signing key that versions before 2026-12 kept in Redis (``<prefix>:web:secret_key``):
    anyone who could read Redis forged sessions with it. Nothing reads it any more."""
    try:
        if client.redis.delete(client.keys.legacy_web_secret):
            log.warning(
                "deleted the session signing key an older version kept in Redis; sessions it signed "
                "are no longer valid"
            )
    except Exception as exc:  # noqa: BLE001 - Redis may come later; the key is unused either way
        log.info("could not check Redis for an old signing key: %s", exc)


class _SessionInterface(SecureCookieSessionInterface):
    """Session cookies are Secure when configured, and whenever the request came over HTTPS
    (directly, or through a proxy trusted with CANVASFLOW_WEB_PROXY_FIX)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (
            has_request_context() and request.is_secure
        )


def _open_store(settings: Settings) -> AuditStore | None:
    if not settings.database_url or settings.database_url.lower() == "none":
        return None
    store = AuditStore(settings.database_url)
    try:
        store.upgrade()
    except StoreError as exc:
        log.warning(
            "audit store %s not usable yet (%s): history, logs and analytics will be missing",
            store.display_url,
            exc,
        )
    return store


def create_app(
    settings: Settings | None = None, web: WebSettings | None = None, *, start: bool = True
) -> Flask:
    """The dashboard. ``start=False`` leaves the background threads to ``services.start()``."""
    settings = settings or Settings.from_env()
    web = web or WebSettings.from_env()
    secret_key = web.signing_key()  # first: without one nothing else is worth starting
    app = Flask(
        __name__, static_folder=str(HERE / "static"), template_folder=str(HERE / "templates")
    )
    client = Client(settings, cpu=limits.cpu_runner(web))
    store = _open_store(settings)
    # Without an audit store, accounts live in a private in-memory one (nothing to audit them in).
    account_store = store if store is not None else _memory_store()
    users = auth.Users(account_store, audited=store is not None)
    login_throttle = Throttle(account_store, web, audited=store is not None)
    try:
        # Reset only when it does not hold already: a reset ends admin's sessions and tokens, and
        # every web process of a fleet starts with the same setting.
        if (
            web.admin_password
            and getattr(users.verify("admin", web.admin_password), "role", None) != "admin"
        ):
            users.put("admin", password=web.admin_password, role="admin")
    except Exception as exc:  # noqa: BLE001 - the database may come later; logins fail until then
        log.warning("users table not available: %s", exc)
    views = RunViews(client, store)
    services = Services(
        settings=settings,
        web=web,
        client=client,
        store=store,
        users=users,
        views=views,
        details=RunDetails(client, store, views),
        throttle=login_throttle,
    )
    app.extensions["canvasflow"] = services
    _forget_shared_key(client)
    app.session_interface = _SessionInterface()
    if web.proxy_fix:
        # Before Socket.IO wraps wsgi_app, so that its handshakes see the client's scheme too.
        app.wsgi_app = ProxyFix(
            app.wsgi_app,
            x_for=web.proxy_fix,
            x_proto=web.proxy_fix,  # type: ignore[method-assign]
            x_host=web.proxy_fix,
        )
    app.config.update(
        SECRET_KEY=secret_key,
        SESSION_COOKIE_NAME="canvasflow_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=web.cookie_secure,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=web.session_hours),
        API_TITLE="canvasflow",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "security": [{"bearer": []}, {"session": []}],
            "info": {"description": "canvasflow dashboard API; see docs/api.md"},
        },
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=web.max_request_bytes,
    )
    limits.register(app, web)
    api = rest.Api(app)
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    api.spec.components.security_scheme(
        "session", {"type": "apiKey", "in": "cookie", "name": "canvasflow_session"}
    )
    api.register_blueprint(api_module.blp)
    from web import inspect as fleet_inspect  # fleet inspection, /metrics, /healthz, /readyz

    fleet_inspect.register(app, api)
    app.register_blueprint(auth.login_pages)
    app.register_blueprint(pages.bp)

    @app.before_request
    def _identify() -> None:
        if not request.path.startswith("/static/"):
            auth.load_user()
            rest.guard()  # the route's declared role, before its arguments are read

    @app.after_request
    def _headers(resp: Any) -> Any:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        if resp.mimetype == "text/html":
            resp.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'",
            )
        return resp

    @app.context_processor
    def _assets() -> dict[str, Any]:
        def asset(name: str) -> str:
            path = DIST / name
            version = int(path.stat().st_mtime) if path.exists() else 0
            return url_for("static", filename=f"dist/{name}", v=version)

        return {
            "asset": asset,
            "frontend_missing": None if (DIST / "main.js").exists() else FRONTEND_HINT,
            "read_only": web.read_only,
            "csrf_token": auth.csrf_token,
        }

    queue: str | None = (
        None if web.message_queue.lower() == "none" else (web.message_queue or settings.redis_url)
    )
    cors: Any = [o.strip() for o in web.cors_origins.split(",") if o.strip()] or None
    if web.cors_origins.strip() == "*":
        cors = "*"
    services.server = async_mode()
    socketio = SocketIO(
        app,
        async_mode=services.server,
        message_queue=queue,
        channel=Keys(settings.key_prefix).socketio_channel,
        cors_allowed_origins=cors,
        ping_interval=10,
        ping_timeout=10,
        logger=False,
        engineio_logger=False,
    )
    services.socketio = socketio
    services.live = Live(socketio, services)
    if start:
        services.start()
    return app


def _memory_store() -> AuditStore:
    store = AuditStore("sqlite://")
    store.upgrade()
    return store
