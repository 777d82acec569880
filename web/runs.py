"""Run lists and summaries for the API and the pages, composed from two sources.

The audit store (SQL) answers "which runs" — filters, tabs, keyset pagination over any history —
and the Redis hot state answers "how are they now" for the page of runs shown (status, steps
settled, current steps), read in one pipelined round trip. Runs created after the newest one the
recorder has written yet are taken from the Redis index, so a run appears the moment it is
submitted even when the recorder lags or is not running. Without the audit store the list falls
back to the hot state alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from orchestrator.audit import queries
from orchestrator.audit.queries import (
    ACTIVE,
    COMPLETED,
    PENDING,
    UNSUCCESSFUL,
    RunSelection,
    decode_cursor,
    encode_cursor,
)
from orchestrator.audit.store import AuditStore
from orchestrator.engine.client import Client
from orchestrator.engine.control import ALLOWED
from orchestrator.engine.sla import WARNING_FRACTION, sla_status
from orchestrator.errors import StoreError
from orchestrator.records import RunRecord
from web.serving import cooperate

VIEWS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "active": ACTIVE,
    "pending": PENDING,
    "completed": COMPLETED,
    "failed": UNSUCCESSFUL,
    "slow": None,
}
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
# What a summary takes from a run's hot state (RunRecord attributes).
LIVE_FIELDS = (
    "status",
    "workflow",
    "version",
    "name",
    "created_at",
    "started_at",
    "finished_at",
    "total",
    "settled",
    "priority",
    "tags_json",
    "triggered_by",
    "trigger_type",
    "trigger_name",
    "trigger_ref",
    "sla_seconds",
    "error",
    "failed_step",
    "seq",
    "cloned_from",
    "parent_run",
    "parent_step",
    "result_json",
)
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
REDIS_UNREACHABLE = (
    "Redis is unreachable: this is the audit store's record, which may be stale "
    "(live status, the newest runs and events not yet recorded are missing)"
)
MERGE_WINDOW = 500  # unrecorded newest runs looked at per page
# Runs that have no current steps: waiting to start, or over.
_RESTING = ("PENDING", *FINAL)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))


@dataclass(frozen=True)
class RunFilter:
    view: str = "all"
    statuses: tuple[str, ...] = ()
    workflow: str | None = None
    tags: tuple[str, ...] = ()
    triggered_by: str | None = None
    since: float | None = None
    until: float | None = None
    search: str | None = None
    ids: tuple[str, ...] = ()
    trigger_type: str | None = None
    children: str = "hide"  # child runs: hide | include | only (queries.runs.CHILDREN)
    parent: str | None = None  # only the children of this run

    def wanted_statuses(self) -> tuple[str, ...]:
        view = VIEWS.get(self.view) or ()
        if self.statuses and view:
            return tuple(s for s in self.statuses if s in view)  # both must hold
        return self.statuses or view

    def selection(self) -> RunSelection:
        """The same filter, for the audit store."""
        return RunSelection(
            statuses=self.wanted_statuses() if self.statuses or VIEWS.get(self.view) else None,
            ids=self.ids,
            workflow=self.workflow,
            tags=self.tags,
            triggered_by=self.triggered_by,
            trigger_type=self.trigger_type,
            since=self.since,
            until=self.until,
            search=self.search,
            slow=WARNING_FRACTION if self.view == "slow" else None,
            children=self.children,
            parent=self.parent,
        )

    def matches(self, run: Mapping[str, Any], now: float) -> bool:
        """The same filter, applied in Python to a run read from the hot state."""
        wanted = self.wanted_statuses()
        if (self.statuses or VIEWS.get(self.view)) and run["status"] not in wanted:
            return False
        if self.ids and run["id"] not in self.ids:
            return False
        if not self.ids and not child_wanted(self.children, self.parent, run.get("parent_run")):
            return False
        if self.workflow and run["workflow"]["id"] != self.workflow:
            return False
        if self.tags and not set(self.tags) <= set(run["tags"]):
            return False
        if self.triggered_by and run["triggered_by"] != self.triggered_by:
            return False
        if self.trigger_type and run.get("trigger_type") != self.trigger_type:
            return False
        if self.since is not None and run["created_at"] < self.since:
            return False
        if self.until is not None and run["created_at"] >= self.until:
            return False
        if self.search:
            s = self.search.strip().lower()
            if not (
                run["id"].startswith(s)
                or s in run["workflow"]["id"].lower()
                or s in (run["workflow"]["name"] or "").lower()
            ):
                return False
        if self.view == "slow":
            sla = run["sla"]
            return bool(sla["target"]) and sla["elapsed"] >= WARNING_FRACTION * sla["target"]
        return True


@dataclass
class RunPage:
    items: list[dict[str, Any]]
    next_cursor: str | None
    source: str = "audit"
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, Any] | None = None  # the tab counts, when asked for with the page


def run_sla_status(status: str, elapsed: float, target: float | None) -> str | None:
    """Live runs: on_track / at_risk / breached. Finished: met or breached by time, missed when
    the run ended without completing (analytics counts it a breach); cancelled runs are not judged."""
    if not target:
        return None
    if status == "CANCELLED":
        return None
    if status in ("FAILED", "COMPENSATION_FAILED") and elapsed < target:
        return "missed"
    if status == "COMPLETED":
        return "met" if elapsed <= target else "breached"
    return sla_status(elapsed, target)


def child_wanted(children: str, parent: str | None, parent_run: str | None) -> bool:
    """Whether a run list shows a run whose parent is ``parent_run`` (None: a top-level run)."""
    if parent:
        return parent_run == parent
    if children == "hide":
        return not parent_run
    return children != "only" or bool(parent_run)


def summarize(base: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The run summary of the API from merged fields (SQL row and/or hot-state hash)."""
    status = base["status"]
    total = int(base.get("total") or 0)
    settled = min(int(base.get("settled") or 0), total) if total else 0
    created = float(base["created_at"])
    started, finished = base.get("started_at"), base.get("finished_at")
    end = finished if finished else now
    target = base.get("sla_seconds") or None
    elapsed = max(0.0, end - created)
    current = list(base.get("current_steps") or ())
    if base.get("state_lost"):
        # Redis lost the run (orchestrator/engine/lost.py): only resolving it by hand can end it.
        return {
            **_summary(
                base,
                status,
                total,
                settled,
                created,
                started,
                finished,
                end,
                target,
                elapsed,
                current,
            ),
            "state_lost": True,
            "can_pause": False,
            "can_resume": False,
            "can_cancel": False,
            "can_retry": False,
            "can_retry_compensation": False,
            "can_resolve": True,
        }
    return _summary(
        base, status, total, settled, created, started, finished, end, target, elapsed, current
    )


