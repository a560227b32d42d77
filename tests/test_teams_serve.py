"""Two teams on one real ``slipway serve``: each service with its owners,
its own channel and its own approvers; one mirrored in the main channel
(README "Many teams: owners and channels")."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.sandbox.fake_slack import FakeSlack, Message, SlackSender
from bot.slack.blocks import ACTION_APPROVE
from tests.conftest import BOT_TOKEN, CHANNEL, SIGNING_SECRET, approvals, config_yaml, engine, said
from tests.processes import SlipwayProcess

PAYMENTS, SEARCH = "C0PAYMENTS", "C0SEARCH"
WAIT = 30.0  # another process does the work: generous, never slept


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(token=BOT_TOKEN, usergroups={"payments": ["U0PAT"], "search": ["U0SAM"]}).start()
    yield fake
    await fake.stop()


def teams_config(path: Path) -> Path:
    path.write_text(config_yaml(
        {"payments": {"deploy": engine(), "owners": ["@payments"], "channel": PAYMENTS, "mirror_to_main_channel": True,
                      "approvals": {"production": approvals("@payments")}},
         "search": {"deploy": engine(), "owners": ["@search"], "channel": SEARCH,
                    "approvals": {"production": approvals("@search")}}},
        production={"requires": "staging", "approvals": approvals("U0ALICE")}))
    return path


def deploy_message(fake: FakeSlack, channel: str, service: str, environment: str) -> Message | None:
    """The deploy message of ``service`` to ``environment`` in ``channel``, once posted."""
    return next((m for m in fake.channel_messages(channel)
                 if m.thread_ts is None and f"Deploy {service} " in m.text and f"to {environment}" in m.text), None)


def status_of(message: Message) -> str:
    return json.dumps(message.blocks) + message.text


async def click_approve(slack: SlackSender, message: Message, user: str) -> None:
    status, _ = await slack.click(message, user, ACTION_APPROVE)
    assert status == 200


async def test_two_teams_each_in_its_channel_approved_by_its_own_team(
        tmp_path: Path, fake_slack: FakeSlack, serve: Callable[..., SlipwayProcess]) -> None:
    slipway = serve(teams_config(tmp_path / "slipway.yml"), tmp_path / "slipway.db")
    events_url = await slipway.start()
    async with SlackSender(events_url, SIGNING_SECRET, fake_slack) as slack:
        for service in ("payments", "search"):  # staging: no approvals, each in its own channel
            status, reply = await slack.command(f"{service} 1.0.0", "U0DAVE")
            assert status == 200 and "needs no approval" in said(reply)
        for channel, service in ((PAYMENTS, "payments"), (SEARCH, "search")):
            await fake_slack.wait_for(lambda f, c=channel, s=service: (m := deploy_message(f, c, s, "staging"))
                                      and "succeeded" in status_of(m).lower(), timeout=WAIT)

        status, reply = await slack.command("payments 1.0.0 production", "U0DAVE")
        assert f"waiting for approval in <#{PAYMENTS}>" in said(reply)
        status, reply = await slack.command("search 1.0.0 production", "U0DAVE")
        assert f"waiting for approval in <#{SEARCH}>" in said(reply)
        payments = await fake_slack.wait_for(lambda f: deploy_message(f, PAYMENTS, "payments", "production"),
                                             timeout=WAIT)
        search = await fake_slack.wait_for(lambda f: deploy_message(f, SEARCH, "search", "production"), timeout=WAIT)

        # each team approves its own service only; the environment's approver neither
        for message, outsiders in ((payments, ("U0SAM", "U0ALICE")), (search, ("U0PAT", "U0ALICE"))):
            for outsider in outsiders:
                before = len(fake_slack.ephemerals_for(outsider))
                await click_approve(slack, message, outsider)
                told = await fake_slack.wait_for(
                    lambda f, who=outsider, n=before: f.ephemerals_for(who)[n:], timeout=WAIT)
                assert "not an approver" in told[-1].text
        await click_approve(slack, payments, "U0PAT")
        await click_approve(slack, search, "U0SAM")
        for message in (payments, search):
            await fake_slack.wait_for(lambda f, m=message: "succeeded" in status_of(m).lower(), timeout=WAIT)
            await fake_slack.wait_for(lambda f, m=message: any(  # its thread is in its channel
                n.thread_ts == m.ts and "is live on production" in n.text for n in f.channel_messages(m.channel)), timeout=WAIT)

        # the main channel: one line per payments deploy, linking to it; nothing of search's, no threads
        main = await fake_slack.wait_for(
            lambda f: len(lines := f.channel_messages(CHANNEL)) >= 2 and lines, timeout=WAIT)
        assert all(m.thread_ts is None and f"in <#{PAYMENTS}>" in m.text for m in main)
        assert len(main) == 2 and "payments `1.0.0` to production" in main[1].text
        assert f"archives/{PAYMENTS}/p{payments.ts.replace('.', '')}|Deploy #" in main[1].text
        assert not any("search" in m.text for m in main)
    assert await slipway.terminate() == 0
    assert len(fake_slack.channel_messages(CHANNEL)) == 2  # mirrored once each
