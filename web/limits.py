"""What a request may cost the web process: its body size (413) and the seconds of computing
its definition may take off the gevent loop (503). Every refusal is JSON with the limit and the
setting that raises it, like every other API error.

The limits on the definition itself (depth, steps, bytes, YAML aliases) are orchestrator's
(orchestrator/model/limits.py) and give 400 with per-path problems like any invalid definition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from web.serving import CpuDeadline, within
from web.settings import WebSettings


def cpu_runner(web: WebSettings) -> Callable[..., Any]:
    """The Client's ``cpu`` hook: validating and planning run off the loop, under the deadline."""

    def run(fn: Callable[..., Any], *args: Any) -> Any:
        return within(web.cpu_deadline, fn, *args)

    return run


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def _error(code: int, status: str, message: str) -> Any:
    resp = jsonify({"code": code, "status": status, "message": message})
    resp.status_code = code
    if code == 503:
        resp.headers["Retry-After"] = "30"  # as every 503 of the API (web/rest.py)
    return resp


def register(app: Flask, web: WebSettings) -> None:
    limit = web.max_request_bytes

    @app.before_request
    def _refuse_large_bodies() -> Any:
        # Flask's MAX_CONTENT_LENGTH refuses only when the body is read, deep in a view's
        # argument parsing; a declared length says it before anything is read.
        if request.content_length is not None and request.content_length > limit:
            return too_large(None)
        return None

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: Any) -> Any:
        size = request.content_length
        what = (
            f"the request body is {size} bytes"
            if size is not None
            else "the request body is larger than that"
        )
        return _error(
            413,
            "Payload Too Large",
            f"{what}: at most {limit} bytes ({_human(limit)}) are accepted "
            "(CANVASFLOW_WEB_MAX_REQUEST_BYTES)",
        )

    @app.errorhandler(CpuDeadline)
    def too_slow(exc: CpuDeadline) -> Any:
        return _error(503, "Service Unavailable", str(exc))

    @app.errorhandler(RecursionError)
    def too_deep(exc: RecursionError) -> Any:
        # Python's JSON parser gives up on a body nested some thousand levels deep with a
        # RecursionError (not a ValueError), before the definition's own depth limit can speak.
        if request.path.startswith("/api/") and request.is_json:
            return _error(
                400,
                "Bad Request",
                "the JSON body is nested too deeply to be read "
                "(at most CANVASFLOW_MAX_DEPTH levels are accepted in a definition)",
            )
        raise exc
