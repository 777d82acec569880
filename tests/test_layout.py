"""The dependency rule of DESIGN.md, and the repository promises of the README."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "orchestrator": {"web", "workers", "flask", "flask_socketio"},
    "workers": {"web", "flask", "flask_socketio"},
    "web": {"workers"},
}
CANVAS_NAMES = {"chain", "chord", "group", "signature", "Signature", "canvas"}


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_dependency_rule(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module, _ in imports_of(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


# --- orchestrator's layers (issue 14 item 6): each sub-package's README says what it may import.
BASE = {"errors", "keys", "logbatch", "records"}
# layer -> the parts of orchestrator it may import, and the libraries it must not.
LAYERS: dict[str, tuple[set[str], set[str]]] = {
    "errors": (set(), {"celery", "kombu", "redis", "sqlalchemy"}),
    "keys": (set(), {"celery", "kombu", "redis", "sqlalchemy"}),
    "logbatch": (set(), {"celery", "kombu", "redis", "sqlalchemy"}),
    "records": ({"keys"}, {"celery", "kombu", "redis", "sqlalchemy"}),
    "model": (
        {"errors", "model"},
        {"celery", "kombu", "redis", "sqlalchemy", "alembic", "click", "rich"},
    ),
    "settings": ({"errors", "model"}, {"celery", "kombu", "redis", "sqlalchemy"}),
    "connect": ({"settings"}, {"celery", "kombu", "sqlalchemy"}),
    "audit": (BASE | {"settings", "connect", "audit"}, {"celery", "kombu"}),
    "fleet": (BASE | {"settings", "connect", "audit", "fleet"}, {"click", "rich"}),
    "engine": (
        BASE | {"model", "settings", "connect", "audit", "fleet", "engine"},
        {"click", "rich"},
    ),
    "cli": (
        BASE | {"model", "settings", "connect", "audit", "fleet", "engine", "cli", "__init__"},
        set(),
    ),
}


def layer_of(path: Path) -> str:
    parts = path.relative_to(ROOT / "orchestrator").parts
    return parts[0] if len(parts) > 1 else path.stem


def orchestrator_targets(module: str, names: list[str]) -> set[str]:
    """The layers an import reaches: `from orchestrator import X` is the facade unless X is a module."""
    parts = module.split(".")
    if parts[0] != "orchestrator":
        return set()
    if len(parts) > 1:
        return {parts[1]}
    modules = {p.stem for p in (ROOT / "orchestrator").glob("*.py")} | {
        p.name for p in (ROOT / "orchestrator").iterdir() if (p / "__init__.py").exists()
    }
    return {n if n in modules else "__init__" for n in names or ["__init__"]}


def test_orchestrator_layers_import_only_what_their_readme_allows() -> None:
    offenders = []
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        layer = layer_of(path)
        if layer == "__init__" or "migrations" in path.parts:
            continue
        allowed, forbidden = LAYERS[layer]
        for module, names in imports_of(path):
            rel = path.relative_to(ROOT)
            if module.split(".")[0] in forbidden:
                offenders.append(f"{rel} ({layer}) imports {module}")
            for target in orchestrator_targets(module, names) - allowed - {layer}:
                offenders.append(f"{rel} ({layer}) imports orchestrator.{target} via {module}")
    assert offenders == []


def test_every_orchestrator_layer_has_a_readme_and_a_rule() -> None:
    packages = {p.name for p in (ROOT / "orchestrator").iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in (ROOT / "orchestrator").glob("*.py")} - {"__init__"}
    assert packages | modules == set(LAYERS)
    for package in packages:
        text = (ROOT / "orchestrator" / package / "README.md").read_text()
        assert "May import" in text and "Must not import" in text, package


def test_only_the_compiler_and_step_runtime_build_canvas() -> None:
    allowed = {"orchestrator/engine/compiler.py", "workers/step.py", "workers/app.py"}
    offenders = []
    for package in ("orchestrator", "workers", "web"):
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).exists() else []:
            rel = str(path.relative_to(ROOT))
            for module, names in imports_of(path):
                if module.startswith("celery") and (
                    module == "celery.canvas" or CANVAS_NAMES & set(names)
                ):
                    if rel not in allowed:
                        offenders.append(f"{rel} imports {names or module} from {module}")
    assert offenders == []


def test_each_top_level_package_says_what_it_may_import() -> None:
    for package in FORBIDDEN:
        text = (ROOT / package / "README.md").read_text()
        assert "May import" in text and "Must not import" in text


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:sh|bash|console)\n(.*?)\n```", text, flags=re.S)


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    blocks = [b for b in readme_commands() if "pip install" in b]
    assert len(blocks) == 2, blocks
    demo, tests = blocks
    assert "canvasflow demo" in demo and "\n" not in demo.strip()
    assert "pytest" in tests and "\n" not in tests.strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests.strip() in [line.strip() for line in ci]


def test_ci_checks_lint_format_and_types_before_the_tests() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    checks = [".venv/bin/ruff check .", ".venv/bin/ruff format --check .", ".venv/bin/mypy"]
    tests = next(i for i, line in enumerate(lines) if line.endswith("-m pytest"))
    assert all(check in lines[:tests] for check in checks)


def test_no_module_grows_past_the_style_limit() -> None:
    big = [
        str(p.relative_to(ROOT))
        for pkg in ("orchestrator", "workers", "web")
        if (ROOT / pkg).exists()
        for p in (ROOT / pkg).rglob("*.py")
        if len(p.read_text().splitlines()) > 800
    ]
    assert big == []


def test_docker_compose_runs_the_same_fleet_as_the_procfile() -> None:
    # No Docker engine runs here; the Procfile fleet is started by tests/test_cli.py. This keeps
    # the compose file from drifting away from it: the same processes, loopback-only ports.
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {"redis", "postgres", "worker", "recorder", "web"} <= set(compose)
    procfile = dict(
        line.split(":", 1)
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert "celery -A workers.app worker -Q default,io" in compose["worker"]["command"]
    assert "-A workers.app worker" in procfile["worker"] and "-Q default,io" in procfile["worker"]
    assert "python -m web" in compose["web"]["command"] and "python -m web" in procfile["web"]
    assert "canvasflow recorder" in compose["recorder"]["command"]
    assert "canvasflow scheduler" in compose["scheduler"]["command"]
    assert "cli scheduler" in procfile["scheduler"]
    assert (
        "canvasflow watchdog" in compose["watchdog"]["command"]
        and "cli watchdog" in procfile["watchdog"]
    )
    # Redis persists runs in flight (docs/operations.md, "Redis persistence").
    assert "--appendonly yes --appendfsync everysec" in procfile["redis"]
    assert " ".join(compose["redis"]["command"]).endswith("--appendonly yes --appendfsync everysec")
    for service in compose.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


# --- import graph (issue 14 item 4)

GRAPH_PACKAGES = ("orchestrator", "workers", "web")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, at module level or inside functions (including
    ``if TYPE_CHECKING:`` blocks: a circle a type checker needs is a circle of the design)."""
    paths = {
        module_name(p): p
        for package in GRAPH_PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    package = name.split(".")
                    package = package[: len(package) - node.level + (1 if is_package else 0)]
                    base = ".".join([*package, *([base] if base else [])])
                # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name``
                # imports mod (the package's __init__ when mod is a package).
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base
                    for alias in node.names
                ]
            else:
                continue
            edges.update(t for t in targets if t in paths and t != name)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of the graph: for every strongly connected component of more than one module
    (Tarjan), shortest circles through its members until each member is on one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        covered: set[str] = set()
        for start in sorted(component):
            if start not in covered:
                cycle = cycle_through(graph, component, start)
                covered.update(cycle)
                cycles.append(cycle)
    return sorted(cycles)


