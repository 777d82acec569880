"""The built-in plugin ``builtin``: echo, sleep, fail and call, registered on every worker.

Tests, examples and users rely on these exact signatures (see "Built-in plugin builtin" in
docs/design.md), so change them only together with the definition reference.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import time
from typing import Any

from orchestrator.errors import StepError
from workers.plugins import plugin

SLICE_SECONDS = 0.1  # sleep granularity: bounds both cancel latency and progress-event rate


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _resolve(spec: Any) -> Any:
    """The object named by ``"package.module:qualname"``, or a StepError saying what is wrong."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise StepError(f"function must be a string 'module:function', got {spec!r}: "
                        "expected 'module:function'", retryable=False)
    module_name, qualname = (part.strip() for part in spec.split(":"))
    if not module_name or not qualname:
        raise StepError(f"function {spec!r}: expected 'module:function'", retryable=False)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, but also a SyntaxError in the user's module
        raise StepError(f"cannot import module '{module_name}' for {spec!r}: "
                        f"{type(exc).__name__}: {exc}", retryable=False) from exc
    for attr in qualname.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise StepError(f"module '{module_name}' has no attribute '{qualname}' "
                            f"(looked up {attr!r})", retryable=False) from None
    if not callable(obj):
        raise StepError(f"{spec!r} is not callable (it is a {type(obj).__name__})", retryable=False)
    return obj


def _accepts_ctx(fn: Any) -> bool:
    try:
        return "ctx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some C functions have no introspectable signature
        return False


@plugin("builtin")
class Builtin:
    """Generic steps every worker can run: echo, sleep, fail, call."""

    def echo(self, ctx: Any, **params: Any) -> dict[str, Any]:
        """Return the (rendered) params unchanged as the step's output."""
        return dict(params)

    def sleep(self, ctx: Any, seconds: Any) -> dict[str, Any]:
        """Sleep `seconds`, reporting progress and stopping early when the run is cancelled."""
        if not _is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
            raise StepError(f"seconds must be a non-negative number, got {seconds!r}", retryable=False)
        start = time.monotonic()
        deadline = start + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if ctx.cancelled:
                raise StepError("cancelled", retryable=False)
            time.sleep(min(SLICE_SECONDS, remaining))
            ctx.progress(min(1.0, (time.monotonic() - start) / seconds))
        return {"slept": seconds}

    def fail(self, ctx: Any, message: str = "failed", times: Any = None) -> dict[str, Any]:
        """Fail with `message`; with `times`, only attempts 1..times fail and the next succeeds."""
        if times is not None:
            if not isinstance(times, int) or isinstance(times, bool) or times < 0:
                raise StepError(f"times must be a non-negative whole number, got {times!r}",
                                retryable=False)
            if ctx.attempt > times:
                return {"attempt": ctx.attempt}
        raise StepError(str(message))

    def call(self, ctx: Any, function: str, args: Any = None, kwargs: Any = None) -> Any:
        """Import `function` ("module:function"), call it with args/kwargs and return its value."""
        fn = _resolve(function)
        args = [] if args is None else args
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(args, list | tuple):
            raise StepError(f"args must be a list, got {type(args).__name__}", retryable=False)
        if not isinstance(kwargs, dict):
            raise StepError(f"kwargs must be a mapping, got {type(kwargs).__name__}", retryable=False)
        if _accepts_ctx(fn) and "ctx" not in kwargs:
            kwargs = {**kwargs, "ctx": ctx}
        try:
            result = fn(*args, **kwargs)
        except StepError:
            raise
        except Exception as exc:
            raise StepError(f"{function} raised {type(exc).__name__}: {exc}") from exc
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            raise StepError(f"{function} returned a value that is not JSON: {exc}",
                            retryable=False) from None
        return result
