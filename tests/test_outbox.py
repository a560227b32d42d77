"""The durable outbox, delivered to the fake Slack Web API from a real
SQLite file: order, threads, coalesced edits, pacing, 429s, restarts and
failures. Time is a fake that moves only when the outbox sleeps, so pacing
and backoff are asserted exactly and nothing here waits for real."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.runtime.composition import create_slack_client
from bot.runtime.settings import Settings
from bot.sandbox.fake_slack import FakeSlack
from bot.slack.outbox import CHANNEL_ERRORS_AFTER, Outbox
from store import Store, UnknownMessage
from tests import conftest
from tests.conftest import BOT_TOKEN

START = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


class FakeTime(conftest.FakeTime):
    """The monotonic clock that moves only when the outbox sleeps on it, and
    the wall clock the store dates rows with, moving along."""

    def wall(self) -> datetime:
        return START + timedelta(seconds=self.now)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "slipway.db"


@pytest.fixture
def store(db_path: Path, fake_time: FakeTime) -> Iterator[Store]:
    opened = Store.open(db_path, clock=fake_time.wall)
    yield opened
    opened.close()


@pytest.fixture
async def client(fake_slack: FakeSlack) -> AsyncIterator[AsyncWebClient]:
    """The app's own client: slack_sdk's rate-limit retry handler attached."""
    app_client = create_slack_client(Settings(bot_token=BOT_TOKEN, signing_secret="s", api_url=fake_slack.api_url))
    yield app_client
    await app_client.session.close()


@pytest.fixture
async def outboxes() -> AsyncIterator[list[Outbox]]:
    """Makes Outboxes on fake time, and closes them all at the end."""
    made: list[Outbox] = []
    yield made
    for outbox in made:
        await outbox.close()


@pytest.fixture
def make_outbox(outboxes: list[Outbox], client: AsyncWebClient, fake_time: FakeTime):
    def make(store: Store, **kwargs: Any) -> Outbox:
        outbox = Outbox(store, client, sleep=fake_time.sleep, monotonic=fake_time.monotonic, **kwargs)
        outboxes.append(outbox)
        return outbox
    return make


def posted(fake: FakeSlack) -> list[dict[str, Any]]:
    """The arguments of every chat.postMessage Slack accepted, in order."""
    return [c.args for c in fake.calls_to("chat.postMessage")]


def intercept(fake: FakeSlack, method: str, before) -> None:
    """Run ``before(args)`` on each call of ``method``; a dict it returns is
    Slack's answer instead of the real one."""
    attribute = "_" + method.replace(".", "_")
    real = getattr(fake, attribute)

    def handler(args: dict[str, Any]) -> dict[str, Any]:
        answer = before(args)
        return answer if answer is not None else real(args)

    setattr(fake, attribute, handler)


# -- order, threads, edits ----------------------------------------------------------------


async def test_posts_arrive_in_the_order_they_were_queued(store: Store, fake_slack: FakeSlack, make_outbox) -> None:
    for n in range(5):
        store.outbox.enqueue_post(f"alert-{n}", "C0ALERTS", f"alert {n}")
    assert store.outbox.enqueue_post("alert-0", "C0ALERTS", "alert 0 again") is None  # one message per key

    outbox = make_outbox(store)
    outbox.start()
    await outbox.drain()

    assert [m.text for m in fake_slack.channel_messages("C0ALERTS")] == [f"alert {n}" for n in range(5)]
    assert [a["text"] for a in posted(fake_slack)] == [f"alert {n}" for n in range(5)]
    for n in range(5):
        ts = store.outbox.message_ts(f"alert-{n}")
        assert fake_slack.messages[("C0ALERTS", ts)].text == f"alert {n}"
    assert store.outbox.pending_count() == 0


async def test_a_reply_waits_for_its_parent_even_when_queued_first(store: Store, fake_slack: FakeSlack,
                                                                    make_outbox) -> None:
    with store.transaction():  # both in one transaction, the reply first
        store.outbox.enqueue_post("alert-1", "C0ALERTS", "still firing", thread_key="incident")
        store.outbox.enqueue_post("incident", "C0ALERTS", "Incident: api errors")
    assert store.outbox.message_ts("incident") is None

    outbox = make_outbox(store)
    outbox.start()
    await outbox.drain()

    parent, reply = posted(fake_slack)
    assert parent["text"] == "Incident: api errors" and "thread_ts" not in parent
    assert reply["text"] == "still firing"
    assert reply["thread_ts"] == store.outbox.message_ts("incident")


