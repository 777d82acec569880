"""Build hook, opt-in: rebuild the dashboard bundle (web/frontend -> web/static/dist) during the
Python build when CANVASFLOW_BUILD_FRONTEND=1.

Everything else about the distribution is in pyproject.toml. The bundle is committed and shipped
as package data, so `pip install .` needs no Node.js; tests/test_frontend_bundle.py checks that
the committed bundle is exactly what the sources build. A frontend developer runs
`npm ci && npm run build` in web/frontend (or sets CANVASFLOW_BUILD_FRONTEND=1 for pip to do it);
a failed build then fails the install, since it was asked for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

FRONTEND = Path(__file__).resolve().parent / "web" / "frontend"


def build_frontend() -> None:
    if os.environ.get("CANVASFLOW_BUILD_FRONTEND") != "1":
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(
            "CANVASFLOW_BUILD_FRONTEND=1 but npm is not on PATH: install Node.js 18+, or unset "
            "the variable to install the committed bundle (web/static/dist)"
        )
    for argv in ([npm, "ci", "--no-audit", "--no-fund"], [npm, "run", "build"]):
        done = subprocess.run(argv, cwd=FRONTEND, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"`{' '.join(argv[1:])}` in {FRONTEND} failed:\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )


class BuildPy(build_py):
    def run(self) -> None:
        build_frontend()
        super().run()


setup(cmdclass={"build_py": BuildPy})
