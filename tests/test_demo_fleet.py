"""The demo as a user runs it alongside other shells: it stops whole on `kill` and on a closed
terminal, and CLI commands without settings find it while it runs (issue 17, items 2 and 3)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.audit.store import AuditStore
from orchestrator.errors import StoreError
from orchestrator.settings import (
    Settings,
    cli_settings,
    demo_file,
    remove_demo_file,
    running_demo,
    write_demo_file,
)

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orchestrator.cli"]

ECHO = """
id: hello_demo
steps:
  - {id: greet, plugin: builtin, method: echo, params: {msg: hi}}
"""


def user_env(tmp_path: Path) -> dict[str, str]:
    """A shell of a user who set nothing: no CANVASFLOW_* variable, their own HOME and state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANVASFLOW_")}
    env.pop("XDG_STATE_HOME", None)
    env["HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "200"  # ids and URLs on one line
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


@dataclass
class Demo:
    proc: subprocess.Popen
    stdout: str
    err_log: Path
    env: dict[str, str]

    def stderr(self) -> str:
        return self.err_log.read_text(errors="replace")

    def run_ids(self) -> dict[str, str]:
        return dict(re.findall(r"submitted (\w+) as run ([0-9a-f]+)", self.stderr()))


@contextlib.contextmanager
def kept_running_demo(tmp_path: Path) -> Iterator[Demo]:
    """``canvasflow demo --keep-running`` started as a user starts it, past its examples."""
    env = user_env(tmp_path)
    err_log = tmp_path / "demo.err"
    with (
        err_log.open("wb") as err,
        subprocess.Popen(
            [*CLI, "demo", "--workdir", str(tmp_path / "w"), "--keep-running"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            bufsize=0,  # unbuffered: what select() sees is all there is
            cwd=tmp_path,
        ) as proc,
    ):
        try:
            out = _lines_until(proc, "fleet running", timeout=240)
            out += _lines_until(proc, "  export ", timeout=30)
            text = "".join(out)
            assert "fleet running" in text and text.count("as expected") == 6, (
                text + err_log.read_text()
            )
            yield Demo(proc, text, err_log, env)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


def _lines_until(proc: subprocess.Popen, prefix: str, timeout: float) -> list[str]:
    """Lines of the demo's output up to one that starts with ``prefix``; what came within
    ``timeout`` when none does (the demo keeps running: reading on would wait for ever)."""
    import selectors

    lines = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        while (left := deadline - time.monotonic()) > 0 and sel.select(left):
            raw = proc.stdout.readline()  # type: ignore[union-attr]
            if not raw:
                break
            line = raw.decode(errors="replace")
            lines.append(line)
            if line.startswith(prefix):
                break
    return lines


def cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# -- processes ---------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0]


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root`` (children, their children, ...): {pid: command line}."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            parents[int(d.name)] = st[0]
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                with contextlib.suppress(OSError):
                    found[child] = (
                        Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    )
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z"


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- item 2: kill and hang-up stop the fleet --------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_kept_running_demo_killed_or_hung_up_stops_every_process_and_frees_its_ports(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with kept_running_demo(tmp_path) as demo:
        tree = descendants(demo.proc.pid)
        commands = " | ".join(tree.values())
        assert "redis-server" in commands and "celery" in commands, commands
        assert re.search(r"-m web .*--recorder", commands), commands
        web_port = int(re.search(r"dashboard http://127\.0\.0\.1:(\d+)/", demo.stdout).group(1))
        redis_port = int(re.search(r"Redis redis://127\.0\.0\.1:(\d+)/", demo.stdout).group(1))
        assert port_open(web_port) and port_open(redis_port)
        assert demo_file(demo.env).exists()

        # The ready line says how to stop it: Ctrl-C, `kill PID` (its own pid) or closing the
        # terminal; the user does what it says.
        ready = next(ln for ln in demo.stdout.splitlines() if ln.startswith("fleet running"))
        said = re.search(r"; Ctrl-C, kill (\d+) or closing this terminal stops it$", ready)
        assert said, ready
        assert int(said[1]) == demo.proc.pid
        os.kill(int(said[1]), sig)  # `kill PID`, or the terminal closing
        assert demo.proc.wait(90) == 0, demo.stderr()

    assert f"stopping the fleet ({sig.name})" in demo.stderr()
    deadline = time.monotonic() + 30  # prefork children leave right after their parent
    while (left := {p: c for p, c in tree.items() if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == {}, f"left running after {sig.name}: {left}"
    assert not port_open(web_port), f"the dashboard still answers on {web_port}"
    assert not port_open(redis_port), f"the demo's Redis still answers on {redis_port}"
    assert not demo_file(demo.env).exists()  # the CLI must not find a stopped demo


# -- item 3: the CLI finds a running demo -----------------------------------------------------


@pytest.mark.integration
def test_cli_commands_without_settings_use_the_running_demo_and_say_so(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"  # another shell, in another directory
    elsewhere.mkdir()
    (elsewhere / "hello.yaml").write_text(ECHO)
    with kept_running_demo(tmp_path) as demo:
        env = {**demo.env}
        ids = demo.run_ids()
        assert set(ids) == {
            "data_processing",
            "parallel_media",
            "conditional_analysis",
            "transactional_update",
            "media_group",
            "media_groups",
        }, demo.stderr()
        redis_url = re.search(r"Redis (redis://\S+),", demo.stdout).group(1)
        note = f"using the running demo's fleet (pid {demo.proc.pid}): {redis_url}"

        # The fleet file: the user's only, and no password in it.
        path = demo_file(env)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        body = json.loads(path.read_text())
        password = re.search(r"\(admin / (\S+)\)", demo.stdout).group(1)
        assert password not in path.read_text()
        assert body["pid"] == demo.proc.pid
        assert body["env"]["CANVASFLOW_REDIS_URL"] == redis_url

        runs = cli(["runs"], env, elsewhere)
        assert runs.returncode == 0, runs.stdout + runs.stderr
        for run_id in ids.values():
            assert run_id in runs.stdout, runs.stdout
        assert note in runs.stderr and "set CANVASFLOW_REDIS_URL to use another" in runs.stderr
        assert runs.stderr.count("using the running demo's fleet") == 1

        show = cli(["show", ids["transactional_update"]], env, elsewhere)
        assert show.returncode == 0 and "FAILED" in show.stdout, show.stdout + show.stderr
        assert "verify" in show.stdout and note in show.stderr

        logs = cli(["logs", ids["data_processing"]], env, elsewhere)
        assert logs.returncode == 0 and "load_data" in logs.stdout, logs.stdout + logs.stderr

        status = cli(["status", ids["parallel_media"]], env, elsewhere)
        assert status.returncode == 0 and "COMPLETED" in status.stdout, (
            status.stdout + status.stderr
        )
        assert note in status.stderr

        run = cli(["run", "hello.yaml", "--timeout", "90"], env, elsewhere)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "COMPLETED" in run.stdout and note in run.stderr
        assert "no live worker" not in run.stderr  # the demo's worker is listening

        # The export line the demo printed reaches the same fleet without the file.
        export = re.search(r"^  export (.*)$", demo.stdout, re.M).group(1)
        exported = dict(pair.split("=", 1) for pair in export.split())
        assert exported["CANVASFLOW_REDIS_URL"] == redis_url
        assert exported["CANVASFLOW_DATABASE_URL"].startswith("sqlite:///")
        other = {**env, **exported, "XDG_STATE_HOME": str(tmp_path / "no-state")}
        runs = cli(["runs"], other, elsewhere)
        assert runs.returncode == 0 and ids["data_processing"] in runs.stdout, runs.stderr
        assert "using the running demo" not in runs.stderr  # chosen explicitly: nothing to say

        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(90) == 0, demo.stderr()

    # Stopped: the file is gone and the commands no longer reach for it.
    assert not demo_file(env).exists()
    runs = cli(["runs"], env, elsewhere)
    assert runs.returncode == 1 and "using the running demo" not in runs.stderr
    assert not (elsewhere / "canvasflow.db").exists()
    assert list(elsewhere.iterdir()) == [elsewhere / "hello.yaml"]


@pytest.mark.parametrize("command", [["runs"], ["show", "0123456789abcdef"], ["logs", "0123"]])
def test_a_command_that_finds_no_audit_store_names_the_url_and_creates_no_file(
    tmp_path: Path, command: list[str]
) -> None:
    proc = cli(command, user_env(tmp_path), tmp_path, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = " ".join(proc.stderr.split())  # as one line, however the terminal wrapped it
    assert "no audit store at sqlite:///canvasflow.db" in text, text
    assert f"{tmp_path / 'canvasflow.db'} does not exist" in text, text
    assert "CANVASFLOW_DATABASE_URL" in text and "--database-url" in text, text
    assert "canvasflow db upgrade" in text, text
    assert "no canvasflow tables" not in text
    assert not (tmp_path / "canvasflow.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


# -- the fleet file, unit by unit -------------------------------------------------------------


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state"), **extra}


def test_the_fleet_file_lives_in_the_xdg_state_directory_or_under_home(tmp_path: Path) -> None:
    assert demo_file(_env(tmp_path)) == tmp_path / "state" / "canvasflow" / "demo.json"
    home_only = {"HOME": str(tmp_path / "home")}
    assert demo_file(home_only) == tmp_path / "home" / ".local/state/canvasflow/demo.json"
    relative = {**home_only, "XDG_STATE_HOME": "relative/dir"}  # ignored, as the spec says
    assert demo_file(relative) == demo_file(home_only)


def test_a_live_demos_file_gives_the_cli_its_fleet_and_a_dead_ones_is_ignored(
    tmp_path: Path,
) -> None:
    env = _env(tmp_path)
    fleet = Settings(redis_url="redis://127.0.0.1:4242/0", database_url="sqlite:////x/cf.db")
    path = write_demo_file(fleet, "http://127.0.0.1:8080/", env=env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    # This test process stands for the demo: its command line does not say "demo".
    assert running_demo(env) is None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "demo"])
    try:
        deadline = time.monotonic() + 30  # until it has exec'd
        while b"demo" not in Path(f"/proc/{sleeper.pid}/cmdline").read_bytes().split(b"\0"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        write_demo_file(fleet, "http://127.0.0.1:8080/", pid=sleeper.pid, env=env)
        demo = running_demo(env)
        assert demo is not None and demo.pid == sleeper.pid
        settings, used = cli_settings(env)
        assert used == demo
        assert settings.redis_url == "redis://127.0.0.1:4242/0"
        assert settings.database_url == "sqlite:////x/cf.db"
        assert demo.note().startswith(
            f"using the running demo's fleet (pid {sleeper.pid}): redis://127.0.0.1:4242/0"
        )
        # A variable that points at a fleet wins over the demo.
        for name in ("CANVASFLOW_REDIS_URL", "CANVASFLOW_DATABASE_URL"):
            settings, used = cli_settings({**env, name: "redis://127.0.0.1:1/0"})
            assert used is None
        # Another demo's file is not this one's to remove.
        remove_demo_file(pid=os.getpid(), env=env)
        assert path.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert running_demo(env) is None  # dead: ignored
    assert cli_settings(env) == (Settings.from_env(env), None)
    remove_demo_file(pid=sleeper.pid, env=env)
    assert not path.exists()


def test_a_fleet_file_that_is_not_ours_is_ignored(tmp_path: Path) -> None:
    env = _env(tmp_path)
    path = demo_file(env)
    path.parent.mkdir(parents=True)
    for text in ("", "not json", "[]", '{"pid": "x"}', json.dumps({"pid": 1, "env": {}})):
        path.write_text(text)
        assert running_demo(env) is None, text


def test_a_hostile_or_truncated_fleet_file_never_breaks_a_command(tmp_path: Path) -> None:
    env = _env(tmp_path)
    path = demo_file(env)
    path.parent.mkdir(parents=True)
    hostile = [
        json.dumps({"pid": 10**30, "env": {"CANVASFLOW_REDIS_URL": "redis://x/0"}}),
        json.dumps({"pid": -(10**30), "env": {"CANVASFLOW_REDIS_URL": "redis://x/0"}}),
        "[" * 100_000 + "]" * 100_000,  # nested past the parser's recursion limit
        json.dumps({"pid": 1, "env": {"CANVASFLOW_REDIS_URL": "redis://x/0"}})[:20],  # cut
        json.dumps({"pid": 1, "env": "CANVASFLOW_REDIS_URL"}),
    ]
    for text in hostile:
        path.write_text(text)
        assert running_demo(env) is None, text[:60]
        assert cli_settings(env) == (Settings.from_env(env), None)


@pytest.fixture
def demo_like() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line says "demo", as the demo's does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "demo"])
    try:
        deadline = time.monotonic() + 30  # until it has exec'd
        while b"demo" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_fleet_file_another_user_could_have_written_is_not_used(
    tmp_path: Path, demo_like: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(tmp_path)
    fleet = Settings(redis_url="redis://127.0.0.1:4242/0")
    path = write_demo_file(fleet, "", pid=demo_like.pid, env=env)
    assert running_demo(env) is not None  # ours, private, its demo alive: used

    path.chmod(0o620)  # another member of the group may have rewritten it
    assert running_demo(env) is None
    path.chmod(0o600)
    path.parent.chmod(0o777)  # anyone may have swapped it
    assert running_demo(env) is None
    path.parent.chmod(0o700)

    elsewhere = tmp_path / "planted.json"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)  # a link to a file of someone else's choosing
    assert running_demo(env) is None
    path.unlink()
    elsewhere.rename(path)
    assert running_demo(env) is not None

    with monkeypatch.context() as m:  # the file belongs to another user
        m.setattr(os, "getuid", lambda: os.stat(path).st_uid + 1)
        assert running_demo(env) is None


def test_a_pid_reused_after_the_demo_wrote_its_file_is_not_the_demo(
    tmp_path: Path, demo_like: subprocess.Popen[bytes]
) -> None:
    env = _env(tmp_path)
    path = write_demo_file(
        Settings(redis_url="redis://127.0.0.1:4242/0"), "", pid=demo_like.pid, env=env
    )
    assert running_demo(env) is not None
    # The file is an hour older than the process that now holds its pid (and says "demo").
    written = time.time() - 3600
    os.utime(path, (written, written))
    assert running_demo(env) is None


def test_writing_the_fleet_file_follows_no_planted_link(tmp_path: Path) -> None:
    env = _env(tmp_path)
    path = demo_file(env)
    path.parent.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    # The temporary name the writer used to choose (its pid), and any such name it could pick.
    path.with_name(f".{path.name}.{os.getpid()}.tmp").symlink_to(victim)
    write_demo_file(Settings(redis_url="redis://127.0.0.1:4242/0"), "", env=env)
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and json.loads(path.read_text())["pid"] == os.getpid()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_second_signal_while_the_demo_stops_does_not_cut_the_stop_short(
    first: signal.Signals,
) -> None:
    from orchestrator.cli.demo import stop_on_signals

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    stopped, cut_short = [], []
    try:
        stop_on_signals()
        try:
            os.kill(os.getpid(), first)
            time.sleep(5)  # the handler raises here, at once
        except KeyboardInterrupt:
            # The demo's stop (its except and finally) runs now: more signals change nothing.
            try:
                for again in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                    os.kill(os.getpid(), again)
                    time.sleep(0.01)  # room for a handler to run
            except KeyboardInterrupt as exc:
                cut_short.append(repr(exc))
            stopped.append(first)
        assert stopped == [first]
        assert cut_short == []
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_checking_a_missing_sqlite_store_says_where_and_creates_nothing(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'nowhere.db'}")
    try:
        with pytest.raises(StoreError, match=r"nowhere\.db does not exist.*db upgrade"):
            store.check()
    finally:
        store.dispose()
    assert not (tmp_path / "nowhere.db").exists()
