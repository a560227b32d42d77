"""bot/durations.py: the one parser and the one format every message,
the config and `/deploy lock` share."""

from __future__ import annotations

import pytest

from bot.durations import DURATION, format_duration, parse_duration


@pytest.mark.parametrize(("seconds", "text"), [
    # under ten seconds a tenth shows: a check that gave up after 0.3s must not read "0s"
    (0.5, "0.5s"), (4.25, "4.2s"), (5, "5s"), (9.96, "10s"),
    (45, "45s"), (59.6, "1m"),
    # two units, a zero second unit left out
    (90, "1m 30s"), (125, "2m 5s"), (240, "4m"), (600, "10m"), (1800, "30m"),
    (3600, "1h"), (5400, "1h 30m"), (8640, "2h 24m"), (3605, "1h"),
    # hours up to two days, as expiries are configured ("24h"), then days
    (8 * 3600, "8h"), (86400, "24h"), (36 * 3600, "36h"), (2 * 86400, "2d"), (3 * 86400 + 4 * 3600 + 5, "3d 4h"),
])
def test_durations_are_written_as_people_write_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_an_unknown_or_negative_duration() -> None:
    assert format_duration(None) == "an unknown time"
    assert format_duration(-3) == "0s"  # a clock that went backwards


@pytest.mark.parametrize(("text", "seconds"), [
    ("45s", 45), ("2.5s", 2.5), ("10m", 600), ("1h30m", 5400), ("1h 30m", 5400), ("1d", 86400),
    ("3d 4h", 3 * 86400 + 4 * 3600), (" 2h ", 7200), (90, 90), (1.5, 1.5),
])
def test_durations_are_read(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("seconds", [0.5, 45, 90, 600, 5400, 86400, 2 * 86400, 3 * 86400 + 4 * 3600])
def test_what_slipway_writes_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["", " ", "soon", "10", "1h30", "30 m", "1m1h", "-5m", True, None, 0, "0s", -1])
def test_what_is_not_a_duration_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_the_pattern_tells_a_lock_duration_from_the_reason() -> None:
    """`/deploy lock api 2h "reason"` asks the pattern about its first word."""
    assert DURATION.match("2h") and DURATION.match("1d") and not DURATION.match("db")
