"""The REST machinery every API blueprint shares: the parser (400, not 422), the blueprint that
documents each route's access and error responses in the OpenAPI document, the ``Api`` whose
errors are JSON under /api (HTML pages elsewhere), and the request guard that checks a route's
declared role before anything reads its query or body.

How a route declares itself (docs/api.md, "Declaring a route"): ``@auth.require(role, ...)`` or
``@auth.public(...)`` on every API view, with ``errors=(409, ...)`` for the error responses only
the route itself knows of. The rest is documented from what the route is: 401/403 from its access,
400 from its arguments, 415 from a JSON body, 413 when the app limits request sizes, 404 when the
path names something, 503 everywhere (Redis or the audit store unreachable); no "default" response,
so the document lists every status a route answers and a contract test can hold it to that.
"""

from __future__ import annotations

import http
from typing import Any

import flask_smorest
import redis
from flask import current_app, render_template, request
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import ServiceUnavailable

from orchestrator.errors import StoreError
from web import auth, schemas

RETRY_AFTER = 5  # seconds a client is asked to wait when Redis or the audit store is unreachable
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
ALWAYS = (503,)


class Parser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400  # the API promises 400 with per-field messages, not 422


def _json_body(doc_info: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON body parameter an operation's ``blp.arguments`` declared, if any."""
    for p in (doc_info.get("arguments") or {}).get("parameters", []):
        if isinstance(p, dict) and p.get("in") == "json":
            return p
    return None


def _note_access_doc(
    doc: dict[str, Any], doc_info: dict[str, Any], *, app: Any, **_: Any
) -> dict[str, Any]:
    """The error statuses a route can answer, from its declared access and its arguments (runs
    first: flask-smorest's own callbacks consume the arguments' doc info)."""
    access = doc_info.get("access") or {}
    codes: set[int] = set(ALWAYS) | set(access.get("errors", ()))
    if access.get("role") is not None:
        codes.add(401)
        if access["role"] != "viewer" or access.get("mutating"):
            codes.add(403)
    if doc_info.get("arguments"):
        codes.add(400)
    if _json_body(doc_info) is not None:
        codes.add(415)
        if app.config.get("MAX_CONTENT_LENGTH"):
            codes.add(413)
    doc_info["error_codes"] = sorted(codes)
    return doc


def _add_access_doc(doc: dict[str, Any], doc_info: dict[str, Any], **_: Any) -> dict[str, Any]:
    responses = doc.setdefault("responses", {})
    if not any(str(k).startswith("2") for k in responses):
        # a view that returns a plain dict without a response schema: still a documented 200
        responses["200"] = {
            "description": "OK",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    if (doc_info.get("access") or {}).get("role", "") is None:
        doc["security"] = []  # public: no credentials needed (the document's default asks for them)
    for code in doc_info.get("error_codes", ()):
        responses.setdefault(str(code), UNAVAILABLE if code == 503 else http.HTTPStatus(code).name)
    return doc


UNAVAILABLE = {
    "description": "Redis or the audit store is unreachable (or the server is overloaded); retry later",
    "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    "content": {"application/json": {"schema": schemas.ErrorSchema}},
}


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.insert(0, _note_access_doc)
        self._prepare_doc_cbks.append(_add_access_doc)


class Api(flask_smorest.Api):
    """JSON errors under /api, the HTML error page elsewhere."""

    ERROR_SCHEMA = schemas.ErrorSchema
    DEFAULT_ERROR_RESPONSE_NAME = (
        None  # every status is listed per route, none hides behind "default"
    )

    def init_app(self, app: Any, *args: Any, **kwargs: Any) -> None:
        super().init_app(app, *args, **kwargs)
        app.register_error_handler(REDIS_DOWN[0], self.handle_unavailable)
        app.register_error_handler(REDIS_DOWN[1], self.handle_unavailable)
        app.register_error_handler(StoreError, self.handle_unavailable)

    def register_blueprint(self, blp: Any, **options: Any) -> None:
        super().register_blueprint(blp, **options)
        known = self.spec.components.schemas
        for name, extra in schemas.OPENAPI_EXTRAS.items():
            if name in known:
                known[name].update(extra)
        # A path parameter names something that may not exist (run, user, token...): 404.
        for path, operations in self.spec._paths.items():
            if "{" in path:
                for op in operations.values():
                    if isinstance(op, dict) and "responses" in op:
                        op["responses"].setdefault(
                            "404", self.spec.components.get_ref("response", "NOT_FOUND")
                        )

    def handle_unavailable(self, exc: Exception) -> Any:
        """Redis or the audit store unreachable: 503 with Retry-After, never a 500."""
        what = "the audit store" if isinstance(exc, StoreError) else "Redis"
        current_app.logger.warning(
            "%s %s: %s unreachable (%s)", request.method, request.path, what, exc
        )
        err = ServiceUnavailable()
        err.data = {
            "message": f"{what} is unreachable; try again in a few seconds ({type(exc).__name__})",
            "headers": {"Retry-After": str(RETRY_AFTER)},
        }
        return self.handle_http_exception(err)

    def handle_http_exception(self, error: Any) -> Any:
        if not request.path.startswith("/api/"):
            user = auth.current_user()
            if error.code == 401:
                from flask import redirect, url_for

                return redirect(url_for("login.login", next=request.full_path.rstrip("?")))
            ext = current_app.extensions["canvasflow"]
            return render_template(
                "error.html",
                code=error.code,
                title=error.name,
                message=(getattr(error, "data", None) or {}).get("message") or error.description,
                user=user,
                page="error",
                read_only=ext.web.read_only,
            ), error.code
        payload, code, headers = super().handle_http_exception(error)
        data = getattr(error, "data", None) or {}
        payload.update(data.get("extra") or {})
        if "message" not in payload:
            payload["message"] = (
                "invalid request: see errors" if code in (400, 422) else error.description
            )
        # werkzeug's own headers: Allow on a 405, Retry-After where the exception carries one.
        own = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        headers = {**own, **(headers or {})}
        if code == 503:
            headers.setdefault("Retry-After", str(RETRY_AFTER))
        return payload, code, headers


def guard() -> None:
    """Before any view: the route's declared access (401/403, refusals audited), then the body's
    presence and type (400/415), so a request is refused for who sends it before what it sends."""
    handler = auth.handler_of(request.endpoint, request.method)
    if handler is None:
        return
    auth.enforce(handler)
    body = _json_body(getattr(handler, "_apidoc", {}))
    if body is None or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    has_body = bool(request.content_length) or request.headers.get("Transfer-Encoding") is not None
    if not has_body:
        if body.get("required", True):
            flask_smorest.abort(
                400,
                message="this request needs a JSON body (Content-Type: application/json)",
                errors={"json": {"_schema": ["missing body"]}},
            )
        return
    if not request.is_json:
        flask_smorest.abort(
            415,
            message=f"the body must be JSON (Content-Type: application/json), "
            f"not {request.mimetype or 'none'}",
        )
