"""The demo's parts: its examples, sample data, dashboard, the stop signals and the fleet file.

``canvasflow demo`` (orchestrator/cli/main.py) starts a private fleet with these; tests import
``write_sample_csv`` for the data_processing example's input. ``demo_inputs`` writes the sample
data (that CSV, a folder of media files for media_groups to find) and gives each example's inputs.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigurationError
from orchestrator.settings import Settings

EXAMPLES = [
    ("data_processing.yaml", "COMPLETED"),
    ("parallel_media.yaml", "COMPLETED"),
    ("conditional_analysis.yaml", "COMPLETED"),
    ("transactional_update.yaml", "FAILED"),
    # A child workflow, run on its own too; registered before media_groups, which runs it as
    # a sub-workflow step per group (one child run each).
    ("media_group.yaml", "COMPLETED"),
    ("media_groups.yaml", "COMPLETED"),
]
# The modules whose functions the examples run through builtin.call: none, they use plugins.
# The demo's worker gets exactly this list, whatever CANVASFLOW_CALL_ALLOW says outside.
DEMO_CALL_ALLOW: tuple[str, ...] = ()


def examples_dir() -> Path:
    here = Path(__file__).resolve().parents[2] / "docs" / "examples"
    if here.is_dir():
        return here
    raise ConfigurationError(
        "docs/examples not found: run the demo from a source checkout (pip install -e .)"
    )


def write_sample_csv(path: Path, rows: int = 200) -> None:
    """The data_processing example's input: ids, categories, values, a few gaps and repeats."""
    import csv
    import random

    rnd = random.Random(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "category", "value1", "value2"])
        for i in range(rows):
            v2 = "" if i % 17 == 0 else f"{rnd.uniform(0, 100):.2f}"
            w.writerow([i if i % 29 else i - 1, rnd.choice("abc"), f"{rnd.uniform(0, 10):.3f}", v2])


# media_groups finds these at run time and processes each extension as one child run.
SAMPLE_MEDIA = {"jpg": 4, "png": 2, "wav": 3}


def write_sample_media(folder: Path) -> None:
    """A folder of small placeholder media files, some of each kind of SAMPLE_MEDIA."""
    folder.mkdir(parents=True, exist_ok=True)
    for ext, n in SAMPLE_MEDIA.items():
        for i in range(1, n + 1):
            (folder / f"sample_{i:02d}.{ext}").write_bytes(b"canvasflow demo media\n")


def demo_inputs(work: Path) -> dict[str, dict[str, Any]]:
    """Write the examples' sample data under ``work``; the inputs of each example by id."""
    sample = work / "input" / "data.csv"
    write_sample_csv(sample)
    write_sample_media(work / "input" / "media")
    return {
        "data_processing": {
            "input_path": str(sample),
            "work_dir": str(work / "work"),
            "output_path": str(work / "output" / "processed_data.csv"),
        },
        "media_groups": {"directory": str(work / "input" / "media")},
    }


def start_dashboard(fleet: Any) -> tuple[str, str]:
    """Start the web process (with the recorder and a scheduler inside) for the demo; returns
    (url, password)."""
    import secrets
    import socket
    import urllib.request

    from orchestrator.cli.embedded import secret_key_file

    password = os.environ.get("CANVASFLOW_WEB_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    os.environ["CANVASFLOW_WEB_ADMIN_PASSWORD"] = password  # Fleet copies os.environ to children
    # The demo's own signing key, in a 0600 file of its workdir (a fleet must configure one).
    os.environ.pop("CANVASFLOW_WEB_SECRET_KEY", None)
    os.environ["CANVASFLOW_WEB_SECRET_KEY_FILE"] = str(
        secret_key_file(fleet.log_dir.parent / "web-secret.key")
    )
    port = int(os.environ.get("CANVASFLOW_WEB_PORT", "8080"))
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:  # taken: any free port will do
            with socket.socket() as free:
                free.bind(("127.0.0.1", 0))
                port = free.getsockname()[1]
    fleet.spawn(
        "web",
        # The recorder and a scheduler inside it: the demo's schedules fire (operations.md).
        [
            sys.executable,
            "-m",
            "web",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--recorder",
            "--scheduler",
        ],
    )
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "api/v1/health", timeout=1) as resp:
                if resp.status == 200:
                    return url, password
        except OSError:
            pass
        if time.monotonic() > deadline or fleet.procs["web"].poll() is not None:
            raise ConfigurationError(f"the dashboard did not start; see {fleet.logs['web']}")
        time.sleep(0.2)


# -- stopping -------------------------------------------------------------------------------------

# What stops a kept-running demo besides Ctrl-C (SIGINT): `kill PID` and a closed terminal. Its
# processes run in sessions of their own (so that a Ctrl-C reaches the demo first and the demo
# stops them in order), so no signal reaches them but through the demo.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class StopSignal(KeyboardInterrupt):
    """Raised in the demo's main thread on SIGTERM or SIGHUP: the demo stops as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, _frame: Any) -> None:
    # The first signal starts the stop; a second one (a user who presses Ctrl-C again, a
    # SIGHUP after the SIGTERM) must not land in the ``finally`` before it has shielded itself
    # and cut the stop short, leaving the fleet's processes behind.
    shield_cleanup()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise StopSignal(signum)


def stop_on_signals() -> None:
    """From now on SIGTERM and SIGHUP stop the demo the way Ctrl-C does (its ``finally``), and
    whichever of them comes first, later ones are ignored while it stops."""
    for sig in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(sig, _raise_stop)


def shield_cleanup() -> None:
    """While the fleet stops, another signal must not cut the stop short and orphan what is
    left: it is bounded anyway (what does not stop in time is killed)."""
    for sig in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


# -- telling other shells where the fleet is --------------------------------------------------


def export_line(settings: Settings) -> str:
    """The ``export`` a user pastes into another shell to use the demo's fleet."""
    values = {
        "CANVASFLOW_REDIS_URL": settings.redis_url,
        "CANVASFLOW_DATABASE_URL": settings.database_url,
    }
    if settings.broker_url != settings.redis_url:
        values["CANVASFLOW_BROKER_URL"] = settings.broker_url
    if settings.result_backend != settings.redis_url:
        values["CANVASFLOW_RESULT_BACKEND"] = settings.result_backend
    if settings.key_prefix != Settings().key_prefix:
        values["CANVASFLOW_KEY_PREFIX"] = settings.key_prefix
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items())
