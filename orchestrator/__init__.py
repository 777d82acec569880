"""canvasflow's orchestrator: definitions, validation, compiler, run state, client API."""

from orchestrator.client import Client, Run, RunSnapshot, StepSnapshot
from orchestrator.definition import Definition, Workflow, load_definition, load_file
from orchestrator.errors import (
    CanvasflowError,
    CompileError,
    ControlError,
    DefinitionError,
    StepError,
    UnknownRun,
    UnknownWorkflow,
)
from orchestrator.settings import Settings
from orchestrator.states import RunStatus, StepStatus

__all__ = [
    "CanvasflowError",
    "Client",
    "CompileError",
    "ControlError",
    "Definition",
    "DefinitionError",
    "Run",
    "RunSnapshot",
    "RunStatus",
    "Settings",
    "StepError",
    "StepSnapshot",
    "StepStatus",
    "UnknownRun",
    "UnknownWorkflow",
    "Workflow",
    "load_definition",
    "load_file",
]