def _summary(
    base: Mapping[str, Any],
    status: str,
    total: int,
    settled: int,
    created: float,
    started: Any,
    finished: Any,
    end: float,
    target: Any,
    elapsed: float,
    current: list[str],
) -> dict[str, Any]:
    return {
        "id": base["id"],
        "workflow": {
            "id": base.get("workflow") or "",
            "name": base.get("name") or base.get("workflow") or "",
            "version": base.get("version") or "",
        },
        "status": status,
        "progress": {
            "current_steps": current,
            "current_step": min(settled + 1, total) if total else 0,
            "settled": settled,
            "total": total,
            "percent": round(100.0 * settled / total, 1)
            if total
            else (100.0 if status in FINAL else 0.0),
        },
        "created_at": created,
        "started_at": started,
        "finished_at": finished,
        "duration": (end - started) if started else None,
        "sla": {
            "target": target,
            "elapsed": round(elapsed, 3),
            "status": run_sla_status(status, elapsed, target),
        },
        "triggered_by": base.get("triggered_by"),
        "trigger_type": base.get("trigger_type"),
        "trigger_name": base.get("trigger_name"),
        "trigger_ref": base.get("trigger_ref"),
        "priority": base.get("priority") or "normal",
        "tags": list(base.get("tags") or ()),
        "error": base.get("error"),
        "failed_step": base.get("failed_step"),
        "seq": int(base.get("seq") or 0),
        "cloned_from": base.get("cloned_from"),
        "parent_run": base.get("parent_run"),
        "parent_step": base.get("parent_step"),
        "result": base.get("result"),
        "can_pause": status in ALLOWED["pause"],
        "can_resume": status in ALLOWED["resume"],
        "can_cancel": status in ALLOWED["cancel"],
        "can_retry": status in ALLOWED["retry"],
        "can_retry_compensation": status in ALLOWED["retry_compensation"],
        "can_resolve": status in ALLOWED["resolve"],
        "state_lost": False,
    }


