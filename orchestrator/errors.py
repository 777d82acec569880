"""One exception tree for canvasflow: every error a user can see derives from CanvasflowError."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class CanvasflowError(Exception):
    """Raised when anything in canvasflow fails in a way the caller should see."""


class ConfigurationError(CanvasflowError, ValueError):
    """Raised when a CANVASFLOW_* setting is malformed or a required service is missing."""


class DefinitionError(CanvasflowError, ValueError):
    """Raised when a workflow definition is invalid; `problems` holds every (path, message)."""

    def __init__(self, problems: Sequence[tuple[str, str]], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        lines = [f"{path}: {message}" if path else message for path, message in self.problems]
        head = f"invalid workflow definition{f' in {source}' if source else ''}"
        super().__init__(head + ":\n  " + "\n  ".join(lines) if lines else head)

    @property
    def messages(self) -> list[str]:
        return [f"{p}: {m}" if p else m for p, m in self.problems]


class LimitExceeded(DefinitionError):
    """Raised when a definition, run inputs or an event payload is larger or deeper than a limit
    (orchestrator.model.limits); refused before anything expensive looks at it."""


class ExpressionError(DefinitionError):
    """Raised when a `when` expression or `{{ }}` template cannot be parsed."""

    def __init__(self, message: str, expression: str = "", position: int | None = None):
        self.expression = expression
        self.position = position
        self.message = message
        super().__init__([("", message)])


class EvaluationError(CanvasflowError, LookupError):
    """Raised when an expression is valid but cannot be evaluated against a run's values."""


class UnknownWorkflow(CanvasflowError, LookupError):
    """Raised when a workflow id (or version) is not registered."""

    def __init__(self, workflow_id: str, version: str | None = None, known: Iterable[str] = ()):
        self.workflow_id = workflow_id
        self.version = version
        known = sorted(known)
        what = f"workflow '{workflow_id}'" + (f" version {version}" if version else "")
        hint = f" (registered: {', '.join(known)})" if known else " (none registered)"
        super().__init__(f"unknown {what}{hint}")


class UnknownRun(CanvasflowError, LookupError):
    """Raised when a run id is not known to the hot state or the audit store."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(f"unknown run '{run_id}'")


class UnknownStep(CanvasflowError, LookupError):
    """Raised when a run has no such step, or a mapped step no such item, in the audit store."""

    def __init__(self, run_id: str, step_id: str):
        self.run_id = run_id
        self.step_id = step_id
        super().__init__(f"run {run_id} has no step {step_id!r} in the audit store")


class UnknownPlugin(CanvasflowError, LookupError):
    """Raised when a step names a plugin or method that is not registered."""

    def __init__(self, name: str, known: Iterable[str] = (), method: str | None = None):
        self.name = name
        self.method = method
        self.known = sorted(known)
        listing = ", ".join(self.known) or "none"
        if method:
            super().__init__(f"plugin '{name}' has no method '{method}' (methods: {listing})")
        else:
            super().__init__(f"no plugin '{name}' (registered: {listing})")


class PluginError(CanvasflowError, TypeError):
    """Raised when a plugin class is malformed or registered twice."""


class CompileError(CanvasflowError):
    """Raised when a valid definition cannot be turned into Celery canvas."""


class StepError(CanvasflowError):
    """Raised by a plugin method (or the step runtime) to fail a step with a message."""

    def __init__(self, message: str, *, retryable: bool = True):
        self.retryable = retryable
        super().__init__(message)


class StepTimeout(StepError):
    """Raised when a step runs past its timeout."""


class ControlError(CanvasflowError):
    """Raised when an operator action is not allowed in the run's current state."""

    def __init__(self, action: str, run_id: str, status: str, allowed: Iterable[str] = ()):
        self.action = action
        self.run_id = run_id
        self.status = status
        self.allowed = sorted(allowed)
        hint = (
            f"; '{action}' is allowed when the run is {', '.join(self.allowed)}"
            if self.allowed
            else ""
        )
        super().__init__(f"cannot {action} run {run_id}: it is {status}{hint}")


class StoreError(CanvasflowError):
    """Raised when the audit store cannot be read or written."""


class WaitTimeout(CanvasflowError, TimeoutError):
    """Raised when Run.wait() gives up before the run reaches a final state."""

    def __init__(self, run_id: str, timeout: float, status: str):
        self.run_id = run_id
        self.timeout = timeout
        self.status = status
        super().__init__(f"run {run_id} still {status} after {timeout:g}s")


class EventError(CanvasflowError, ValueError):
    """Raised when an event to publish is malformed; `problems` holds every (field, message)."""

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("invalid event: " + "; ".join(f"{p}: {m}" for p, m in self.problems))
