"""The engine: statuses, the compiler, the run state, dispatch, control, the client."""
