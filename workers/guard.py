"""The message guard: no message can kill a worker.

A message nested hundreds of levels deep makes the prefork pool's pickler raise RecursionError
in the worker's *main* process (celery/concurrency/asynpool.py ``send_job``): the worker dies,
the unacknowledged message goes back to the queue, and the next worker dies on it too. So every
message of canvasflow's tasks is checked where it arrives, in the consumer, before Celery builds
a request for it: a message deeper than ``CANVASFLOW_MESSAGE_MAX_DEPTH`` or larger than
``CANVASFLOW_MESSAGE_MAX_BYTES`` is kept in the dead-letter list (``<prefix>:dead:messages``),
its step recorded FAILED (the run then goes on to its final status as its definition says) and
the message acknowledged, never redelivered. Validation refuses such definitions at submit time
too; this is the worker's own line of defence against anything that reaches the queue anyway.
"""

from __future__ import annotations

import json
import logging
import re
import time
from itertools import accumulate
from typing import Any

from celery.worker.strategy import default as default_strategy

from orchestrator.engine import compiler
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.runstate import RunState, dumps
from orchestrator.engine.states import Move, RunStatus
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

# What the dead-letter list keeps of a refused message's body, and how many messages it keeps.
DEAD_BODY_CAP = 1024 * 1024
DEAD_LIST_MAX = 1000
_HEADER = re.compile(rb'"@":\s*\["([0-9A-Za-z_.-]+)",\s*(\d+)')


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nesting(raw: bytes) -> int:
    """How deep a JSON text nests, from its bytes, without decoding it: strings removed (they
    may hold brackets), then the running count of the brackets left. Escapes go first (escaped
    backslashes, then escaped quotes: JSON reads backslashes in pairs from the left), so every
    quote left opens or closes a string; every other piece between quotes is outside one."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check(body: bytes | str, max_depth: int, max_bytes: int) -> tuple[str, Any]:
    """(why the message is refused or "", its decoded body: None, decoded only when refused)."""
    size = len(body)
    if max_bytes and size > max_bytes:
        return (
            f"message of {size} bytes is larger than {max_bytes} bytes "
            f"(CANVASFLOW_MESSAGE_MAX_BYTES)"
        ), None
    if not max_depth:
        return "", None
    # A message cannot nest deeper than it has opening brackets: most are done here, at C speed.
    opening = (
        (body.count(b"[") + body.count(b"{"))
        if isinstance(body, bytes)
        else (body.count("[") + body.count("{"))
    )
    if opening <= max_depth:
        return "", None
    too_deep = (
        f"message nested deeper than {max_depth} levels (CANVASFLOW_MESSAGE_MAX_DEPTH); a parameter "
        f"or output that deep cannot be handled"
    )
    raw = body if isinstance(body, bytes) else body.encode()
    return (too_deep if nesting(raw) > max_depth else ""), None


# Where a task's arguments hold its step's spec and its run header: the step task
# (incoming, spec, hdr), an item of a mapped step (spec, hdr, index, lane, upstream), a mapped
# step's collector (results, spec, hdr). A refused item or collector fails its mapped step.
_SPEC_AT = {compiler.STEP_TASK: (1, 2), compiler.ITEM_TASK: (0, 1), compiler.COLLECT_TASK: (1, 2)}


def _identify(task_name: str, body: bytes | str, decoded: Any) -> tuple[str, int, str, bool]:
    """(run id, epoch, step id, critical) of a canvasflow message, as far as it can be read."""
    run_id, epoch, step, critical = "", 0, "", True
    if isinstance(decoded, list) and decoded and isinstance(decoded[0], list):
        args = decoded[0]
        try:
            at = _SPEC_AT.get(task_name)
            if at is not None and len(args) > at[0]:
                spec = compiler.read_spec(args[at[0]])
                step, critical = str(spec["id"]), spec.get("critical", True) is not False
                hdr = args[at[1]] if len(args) > at[1] and args[at[1]] else _header_of(args[0])
            else:
                hdr = next(
                    (a for a in reversed(args) if isinstance(a, dict) and "run" in a), None
                ) or _header_of(args[0])
            if hdr:
                hdr = compiler.read_header(hdr)
                run_id, epoch = str(hdr["run"]), int(hdr["epoch"])
        except (TypeError, ValueError, KeyError, IndexError):
            pass
    if not run_id:
        raw = body if isinstance(body, bytes) else body.encode()
        m = _HEADER.search(raw[:DEAD_BODY_CAP])
        if m:
            run_id, epoch = m.group(1).decode(), int(m.group(2))
    return run_id, epoch, step, critical


def _header_of(incoming: Any) -> Any:
    if isinstance(incoming, dict):
        return incoming.get(compiler.HEADER)
    if isinstance(incoming, list):
        for item in incoming:
            if isinstance(item, dict) and compiler.HEADER in item:
                return item[compiler.HEADER]
    return None


class Guard:
    """Checks messages in the worker's main process and disposes of those it refuses."""

    def __init__(self, state: RunState, dispatcher: Dispatcher, settings: Settings) -> None:
        self.state = state
        self.dispatcher = dispatcher
        self.settings = settings
        self.hostname = ""

    def strategy(self, task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
        """A Celery task Strategy: Celery's default one behind the check."""
        inner = default_strategy(task, app, consumer, **kwargs)
        self.hostname = consumer.hostname
        max_depth, max_bytes = self.settings.message_max_depth, self.settings.message_max_bytes

        def task_message_handler(
            message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any
        ) -> Any:
            raw = message.body
            why, decoded = check(raw, max_depth, max_bytes) if raw is not None else ("", None)
            if why:
                return self.refuse(task.name, message, raw, decoded, why)
            return inner(message, body, ack, reject, callbacks, **kw)

        return task_message_handler

    def refuse(
        self, task_name: str, message: Any, raw: bytes | str, decoded: Any, why: str
    ) -> None:
        headers = getattr(message, "headers", None) or {}
        if decoded is None and len(raw) <= 4 * max(self.settings.message_max_bytes, DEAD_BODY_CAP):
            try:  # too big to run is not too big to read which step it was for
                decoded = json.loads(raw)
            except (ValueError, RecursionError):
                pass
        run_id, epoch, step, critical = _identify(task_name, raw, decoded)
        item = None
        if task_name == compiler.ITEM_TASK and isinstance(decoded, list) and decoded:
            args = decoded[0]
            if isinstance(args, list) and len(args) > 2 and isinstance(args[2], int):
                item = args[2] if args[2] >= 0 else None  # < 0: a lane's first, not claimed yet
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        record = {
            "task": task_name,
            "id": headers.get("id"),
            "reason": why,
            "run": run_id or None,
            "epoch": epoch or None,
            "step": step or None,
            "item": item,
            "worker": self.hostname,
            "at": time.time(),
            "size": len(raw),
            "headers": {k: headers.get(k) for k in ("root_id", "parent_id", "retries")},
            "delivery_info": {
                k: (getattr(message, "delivery_info", None) or {}).get(k)
                for k in ("exchange", "routing_key", "priority")
            },
            "body": text[:DEAD_BODY_CAP],
            "truncated": len(text) > DEAD_BODY_CAP,
        }
        log.error(
            "canvasflow: refused %s[%s] of run %s step %s: %s; dead-lettered to %s",
            task_name,
            record["id"],
            run_id or "?",
            step or "?",
            why,
            self.state.keys.dead_messages,
        )
        try:
            pipe = self.state.r.pipeline(transaction=False)
            pipe.rpush(self.state.keys.dead_messages, dumps(record))
            pipe.ltrim(self.state.keys.dead_messages, -DEAD_LIST_MAX, -1)
            pipe.execute()
        except Exception:
            # Not kept anywhere yet: hand the message back rather than lose it (it is refused
            # again, harmlessly, once Redis answers).
            log.exception(
                "canvasflow: could not dead-letter %s[%s]; handing it back", task_name, record["id"]
            )
            message.reject(requeue=True)
            return
        try:
            self.record_failure(run_id, epoch, step, critical, why, record)
        except Exception:
            log.exception(
                "canvasflow: could not record the refused message of run %s as a failure", run_id
            )
        message.ack()

    def record_failure(
        self, run_id: str, epoch: int, step: str, critical: bool, why: str, record: dict[str, Any]
    ) -> None:
        if not run_id:
            return
        whose = {
            compiler.ITEM_TASK: "the message of "
            + (f"item {record['item']}" if record.get("item") is not None else "an item"),
            compiler.COLLECT_TASK: "the message collecting its items",
        }.get(record["task"], "the step's message")
        error = f"the worker refused {whose}: {why}; kept in {self.state.keys.dead_messages}"
        if step:
            attempt = {
                "step": step,
                "attempt": 1,
                "status": "FAILED",
                "started_at": record["at"],
                "finished_at": time.time(),
                "worker": record["worker"],
                "task_id": record["id"],
                "error": error,
                "refused": True,
            }
            attempt["attempt"] = self.state.step(run_id, step, "attempts").attempts + 1
            if self.state.fail_killed_step(
                run_id, step, epoch, error=error, critical=critical, attempt=attempt
            ):
                # Celery will not continue this canvas past a message nobody ran: send what is left.
                self.dispatcher.redispatch(run_id, reason=f"step '{step}' message refused")
                return
        # Not a step's message (settle, compensation), or the step could not be failed: the run
        # cannot go on as dispatched; it ends FAILED with why.
        self.state.transition(run_id, Move.ABANDON, RunStatus.FAILED, fields={"error": error})
