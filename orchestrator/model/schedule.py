"""The scheduling maths: when a schedule trigger fires. Pure functions of a trigger and instants
(no clock, no I/O), so they are tested by tables (tests/test_schedule_math.py).

Every instant here is an aware ``datetime`` in UTC.

- ``every: N`` fires at the instants that are whole multiples of N seconds since
  1970-01-01T00:00Z (so every scheduler computes the same fire times).
- ``cron`` is read on the wall clock of ``timezone`` (croniter iterates naive wall times;
  zoneinfo maps them to instants). Daylight saving time neither skips nor doubles a run:
  * a wall time that does not exist (clocks jump 02:00 -> 03:00) fires at that time read with
    the offset before the jump (02:30 fires at 03:30 new time); fire times landing on the same
    instant are one fire time;
  * a wall time that happens twice (clocks go back 03:00 -> 02:00) fires once, at its first
    occurrence — unless the cron's hour field is ``*`` (it fires every hour), then it fires at
    both, as the clock runs through that hour twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

from orchestrator.model.triggers import Trigger

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Wider than any daylight-saving shift in the tz database (Antarctica/Troll's 2 h is the
# largest): every wall time whose instant can fall next to a given instant lies within it.
MARGIN = timedelta(hours=3)
MAX_SCAN = 100_000  # wall times looked at for one answer; a valid cron never needs this many


class ScheduleError(ValueError):
    """A trigger that is not a schedule, or a cron that runs away (never for validated ones)."""


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ScheduleError("instants must be timezone-aware")
    return t.astimezone(UTC)


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=256)
def _hourly(cron: str) -> bool:
    """Whether the cron fires in every hour (its hour field is ``*``)."""
    return croniter(cron).expanded[1] == ["*"]


def _instants(wall: datetime, tz: ZoneInfo, both_folds: bool) -> list[datetime]:
    """The instants at which a naive wall time ``wall`` of ``tz`` fires."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if not both_folds:
        return [first]
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    exists = first.astimezone(tz).replace(tzinfo=None) == wall
    if exists and second != first:  # a wall time the clock shows twice
        return [first, second]
    return [first]


def _walls(cron: str, start: datetime, forward: bool) -> Iterator[datetime]:
    it = croniter(cron, start)
    for _ in range(MAX_SCAN):
        yield it.get_next(datetime) if forward else it.get_prev(datetime)
    raise ScheduleError(f"cron {cron!r}: no fire time within {MAX_SCAN} steps")


def next_fire(trigger: Trigger, after: datetime) -> datetime:
    """The first fire time of ``trigger`` strictly after ``after``."""
    after = _utc(after)
    if trigger.every is not None:
        n = (after - EPOCH) // timedelta(seconds=trigger.every)
        return EPOCH + timedelta(seconds=trigger.every) * (n + 1)
    if trigger.cron is None:
        raise ScheduleError(f"trigger {trigger.name!r} is not a schedule")
    quick = _quick_next(trigger.cron, _zone(trigger.timezone), after)
    return quick if quick is not None else scan_next(trigger, after)


def scan_next(trigger: Trigger, after: datetime) -> datetime:
    """next_fire by the scan of every wall time within MARGIN (what the quick path shortcuts)."""
    assert trigger.cron is not None
    tz = _zone(trigger.timezone)
    both = _hourly(trigger.cron)
    start = after.astimezone(tz).replace(tzinfo=None) - MARGIN
    best: datetime | None = None
    best_wall: datetime | None = None
    for wall in _walls(trigger.cron, start, forward=True):
        if best_wall is not None and wall > best_wall + 2 * MARGIN:
            break
        for t in _instants(wall, tz, both):
            if t > after and (best is None or t < best):
                best, best_wall = t, wall
    assert best is not None
    return best


def _steady(tz: ZoneInfo, t: datetime) -> bool:
    """No change of UTC offset within MARGIN of ``t`` (at most one change fits in that span)."""
    return (t - MARGIN).astimezone(tz).utcoffset() == (t + MARGIN).astimezone(tz).utcoffset()


