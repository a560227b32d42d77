"""Clicks on the deploy message: checklist, Approve, Reject, Cancel —
the approval rules, unauthorised clicks, double clicks and retries."""

from __future__ import annotations

import asyncio

import pytest

from bot.slack.blocks import (
    ACTION_APPROVE,
    ACTION_CANCEL,
    ACTION_CHECKLIST,
    ACTION_REJECT,
)
from store import Deploy
from tests.conftest import CHANNEL, CONFIG, Harness


async def request_production(harness: Harness, user: str = "U0DAVE") -> Deploy:
    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.command("api v2.7.0 production", user=user)
    return harness.latest_deploy()


async def tick_all(harness: Harness, deploy: Deploy, user: str = "U0ALICE") -> None:
    for item in deploy.checklist:
        await harness.click(harness.message_of(deploy), user, ACTION_CHECKLIST,
                            block_id=f"checklist:{deploy.id}:{item.position}", selected=True)


def last_ephemeral(harness: Harness, user: str) -> str:
    told = harness.fake.ephemerals_for(user)
    assert told, f"{user} was told nothing"
    assert told[-1].channel == CHANNEL
    return told[-1].text


def section_texts(harness: Harness, deploy: Deploy) -> str:
    message = harness.message_of(deploy)
    return "\n".join(b["text"]["text"] for b in message.blocks if b["type"] == "section" and "text" in b)


async def test_two_approvers_and_a_ticked_checklist_approve_the_deploy(harness: Harness) -> None:
    deploy = await request_production(harness)
    await tick_all(harness, deploy, user="U0DAVE")  # the requester may tick
    assert "Checklist:* 2 of 2 ticked" in section_texts(harness, deploy)
    assert "_ticked by <@U0DAVE>_" in section_texts(harness, deploy)

    assert await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE) == 200
    assert harness.deploy(deploy.id).status == "awaiting_approval"
    assert "*Approvals:* 1 of 2 (<@U0ALICE>)" in section_texts(harness, deploy)

    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    approved = harness.deploy(deploy.id)
    assert approved.approvers == ["U0ALICE", "U0BOB"] and approved.approved_at is not None
    actions = [e.action for e in harness.store.audit.events(deploy.id)]
    assert actions[:6] == ["requested", "checklist_ticked", "checklist_ticked", "approval", "approval", "approved"]
    # the final approval hands the deploy to the engine at once
    assert actions[6] == "deploy_started" and approved.status == "succeeded"
    text = section_texts(harness, deploy)
    assert "Approved by:* <@U0ALICE>, <@U0BOB>" in text
    assert not [b for b in harness.message_of(deploy).blocks
                if b["type"] == "actions" and b["block_id"].startswith("deploy:")]


async def test_final_approval_waits_for_every_checklist_item(harness: Harness) -> None:
    deploy = await request_production(harness)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    told = last_ephemeral(harness, "U0BOB")
    assert "final approval" in told and "• Migrations tested on staging" in told
    assert harness.deploy(deploy.id).approvers == ["U0ALICE"]

    await tick_all(harness, deploy)
    # unticking one item again re-opens the checklist
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_CHECKLIST,
                        block_id=f"checklist:{deploy.id}:1", selected=False)
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    assert "• Rollback plan documented" in last_ephemeral(harness, "U0BOB")
    assert "Migrations" not in last_ephemeral(harness, "U0BOB")

    await tick_all(harness, deploy)
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    assert harness.deploy(deploy.id).approved_at is not None


async def test_requester_cannot_approve_their_own_deploy(harness: Harness) -> None:
    deploy = await request_production(harness, user="U0ALICE")
    await tick_all(harness, deploy)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    assert "cannot approve it" in last_ephemeral(harness, "U0ALICE")
    assert harness.deploy(deploy.id).approvals == ()
    refused = [e for e in harness.store.audit.events(deploy.id) if e.action == "refused"]
    assert refused[-1].actor == "U0ALICE" and refused[-1].detail == {"attempted": "approve_own"}
    assert refused[-1].source.startswith(f"slack:{ACTION_APPROVE}:")


@pytest.mark.parametrize("config_text", [CONFIG.replace("allow_self_approval: false", "allow_self_approval: true")],
                         ids=["allow_self_approval"])
async def test_self_approval_when_the_config_allows_it(harness: Harness) -> None:
    deploy = await request_production(harness, user="U0ALICE")
    await tick_all(harness, deploy)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    assert harness.deploy(deploy.id).approvers == ["U0ALICE", "U0BOB"]
    assert harness.deploy(deploy.id).approved_at is not None


