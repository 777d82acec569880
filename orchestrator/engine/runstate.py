"""Hot state of runs in Redis: :class:`RunState` owns its layout and every read and write of it.

The keys come from orchestrator/keys.py, the fields and their encoding from the one codec
(orchestrator/records.py); nothing else in the package reads or writes a run's keys
(tests/test_layout.py). Every state change is one atomic Lua script (orchestrator/engine/lua/):
it checks the run's status and epoch and the transition table, writes the step or run fields,
bumps the run's sequence number and appends the event to the stream, in one round trip.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

import redis

from orchestrator.engine.childstate import ChildState
from orchestrator.engine.itemstate import ItemState
from orchestrator.engine.livestate import LiveState
from orchestrator.engine.slotstate import SlotGroup, SlotState
from orchestrator.engine.states import NEW_EPOCH_MOVES, Move, RunStatus, lua_constants
from orchestrator.keys import Keys, step_field
from orchestrator.records import (
    HotRun,
    Reads,
    RunRecord,
    StepRecord,
    encode_run_fields,
    encode_step_fields,
    run_field_names,
    split_steps,
    text,
)

# How long a run stays in the "controlled" set after an operator action or a failure touched it
# (workers/watch.py): its queued steps ask Redis before they start for at least this long.
CONTROL_WINDOW = 24 * 3600

_INCLUDE = re.compile(r"^-- include: (\S+)$", re.M)


@functools.cache
def lua_source(name: str) -> str:
    """``lua/<name>`` with every "-- include: <file>" line replaced by that file (expanded in
    turn); "constants" is rendered from Python: the tables of states.py and CONTROL_WINDOW."""
    if name == "constants":
        return f"local CONTROL_WINDOW = {CONTROL_WINDOW}\n{lua_constants()}"
    body = (resources.files("orchestrator.engine") / "lua" / name).read_text()
    return _INCLUDE.sub(lambda m: lua_source(m.group(1)).rstrip("\n"), body)


class FenceLost(Exception):
    """A fenced create found its claim taken or its run already there: it wrote nothing."""


def now() -> str:
    return f"{time.time():.6f}"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def pack_batch(batch: list[list[Any]] | None) -> list[str]:
    """[events JSON, data texts...] for emit_batch: a data given as text travels as its own
    argument (the event names it by number), so it is not escaped into the list."""
    if not batch:
        return [""]
    texts: list[str] = []
    heads = []
    for etype, step, status, ts, data in batch:
        if isinstance(data, str):
            texts.append(data)
            data = len(texts)
        heads.append([etype, step, status, ts, data])
    return [dumps(heads), *texts]


class RunState(SlotState, ChildState, ItemState, LiveState):
    """All reads and writes of a run's hot state; one instance per process is enough (its
    concurrency slots: engine/slotstate.py; its child runs: engine/childstate.py; the items of
    mapped steps: engine/itemstate.py)."""

    def __init__(self, client: redis.Redis, keys: Keys, *, state_ttl: int, maxlen: int = 0):
        self.r = client
        self.keys = keys
        self.state_ttl = state_ttl
        self.maxlen = maxlen

        def load(name: str) -> Any:
            return client.register_script(lua_source(f"{name}.lua"))

        self._begin = load("begin_step")
        self._finish = load("finish_step")
        self._run_once = load("run_once")
        self._transition = load("transition")
        self._step_set = load("set_step")
        self._emit_batch = load("emit_batch")
        self._refresh = load("refresh_lease")
        self._restart = load("restart")
        self._cancel = load("cancel")
        self._audit = load("audit")
        self._sla_mark = load("sla_mark")
        self._killed = load("fail_killed")
        self._claim = load("claim_stalled")
        self._leased = load("leased")
        self._read = load("read_run")
        self._list_live = load("list_live")
        self._recover = load("recover")
        self._admit = load("admit")
        # Called with the runs a transition admitted to the slot it freed, so that the process
        # that freed it sends them (Client and the worker app set it to Dispatcher.admitted).
        self.on_admit: Callable[[list[str]], None] | None = None
        probe = "\x00"
        self._run_head, self._run_tail = self.keys.run(probe).split(probe)
        self._load_item_scripts(load)

    def _attempt_keys(self, run_id: str, step: str) -> list[str]:
        """The KEYS of the scripts that end an attempt (finish_step, run_once, fail_killed)."""
        k = self.keys
        return [
            k.run(run_id),
            k.step_hash(run_id, step),
            k.lease(run_id, step),
            k.events,
            k.step_attempts(run_id, step),
            k.controlled,
            k.control_channel,
        ]

    # -- creation -----------------------------------------------------------------------------

    def create(
        self,
        run: RunRecord,
        step_ids: Iterable[str],
        *,
        claim: tuple[str, int] | None = None,
        fence: tuple[str, str] | None = None,
    ) -> str | None:
        """Write a PENDING run with PENDING steps and its run_created event, in one round trip.
        Returns None when it wrote.

        ``claim`` (key, ttl): only if that key is free, and the key is set to the run id (for ttl
        seconds) in the same transaction; returns the run id already holding it instead of
        writing anything (an idempotent submit).
        ``fence`` (key, token): write only if the key still holds the token and no run with this
        id exists, atomically (WATCH/MULTI); else raise :class:`FenceLost` and write nothing.
        The scheduler creates the run of a fire time under its claim this way (scheduler.py)."""
        if claim is not None and fence is not None:
            raise ValueError("create takes a claim or a fence, not both")
        if fence is not None:
            self._create_fenced(run, list(step_ids), fence)
            return None
        if claim is None:
            pipe = self.r.pipeline(transaction=True)
            self._queue_create(pipe, run, list(step_ids))
            pipe.execute()
            return None
        key, ttl = claim
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                held = pipe.get(key)
                if held is not None:
                    return text(held)
                pipe.multi()
                pipe.set(key, run.id, ex=ttl)
                self._queue_create(pipe, run, list(step_ids))
                pipe.execute()
                return None
            except redis.WatchError:
                # Another submit claimed the key between our read and our write: it won.
                return text(self.r.get(key)) or run.id

    def _create_fenced(self, run: RunRecord, step_ids: list[str], fence: tuple[str, str]) -> None:
        key, token = fence
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key, self.keys.run(run.id))
                held = pipe.get(key)
                if text(held) != token:
                    raise FenceLost(f"the claim {key} is no longer {token!r} (it is {held!r})")
                if pipe.exists(self.keys.run(run.id)):
                    raise FenceLost(f"run {run.id} exists already")
                pipe.multi()
                self._queue_create(pipe, run, step_ids)
                pipe.execute()
            except redis.WatchError:
                raise FenceLost(f"the claim {key} or run {run.id} changed meanwhile") from None

    def exists(self, run_id: str) -> bool:
        """Whether Redis holds the run."""
        return bool(self.r.exists(self.keys.run(run_id)))

    def release_claim(self, key: str, run_id: str) -> bool:
        """Delete an idempotency claim if it still names ``run_id`` (whose dispatch failed)."""
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                if text(pipe.get(key)) != run_id:
                    return False
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def _queue_create(self, pipe: Any, run: RunRecord, step_ids: list[str]) -> None:
        ts = now()
        run_id = run.id
        fields: dict[Any, Any] = run.to_hash()
        fields.update(
            status=RunStatus.PENDING,
            created_at=ts,
            epoch="1",
            seq="1",
            total=str(len(step_ids)),
            settled="0",
        )
        pipe.hset(self.keys.run(run_id), mapping=fields)
        pipe.hset(
            self.keys.steps(run_id), mapping={step_field(s, "status"): "PENDING" for s in step_ids}
        )
        pipe.zadd(self.keys.runs, {run_id: float(ts)})
        pipe.zadd(self.keys.live, {run_id: float(ts)})  # the watchdog's work list until it ends
        pipe.zadd(self.keys.runs_of(run.workflow), {run_id: float(ts)})
        if run.sla_seconds:
            pipe.sadd(self.keys.sla_watch, run_id)
        xargs: dict[str, Any] = {"maxlen": self.maxlen, "approximate": True} if self.maxlen else {}
        pipe.xadd(
            self.keys.events,
            {
                "run": run_id,
                "seq": 1,
                "type": "run_created",
                "step": "",
                "status": "PENDING",
                "ts": ts,
                "data": dumps(
                    {"workflow": run.workflow, "version": run.version}
                    | ({"warnings": run.warnings} if run.warnings_json else {})
                    | (
                        {"parent_run": run.parent_run, "parent_step": run.parent_step}
                        if run.parent_run
                        else {}
                    )
                ),
            },
            **xargs,
        )

    # -- the step runtime's calls -------------------------------------------------------------

    def begin_step(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        intent: str,
        owner: str,
        lease_ttl: int,
        task_id: str,
        worker: str,
        reason: str = "",
        started: float | None = None,
    ) -> tuple[str, ...]:
        """(verdict, detail...): go/attempt, skipped, cancelled, paused, leased/holder,
        settled/status, adopt/status/output, stale, gone. ``intent="late"`` with ``started``:
        the step has been running since then (the fast path's begin, from the heartbeat)."""
        ts = f"{started:.6f}" if started is not None else now()
        res = self._begin(
            keys=[
                self.keys.run(run_id),
                self.keys.step_hash(run_id, step),
                self.keys.lease(run_id, step),
                self.keys.events,
            ],
            args=[
                run_id,
                step,
                str(epoch),
                intent,
                owner,
                ts,
                lease_ttl,
                self.maxlen,
                task_id,
                worker,
                reason,
            ],
        )
        out = tuple(text(x) for x in res)
        return out if len(out) > 1 else (out[0], "")

    def finish_step(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        status: str,
        owner: str,
        output: str = "null",
        error: str = "",
        traceback: str = "",
        critical: bool = True,
        attempt: Mapping[str, Any],
        batch: list | None = None,
    ) -> str:
        head, *texts = pack_batch(batch)
        res = self._finish(
            keys=self._attempt_keys(run_id, step),
            args=[
                run_id,
                step,
                str(epoch),
                status,
                owner,
                now(),
                self.maxlen,
                output,
                error,
                traceback,
                "1" if critical else "0",
                dumps(attempt),
                head,
                self.state_ttl,
                *texts,
            ],
        )
        return text(res)

    def run_once(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        status: str,
        started: float,
        output: str = "null",
        error: str = "",
        traceback: str = "",
        critical: bool = True,
        attempt: Mapping[str, Any],
        worker: str,
        task_id: str,
        batch: list | None = None,
    ) -> tuple[str, ...]:
        """Record a whole attempt (start and end) of a step that ran without begin_step:
        ('ok', attempt, run status, halt) or (stale|settled|leased|gone, detail). ``attempt``
        is the record without its number, which the script assigns."""
        head, *texts = pack_batch(batch)
        res = self._run_once(
            keys=self._attempt_keys(run_id, step),
            args=[
                run_id,
                step,
                str(epoch),
                status,
                f"{started:.6f}",
                now(),
                self.maxlen,
                output,
                error,
                traceback,
                "1" if critical else "0",
                dumps(attempt),
                worker,
                task_id,
                head,
                *texts,
            ],
        )
        return tuple(text(x) for x in res)

    def fail_killed_step(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        error: str,
        critical: bool,
        attempt: Mapping[str, Any],
    ) -> bool:
        return bool(
            self._killed(
                keys=self._attempt_keys(run_id, step),
                args=[
                    run_id,
                    step,
                    str(epoch),
                    now(),
                    self.maxlen,
                    error,
                    "1" if critical else "0",
                    dumps(attempt),
                ],
            )
        )

    def refresh_lease(self, run_id: str, step: str, owner: str, ttl: int) -> bool:
        return bool(self._refresh(keys=[self.keys.lease(run_id, step)], args=[owner, ttl]))

    def emit(self, run_id: str, batch: list[list[Any]]) -> None:
        """Append events [type, step, status, ts, data_json] with the run's next seqs."""
        if batch:
            head, *texts = pack_batch(batch)
            self._emit_batch(
                keys=[self.keys.run(run_id), self.keys.events],
                args=[run_id, self.maxlen, head, *texts],
            )

    def set_step(
        self,
        run_id: str,
        step: str,
        status: str,
        etype: str,
        *,
        fields: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        expect: str = "",
    ) -> bool:
        """Set a step's status (and StepRecord fields) with its event, if the step table allows
        it (and, with ``expect``, only if the step still has that status); False otherwise."""
        res = self._step_set(
            keys=[self.keys.run(run_id), self.keys.step_hash(run_id, step), self.keys.events],
            args=[
                run_id,
                step,
                status,
                now(),
                self.maxlen,
                dumps(encode_step_fields(fields or {})),
                etype,
                dumps(dict(data or {})),
                expect,
            ],
        )
        return bool(res)

    def transition(
        self,
        run_id: str,
        move: Move,
        target: RunStatus,
        *,
        fields: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> tuple[bool, str]:
        """Move the run to ``target`` if ``move`` may take it there from its current status (the
        run table of states.py), setting RunRecord ``fields`` (None deletes one).

        Returns (done, status before). The check and the write are one atomic script.
        """
        if move in NEW_EPOCH_MOVES:
            raise ValueError(f"{move} starts a new dispatch: use restart() or cancel()")
        res = self._transition(
            keys=[
                self.keys.run(run_id),
                self.keys.events,
                self.keys.settled_channel(run_id),
                self.keys.controlled,
                self.keys.control_channel,
                self.keys.live,
            ],
            args=[
                run_id,
                str(move),
                str(target),
                now(),
                self.maxlen,
                self.state_ttl,
                dumps(encode_run_fields(fields or {})),
                dumps(dict(data or {})),
                self._run_head,
                self._run_tail,
            ],
        )
        admitted = [text(x) for x in res[2:]]
        if admitted and self.on_admit is not None:
            self.on_admit(admitted)
        return text(res[0]) == "ok", text(res[1])

    def restart(
        self,
        run_id: str,
        move: Move,
        target: RunStatus,
        *,
        reset: Iterable[str] = (),
        clear: Iterable[str] = (),
        data: Mapping[str, Any] | None = None,
        slot: SlotGroup | None = None,
        items: Mapping[str, str] | None = None,
    ) -> tuple[str, str, int]:
        """Atomically: check that ``move`` may take the run to ``target``, bump the epoch, reset
        steps to PENDING, clear run fields (RunRecord attributes), reset the items of mapped
        steps (``items``: {step: 'all' | 'unfinished'}); a retry of a run with a concurrency
        ``slot`` group takes a slot again.

        Returns (verdict 'ok'|'refused'|'gone'|'full' (no free slot), status before, new epoch).
        """
        if move not in NEW_EPOCH_MOVES or move is Move.CANCEL:
            raise ValueError(f"{move} is not a restart")
        k = self.keys
        res = self._restart(
            keys=[
                k.run(run_id),
                k.steps(run_id),
                k.events,
                k.settled_channel(run_id),
                k.completed(run_id),
                k.attempts(run_id),
                k.controlled,
                k.control_channel,
                k.live,
            ],
            args=[
                run_id,
                now(),
                self.maxlen,
                str(move),
                str(target),
                dumps(list(reset)),
                dumps(run_field_names(clear)),
                dumps(dict(data or {})),
                self._run_head,
                self._run_tail,
                *(
                    (str(slot.limit), slot.workflow, slot.key, slot.index_key)
                    if slot
                    else ("0", "", "", "")
                ),
                dumps(dict(items)) if items else "",
            ],
        )
        return text(res[0]), text(res[1]), int(text(res[2]))

    def cancel(
        self, run_id: str, *, terminate: bool, data: Mapping[str, Any] | None = None
    ) -> tuple[str, str, int, list[str]]:
        """Atomically move to CANCELLING with a new epoch (if the cancel move may); with
        ``terminate`` also mark running steps CANCELLED and return their Celery task ids (to
        revoke)."""
        k = self.keys
        res = self._cancel(
            keys=[
                k.run(run_id),
                k.steps(run_id),
                k.events,
                k.settled_channel(run_id),
                k.controlled,
                k.control_channel,
                k.items(run_id),
            ],
            args=[
                run_id,
                now(),
                self.maxlen,
                "1" if terminate else "0",
                k.lease(run_id, ""),
                dumps(dict(data or {})),
            ],
        )
        return text(res[0]), text(res[1]), int(text(res[2])), [text(t) for t in res[3:] if t]

    def claim_stalled(
        self, run_id: str, status: str, seq: str, data: Mapping[str, Any]
    ) -> tuple[str, int]:
        """The watchdog's claim of a run it judged stalled at (``status``, ``seq``): a new epoch
        if the run has not moved since. Returns (verdict 'ok'|'moved'|'refused'|'gone', epoch)."""
        k = self.keys
        res = self._claim(
            keys=[k.run(run_id), k.events, k.controlled, k.control_channel, k.watchdog],
            args=[run_id, now(), self.maxlen, seq, status, dumps(dict(data))],
        )
        return text(res[0]), int(text(res[2]))

    def recover(
        self,
        run: RunRecord,
        steps: Mapping[str, Mapping[str, Any]],
        *,
        attempts: Iterable[str],
        completed: Iterable[str],
        lost: Iterable[tuple[str, str]],
        data: Mapping[str, Any],
        force: bool = False,
        items: Mapping[str, Mapping[str, Any]] | None = None,
        item_attempts: Iterable[str] = (),
    ) -> tuple[str, str, int]:
        """Write back a run that Redis lost, rebuilt from the audit store (recover.py): the run
        hash (``run``, with its epoch and seq), its steps' StepRecord fields (and ``items``', of
        mapped steps), attempt records (JSON texts; ``item_attempts``: the items'), completion order, and the events
        attempt_lost (``lost``: step or item, data JSON) and run_recovered, in one script.
        Refused when Redis knows the run, unless ``force``.

        Returns (verdict 'ok'|'present', status before, epoch)."""
        k = self.keys
        flat = {
            step_field(sid, name): value
            for sid, fields in steps.items()
            for name, value in encode_step_fields(fields).items()
        }
        item_flat = {
            step_field(iid, name): value
            for iid, fields in (items or {}).items()
            for name, value in encode_step_fields(fields).items()
        }
        res = self._recover(
            keys=[
                k.run(run.id),
                k.steps(run.id),
                k.attempts(run.id),
                k.completed(run.id),
                k.events,
                k.runs,
                k.live,
                k.runs_of(run.workflow),
                k.sla_watch,
                k.controlled,
                k.control_channel,
                k.items(run.id),
                k.map_data(run.id),
                k.item_attempts(run.id),
            ],
            args=[
                run.id,
                now(),
                self.maxlen,
                "1" if force else "0",
                dumps(run.to_hash()),
                dumps(flat),
                dumps(list(attempts)),
                dumps(list(completed)),
                dumps([list(x) for x in lost]),
                dumps(dict(data)),
                f"{run.created_at or time.time():.6f}",
                "1" if run.sla_seconds else "0",
                dumps(item_flat),
                dumps(list(item_attempts)),
            ],
        )
        return text(res[0]), text(res[1]), int(text(res[2]))

    def audit(self, run_id: str, data: Mapping[str, Any]) -> int:
        return int(
            self._audit(
                keys=[self.keys.run(run_id), self.keys.events],
                args=[run_id, now(), self.maxlen, dumps(dict(data))],
            )
        )

    def sla_mark(self, run_id: str, kind: str, data: Mapping[str, Any]) -> bool:
        """Emit sla_warning / sla_breached for a run, at most once each."""
        return bool(
            self._sla_mark(
                keys=[self.keys.run(run_id), self.keys.events],
                args=[run_id, now(), self.maxlen, kind, dumps(dict(data))],
            )
        )

    def lease_holder(self, run_id: str, step: str) -> str | None:
        v = self.r.get(self.keys.lease(run_id, step))
        return text(v) if v is not None else None

    def adopt_legacy_keys(self, batch: int = 500) -> list[str]:
        """Rename the keys of every run (of the ``runs`` index) still under its pre-2026-12 name,
        without the hash tag, to its name now; a key already there is kept. Returns the ids of
        the runs renamed. Run with the fleet stopped: a process of the old version would go on
        writing the old names."""
        moved: list[str] = []
        ids = [text(rid) for rid, _ in self.r.zscan_iter(self.keys.runs, count=batch)]
        for i in range(0, len(ids), batch):
            chunk = ids[i : i + batch]
            pipe = self.r.pipeline(transaction=False)
            for rid in chunk:
                pipe.exists(*(old for old, _ in self.keys.legacy_run_keys(rid)))
            found = [rid for rid, n in zip(chunk, pipe.execute(), strict=True) if n]
            for rid in found:
                pipe = self.r.pipeline(transaction=True)
                pairs = self.keys.legacy_run_keys(rid)
                for old, _ in pairs:
                    pipe.exists(old)
                present = pipe.execute()
                pipe = self.r.pipeline(transaction=True)
                for (old, new), there in zip(pairs, present, strict=True):
                    if there:
                        pipe.renamenx(old, new)
                pipe.execute()
                moved.append(rid)
        return moved

    # -- reads --------------------------------------------------------------------------------

    def read(self, run_id: str) -> HotRun | None:
        """The run, its steps and its attempt records in one round trip, or None if unknown."""
        texts = self._read(
            keys=[self.keys.run(run_id), self.keys.steps(run_id), self.keys.attempts(run_id)]
        )
        if not texts:
            return None
        run, flat, attempts = (json.loads(t) for t in texts)
        return HotRun(RunRecord.from_hash(run_id, run), split_steps(flat), attempts)

    def head(self, run_id: str) -> tuple[str, str, str] | None:
        """(status, epoch, halt) of a run in one HMGET, or None if unknown."""
        status, epoch, halt = self.r.hmget(self.keys.run(run_id), "status", "epoch", "halt")
        if status is None:
            return None
        return text(status), text(epoch), text(halt)

    def status(self, run_id: str) -> str | None:
        v = self.r.hget(self.keys.run(run_id), "status")
        return text(v) if v is not None else None

    def runs(self, run_ids: Iterable[str], *attrs: str) -> list[RunRecord | None]:
        """Some fields (RunRecord attributes) of each run, None for a run not in Redis; one
        round trip."""
        reads = self.reads()
        for rid in run_ids:
            reads.run(rid, *attrs)
        return reads.execute()  # type: ignore[return-value]

    def step(self, run_id: str, step_id: str, *attrs: str) -> StepRecord:
        """Some fields (StepRecord attributes) of one step."""
        reads = self.reads()
        reads.step(run_id, step_id, *attrs)
        return reads.execute()[0]  # type: ignore[return-value]

    def reads(self) -> Reads:
        return Reads(self.r, self.keys)

    def step_deps(self, run_id: str, step: str) -> list[str]:
        """A step's depends_on, from the run's stored definition (long fan-in lists)."""
        raw = self.r.hget(self.keys.run(run_id), "definition")
        for s in json.loads(raw or "{}").get("steps", ()):
            if s["id"] == step:
                return list(s.get("depends_on") or ())
        return []

    def completed_order(self, run_id: str) -> list[str]:
        return [text(x) for x in self.r.lrange(self.keys.completed(run_id), 0, -1)]
