"""Slack answering 429 on every other call: everything still arrives,
nothing is lost, and the deploy's record is unaffected."""

from __future__ import annotations

from bot.slack.blocks import ACTION_APPROVE, ACTION_CHECKLIST
from tests.conftest import Harness


async def test_every_other_call_rate_limited_loses_nothing(harness: Harness) -> None:
    harness.fake.rate_limit_every = 2
    harness.fake.retry_after = 0  # slack_sdk still waits Retry-After plus up to a second of jitter
    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.command("api v2.7.0 production", user="U0DAVE")
    deploy = harness.latest_deploy()
    for position in (0, 1):
        await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_CHECKLIST,
                            block_id=f"checklist:{deploy.id}:{position}", selected=True)
    for approver in ("U0ALICE", "U0BOB"):
        await harness.click(harness.message_of(deploy), approver, ACTION_APPROVE)

    deploy = harness.deploy(deploy.id)
    assert deploy.status == "succeeded"
    limited = [c for c in harness.fake.calls if c.status == 429]
    assert len(limited) >= 5
    assert deploy.permalink is not None  # chat.getPermalink got through too
    replies = [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
               if c.args.get("thread_ts") == deploy.message_ts]
    assert any("is live on production" in r for r in replies)
    assert any(r.startswith("*Ship report") for r in replies)
    assert "Succeeded" in str(harness.message_of(deploy).blocks)  # the last update was not dropped
