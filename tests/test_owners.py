"""Many teams on one Slipway: services with their owners, their own
channels and their own approvals (README "Many teams: owners and
channels"), through the real HTTP door against the fake Slack."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from bot.config import parse_config
from bot.sandbox.fake_slack import FakeSlack, block_kit_problem
from bot.slack.blocks import ACTION_APPROVE
from tests.conftest import BOT_TOKEN, CHANNEL, Harness, approvals, config_yaml, engine, said
from tests.test_alerts import AM_TOKEN, am_alert, am_payload, send

PAYMENTS = "C0PAYMENTS"  # public: the bot posts without an invitation (chat:write.public)
SEARCH = "C0SEARCH"
ALERTS = "C0ALERTS"
PAYMENTS_TEAM = ["U0PAT", "U0PIA"]
SEARCH_TEAM = ["U0SAM"]


def services(payments_channel: str = PAYMENTS) -> dict:
    return {
        # its own channel, mirrored in the main one; approvals of its own on both rungs
        "payments": {"deploy": engine(), "owners": ["@payments"], "channel": payments_channel,
                     "mirror_to_main_channel": True,
                     "approvals": {"staging": approvals("@payments"), "production": approvals("@payments")}},
        # its own channel, not mirrored; production's approvals as the environment has them
        "search": {"deploy": engine(), "owners": ["@search", "U0SAM"], "channel": SEARCH},
        # neither: the main channel, as before
        "web": {"deploy": engine()},
    }


def config(payments_channel: str = PAYMENTS) -> str:
    # production: Alice approves, but its `approve` role says Erin: Erin it is, except where a service has its own
    return config_yaml(services(payments_channel),
                       production={"requires": "staging", "approvals": approvals("U0ALICE"),
                                   "roles": {"approve": ["U0ERIN"]}},
                       alerts={"channel": ALERTS})


@pytest.fixture
def config_text() -> str:
    return config()


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(token=BOT_TOKEN, usergroups={"payments": PAYMENTS_TEAM, "search": SEARCH_TEAM,
                                                        "sre": ["U0SRE1"], "oncall": ["U0PAGER"]}).start()
    yield fake
    await fake.stop()


@pytest.fixture
def environ() -> dict[str, str]:
    return {"SLIPWAY_ALERTMANAGER_TOKEN": AM_TOKEN, "SLIPWAY_GRAFANA_SECRET": "unused",
            "SLIPWAY_GENERIC_TOKEN": "unused"}


def top_level(harness: Harness, channel: str) -> list[str]:
    """The texts of the messages in ``channel`` outside any thread, oldest first."""
    return [m.text for m in harness.fake.channel_messages(channel) if m.thread_ts is None]


def thread(harness: Harness, channel: str, ts: str) -> list[str]:
    return [m.text for m in harness.fake.channel_messages(channel) if m.thread_ts == ts]


async def approve(harness: Harness, deploy_id: int, user: str) -> str | None:
    """``user`` clicks Approve; what they alone were told (None: nothing)."""
    before = len(harness.fake.ephemerals_for(user))
    await harness.click(harness.message_of(deploy_id), user, ACTION_APPROVE)
    told = harness.fake.ephemerals_for(user)[before:]
    return told[-1].text if told else None


# -- approvals ----------------------------------------------------------------------------


async def test_a_services_approvals_are_its_teams_alone_even_where_the_rung_has_none(harness: Harness) -> None:
    reply = said(await harness.command("payments 1.0.0", user="U0DAVE"))  # staging: no approvals of its own
    assert f"waiting for approval in <#{PAYMENTS}>" in reply
    deploy = harness.latest_deploy()
    assert deploy.status == "awaiting_approval" and deploy.channel == PAYMENTS
    for outsider in ("U0ERIN", "U0ALICE", "U0SAM"):  # the rung's approve role, its approver, another team
        assert "approve" in (await approve(harness, deploy.id, outsider) or "").lower()
        assert harness.deploy(deploy.id).status == "awaiting_approval"
    await approve(harness, deploy.id, "U0PAT")
    assert harness.deploy(deploy.id).status == "succeeded"

    # production: the environment's `roles.approve` (Erin) does not override the service's approvers
    await harness.command("payments 1.0.0 production", user="U0DAVE")
    production = harness.latest_deploy()
    await approve(harness, production.id, "U0ERIN")
    assert harness.deploy(production.id).status == "awaiting_approval"
    await approve(harness, production.id, "U0PIA")
    assert harness.deploy(production.id).status == "succeeded"


async def test_a_service_without_approvals_of_its_own_falls_back_to_the_environments(harness: Harness) -> None:
    assert "needs no approval" in said(await harness.command("search 1.0.0", user="U0DAVE"))
    assert harness.latest_deploy().status == "succeeded"
    await harness.command("search 1.0.0 production", user="U0DAVE")
    deploy = harness.latest_deploy()
    await approve(harness, deploy.id, "U0SAM")  # an owner is not an approver by being one
    await approve(harness, deploy.id, "U0ALICE")  # the environment's approve role is Erin alone
    assert harness.deploy(deploy.id).status == "awaiting_approval"
    await approve(harness, deploy.id, "U0ERIN")
    assert harness.deploy(deploy.id).status == "succeeded"


# -- channels -------------------------------------------------------------------------------


async def test_deploy_messages_and_their_threads_go_to_the_services_channel_with_one_mirror_line(
        harness: Harness) -> None:
    await harness.command("payments 1.0.0", user="U0DAVE")
    deploy = harness.latest_deploy()
    await approve(harness, deploy.id, "U0PAT")
    deploy = harness.deploy(deploy.id)
    assert deploy.status == "succeeded" and deploy.channel == PAYMENTS
    message = harness.message_of(deploy)
    assert message.channel == PAYMENTS and message.updates > 0  # edited in place there
    notes = thread(harness, PAYMENTS, deploy.message_ts)
    assert any("Handing payments 1.0.0" in note for note in notes) and len(notes) >= 2
    assert not [m for m in harness.fake.channel_messages(CHANNEL) if m.thread_ts]  # no thread in the main channel

    # one line in the main channel, linking to the message in the service's own
    [mirror] = top_level(harness, CHANNEL)
    assert f"<{deploy.permalink}|Deploy #{deploy.id}>" in mirror and f"in <#{PAYMENTS}>" in mirror
    assert "payments `1.0.0` to staging" in mirror and "<@U0DAVE>" in mirror
    assert deploy.permalink.startswith(f"https://slipway-test.slack.com/archives/{PAYMENTS}/")
    assert len(harness.store.outbox.items(f"deploy-{deploy.id}-mirror")) == 1  # queued once, however often it changed

    # a service without mirror_to_main_channel: nothing in the main channel; one without a channel: there
    await harness.command("search 1.0.0", user="U0DAVE")
    search = harness.latest_deploy()
    assert harness.message_of(search).channel == SEARCH and thread(harness, SEARCH, search.message_ts)
    await harness.command("web 1.0.0", user="U0DAVE")
    web = harness.latest_deploy()
    assert harness.message_of(web).channel == CHANNEL
    assert len(top_level(harness, CHANNEL)) == 2  # the mirror line and web's own message
    assert top_level(harness, PAYMENTS) == [harness.message_of(deploy).text]


async def test_a_thread_follows_its_message_after_the_service_moves_channel(harness: Harness) -> None:
    await harness.command("payments 1.0.0", user="U0DAVE")
    deploy = harness.latest_deploy()
    assert deploy.channel == PAYMENTS
    harness.config = parse_config(config(payments_channel="C0PAYMENTS2"))
    await harness.restart()
    await approve(harness, deploy.id, "U0PAT")
    deploy = harness.deploy(deploy.id)
    assert deploy.status == "succeeded" and deploy.channel == PAYMENTS
    assert any("Handing payments 1.0.0" in note for note in thread(harness, PAYMENTS, deploy.message_ts))
    assert harness.fake.channel_messages("C0PAYMENTS2") == []
    # the next deploy goes where the config now says
    await harness.command("payments 1.0.1", user="U0DAVE")
    assert harness.message_of(harness.latest_deploy()).channel == "C0PAYMENTS2"


async def test_alerts_tied_to_no_deploy_open_their_thread_in_the_services_channel(harness: Harness, clock) -> None:
    status, _ = await send(harness, "/webhooks/alertmanager", am_payload(am_alert(service="payments",
                                                                                  starts=clock.now)))
    assert status == 200
    [breach] = top_level(harness, PAYMENTS)
    assert "HighErrorRate" in breach or "error_rate" in breach
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(service="web", starts=clock.now),
                                                             group_key="web-group"))
    assert len(top_level(harness, ALERTS)) == 1  # a service without a channel: the alerts channel
    assert top_level(harness, CHANNEL) == []


async def test_an_alert_tied_to_a_deploy_goes_into_its_thread_in_the_services_channel(harness: Harness,
                                                                                    clock) -> None:
    await harness.command("payments 1.0.0", user="U0DAVE")
    deploy = harness.latest_deploy()
    await approve(harness, deploy.id, "U0PAT")
    deploy = harness.deploy(deploy.id)
    starts = datetime.fromisoformat(deploy.finished_at) + timedelta(minutes=2)
    await send(harness, "/webhooks/alertmanager",
               am_payload(am_alert(service="payments", env="staging", starts=starts)))
    assert any("Breach" in json.dumps(m.blocks) for m in harness.fake.channel_messages(PAYMENTS)
               if m.thread_ts == deploy.message_ts)
    assert top_level(harness, ALERTS) == [] and len(top_level(harness, PAYMENTS)) == 1


async def test_a_private_channel_the_bot_is_not_in_cancels_the_request_saying_to_invite_it(
        harness: Harness) -> None:
    harness.fake.private_channels.add(SEARCH)
    await harness.command("search 1.0.0", user="U0DAVE")
    deploy = harness.latest_deploy()
    assert deploy.status == "cancelled"
    assert f"invite the bot to <#{SEARCH}>" in deploy.status_reason and "not_in_channel" in deploy.status_reason
    told = harness.fake.responses[-1]  # the requester, through the command's response URL
    assert told["response_type"] == "ephemeral"
    assert f"could not post deploy #{deploy.id} in <#{SEARCH}> (Slack said `not_in_channel`)" in told["text"]
    assert f"Invite the bot to <#{SEARCH}> (`/invite @Slipway` there)" in told["text"]
    assert harness.fake.channel_messages(SEARCH) == []
    harness.fake.private_channels.clear()  # invited
    assert "needs no approval" in said(await harness.command("search 1.0.0", user="U0DAVE"))
    assert harness.message_of(harness.latest_deploy()).channel == SEARCH


# -- owners: status, stats, App Home ---------------------------------------------------------


def titles(blocks: list[dict]) -> list[str]:
    """The service rows' titles ("*api* — @payments")."""
    return [b["text"]["text"] for b in blocks if b.get("type") == "section" and b.get("fields") and "text" in b]


