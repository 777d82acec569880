"""A run submitted where no live worker consumes a queue it needs says so at once: in the log of
Client.submit, in `canvasflow run`'s output, in the REST API's submit response and on the run
page (issue 17 item 4) — instead of a run that sits PENDING with nothing said."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator.engine.submitchecks import unserved_queues
from orchestrator.model.definition import load_definition
from orchestrator.settings import Settings
from tests.conftest import ROOT, make_settings
from tests.web_helpers import OPERATOR, wait_for

pytest_plugins = ("tests.web_fixtures",)

CLI = [sys.executable, "-m", "orchestrator.cli"]

# One step on the default queue, one on io, one on a queue no test worker consumes.
THREE_QUEUES = {
    "id": "three_queues",
    "steps": [
        {"id": "a", "plugin": "builtin", "method": "echo"},
        {"id": "b", "plugin": "builtin", "method": "echo", "queue": "io", "depends_on": ["a"]},
        {"id": "c", "plugin": "builtin", "method": "echo", "queue": "nobody", "depends_on": ["b"]},
    ],
}
ON_IO = """
id: on_io
steps:
  - {id: load, plugin: builtin, method: echo, queue: io}
  - {id: save, plugin: builtin, method: echo, queue: io, depends_on: [load]}
"""
NOBODY = "no live worker consumes queue 'nobody' (step c): it waits PENDING until one does"


# -- which queues, which words ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("live", "expected"),
    [
        ({"default", "io", "nobody"}, []),
        ({"default", "io"}, [f"{NOBODY}; start one with `canvasflow worker -Q nobody`"]),
        (
            set(),
            [
                "no live worker consumes queue 'default' (step a): it waits PENDING until one "
                "does; start one with `canvasflow worker -Q default`",
                "no live worker consumes queue 'io' (step b): it waits PENDING until one does; "
                "start one with `canvasflow worker -Q io`",
                f"{NOBODY}; start one with `canvasflow worker -Q nobody`",
            ],
        ),
        (
            {"io", "nobody"},
            [
                "no live worker consumes queue 'default' (step a): it waits PENDING until one "
                "does; start one with `canvasflow worker -Q default`"
            ],
        ),
    ],
)
def test_the_warning_names_each_unserved_queue_and_its_steps(
    live: set[str], expected: list[str]
) -> None:
    assert unserved_queues(load_definition(THREE_QUEUES), live, "default") == expected


def test_a_default_queue_with_no_step_is_still_needed_to_settle_the_run() -> None:
    defn = load_definition(load_yaml(ON_IO))
    assert unserved_queues(defn, {"io"}, "default") == [
        "no live worker consumes queue 'default', where canvasflow's own tasks settle the run: "
        "it does not finish until one does; start one with `canvasflow worker -Q default`"
    ]
    many = {
        "id": "many",
        "steps": [{"id": f"s{i}", "plugin": "builtin", "method": "echo"} for i in range(8)],
    }
    (line,) = unserved_queues(load_definition(many), set(), "default")
    assert "(steps s0, s1, s2, s3, s4 and 3 more): they wait PENDING" in line


def load_yaml(text: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(text)


# -- Client.submit ----------------------------------------------------------------------------


@pytest.fixture
def empty_fleet(redis_url: str) -> Settings:
    """A fleet (key prefix) on the test Redis where no worker ever started."""
    return make_settings(redis_url, key_prefix=f"nw{uuid.uuid4().hex[:8]}")


@pytest.mark.integration
def test_submit_with_no_live_worker_logs_returns_and_records_the_warning(
    empty_fleet: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from orchestrator import Client

    client = Client(empty_fleet)
    try:
        with caplog.at_level(logging.WARNING, logger="orchestrator.engine.client"):
            run = client.submit(THREE_QUEUES)
        assert len(run.warnings) == 3 and NOBODY in run.warnings[2]
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert logged == [f"run {run.id} of three_queues: {w}" for w in run.warnings]
        # Kept with the run (its hash and its run_created event), for the run page.
        data = client.state.read(run.id)
        assert data is not None and data.run.warnings == list(run.warnings)
        assert run.status() == "PENDING"
    finally:
        client.close()


@pytest.mark.integration
def test_submit_with_a_live_worker_on_every_queue_warns_about_nothing(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.engine.client"):
        run = client.submit(load_yaml(ON_IO))
    assert run.warnings == ()
    assert not [r for r in caplog.records if "no live worker" in r.getMessage()]
    assert run.wait(60).status == "COMPLETED"


# -- the command line -------------------------------------------------------------------------


def run_cli(args: list[str], settings: Settings, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANVASFLOW_")}
    env.update(settings.as_env(), PYTHONPATH=str(ROOT), COLUMNS="250")
    return subprocess.run(
        [*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.integration
def test_canvasflow_run_with_no_live_worker_prints_the_warning_once(
    empty_fleet: Settings, tmp_path: Path
) -> None:
    (tmp_path / "on_io.yaml").write_text(ON_IO)
    proc = run_cli(["run", "on_io.yaml", "--no-follow"], empty_fleet, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = proc.stdout.strip()
    text = " ".join(proc.stderr.split())
    assert f"submitted run {run_id}" in text
    assert (
        "warning: no live worker consumes queue 'io' (steps load, save): they wait PENDING "
        "until one does; start one with `canvasflow worker -Q io`"
    ) in text, text
    assert "warning: no live worker consumes queue 'default', where canvasflow's own" in text
    assert text.count("no live worker consumes queue 'io'") == 1, text  # not logged again


@pytest.mark.integration
def test_canvasflow_run_with_a_live_worker_warns_about_nothing(
    fleet_settings: Settings, worker: Any, tmp_path: Path
) -> None:
    (tmp_path / "on_io.yaml").write_text(ON_IO)
    proc = run_cli(["run", "on_io.yaml", "--timeout", "90"], fleet_settings, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "COMPLETED" in proc.stdout
    assert "warning" not in proc.stderr and "no live worker" not in proc.stderr


# -- the REST API and the run page ------------------------------------------------------------


@pytest.fixture
def operator_api(live_server: Any) -> Iterator[tuple[requests.Session, str]]:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {live_server.token(OPERATOR)}"
    yield s, f"{live_server.url}/api/v1"
    s.close()


@pytest.mark.integration
def test_the_api_returns_the_warning_and_the_run_page_shows_it(
    operator_api: tuple[requests.Session, str], live_server: Any, chromium: Any, shots: Any
) -> None:
    api, base = operator_api
    # The web fleet's worker consumes default and io: only 'nobody' has no worker.
    r = api.post(f"{base}/runs", json={"definition": THREE_QUEUES}, timeout=30)
    assert r.status_code == 201, r.text
    body = r.json()
    run_id = body["id"]
    assert len(body["warnings"]) == 1 and body["warnings"][0].startswith(NOBODY), body
    try:
        detail = api.get(f"{base}/runs/{run_id}", timeout=30).json()
        assert detail["status"] in ("PENDING", "RUNNING")
        assert detail["warnings"] == [f"at submit, {body['warnings'][0]}"], detail["warnings"]

        from tests.web_fixtures import browser_login

        page = browser_login(chromium, live_server, OPERATOR, f"/runs/{run_id}")
        banner = page.wait_for_selector("#run-warnings .banner")
        assert banner is not None
        assert "no live worker consumes queue 'nobody' (step c)" in banner.inner_text()
        assert "canvasflow worker -Q nobody" in banner.inner_text()
        shots(page, "run-page-no-worker-warning")
        assert page.errors == []
        page.context.close()
    finally:
        api.post(f"{base}/runs/{run_id}/cancel", json={"reason": "test over"}, timeout=30)
    # Over: the page no longer warns about what the run waited for.
    wait_for(
        lambda: api.get(f"{base}/runs/{run_id}", timeout=30).json()["status"] == "CANCELLED",
        60,
        "the run to be cancelled",
    )
    assert api.get(f"{base}/runs/{run_id}", timeout=30).json()["warnings"] == []


@pytest.mark.integration
def test_the_api_submit_with_live_workers_on_every_queue_has_no_warnings(
    operator_api: tuple[requests.Session, str],
) -> None:
    api, base = operator_api
    r = api.post(f"{base}/runs", json={"definition": ON_IO}, timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == []
    run_id = r.json()["id"]
    wait_for(
        lambda: api.get(f"{base}/runs/{run_id}", timeout=30).json()["status"] == "COMPLETED",
        60,
        "the run to complete",
    )
    assert api.get(f"{base}/runs/{run_id}", timeout=30).json()["warnings"] == []


@pytest.mark.integration
def test_a_worker_publishes_its_queues_again_when_redis_lost_them(client: Any, worker: Any) -> None:
    # A Redis restarted empty (or flushed) under running workers: their catalog is gone, and
    # every submit would warn about queues that a worker does consume.
    client.redis.delete(client.keys.catalog)
    assert client.live_queues() == set()
    # Workers refresh their liveness every 10 s (workers/app.py ALIVE_TTL / 3), and the catalog
    # with it.
    wait_for(
        lambda: (
            {"default", "io"} <= set(client._online().get(worker.hostname, {}).get("queues", ()))
        ),
        60,
        "the worker to publish its catalog again",
        every=0.5,
    )
    run = client.submit(load_yaml(ON_IO))
    assert run.warnings == ()
    assert run.wait(60).status == "COMPLETED"


@pytest.mark.integration
def test_the_run_page_of_a_run_no_worker_began_says_created_not_started(
    operator_api: tuple[requests.Session, str], live_server: Any, chromium: Any, shots: Any
) -> None:
    # Walking issue 17's first hour: a run waiting PENDING for a worker read "started 05:11 PM".
    api, base = operator_api
    only_nobody = {
        "id": "only_nobody",
        "steps": [{"id": "c", "plugin": "builtin", "method": "echo", "queue": "nobody"}],
    }
    r = api.post(f"{base}/runs", json={"definition": only_nobody}, timeout=30)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    try:
        from tests.web_fixtures import browser_login

        page = browser_login(chromium, live_server, OPERATOR, f"/runs/{run_id}")
        page.wait_for_selector("#run-warnings .banner")
        meta = page.inner_text("#run-meta")
        assert "not started yet" in meta and "created " in meta, meta
        assert "started " not in meta.replace("not started yet", ""), meta
        shots(page, "run-page-not-started")
        assert page.errors == []
        page.context.close()
    finally:
        api.post(f"{base}/runs/{run_id}/cancel", json={"reason": "test over"}, timeout=30)


PLUGINS = '{"plugins": {"builtin": {"echo": {"accepts_any": true}}}, '


@pytest.mark.integration
@pytest.mark.parametrize(
    "hostile",
    [
        PLUGINS + '"queues": 5}',  # queues not a list
        PLUGINS + '"queues": "default"}',  # a string: not seven queues of one letter
        PLUGINS + '"queues": [{"q": 1}, null, "io"]}',
        "[1, 2]",  # not an object
        "not json",
    ],
)
def test_a_catalog_entry_workers_do_not_write_never_fails_a_submit(
    empty_fleet: Settings, redis_client: Any, hostile: str
) -> None:
    from orchestrator import Client
    from orchestrator.keys import Keys

    keys = Keys(empty_fleet.key_prefix)
    redis_client.hset(keys.catalog, "odd@host", hostile)
    redis_client.set(keys.worker_alive("odd@host"), "1", ex=60)
    client = Client(empty_fleet)
    try:
        run = client.submit(THREE_QUEUES)
        assert run.status() == "PENDING"
        # Only the well-formed queue of the entry counts as served.
        expected = {"io"} if "io" in hostile else set()
        served = {q for q in ("default", "io", "nobody") if f"queue '{q}'" not in str(run.warnings)}
        assert served == expected
    finally:
        client.close()
