"""`canvasflow run --follow` follows a run to its end through pause and resume, and Ctrl-C stops
the following, not the run (issue 17 item 6). A real worker; the CLI is a subprocess with its
output piped, as in CI; the operator pauses and resumes from another client."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from orchestrator import Client
from orchestrator.settings import Settings
from tests.conftest import WorkerProcess
from tests.test_cli import CLI, ROOT, cli, write
from tests.web_helpers import wait_for

pytestmark = pytest.mark.integration

SLOW = """
id: follow_{name}
mode: sequential
steps:
  - {{id: slow, plugin: builtin, method: sleep, params: {{seconds: {seconds}}}}}
  - {{id: after, plugin: builtin, method: echo, params: {{done: true}}}}
"""


class Following:
    """A `canvasflow run --follow` subprocess whose piped output is read as it comes."""

    def __init__(self, settings: Settings, path: str) -> None:
        env = {**os.environ, **settings.as_env(), "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
        self.proc = subprocess.Popen(
            [*CLI, "run", path, "--follow"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    def text(self) -> str:
        return "".join(self.out) + "\n--- stderr ---\n" + "".join(self.err)

    def wait_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.out):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not any(
                re.search(pattern, line) for line in self.out
            ):
                time.sleep(0.2)  # let the pumps read what is left
                if not any(re.search(pattern, line) for line in self.out):
                    raise AssertionError(f"exited {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}:\n{self.text()}")

    def finish(self, timeout: float = 90) -> int:
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_run_follow_keeps_following_through_pause_and_resume_and_exits_0(
    tmp_path: Path, fleet_settings: Settings, worker: WorkerProcess
) -> None:
    path = write(tmp_path, "p.yaml", SLOW.format(name="paused", seconds=2))
    following = Following(fleet_settings, path)
    client = Client(fleet_settings)
    try:
        run_id = following.wait_line(r"run (\w+): RUNNING").group(1)
        client.control.pause(run_id, actor="olga", reason="hold on")
        wait_for(lambda: client.state.status(run_id) == "PAUSED", 60, "the run to pause")
        following.wait_line(rf"run {run_id}: PAUSED")
        # The operator looks, then resumes; the follow process is still there to see it end.
        following.wait_line(r"paused: still following until `canvasflow resume")
        assert following.proc.poll() is None, following.text()
        client.control.resume(run_id, actor="olga")
        assert following.finish() == 0, following.text()
    finally:
        following.kill()
        client.close()
    lines = "".join(following.out).splitlines()
    assert lines[-1] == f"run {run_id} COMPLETED", following.text()
    statuses = [m.group(1) for x in lines if (m := re.search(rf"run {run_id}: (\w+) ", x))]
    assert statuses[-1] == "COMPLETED" and "PAUSED" in statuses, statuses
    assert any(x.endswith("  after: COMPLETED") for x in lines), following.text()


def test_ctrl_c_stops_following_and_leaves_the_run_running(
    tmp_path: Path, fleet_settings: Settings, worker: WorkerProcess
) -> None:
    path = write(tmp_path, "c.yaml", SLOW.format(name="interrupted", seconds=5))
    following = Following(fleet_settings, path)
    client = Client(fleet_settings)
    try:
        run_id = following.wait_line(r"run (\w+): RUNNING").group(1)
        following.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert following.finish() == 130, following.text()
        stderr = "".join(following.err)
        assert (
            f"stopped following; run {run_id} is still RUNNING — `canvasflow status {run_id}`"
            in stderr
        ), following.text()
        assert "Traceback" not in stderr
        assert client.state.status(run_id) == "RUNNING"
        # ... and the run goes on: following it again sees it complete.
        again = cli("status", run_id, "--follow", settings=fleet_settings, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.splitlines()[-1] == f"run {run_id} COMPLETED"
    finally:
        following.kill()
        client.close()