async def status(harness: Harness, text: str) -> dict:
    reply = json.loads(await harness.command(text))
    assert block_kit_problem(reply["blocks"]) is None
    return reply


async def test_status_shows_owners_and_filters_by_owner(harness: Harness) -> None:
    reply = await status(harness, "status")
    assert titles(reply["blocks"]) == ["*payments* — @payments", "*search* — @search, <@U0SAM>", "*web*"]
    for text in ("status --owner @payments", "status --owner payments", "status --owner=@Payments",
                 "status --owner <!subteam^S0PAY|@payments>"):
        reply = await status(harness, text)
        assert titles(reply["blocks"]) == ["*payments* — @payments"], text
        assert reply["blocks"][0]["text"]["text"] == "Deploy status: @payments"
    reply = await status(harness, "status --owner <@U0SAM|sam>")
    assert titles(reply["blocks"]) == ["*search* — @search, <@U0SAM>"]
    assert titles((await status(harness, "status search --owner @search"))["blocks"]) == [
        "*search* — @search, <@U0SAM>"]

    refused = said(await harness.command("status --owner @nobody"))
    assert "No service belongs to @nobody" in refused and "@payments" in refused and "@search" in refused
    refused = said(await harness.command("status web --owner @payments"))
    assert "`web` does not belong to @payments" in refused and "no `owners`" in refused
    assert "`--owner` needs a team" in said(await harness.command("status --owner"))


