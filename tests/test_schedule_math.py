"""The scheduling maths (orchestrator/model/schedule.py) by tables: fire times of cron and
`every` schedules, both daylight-saving transitions of Europe/Berlin (2026-03-29 02:00 -> 03:00,
2026-10-25 03:00 -> 02:00) and of America/New_York, catchup and grace. Pure: the clock is a
parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.model.schedule import due, fire_times, next_fire, prev_fires, scan_next
from orchestrator.model.triggers import Trigger


def z(text: str) -> datetime:
    """'2026-03-29 01:30' in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def cron(expr: str, tz: str = "UTC", catchup: bool = False) -> Trigger:
    return Trigger(kind="schedule", name="s", cron=expr, timezone=tz, catchup=catchup)


def every(seconds: int, catchup: bool = False) -> Trigger:
    return Trigger(kind="schedule", name="s", every=seconds, catchup=catchup)


def days(trigger: Trigger, start: str, end: str) -> list[str]:
    return [t.strftime("%m-%d %H:%M") for t in fire_times(trigger, z(start), z(end), 1000)]


@pytest.mark.parametrize(
    ("trigger", "start", "end", "expected"),
    [
        # Spring forward in Berlin (2026-03-29, 02:00 CET -> 03:00 CEST = 01:00Z): 02:30 does not
        # exist that day; the daily run fires at 03:30 CEST (01:30Z), once, not skipped.
        (
            cron("30 2 * * *", "Europe/Berlin"),
            "2026-03-27 12:00",
            "2026-03-31 12:00",
            ["03-28 01:30", "03-29 01:30", "03-30 00:30", "03-31 00:30"],
        ),
        # 02:00 does not exist either: it fires when the clock jumps (03:00 CEST = 01:00Z).
        (
            cron("0 2 * * *", "Europe/Berlin"),
            "2026-03-28 12:00",
            "2026-03-30 12:00",
            ["03-29 01:00", "03-30 00:00"],
        ),
        # A daily run at a time that exists is unaffected.
        (
            cron("0 4 * * *", "Europe/Berlin"),
            "2026-03-28 00:00",
            "2026-03-30 12:00",
            ["03-28 03:00", "03-29 02:00", "03-30 02:00"],
        ),
        # Fall back in Berlin (2026-10-25, 03:00 CEST -> 02:00 CET = 01:00Z): 02:30 happens twice;
        # the daily run fires once, at the first (00:30Z), not twice.
        (
            cron("30 2 * * *", "Europe/Berlin"),
            "2026-10-23 12:00",
            "2026-10-27 12:00",
            ["10-24 00:30", "10-25 00:30", "10-26 01:30", "10-27 01:30"],
        ),
        # An hourly cron runs through the repeated hour twice (the clock shows it twice) ...
        (
            cron("0 * * * *", "Europe/Berlin"),
            "2026-10-24 22:30",
            "2026-10-25 03:00",
            ["10-24 23:00", "10-25 00:00", "10-25 01:00", "10-25 02:00", "10-25 03:00"],
        ),
        # ... and on the spring day it loses no instant and doubles none.
        (
            cron("0 * * * *", "Europe/Berlin"),
            "2026-03-28 22:30",
            "2026-03-29 03:00",
            ["03-28 23:00", "03-29 00:00", "03-29 01:00", "03-29 02:00", "03-29 03:00"],
        ),
        (
            cron("*/30 * * * *", "Europe/Berlin"),
            "2026-03-29 00:00",
            "2026-03-29 02:00",
            ["03-29 00:30", "03-29 01:00", "03-29 01:30", "03-29 02:00"],
        ),
        # New York: spring forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z), fall back
        # 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
        (
            cron("30 2 * * *", "America/New_York"),
            "2026-03-07 00:00",
            "2026-03-09 23:00",
            ["03-07 07:30", "03-08 07:30", "03-09 06:30"],
        ),
        (
            cron("30 1 * * *", "America/New_York"),
            "2026-10-31 00:00",
            "2026-11-02 23:00",
            ["10-31 05:30", "11-01 05:30", "11-02 06:30"],
        ),
        # UTC and aliases.
        (cron("@daily"), "2026-01-01 00:00", "2026-01-03 00:00", ["01-02 00:00", "01-03 00:00"]),
        (
            cron("0 9 * * 1-5"),
            "2026-12-04 00:00",
            "2026-12-08 00:00",
            ["12-04 09:00", "12-07 09:00"],
        ),
        # every: whole multiples of N seconds since the epoch.
        (
            every(3600),
            "2026-01-01 00:30",
            "2026-01-01 03:00",
            ["01-01 01:00", "01-01 02:00", "01-01 03:00"],
        ),
    ],
)
def test_fire_times(trigger: Trigger, start: str, end: str, expected: list[str]) -> None:
    assert days(trigger, start, end) == expected


