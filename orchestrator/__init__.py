"""canvasflow's orchestrator: definitions, validation, compiler, run state, client API."""

from orchestrator.engine.client import Client, Run, RunSnapshot, StepSnapshot
from orchestrator.engine.states import RunStatus, StepStatus
from orchestrator.errors import (
    CanvasflowError,
    CompileError,
    ControlError,
    DefinitionError,
    StepError,
    UnknownRun,
    UnknownWorkflow,
)
from orchestrator.model.definition import Definition, Workflow, load_definition, load_file
from orchestrator.settings import Settings

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
