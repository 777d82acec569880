"""The docs are true of the code (issue 17 item 15), checked where it is cheap.

- Blocks marked in docs/*.md run: ``<!-- docs-test: file NAME -->`` before a fenced block makes
  it a file of that page; ``<!-- docs-test: run -->`` before a ``console`` block runs each
  ``$ canvasflow ...`` line in a directory holding those files, and its printed lines (and
  ``$ echo $?``) must be what the page shows; ``<!-- docs-test: python true: EXPR -->`` runs a
  Python block there and then EXPR must be true.
- Every ``CANVASFLOW_*`` setting the docs name is read by the code, and every field of
  Settings and WebSettings is documented; every ``canvasflow <command>`` is a command; every
  ``/api/v1/...`` route is served by the dashboard's Flask app.
- The null-safe template the definition reference shows for ``join: any`` works as it says.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
MARK = re.compile(r"^<!-- docs-test: (file|run|python)\b(.*?)-->\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


class Block(NamedTuple):
    doc: Path
    line: int  # 1-based line of the fence
    kind: str  # file | run | python
    arg: str
    body: list[str]

    def __str__(self) -> str:
        return f"{self.doc.name}:{self.line} ({self.kind} {self.arg})".strip()


def marked_blocks(doc: Path) -> list[Block]:
    """Every fenced block of ``doc`` preceded by a docs-test marker (a blank line between is fine)."""
    lines = doc.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = MARK.match(lines[i])
        i += 1
        if not m:
            continue
        while i < len(lines) and not lines[i].strip():
            i += 1
        assert i < len(lines) and FENCE.match(lines[i]), (
            f"{doc.name}:{i}: a docs-test marker must be followed by a fenced block"
        )
        start = i
        i += 1
        body = []
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i])
            i += 1
        out.append(Block(doc, start + 1, m.group(1), m.group(2).strip(), body))
    return out


ALL_BLOCKS = [b for doc in DOCS for b in marked_blocks(doc)]


def files_of(doc: Path, where: Path) -> None:
    for b in marked_blocks(doc):
        if b.kind == "file":
            (where / b.arg).write_text("\n".join(b.body) + "\n")


def plain_env() -> dict[str, str]:
    """The environment of a user who set nothing: no CANVASFLOW_* settings, a wide terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANVASFLOW_")}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="200", PYTHONUNBUFFERED="1", NO_COLOR="1")
    return env


def test_the_docs_have_marked_sessions_to_run() -> None:
    kinds = {(b.doc.name, b.kind) for b in ALL_BLOCKS}
    assert ("definition-reference.md", "run") in kinds
    assert ("definition-reference.md", "python") in kinds


@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if b.kind == "run"], ids=lambda b: f"{b.doc.name}:{b.line}"
)
def test_a_marked_console_session_prints_what_the_docs_show(block: Block, tmp_path: Path) -> None:
    files_of(block.doc, tmp_path)
    commands: list[tuple[str, list[str]]] = []
    for line in block.body:
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"{block}: output before the first '$ ' command"
            commands[-1][1].append(line.rstrip())
    last_rc = None
    for command, expected in commands:
        if command == "echo $?":
            assert expected == [str(last_rc)], f"{block}: exit status"
            continue
        argv = shlex.split(command)
        assert argv[0] == "canvasflow", f"{block}: only canvasflow commands run here: {command}"
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *argv[1:]],
            cwd=tmp_path,
            env=plain_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        last_rc = proc.returncode
        printed = [line.rstrip() for line in proc.stdout.splitlines()]
        assert printed == expected, f"{block}: `{command}` printed\n{proc.stdout}"