def test_next_fire_is_strictly_after() -> None:
    assert next_fire(every(2), z("2026-01-01 00:00:00")) == z("2026-01-01 00:00:02")
    assert next_fire(every(2), z("2026-01-01 00:00:01.5")) == z("2026-01-01 00:00:02")
    assert next_fire(cron("0 2 * * *"), z("2026-01-01 02:00")) == z("2026-01-02 02:00")


@pytest.mark.parametrize(
    ("trigger", "until", "after", "n", "expected"),
    [
        (
            every(10),
            "2026-01-01 00:01:00",
            "2026-01-01 00:00:00",
            3,
            ["00:00:40", "00:00:50", "00:01:00"],
        ),
        (every(10), "2026-01-01 00:00:25", "2026-01-01 00:00:00", 9, ["00:00:10", "00:00:20"]),
        (
            cron("0 * * * *", "Europe/Berlin"),
            "2026-10-25 02:30",
            "2026-10-24 00:00",
            3,
            ["00:00:00", "01:00:00", "02:00:00"],
        ),
        (
            cron("30 2 * * *", "Europe/Berlin"),
            "2026-10-26 12:00",
            "2026-10-20 00:00",
            2,
            ["00:30:00", "01:30:00"],
        ),
    ],
)
def test_prev_fires_are_the_latest_oldest_first(
    trigger: Trigger, until: str, after: str, n: int, expected: list[str]
) -> None:
    got = prev_fires(trigger, z(until), z(after), n)
    assert [t.strftime("%H:%M:%S") for t in got] == expected
    assert got == sorted(got)


NOW = z("2026-06-01 12:00:00")


@pytest.mark.parametrize(
    ("trigger", "cursor", "fire", "skipped"),
    [
        # First sight of a schedule: nothing in the past fires.
        (every(2, catchup=True), None, [], 0),
        # On time (within the 30 s grace): fires, whatever catchup says.
        (every(2), NOW - timedelta(seconds=5), ["11:59:56", "11:59:58", "12:00:00"], 0),
        # Missed for 10 minutes, catchup false: only the on-time ones fire (the last 30 s).
        (every(60), NOW - timedelta(minutes=10), ["12:00:00"], 9),
        # catchup true: the latest 3 missed ones too, oldest first; the rest is skipped.
        (
            every(60, catchup=True),
            NOW - timedelta(minutes=10),
            ["11:57:00", "11:58:00", "11:59:00", "12:00:00"],
            6,
        ),
        (cron("0 * * * *", catchup=True), NOW - timedelta(hours=2), ["11:00:00", "12:00:00"], 0),
        (cron("0 * * * *"), NOW - timedelta(hours=2), ["12:00:00"], 1),
        # A cursor in the future (another scheduler's clock): nothing, the cursor stays.
        (every(2), NOW + timedelta(seconds=5), [], 0),
    ],
)
def test_due(trigger: Trigger, cursor: datetime | None, fire: list[str], skipped: int) -> None:
    d = due(trigger, cursor, NOW, grace=30, catchup_max=3)
    assert [t.strftime("%H:%M:%S") for t in d.fire] == fire
    assert d.skipped == skipped
    assert d.cursor == max(NOW, cursor or NOW)


def test_due_is_bounded_after_a_long_outage() -> None:
    # A year without a scheduler on an every-second schedule: a bounded answer, not 31 million.
    d = due(every(1, catchup=True), NOW - timedelta(days=365), NOW, grace=5, catchup_max=10)
    assert len(d.fire) == 15 and d.skipped == 365 * 86400 - 15


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(every(2), datetime(2026, 1, 1))


@pytest.mark.parametrize("expr", ["30 2 * * *", "*/7 1-3 * * *", "0 * * * *", "@daily"])
@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York", "UTC"])
def test_the_quick_path_agrees_with_the_scan_around_both_transitions(expr: str, tz: str) -> None:
    trigger = cron(expr, tz)
    for day in ("2026-03-28 12:00", "2026-10-24 12:00", "2026-03-07 12:00", "2026-10-31 12:00"):
        t = z(day)
        for _ in range(36 * 60 // 29):  # a day and a half, every 29 minutes
            assert next_fire(trigger, t) == scan_next(trigger, t), (expr, tz, t)
            t += timedelta(minutes=29)
