"""The committed dashboard bundle (web/static/dist) is exactly what its sources build.

The bundle ships in the package so that an install needs no Node.js; this keeps the two from
drifting apart. It needs npm (present in CI: .ci/run installs Node.js) and the npm registry for
`npm ci` (the lockfile's exact versions).
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT, need

FRONTEND = ROOT / "web" / "frontend"
DIST = ROOT / "web" / "static" / "dist"
REFRESH = "cd web/frontend && npm ci && npm run build, then commit web/static/dist"


def _files(root: Path) -> dict[str, Path]:
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".map")  # debug builds' maps are not committed
    }


def _tracked(root: Path) -> set[str] | None:
    """The files of ``root`` that git tracks, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", "."],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {name for name in out.decode().split("\0") if name}


def _npm(npm: str, *args: str) -> None:
    done = subprocess.run([npm, *args], cwd=FRONTEND, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"`npm {' '.join(args)}` in {FRONTEND} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    )


def test_the_committed_bundle_is_byte_for_byte_what_the_sources_build(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        need("npm", "Node.js 18+ builds the dashboard bundle to compare with the committed one")
    assert npm is not None
    _npm(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
    out = tmp_path / "dist"
    _npm(npm, "run", "build", "--silent", "--", "--outdir", str(out))

    built, shipped = _files(out), _files(DIST)
    differing = sorted(
        [f"{name} (not built by the sources)" for name in shipped.keys() - built.keys()]
        + [f"{name} (missing from web/static/dist)" for name in built.keys() - shipped.keys()]
        + [
            f"{name} (differs)"
            for name in built.keys() & shipped.keys()
            if not filecmp.cmp(built[name], shipped[name], shallow=False)
        ]
    )
    assert not differing, (
        "web/static/dist is not what web/frontend builds:\n  "
        + "\n  ".join(differing)
        + f"\nrefresh it: {REFRESH}"
    )
    # What ships is what git has: a built file left untracked would be missing from a clone.
    tracked = _tracked(DIST)
    if tracked is not None:
        untracked = sorted(set(shipped) - tracked)
        assert not untracked, (
            "web/static/dist has files git does not track (a clone would miss them):\n  "
            + "\n  ".join(untracked)
            + "\nadd them: git add -f web/static/dist"
        )


def test_two_builds_are_byte_identical_and_hold_no_path_of_the_checkout(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        need("npm", "Node.js 18+ builds the dashboard bundle")
    assert npm is not None
    if not (FRONTEND / "node_modules" / ".package-lock.json").exists():
        _npm(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        _npm(npm, "run", "build", "--silent", "--", "--outdir", str(out))
    a, b = _files(first), _files(second)
    assert a.keys() == b.keys()
    assert [n for n in a if not filecmp.cmp(a[n], b[n], shallow=False)] == []
    leaks = [
        name
        for name, path in a.items()
        if str(ROOT).encode() in path.read_bytes() or str(tmp_path).encode() in path.read_bytes()
    ]
    assert leaks == [], f"the bundle holds an absolute path of the build machine: {leaks}"
