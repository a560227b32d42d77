"""Slack is a view: with a real ``slipway serve`` and a fake Slack that
fails on purpose (a text/plain 503, connections dropped without an answer),
the deploy's outcome is the engine's, never Slack's, and what Slack shows
catches up with the database once it answers again, without a post twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.sandbox.fake_slack import FakeSlack, SlackSender
from store import Store
from tests.conftest import SIGNING_SECRET, approvals, config_yaml, engine
from tests.processes import SlipwayProcess
from tests.test_recovery import files, wait_until  # noqa: F401 — files is a fixture used here too


@pytest.fixture
def config(files: dict[str, Path]) -> Path:
    files["slipway.yml"].write_text(config_yaml(
        production={"approvals": approvals("U0ALICE")},
        services={"api": {"deploy": engine("--started", files["started"], "--wait-for", files["release"])},
                  "web": {"deploy": engine()}}))
    return files["slipway.yml"]


@pytest.fixture
async def slipway(fake_slack: FakeSlack, config: Path, files: dict[str, Path]) -> AsyncIterator[SlipwayProcess]:
    process = SlipwayProcess(config, files["slipway.db"], fake_slack)
    try:
        yield process
    finally:
        await process.close()


def status_of(db: Path, service: str) -> str | None:
    store = Store.open(db)
    try:
        history = store.deploys.history(service)
        return history[0].status if history else None
    finally:
        store.close()


def message_shows(fake: FakeSlack, service: str, word: str) -> bool:
    return any(f"Deploy {service}" in m.text and word in str(m.blocks) for m in fake.channel_messages("C0DEPLOYS"))


def posts_twice(fake: FakeSlack) -> list[str]:
    """Texts Slack was asked to post more than once (a message or a thread note)."""
    posted = Counter((c.args.get("channel"), c.args.get("thread_ts"), c.args.get("text"))
                     for c in fake.calls_to("chat.postMessage"))
    return [text for (_, _, text), count in posted.items() if count > 1]


async def start_hanging_deploy(slack: SlackSender, fake: FakeSlack, files: dict[str, Path]) -> None:
    assert (await slack.command("api 2.7.0 staging", "U0DAVE"))[0] == 200
    await wait_until(lambda: files["started"].exists())
    await fake.wait_for(lambda f: message_shows(f, "api", "Deploying"))


async def test_slack_down_as_the_engine_finishes_does_not_fail_the_deploy(
        fake_slack: FakeSlack, slipway: SlipwayProcess, files: dict[str, Path]) -> None:
    url = await slipway.start()
    async with SlackSender(url, SIGNING_SECRET, fake_slack) as slack:
        await start_hanging_deploy(slack, fake_slack, files)
        fake_slack.faults["*"] = "disconnect"  # Slack's API stops answering
        files["release"].touch()  # the engine finishes, exit 0
        await wait_until(lambda: status_of(files["slipway.db"], "api") == "succeeded")
        fake_slack.faults.clear()  # Slack is back: the message catches up
        await fake_slack.wait_for(lambda f: message_shows(f, "api", "Succeeded"), timeout=30)
        # the ladder knows: 2.7.0 succeeded on staging, so production may be asked for
        status, reply = await slack.command("api 2.7.0 production", "U0DAVE")
        assert status == 200 and "has not succeeded" not in reply
    assert posts_twice(fake_slack) == []


async def test_a_text_503_on_the_permalink_does_not_hold_the_deploy(
        fake_slack: FakeSlack, slipway: SlipwayProcess, files: dict[str, Path]) -> None:
    fake_slack.faults["chat.getPermalink"] = "text503"
    url = await slipway.start()
    async with SlackSender(url, SIGNING_SECRET, fake_slack) as slack:
        assert (await slack.command("web 1.0.0 staging", "U0DAVE"))[0] == 200
        await wait_until(lambda: status_of(files["slipway.db"], "web") == "succeeded")
        await fake_slack.wait_for(lambda f: message_shows(f, "web", "Succeeded"))
        assert any(c.status == 503 for c in fake_slack.calls if c.method == "chat.getPermalink")
        fake_slack.faults.clear()  # the link is asked for again, and arrives
        await wait_until(lambda: Store.open(files["slipway.db"]).deploys.history("web")[0].permalink is not None)


async def test_killed_while_slack_is_down_then_restarted_shows_the_truth_once(
        fake_slack: FakeSlack, slipway: SlipwayProcess, files: dict[str, Path]) -> None:
    url = await slipway.start()
    async with SlackSender(url, SIGNING_SECRET, fake_slack) as slack:
        await start_hanging_deploy(slack, fake_slack, files)
    fake_slack.faults["*"] = "text503"
    files["release"].touch()
    await wait_until(lambda: status_of(files["slipway.db"], "api") == "succeeded")
    await asyncio.sleep(0.2)  # let it try (and fail) to tell Slack; nothing else to wait on in another process
    await slipway.kill()
    fake_slack.faults.clear()
    await slipway.start()  # the new process finds the notes and the edit in the outbox and sends them
    await fake_slack.wait_for(lambda f: message_shows(f, "api", "Succeeded"), timeout=30)
    await fake_slack.wait_for(lambda f: any("is live on staging" in c.args.get("text", "")
                                            for c in f.calls_to("chat.postMessage")), timeout=30)
    assert posts_twice(fake_slack) == []


async def test_slack_unreachable_does_not_stop_the_bot_answering(harness) -> None:
    """bolt would call auth.test on every request until one answered; the
    bot's identity is learnt in the background instead, so with Slack's API
    unreachable a command is still answered from the ack."""
    harness.fake.faults["*"] = "disconnect"
    try:
        reply = await harness.command("help")
        assert "/deploy <service> <version> [environment]" in reply
        asked = [c.status for c in harness.fake.calls if c.method == "auth.test"]
        assert asked and set(asked) == {0}  # asked (in the background), never answered: the reply did not wait
    finally:
        harness.fake.faults.clear()