async def test_stats_sum_an_owners_services(harness: Harness) -> None:
    for version in ("1.0.0", "1.1.0"):
        harness.mark_succeeded("payments", "staging", version)
    harness.mark_succeeded("search", "staging", "1.0.0")
    harness.mark_succeeded("web", "staging", "1.0.0")
    code, body = await harness.slack.command("stats --owner @payments 7", "U0DAVE")
    assert code == 200 and "the services of @payments" in body
    await harness.settle()
    reply = harness.fake.responses[-1]
    assert block_kit_problem(reply["blocks"]) is None
    shown = json.dumps(reply["blocks"])
    assert "The services of @payments: payments" in shown and "(2 in 7 days)" in shown
    code, body = await harness.slack.command("stats --owner @search", "U0DAVE")
    await harness.settle()
    assert "(1 in 30 days)" in json.dumps(harness.fake.responses[-1]["blocks"])
    assert "No service belongs to @nobody" in said(await harness.command("stats --owner @nobody"))


async def test_the_app_home_shows_owners_and_an_owners_choice(harness: Harness) -> None:
    harness.mark_succeeded("payments", "staging", "1.0.0")
    harness.mark_succeeded("web", "staging", "2.0.0")
    code, _ = await harness.slack.event({"type": "app_home_opened", "user": "U0PAT", "channel": "D0", "tab": "home"})
    assert code == 200
    await harness.settle()
    view = harness.fake.home_views["U0PAT"]
    assert titles(view["blocks"]) == ["*payments* — @payments", "*search* — @search, <@U0SAM>", "*web*"]

    reply = said(await harness.command("home --owner @payments", user="U0PAT"))
    assert "now shows only the services of @payments: payments" in reply
    view = harness.fake.home_views["U0PAT"]
    assert block_kit_problem(view["blocks"], max_blocks=100) is None
    assert view["blocks"][0]["text"]["text"] == "What runs where: @payments"
    assert titles(view["blocks"]) == ["*payments* — @payments"]
    assert "*payments* `1.0.0`" in json.dumps(view["blocks"]) and "*web* `2.0.0`" not in json.dumps(view["blocks"])

    # kept to that team as deploys change; someone else's tab shows everything
    await harness.slack.event({"type": "app_home_opened", "user": "U0DAVE", "channel": "D1", "tab": "home"})
    await harness.command("web 2.1.0", user="U0DAVE")
    assert titles(harness.fake.home_views["U0PAT"]["blocks"]) == ["*payments* — @payments"]
    assert len(titles(harness.fake.home_views["U0DAVE"]["blocks"])) == 3

    assert "every service again" in said(await harness.command("home", user="U0PAT"))
    assert len(titles(harness.fake.home_views["U0PAT"]["blocks"])) == 3
    assert "No service belongs to @nobody" in said(await harness.command("home --owner @nobody", user="U0PAT"))
