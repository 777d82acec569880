"""Build hook: bundle the dashboard frontend (web/frontend -> web/static/dist) during the
Python build, so `pip install -e .` and `pip install .` ship a working dashboard.

Everything else about the distribution is in pyproject.toml. The bundle is built only when it
is missing or older than its sources, with `npm ci` (the lockfile, from the npm registry) and
`npm run build` (esbuild). Without Node.js/npm the install still succeeds and the dashboard
says how to build it; CANVASFLOW_REQUIRE_FRONTEND=1 turns that into a failed install, and
CANVASFLOW_SKIP_FRONTEND=1 skips the step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
FRONTEND = ROOT / "web" / "frontend"
DIST = ROOT / "web" / "static" / "dist"


def _say(message: str) -> None:
    print(f"canvasflow frontend: {message}", file=sys.stderr, flush=True)


def _newest(paths: list[Path]) -> float:
    return max((p.stat().st_mtime for p in paths if p.is_file()), default=0.0)


def _stale() -> bool:
    main = DIST / "main.js"
    if not main.exists():
        return True
    sources = [
        FRONTEND / "package.json",
        FRONTEND / "package-lock.json",
        FRONTEND / "build.mjs",
        *(FRONTEND / "src").rglob("*"),
    ]
    return _newest(sources) > main.stat().st_mtime


def build_frontend() -> None:
    if (
        os.environ.get("CANVASFLOW_SKIP_FRONTEND") == "1"
        or not (FRONTEND / "package.json").exists()
    ):
        return
    if not _stale():
        return
    required = os.environ.get("CANVASFLOW_REQUIRE_FRONTEND") == "1"
    npm = shutil.which("npm")
    if npm is None:
        msg = (
            "npm not found: the dashboard will not have its scripts. Install Node.js 18+ and run "
            "`npm ci && npm run build` in web/frontend, or reinstall."
        )
        if required:
            raise SystemExit(msg)
        _say(msg)
        return
    installed = FRONTEND / "node_modules" / ".package-lock.json"
    steps = []
    if (
        not installed.exists()
        or installed.stat().st_mtime < (FRONTEND / "package-lock.json").stat().st_mtime
    ):
        steps.append([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"])
    steps.append([npm, "run", "build", "--silent"])
    for argv in steps:
        _say(" ".join(argv[1:]))
        done = subprocess.run(argv, cwd=FRONTEND, capture_output=True, text=True)
        if done.returncode != 0:
            msg = f"`npm {' '.join(argv[1:])}` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            if required:
                raise SystemExit(msg)
            _say(msg)
            return


class BuildPy(build_py):
    def run(self) -> None:
        build_frontend()
        super().run()


setup(cmdclass={"build_py": BuildPy})