@pytest.mark.parametrize(
    "block",
    [b for b in ALL_BLOCKS if b.kind == "python"],
    ids=lambda b: f"{b.doc.name}:{b.line}",
)
def test_a_marked_python_block_does_what_the_docs_say(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files_of(block.doc, tmp_path)
    monkeypatch.chdir(tmp_path)
    claim = block.arg.removeprefix("true:").strip()
    assert claim, f"{block}: say what must be true after the block: 'python true: EXPR'"
    scope: dict[str, Any] = {}
    exec("\n".join(block.body), scope)  # noqa: S102 - our own docs
    exec("from orchestrator import load_file, load_definition, Workflow", scope)  # noqa: S102
    assert eval(claim, scope) is True, f"{block}: {claim}"  # noqa: S307


# ---- null-safe templates for join: any ---------------------------------------------------------

NULL_SAFE = 'steps.x.status == "COMPLETED" and steps.x.output.msg or "none"'


def reference() -> str:
    return (ROOT / "docs" / "definition-reference.md").read_text()


def test_the_reference_shows_the_null_safe_template_for_join_any() -> None:
    text = reference()
    assert "### Null-safe templates for `join: any`" in text
    assert "'{{ " + NULL_SAFE + " }}'" in text


@pytest.mark.parametrize(
    ("status", "output", "expected"),
    [
        ("COMPLETED", {"msg": "hello"}, "hello"),
        ("SKIPPED", None, "none"),
        ("FAILED", None, "none"),
        ("COMPLETED", {"msg": ""}, "none"),
    ],
)
def test_the_null_safe_template_evaluates_as_the_reference_says(
    status: str, output: Any, expected: str
) -> None:
    from orchestrator.model.expressions import Template, parse

    scope = {"steps": {"x": {"status": status, "output": output}}}
    assert parse(NULL_SAFE).evaluate(scope) == expected
    assert Template.parse("{{ " + NULL_SAFE + " }}").render(scope) == expected


def test_reading_a_field_of_a_skipped_output_fails_as_the_reference_says() -> None:
    from orchestrator.errors import EvaluationError
    from orchestrator.model.expressions import parse

    scope = {"steps": {"x": {"status": "SKIPPED", "output": None}}}
    with pytest.raises(EvaluationError) as info:
        parse('steps.x.output.msg or "none"').evaluate(scope)
    assert "steps.x.output is None, not an object" in str(info.value)
    assert "steps.x.output is None, not an object" in reference()
    assert parse('steps.x.output and steps.x.output.msg or "none"').evaluate(scope) == "none"


@pytest.mark.parametrize(("x_when", "msg"), [("true", "hello"), ("false", "none")])
def test_a_join_any_step_with_the_null_safe_template_runs_whichever_branch_completed(
    x_when: str, msg: str
) -> None:
    from orchestrator import Workflow
    from workers.testing import run_inline

    wf = (
        Workflow("null_safe")
        .step("x", "builtin", "echo", params={"msg": "hello"}, when=x_when)
        .step("y", "builtin", "echo")
        .step(
            "notify",
            "builtin",
            "echo",
            depends_on=["x", "y"],
            join="any",
            params={"msg": "{{ " + NULL_SAFE + " }}"},
        )
    )
    snap = run_inline(wf)
    assert snap.status == "COMPLETED", snap
    assert snap.step("x").status == ("COMPLETED" if x_when == "true" else "SKIPPED")
    assert snap.step("notify").output == {"msg": msg}


# ---- settings, commands and routes the docs name ----------------------------------------------

SETTING = re.compile(r"CANVASFLOW_[A-Z0-9_]*")
CODE_FILES = [
    *ROOT.glob("orchestrator/**/*.py"),
    *ROOT.glob("workers/**/*.py"),
    *ROOT.glob("web/*.py"),
    *ROOT.glob("benchmarks/**/*.py"),
    *ROOT.glob("tests/*.py"),
    ROOT / "setup.py",
    ROOT / "docker-compose.yml",
    ROOT / "Procfile",
]


def doc_mentions(pattern: re.Pattern[str]) -> Iterator[tuple[str, str]]:
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for m in pattern.finditer(line):
                yield m.group(0), f"{doc.name}:{n}"


def declared_settings() -> set[str]:
    from orchestrator.settings import Settings
    from web.settings import WebSettings

    return set(Settings().as_env()) | set(WebSettings(secret_key="x").as_env())


def test_every_canvasflow_setting_the_docs_name_is_read_by_the_code() -> None:
    known = declared_settings()
    for path in CODE_FILES:
        if path.name != "test_docs.py":
            known |= {n for n in SETTING.findall(path.read_text()) if not n.endswith("_")}
    unknown = []
    for name, where in doc_mentions(SETTING):
        if name.endswith("_"):  # a family, written CANVASFLOW_WEB_LOGIN_* or CANVASFLOW_MAX_…
            if not any(k.startswith(name) for k in known):
                unknown.append(f"{where}: {name}*")
        elif name not in known:
            unknown.append(f"{where}: {name}")
    assert unknown == []


def test_every_setting_is_documented_by_its_full_name() -> None:
    documented = {name for name, _ in doc_mentions(SETTING)}
    assert sorted(declared_settings() - documented) == []


CLI_LINE = re.compile(r"(?:^\s*(?:\$ )?|&& |; )(?:\S*/)?canvasflow ((?:[a-z][a-z-]* ?){1,2})")
CLI_SPAN = re.compile(r"`canvasflow ((?:[a-z][a-z-]* ?){1,2})[^`]*`")
# Spans that quote what canvasflow prints, not a command.
NOT_COMMANDS = {"could not"}


def documented_commands() -> dict[tuple[str, ...], str]:
    found: dict[tuple[str, ...], str] = {}
    for doc in DOCS:
        inside = False
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if FENCE.match(line):
                inside = not inside
                continue
            matches = CLI_LINE.finditer(line) if inside else CLI_SPAN.finditer(line)
            for m in matches:
                words = tuple(m.group(1).split())
                if " ".join(words) not in NOT_COMMANDS:
                    found.setdefault(words, f"{doc.name}:{n}")
    return found


def test_every_canvasflow_command_the_docs_show_exists() -> None:
    from orchestrator.cli.main import main

    wrong, web_words = [], set()
    for words, where in documented_commands().items():
        cmd = main.commands.get(words[0])
        if cmd is None:
            wrong.append(f"{where}: canvasflow {words[0]} (commands: {', '.join(main.commands)})")
        elif isinstance(cmd, click.Group) and len(words) > 1 and words[1] not in cmd.commands:
            wrong.append(f"{where}: canvasflow {' '.join(words)}")
        elif words[0] == "web" and len(words) > 1:
            web_words.add((words[1], where))
    for word, where in sorted(web_words):
        # `canvasflow web` hands its arguments to `python -m web`: ask it.
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "web", word, "--help"],
            env=plain_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            wrong.append(f"{where}: canvasflow web {word}: {proc.stderr.strip()[-200:]}")
    assert wrong == []


