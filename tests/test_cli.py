"""Every command a user starts, started the way they start it: as a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator import Client, Workflow
from orchestrator.keys import Keys
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orchestrator.cli"]

BAD = """
id: broken
mode: sequential
steps:
  - id: load
    plugin: builtin
    method: echo
    depends_on: [lod_data]
  - id: second
    plugin: builtin
    method: echo
    when: "stepz.x > 1"
    timeout: -3
"""

DIAMOND = """
id: diamond
steps:
  - {id: a, plugin: builtin, method: echo}
  - {id: b, plugin: builtin, method: echo, depends_on: [a]}
  - {id: c, plugin: builtin, method: echo, depends_on: [a]}
  - {id: d, plugin: builtin, method: echo, depends_on: [b, c]}
"""

N_SHAPE = """
id: nshape
steps:
  - {id: a, plugin: builtin, method: echo}
  - {id: b, plugin: builtin, method: echo}
  - {id: c, plugin: builtin, method: echo, depends_on: [a, b]}
  - {id: d, plugin: builtin, method: echo, depends_on: [b]}
"""


def cli(
    *args: str,
    settings: Settings | None = None,
    env: dict | None = None,
    timeout: float = 120,
    check: bool = False,
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(settings.as_env() if settings else {}), **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.setdefault("COLUMNS", "200")
    proc = subprocess.run(
        [*CLI, *args], env=full_env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_validate_reports_every_problem_with_its_path_and_exits_2(tmp_path: Path) -> None:
    proc = cli("validate", "--offline", write(tmp_path, "bad.yaml", BAD))
    assert proc.returncode == 2
    assert "steps[0].depends_on[0]: unknown step 'lod_data'" in proc.stderr
    assert "steps[1].when: unknown name 'stepz'" in proc.stderr
    assert "steps[1].timeout: must be a positive number of seconds" in proc.stderr


def test_validate_accepts_the_examples(tmp_path: Path) -> None:
    files = sorted(str(p) for p in (ROOT / "docs" / "examples").glob("*.yaml"))
    proc = cli("validate", "--offline", *files)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ok ") == 6


def test_validate_of_a_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    proc = cli(
        "validate", "--offline", write(tmp_path, "syntax.yaml", "id: x\nsteps: [\n  - a: b\n")
    )
    assert proc.returncode == 2
    assert "line 3, column" in proc.stderr and "invalid YAML" in proc.stderr


MISSPELT = """
id: typos
descripton: a workflow with the slips a new user makes
steps:
  - id: fetch
    plugin: builtin
    method: echo
    retry: 2
  - id: store
    plugin: builtin
    method: echo
    depends_on: fech
"""

ONE_DEPENDENCY = """
id: one_dependency
steps:
  - {id: fetch, plugin: builtin, method: echo}
  - id: store
    plugin: builtin
    method: echo
    depends_on: fetch
"""

UNKNOWN_PLUGINS = """
id: unknown_plugins
steps:
  - {id: a, plugin: csv_lodaer, method: load_file}
  - {id: b, plugin: processor, method: process}
  - {id: c, plugin: data_validator, method: validate}
  - {id: d, plugin: zzz}