async def test_non_approver_is_told_who_can_and_is_audited(harness: Harness) -> None:
    deploy = await request_production(harness)
    await harness.click(harness.message_of(deploy), "U0MALLORY", ACTION_APPROVE)
    told = last_ephemeral(harness, "U0MALLORY")
    assert "not an approver for production" in told and "<@U0ALICE>" in told and "@sre" in told
    assert harness.deploy(deploy.id).approvals == ()
    assert [e.detail for e in harness.store.audit.events(deploy.id) if e.actor == "U0MALLORY"] == [
        {"attempted": "approve"}]
    # nor may they tick, reject or cancel
    await harness.click(harness.message_of(deploy), "U0MALLORY", ACTION_CHECKLIST,
                        block_id=f"checklist:{deploy.id}:0", selected=True)
    assert "can tick the checklist" in last_ephemeral(harness, "U0MALLORY")
    await harness.click(harness.message_of(deploy), "U0MALLORY", ACTION_REJECT)
    assert "Only approvers of production can reject" in last_ephemeral(harness, "U0MALLORY")
    await harness.click(harness.message_of(deploy), "U0MALLORY", ACTION_CANCEL)
    assert "can cancel" in last_ephemeral(harness, "U0MALLORY")
    after = harness.deploy(deploy.id)
    assert after.status == "awaiting_approval" and after.unticked == [i.label for i in deploy.checklist]


async def test_usergroup_members_resolve_through_the_web_api(harness: Harness) -> None:
    deploy = await request_production(harness)
    await tick_all(harness, deploy, user="U0SRE1")
    await harness.click(harness.message_of(deploy), "U0SRE1", ACTION_APPROVE)
    await harness.click(harness.message_of(deploy), "U0SRE2", ACTION_APPROVE)
    assert harness.deploy(deploy.id).approvers == ["U0SRE1", "U0SRE2"]
    # resolved once and cached, not once per click
    assert len(harness.fake.calls_to("usergroups.list")) == 1
    assert len(harness.fake.calls_to("usergroups.users.list")) == 1


async def test_one_vote_per_person_even_on_a_double_click(harness: Harness) -> None:
    deploy = await request_production(harness)
    await tick_all(harness, deploy)
    message = harness.message_of(deploy)
    statuses = await asyncio.gather(*(harness.slack.click(message, "U0ALICE", ACTION_APPROVE) for _ in range(5)))
    await harness.settle()
    assert statuses == [(200, "")] * 5
    assert harness.deploy(deploy.id).approvers == ["U0ALICE"]
    assert harness.deploy(deploy.id).status == "awaiting_approval"
    assert sum("already counted" in e.text for e in harness.fake.ephemerals_for("U0ALICE")) == 4


async def test_concurrent_final_approvals_approve_once(harness: Harness) -> None:
    deploy = await request_production(harness)
    await tick_all(harness, deploy)
    message = harness.message_of(deploy)
    await asyncio.gather(*(harness.slack.click(message, user, ACTION_APPROVE)
                           for user in ("U0ALICE", "U0BOB", "U0CAROL", "U0SRE1")))
    await harness.settle()
    approved = harness.deploy(deploy.id)
    assert len(approved.approvals) == 2
    actions = [e.action for e in harness.store.audit.events(deploy.id)]
    assert actions.count("approved") == 1 and actions.count("deploy_started") == 1
    late = [u for u in ("U0ALICE", "U0BOB", "U0CAROL", "U0SRE1") if u not in approved.approvers]
    for user in late:
        assert "there is nothing left to decide" in last_ephemeral(harness, user)
    # the message shows the final state, whichever update reached Slack last
    assert "Succeeded" in section_texts(harness, deploy)


