"""What ``canvasflow explain`` prints: the plan of a definition as indented lines of canvas
(chains, groups, chords), with mapped and sub-workflow steps labelled. Pure, like the compiler
whose plan it reads."""

from __future__ import annotations

from orchestrator.engine.compiler import Leaf, Node, Parallel, Plan
from orchestrator.model.definition import Definition


def step_labels(defn: Definition) -> dict[str, str]:
    """What ``canvasflow explain`` says after a step's id: a sub-workflow step's child run."""
    return {
        s.id: f"(sub-workflow: a child run of '{s.workflow}'"
        + (f" version {s.version})" if s.version else ", its latest version at submit)")
        for s in defn.steps
        if s.workflow
    }


def describe_plan(p: Plan, defn: Definition | None = None) -> list[str]:
    """The plan as indented lines of canvas, for ``canvasflow explain`` (with ``defn``, a mapped
    step says what it maps over: ``resize [map over steps.list.output, max 50]``, and a
    sub-workflow step which workflow its child runs: step_labels)."""
    lines: list[str] = []
    mapped = {s.id: s.map for s in defn.steps if s.map} if defn else {}
    labels = step_labels(defn) if defn else {}

    def label(sid: str) -> str:
        m = mapped.get(sid)
        text = sid
        if m is not None:
            over = m.over.strip().removeprefix("{{").removesuffix("}}").strip()
            cap = f", max {m.max_parallel}" if m.max_parallel else ""
            name = f", as {m.as_}" if m.as_ != "item" else ""
            text = f"{sid} [map over {over}{name}{cap}]"
        return f"{text} {labels[sid]}" if sid in labels else text

    def walk(node: Node, depth: int, joined: bool = False) -> None:
        pad = "  " * depth
        if isinstance(node, Leaf):
            lines.append(f"{pad}{label(node.step)}")
        elif isinstance(node, Parallel):
            lines.append(f"{pad}group ({len(node.parts)} in parallel)")
            for part in node.parts:
                walk(part, depth + 1)
        else:
            parts = list(node.parts)
            lines.append(f"{pad}chain ({len(parts)} links)")
            i = 0
            while i < len(parts):
                part = parts[i]
                if (
                    isinstance(part, Parallel)
                    and i + 1 < len(parts)
                    and not isinstance(parts[i + 1], Parallel)
                ):
                    lines.append(f"{pad}  chord")
                    lines.append(f"{pad}    header:")
                    walk(part, depth + 3)
                    lines.append(f"{pad}    body:")
                    walk(parts[i + 1], depth + 3)
                    i += 2
                    continue
                walk(part, depth + 1)
                i += 1

    if p.tree is None:
        return ["(nothing left to run)"]
    walk(p.tree, 0)
    return lines