def cycle_through(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """The shortest circle from ``start`` back to it inside its strongly connected component."""
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way back to start
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"{start} is on no circle of {sorted(component)}")


def test_the_import_graph_finds_a_circle_and_names_it() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    # Two circles through one module: each is named, not only the first found.
    graph = {"a": {"b", "c"}, "b": {"a"}, "c": {"a"}}
    assert import_cycles(graph) == [["a", "b", "a"], ["c", "a", "c"]]


def test_the_import_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "orchestrator.engine.runstate" in graph["orchestrator.engine.client"]
    assert "orchestrator.engine.client" in graph["orchestrator"]  # from .engine.client import


def test_no_module_of_orchestrator_workers_or_web_is_part_of_an_import_circle() -> None:
    cycles = import_cycles(import_graph())
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


# --- web read boundary (issue 14 item 7)
# The web reads the audit store only through orchestrator.audit.queries. The one exception is the
# dashboard's own account tables: web/auth.py and web/throttle.py write users, tokens and login
# counts together with their audit row in one transaction, so they keep their statements, on the
# tables declared for them in orchestrator/audit/models.py and on nothing else.

ACCOUNT_MODULES = {"auth.py": {"web_users", "web_tokens"}, "throttle.py": {"web_login_throttle"}}
WEB_AUDIT_IMPORTS = {
    "orchestrator.audit",
    "orchestrator.audit.queries",  # the package: its modules are its own business
    "orchestrator.audit.store",  # AuditStore, its errors, append_action
    "orchestrator.audit.recorder",  # the recorder embedded in the web process
    # Notification endpoints and deliveries: like queries, every statement on its tables is in it.
    "orchestrator.audit.notifications",
}
SQL_CALLS = {"connect", "begin", "exec_driver_sql"}


