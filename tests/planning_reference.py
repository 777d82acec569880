"""The planner as it was before issue 13 (quadratic for long chains), kept verbatim as the oracle
that tests/test_planning.py compares the near-linear planner with: same trees, same lost pairs
in the same order, for every random DAG and settled set."""

# ruff: noqa
from __future__ import annotations

from collections.abc import Iterable, Mapping

from orchestrator.engine.compiler import Leaf, Node, Parallel, Plan, Series, order_edges
from orchestrator.model.definition import Definition


def reference_plan(defn: Definition, settled: Iterable[str] = ()) -> Plan:
    """Decompose the steps that are not yet settled into a series-parallel tree."""
    done = set(settled)
    pending = [s.id for s in defn.steps if s.id not in done]
    if not pending:
        return Plan(None)
    edges = order_edges(defn, pending)
    bit = {sid: 1 << i for i, sid in enumerate(pending)}
    parents: dict[str, list[str]] = {sid: [] for sid in pending}
    for a, b in edges:
        parents[b].append(a)
    anc: dict[str, int] = {}
    for sid in _topological(pending, parents):
        mask = 0
        for p in parents[sid]:
            mask |= bit[p] | anc[p]
        anc[sid] = mask
    lost: list[tuple[str, str]] = []
    tree = _decompose(pending, anc, bit, lost)
    return Plan(tree, tuple(lost), tuple(edges))


def _topological(nodes: list[str], parents: Mapping[str, list[str]]) -> list[str]:
    remaining = {n: len(set(parents[n])) for n in nodes}
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for n in nodes:
        for p in set(parents[n]):
            children[p].append(n)
    ready = [n for n in nodes if remaining[n] == 0]
    out: list[str] = []
    while ready:
        n = ready.pop(0)
        out.append(n)
        for c in children[n]:
            remaining[c] -= 1
            if remaining[c] == 0:
                ready.append(c)
    return out


def _decompose(
    nodes: list[str],
    anc: dict[str, int],
    bit: dict[str, int],
    lost: list,
    desc: dict[str, int] | None = None,
) -> Node:
    if len(nodes) == 1:
        return Leaf(nodes[0])
    if desc is None:
        desc = _descendants(nodes, anc, bit)
    mask = 0
    for n in nodes:
        mask |= bit[n]
    comps = _components(nodes, anc, desc, bit, mask)
    if len(comps) > 1:
        return Parallel(tuple(_decompose(c, anc, bit, lost, desc) for c in comps))
    levels = _levels(nodes, anc, bit, mask)
    # Exact series cuts: every node before the cut is an ancestor of every node after it,
    # i.e. the prefix is inside the intersection of the ancestor sets of the suffix.
    suffix_common = [mask] * (len(levels) + 1)
    for k in range(len(levels) - 1, -1, -1):
        common = suffix_common[k + 1]
        for n in levels[k]:
            common &= anc[n]
        suffix_common[k] = common
    cuts: list[int] = []
    prefix = 0
    for k in range(len(levels) - 1):
        for n in levels[k]:
            prefix |= bit[n]
        if not prefix & ~suffix_common[k + 1]:
            cuts.append(k)
    if not cuts:
        # Not series-parallel: synchronise at the level boundary that orders the fewest
        # unrelated pairs, and recurse.
        best: tuple[int, int] | None = None
        prefix = 0
        for k in range(len(levels) - 1):
            for n in levels[k]:
                prefix |= bit[n]
            missing = sum((prefix & ~anc[n]).bit_count() for lvl in levels[k + 1 :] for n in lvl)
            if best is None or missing < best[0]:
                best = (missing, k)
        assert best is not None
        k = best[1]
        before = [n for lvl in levels[: k + 1] for n in lvl]
        after = [n for lvl in levels[k + 1 :] for n in lvl]
        bmask = sum(bit[n] for n in before)
        for n in after:
            for p in before:
                if bmask & bit[p] and not anc[n] & bit[p]:
                    lost.append((p, n))
        cuts = [k]
    segments: list[list[str]] = []
    start = 0
    for k in cuts + [len(levels) - 1]:
        segments.append([n for lvl in levels[start : k + 1] for n in lvl])
        start = k + 1
    parts: list[Node] = []
    for seg in segments:
        sub = _decompose(seg, anc, bit, lost, desc)
        parts.extend(sub.parts if isinstance(sub, Series) else (sub,))
    return Series(tuple(parts))


def _descendants(nodes: list[str], anc: dict[str, int], bit: dict[str, int]) -> dict[str, int]:
    """The transpose of ``anc``: every node's descendants as a bit mask."""
    index = {b.bit_length() - 1: n for n, b in bit.items()}
    desc = dict.fromkeys(nodes, 0)
    for n in nodes:
        b, a = bit[n], anc[n]
        while a:
            low = a & -a
            m = index[low.bit_length() - 1]
            if m in desc:
                desc[m] |= b
            a ^= low
    return desc


def _components(
    nodes: list[str], anc: dict[str, int], desc: dict[str, int], bit: dict[str, int], mask: int
) -> list[list[str]]:
    """Weakly connected components of the order restricted to ``nodes``, in node order.

    A flood fill over bit masks: each node is expanded once, so a 1000-wide fan-out costs
    about a thousand big-int operations instead of a million pair checks.
    """
    index = {bit[n].bit_length() - 1: n for n in nodes}
    remaining = mask
    found: list[int] = []
    while remaining:
        comp = frontier = remaining & -remaining
        while frontier:
            grown = 0
            f = frontier
            while f:
                low = f & -f
                m = index[low.bit_length() - 1]
                grown |= anc[m] | desc[m]
                f ^= low
            frontier = grown & mask & ~comp
            comp |= frontier
        found.append(comp)
        remaining &= ~comp
    which: dict[str, int] = {}
    for i, comp in enumerate(found):
        while comp:
            low = comp & -comp
            which[index[low.bit_length() - 1]] = i
            comp ^= low
    groups: dict[int, list[str]] = {}
    for n in nodes:
        groups.setdefault(which[n], []).append(n)
    return list(groups.values())


def _levels(
    nodes: list[str], anc: dict[str, int], bit: dict[str, int], mask: int
) -> list[list[str]]:
    """Nodes grouped by longest-path depth within ``nodes`` (each level is an antichain)."""
    index = {bit[n].bit_length() - 1: n for n in nodes}
    depth: dict[str, int] = {}
    # An ancestor has strictly fewer ancestors than its descendant: sorting by that count is a
    # topological order, so one pass suffices.
    for n in sorted(nodes, key=lambda x: (anc[x] & mask).bit_count()):
        d = 0
        a = anc[n] & mask
        while a:
            low = a & -a
            d = max(d, depth[index[low.bit_length() - 1]] + 1)
            a ^= low
        depth[n] = d
    levels: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for n in nodes:
        levels[depth[n]].append(n)
    return levels
