"""A Python-only install gives a working dashboard (issue 17, item 1).

What a new user does: a fresh virtualenv, no Node.js on PATH, the README's install and demo
commands, then the dashboard in a browser. The project is copied from what git tracks (an
untracked, locally built bundle would hide a missing one), and installed into a venv of its own;
its dependencies come from this test run's environment (a directory of links to its
site-packages, canvasflow's own files left out) so that nothing else is downloaded. pip builds
the project with build isolation, as the README's command does, which fetches setuptools.
The README installs editable (the demo reads its examples from docs/examples); a second test
builds the wheel that `pip install .` installs and checks that the bundle is in it.

Marked ``fresh_install`` (`pytest -m fresh_install`); it runs in CI with the rest.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT
from tests.web_helpers import free_port

pytest_plugins = ("tests.web_fixtures",)
pytestmark = [pytest.mark.fresh_install, pytest.mark.integration]

# The README's quick start: `python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/canvasflow demo`
README_INSTALL = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/canvasflow demo"
TOPBAR_BACKGROUND = "rgb(29, 35, 48)"  # .topbar in web/frontend/src/app.css


def _tracked_copy(dest: Path) -> Path:
    """The files git tracks (as they are in the working tree), copied to ``dest``."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"this test copies what git tracks, and needs a git checkout: {exc}")
    for name in out.decode().split("\0"):
        src = ROOT / name
        if name and src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _venv_without_node(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A fresh venv whose dependencies are links into this environment's site-packages (none of
    canvasflow's), and an environment whose PATH has no node or npm."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    here = Path(sysconfig.get_paths()["purelib"])
    deps = tmp / "deps"
    deps.mkdir()
    for entry in here.iterdir():
        name = entry.name.lower()
        if name.startswith(("canvasflow", "__editable__")) or name.endswith(".pth"):
            continue
        (deps / entry.name).symlink_to(entry)
    site = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "_canvasflow_test_deps.pth").write_text(f"{deps}\n")
    tools = tmp / "tools"  # what the demo may use from PATH besides the venv: redis-server
    tools.mkdir()
    redis_server = shutil.which("redis-server")
    if redis_server:
        (tools / "redis-server").symlink_to(redis_server)
    path = f"{venv / 'bin'}{os.pathsep}{tools}"
    assert shutil.which("npm", path=path) is None and shutil.which("node", path=path) is None
    env = {
        "PATH": path,
        "HOME": os.environ.get("HOME", str(tmp)),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp),
        "CANVASFLOW_WEB_PORT": str(free_port()),
    }
    return venv, env


def _pip(venv: Path, env: dict[str, str], *args: str) -> None:
    # The venv has no pip of its own (--without-pip: ensurepip is slow); this environment's pip
    # installs into it (--python), with the venv's PATH, so no npm is in reach of setup.py.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *args],
        env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (
        f"pip {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    )


@contextlib.contextmanager
def _demo(venv: Path, env: dict[str, str], cwd: Path) -> Iterator[tuple[str, str]]:
    """`canvasflow demo --keep-running` past its examples: (dashboard url, admin password);
    stopped as Ctrl-C stops it (SIGINT to its process group)."""
    err_log = cwd / "demo.err"
    with err_log.open("wb") as err:
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "canvasflow"),
                "demo",
                "--keep-running",
                "--workdir",
                str(cwd / "w"),
            ],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        try:
            out = []
            for line in proc.stdout:  # type: ignore[union-attr]
                out.append(line)
                if line.startswith("fleet running"):
                    break
            text = "".join(out)
            m = re.search(r"dashboard (http://127\.0\.0\.1:\d+/) \(admin / (\S+)\)", text)
            assert m, f"the demo did not come up:\n{text}\n{err_log.read_text()[-3000:]}"
            yield m.group(1), m.group(2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_a_fresh_venv_without_node_installs_and_runs_the_demo_with_a_styled_live_dashboard(
    tmp_path: Path, shots: object, chromium: Any
) -> None:
    readme = (ROOT / "README.md").read_text()
    assert README_INSTALL in readme, "the README's quick start changed: make this test follow it"
    src = _tracked_copy(tmp_path / "canvasflow")
    venv, env = _venv_without_node(tmp_path)
    _pip(venv, env, "install", "--no-deps", "-q", "-e", str(src))  # README: pip install -e .
    # The package's own files come from the copy, not from the checkout the tests run in.
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import web, orchestrator; print(web.__file__, orchestrator.__file__)",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(p.startswith(str(src)) for p in where), where

    # The session's browser (tests/web_fixtures.py): a second sync_playwright() in the same
    # process fails once another browser test has started one.
    with _demo(venv, env, tmp_path) as (url, password):
        assert requests.get(f"{url}static/dist/main.css", timeout=10).status_code == 200
        context = chromium.new_context(
            viewport={"width": 1400, "height": 900},
            bypass_csp=True,  # wait_for_function evaluates strings, which the CSP forbids
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)  # the address the demo printed
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            # The page after the login (its scripts ran): the login page may still be the one
            # in the window right after the click.
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            # Styled: main.css is applied.
            style = page.eval_on_selector(
                ".topbar",
                "el => [getComputedStyle(el).display, getComputedStyle(el).backgroundColor]",
            )
            assert style == ["flex", TOPBAR_BACKGROUND], style
            assert page.query_selector("#frontend-missing") is None
            # Live: the scripts ran, the demo's runs are listed and the socket is connected.
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.wait_for_function(
                "document.querySelectorAll('#runs-body tr[data-run]').length >= 4", timeout=60_000
            )
            page.wait_for_selector("#conn.ok:not([hidden])", timeout=60_000)
            # A run submitted now appears without a reload (Socket.IO).
            s = requests.Session()
            login = s.post(
                f"{url}api/v1/auth/login",
                json={"username": "admin", "password": password},
                timeout=10,
            )
            login.raise_for_status()
            r = s.post(
                f"{url}api/v1/runs",
                json={"workflow": "conditional_analysis"},
                headers={"X-CSRF-Token": login.json()["csrf_token"]},
                timeout=30,
            )
            assert r.status_code == 201, r.text
            page.wait_for_selector(f"#runs-body tr[data-run='{r.json()['id']}']", timeout=60_000)
            shots(page, "fresh-install-dashboard")  # type: ignore[operator]
            assert errors == []
        finally:
            context.close()


def test_the_wheel_ships_the_dashboard_bundle_without_node(tmp_path: Path) -> None:
    """`pip install .` (not editable) installs from a wheel: the bundle must be package data."""
    src = _tracked_copy(tmp_path / "canvasflow")
    venv, env = _venv_without_node(tmp_path)
    wheels = tmp_path / "wheels"
    _pip(venv, env, "wheel", "--no-deps", "-q", "-w", str(wheels), str(src))
    (wheel,) = wheels.glob("canvasflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    bundle = {
        p.relative_to(src).as_posix()
        for p in (src / "web" / "static" / "dist").rglob("*")
        if p.is_file()
    }
    assert {"web/static/dist/main.js", "web/static/dist/main.css"} <= bundle
    assert sorted(bundle - names) == []
    assert "web/templates/base.html" in names
