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
BASE = {"errors", "keys", "logbatch"}
# layer -> the parts of orchestrator it may import, and the libraries it must not.
LAYERS: dict[str, tuple[set[str], set[str]]] = {
    "errors": (set(), {"celery", "kombu", "redis", "sqlalchemy"}),
    "keys": (set(), {"celery", "kombu", "redis", "sqlalchemy"}),
    "logbatch": (set(), {"celery", "kombu", "redis", "sqlalchemy"}),
    "model": (
        {"errors", "model"},
        {"celery", "kombu", "redis", "sqlalchemy", "alembic", "click", "rich"},
    ),
    "settings": ({"errors", "model"}, {"celery", "kombu", "redis", "sqlalchemy"}),
    "audit": (BASE | {"settings", "audit"}, {"celery", "kombu"}),
    "fleet": (BASE | {"settings", "audit", "fleet"}, {"click", "rich"}),
    "engine": (BASE | {"model", "settings", "audit", "fleet", "engine"}, {"click", "rich"}),
    "cli": (BASE | {"model", "settings", "audit", "fleet", "engine", "cli", "__init__"}, set()),
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
