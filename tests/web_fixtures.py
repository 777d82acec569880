"""Fixtures of the dashboard tests (``pytest_plugins = ("tests.web_fixtures",)``).

The dashboard tests share one fleet of their own: a key prefix, a real Celery worker and a SQLite
audit store, so that the recorders of the in-process app and of the live server (one consumer
group, one database) never take events of another suite's runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator.settings import Settings
from tests.conftest import ROOT, TEST_CALL_ALLOW, WorkerProcess, make_settings, need
from tests.web_helpers import ADMIN, OPERATOR, VIEWER, free_port, wait_for

# Harmless tasks the workers load, which POST /api/v1/inspect/tasks/send may send when allowed.
INSPECT_TASKS = "tests.inspect_tasks"
CHROMIUM = os.environ.get("CANVASFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@dataclass
class WebFleet:
    settings: Settings
    worker: WorkerProcess
    log_dir: Path


@pytest.fixture(scope="session")
def web_fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebFleet]:
    tmp = tmp_path_factory.mktemp("web")
    settings = make_settings(
        redis_url,
        key_prefix=f"w{uuid.uuid4().hex[:8]}",
        lease_ttl=3,
        visibility_timeout=60,
        database_url=f"sqlite:///{tmp / 'audit.db'}",
        call_allow=TEST_CALL_ALLOW,
    )
    log_dir = Path(os.environ.get("CANVASFLOW_TEST_LOGS", str(tmp)))
    log_dir.mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(
        settings,
        f"web-{uuid.uuid4().hex[:6]}",
        concurrency=4,
        log_dir=log_dir,
        include=INSPECT_TASKS,
    ).wait_ready()
    yield WebFleet(settings, worker, log_dir)
    worker.stop()


@pytest.fixture(scope="session")
def orchestrator_client(web_fleet: WebFleet) -> Iterator[Any]:
    from orchestrator import Client

    c = Client(web_fleet.settings)
    yield c
    c.close()


@pytest.fixture(scope="session")
def web_app(web_fleet: WebFleet) -> Iterator[Any]:
    """The app in this process (Flask test client), with the recorder embedded."""
    from web import create_app
    from web.settings import WebSettings

    app = create_app(
        web_fleet.settings,
        WebSettings(admin_password=ADMIN[1], secret_key="test-secret", recorder=True),
    )
    app.config["TESTING"] = True
    users = app.extensions["canvasflow"].users
    # The live servers share this database: setting a password again would end their sessions
    # and tokens, so only missing users are created.
    for name, password, role in ((*OPERATOR, "operator"), (*VIEWER, "viewer")):
        if not users.exists(name):
            users.put(name, password=password, role=role)
    # The dashboard tests' operator submits inline definitions, which takes this permission.
    users.set_permission(OPERATOR[0], "submit_inline", True)
    yield app
    app.extensions["canvasflow"].stop()


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen
    log_path: Path
    settings: Settings
    log_file: Any = None

    def token(self, user: tuple[str, str]) -> str:
        s = requests.Session()
        r = s.post(
            f"{self.url}/api/v1/auth/login",
            json={"username": user[0], "password": user[1]},
            timeout=10,
        )
        r.raise_for_status()
        r = s.post(
            f"{self.url}/api/v1/auth/tokens",
            json={"name": "test"},
            headers={"X-CSRF-Token": r.json()["csrf_token"]},
            timeout=10,
        )
        r.raise_for_status()
        return str(r.json()["token"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_live_server(web_fleet: WebFleet, *extra: str) -> LiveServer:
    """`python -m web --recorder [extra...]` as a subprocess on a free loopback port, with the
    operator and viewer users of the tests."""
    port = free_port()
    env = {
        **os.environ,
        **web_fleet.settings.as_env(),
        "CANVASFLOW_WEB_ADMIN_PASSWORD": ADMIN[1],
        "CANVASFLOW_WEB_SECRET_KEY": "live-test-secret",
        "PYTHONPATH": str(ROOT),
        "CANVASFLOW_WEB_INSPECT_TASK_ALLOW": f"{INSPECT_TASKS}.*",
    }
    log_path = web_fleet.log_dir / f"web-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed by stop_live_server
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "web",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--recorder",
            "--log-level",
            "INFO",
            *extra,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(ROOT),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the web server exited:\n{log_path.read_text()[-3000:]}")
        try:
            return requests.get(f"{url}/api/v1/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, 30, "the web server")
    server = LiveServer(url, proc, log_path, web_fleet.settings)
    server.log_file = log
    if "--read-only" not in extra:
        s = requests.Session()
        r = s.post(
            f"{url}/api/v1/auth/login",
            json={"username": ADMIN[0], "password": ADMIN[1]},
            timeout=10,
        )
        csrf = r.json()["csrf_token"]
        # Only missing users: setting a password again would end the sessions and tokens other
        # fixtures (sharing this database) hold.
        known = {u["name"] for u in s.get(f"{url}/api/v1/users", timeout=10).json()}
        for name, password, role in ((*OPERATOR, "operator"), (*VIEWER, "viewer")):
            if name not in known:
                s.post(
                    f"{url}/api/v1/users",
                    json={"name": name, "password": password, "role": role},
                    headers={"X-CSRF-Token": csrf},
                    timeout=10,
                ).raise_for_status()
        s.put(
            f"{url}/api/v1/users/{OPERATOR[0]}/permissions/submit_inline",
            headers={"X-CSRF-Token": csrf},
            timeout=10,
        ).raise_for_status()
    return server


def stop_live_server(server: LiveServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)
    server.log_file.close()


@pytest.fixture(scope="session")
def live_server(web_fleet: WebFleet) -> Iterator[LiveServer]:
    """`python -m web --recorder` as a subprocess on a free loopback port."""
    server = start_live_server(web_fleet)
    yield server
    stop_live_server(server)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright; Playwright never downloads a browser here."""
    if not (ROOT / "web" / "static" / "dist" / "main.js").exists():
        need(
            "the dashboard bundle (web/static/dist)",
            "it is committed: `git checkout -- web/static/dist`, or `npm run build` in web/frontend",
        )
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        need("Chromium", f"{CHROMIUM} not found: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
        )
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """Screenshot helper: tmp_path/<name>.png, copied to CANVASFLOW_TEST_LOGS/screenshots too."""
    extra = os.environ.get("CANVASFLOW_TEST_LOGS")

    def shot(page: Any, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if extra:
            dest = Path(extra) / "screenshots" / request.node.name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest / path.name)
        return path

    return shot


def browser_login(
    browser: Any,
    server: LiveServer,
    user: tuple[str, str],
    path: str = "/runs",
    *,
    init_script: str | None = None,
    timeout_ms: float | None = None,
) -> Any:
    """A new browser context logged in as ``user`` through the login page, on ``path``; the page's
    JavaScript errors collect in ``page.errors``."""
    # bypass_csp: wait_for_function evaluates strings, which the CSP (rightly) forbids pages.
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    if timeout_ms is not None:
        context.set_default_timeout(timeout_ms)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}{path}")
    assert "/login" in page.url
    page.fill("input[name=username]", user[0])
    page.fill("input[name=password]", user[1])
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready='1']")
    page.errors = errors
    return page