def web_sql_offenders(name: str, source: str) -> list[str]:
    """What in one module of web/ reads or writes the audit store other than through its queries."""
    tables = ACCOUNT_MODULES.get(name)
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found = [(node.module, [a.name for a in node.names])]
        else:
            found = []
        for module, names in found:
            if module == "orchestrator.audit.models":
                if tables is None or not set(names) <= tables:
                    out.append(f"{name} imports {names or module} from {module}")
            elif module.startswith("orchestrator.audit.") and module not in WEB_AUDIT_IMPORTS:
                out.append(f"{name} imports {module}")
            elif module == "sqlalchemy" and tables is not None:
                if "text" in names:
                    out.append(f"{name} imports text from sqlalchemy (raw SQL)")
            elif module.split(".")[0] == "sqlalchemy" and module != "sqlalchemy.exc":
                if names != ["exc"]:
                    out.append(f"{name} imports {names or module} from {module}")
        if (
            tables is None
            and isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in SQL_CALLS
        ):
            out.append(f"{name}:{node.lineno} calls .{node.func.attr}() on a database")
    return out


def test_the_web_reads_the_audit_store_only_through_its_queries() -> None:
    offenders = [
        offence
        for path in sorted((ROOT / "web").glob("*.py"))
        for offence in web_sql_offenders(path.name, path.read_text())
    ]
    assert offenders == [], (
        "add the read to orchestrator/audit/queries (docs/design.md, 'The web's read boundary'): "
        + "; ".join(offenders)
    )


def test_the_web_read_boundary_catches_each_way_around_it() -> None:
    assert web_sql_offenders("runs.py", "from orchestrator.audit.models import runs") != []
    assert web_sql_offenders("runs.py", "from sqlalchemy import select") != []
    assert web_sql_offenders("runs.py", "import sqlalchemy") != []
    assert web_sql_offenders("runs.py", "from orchestrator.audit.queries.runs import logs") != []
    assert web_sql_offenders("runs.py", "with store.connect() as c: pass") != []
    assert web_sql_offenders("auth.py", "from orchestrator.audit.models import runs") != []
    assert web_sql_offenders("auth.py", "from sqlalchemy import select, text") != []
    assert web_sql_offenders("runs.py", "from sqlalchemy import exc") == []
    assert web_sql_offenders("runs.py", "from sqlalchemy.exc import SQLAlchemyError") == []
    assert web_sql_offenders("auth.py", "from orchestrator.audit.models import web_users") == []
    assert web_sql_offenders("auth.py", "with self.engine.connect() as c: pass") == []


# --- run state (issue 14 item 1) ------------------------------------------------------------
# RunState owns the Redis layout of a run: keys.py declares the keys, records.py the fields and
# their codec (and the batched reads the recorder uses), runstate.py every read and write.
RUN_STATE_OWNERS = {
    "orchestrator/engine/runstate.py",
    "orchestrator/engine/slotstate.py",  # RunState's concurrency slots (a mixin)
    "orchestrator/engine/childstate.py",  # RunState's child runs (a mixin)
    "orchestrator/engine/itemstate.py",  # RunState's items of mapped steps (a mixin)
    "orchestrator/engine/livestate.py",  # RunState's reads across live runs (a mixin)
    "orchestrator/records.py",
}
KEY_BUILDER = "orchestrator/keys.py"
# Keys.<method>(run_id...): the keys of one run, which only the owners may address.
RUN_KEY_METHODS = {
    "run",
    "steps",
    "attempts",
    "completed",
    "lease",
    "items",
    "item_attempts",
    "map_data",
    "step_hash",
    "step_attempts",
}
KEY_PATTERNS = (":run:", ":lease:", ":steps", ":attempts", ":completed")


def python_sources() -> list[tuple[str, ast.Module]]:
    out = []
    for package in ("orchestrator", "workers", "web"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                rel = str(path.relative_to(ROOT))
                out.append((rel, ast.parse(path.read_text(), filename=rel)))
    return out


def docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef))]
    return {
        id(n.body[0].value)
        for n in nodes
        if n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
        and isinstance(n.body[0].value.value, str)
    }


