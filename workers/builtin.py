"""The built-in plugin ``builtin``: echo, sleep, fail and call, registered on every worker.

Tests, examples and users rely on these exact signatures (see "Built-in plugin builtin" in
docs/design.md), so change them only together with the definition reference.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import sys
import time
from collections.abc import Iterable
from typing import Any

from orchestrator.errors import StepError
from orchestrator.model import callallow
from workers.plugins import plugin

SLICE_SECONDS = 0.1  # sleep granularity: bounds both cancel latency and progress-event rate


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _resolve(spec: Any, allow: tuple[str, ...]) -> Any:
    """The function named by ``"package.module:name"`` if the allow-list permits it, or a
    StepError saying what is wrong. The module is checked before it is imported (importing
    runs code), and only a callable the module itself defines is returned."""
    try:
        module_name, name = callallow.parse_function(spec)
    except ValueError as exc:
        raise StepError(str(exc), retryable=False) from None
    if not callallow.allows(allow, module_name):
        raise StepError(callallow.refusal(spec, module_name, allow), retryable=False)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, but also a SyntaxError in the user's module
        raise StepError(
            f"cannot import module '{module_name}' for {spec!r}: {type(exc).__name__}: {exc}",
            retryable=False,
        ) from exc
    # The module's own namespace only: no module __getattr__, no fallback to builtins.
    namespace = vars(module)
    if name not in namespace:
        raise StepError(f"module '{module_name}' has no attribute '{name}'", retryable=False)
    obj = namespace[name]
    if inspect.ismodule(obj) or not callable(obj):
        raise StepError(f"{spec!r} is not callable (it is a {type(obj).__name__})", retryable=False)
    # A name the module imported from elsewhere (`from os import system`, `eval`, a class of
    # subprocess) would smuggle a module past the allow-list: its home must be this very module
    # (os.path is posixpath) or an allowed one.
    home = getattr(obj, "__module__", None)
    if not isinstance(home, str) or (
        sys.modules.get(home) is not module and not callallow.allows(allow, home)
    ):
        raise StepError(
            f"builtin.call may not run {spec!r}: '{name}' is not defined in "
            f"'{module_name}' but comes from module '{home}', which is not in this "
            f"worker's call allow-list ({callallow.describe(allow)}); call it by its "
            "own module name if that module is meant to be allowed",
            retryable=False,
        )
    return obj


def _accepts_ctx(fn: Any) -> bool:
    try:
        return "ctx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some C functions have no introspectable signature
        return False


@plugin("builtin")
class Builtin:
    """Generic steps every worker can run: echo, sleep, fail, call."""

    def __init__(self, call_allow: Iterable[str] = ()) -> None:
        # The worker passes Settings.call_allow (workers/app.py); unconfigured, call runs nothing.
        self.call_allow = callallow.parse_allow(call_allow)

    def echo(self, ctx: Any, **params: Any) -> dict[str, Any]:
        """Return the (rendered) params unchanged as the step's output."""
        return dict(params)

    def sleep(self, ctx: Any, seconds: Any) -> dict[str, Any]:
        """Sleep `seconds`, reporting progress and stopping early when the run is cancelled."""
        if not _is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
            raise StepError(
                f"seconds must be a non-negative number, got {seconds!r}", retryable=False
            )
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
                raise StepError(
                    f"times must be a non-negative whole number, got {times!r}", retryable=False
                )
            if ctx.attempt > times:
                return {"attempt": ctx.attempt}
        raise StepError(str(message))

    def call(self, ctx: Any, function: str, args: Any = None, kwargs: Any = None) -> Any:
        """Import `function` ("module:function"), call it with args/kwargs and return its value."""
        fn = _resolve(function, self.call_allow)
        args = [] if args is None else args
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(args, list | tuple):
            raise StepError(f"args must be a list, got {type(args).__name__}", retryable=False)
        if not isinstance(kwargs, dict):
            raise StepError(
                f"kwargs must be a mapping, got {type(kwargs).__name__}", retryable=False
            )
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
            raise StepError(
                f"{function} returned a value that is not JSON: {exc}", retryable=False
            ) from None
        return result
