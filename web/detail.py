"""One run in depth: steps with attempts, logs and compensations, parallel branches, the Gantt
timeline, the DAG, and the exported trace. Live runs are read from the Redis hot state (one
round trip), finished runs that left it from the audit store; logs and progress always come from
the audit store, where the recorder puts them."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from marshmallow import ValidationError

from orchestrator.audit import queries
from orchestrator.audit.store import AuditStore
from orchestrator.engine import compiler
from orchestrator.engine.client import Client
from orchestrator.engine.export import export_run
from orchestrator.engine.runevents import run_events
from orchestrator.engine.states import FINAL_RUN_STATUSES
from orchestrator.errors import CanvasflowError, StoreError, UnknownRun
from orchestrator.model.definition import Definition, from_stored
from web.mapped import group_item_bars, map_counts, stored_item_bars
from web.runs import (
    REDIS_DOWN,
    REDIS_UNREACHABLE,
    RunViews,
    hot_base,
    run_sla_status,
    summarize,
)
from web.serving import cooperate

SETTLED = ("COMPLETED", "FAILED", "SKIPPED", "CANCELLED", "COMPENSATED")
STEPS_PER_STRETCH = 50  # steps built between two cooperate() calls (~0.5 ms on this machine)


def _json(v: str | None) -> Any:
    if not v:
        return None
    try:
        return json.loads(v)
    except ValueError:
        return v


def _definition(body: Mapping[str, Any] | None) -> Definition | None:
    if not body:
        return None
    try:
        return from_stored(body)
    except (CanvasflowError, ValidationError):  # stored by a version with fields this one lacks
        return None


def branches(defn: Definition | None, statuses: Mapping[str, str]) -> list[dict[str, Any]]:
    """The parallel groups the compiler makes of the definition: which steps run side by side."""
    return _with_statuses(_groups(defn), statuses)


def _with_statuses(
    groups: tuple[tuple[int, tuple[tuple[str, ...], ...]], ...], statuses: Mapping[str, str]
) -> list[dict[str, Any]]:
    return [
        {
            "group": n,
            "branches": [
                {
                    "branch": f"g{n}.b{i}",  # a stable key; `name` is what a person reads
                    "name": branch_name(ids),
                    "steps": list(ids),
                    "status": branch_status([statuses.get(s, "PENDING") for s in ids]),
                }
                for i, ids in enumerate(parts, 1)
            ],
        }
        for n, parts in groups
    ]


@functools.lru_cache(maxsize=256)
def _branches_of(body_text: str) -> tuple[tuple[int, tuple[tuple[str, ...], ...]], ...]:
    """The branch structure of a stored definition (JSON text). A run's definition never changes,
    and loading a 200-step definition plus the compiler's plan cost more than the rest of a run's
    detail together, so the structure is computed once per definition."""
    try:
        body = json.loads(body_text)
    except ValueError:
        return ()
    return _groups(_definition(body if isinstance(body, dict) else None))


def _groups(defn: Definition | None) -> tuple[tuple[int, tuple[tuple[str, ...], ...]], ...]:
    if defn is None:
        return ()
    try:
        tree = compiler.plan(defn).tree
    except CanvasflowError:
        return ()
    groups: list[tuple[int, tuple[tuple[str, ...], ...]]] = []

    def leaves(node: Any) -> list[str]:
        if isinstance(node, compiler.Leaf):
            return [node.step]
        return [s for p in node.parts for s in leaves(p)]

    def walk(node: Any) -> None:
        if isinstance(node, compiler.Leaf) or node is None:
            return
        if isinstance(node, compiler.Parallel):
            groups.append((len(groups) + 1, tuple(tuple(leaves(part)) for part in node.parts)))
        for part in node.parts:
            walk(part)

    walk(tree)
    return tuple(groups)


BRANCH_NAME_STEPS = 3  # a longer branch is named by its first and last step and its length


def branch_name(ids: tuple[str, ...] | list[str]) -> str:
    """A branch as a person reads it: its steps in order (``resize → upload``), or its first and
    last step and how many there are (``fetch → … → store · 5 steps``)."""
    if len(ids) <= BRANCH_NAME_STEPS:
        return " → ".join(ids)
    return f"{ids[0]} → … → {ids[-1]} · {len(ids)} steps"


def branch_status(statuses: list[str]) -> str:
    """A parallel branch's status from its steps', in this order (docs/user-guide.md, "Parallel
    branches"): RUNNING if one runs, retries or compensates; FAILED if one failed; PENDING while
    one has not settled; then, every step settled: their status when they all have the same
    one (all SKIPPED: SKIPPED); COMPENSATED if one was compensated; CANCELLED if one was
    cancelled; else COMPLETED (some completed, the rest skipped)."""
    if any(s in ("RUNNING", "RETRYING", "COMPENSATING") for s in statuses):
        return "RUNNING"
    if "FAILED" in statuses:
        return "FAILED"
    if not statuses or not all(s in SETTLED for s in statuses):
        return "PENDING"
    if len(set(statuses)) == 1:
        return statuses[0]
    for status in ("COMPENSATED", "CANCELLED"):
        if status in statuses:
            return status
    return "COMPLETED"


def operator_retries(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's retries of a run that were carried out, oldest first (from the audit log,
    which lists actions newest first)."""
    return [
        a
        for a in reversed(actions)
        if a.get("action") == "retry" and a.get("outcome") == "ok" and a.get("detail")
    ]


def step_retries(
    sid: str, attempts: int, max_retries: int, retries: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """An operator's retries of a step apart from its own: ``operator_retries`` counts the
    operator's retries that ran it again, ``attempt`` is its attempt within the latest dispatch
    that ran it, out of ``attempts_allowed`` (1 + its configured ``retries``)."""
    mine = [r for r in retries if sid in (r["detail"].get("reset") or ())]
    base = int((mine[-1]["detail"].get("attempts_before") or {}).get(sid) or 0) if mine else 0
    return {
        "operator_retries": len(mine),
        "attempt": max(0, attempts - base),
        "attempts_allowed": 1 + max_retries,
    }


def retry_sla(
    summary: Mapping[str, Any], retries: list[dict[str, Any]], now: float
) -> dict[str, Any]:
    """A retried run's SLA figures. An operator's retry does not restart the run's SLA clock
    (``elapsed`` runs from the run's creation, so a breach stays a breach); next to it are the
    first dispatch's own figure (``first``: creation to the end it reached before the first
    retry) and the latest retry's (``retry``: from that retry to now or the run's end)."""
    target = summary["sla"]["target"]
    if not retries:
        return {"first": None, "retry": None}
    created = float(summary["created_at"])
    first_end = retries[0]["detail"].get("ended_at") or retries[0]["ts"]
    first_status = retries[0]["detail"].get("status_before") or "FAILED"
    first_elapsed = max(0.0, float(first_end) - created)
    last = retries[-1]
    end = summary["finished_at"] or now
    retry_elapsed = max(0.0, float(end) - float(last["ts"]))
    return {
        "first": {
            "elapsed": round(first_elapsed, 3),
            "status": run_sla_status(first_status, first_elapsed, target),
            "ended_at": first_end,
        },
        "retry": {
            "elapsed": round(retry_elapsed, 3),
            "status": run_sla_status(summary["status"], retry_elapsed, target),
            "started_at": last["ts"],
            "count": len(retries),
        },
    }


class RunDetails:
    def __init__(self, client: Client, store: AuditStore | None, views: RunViews) -> None:
        self.client = client
        self.store = store
        self.views = views

    # -- sources ------------------------------------------------------------------------------

    def _hot(self, run_id: str) -> dict[str, Any] | None:
        """A live run from Redis. Outputs and attempt inputs stay JSON texts (``output_json``,
        ``input_json``): only the steps of the page asked for are decoded (see ``_decoded``)."""
        data = self.client.state.read(run_id)
        if data is None:
            return None
        run, steps, attempts = data
        base = hot_base(run)
        history: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            history.setdefault(a.get("step", ""), []).append(
                {
                    "attempt": a.get("attempt"),
                    "status": a.get("status"),
                    "started_at": a.get("started_at"),
                    "finished_at": a.get("finished_at"),
                    "duration": a.get("duration"),
                    "worker": a.get("worker"),
                    "error": a.get("error"),
                    "input_json": a.get("input"),
                }
            )
        out_steps = {}
        for sid, step in steps.items():
            hist = history.get(sid, [])
            if step.status == "RUNNING" and step.attempt_started_at:
                hist = hist + [
                    {
                        "attempt": step.attempts,
                        "status": "RUNNING",
                        "started_at": step.attempt_started_at,
                        "finished_at": None,
                        "duration": None,
                        "worker": step.worker,
                        "error": None,
                        "input": None,
                    }
                ]
            out_steps[sid] = {
                "status": step.status,
                "attempts": step.attempts,
                "started_at": step.started_at,
                "finished_at": step.finished_at,
                "output_json": step.output_json,
                "error": step.error,
                "traceback": step.traceback,
                "worker": step.worker,
                "compensation_error": step.compensation_error,
                "history": hist,
                "progress": None,
                "reason": step.error if step.status == "SKIPPED" else None,
            }
        meta = {
            "inputs": _json(run.inputs_json) or {},
            "resolved_by": run.resolved_by,
            "epoch": run.epoch or 1,
            "submit_warnings": run.warnings,
        }
        return {
            "base": base,
            "definition": run.definition,
            "definition_text": run.definition_json,
            "steps": out_steps,
            "meta": meta,
            "source": "hot",
        }

    def _recorded(self, run_id: str) -> dict[str, Any]:
        if self.store is None:
            raise UnknownRun(run_id)
        d = queries.run_detail(self.store, run_id, log_limit=0)
        out_steps = {}
        for s in d.steps:
            out_steps[s.id] = {
                "status": s.status,
                "attempts": s.attempts,
                "started_at": s.started_at,
                "finished_at": s.finished_at,
                "output": s.output,
                "error": s.error,
                "traceback": None,
                "worker": s.worker,
                "compensation_error": s.compensation_error,
                "reason": s.reason,
                "progress": None
                if s.progress is None
                else {"fraction": s.progress, "message": s.progress_message},
                "map": s.items.as_dict() if s.items else None,  # counted with the steps
                "history": [
                    {
                        "attempt": a.number,
                        "status": a.status,
                        "started_at": a.started_at,
                        "finished_at": a.finished_at,
                        "duration": a.duration,
                        "worker": a.worker,
                        "error": a.error,
                        "input": a.input,
                    }
                    for a in s.history
                ],
            }
            if s.history and s.history[-1].traceback:
                out_steps[s.id]["traceback"] = s.history[-1].traceback
        r = d.run
        settled = sum(1 for s in d.steps if s.status in SETTLED or s.status == "COMPENSATING")
        total = len((d.definition or {}).get("steps") or []) or len(d.steps)
        base = {
            "id": r.id,
            "status": r.status,
            "workflow": r.workflow,
            "version": r.version,
            "name": r.name,
            "created_at": r.created_at,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "total": total,
            "settled": settled,
            "priority": r.priority,
            "tags": list(r.tags),
            "triggered_by": r.triggered_by,
            "trigger_type": r.trigger_type,
            "trigger_name": r.trigger_name,
            "trigger_ref": r.trigger_ref,
            "sla_seconds": r.sla_seconds,
            "error": r.error,
            "failed_step": r.failed_step,
            "seq": r.last_seq,
            "cloned_from": None,
            # not final in SQL, unknown to Redis (only asked after _hot found nothing)
            "state_lost": r.status not in ("COMPLETED", "FAILED", "CANCELLED"),
        }
        return {
            "base": base,
            "definition": d.definition,
            "steps": out_steps,
            "meta": {"inputs": d.inputs or {}, "resolved_by": None, "epoch": None},
            "source": "audit",
        }

    def _load(self, run_id: str) -> dict[str, Any]:
        try:
            hot = self._hot(run_id)
        except REDIS_DOWN:
            if self.store is None:
                raise  # nothing to fall back on: the API answers 503
            return {**self._recorded(run_id), "warnings": [REDIS_UNREACHABLE]}
        return hot or self._recorded(run_id)

    def _sql_progress(self, run_id: str) -> dict[str, dict[str, Any]]:
        if self.store is None:
            return {}
        return {
            sid: {"fraction": fraction, "message": message}
            for sid, (fraction, message) in queries.step_progress(self.store, run_id).items()
        }

    def _logs(self, run_id: str, limit: int) -> tuple[list[dict[str, Any]], int]:
        if self.store is None or limit <= 0:
            return [], 0
        lines, total = queries.recent_logs(self.store, run_id, limit)
        return [log_dict(x) for x in lines], total

    # -- views --------------------------------------------------------------------------------

    def detail(
        self, run_id: str, *, steps_offset: int = 0, steps_limit: int = 100, log_limit: int = 200
    ) -> dict[str, Any]:
        """The run page's data. Under gevent it yields to the loop between its parts (cooperate):
        the relay and the other sockets wait for a few ms at most, not for the whole detail."""
        src = self._load(run_id)
        cooperate()
        now = time.time()
        warnings: list[str] = list(src.get("warnings", ()))
        if src["base"]["status"] not in FINAL_RUN_STATUSES:
            # What its submit warned about (no live worker on a queue), while it can still matter.
            warnings[:0] = [f"at submit, {w}" for w in src["meta"].get("submit_warnings", ())]
        logs: list[dict[str, Any]] = []
        logs_total = 0
        try:
            if src["source"] == "hot":
                progress = self._sql_progress(run_id)
                for sid, p in progress.items():
                    if sid in src["steps"]:
                        src["steps"][sid]["progress"] = p
            logs, logs_total = self._logs(run_id, log_limit)
        except StoreError as exc:
            warnings.append(f"audit store unavailable: logs and progress are missing ({exc})")
        summary = summarize(src["base"], now)
        body = src["definition"] or {}
        text = src.get("definition_text") or json.dumps(body, sort_keys=True)
        specs = {s["id"]: s for s in body.get("steps", [])}
        # real steps only: a mapped step's items are counted (``map``) and read paged (web/items.py)
        order = list(specs) or [sid for sid in src["steps"] if not sid.endswith("]")]
        maps = map_counts(
            self.store if src["source"] == "hot" else None, run_id, specs, src["steps"]
        )
        statuses = {sid: src["steps"].get(sid, {}).get("status", "PENDING") for sid in order}
        counts: dict[str, int] = {}
        for st in statuses.values():
            counts[st] = counts.get(st, 0) + 1
        logs_by_step: dict[str, list[dict[str, Any]]] = {}
        for line in logs:
            logs_by_step.setdefault(line["step"], []).append(line)
        actions = []
        if self.store is not None:
            try:
                actions = queries.audit_entries(self.store, run_id, limit=50)
            except StoreError:
                pass
        retries = operator_retries(actions)
        page = order[steps_offset : steps_offset + steps_limit]
        step_list = []
        for i, sid in enumerate(page):
            if i and i % STEPS_PER_STRETCH == 0:
                cooperate()
            step_list.append(
                self._step(
                    i + steps_offset + 1,
                    sid,
                    specs.get(sid, {}),
                    _decoded(src["steps"].get(sid, {})),
                    logs_by_step.get(sid, []),
                    now,
                    retries,
                )
            )
            step_list[-1]["map"] = maps.get(sid)
        cooperate()
        summary["sla"] = {**summary["sla"], **retry_sla(summary, retries, now)}
        return {
            **summary,
            "definition": {
                "id": body.get("id", summary["workflow"]["id"]),
                "name": body.get("name"),
                "description": body.get("description"),
                "version": body.get("version"),
                "mode": body.get("mode", "parallel"),
                "steps": len(order),
                "sla_seconds": body.get("sla_seconds"),
                "tags": body.get("tags", []),
            },
            "inputs": src["meta"]["inputs"],
            "resolved_by": src["meta"]["resolved_by"],
            "epoch": src["meta"]["epoch"],
            "steps": step_list,
            "steps_offset": steps_offset,
            "steps_total": len(order),
            "step_counts": counts,
            "parallel_branches": _with_statuses(_branches_of(text), statuses),
            "logs_total": logs_total,
            "operator_actions": actions,
            "source": src["source"],
            "warnings": warnings,
            # A run held back by its workflow's concurrency limit: {key, ahead, reason}.
            "waiting": self.client.waiting(run_id)
            if src["source"] == "hot" and summary["status"] in ("PENDING", "PAUSING")
            else None,
        }

    @staticmethod
    def _step(
        number: int,
        sid: str,
        spec: Mapping[str, Any],
        st: Mapping[str, Any],
        logs: list[dict[str, Any]],
        now: float,
        retries: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        started, finished = st.get("started_at"), st.get("finished_at")
        status = st.get("status", "PENDING")
        comp = spec.get("compensate")
        comp_status = None
        if status in ("COMPENSATING", "COMPENSATED"):
            comp_status = status
        elif st.get("compensation_error"):
            comp_status = "FAILED"
        attempts = int(st.get("attempts") or 0)
        history = st.get("history", [])
        # The input the plugin really got (templates rendered) is in the attempt records; a step
        # that has not run yet shows its params as the definition writes them.
        rendered = next((a["input"] for a in reversed(history) if a.get("input") is not None), None)
        params = spec.get("params", {})
        return {
            "number": number,
            "id": sid,
            "name": spec.get("name") or sid,
            "plugin": spec.get("plugin"),
            "method": spec.get("method", "run"),
            "status": status,
            "depends_on": spec.get("depends_on", []),
            "when": spec.get("when"),
            "critical": spec.get("critical", True),
            "queue": spec.get("queue", "default"),
            "started_at": started,
            "finished_at": finished,
            "duration": ((finished or now) - started) if started and status != "PENDING" else None,
            "input": params if rendered is None else rendered,
            "input_rendered": rendered is not None,
            "params": params,
            "output": st.get("output"),
            "error": st.get("error"),
            "traceback": st.get("traceback"),
            "reason": st.get("reason"),
            "worker": st.get("worker"),
            "attempts": attempts,
            "retry_count": max(0, attempts - 1),
            "max_retries": spec.get("retries", 0),
            **step_retries(sid, attempts, int(spec.get("retries", 0) or 0), retries),
            "history": history,
            "progress": st.get("progress"),
            "logs": logs,
            "compensation": (
                {
                    "plugin": comp.get("plugin"),
                    "method": comp.get("method", "run"),
                    "status": comp_status,
                    "error": st.get("compensation_error"),
                }
                if comp
                else None
            ),
        }

    def events(self, run_id: str, after: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        return run_events(self.client.state, self.store, run_id, after, limit)

    def events_or_recorded(
        self, run_id: str, after: int, limit: int
    ) -> tuple[list[dict[str, Any]], int, list[str]]:
        """(events after ``after``, the run's latest seq, warnings): with Redis unreachable, the
        events the audit store recorded (the newest may be missing, and a warning says so)."""
        try:
            events = self.events(run_id, after, limit)
            (run,) = self.client.state.runs([run_id], "seq")
            latest = run.seq if run else 0
            return events, latest, []
        except REDIS_DOWN:
            if self.store is None:
                raise
        events = queries.events_after(self.store, run_id, after, limit=limit)
        for e in events:
            e["step"] = e["step"] or None
            e["status"] = e["status"] or None
        latest = queries.get_run(self.store, run_id).last_seq  # the latest the recorder wrote
        return events, int(latest or 0), [REDIS_UNREACHABLE]

    def exists(self, run_id: str) -> bool:
        try:
            if self.client.state.status(run_id) is not None:
                return True
        except REDIS_DOWN:
            if self.store is None:
                raise
        if self.store is None:
            return False
        try:
            queries.get_run(self.store, run_id)
            return True
        except (UnknownRun, StoreError):
            return False

    def timeline(self, run_id: str, expand: Sequence[str] = ()) -> dict[str, Any]:
        """Bars for the Gantt chart: one per step attempt and per compensation, from the events;
        a mapped step's items grouped under it, their own bars for the steps in ``expand``."""
        src = self._load(run_id)
        summary = summarize(src["base"], time.time())
        order = [s["id"] for s in (src["definition"] or {}).get("steps", [])] or list(src["steps"])
        number = {sid: i + 1 for i, sid in enumerate(order)}
        bars: list[dict[str, Any]] = []
        open_: dict[tuple[str, str], dict[str, Any]] = {}
        # with a store the items' bars are its rows (stored_item_bars): their events are not read
        events = (
            run_events(self.client.state, self.store, run_id, 0, 200_000, skip_items=True)
            if self.store is not None
            else self.events(run_id, 0, limit=200_000)
        )
        for e in events:
            t, step, data = e["type"], e["step"], e["data"] or {}
            if not step:
                continue
            if t == "step_started":
                bar = {
                    "step": step,
                    "number": number.get(step, 0),
                    "kind": "step",
                    "attempt": data.get("attempt"),
                    "status": "RUNNING",
                    "start": e["ts"],
                    "end": None,
                    "worker": data.get("worker"),
                    "error": None,
                }
                bars.append(bar)
                open_[(step, "step")] = bar
            elif t in ("step_completed", "step_failed", "step_retrying", "step_cancelled"):
                bar = open_.pop((step, "step"), None)
                if bar is None:
                    if t != "step_cancelled":
                        continue
                    bar = {
                        "step": step,
                        "number": number.get(step, 0),
                        "kind": "step",
                        "attempt": None,
                        "status": "CANCELLED",
                        "start": e["ts"],
                        "end": e["ts"],
                        "worker": None,
                        "error": None,
                    }
                    bars.append(bar)
                bar["end"] = e["ts"]
                bar["status"] = e["status"] or t.removeprefix("step_").upper()
                bar["error"] = data.get("error")
            elif t == "attempt_lost":
                # its worker died mid-step: close that attempt's bar (a new attempt's follows)
                bar = open_.get((step, "step"))
                if bar is not None and bar["attempt"] in (None, data.get("attempt")):
                    open_.pop((step, "step"))
                    bar.update(end=e["ts"], status="LOST", error=data.get("reason"))
            elif t == "step_compensating":
                bar = {
                    "step": step,
                    "number": number.get(step, 0),
                    "kind": "compensation",
                    "attempt": None,
                    "status": "COMPENSATING",
                    "start": e["ts"],
                    "end": None,
                    "worker": None,
                    "error": None,
                }
                bars.append(bar)
                open_[(step, "compensation")] = bar
            elif t in ("step_compensated", "step_compensation_failed"):
                bar = open_.pop((step, "compensation"), None)
                if bar is not None:
                    bar["end"] = e["ts"]
                    bar["status"] = "COMPENSATED" if t == "step_compensated" else "FAILED"
                    bar["error"] = data.get("error")
        bars = group_item_bars(bars, number, expand)
        if self.store is not None:  # exact, and bounded: the store's rows, not the events
            bars = stored_item_bars(self.store, run_id, bars, number, expand)
        for b in bars:
            b["duration"] = (b["end"] - b["start"]) if b["end"] is not None else None
        specs = {s["id"]: s for s in (src["definition"] or {}).get("steps", [])}
        maps = map_counts(self.store, run_id, specs, src["steps"])
        return {
            "run": summary,
            "steps": [{"id": s, "number": number[s], "map": maps.get(s)} for s in order],
            "bars": bars,
            "now": time.time(),
        }

    def graph(self, run_id: str) -> dict[str, Any]:
        src = self._load(run_id)
        statuses = {sid: s.get("status", "PENDING") for sid, s in src["steps"].items()}
        graph = dag(src["definition"] or {}, statuses)
        specs = {s["id"]: s for s in (src["definition"] or {}).get("steps", [])}
        maps = map_counts(self.store, run_id, specs, src["steps"])
        for node in graph["nodes"]:
            node["map"] = maps.get(node["id"])  # a mapped step is one node with its counts
        return {"run": summarize(src["base"], time.time()), **graph}

    def export(self, run_id: str) -> dict[str, Any]:
        """The trace: the same document as ``canvasflow export`` (orchestrator/engine/export.py)."""
        return export_run(self.client, run_id, self.store)


def _decoded(st: Mapping[str, Any]) -> Mapping[str, Any]:
    """A step of ``_hot`` with its output and attempt inputs decoded (a step of ``_recorded`` has
    them decoded already)."""
    if "output_json" not in st:
        return st
    out = {k: v for k, v in st.items() if k != "output_json"}
    out["output"] = _json(st["output_json"])
    out["history"] = [
        {**{k: v for k, v in a.items() if k != "input_json"}, "input": _json(a["input_json"])}
        if "input_json" in a
        else a
        for a in st.get("history", ())
    ]
    return out


def dag(body: Mapping[str, Any], statuses: Mapping[str, str]) -> dict[str, Any]:
    """Nodes (with a layer: the longest path from a root) and edges of a definition."""
    specs = body.get("steps", [])
    ids = [s["id"] for s in specs]
    edges = [
        {"source": d, "target": s["id"], "kind": "depends_on"}
        for s in specs
        for d in s.get("depends_on", [])
    ]
    if body.get("mode") == "sequential":
        have = {(e["source"], e["target"]) for e in edges}
        edges += [
            {"source": a, "target": b, "kind": "order"}
            for a, b in zip(ids, ids[1:], strict=False)
            if (a, b) not in have
        ]
    parents: dict[str, list[str]] = {i: [] for i in ids}
    for e in edges:
        parents[e["target"]].append(e["source"])
    layer: dict[str, int] = {}
    for sid in ids:  # definitions are validated acyclic; list order may still put children first
        stack = [sid]
        while stack:
            n = stack[-1]
            todo = [p for p in parents[n] if p not in layer]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            layer[n] = 1 + max((layer[p] for p in parents[n]), default=-1)
    nodes = [
        {
            "id": s["id"],
            "name": s.get("name") or s["id"],
            "plugin": s.get("plugin"),
            "method": s.get("method", "run"),
            "status": statuses.get(s["id"], "PENDING"),
            "layer": layer.get(s["id"], 0),
            "join": s.get("join", "all"),
            "when": s.get("when"),
            "critical": s.get("critical", True),
            "compensate": bool(s.get("compensate")),
        }
        for s in specs
    ]
    return {"nodes": nodes, "edges": edges, "mode": body.get("mode", "parallel")}


def log_dict(x: queries.LogLine) -> dict[str, Any]:
    return {
        "seq": x.seq,
        "line": x.line,
        "step": x.step,
        "ts": x.ts,
        "level": x.level,
        "message": x.message,
        "entity_tag": x.entity_tag,
        "entity_route": x.entity_route,
    }
