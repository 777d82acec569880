"""`python -m orchestrator.cli`: the canvasflow command."""

from orchestrator.cli.main import main

if __name__ == "__main__":
    main()