def _quick_next(cron: str, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The next fire time without the scan, when no offset change lies near ``after`` or near
    the answer (then no wall time can be skipped, doubled or out of order there), else None.
    Nearly always: a minutely cron costs one croniter step, not the few hundred of the scan."""
    if not _steady(tz, after):
        return None
    wall = croniter(cron, after.astimezone(tz).replace(tzinfo=None)).get_next(datetime)
    t = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if t <= after or not _steady(tz, t):
        return None
    return t


def prev_fires(trigger: Trigger, until: datetime, after: datetime, n: int) -> list[datetime]:
    """The last ``n`` fire times in ``(after, until]``, oldest first."""
    until, after = _utc(until), _utc(after)
    if n <= 0 or until <= after:
        return []
    if trigger.every is not None:
        step = timedelta(seconds=trigger.every)
        last = EPOCH + step * ((until - EPOCH) // step)
        out: list[datetime] = []
        t = last
        while t > after and len(out) < n:
            out.append(t)
            t -= step
        return out[::-1]
    if trigger.cron is None:
        raise ScheduleError(f"trigger {trigger.name!r} is not a schedule")
    tz = _zone(trigger.timezone)
    both = _hourly(trigger.cron)
    start = until.astimezone(tz).replace(tzinfo=None) + MARGIN
    found: set[datetime] = set()
    floor_wall = after.astimezone(tz).replace(tzinfo=None) - MARGIN
    for wall in _walls(trigger.cron, start, forward=False):
        if wall < floor_wall:
            break
        if len(found) >= n and wall < min(found).astimezone(tz).replace(tzinfo=None) - 2 * MARGIN:
            break
        for t in _instants(wall, tz, both):
            if after < t <= until:
                found.add(t)
    return sorted(found)[-n:]


def fire_times(trigger: Trigger, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """Fire times in ``(after, until]``, oldest first, at most ``limit`` (the oldest)."""
    out: list[datetime] = []
    t = _utc(after)
    until = _utc(until)
    while len(out) < limit:
        t = next_fire(trigger, t)
        if t > until:
            break
        out.append(t)
    return out


@dataclass(frozen=True)
class Due:
    """What a scheduler does at ``now`` for one schedule: the fire times to start (oldest
    first), how many it skips, and the new cursor (the latest fire time dealt with)."""

    fire: tuple[datetime, ...]
    skipped: int
    cursor: datetime


def due(
    trigger: Trigger,
    cursor: datetime | None,
    now: datetime,
    *,
    grace: float,
    catchup_max: int,
) -> Due:
    """The fire times in ``(cursor, now]`` and what to do with them.

    ``cursor`` None (a schedule seen for the first time): nothing in the past fires.
    A fire time at most ``grace`` seconds old is on time (a scheduler that is busy, restarted or
    lost Redis for a moment still fires it). Older ones were missed while no scheduler ran:
    ``catchup: false`` skips them; ``catchup: true`` fires the latest ``catchup_max`` of them,
    oldest first, and skips the rest."""
    now = _utc(now)
    if cursor is None:
        return Due((), 0, now)
    cursor = _utc(cursor)
    if cursor >= now:
        return Due((), 0, cursor)
    horizon = now - timedelta(seconds=grace)
    keep = max(catchup_max, 0) if trigger.catchup else 0
    # On-time fire times: in (max(cursor, horizon), now]. Bounded by the grace window.
    on_time_from = max(cursor, horizon)
    on_time = fire_times(trigger, on_time_from, now, MAX_SCAN)
    late: list[datetime] = []
    skipped = 0
    if cursor < horizon:
        late = prev_fires(trigger, horizon, cursor, keep) if keep else []
        skipped = _count(trigger, cursor, horizon) - len(late)
    return Due(tuple(late + on_time), max(skipped, 0), now)


def _count(trigger: Trigger, after: datetime, until: datetime, cap: int = 1_000_000) -> int:
    """How many fire times lie in ``(after, until]``: exact for `every`; for cron at most 1000
    are counted (the figure is for the log, and counting a week of a minutely cron would hold
    the scheduler up)."""
    if trigger.every is not None:
        step = timedelta(seconds=trigger.every)
        return max(0, (until - EPOCH) // step - (after - EPOCH) // step)
    return len(fire_times(trigger, after, until, min(cap, 1000)))