async def test_a_storm_of_edits_becomes_one_update(store: Store, fake_slack: FakeSlack, make_outbox) -> None:
    outbox = make_outbox(store)
    outbox.start()
    store.outbox.enqueue_post("alert-1", "C0ALERTS", "firing")
    store.outbox.enqueue_post("alert-2", "C0ALERTS", "firing too")
    for n in range(1, 11):  # alert-2's post is still queued: its edits wait and coalesce
        store.outbox.enqueue_update("alert-2", f"alert-2 change {n}")
    outbox.notify()
    await outbox.drain()
    for n in range(1, 11):  # alert-1 is sent: the worker is idle, then gets all ten at once
        store.outbox.enqueue_update("alert-1", f"alert-1 change {n}")
        outbox.notify()
    await outbox.drain()

    updates = [c.args for c in fake_slack.calls_to("chat.update")]
    assert [u["text"] for u in updates] == ["alert-2 change 10", "alert-1 change 10"]
    assert updates[1]["ts"] == store.outbox.message_ts("alert-1")
    assert fake_slack.messages[("C0ALERTS", store.outbox.message_ts("alert-1"))].text == "alert-1 change 10"


async def test_an_edit_queued_while_another_is_in_flight_is_sent_after_it(store: Store, fake_slack: FakeSlack,
                                                                         make_outbox) -> None:
    outbox = make_outbox(store)
    outbox.start()
    store.outbox.enqueue_post("alert-1", "C0ALERTS", "firing")
    await outbox.drain()

    def change_during_the_call(args: dict[str, Any]) -> None:
        if args["text"] == "louder":  # Slack has the first edit; the next change arrives now
            store.outbox.enqueue_update("alert-1", "resolved")

    intercept(fake_slack, "chat.update", change_during_the_call)
    store.outbox.enqueue_update("alert-1", "louder")
    outbox.notify()
    await outbox.drain()

    assert [c.args["text"] for c in fake_slack.calls_to("chat.update")] == ["louder", "resolved"]
    assert fake_slack.messages[("C0ALERTS", store.outbox.message_ts("alert-1"))].text == "resolved"


def test_an_edit_of_an_unknown_message_is_refused(store: Store) -> None:
    with pytest.raises(UnknownMessage):
        store.outbox.enqueue_update("nobody-posted-this", "text")


