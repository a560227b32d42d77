"""Locks that explain themselves: durations that expire by the clock and
say so once, `/deploy locks`, quoted reasons, and refusals naming who,
why and until when."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bot.slack.blocks import ACTION_APPROVE, ACTION_CHECKLIST
from store import Store
from tests.conftest import CHANNEL, Harness, said


def channel_posts(harness: Harness) -> list[str]:
    """Top-level posts in the deploy channel that are not deploy messages."""
    return [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
            if c.args.get("channel") == CHANNEL and "thread_ts" not in c.args and "blocks" not in c.args]


async def test_a_lock_with_a_duration_expires_by_the_clock_and_says_so_once(harness: Harness, clock) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    placed = said(await harness.command('lock api production 2h "db maintenance"', user="U0ERIN"))
    assert placed.startswith(":lock: • api on production: locked by <@U0ERIN>")
    assert "— “db maintenance” — until <!date^" in placed and "|2026-11-23 14:00 UTC>" in placed
    lock = harness.store.locks.all()[0]
    assert lock.until == "2026-11-23T14:00:00.000+00:00"

    clock.advance(hours=1, minutes=59)
    refused = said(await harness.command("api 2.7.0 production"))
    assert refused.startswith("api is locked on production by <@U0ERIN>")
    assert "until <!date^" in refused and "“db maintenance”" in refused and "`/deploy unlock api production`" in refused
    assert channel_posts(harness) == []

    clock.advance(minutes=1)
    assert "waiting for approval" in said(await harness.command("api 2.7.0 production"))
    expired = [t for t in channel_posts(harness) if "expired" in t]
    assert len(expired) == 1
    assert expired[0].startswith(":unlock: The lock on api production by <@U0ERIN> (“db maintenance”) expired")
    assert expired[0].endswith("and released itself.")
    await harness.command("locks")
    await harness.command("api 2.8.0 staging")
    assert len([t for t in channel_posts(harness) if "expired" in t]) == 1  # said once
    events = [e for e in harness.store.audit.events() if e.action == "lock_expired"]
    assert len(events) == 1 and events[0].detail["reason"] == "db maintenance"


async def test_an_expired_lock_is_released_by_the_periodic_sweep_without_anyone_asking(harness: Harness,
                                                                                       clock) -> None:
    await harness.command('lock api production 30m "db maintenance"', user="U0ERIN")
    clock.advance(minutes=30)
    await harness.slipway.nudges.sweep()
    await harness.settle()
    assert harness.store.locks.all() == []
    [expired] = [t for t in channel_posts(harness) if "expired" in t]
    assert expired.startswith(":unlock: The lock on api production by <@U0ERIN>")


async def test_an_expired_lock_is_noticed_by_a_click_too(harness: Harness, clock) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.command("api 2.7.0 production")
    deploy = harness.latest_deploy()
    for item in deploy.checklist:
        await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_CHECKLIST,
                            block_id=f"checklist:{deploy.id}:{item.position}", selected=True)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    await harness.command("lock api production 30m waiting for the load test", user="U0ERIN")
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    assert "cannot be approved now: api is locked on production" in harness.fake.ephemerals_for("U0BOB")[-1].text
    clock.advance(minutes=30)
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "succeeded"
    assert [t for t in channel_posts(harness) if "released itself" in t] != []


@pytest.mark.parametrize(("words", "seconds"), [("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400)])
async def test_lock_durations(harness: Harness, words: str, seconds: int, clock) -> None:
    await harness.command(f"lock web {words} release train paused", user="U0ERIN")
    lock = harness.store.locks.all()[0]
    assert (lock.environment, lock.reason) == ("*", "release train paused")
    assert lock.until == (clock.now + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


@pytest.mark.parametrize(("text", "expected"), [
    ("lock api production 0m oops", "a duration must be longer than zero"),
    ("lock api production 2h", "A lock needs a reason"),
    ("lock api production “unclosed reason", "A quote is left open"),
    ("lock apix production outage", "I don't know a service called `apix`"),
])
async def test_bad_locks_are_refused_and_record_nothing(harness: Harness, text: str, expected: str) -> None:
    assert expected in said(await harness.command(text))
    assert harness.store.locks.all() == []


async def test_a_reason_in_smart_quotes_keeps_its_apostrophes(harness: Harness) -> None:
    await harness.command("lock api production “don't ship: INC-7”", user="U0ERIN")
    assert harness.store.locks.all()[0].reason == "don't ship: INC-7"
    await harness.command("lock web it's friday", user="U0ERIN")
    assert [lock.reason for lock in harness.store.locks.all()] == ["don't ship: INC-7", "it's friday"]


async def test_slash_locks_lists_who_when_why_and_until(harness: Harness) -> None:
    assert said(await harness.command("locks")) == "*Locks*\nNo locks."
    await harness.command('lock api production 2h "db maintenance"', user="U0ERIN")
    await harness.command("lock web release train paused", user="U0DAVE")
    listing = said(await harness.command("locks", user="U0MALLORY"))
    lines = listing.splitlines()
    assert lines[0] == "*Locks*"
    assert lines[1].startswith("• api on production: locked by <@U0ERIN> <!date^")
    assert lines[1].endswith(
        "— “db maintenance” — until <!date^1795442400^{date_short_pretty} {time}|2026-11-23 14:00 UTC>")
    assert lines[2].startswith("• web on every environment: locked by <@U0DAVE>")
    assert lines[2].endswith("— “release train paused” — until someone unlocks it")
    only_web = said(await harness.command("locks web"))
    assert "web on every environment" in only_web and "api" not in only_web
    assert "I don't know a service called `nope`" in said(await harness.command("locks nope"))


def test_each_expired_lock_is_released_once_across_slipways(tmp_path: Path, clock) -> None:
    first, second = Store.open(tmp_path / "s.db", clock=clock), Store.open(tmp_path / "s.db", clock=clock)
    first.locks.acquire("api", "production", "U0ERIN", "maintenance",
                        until=(clock.now + timedelta(minutes=5)).isoformat(timespec="milliseconds"))
    assert first.locks.expire() == [] and second.locks.expire() == []
    clock.advance(minutes=5)
    assert [lock.reason for lock in first.locks.expire()] == ["maintenance"]
    assert second.locks.expire() == [] and second.locks.all() == []
    first.close()
    second.close()
