"""The compiler: a pure function from a definition (and the steps already settled) to canvas.

The DAG is decomposed series-parallel: a linear run becomes a ``chain``, a fan-out/fan-in a
``chord`` (``group`` header, join step as body), nested as deep as the DAG is. A DAG that is
not series-parallel is split at the level boundary that orders the fewest unrelated pairs;
those pairs are reported as lost parallelism (``canvasflow explain`` shows them).

This is the only module that builds Celery canvas. It never freezes or applies anything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import chain, chord, group
from celery.canvas import Signature

from orchestrator.engine import stepcore
from orchestrator.keys import item_of
from orchestrator.model import expressions
from orchestrator.model.definition import AMQP_PRIORITIES, PRIORITIES, Definition, Step

STEP_TASK = "canvasflow.step"
MERGE_TASK = "canvasflow.merge"
SETTLE_TASK = "canvasflow.settle"
COMPENSATE_TASK = "canvasflow.compensate"
COMPENSATED_TASK = "canvasflow.compensated"
ITEM_TASK = "canvasflow.item"  # one item of a mapped step (workers/mapstep.py)
COLLECT_TASK = "canvasflow.collect"  # a mapped step's end: its items' outcomes into its own
# Longer depends_on lists are read from the run's stored definition at run time: a fan-in's
# spec rides in every header message of its chord (Celery puts the chord body in each part).
MAX_INLINE_DEPS = 16


# ---------------------------------------------------------------------------------------------
# The plan: a series-parallel tree over step ids
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    step: str


@dataclass(frozen=True)
class Series:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Parallel:
    parts: tuple[Node, ...]


Node = Leaf | Series | Parallel


@dataclass(frozen=True)
class Plan:
    """What will run and in which shape; ``lost`` lists (before, after) orderings the
    definition does not ask for but the canvas imposes."""

    tree: Node | None
    lost: tuple[tuple[str, str], ...] = ()
    order_edges: tuple[tuple[str, str], ...] = field(default=())


def order_edges(defn: Definition, pending: list[str]) -> list[tuple[str, str]]:
    """Edges (before, after) that order the pending steps: depends_on, plus list order in
    sequential mode."""
    pend = set(pending)
    edges = [(d, s.id) for s in defn.steps if s.id in pend for d in s.depends_on if d in pend]
    if defn.mode == "sequential":
        edges += list(zip(pending, pending[1:], strict=False))
    return edges


def plan(defn: Definition, settled: Iterable[str] = ()) -> Plan:
    """Decompose the steps that are not yet settled into a series-parallel tree.

    Near-linear in the size of the definition for series-parallel shapes (a chain of 8,000
    steps, a fan-out of 8,000): ancestor and descendant sets are bit masks built once along
    the edges, and no step ever iterates over the members of another step's mask
    (benchmarks/bench_planning.py).
    """
    done = set(settled)
    pending = [s.id for s in defn.steps if s.id not in done]
    if not pending:
        return Plan(None)
    edges = order_edges(defn, pending)
    g = _Graph(pending, edges)
    lost: list[tuple[str, str]] = []
    tree = _decompose(pending, g, lost)
    return Plan(tree, tuple(lost), tuple(edges))


class _Graph:
    """The order among pending steps: direct edges, a topological position, and every step's
    ancestors and descendants as bit masks (bit i is ``pending[i]``)."""

    def __init__(self, nodes: list[str], edges: list[tuple[str, str]]) -> None:
        self.bit = {sid: 1 << i for i, sid in enumerate(nodes)}
        self.name = nodes  # bit position -> step id
        parents: dict[str, list[str]] = {sid: [] for sid in nodes}
        for a, b in edges:
            parents[b].append(a)
        self.parents = {n: list(dict.fromkeys(ps)) for n, ps in parents.items()}
        children: dict[str, list[str]] = {n: [] for n in nodes}
        for n in nodes:
            for p in self.parents[n]:
                children[p].append(n)
        order = _topological(nodes, self.parents, children)
        self.pos = {n: i for i, n in enumerate(order)}
        anc: dict[str, int] = {}
        for n in order:
            mask = 0
            for p in self.parents[n]:
                mask |= self.bit[p] | anc[p]
            anc[n] = mask
        desc: dict[str, int] = {}
        for n in reversed(order):
            mask = 0
            for c in children[n]:
                mask |= self.bit[c] | desc[c]
            desc[n] = mask
        self.anc, self.desc = anc, desc

    def members(self, mask: int) -> list[str]:
        """The steps whose bits are set, in bit order (cost: one step per member)."""
        out = []
        while mask:
            low = mask & -mask
            out.append(self.name[low.bit_length() - 1])
            mask ^= low
        return out


def _topological(
    nodes: list[str], parents: Mapping[str, list[str]], children: Mapping[str, list[str]]
) -> list[str]:
    remaining = {n: len(parents[n]) for n in nodes}
    ready = deque(n for n in nodes if remaining[n] == 0)
    out: list[str] = []
    while ready:
        n = ready.popleft()
        out.append(n)
        for c in children[n]:
            remaining[c] -= 1
            if remaining[c] == 0:
                ready.append(c)
    return out


class _Frame:
    """A Parallel or Series whose parts are still being decomposed."""

    __slots__ = ("kind", "parts", "waiting", "parent", "slot")

    def __init__(self, kind: type, size: int, parent: _Frame | None, slot: int) -> None:
        self.kind, self.waiting = kind, size
        self.parts: list[Node | None] = [None] * size  # filled in as the parts are finished
        self.parent, self.slot = parent, slot


def _decompose(nodes: list[str], g: _Graph, lost: list) -> Node:
    """The series-parallel tree of ``nodes``, built depth first with an explicit stack: a DAG
    that is not series-parallel can nest one level per level of the DAG, past Python's
    recursion limit. Parts are split in the order a recursive descent would split them, so
    ``lost`` comes out in the same order."""
    root = _Frame(Series, 1, None, 0)
    todo: list[tuple[list[str], _Frame, int]] = [(nodes, root, 0)]
    while todo:
        part, parent, slot = todo.pop()
        kind, subsets = _split(part, g, lost)
        if kind is Leaf:
            done: Node = Leaf(part[0])
        else:
            frame = _Frame(kind, len(subsets), parent, slot)
            todo.extend((sub, frame, i) for i, sub in reversed(list(enumerate(subsets))))
            continue
        # Fill the finished part in; finish every frame it completes, upwards.
        while True:
            parent.parts[slot] = done
            parent.waiting -= 1
            if parent.waiting or parent.parent is None:
                break
            done = _finish(parent)
            parent, slot = parent.parent, parent.slot
    tree = root.parts[0]
    assert tree is not None
    return tree


def _finish(frame: _Frame) -> Node:
    done = [p for p in frame.parts if p is not None]  # all of them, once the frame is finished
    if frame.kind is Parallel:
        return Parallel(tuple(done))
    parts: list[Node] = []
    for sub in done:
        parts.extend(sub.parts if isinstance(sub, Series) else (sub,))
    return Series(tuple(parts))


def _split(nodes: list[str], g: _Graph, lost: list) -> tuple[type, list[list[str]]]:
    """One step of the decomposition: a leaf, the components of a Parallel, or the segments of
    a Series (after recording the orderings a forced cut adds to ``lost``).

    Every set split here is convex (whatever lies between two of its steps belongs to it): the
    whole pending set, its weakly connected components and ranges of its levels all are. So
    the order among its steps is generated by the direct edges among them, which is what lets
    _levels look at parents only."""
    if len(nodes) == 1:
        return Leaf, []
    bit, anc, desc = g.bit, g.anc, g.desc
    inside = set(nodes)
    comps = _components(nodes, g, inside)
    if len(comps) > 1:
        return Parallel, comps
    mask = 0
    for n in nodes:
        mask |= bit[n]
    levels = _levels(nodes, g, inside)
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
        # unrelated pairs, and recurse. The pairs a cut after level k leaves unordered are
        # |before| * |after| minus the ordered pairs that straddle it; that count changes by
        # the descendants of level k's steps (now before the cut) less their ancestors (no
        # longer after it), so every boundary is scored in one pass.
        best: tuple[int, int] | None = None
        size_before, size_after, straddling = 0, len(nodes), 0
        for k in range(len(levels) - 1):
            for n in levels[k]:
                straddling += (desc[n] & mask).bit_count() - (anc[n] & mask).bit_count()
            size_before += len(levels[k])
            size_after -= len(levels[k])
            missing = size_before * size_after - straddling
            if best is None or missing < best[0]:
                best = (missing, k)
        assert best is not None
        k = best[1]
        before = [n for lvl in levels[: k + 1] for n in lvl]
        after = [n for lvl in levels[k + 1 :] for n in lvl]
        bmask = 0
        for n in before:
            bmask |= bit[n]
        rank = {n: i for i, n in enumerate(before)}
        for n in after:
            # Only the pairs really lost are visited, in the order of ``before``.
            for p in sorted(g.members(bmask & ~anc[n]), key=rank.__getitem__):
                lost.append((p, n))
        cuts = [k]
    segments: list[list[str]] = []
    start = 0
    for k in cuts + [len(levels) - 1]:
        segments.append([n for lvl in levels[start : k + 1] for n in lvl])
        start = k + 1
    return Series, segments


def _components(nodes: list[str], g: _Graph, inside: set[str]) -> list[list[str]]:
    """Weakly connected components of the order restricted to ``nodes``, in node order.

    ``nodes`` is convex, so two of its steps are related exactly when direct edges inside it
    join them: a union-find over those edges, linear in their number (a flood fill over bit
    masks cost a mask-wide operation per component, quadratic for a wide fan-out).
    """
    root = {n: n for n in nodes}

    def find(n: str) -> str:
        while root[n] != n:
            root[n] = root[root[n]]
            n = root[n]
        return n

    for n in nodes:
        for p in g.parents[n]:
            if p in inside:
                a, b = find(n), find(p)
                if a != b:
                    root[a] = b
    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(find(n), []).append(n)
    return list(groups.values())


def _levels(nodes: list[str], g: _Graph, inside: set[str]) -> list[list[str]]:
    """Nodes grouped by longest-path depth within ``nodes`` (each level is an antichain).

    ``nodes`` is convex (see _split), so a longest chain among them steps along direct edges
    only: one pass over the parents in topological order, not over ancestor sets.
    """
    parents = g.parents
    depth: dict[str, int] = {}
    for n in sorted(nodes, key=g.pos.__getitem__):
        d = 0
        for p in parents[n]:
            if p in inside:
                d = max(d, depth[p] + 1)
        depth[n] = d
    levels: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for n in nodes:
        levels[depth[n]].append(n)
    return levels


# ---------------------------------------------------------------------------------------------
# Step specs: what a step task needs, carried in its message (no database read per step)
# ---------------------------------------------------------------------------------------------


def _all_paths(defn: Definition) -> list[tuple]:
    paths: list[tuple] = []
    for s in defn.steps:
        if s.when:
            paths.extend(expressions.parse(s.when).paths())
        for _, tpl in expressions.iter_templates(body_params(s)):
            for e in tpl.expressions:
                paths.extend(e.paths())
        if s.map:
            for e in expressions.Template.parse(s.map.over).expressions:
                paths.extend(e.paths())
    return paths


def body_params(step: Step) -> Mapping[str, Any]:
    """What a step's body renders: a plugin step's params, a sub-workflow step's child inputs."""
    return (step.inputs or {}) if step.workflow else step.params


