"""Reads across runs in the hot state: the part of :class:`RunState` (runstate.py) that pages the
live runs for the dashboard and the CLI (``live_page``) and tells which runs hold a live step
lease (``leased``, the watchdog's question), each in one round trip."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.cluster import RedisCluster

from orchestrator.keys import Keys
from orchestrator.records import RunRecord, run_field_names, text


class LiveState:
    """Mixed into RunState: ``self.r``, ``self.keys`` and the scripts ``_leased`` and
    ``_list_live`` are RunState's."""

    r: Any
    keys: Keys
    _leased: Any
    _list_live: Any

    def leased(self, run_ids: Iterable[str]) -> set[str]:
        """The runs of ``run_ids`` with a RUNNING or COMPENSATING step that holds a live lease."""
        ids = list(run_ids)
        if isinstance(self.r, RedisCluster):  # a cluster pipeline refuses scripts: one by one
            return {
                rid
                for rid in ids
                if int(
                    self._leased(
                        keys=[self.keys.steps(rid), self.keys.items(rid)],
                        args=[self.keys.lease(rid, "")],
                    )
                )
            }
        pipe = self.r.pipeline(transaction=False)
        for rid in ids:
            self._leased(
                keys=[self.keys.steps(rid), self.keys.items(rid)],
                args=[self.keys.lease(rid, "")],
                client=pipe,
            )
        return {rid for rid, hit in zip(ids, pipe.execute(), strict=True) if int(hit)}

    def live_page(
        self,
        run_ids: list[str],
        attrs: Iterable[str],
        *,
        index: str | None = None,
        low: str = "-inf",
        high: str = "+inf",
        window: int = 0,
    ) -> tuple[dict[str, tuple[RunRecord, list[str]]], list[tuple[RunRecord, list[str]]]]:
        """(each of ``run_ids`` still in Redis: its record with ``attrs`` and its current steps;
        the runs of ``index`` (default: every run) scored between ``low`` and ``high`` that are
        not among ``run_ids``, newest first, at most ``window``): one round trip."""
        names = run_field_names(["status", *(a for a in attrs if a != "status")])
        # The key templates around a probe id: "<head><id><tail>" (keys.py tags the id).
        probe = "\x00"
        head, run_tail = self.keys.run(probe).split(probe)
        steps_tail = self.keys.steps(probe).split(probe)[1]
        page, extra = self._list_live(
            keys=[index or self.keys.runs],
            args=[
                head,
                run_tail,
                steps_tail,
                low,
                high,
                window,
                len(names),
                *names,
                *run_ids,
            ],
        )

        def record(rid: str, values: list[Any], current: list[Any]) -> tuple[RunRecord, list[str]]:
            run = RunRecord.from_hash(rid, dict(zip(names, values, strict=True)))
            return run, sorted(text(c) for c in current)

        out = {
            rid: record(rid, values, current)
            for rid, (values, current) in zip(run_ids, page, strict=True)
            if values[0] is not None
        }
        return out, [record(text(rid), values, current) for rid, values, current in extra]
