"""The canvasflow dashboard: ``create_app(settings)`` returns the Flask app (REST API, Socket.IO,
pages); ``python -m web`` serves it. See docs/api.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from orchestrator.settings import Settings
    from web.settings import WebSettings

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None, web: WebSettings | None = None, *, start: bool = True
) -> Flask:
    """Build the dashboard app (imports Flask only when called)."""
    from web.app import create_app as factory

    return factory(settings, web, start=start)


def services(app: Any) -> Any:
    """The app's Services (client, store, users, socketio, relay...)."""
    return app.extensions["canvasflow"]
