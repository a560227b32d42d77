"""``GET /healthz``: the process's role, the database and Slack, each named
in the answer; 503 when either is not ok or the process is a standby, and
Slack's answer cached so probes do not spend its rate limit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.config import parse_config
from bot.runtime.composition import SLACK_EVENTS_PATH, create_slipway, create_web_app
from bot.runtime.lease import LeaseKeeper
from bot.runtime.settings import Settings
from bot.sandbox.fake_slack import FakeSlack, SlackSender
from store import Store
from tests.conftest import BOT_TOKEN, CONFIG, SIGNING_SECRET, Clock, Harness


class Ticker:
    """The health check's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticker(harness: Harness) -> Ticker:
    ticker = Ticker()
    harness.slipway.health.monotonic = ticker
    return ticker


async def probe(harness: Harness) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(harness.url + "/healthz") as response:
            return response.status, await response.json()


def auth_tests(harness: Harness) -> int:
    return len([c for c in harness.fake.calls if c.method == "auth.test"])


async def test_healthy_when_the_database_and_slack_answer(harness: Harness, ticker: Ticker) -> None:
    assert await probe(harness) == (200, {"status": "ok", "role": "owner", "database": "ok", "slack": "ok"})
    assert auth_tests(harness) == 1


async def test_slack_is_asked_once_per_ttl_however_often_probed(harness: Harness, ticker: Ticker) -> None:
    await probe(harness)
    ticker.now += harness.slipway.health.ttl - 1
    await probe(harness)
    assert auth_tests(harness) == 1  # still fresh: from the cache

    ticker.now += 2
    answers = await asyncio.gather(*(probe(harness) for _ in range(5)))
    healthy = (200, {"status": "ok", "role": "owner", "database": "ok", "slack": "ok"})
    assert all(answer == healthy for answer in answers)
    assert auth_tests(harness) == 2  # probes arriving together share one call


async def test_a_refused_token_is_unhealthy_and_named(harness: Harness, ticker: Ticker) -> None:
    await probe(harness)
    harness.fake.token = "xoxb-another-token"  # the bot's token was revoked or rotated
    assert (await probe(harness))[0] == 200  # cached for the ttl
    ticker.now += harness.slipway.health.ttl
    assert await probe(harness) == (503, {"status": "unhealthy", "role": "owner", "database": "ok",
                                          "slack": "error: invalid_auth"})


async def test_slack_unreachable_is_unhealthy_and_says_why(harness: Harness, ticker: Ticker) -> None:
    await harness.fake.stop()
    status, body = await probe(harness)
    assert status == 503 and body["status"] == "unhealthy" and body["database"] == "ok"
    assert body["slack"].startswith("error: ClientConnectorError") and "connect" in body["slack"].lower()


async def test_a_rate_limited_probe_reports_it_without_waiting_it_out(harness: Harness, ticker: Ticker) -> None:
    harness.fake.rate_limit_every = 1
    harness.fake.retry_after = 3600  # the app's client would wait this long; the probe does not
    status, body = await probe(harness)
    assert status == 503 and body["slack"] == "error: rate limited by Slack (ratelimited)"


async def test_an_unreadable_database_is_unhealthy_and_named(harness: Harness, ticker: Ticker) -> None:
    harness.store.close()
    status, body = await probe(harness)
    assert status == 503 and body["status"] == "unhealthy" and body["slack"] == "ok"
    assert body["database"] == "error: ProgrammingError: Cannot operate on a closed database."


async def test_a_database_without_slipways_schema_is_unhealthy(harness: Harness, ticker: Ticker) -> None:
    harness.store.db.execute("DELETE FROM schema_migrations")
    harness.store.db.conn.commit()
    status, body = await probe(harness)
    assert status == 503 and body["database"] == "error: the database has no schema"


async def test_a_standby_is_unhealthy_says_who_owns_the_database_and_serves_nothing_until_it_does(
        fake_slack: FakeSlack, tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "slipway.db"
    other = Store.open(db, clock)
    other.lease.acquire("elsewhere/1/1/x", 60)  # another process owns the database
    keeper = await LeaseKeeper(db, clock=clock, is_gone=lambda _: False).open()
    store = Store.open(db, clock, migrate=False)
    slipway = create_slipway(parse_config(CONFIG), store,
                             Settings(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=fake_slack.api_url))
    runner = web.AppRunner(create_web_app(slipway, lease=keeper))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        assert await keeper.try_acquire() is False
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/healthz") as response:
                assert response.status == 503
                assert await response.json() == {
                    "status": "standby", "role": "standby", "owner": "elsewhere/1/1/x",
                    "owner_until": "2026-11-23T12:01:00.000+00:00", "database": "ok", "slack": "ok"}
            async with session.get(url + "/metrics") as response:
                assert response.status == 200
        async with SlackSender(url + SLACK_EVENTS_PATH, SIGNING_SECRET, fake_slack) as slack:
            status, body = await slack.command("help", "U0DAVE")
            assert status == 503 and json.loads(body)["role"] == "standby"
            assert "another process owns the database" in json.loads(body)["error"]
        assert fake_slack.calls_to("chat.postEphemeral") == [] and store.deploys.history("api") == []

        other.lease.release("elsewhere/1/1/x")
        assert await keeper.try_acquire() is True
        slipway.start_workers()
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/healthz") as response:
                assert response.status == 200 and (await response.json())["role"] == "owner"
        async with SlackSender(url + SLACK_EVENTS_PATH, SIGNING_SECRET, fake_slack) as slack:
            assert (await slack.command("help", "U0DAVE"))[0] == 200
    finally:
        await runner.cleanup()
        await keeper.release()
        await keeper.close()
        store.close()
        other.close()
