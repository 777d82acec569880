"""The workflow registry, kept in the audit store as well as in Redis.

``Client.register`` writes a version to Redis only (the workers, the scheduler and the event
trigger index read it there). A Redis that lost everything lost the registry with it: schedules
stopped firing, event triggers matched nothing and sub-workflow steps failed "not registered",
silently, until someone registered every workflow again. So the recorder copies each version into
``cf_registry`` (a version's body never changes once registered), checking the registry's
generation counter every few seconds, and ``canvasflow recover`` writes back the versions Redis
lacks (docs/operations.md, "Recovering runs").
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from orchestrator.audit.models import registry
from orchestrator.audit.sqlbatch import insert_ignore
from orchestrator.audit.store import AuditStore
from orchestrator.keys import Keys
from orchestrator.records import text

log = logging.getLogger(__name__)

COPY_INTERVAL = 2.0  # seconds between two looks at the registry's generation counter


def copy(store: AuditStore, r: Any, keys: Keys) -> int:
    """Copy the versions Redis has and the store lacks into the store (a version's body never
    changes, so those already there are not read again); returns how many were copied."""
    with store.connect() as conn:
        have = {(w, v) for w, v in conn.execute(select(registry.c.workflow_id, registry.c.version))}
    wids = sorted(text(w) for w in r.smembers(keys.workflows))
    pipe = r.pipeline(transaction=False)
    for wid in wids:
        pipe.lrange(keys.workflow_versions(wid), 0, -1)
    rows: list[dict[str, Any]] = []
    for wid, versions in zip(wids, pipe.execute(), strict=True):
        missing = [
            (pos, v) for pos, v in enumerate(text(x) for x in versions) if (wid, v) not in have
        ]
        if not missing:
            continue
        bodies = r.hmget(keys.workflow(wid), [v for _, v in missing])
        rows.extend(
            {
                "workflow_id": wid,
                "version": v,
                "position": pos,
                "body": text(body),
                "copied_at": time.time(),
            }
            for (pos, v), body in zip(missing, bodies, strict=True)
            if body is not None
        )
    if rows:
        with store.begin() as conn:
            insert_ignore(conn, registry, rows)
    return len(rows)


def restore(store: AuditStore, r: Any, keys: Keys) -> list[tuple[str, str]]:
    """Write back the versions the store has and Redis lacks, in each workflow's order (after
    any Redis has already: one registered again by hand stays); returns (workflow, version)."""
    with store.connect() as conn:
        rows = conn.execute(
            select(registry.c.workflow_id, registry.c.version, registry.c.body).order_by(
                registry.c.workflow_id, registry.c.position
            )
        ).all()
    restored: list[tuple[str, str]] = []
    listed: dict[str, set[str]] = {}
    for wid, version, body in rows:
        if wid not in listed:
            listed[wid] = {text(v) for v in r.lrange(keys.workflow_versions(wid), 0, -1)}
        if version in listed[wid]:
            continue  # Redis has it (registered again by hand): its body and place stay
        try:
            json.loads(body)
        except ValueError:
            log.error("registry: version %s of %s in the store is not JSON; skipped", version, wid)
            continue
        pipe = r.pipeline(transaction=True)  # all three or none
        pipe.hsetnx(keys.workflow(wid), version, body)
        pipe.rpush(keys.workflow_versions(wid), version)
        pipe.sadd(keys.workflows, wid)
        pipe.execute()
        listed[wid].add(version)
        restored.append((wid, version))
    if restored:
        r.incr(keys.workflows_generation)  # event-trigger indexes rebuild (publish.py)
    return restored


@dataclass
class RegistryCopier:
    """Called from the recorder's loop: copies the registry when its generation moved."""

    store: AuditStore
    r: Any
    keys: Keys
    interval: float = COPY_INTERVAL
    _seen: bytes | str | None = None
    _copied: bool = False
    _last: float = 0.0

    def maybe_copy(self) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        try:
            gen = self.r.get(self.keys.workflows_generation)
            if self._copied and gen == self._seen:
                return
            n = copy(self.store, self.r, self.keys)
            self._seen, self._copied = gen, True
            if n:
                log.info("registry: %d workflow version(s) copied to the audit store", n)
        except Exception as exc:  # recording events matters more: try again next time
            log.warning("registry: could not copy the workflow registry to the store: %s", exc)