def uses_inputs(defn: Definition) -> bool:
    """Whether any step reads `inputs`; only then do the inputs travel in every message."""
    return any(p[0] == "inputs" for p in _all_paths(defn))


def referenced_outputs(defn: Definition) -> set[str]:
    """Steps whose outputs some `when` or template reads: only those travel with the canvas."""
    refs: set[str] = set()
    for s in defn.steps:
        exprs: list[expressions.Expression] = []
        if s.when:
            exprs.append(expressions.parse(s.when))
        for _, tpl in expressions.iter_templates(body_params(s)):
            exprs.extend(tpl.expressions)
        if s.map:
            exprs.extend(expressions.Template.parse(s.map.over).expressions)
        for e in exprs:
            for chain_ in e.paths():
                if (
                    len(chain_) >= 2
                    and chain_[0] == "steps"
                    and (len(chain_) < 3 or chain_[2] == "output")
                ):
                    refs.add(str(chain_[1]))
    return refs


def forwarded_outcomes(defn: Definition) -> set[str]:
    """Steps whose outcome a later step looks at (a dependency, or named in a `when` or a
    template): only those travel with the canvas, so a long chain's messages do not grow."""
    fwd = {d for s in defn.steps for d in s.depends_on}
    for p in _all_paths(defn):
        if len(p) >= 2 and p[0] == "steps":
            fwd.add(str(p[1]))
    return fwd


