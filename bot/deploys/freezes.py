"""Freeze windows in a named time zone: when a weekly window or a list of
whole days covers a moment.

Everything is evaluated in the zone's own wall-clock time and turned into
exact instants, so a window that ends "Mon 00:00" ends at that local
midnight whether the offset that day is +01:00 or +02:00, and a window
never covers the hour a DST change repeats twice. Pure functions over
``zoneinfo``: the config models (``bot.config.Freeze``) call them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MINUTES_PER_DAY = 24 * 60
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEK_TIME = re.compile(r"^\s*([A-Za-z]+)\s+(\d{1,2}):(\d{2})\s*$")


def zone_named(name: str) -> ZoneInfo:
    """The IANA zone ``name``.

    Raises:
        ValueError: no such zone, with what to write instead.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone; use an IANA name such as Europe/Berlin or UTC") from None


def parse_week_time(value: object) -> int:
    """Minutes since Monday 00:00 of ``"Fri 15:00"`` (or ``"friday 15:00"``).

    Raises:
        ValueError: not a day and a 24-hour time.
    """
    match = WEEK_TIME.match(value) if isinstance(value, str) else None
    day = match.group(1).lower() if match else ""
    days = [i for i, name in enumerate(WEEKDAYS) if len(day) >= 3 and name.startswith(day)]
    hours, minutes = (int(match.group(2)), int(match.group(3))) if match else (99, 99)
    if not days or hours > 23 or minutes > 59:
        raise ValueError(f"{value!r} is not a time of the week; write a day and a 24-hour time, e.g. \"Fri 15:00\"")
    return days[0] * MINUTES_PER_DAY + hours * 60 + minutes


def week_time_text(minute_of_week: int) -> str:
    day, minute = divmod(minute_of_week, MINUTES_PER_DAY)
    return f"{WEEKDAYS[day][:3].capitalize()} {minute // 60:02d}:{minute % 60:02d}"


def local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant when the clocks of ``zone`` first show ``at`` on ``day``.

    An ambiguous time (the hour repeated when DST ends) is its first
    occurrence; a time that does not exist (skipped when DST starts) is the
    moment of the jump, the first one at which the clock reads ``at`` or later.
    """
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=zone).astimezone(timezone.utc)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # In a gap, fold=1 reads the time with the offset after the jump (too early)
    # and fold=0 with the one before (too late): the jump lies between them.
    low = int(naive.replace(tzinfo=zone, fold=1).astimezone(timezone.utc).timestamp())
    high = int(first.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) >= naive:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, timezone.utc)


def _at(minute_of_day: int) -> time:
    return time(minute_of_day // 60, minute_of_day % 60)


def weekly_window(moment: datetime, zone: ZoneInfo, starts: int, until: int) -> tuple[datetime, datetime] | None:
    """The occurrence of the weekly window ``starts`` → ``until`` (minutes of
    the week, local time; ``until`` before ``starts`` wraps the week end)
    that covers ``moment``, as UTC instants, or None."""
    start_day, start_minute = divmod(starts, MINUTES_PER_DAY)
    span = (until - starts) % MINUTES_PER_WEEK
    end_offset_days, end_minute = divmod(start_minute + span, MINUTES_PER_DAY)
    today = moment.astimezone(zone).date()
    # a window is shorter than a week, so the occurrence covering moment began within the last seven days
    for back in range(8):
        day = today - timedelta(days=back)
        if day.weekday() != start_day:
            continue
        begin = local_instant(day, _at(start_minute), zone)
        end = local_instant(day + timedelta(days=end_offset_days), _at(end_minute), zone)
        if begin <= moment < end:
            return begin, end
    return None


def dates_window(moment: datetime, zone: ZoneInfo, days: Iterable[date]) -> tuple[datetime, datetime] | None:
    """The run of consecutive whole days (local midnight to midnight) in
    ``days`` that covers ``moment``, as UTC instants, or None."""
    frozen = set(days)
    today = moment.astimezone(zone).date()
    if today not in frozen:
        return None
    first = last = today
    while first - timedelta(days=1) in frozen:
        first -= timedelta(days=1)
    while last + timedelta(days=1) in frozen:
        last += timedelta(days=1)
    return local_instant(first, time(0), zone), local_instant(last + timedelta(days=1), time(0), zone)
