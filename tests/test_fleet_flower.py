"""A real Celery Flower 2.2 watching the same fleet as canvasflow sees the same workers and tasks:
canvasflow workers stay ordinary Celery workers (issue 6).

Flower is not a canvasflow dependency: it lives in its own virtualenv (``python3 -m venv /tmp/fv
&& /tmp/fv/bin/pip install flower==2.2.0 'celery[redis]'``; ``FLOWER_CELERY`` names its
``celery`` script). The test drives benchmarks/bench_flower.py at a small size and checks what it
compared, not how fast: it is ``slow`` and runs under the benchmark lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need

ROOT = Path(__file__).resolve().parents[1]
FLOWER = os.environ.get("FLOWER_CELERY", "/tmp/fv/bin/celery")
LOCK = "/tmp/canvasflow-bench.lock"


@pytest.mark.slow
@pytest.mark.integration
def test_a_real_flower_on_the_same_fleet_sees_the_same_workers_and_tasks(tmp_path: Path) -> None:
    if not Path(FLOWER).exists():
        need(
            "Flower 2.2",
            f"no {FLOWER}; install it in its own virtualenv (see this module's docstring)",
        )
    out = tmp_path / "bench.json"
    argv = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_flower.py"),
        "--tasks",
        "150,400",
        "--concurrency",
        "2",
        "--flower",
        FLOWER,
        "--json",
        str(out),
    ]
    if shutil.which("flock"):
        argv = ["flock", LOCK, *argv]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["flower"] == ["2.2.0"]
    for size, res in result["sizes"].items():
        same = res["same_fleet"]
        assert same["same_worker_seen"], size
        assert same["succeeded"]["canvasflow"] == same["succeeded"]["flower"] == int(size)
        assert same["sampled"] == min(200, int(size)) and same["sample_mismatches"] == []
        assert res["monitor_dropped"] == 0