def step_spec(step: Step, keep_output: bool, forward: bool = True) -> dict[str, Any]:
    """The compact JSON a step task receives; defaults are left out to keep messages small."""
    spec: dict[str, Any] = {"id": step.id, "plugin": step.plugin, "method": step.method}
    if not forward:
        spec["drop"] = 1  # no later step looks at this outcome: do not pass it on
    if step.workflow:
        # A sub-workflow step (workers/subrun.py): its body starts a child run; the child's
        # inputs are rendered like params. Never on the fast path (stepcore.may_run_first).
        spec.update(plugin="", method="", wf=step.workflow)
        if step.version:
            spec["ver"] = step.version
        if step.inputs:
            spec["params"] = dict(step.inputs)
    elif step.params:
        spec["params"] = dict(step.params)
    if step.depends_on:
        spec["deps"] = list(step.depends_on) if len(step.depends_on) <= MAX_INLINE_DEPS else "@"
    if step.join != "all":
        spec["join"] = step.join
    if step.when:
        spec["when"] = step.when
    if step.retries:
        spec["retries"] = step.retries
        spec["delay"] = [step.retry_delay, step.retry_backoff, step.retry_delay_max]
    if step.timeout:
        spec["timeout"] = step.timeout
    if not step.critical:
        spec["critical"] = False
    if keep_output:
        spec["keep"] = True
    if step.compensate:
        spec["comp"] = 1  # never on the fast path (workers/step.py): whether it ran must be known
    if step.map:
        # [over, as, max_parallel or 0]: the step expands into items at run time (engine/mapping.py)
        spec["map"] = [step.map.over, step.map.as_, step.map.max_parallel or 0]
    return spec