API_PATH = re.compile(r"(?:\b(GET|POST|PUT|PATCH|DELETE) )?`?(/api/v1(?:/[^\s`\"')|,?]*)?)")


@pytest.fixture(scope="module")
def url_map(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from orchestrator.settings import Settings
    from web.app import create_app
    from web.settings import WebSettings

    db = tmp_path_factory.mktemp("docs") / "audit.db"
    app = create_app(
        Settings(database_url=f"sqlite:///{db}", key_prefix="docs-test"),
        WebSettings(secret_key="docs-test"),
        start=False,
    )
    return app.url_map


def test_every_api_route_the_docs_name_is_served(url_map: Any) -> None:
    from werkzeug.exceptions import MethodNotAllowed, NotFound

    urls = url_map.bind("localhost")
    rules = [r.rule for r in url_map.iter_rules()]
    wrong = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for m in API_PATH.finditer(line):
                method, path = m.group(1), m.group(2).rstrip("\\.:")
                if "..." in path or "…" in path:
                    continue
                concrete = re.sub(r"\{[^}]*\}|<[^>]*>", "x", path)
                try:
                    urls.match(concrete, method=method or "GET")
                except MethodNotAllowed:
                    if method:
                        wrong.append(f"{doc.name}:{n}: {method} {path} (no such method)")
                except NotFound:
                    # `/api/v1/inspect` names the family of routes under it.
                    if method or not any(r.startswith(path.rstrip("/") + "/") for r in rules):
                        wrong.append(f"{doc.name}:{n}: {method or ''} {path}".replace("  ", " "))
    assert wrong == []