async def test_a_retried_click_after_approval_changes_nothing(harness: Harness) -> None:
    deploy = await request_production(harness)
    await tick_all(harness, deploy)
    for user in ("U0ALICE", "U0BOB"):
        await harness.click(harness.message_of(deploy), user, ACTION_APPROVE)
    events_before = len(harness.store.audit.events(deploy.id))
    # Slack re-sends the same payload (X-Slack-Retry-Num) from a client still showing the buttons
    body = harness.slack.click_body(_with_buttons(harness, deploy), "U0CAROL", ACTION_APPROVE)
    headers = harness.slack.signed_headers(body) | {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    status, _ = await harness.slack.post(body, headers)
    await harness.settle()
    assert status == 200
    assert harness.deploy(deploy.id).approvers == ["U0ALICE", "U0BOB"]
    assert "already succeeded" in last_ephemeral(harness, "U0CAROL")
    assert len(harness.store.audit.events(deploy.id)) == events_before


def _with_buttons(harness: Harness, deploy: Deploy):
    """The message as it looked while it still had buttons (a stale client)."""
    from bot.sandbox.fake_slack import Message
    from bot.slack.blocks import deploy_blocks

    pending = Deploy(**{**deploy.__dict__, "status": "awaiting_approval"})
    return Message(deploy.channel, deploy.message_ts, "", deploy_blocks(pending, required_approvals=2))


async def test_reject_by_an_approver_ends_the_request(harness: Harness) -> None:
    deploy = await request_production(harness)
    await harness.click(harness.message_of(deploy), "U0CAROL", ACTION_REJECT)
    rejected = harness.deploy(deploy.id)
    assert rejected.status == "rejected" and rejected.status_reason == "rejected by <@U0CAROL>"
    assert "Rejected — rejected by <@U0CAROL>" in section_texts(harness, deploy)
    # a click on the stale message afterwards is refused without effect
    await harness.click(_with_buttons(harness, rejected), "U0ALICE", ACTION_APPROVE)
    assert "already rejected" in last_ephemeral(harness, "U0ALICE")
    # and the service+environment is free again
    assert "waiting for approval" in await harness.command("api 2.7.0 production")


async def test_cancel_by_the_requester(harness: Harness) -> None:
    deploy = await request_production(harness, user="U0DAVE")
    await harness.click(harness.message_of(deploy), "U0DAVE", ACTION_CANCEL)
    assert harness.deploy(deploy.id).status == "cancelled"
    await harness.click(_with_buttons(harness, deploy), "U0DAVE", ACTION_CANCEL)
    assert "already cancelled" in last_ephemeral(harness, "U0DAVE")
    assert [e.action for e in harness.store.audit.events(deploy.id)] == ["requested", "cancelled"]


async def test_a_refusal_goes_through_the_response_url_when_slack_refuses_the_ephemeral(harness: Harness) -> None:
    deploy = await request_production(harness)
    harness.fake.missing_channels.add(CHANNEL)  # e.g. the bot was removed from the channel
    await harness.click(harness.message_of(deploy), "U0MALLORY", ACTION_APPROVE)
    answer = harness.fake.responses[-1]
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
    assert "not an approver for production" in answer["text"]


async def test_a_lock_placed_after_the_request_stops_its_approval(harness: Harness) -> None:
    deploy = await request_production(harness)
    await tick_all(harness, deploy)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    await harness.command("lock api production incident in progress", user="U0ERIN")
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    told = last_ephemeral(harness, "U0BOB")
    assert f"#{deploy.id} cannot be approved now: api is locked on production by <@U0ERIN>" in told
    assert harness.deploy(deploy.id).status == "awaiting_approval"
    await harness.command("unlock api production", user="U0ERIN")
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "succeeded"


async def test_an_approved_deploy_blocked_before_it_starts_is_cancelled_with_the_reason(harness: Harness,
                                                                                       clock) -> None:
    """Approved while Slipway was down, then a freeze began: it must not start."""
    from datetime import datetime, timezone

    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.stop()
    from store import Store
    store = Store.open(harness.db_path, clock=clock)
    approved = store.deploys.create(service="api", environment="production", version="2.7.0",
                                    version_prefixed=False, requested_by="U0DAVE", previous_version=None,
                                    checklist=[], needs_approval=False)
    store.close()
    clock.now = datetime(2026, 12, 24, 9, 0, tzinfo=timezone.utc)
    await harness.start()
    await harness.settle()
    stopped = harness.deploy(approved.id)
    assert stopped.status == "cancelled"
    assert stopped.status_reason.startswith("stopped before it started: production is frozen until")
    assert "deploy_started" not in [e.action for e in harness.store.audit.events(approved.id)]


async def test_an_approval_refused_because_of_a_lock_or_given_twice_is_audited(harness: Harness) -> None:
    deploy = await request_production(harness)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)  # a double click
    assert "already counted" in last_ephemeral(harness, "U0ALICE")
    await harness.command('lock api production "incident"', user="U0ERIN")
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    assert "cannot be approved now" in last_ephemeral(harness, "U0BOB")
    refused = [(e.actor, e.detail["attempted"]) for e in harness.store.audit.events(deploy.id) if e.action == "refused"]
    assert refused == [("U0ALICE", "approve_again"), ("U0BOB", "approve_while_blocked")]
    assert harness.deploy(deploy.id).approvers == ["U0ALICE"]  # nothing else changed