# The step task's wire format. A chain's first message carries every remaining link, and
# every link is re-encoded at each hop, so a step's signature is kept as small as Celery lets
# it be: the spec is a list [id, plugin, method, flags, {the rest}] (the dict only when there is
# a rest), and the run header is not in the step's arguments at all: it travels once, as "@",
# in the outcomes that flow from step to step (the first steps get it in their seed).
FLAGS = (("drop", 1), ("keep", 2), ("settle", 4), ("comp", 8))
NONCRITICAL = 16
HEADER = stepcore.HEADER  # the run header's key in the outcomes


def wire_spec(spec: Mapping[str, Any]) -> list[Any]:
    """A step spec (step_spec's dict) as the list a step task receives."""
    flags = sum(bit for name, bit in FLAGS if spec.get(name))
    if spec.get("critical") is False:
        flags |= NONCRITICAL
    rest = {
        k: v
        for k, v in spec.items()
        if k not in ("id", "plugin", "method", "critical") and k not in dict(FLAGS)
    }
    out: list[Any] = [spec["id"], spec["plugin"], spec["method"], flags]
    if rest:
        out.append(rest)
    return out


def read_spec(wire: Any) -> dict[str, Any]:
    """The spec dict of a step task's argument (a wire list, or the dict of older messages)."""
    if isinstance(wire, Mapping):
        return dict(wire)
    sid, plugin, method, flags, *rest = wire
    spec: dict[str, Any] = {"id": sid, "plugin": plugin, "method": method}
    if rest:
        spec.update(rest[0])
    for name, bit in FLAGS:
        if flags & bit:
            spec[name] = 1
    if flags & NONCRITICAL:
        spec["critical"] = False
    return spec


