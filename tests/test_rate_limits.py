"""Slack answering 429 on every other call: everything still arrives,
nothing is lost, the deploy's record is unaffected, and each retry waited
the Retry-After Slack asked for (the waits are recorded, not slept)."""

from __future__ import annotations

from tests.conftest import Harness


async def test_every_other_call_rate_limited_loses_nothing(harness: Harness, slack_sdk_waits: list[float]) -> None:
    harness.fake.rate_limit_every = 2
    harness.fake.retry_after = 2
    deploy = await harness.request_and_approve("api", "2.7.0")  # CONFIG's production: two ticks, two approvals

    assert deploy.status == "succeeded"
    limited = [c for c in harness.fake.calls if c.status == 429]
    assert len(limited) >= 5
    # each 429 was retried after Retry-After (plus slack_sdk's jitter of up to a second), never sooner
    assert len(slack_sdk_waits) == len(limited)
    assert all(2 <= wait < 3 for wait in slack_sdk_waits), slack_sdk_waits
    assert deploy.permalink is not None  # chat.getPermalink got through too
    replies = [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
               if c.args.get("thread_ts") == deploy.message_ts]
    assert any("is live on production" in r for r in replies)
    assert any(r.startswith("*Ship report") for r in replies)
    assert "Succeeded" in str(harness.message_of(deploy).blocks)  # the last update was not dropped