"""


def test_validate_suggests_the_known_field_for_a_misspelt_one(tmp_path: Path) -> None:
    proc = cli("validate", "--offline", write(tmp_path, "typos.yaml", MISSPELT))
    assert proc.returncode == 2, proc.stderr
    assert "steps[0].retry: unknown field (did you mean 'retries'?)" in proc.stderr
    assert "descripton: unknown field (did you mean 'description'?)" in proc.stderr
    assert "steps[1].depends_on[0]: unknown step 'fech' (did you mean 'fetch'?)" in proc.stderr


def test_validate_accepts_depends_on_written_as_one_step_id(tmp_path: Path) -> None:
    proc = cli("validate", "--offline", write(tmp_path, "one.yaml", ONE_DEPENDENCY))
    assert proc.returncode == 0, proc.stderr
    assert "workflow 'one_dependency' (2 steps, parallel)" in proc.stdout
    explained = cli("explain", write(tmp_path, "one.yaml", ONE_DEPENDENCY), check=True)
    assert "fetch" in explained.stdout and "store" in explained.stdout


@pytest.mark.integration
def test_a_run_with_depends_on_written_as_one_step_id_runs_it_after_that_step(
    tmp_path: Path, fleet_settings, worker
) -> None:
    proc = cli(
        "run",
        write(tmp_path, "one.yaml", ONE_DEPENDENCY),
        "--follow",
        settings=fleet_settings,
        check=True,
    )
    assert "  fetch: COMPLETED" in proc.stdout and "  store: COMPLETED" in proc.stdout
    assert proc.stdout.index("  fetch: COMPLETED") < proc.stdout.index("  store: COMPLETED")


@pytest.mark.integration
def test_validate_against_the_fleet_names_the_closest_plugins_not_all_twenty(
    tmp_path: Path, fleet_settings, worker
) -> None:
    proc = cli(
        "validate", write(tmp_path, "plugins.yaml", UNKNOWN_PLUGINS), settings=fleet_settings
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line.strip() for line in proc.stderr.splitlines()]
    assert "steps[0].plugin: no plugin 'csv_lodaer' (did you mean 'csv_loader'?)" in lines
    assert (
        "steps[1].plugin: no plugin 'processor' (did you mean 'audio_processor', "
        "'image_processor' or 'large_processor'?)" in lines
    )
    assert (
        "steps[2].method: plugin 'data_validator' has no method 'validate' "
        "(did you mean 'validate_schema'?)" in lines
    )
    # The demo fleet has twenty plugins; the count follows what the workers publish.
    assert any(
        re.fullmatch(
            r"steps\[3\]\.plugin: no plugin 'zzz'; none of the \d+ registered plugins has a "
            r"similar name \(`canvasflow plugins` lists them\)",
            line,
        )
        for line in lines
    ), lines
    assert "archiver" not in proc.stderr and "registered:" not in proc.stderr


def test_explain_shows_a_chord_for_a_diamond(tmp_path: Path) -> None:
    proc = cli("explain", write(tmp_path, "d.yaml", DIAMOND), check=True)
    assert "chord" in proc.stdout and "header:" in proc.stdout and "body:" in proc.stdout
    assert "no parallelism given up" in proc.stdout


def test_explain_names_the_parallelism_a_non_series_parallel_dag_gives_up(tmp_path: Path) -> None:
    proc = cli("explain", write(tmp_path, "n.yaml", N_SHAPE), check=True)
    assert "not series-parallel" in proc.stdout
    assert "'d' waits for 'a' though it does not depend on it" in proc.stdout


@pytest.mark.integration
def test_run_follow_shows_each_step_and_exits_0_when_the_run_completes(
    tmp_path: Path, fleet_settings, worker
) -> None:
    proc = cli(
        "run",
        write(tmp_path, "d.yaml", DIAMOND),
        "-i",
        "n=3",
        "--follow",
        settings=fleet_settings,
        check=True,
    )
    assert "submitted run" in proc.stderr
    for step in "abcd":
        assert f"  {step}: COMPLETED" in proc.stdout
    assert "COMPLETED" in proc.stdout.splitlines()[-1]


@pytest.mark.integration
def test_run_of_a_failing_workflow_exits_1_with_the_error(
    tmp_path: Path, fleet_settings, worker
) -> None:
    path = write(
        tmp_path,
        "f.yaml",
        "id: f\nsteps:\n  - {id: x, plugin: builtin, method: fail, params: {message: nope}}\n",
    )
    proc = cli("run", path, settings=fleet_settings)
    assert proc.returncode == 1
    assert "FAILED: nope" in proc.stdout


@pytest.mark.integration
def test_status_shows_a_run_and_an_unknown_run_is_a_clear_error(fleet_settings, worker) -> None:
    client = Client(fleet_settings)
    run = client.submit(Workflow("st").step("only", "builtin", "echo"))
    run.wait(30)
    proc = cli("status", run.id, settings=fleet_settings, check=True)
    assert "only" in proc.stdout and "COMPLETED" in proc.stdout
    missing = cli("status", "nope", settings=fleet_settings)
    assert missing.returncode == 1 and "unknown run 'nope'" in missing.stderr


@pytest.mark.integration
def test_plugins_lists_the_fleet_catalog(fleet_settings, worker) -> None:
    proc = cli("plugins", settings=fleet_settings, check=True)
    assert (
        "builtin" in proc.stdout and "csv_loader" in proc.stdout and worker.hostname in proc.stdout
    )
    assert (
        f"builtin.call on {worker.hostname}: CANVASFLOW_CALL_ALLOW={','.join(fleet_settings.call_allow)}"
        in proc.stdout
    )


def test_a_redis_that_cannot_be_reached_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    proc = cli(
        "run",
        write(tmp_path, "d.yaml", DIAMOND),
        env={"CANVASFLOW_REDIS_URL": f"redis://127.0.0.1:{port}/0"},
    )
    assert proc.returncode == 1
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.integration
def test_canvasflow_worker_command_starts_a_worker_that_runs_steps(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url.rsplit("/", 1)[0] + "/11", key_prefix="wcmd")
    redis.Redis.from_url(settings.redis_url).flushdb()
    env = {**os.environ, **settings.as_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*CLI, "worker", "-c", "1", "-n", "clitest@%h"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = Client(settings)
        deadline = time.monotonic() + 30
        while not client.fleet():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert (
            client.submit(Workflow("w").step("e", "builtin", "echo")).wait(30).status == "COMPLETED"
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_demo_runs_the_four_examples_on_a_private_redis_and_exits_0(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANVASFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [*CLI, "demo", "--workdir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started a private Redis at redis://127.0.0.1:" in proc.stderr
    assert "dashboard: http://127.0.0.1:" in proc.stderr and "log in as admin / " in proc.stderr
    assert proc.stdout.count("as expected") == 6
    assert (tmp_path / "output" / "processed_data.csv").exists()


@contextlib.contextmanager
def kept_running_demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, str, Path]]:
    """``canvasflow demo --keep-running`` past its examples: (process, dashboard url, admin
    password, its stderr file); killed if the test leaves it running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANVASFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    env["CANVASFLOW_CALL_ALLOW"] = "os"  # the demo declares its own allow-list (none) instead
    err_log = tmp_path / "demo.err"
    with (
        err_log.open("wb") as err,
        subprocess.Popen(
            [*CLI, "demo", "--workdir", str(tmp_path / "w"), "--keep-running"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=tmp_path,
        ) as proc,
    ):
        try:
            out = []
            for line in proc.stdout:  # type: ignore[union-attr]
                out.append(line)
                if line.startswith("fleet running"):
                    break
            text = "".join(out)
            assert text.count("as expected") == 6, text + err_log.read_text()
            m = re.search(r"dashboard (http://127\.0\.0\.1:\d+/) \(admin / (\S+)\)", text)
            assert m, text
            yield proc, m.group(1), m.group(2), err_log
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.integration
def test_demo_kept_running_serves_its_runs_on_the_dashboard_until_ctrl_c(tmp_path: Path) -> None:
    import requests

    with kept_running_demo(tmp_path) as (proc, url, password, err_log):
        with requests.Session() as s:
            csrf = re.search(
                r'name="csrf" value="([^"]+)"', s.get(f"{url}login", timeout=10).text
            ).group(1)
            r = s.post(
                f"{url}login",
                data={"username": "admin", "password": password, "csrf": csrf},
                timeout=10,
            )
            assert r.status_code == 200 and "Log out" in r.text, r.text[:500]
            runs = s.get(f"{url}api/v1/runs", params={"limit": 10}, timeout=10).json()["runs"]
            workers = s.get(f"{url}api/v1/workers", timeout=10).json()["workers"]
        assert [w["call_allow"] for w in workers.values()] == [[]]  # the examples call no function
        assert {r["workflow"]["id"] for r in runs} >= {
            "data_processing",
            "parallel_media",
            "conditional_analysis",
            "transactional_update",
        }
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(60) == 0, err_log.read_text()
    assert "stopping the fleet" in err_log.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}api/v1/health", timeout=5)