def wire_header(hdr: Mapping[str, Any]) -> list[Any]:
    """The run header as it rides in the outcomes: [run, epoch, workflow, version, inputs]."""
    out: list[Any] = [hdr["run"], hdr["epoch"], hdr.get("wf", "")]
    if "inputs" in hdr:
        out += [hdr.get("version", ""), hdr["inputs"]]
    elif hdr.get("version"):
        out.append(hdr["version"])
    return out


def read_header(wire: Any) -> dict[str, Any]:
    """The run header dict from its wire list (or the dict older messages carried)."""
    if isinstance(wire, Mapping):
        return dict(wire)
    hdr: dict[str, Any] = {"run": wire[0], "epoch": wire[1]}
    if len(wire) > 2 and wire[2]:
        hdr["wf"] = wire[2]
    if len(wire) > 3 and wire[3]:
        hdr["version"] = wire[3]
    if len(wire) > 4:
        hdr["inputs"] = wire[4]
    return hdr


@dataclass(frozen=True)
class RunContext:
    """Run-level facts every task of one dispatch carries."""

    run_id: str
    epoch: int
    priority: str = "normal"
    hard_timeout_grace: int = 10
    workflow: str = ""
    version: str = ""
    inputs: Mapping[str, Any] | None = None
    queue: str = "default"  # where canvasflow's own tasks (settle, merge, compensated) go
    amqp: bool = False  # the broker is AMQP (RabbitMQ): higher message priorities run first

    def header(self) -> dict[str, Any]:
        hdr: dict[str, Any] = {"run": self.run_id, "epoch": self.epoch}
        if self.workflow:
            hdr["wf"] = self.workflow
        if self.version:
            hdr["version"] = self.version
        if self.inputs is not None:
            hdr["inputs"] = dict(self.inputs)
        return hdr


# ---------------------------------------------------------------------------------------------
# Canvas
# ---------------------------------------------------------------------------------------------


def routing(ctx: RunContext, queue: str | None) -> dict[str, Any]:
    """A task's queue and priority options, left out where they are the app's defaults.

    ``ctx.queue`` is the app's ``task_default_queue`` and "normal" its ``task_default_priority``
    (orchestrator.engine.celery_app): a chain's first message carries every remaining link, so each
    option left out is left out of every message of a 100-step chain a hundred times over.
    """
    options: dict[str, Any] = {}
    if queue and queue != ctx.queue:
        options["queue"] = queue
    if ctx.priority != "normal":
        options["priority"] = (AMQP_PRIORITIES if ctx.amqp else PRIORITIES)[ctx.priority]
    return options


@dataclass(frozen=True)
class Blueprint:
    """What compile_run derives from a definition alone (a fresh run's plan and step specs):
    computed once per definition by a client that submits it again and again."""

    plan: Plan
    keep: frozenset[str]
    forward: frozenset[str]
    final: str | None
    specs: Mapping[str, list[Any]]  # wire_spec lists
    uses_inputs: bool


def blueprint(defn: Definition, settled: Iterable[str] = ()) -> Blueprint:
    the_plan = plan(defn, settled)
    keep = frozenset(referenced_outputs(defn))
    forward = frozenset(forwarded_outcomes(defn))
    final = final_leaf(the_plan.tree)
    if final is not None and defn.step(final).map:
        final = None  # a mapped step ends in its collector: a settle task follows it
    specs = {}
    for step in defn.steps:
        spec = step_spec(step, step.id in keep, step.id in forward)
        if step.id == final:
            spec["settle"] = 1  # the last task of the canvas settles the run: one task less
        specs[step.id] = wire_spec(spec)
    return Blueprint(the_plan, keep, forward, final, specs, uses_inputs(defn))


