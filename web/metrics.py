"""``/metrics`` (Prometheus text format), ``/healthz`` and ``/readyz``.

Every value is computed at scrape time from the audit store (SQL) and Redis by one custom
collector registered in a private ``CollectorRegistry`` per app — no global state, and the
counters are exactly what the store holds (so several web processes report the same numbers).
Counters are totals over the store's retained history: a ``canvasflow db prune`` lowers them,
which Prometheus treats as a counter reset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from orchestrator.audit import queries
from orchestrator.fleet.inspect import broker_queue_lengths, known_queues

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

RUN_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0)
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "COMPENSATION_FAILED")


def _points(h: queries.Histogram, bounds: Sequence[float]) -> list[tuple[str, float]]:
    """A histogram's cumulative buckets as Prometheus writes them."""
    return [(repr(float(b)), float(n)) for b, n in zip(bounds, h.at_most, strict=True)] + [
        ("+Inf", float(h.count))
    ]


class CanvasflowCollector:
    """Runs, steps, queues, workers, recorder lag and SLA breaches, read when scraped."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        e = self.app.extensions["canvasflow"]
        fleet = self.app.extensions.get("canvasflow_fleet")
        errors = GaugeMetricFamily(
            "canvasflow_scrape_error",
            "1 when a source could not be read this scrape",
            labels=["source"],
        )
        sources = (
            ("store", self._store),
            ("redis", self._redis),
            ("slots", self._slots),
            ("tasks", self._tasks),
        )
        for source, fn in sources:
            try:
                yield from fn(e, fleet)
                errors.add_metric([source], 0)
            except Exception as exc:  # noqa: BLE001 - a scrape never fails as a whole
                log.warning("metrics: %s not readable: %s", source, exc)
                errors.add_metric([source], 1)
        yield errors

    def _store(self, e: Any, fleet: Any) -> Iterator[Metric]:
        if e.store is None:
            return
        submitted = CounterMetricFamily(
            "canvasflow_runs_submitted", "Runs recorded in the audit store", labels=["workflow"]
        )
        started = CounterMetricFamily(
            "canvasflow_runs_started",
            "Runs that started, by how they were triggered (manual, api, schedule, event...)",
            labels=["workflow", "trigger"],
        )
        finished = CounterMetricFamily(
            "canvasflow_runs_finished",
            "Runs that reached a final status",
            labels=["workflow", "status"],
        )
        active = GaugeMetricFamily(
            "canvasflow_runs_active", "Runs not final yet, by status", labels=["workflow", "status"]
        )
        sla = CounterMetricFamily(
            "canvasflow_sla_breaches",
            "Finished runs that missed their SLA "
            "(not COMPLETED within sla_seconds; cancelled runs excluded)",
            labels=["workflow"],
        )
        run_h = HistogramMetricFamily(
            "canvasflow_run_duration_seconds", "Duration of finished runs", labels=["workflow"]
        )
        step_h = HistogramMetricFamily(
            "canvasflow_step_duration_seconds",
            "Duration of step attempts",
            labels=["plugin", "method"],
        )
        retries = CounterMetricFamily(
            "canvasflow_step_retries", "Step attempts after the first", labels=["plugin", "method"]
        )
        failures = CounterMetricFamily(
            "canvasflow_step_failures", "Steps that ended FAILED", labels=["plugin", "method"]
        )
        attempt_failures = CounterMetricFamily(
            "canvasflow_step_attempt_failures",
            "Step attempts that failed (including those retried)",
            labels=["plugin", "method"],
        )
        totals = queries.metric_totals(e.store, run_bounds=RUN_BUCKETS, step_bounds=STEP_BUCKETS)
        per_wf: dict[str, list[int]] = {}
        per_status: dict[tuple[str, str], int] = {}
        per_trigger: dict[tuple[str, str], int] = {}
        for t in totals.runs:
            acc = per_wf.setdefault(t.workflow, [0, 0])
            acc[0] += t.runs
            acc[1] += t.sla_breached
            per_status[(t.workflow, t.status)] = per_status.get((t.workflow, t.status), 0) + t.runs
            key = (t.workflow, t.trigger)
            per_trigger[key] = per_trigger.get(key, 0) + t.started
        for (wf, status), n in sorted(per_status.items()):
            (finished if status in FINAL else active).add_metric([wf, status], n)
        for (wf, trigger), n in sorted(per_trigger.items()):
            started.add_metric([wf, trigger], n)
        for wf, (n, n_breached) in sorted(per_wf.items()):
            submitted.add_metric([wf], n)
            sla.add_metric([wf], n_breached)
        for h in totals.run_durations:
            run_h.add_metric(list(h.labels), _points(h, RUN_BUCKETS), h.total)
        for h in totals.step_durations:
            step_h.add_metric(list(h.labels), _points(h, STEP_BUCKETS), h.total)
        for (plugin, method), (n_retry, n_failed) in totals.attempts.items():
            retries.add_metric([plugin, method], n_retry)
            attempt_failures.add_metric([plugin, method], n_failed)
        for (plugin, method), n in totals.failed_steps.items():
            failures.add_metric([plugin, method], n)
        yield from (
            submitted,
            started,
            finished,
            active,
            sla,
            run_h,
            step_h,
            retries,
            failures,
            attempt_failures,
        )

    def _redis(self, e: Any, fleet: Any) -> Iterator[Metric]:
        client = e.client
        catalog = client.fleet()
        online = {h: bool(v.get("online")) for h, v in catalog.items()}
        if fleet is not None:
            from orchestrator.fleet.events import worker_states

            for h, st in worker_states(client.redis, fleet.workers_key).items():
                online[h] = st["online"]
        workers = GaugeMetricFamily(
            "canvasflow_workers_online", "Workers online (heartbeat within its window)"
        )
        workers.add_metric([], sum(online.values()))
        per_worker = GaugeMetricFamily(
            "canvasflow_worker_up", "1 when the worker is online", labels=["worker"]
        )
        for h, up in sorted(online.items()):
            per_worker.add_metric([h], int(up))
        qlen = GaugeMetricFamily(
            "canvasflow_queue_length",
            "Messages waiting in the broker queue (all priority sub-queues)",
            labels=["queue"],
        )
        qpri = GaugeMetricFamily(
            "canvasflow_queue_length_by_priority",
            "Messages waiting, per priority step",
            labels=["queue", "priority"],
        )
        for q, v in broker_queue_lengths(
            e.settings,
            client.redis,
            client.celery,
            known_queues(catalog, e.settings.default_queue),
        ).items():
            qlen.add_metric([q], v["total"])
            for p, n in v["by_priority"].items():
                qpri.add_metric([q, p], n)
        lag = GaugeMetricFamily(
            "canvasflow_recorder_lag",
            "Event stream entries not yet delivered to the consumer group (XINFO GROUPS lag)",
            labels=["group"],
        )
        pending = GaugeMetricFamily(
            "canvasflow_recorder_pending",
            "Entries delivered to the group but not acknowledged (not committed to SQL yet)",
            labels=["group"],
        )
        uncommitted = GaugeMetricFamily(
            "canvasflow_recorder_uncommitted",
            "lag + pending: entries the recorder has not committed",
            labels=["group"],
        )
        length = GaugeMetricFamily("canvasflow_event_stream_length", "Entries in the event stream")
        try:
            groups = client.redis.xinfo_groups(client.keys.events)
            length.add_metric([], int(client.redis.xlen(client.keys.events)))
        except Exception:  # noqa: BLE001 - no stream yet
            groups = []
            length.add_metric([], 0)
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
            n_lag = g.get("lag")
            n_lag = int(n_lag) if n_lag is not None else 0
            lag.add_metric([name], n_lag)
            pending.add_metric([name], int(g["pending"]))
            uncommitted.add_metric([name], n_lag + int(g["pending"]))
        yield from (workers, per_worker, qlen, qpri, lag, pending, uncommitted, length)

    def _slots(self, e: Any, fleet: Any) -> Iterator[Metric]:
        """Concurrency limits: per workflow and key, the limit, the slots held and the runs
        waiting (only workflows with a group in use: one pipelined EXISTS for the registry)."""
        client = e.client
        labels = ["workflow", "key"]
        limit = GaugeMetricFamily(
            "canvasflow_concurrency_limit", "The limit of a concurrency group", labels=labels
        )
        in_use = GaugeMetricFamily(
            "canvasflow_concurrency_slots_in_use",
            "Runs holding a slot of a concurrency group",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            "canvasflow_concurrency_waiting",
            "Runs waiting for a slot of a concurrency group (PENDING, 'waiting for a slot')",
            labels=labels,
        )
        wids = client.workflows()
        pipe = client.redis.pipeline(transaction=False)
        for wid in wids:
            pipe.exists(client.keys.conc_index(wid))
        for wid, used in zip(wids, pipe.execute() if wids else [], strict=True):
            if not used:
                continue
            for g in client.concurrency(wid):
                key = [wid, str(g["key"])]
                limit.add_metric(key, int(g["limit"]))
                in_use.add_metric(key, int(g["in_use"]))
                waiting.add_metric(key, int(g["waiting"]))
        yield from (limit, in_use, waiting)

    def _tasks(self, e: Any, fleet: Any) -> Iterator[Metric]:
        if fleet is None:
            return
        if fleet.engine is not None:
            from orchestrator.fleet.events import counts

            by_state: dict[str, int] = {}
            for states in counts(fleet.engine).values():
                for s, n in states.items():
                    by_state[s] = by_state.get(s, 0) + n
            g = GaugeMetricFamily(
                "canvasflow_celery_tasks",
                "Celery tasks in the task history by state",
                labels=["state"],
            )
            for s, n in sorted(by_state.items()):
                g.add_metric([s], n)
            yield g
        mon = fleet.monitor
        if mon is not None:
            yield CounterMetricFamily(
                "canvasflow_task_events_dropped",
                "Celery events dropped (queue full)",
                value=mon.dropped,
            )
            yield GaugeMetricFamily(
                "canvasflow_task_events_queued",
                "Celery events received but not yet written to the task history (bounded queue)",
                value=mon.queue.qsize(),
            )
            yield GaugeMetricFamily(
                "canvasflow_event_receiver_connected",
                "1 when the Celery event receiver is connected",
                value=int(mon.connected),
            )


def register(app: Flask) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CanvasflowCollector(app))  # type: ignore[arg-type]
    app.extensions["canvasflow_metrics"] = registry
    app.register_blueprint(bp)


@bp.route("/metrics")
def metrics() -> Response:
    return Response(
        generate_latest(current_app.extensions["canvasflow_metrics"]), mimetype=CONTENT_TYPE_LATEST
    )


@bp.route("/healthz")
def healthz() -> Any:
    return {"status": "ok", "time": time.time()}


@bp.route("/readyz")
def readyz() -> Any:
    """Redis, the SQL store and at least one online worker, each reported; 503 if any fails."""
    e = current_app.extensions["canvasflow"]
    checks: dict[str, dict[str, Any]] = {}
    try:
        e.client.redis.ping()
        checks["redis"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = {"ok": False, "error": str(exc)}
    if e.store is None:
        checks["store"] = {"ok": True, "detail": "not configured"}
    else:
        try:
            e.store.check()
            checks["store"] = {"ok": True}
        except Exception as exc:  # noqa: BLE001
            checks["store"] = {"ok": False, "error": str(exc)}
    try:
        fleet = current_app.extensions.get("canvasflow_fleet")
        names = (
            [w["name"] for w in fleet.workers(live=False) if w["online"]]
            if fleet is not None
            else [h for h, v in e.client.fleet().items() if v.get("online")]
        )
        checks["workers"] = {"ok": bool(names), "online": len(names)}
        if not names:
            checks["workers"]["error"] = "no worker online"
    except Exception as exc:  # noqa: BLE001
        checks["workers"] = {"ok": False, "error": str(exc)}
    ok = all(c["ok"] for c in checks.values())
    return {"ready": ok, "checks": checks}, 200 if ok else 503