@pytest.mark.integration
def test_a_kept_running_demo_whose_dashboard_dies_says_so_stops_the_rest_and_exits_1(
    tmp_path: Path,
) -> None:
    with kept_running_demo(tmp_path) as (proc, url, _, err_log):
        port = url.rsplit(":", 1)[1].strip("/")
        web = [
            int(d.name)
            for d in Path("/proc").iterdir()
            if d.name.isdigit()
            and _cmdline(d).count(port)
            and "web" in _cmdline(d)
            and "--recorder" in _cmdline(d)
        ]
        assert len(web) == 1, web
        os.kill(web[0], signal.SIGKILL)
        assert proc.wait(60) == 1, err_log.read_text()
    text = err_log.read_text()
    assert (
        f"web stopped (its log: {tmp_path / 'w' / 'logs' / 'web.log'}); stopping the rest" in text
    ), text
    assert (tmp_path / "w" / "logs" / "web.log").exists()


def _cmdline(proc_dir: Path) -> list[str]:
    try:
        return (proc_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@pytest.mark.integration
def test_procfile_fleet_started_with_honcho_runs_a_workflow(tmp_path: Path) -> None:
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent)) or shutil.which("honcho")
    assert honcho, "honcho is a test dependency"
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CANVASFLOW_")},
        "CANVASFLOW_REDIS_PORT": str(port),
        "CANVASFLOW_KEY_PREFIX": "procfile",
        "CANVASFLOW_REDIS_DIR": str(tmp_path),  # where Redis writes its append-only file
        # Not the default 8080: a dashboard already running on this machine would hold it, the
        # web process would exit, and honcho would stop the whole fleet with it.
        "CANVASFLOW_WEB_PORT": str(free_port()),
        "CANVASFLOW_WEB_SECRET_KEY": "procfile-test-signing-key",  # the web refuses to start without one
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    log = (tmp_path / "honcho.log").open("wb")
    proc = subprocess.Popen(
        [honcho, "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        settings = Settings(redis_url=url, key_prefix="procfile")
        deadline = time.monotonic() + 60
        while True:
            try:
                if redis.Redis.from_url(url).hlen(Keys("procfile").catalog):
                    break
            except redis.ConnectionError:
                pass
            assert proc.poll() is None, (tmp_path / "honcho.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "honcho.log").read_text()
            time.sleep(0.2)
        snap = (
            Client(settings)
            .submit(
                Workflow("pf")
                .step("a", "builtin", "echo", params={"x": 1})
                .step("b", "builtin", "echo", depends_on=["a"])
            )
            .wait(30)
        )
        assert snap.status == "COMPLETED"
        # Redis persists (a restart keeps runs in flight) and the watchdog runs with the fleet.
        assert redis.Redis.from_url(url).config_get("appendonly") == {"appendonly": "yes"}
        assert any("watchdog" in _cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit())
        # The scheduler runs with the fleet: a schedule registered now fires.
        client = Client(settings)
        client.register(Workflow("pf_tick").schedule(every=1).step("a", "builtin", "echo"))
        runs_key = Keys("procfile").runs_of("pf_tick")
        wait_deadline = time.monotonic() + 30
        while not client.redis.zcard(runs_key):
            assert time.monotonic() < wait_deadline, (tmp_path / "honcho.log").read_text()
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
