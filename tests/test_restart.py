"""Slipway stopped and started again on the same database file."""

from __future__ import annotations

from bot.render import ACTION_APPROVE, ACTION_CHECKLIST
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
