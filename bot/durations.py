"""Durations as people write and read them: one parser, one format.

The config, ``/deploy lock api 2h`` and every message Slipway writes share
them, so a duration reads the same wherever it is shown, and what Slipway
writes can be read back (``parse_duration(format_duration(5400)) == 5400``).
"""

from __future__ import annotations

import re
from typing import Any

#: ``1d``, ``2h``, ``1h30m``, ``1h 30m``, ``90s``, ``2.5s``: units largest first, each at most once.
DURATION = re.compile(r"^(?:(\d+)d)? ?(?:(\d+)h)? ?(?:(\d+)m)? ?(?:(\d+(?:\.\d+)?)s)?$")

MINUTE, HOUR, DAY = 60, 3600, 86400
DAYS_FROM = 2 * DAY  # below this, hours: "24h" and "36h" read better than "1d" and "1d 12h"


def parse_duration(value: Any) -> float:
    """Seconds from ``"10m"``, ``"1h30m"``, ``"1h 30m"``, ``"45s"``,
    ``"2.5s"``, ``"1d"`` or a bare number of seconds.

    Raises:
        ValueError: ``value`` is not a duration, or is not longer than zero.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip() and (match := DURATION.match(value.strip())):
        days, hours, minutes, secs = match.groups()
        seconds = int(days or 0) * DAY + int(hours or 0) * HOUR + int(minutes or 0) * MINUTE + float(secs or 0)
    else:
        raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 10m or 1h30m")
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero")
    return seconds


def format_duration(seconds: float | None) -> str:
    """A duration in its two largest units, a zero second unit left out:
    ``"0.5s"``, ``"4.2s"``, ``"45s"``, ``"2m 5s"``, ``"10m"``, ``"1h 30m"``,
    ``"24h"``, ``"3d 4h"``; ``None`` is ``"an unknown time"``.

    Under ten seconds a tenth is kept (a check that gave up after 0.3s
    should not read "0s"); longer, whole seconds are rounded to and the
    units below the two shown are dropped.
    """
    if seconds is None:
        return "an unknown time"
    seconds = max(0.0, seconds)
    if round(seconds, 1) < 10:
        return f"{round(seconds, 1):g}s"
    whole = round(seconds)
    if whole >= DAYS_FROM:
        days, rest = divmod(whole, DAY)
        return _two(days, "d", rest // HOUR, "h")
    if whole >= HOUR:
        return _two(whole // HOUR, "h", whole % HOUR // MINUTE, "m")
    if whole >= MINUTE:
        return _two(whole // MINUTE, "m", whole % MINUTE, "s")
    return f"{whole}s"


def _two(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big}{big_unit} {small}{small_unit}" if small else f"{big}{big_unit}"
