"""Slipway stopped and started again on the same database file."""

from __future__ import annotations

from bot.slack.blocks import ACTION_APPROVE, ACTION_CHECKLIST
from tests.conftest import Harness


async def test_an_awaiting_deploy_is_still_approvable_after_a_restart(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.command("api v2.7.0 production", user="U0DAVE")
    deploy = harness.latest_deploy()
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_CHECKLIST,
                        block_id=f"checklist:{deploy.id}:0", selected=True)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)

    await harness.restart()

    kept = harness.deploy(deploy.id)
    assert kept.status == "awaiting_approval" and kept.approvers == ["U0ALICE"]
    assert kept.checklist[0].ticked_by == "U0ALICE" and kept.message_ts == deploy.message_ts
    # the message from before the restart still works
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_CHECKLIST,
                        block_id=f"checklist:{deploy.id}:1", selected=True)
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    assert harness.deploy(deploy.id).approvers == ["U0ALICE", "U0BOB"]
    assert harness.deploy(deploy.id).status == "succeeded"


async def test_requests_recorded_but_never_announced_are_announced_after_a_restart(harness: Harness) -> None:
    """Slipway died between recording a request and posting its message."""
    harness.mark_succeeded("api", "staging", "2.7.0")
    waiting = harness.store.deploys.create(
        service="api", environment="production", version="2.7.0", version_prefixed=True, requested_by="U0DAVE",
        previous_version=None, checklist=["Rollback plan documented"], needs_approval=True)
    approved = harness.store.deploys.create(
        service="web", environment="staging", version="1.0.0", version_prefixed=False, requested_by="U0DAVE",
        previous_version=None, checklist=[], needs_approval=False)
    await harness.restart()
    await harness.settle()
    assert harness.message_of(waiting).blocks[0]["text"]["text"] == "Deploy api v2.7.0 to production"
    assert harness.deploy(waiting.id).status == "awaiting_approval"
    assert harness.deploy(approved.id).status == "succeeded"
    assert "Succeeded" in str(harness.message_of(approved).blocks)
