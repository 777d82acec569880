"""Reads of the audit store: the only way the CLI and the web read its tables.

Every function takes an :class:`AuditStore` and returns frozen dataclasses or plain dicts, so
callers never see SQLAlchemy rows or build SQL themselves (tests/test_layout.py holds the web to
this). ``runs`` answers about runs and their records, ``dashboard`` the dashboard's run list page
and tab counts, ``analytics`` the aggregates; ``common`` holds what they share.
"""

from __future__ import annotations

from orchestrator.audit.queries.analytics import (
    Analytics,
    Histogram,
    MetricTotals,
    RunTally,
    StepStats,
    WorkflowStats,
    analytics,
    metric_totals,
)
from orchestrator.audit.queries.common import (
    ENDED,
    FAILED,
    FINAL,
    decode_cursor,
    encode_cursor,
    parse_duration,
    percentile,
)
from orchestrator.audit.queries.dashboard import (
    ACTIVE,
    COMPLETED,
    PENDING,
    SETTLED_STEPS,
    UNSUCCESSFUL,
    RunListPage,
    RunSelection,
    run_list_page,
    tab_counts,
)
from orchestrator.audit.queries.runs import (
    AttemptRecord,
    LogLine,
    Page,
    PruneResult,
    RecordedEvents,
    RunDetail,
    RunSummary,
    StepRecord,
    audit_entries,
    children_of,
    events_after,
    get_run,
    list_runs,
    logs,
    prune,
    recent_logs,
    recorded_events,
    run_detail,
    step_progress,
)

__all__ = [
    "ACTIVE",
    "COMPLETED",
    "ENDED",
    "FAILED",
    "FINAL",
    "PENDING",
    "SETTLED_STEPS",
    "UNSUCCESSFUL",
    "Analytics",
    "AttemptRecord",
    "Histogram",
    "LogLine",
    "MetricTotals",
    "Page",
    "PruneResult",
    "RecordedEvents",
    "RunDetail",
    "RunListPage",
    "RunSelection",
    "RunSummary",
    "RunTally",
    "StepRecord",
    "StepStats",
    "WorkflowStats",
    "analytics",
    "audit_entries",
    "children_of",
    "decode_cursor",
    "encode_cursor",
    "events_after",
    "get_run",
    "list_runs",
    "logs",
    "metric_totals",
    "parse_duration",
    "percentile",
    "prune",
    "recent_logs",
    "recorded_events",
    "run_detail",
    "run_list_page",
    "step_progress",
    "tab_counts",
]