def name_of(node: ast.AST) -> str:
    """The last name of ``x``, ``a.b.x`` or ``a.b.x(...)``; '' for anything else."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def hand_built_keys(tree: ast.Module) -> list[str]:
    """Keys made from the key prefix by string formatting or concatenation, key patterns
    written out, and step fields ("<step>|<field>") formatted by hand."""
    found = []
    skip = docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = node.values
            for left, right in zip(parts, parts[1:], strict=False):
                if (
                    isinstance(left, ast.FormattedValue)
                    and "prefix" in name_of(left.value)
                    and isinstance(right, ast.Constant)
                    and str(right.value)[:1] in ":-"
                ):
                    found.append(f"line {node.lineno}: a key formatted from {name_of(left.value)}")
                if (
                    isinstance(left, ast.FormattedValue)
                    and isinstance(right, ast.Constant)
                    and str(right.value).startswith("|")
                ):
                    found.append(f"line {node.lineno}: a step field formatted by hand")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            if "prefix" in name_of(node.left) and isinstance(node.right, ast.Constant):
                found.append(f"line {node.lineno}: a key added to {name_of(node.left)}")
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        ):
            if any(p in node.value for p in KEY_PATTERNS):
                found.append(f"line {node.lineno}: a run key pattern written out: {node.value!r}")
    return found


def run_state_access(tree: ast.Module) -> list[str]:
    """A run's keys addressed (keys.run(...), keys.steps(...)...), step fields named through
    keys.step_field, and Lua registered: each is the run state's business."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = name_of(node.func.value)
            if node.func.attr in RUN_KEY_METHODS and owner == "keys":
                found.append(f"line {node.lineno}: keys.{node.func.attr}(...)")
            if node.func.attr == "register_script":
                found.append(f"line {node.lineno}: a Lua script registered")
        if isinstance(node, ast.Name | ast.alias) and (
            getattr(node, "id", None) or getattr(node, "name", None)
        ) in ("step_field", "STEP_FIELD_SEP"):
            found.append(f"line {getattr(node, 'lineno', '?')}: the step field separator")
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "redis.call(" in node.value
        ):
            found.append(f"line {node.lineno}: Lua in a Python string")
    return found


def test_only_keys_py_builds_a_canvasflow_key() -> None:
    offenders = [
        f"{rel}: {what}"
        for rel, tree in python_sources()
        if rel != KEY_BUILDER
        for what in hand_built_keys(tree)
    ]
    assert offenders == []


def test_only_the_run_state_reads_or_writes_a_runs_keys() -> None:
    offenders = [
        f"{rel}: {what}"
        for rel, tree in python_sources()
        if rel not in RUN_STATE_OWNERS | {KEY_BUILDER}
        for what in run_state_access(tree)
    ]
    assert offenders == []


def test_the_run_state_rules_catch_what_they_are_for() -> None:
    code = ast.parse(
        "f'{settings.key_prefix}:celery:'\n"
        "f'{self.prefix}:run:{rid}'\n"
        "key_prefix + ':x'\n"
        "r.hgetall('cf:run:' + rid)\n"
        "r.hget(client.keys.run(rid), 'status')\n"
        "r.hmget(state.keys.steps(rid), f'{sid}|status')\n"
        "from orchestrator.keys import step_field\n"
        "client.register_script('return 1')\n"
        "LUA = \"redis.call('GET', KEYS[1])\"\n"
    )

    def lines(found: list[str]) -> list[int]:
        return sorted({int(w.split(":")[0].removeprefix("line ")) for w in found})

    assert lines(hand_built_keys(code)) == [1, 2, 3, 4, 6]
    assert lines(run_state_access(code)) == [5, 6, 7, 8, 9]


# --- Lua in .lua files (issue 14 item 3) ----------------------------------------------------
LUA_DIR = ROOT / "orchestrator" / "engine" / "lua"


def test_no_python_module_holds_lua() -> None:
    offenders = [
        f"{rel}: line {node.lineno}"
        for rel, tree in python_sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "redis.call(" in node.value
    ]
    assert offenders == []


def test_each_lua_script_says_its_keys_arguments_and_return_value() -> None:
    scripts = sorted(LUA_DIR.glob("*.lua"))
    assert scripts
    for path in scripts:
        head = []
        for line in path.read_text().splitlines():
            if not line.startswith("--"):
                break
            head.append(line)
        text = "\n".join(head)
        if path.name == "common.lua":  # the included piece, not a script
            assert "include" in text
            continue
        assert "-- KEYS:" in text and "-- Returns" in text, path.name
        assert "-- ARGV:" in text or "ARGV" not in path.read_text(), path.name


def test_the_lua_files_ship_in_the_wheel() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]
    assert "lua/*.lua" in data["orchestrator.engine"]
