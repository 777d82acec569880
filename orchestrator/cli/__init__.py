"""The `canvasflow` command line: commands, display, the embedded fleet."""