def compile_run(
    defn: Definition,
    ctx: RunContext,
    *,
    settled: Mapping[str, tuple[str, Any]] | None = None,
    app: Any = None,
    prepared: Blueprint | None = None,
) -> Signature:
    """The canvas that runs every step not in ``settled`` and then settles the run.

    ``settled`` maps step id -> (status, output) for steps that already ran (resume, retry);
    their outcomes are handed to the first tasks, so templates downstream still see them.
    ``prepared`` is ``blueprint(defn)``, for a fresh run (nothing settled) of a definition
    compiled before.
    """
    settled = dict(settled or {})
    bp = prepared if prepared is not None and not settled else blueprint(defn, settled)
    the_plan, keep, final = bp.plan, bp.keep, bp.final
    seed: dict[str, Any] = {
        sid: [st, out if sid in keep else None] for sid, (st, out) in settled.items()
    }
    steps = {s.id: s for s in defn.steps}
    step_seed = {HEADER: wire_header(ctx.header()), **seed}

    def sig(name: str, args: tuple, queue: str = ctx.queue, **opts: Any) -> Signature:
        return Signature(name, args=args, options={**routing(ctx, queue), **opts}, app=app)

    def leaf(sid: str, first: bool) -> Signature:
        step = steps[sid]
        args: tuple = (list(bp.specs[sid]),)
        if first:
            args = (step_seed,) + args
        opts: dict[str, Any] = {}
        if step.timeout:
            opts["soft_time_limit"] = step.timeout
            opts["time_limit"] = step.timeout + ctx.hard_timeout_grace
        return sig(STEP_TASK, args, step.queue, **opts)

    def build(node: Node, first: bool) -> Signature:
        if isinstance(node, Leaf):
            return leaf(node.step, first)
        if isinstance(node, Parallel):
            return group([build(p, first) for p in node.parts], app=app)
        return _series([build(p, first and i == 0) for i, p in enumerate(node.parts)])

    def _series(items: list[Signature]) -> Signature:
        out: list[Signature] = []
        i = 0
        while i < len(items):
            item = items[i]
            if isinstance(item, group) and i + 1 < len(items):
                body = items[i + 1]
                if isinstance(body, group):
                    # A chord whose body is a group is a known trouble spot in Celery: join
                    # explicitly with a merge task and let the next group follow it.
                    out.append(chord(item, sig(MERGE_TASK, (ctx.header(),)), app=app))
                    i += 1
                    continue
                out.append(chord(item, body, app=app))
                i += 2
                continue
            out.append(item)
            i += 1
        return out[0] if len(out) == 1 else chain(*out, app=app)

    # The settle reads the run id and epoch only: without the inputs, which a mapped step's
    # items would otherwise carry in every message (the rest of the chain rides in each).
    settle = sig(SETTLE_TASK, ({"run": ctx.run_id, "epoch": ctx.epoch},))
    if the_plan.tree is None:
        return Signature(
            SETTLE_TASK, args=(seed, ctx.header()), options=routing(ctx, ctx.queue), app=app
        )
    body = build(the_plan.tree, True)
    if final is not None:
        return body
    return (
        _series([body, settle]) if not isinstance(body, chain) else _series([*body.tasks, settle])
    )


def compile_items(
    wire: list[Any],
    hdr: list[Any],
    todo: list[int],
    lanes: int,
    upstream: Any,
    *,
    options: Mapping[str, Any],
    app: Any = None,
) -> Signature:
    """chord(items of ``todo``, or ``lanes`` lanes (max_parallel), collector): what a mapped step
    replaces itself with. An item message carries its index, never the element or the list."""
    item_opts = dict(options)
    if lanes:
        header = [
            Signature(ITEM_TASK, args=(wire, hdr, -1, lane, upstream), options=item_opts, app=app)
            for lane in range(lanes)
        ]
    else:
        header = [
            Signature(ITEM_TASK, args=(wire, hdr, i, -1, upstream), options=item_opts, app=app)
            for i in todo
        ]
    body_opts = {k: v for k, v in options.items() if k in ("queue", "priority")}
    body = Signature(COLLECT_TASK, args=(wire, hdr), options=body_opts, app=app)
    return chord(group(header, app=app), body, app=app)


def compensation_signature(
    prev: Any, spec: Mapping[str, Any], hdr: Any, options: Mapping[str, Any], app: Any = None
) -> Signature:
    """The next compensation of an item run (the link replaces itself with it)."""
    return Signature(COMPENSATE_TASK, args=(prev, dict(spec), hdr), options=dict(options), app=app)


