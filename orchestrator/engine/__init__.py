"""The engine: statuses, the compiler, the step core, the run state, dispatch, control, the client."""