def test_enqueue_joins_the_callers_transaction(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.outbox.enqueue_post("alert-1", "C0ALERTS", "firing")
        raise RuntimeError("recording the alert failed")
    assert store.outbox.pending_count() == 0  # rolled back with the caller's work

    with store.transaction():
        store.outbox.enqueue_post("alert-1", "C0ALERTS", "firing")
        store.outbox.enqueue_update("alert-1", "louder")
    assert store.outbox.pending_count() == 2


# -- pacing and rate limits ---------------------------------------------------------------


async def test_each_channel_is_paced_and_channels_take_turns(store: Store, fake_slack: FakeSlack, fake_time: FakeTime,
                                                             make_outbox) -> None:
    sent_at: list[tuple[str, float]] = []
    intercept(fake_slack, "chat.postMessage", lambda args: sent_at.append((args["channel"], fake_time.now)))
    for n in range(4):  # the busy channel's messages are all queued first
        store.outbox.enqueue_post(f"busy-{n}", "C0BUSY", f"busy {n}")
    for n in range(2):
        store.outbox.enqueue_post(f"quiet-{n}", "C0QUIET", f"quiet {n}")

    outbox = make_outbox(store, interval=1.0)
    outbox.start()
    await outbox.drain()

    assert sent_at == [("C0BUSY", 0.0), ("C0QUIET", 0.0), ("C0BUSY", 1.0), ("C0QUIET", 1.0),
                       ("C0BUSY", 2.0), ("C0BUSY", 3.0)]
    assert fake_time.sleeps == [1.0, 1.0, 1.0]


async def test_a_busy_channel_does_not_starve_another(store: Store, fake_slack: FakeSlack, make_outbox) -> None:
    for n in range(4):
        store.outbox.enqueue_post(f"busy-{n}", "C0BUSY", f"busy {n}")
    store.outbox.enqueue_post("quiet-0", "C0QUIET", "quiet 0")

    outbox = make_outbox(store, interval=0.0)  # unpaced: only the turns decide
    outbox.start()
    await outbox.drain()

    assert [a["channel"] for a in posted(fake_slack)] == ["C0BUSY", "C0QUIET", "C0BUSY", "C0BUSY", "C0BUSY"]


async def test_every_other_call_rate_limited_loses_nothing(store: Store, fake_slack: FakeSlack, fake_time: FakeTime,
                                                           client: AsyncWebClient, make_outbox) -> None:
    fake_slack.rate_limit_every = 2
    fake_slack.retry_after = 3
    expected = []
    for channel in ("C0ONE", "C0TWO"):
        for n in range(4):
            store.outbox.enqueue_post(f"{channel}-{n}", channel, f"{channel} alert {n}")
            expected.append(f"{channel} alert {n}")
        store.outbox.enqueue_update(f"{channel}-0", f"{channel} alert 0 resolved")

    outbox = make_outbox(store)
    assert any(isinstance(h, AsyncRateLimitErrorRetryHandler) for h in client.retry_handlers)
    assert not any(isinstance(h, AsyncRateLimitErrorRetryHandler) for h in outbox.client.retry_handlers)
    outbox.start()
    await outbox.drain()

    assert [c for c in fake_slack.calls if c.status == 429]
    assert Counter(a["text"] for a in posted(fake_slack)) == Counter(expected)  # each exactly once
    assert sorted(c.args["text"] for c in fake_slack.calls_to("chat.update")) == [
        "C0ONE alert 0 resolved", "C0TWO alert 0 resolved"]
    assert 3.0 in fake_time.sleeps  # the outbox waited Retry-After itself, not slack_sdk inside the call
    for channel in ("C0ONE", "C0TWO"):
        texts = [m.text for m in fake_slack.channel_messages(channel)]
        assert texts == [f"{channel} alert 0 resolved"] + [f"{channel} alert {n}" for n in range(1, 4)]
    assert all(item.attempts == 0 for item in store.outbox.items())  # a 429 is no strike against the message


# -- restarts -----------------------------------------------------------------------------


async def test_pending_messages_are_delivered_once_after_a_restart(db_path: Path, fake_slack: FakeSlack,
                                                                   fake_time: FakeTime, make_outbox) -> None:
    store = Store.open(db_path, clock=fake_time.wall)
    for n in range(5):
        store.outbox.enqueue_post(f"alert-{n}", "C0ALERTS", f"alert {n}")
    store.outbox.enqueue_update("alert-0", "alert 0 resolved")
    first = make_outbox(store)
    closing: list[asyncio.Task[None]] = []

    def stop_during_the_second_post(args: dict[str, Any]) -> None:
        if args["text"] == "alert 1" and not closing:  # Slipway stops while this call is in flight
            closing.append(asyncio.create_task(first.close()))

    intercept(fake_slack, "chat.postMessage", stop_during_the_second_post)
    first.start()
    await fake_slack.wait_for(lambda fake: closing)
    await closing[0]
    assert [a["text"] for a in posted(fake_slack)] == ["alert 0", "alert 1"]
    assert store.outbox.message_ts("alert-1") is not None  # the call in flight was let finish and recorded
    # A crash between claiming alert 2 and Slack's answer leaves it in flight.
    store.db.execute("UPDATE outbox SET state = 'sending' WHERE message_key = 'alert-2'")
    store.db.conn.commit()
    store.close()

    store = Store.open(db_path, clock=fake_time.wall)
    try:
        second = make_outbox(store)
        second.start()
        await second.drain()
        assert Counter(a["text"] for a in posted(fake_slack)) == Counter(f"alert {n}" for n in range(5))
        assert [m.text for m in fake_slack.channel_messages("C0ALERTS")] == (
            ["alert 0 resolved"] + [f"alert {n}" for n in range(1, 5)])
        assert {i.state for i in store.outbox.items()} == {"sent"}
    finally:
        await second.close()
        store.close()


async def test_a_restart_still_waits_out_slacks_retry_after(db_path: Path, fake_slack: FakeSlack,
                                                           fake_time: FakeTime, make_outbox) -> None:
    fake_slack.rate_limit_every, fake_slack.retry_after = 1, 30
    store = Store.open(db_path, clock=fake_time.wall)
    store.outbox.enqueue_post("alert-1", "C0ALERTS", "firing")
    first = make_outbox(store)
    fake_time.held = True
    first.start()
    await asyncio.wait_for(fake_time.slept.wait(), 10)  # rate-limited, now waiting Retry-After
    assert fake_time.sleeps == [30.0]
    await first.close()
    store.close()

    fake_slack.rate_limit_every, fake_time.held = 0, False
    store = Store.open(db_path, clock=fake_time.wall)
    try:
        second = make_outbox(store)
        second.start()
        await second.drain()
        assert fake_time.sleeps == [30.0, 30.0]
        assert [a["text"] for a in posted(fake_slack)] == ["firing"]
    finally:
        await second.close()
        store.close()


# -- failures -----------------------------------------------------------------------------


async def test_a_passing_failure_is_retried_with_capped_backoff(store: Store, fake_slack: FakeSlack,
                                                                fake_time: FakeTime, make_outbox) -> None:
    failures = iter(["crash", "internal_error", "crash"])  # a 500 with an HTML body, a Slack error, a 500

    def fail_three_times(args: dict[str, Any]) -> dict[str, Any] | None:
        failure = next(failures, None)
        if failure == "crash":
            raise RuntimeError("Slack is having a bad day")  # aiohttp answers 500 text/plain
        return {"ok": False, "error": failure} if failure else None

    intercept(fake_slack, "chat.postMessage", fail_three_times)
    store.outbox.enqueue_post("alert-1", "C0ALERTS", "firing")
    outbox = make_outbox(store, max_backoff=1.5)
    outbox.start()
    await outbox.drain()

    assert fake_time.sleeps == [1.0, 1.5, 1.5]  # 1 s, 2 s capped, 4 s capped
    assert [a["text"] for a in posted(fake_slack)] == ["firing"]
    (item,) = store.outbox.items(key="alert-1")
    assert (item.state, item.attempts, item.last_error) == ("sent", 3, "HTTP 500")


async def test_a_permanent_failure_is_recorded_and_does_not_hold_up_other_channels(
        store: Store, fake_slack: FakeSlack, make_outbox, caplog: pytest.LogCaptureFixture) -> None:
    fake_slack.missing_channels = {"C0GONE"}
    store.outbox.enqueue_post("gone", "C0GONE", "into the void")
    store.outbox.enqueue_update("gone", "into the void, resolved")
    for n in range(3):
        store.outbox.enqueue_post(f"ok-{n}", "C0OK", f"ok {n}")

    outbox = make_outbox(store)
    outbox.start()
    with caplog.at_level(logging.ERROR, logger="bot.slack.outbox"):
        await outbox.drain()

    attempts = [c for c in fake_slack.calls if c.args.get("channel") == "C0GONE"]
    # a missing channel is a person's to fix: it is retried for about half an hour first
    assert [c.args["text"] for c in attempts] == ["into the void"] * CHANNEL_ERRORS_AFTER
    post, update = store.outbox.items(key="gone")
    assert (post.state, post.attempts, post.last_error) == ("failed", CHANNEL_ERRORS_AFTER, "channel_not_found")
    assert update.state == "failed" and update.last_error.startswith("message_never_posted")
    assert any("gone" in r.getMessage() and "channel_not_found" in r.getMessage() for r in caplog.records)
    assert [m.text for m in fake_slack.channel_messages("C0OK")] == ["ok 0", "ok 1", "ok 2"]
    order = [c.args.get("channel") for c in fake_slack.calls]
    last_ok = max(i for i, channel in enumerate(order) if channel == "C0OK")
    last_gone = max(i for i, channel in enumerate(order) if channel == "C0GONE")
    assert last_ok < last_gone  # C0OK did not wait for C0GONE's retries


async def test_a_reply_to_a_message_that_failed_goes_to_the_channel(store: Store, fake_slack: FakeSlack,
                                                                    make_outbox) -> None:
    too_many_blocks = [{"type": "divider"}] * 51
    store.outbox.enqueue_post("incident", "C0ALERTS", "Incident", blocks=too_many_blocks)
    store.outbox.enqueue_post("alert-1", "C0ALERTS", "api errors at 12%", thread_key="incident")

    outbox = make_outbox(store)
    outbox.start()
    await outbox.drain()

    (parent,) = store.outbox.items(key="incident")
    assert (parent.state, parent.last_error) == ("failed", "invalid_blocks")
    (reply,) = posted(fake_slack)
    assert reply["text"] == "api errors at 12%" and "thread_ts" not in reply