def item_signature(
    wire: list[Any],
    hdr: list[Any],
    index: int,
    lane: int,
    upstream: Any,
    options: Mapping[str, Any],
    app: Any = None,
) -> Signature:
    """The next item of a lane (the lane replaces itself with it)."""
    return Signature(
        ITEM_TASK, args=(wire, hdr, index, lane, upstream), options=dict(options), app=app
    )


def compile_settle(ctx: RunContext, *, app: Any = None) -> Signature:
    """A lone settle task for a new dispatch (cancel): it waits for running steps, then settles."""
    return Signature(
        SETTLE_TASK, args=(None, ctx.header()), options=routing(ctx, ctx.queue), app=app
    )


def final_leaf(node: Node | None) -> str | None:
    """The step that ends the canvas when one step does (else None: a settle task joins)."""
    while isinstance(node, Series):
        node = node.parts[-1]
    return node.step if isinstance(node, Leaf) else None


def compile_compensation(
    defn: Definition,
    ctx: RunContext,
    order: list[str],
    target: str,
    *,
    app: Any = None,
    sequences: Mapping[int, tuple[str, int]] | None = None,
) -> Signature:
    """A chain that runs the compensations of ``order`` (newest completion first), one at a
    time, then moves the run to ``target`` (FAILED or CANCELLED). ``sequences``: {start: (name,
    length)} of the item runs stored in the hot state; each is one self-replacing link."""
    links: list[Signature] = []
    sequences = sequences or {}
    skip_to = 0
    for i, sid in enumerate(order):
        if i < skip_to:
            continue
        base = item_of(sid)  # an item of a mapped step: its step's compensation, per item
        step = defn.step(base[0] if base else sid)
        comp = step.compensate
        assert comp is not None
        spec: dict[str, Any] = {"id": sid, "plugin": comp.plugin, "method": comp.method}
        if base and step.map:
            spec["as"] = step.map.as_
        if comp.params:
            spec["params"] = dict(comp.params)
        if comp.retries:
            spec["retries"] = comp.retries
        opts: dict[str, Any] = routing(ctx, comp.queue or step.queue)
        if comp.timeout:
            opts["soft_time_limit"] = comp.timeout
            opts["time_limit"] = comp.timeout + ctx.hard_timeout_grace
        if i in sequences:
            name, length = sequences[i]
            spec["seq"] = [name, 0, length]
            skip_to = i + length
        args: tuple = (spec, ctx.header())
        if not links:
            args = (None,) + args
        links.append(Signature(COMPENSATE_TASK, args=args, options=opts, app=app))
    final_args: tuple = (ctx.header(), target)
    if not links:
        final_args = (None,) + final_args
    links.append(
        Signature(COMPENSATED_TASK, args=final_args, options=routing(ctx, ctx.queue), app=app)
    )
    return links[0] if len(links) == 1 else chain(*links, app=app)


def compile_continuation(
    name: str,
    args: tuple,
    *,
    task_id: str,
    chain: list[Any] | None = None,
    chord: Any = None,
    group: str | None = None,
    group_index: int | None = None,
    root_id: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    links: list[Any] | None = None,
    error_links: list[Any] | None = None,
    app: Any = None,
) -> Signature:
    """Task ``name`` in the place of a running task in its canvas, from that task's request: its
    chain (what follows it), its chord and group position, its links. What ``Task.replace``
    builds, but kept to be sent later: a sub-workflow step's join (workers/subrun.py)."""
    sig = Signature(name, args=args, app=app)
    if queue:
        sig.set(queue=queue)
    if priority is not None:
        sig.set(priority=priority)
    for callback in links or []:
        sig.link(callback)
    for errback in error_links or []:
        sig.link_error(errback)
    sig.freeze(task_id)
    sig.set(chord=chord, group_id=group, group_index=group_index, root_id=root_id)
    out: Signature = sig
    for t in reversed(chain or []):
        out |= Signature.from_dict(t, app=app)
    return out
