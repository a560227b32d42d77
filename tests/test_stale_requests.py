"""Approvals that go stale: requests expire, old approvals stop counting,
approvers are reminded in the thread, and the requester hears by direct
message when their deploy needs them, succeeds or fails. Time is the
injectable clock's; nothing here sleeps."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from bot.config import parse_config
from bot.errors import ConfigError
from bot.sandbox.fake_slack import dm_channel
from bot.slack.blocks import (
    ACTION_APPROVE,
    ACTION_CANCEL,
    ACTION_CHECKLIST,
    ACTION_REJECT,
)
from store import Deploy, stamp
from tests.conftest import ENGINE, PYTHON, Clock, Harness, engine_calls


@pytest.fixture
def config_text(record: Path) -> str:
    return textwrap.dedent(f"""\
        channel: C0DEPLOYS
        environments:
          - name: staging
          - name: production
            requires: staging
            approvals:
              required: 2
              approvers: [U0ALICE, U0BOB, U0CAROL, "@sre"]
              approval_valid_for: 8h
              remind_every: 2h
            checklist: [Rollback plan documented]
        services:
          api:
            deploy:
              command: ["{PYTHON}", "{ENGINE}", "--record", "{record}"]
          broken:
            deploy:
              command: ["{PYTHON}", "{ENGINE}", "--exit", "3"]
        """)


async def request_production(harness: Harness, version: str = "2.7.0", user: str = "U0DAVE") -> Deploy:
    harness.mark_succeeded("api", "staging", version)
    await harness.command(f"api {version} production", user=user)
    deploy = harness.latest_deploy()
    assert deploy.status == "awaiting_approval"
    return deploy


async def tick_all(harness: Harness, deploy: Deploy, user: str = "U0DAVE") -> None:
    for item in deploy.checklist:
        await harness.click(harness.message_of(deploy), user, ACTION_CHECKLIST,
                            block_id=f"checklist:{deploy.id}:{item.position}", selected=True)


async def sweep(harness: Harness) -> None:
    await harness.slipway.nudges.sweep()
    await harness.settle()


def dms(harness: Harness, user: str) -> list[str]:
    return [m.text for m in harness.fake.channel_messages(dm_channel(user))]


def thread(harness: Harness, deploy: Deploy) -> list[str]:
    return [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
            if c.args.get("thread_ts") == deploy.message_ts]


def top_level(harness: Harness) -> list:
    return [m for m in harness.fake.channel_messages(harness.config.channel) if m.thread_ts is None]


def message_text(harness: Harness, deploy: Deploy) -> str:
    return str(harness.message_of(deploy).blocks)


# -- expiry ---------------------------------------------------------------------


async def test_a_request_nobody_decides_on_expires_in_place_and_its_requester_is_told(
        harness: Harness, clock: Clock) -> None:
    deploy = await request_production(harness)
    assert "Expires" in message_text(harness, deploy)
    clock.advance(hours=23, minutes=59)
    await sweep(harness)
    assert harness.deploy(deploy.id).status == "awaiting_approval"

    clock.advance(minutes=1)  # the default lifetime is 24 h
    await sweep(harness)
    expired = harness.deploy(deploy.id)
    assert expired.status == "expired" and "within 24h" in expired.status_reason
    shown = message_text(harness, deploy)
    assert "Expired" in shown and "deploy_approve" not in shown  # updated in place, no buttons left
    assert any("Expired" in line for line in thread(harness, deploy))
    [dm] = dms(harness, "U0DAVE")
    assert "expired" in dm and "`/deploy api 2.7.0 production`" in dm
    assert [e.action for e in harness.store.audit.events(deploy.id)][-1] == "expired"

    await sweep(harness)  # a second look changes nothing and tells nobody twice
    assert len(dms(harness, "U0DAVE")) == 1
    # the environment is free for a new request
    assert "waiting for approval" in await harness.command("api 2.7.0 production", user="U0DAVE")


async def test_a_click_on_an_expired_request_is_refused_even_before_the_sweep_sees_it(
        harness: Harness, clock: Clock) -> None:
    deploy = await request_production(harness)
    clock.advance(hours=25)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "expired"
    assert not harness.deploy(deploy.id).approvals
    [refusal] = harness.fake.ephemerals_for("U0ALICE")
    assert "expired" in refusal.text and "Request it again" in refusal.text
    assert len(dms(harness, "U0DAVE")) == 1


def test_expiry_validity_and_reminders_are_configurable(config_text: str) -> None:
    approvals = parse_config(config_text.replace("remind_every: 2h", "remind_every: null\n      expire_after: 30m")
                             ).environments[1].approvals
    assert (approvals.expire_after, approvals.approval_valid_for, approvals.remind_every) == (1800, 8 * 3600, None)
    defaults = parse_config(config_text.replace("      approval_valid_for: 8h\n", "").replace("      remind_every: 2h\n", ""))
    assert (defaults.environments[1].approvals.expire_after, defaults.environments[1].approvals.remind_every) == (
        24 * 3600, 2 * 3600)
    with pytest.raises(ConfigError) as bad:
        parse_config(config_text.replace("remind_every: 2h", "remind_every: soon"))
    assert "remind_every" in bad.value.problems[0] and "not a duration" in bad.value.problems[0]


# -- stale approvals --------------------------------------------------------------


async def test_an_approval_given_too_long_ago_no_longer_counts_and_can_be_given_again(
        harness: Harness, clock: Clock, record: Path) -> None:
    deploy = await request_production(harness)
    await tick_all(harness, deploy)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    clock.advance(hours=8, minutes=1)
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    still = harness.deploy(deploy.id)
    assert still.status == "awaiting_approval"  # Alice's approval is 8h01m old: one of two counts
    shown = message_text(harness, deploy)
    assert "*Approvals:* 1 of 2 (<@U0BOB>)" in shown and "approve again" in shown and "<@U0ALICE>" in shown

    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)  # renewed
    done = harness.deploy(deploy.id)
    assert done.status == "succeeded" and len(engine_calls(record)) == 1
    renewed = [e for e in harness.store.audit.events(deploy.id) if e.action == "approval"][-1]
    assert renewed.actor == "U0ALICE" and "renewed" in renewed.detail


async def test_a_fresh_approval_is_still_counted_once(harness: Harness, clock: Clock) -> None:
    deploy = await request_production(harness)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    clock.advance(hours=1)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    assert len(harness.deploy(deploy.id).approvals) == 1
    assert "already counted; 1 more needed" in harness.fake.ephemerals_for("U0ALICE")[-1].text


async def test_an_approved_deploy_whose_approvals_went_stale_before_it_started_goes_back_for_approval(
        harness: Harness, clock: Clock, record: Path) -> None:
    # approved while no Slipway could start it (the store's own transitions), then nobody started it for 9 h
    harness.mark_succeeded("api", "staging", "2.7.0")
    store = harness.store
    deploy = store.deploys.create(service="api", environment="production", version="2.7.0", version_prefixed=False,
                                  requested_by="U0DAVE", previous_version=None, checklist=[], needs_approval=True,
                                  expires_at=None)
    store.deploys.record_approval(deploy.id, "U0ALICE", required=2)
    assert store.deploys.record_approval(deploy.id, "U0BOB", required=2).status == "approved"
    clock.advance(hours=9)

    await harness.restart()  # recovery starts approved deploys
    await harness.settle()
    reopened = harness.deploy(deploy.id)
    assert reopened.status == "awaiting_approval" and "more than 8h before it could start" in reopened.status_reason
    assert engine_calls(record) == []  # the engine was never reached
    assert any("Not started" in line for line in thread(harness, reopened))
    assert any("did not start" in dm for dm in dms(harness, "U0DAVE"))

    await harness.click(harness.message_of(reopened), "U0ALICE", ACTION_APPROVE)
    await harness.click(harness.message_of(reopened), "U0CAROL", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "succeeded" and len(engine_calls(record)) == 1


# -- reminders ------------------------------------------------------------------------


async def test_approvers_are_reminded_once_per_interval_in_the_thread(harness: Harness, clock: Clock) -> None:
    deploy = await request_production(harness)
    top_level_before = len(top_level(harness))
    clock.advance(hours=1, minutes=59)
    await sweep(harness)
    assert not [t for t in thread(harness, deploy) if "Reminder" in t]

    clock.advance(minutes=1)
    await sweep(harness)
    await sweep(harness)  # the same moment again: still one reminder
    [reminder] = [t for t in thread(harness, deploy) if "Reminder" in t]
    assert "needs 2 more approvals" in reminder
    assert "<@U0ALICE>" in reminder and "<!subteam^SSRE>" in reminder  # a usergroup is mentioned so it notifies

    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    clock.advance(hours=1)
    await sweep(harness)  # an hour after the reminder: not yet
    assert len([t for t in thread(harness, deploy) if "Reminder" in t]) == 1
    clock.advance(hours=1)
    await sweep(harness)
    second = [t for t in thread(harness, deploy) if "Reminder" in t][-1]
    assert "needs 1 more approval from" in second and "<@U0ALICE>" not in second  # she has approved
    assert "Unticked: 1 checklist item(s)" in second
    # reminders are thread lines, never new posts in the channel
    assert len(top_level(harness)) == top_level_before
    assert [e.action for e in harness.store.audit.events(deploy.id)].count("reminded") == 2


# -- direct messages --------------------------------------------------------------


async def test_the_requester_hears_when_their_deploy_succeeds_or_fails(harness: Harness) -> None:
    await harness.command("api 2.7.0 staging", user="U0DAVE")
    await harness.command("broken 1.0.0 staging", user="U0ERIN")
    [success] = dms(harness, "U0DAVE")
    assert "succeeded" in success and "api 2.7.0 to staging" in success
    [failure] = dms(harness, "U0ERIN")
    assert "failed" in failure and "exit 3" in failure


async def test_a_persons_direct_message_channel_is_opened_once(harness: Harness) -> None:
    await harness.command("api 2.7.0 staging", user="U0DAVE")
    await harness.command("api 2.7.1 staging", user="U0DAVE")
    assert len(dms(harness, "U0DAVE")) == 2
    assert [c.args["users"] for c in harness.fake.calls_to("conversations.open")] == ["U0DAVE"]


async def test_the_requester_hears_of_a_rejection_but_not_of_their_own_cancel(harness: Harness) -> None:
    rejected = await request_production(harness, "2.7.0")
    await harness.click(harness.message_of(rejected), "U0BOB", ACTION_REJECT)
    [dm] = dms(harness, "U0DAVE")
    assert "rejected by <@U0BOB>" in dm

    cancelled = await request_production(harness, "2.7.1")
    await harness.click(harness.message_of(cancelled), "U0DAVE", ACTION_CANCEL)
    assert harness.deploy(cancelled.id).status == "cancelled"
    assert len(dms(harness, "U0DAVE")) == 1


async def test_the_requester_is_asked_to_finish_the_checklist_when_the_final_approval_waits_on_it(
        harness: Harness) -> None:
    deploy = await request_production(harness)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "awaiting_approval"
    [dm] = dms(harness, "U0DAVE")
    assert "<@U0BOB> wants to give the final approval" in dm and "• Rollback plan documented" in dm


async def test_automatic_actions_send_no_direct_message_to_a_non_person(harness: Harness) -> None:
    deploy = harness.store.deploys.create(service="api", environment="staging", version="2.7.0",
                                          version_prefixed=False, requested_by="slipway", previous_version=None,
                                          checklist=[], needs_approval=False)
    harness.slipway.runner.start(deploy.id)
    await harness.settle()
    assert harness.deploy(deploy.id).status == "succeeded"
    assert not harness.fake.calls_to("conversations.open")


async def test_the_requester_is_asked_about_the_checklist_once_however_often_approvers_click(
        harness: Harness) -> None:
    deploy = await request_production(harness)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    for approver in ("U0BOB", "U0BOB", "U0CAROL"):  # a double click, then another approver
        await harness.click(harness.message_of(deploy), approver, ACTION_APPROVE)
    assert len(dms(harness, "U0DAVE")) == 1
    refused = [e for e in harness.store.audit.events(deploy.id) if e.action == "refused"]
    assert [(e.actor, e.detail) for e in refused] == [
        (user, {"attempted": "approve", "unticked": ["Rollback plan documented"]})
        for user in ("U0BOB", "U0BOB", "U0CAROL")]


async def test_a_request_past_its_expiry_does_not_stand_in_the_way_before_the_sweep_sees_it(
        harness: Harness, clock: Clock) -> None:
    old = await request_production(harness)
    clock.advance(hours=25)
    assert "waiting for approval" in await harness.command("api 2.7.0 production", user="U0DAVE")
    assert harness.deploy(old.id).status == "expired"
    new = harness.latest_deploy()
    assert new.id != old.id and new.status == "awaiting_approval"
    assert len([dm for dm in dms(harness, "U0DAVE") if "expired" in dm]) == 1


async def test_a_request_that_goes_back_for_approval_gets_a_lifetime_of_its_own(
        harness: Harness, clock: Clock) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    store = harness.store
    deploy = store.deploys.create(service="api", environment="production", version="2.7.0", version_prefixed=False,
                                  requested_by="U0DAVE", previous_version=None, checklist=[], needs_approval=True,
                                  expires_at=stamp(clock() + timedelta(hours=24)))
    store.deploys.record_approval(deploy.id, "U0ALICE", required=2)
    assert store.deploys.record_approval(deploy.id, "U0BOB", required=2).status == "approved"
    clock.advance(hours=30)  # nobody could start it for longer than its request would have lived

    await harness.restart()
    await harness.settle()
    assert harness.deploy(deploy.id).status == "awaiting_approval"
    await sweep(harness)
    reopened = harness.deploy(deploy.id)
    assert reopened.status == "awaiting_approval"  # told to approve it again, it is not expired under them
    assert reopened.expires_at == stamp(clock() + timedelta(hours=24))
    clock.advance(hours=24)
    await sweep(harness)
    assert harness.deploy(deploy.id).status == "expired"