def hot_base(run: RunRecord) -> dict[str, Any]:
    """The summary fields (LIVE_FIELDS) of a run read from the hot state."""
    return {
        "id": run.id,
        "status": run.status,
        "workflow": run.workflow,
        "version": run.version,
        "name": run.name,
        "created_at": run.created_at or 0.0,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "total": run.total,
        "settled": run.settled,
        "priority": run.priority or "normal",
        "tags": run.tags,
        "triggered_by": run.triggered_by,
        "trigger_type": run.trigger_type,
        "trigger_name": run.trigger_name,
        "trigger_ref": run.trigger_ref,
        "sla_seconds": run.sla_seconds,
        "error": run.error,
        "failed_step": run.failed_step,
        "seq": run.seq,
        "cloned_from": run.cloned_from,
        "parent_run": run.parent_run,
        "parent_step": run.parent_step,
        "result": run.result,
    }


class RunViews:
    """Summaries and lists of runs."""

    def __init__(self, client: Client, store: AuditStore | None) -> None:
        self.client = client
        self.store = store
        self.r = client.redis
        self.keys = client.keys

    # -- hot state ----------------------------------------------------------------------------

    def redis_ok(self) -> bool:
        try:
            self.r.ping()
        except REDIS_DOWN:
            return False
        return True

    def _read_live(
        self, ids: list[str], low: str = "-inf", high: str = "+inf", window: int = 0
    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """(live fields of each of ``ids`` still in Redis, the runs of the index between ``low``
        and ``high`` not among ``ids``, newest first, at most ``window``): one round trip."""
        page, extra = self.client.state.live_page(
            ids, LIVE_FIELDS, low=low, high=high, window=window
        )

        def base(run: RunRecord, current: list[str]) -> dict[str, Any]:
            out = hot_base(run)
            if run.status not in _RESTING:
                out["current_steps"] = current
            return out

        return {rid: base(*hot) for rid, hot in page.items()}, [base(*hot) for hot in extra]

    def hot(self, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Live fields of each run still in Redis, with its current steps; one round trip."""
        ids = list(dict.fromkeys(run_ids))
        return self._read_live(ids)[0] if ids else {}

    def summary(self, run_id: str) -> dict[str, Any] | None:
        hot = self.hot([run_id]).get(run_id)
        if hot is not None:
            return summarize(hot, time.time())
        if self.store is None:
            return None
        page = self.list(RunFilter(ids=(run_id,)), limit=1)
        return page.items[0] if page.items else None

    # -- lists --------------------------------------------------------------------------------

    def list(
        self,
        flt: RunFilter,
        *,
        limit: int = 50,
        cursor: str | None = None,
        with_counts: bool = False,
    ) -> RunPage:
        """One keyset page, newest first, in one SQL statement (the page with its step counts, the
        newest recorded run and, ``with_counts``, the tab counts) and one Redis call (the page's
        live fields and the runs newer than the newest recorded one)."""
        now = time.time()
        if self.store is None:
            return self._hot_list(flt, limit, cursor, now)
        after = decode_cursor(cursor) if cursor else None  # a bad cursor is the caller's error
        try:
            recorded = queries.run_list_page(
                self.store,
                flt.selection(),
                limit=limit,
                after=after,
                now=now,
                counts_slow=WARNING_FRACTION if with_counts else None,
            )
        except StoreError as exc:
            page = self._hot_list(flt, limit, cursor, now)
            page.warnings.append(f"audit store unavailable, showing live runs only: {exc}")
            return page
        rows, more, newest = recorded.rows, recorded.more, recorded.newest
        cooperate()  # each part below is a few ms of Python for a page of 50: let the relay in between
        # Runs created after the newest recorded one are in Redis only (the recorder lags, or is
        # not running): every page merges those that sort before its cursor.
        low = f"({newest!r}" if newest is not None else "-inf"
        high = repr(after[0]) if after is not None else "+inf"
        warnings: list[str] = []
        try:
            hot, unrecorded = self._read_live([r["id"] for r in rows], low, high, MERGE_WINDOW)
        except REDIS_DOWN:
            hot, unrecorded, warnings = {}, [], [REDIS_UNREACHABLE]
        cooperate()
        bases = []
        for row in rows:
            h = hot.get(row["id"])
            if h is not None:
                bases.append({**row, **{k: v for k, v in h.items() if v not in (None, "")}})
            else:
                # Not final in SQL and unknown to Redis: its hot state was lost (orchestrator/engine/lost.py).
                # While Redis is unreachable nothing can be said about it, so it is not flagged.
                bases.append({**row, "state_lost": not warnings and row["status"] not in FINAL})
        extra = [
            b
            for b in unrecorded
            if (after is None or (b["created_at"], b["id"]) < after)
            and flt.matches(summarize(b, now), now)
        ]
        if extra:
            bases = sorted(extra + bases, key=lambda b: (b["created_at"], b["id"]), reverse=True)
            more = more or len(bases) > limit
            bases = bases[:limit]
        cooperate()
        items = [summarize(b, now) for b in bases]
        nxt = encode_cursor(bases[-1]["created_at"], bases[-1]["id"]) if more and bases else None
        return RunPage(items, nxt, warnings=warnings, counts=recorded.counts)

    def _hot_list(self, flt: RunFilter, limit: int, cursor: str | None, now: float) -> RunPage:
        """Newest first from the Redis index alone (no audit store)."""
        hi: Any = "+inf"
        after: tuple[float, str] | None = None
        if cursor:
            after = decode_cursor(cursor)
            hi = after[0]
        out: list[dict[str, Any]] = []
        start, scanned, more = 0, 0, False
        while scanned < 20_000:
            chunk = self.r.zrevrangebyscore(
                self.keys.runs, hi, "-inf", start=start, num=500, withscores=True
            )
            if not chunk:
                break
            start += len(chunk)
            scanned += len(chunk)
            batch = [(_s(i), s) for i, s in chunk]
            if after is not None:
                batch = [(i, s) for i, s in batch if (s, i) < after]
            hot = self.hot(i for i, _ in batch)
            for rid, _ in batch:
                b = hot.get(rid)
                if b is None:
                    continue
                if flt.matches(summarize(b, now), now):
                    if len(out) == limit:
                        more = True
                        break
                    out.append(b)
            if more:
                break
        out.sort(key=lambda b: (b["created_at"], b["id"]), reverse=True)
        nxt = encode_cursor(out[-1]["created_at"], out[-1]["id"]) if more and out else None
        return RunPage([summarize(b, now) for b in out], nxt, source="hot")

    # -- counts -------------------------------------------------------------------------------

    def counts(self, now: float | None = None) -> dict[str, Any]:
        """Tab counts and today's figures (since 00:00 UTC)."""
        now = time.time() if now is None else now
        if self.store is None:
            return _no_counts()
        try:
            return queries.tab_counts(self.store, now, WARNING_FRACTION)
        except StoreError:
            return _no_counts()


def _no_counts() -> dict[str, Any]:
    return {
        "active": 0,
        "pending": 0,
        "slow": 0,
        "completed_today": 0,
        "failed_today": 0,
        "sla_compliance_today": None,
    }
