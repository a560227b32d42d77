"""Slack answering 429 on every other call: everything still arrives,
nothing is lost, the deploy's record is unaffected, and each retry waited
the Retry-After Slack asked for (the waits are recorded, not slept)."""

from __future__ import annotations

import pytest

from tests.conftest import FakeTime, Harness


@pytest.fixture
def outbox_time() -> FakeTime:
    return FakeTime()  # the outbox's waits are recorded, not slept


async def test_every_other_call_rate_limited_loses_nothing(harness: Harness, outbox_time: FakeTime,
                                                           slack_sdk_waits: list[float]) -> None:
    harness.fake.rate_limit_every = 2
    harness.fake.retry_after = 2
    deploy = await harness.request_and_approve("api", "2.7.0")  # CONFIG's production: two ticks, two approvals
    await harness.slipway.outbox.drain()  # what waits out a Retry-After is sent once the wait is over
    deploy = harness.deploy(deploy.id)

    assert deploy.status == "succeeded"
    limited = [c for c in harness.fake.calls if c.status == 429]
    assert len(limited) >= 4
    # Every Slack write goes through the outbox, which waits out the Retry-After
    # Slack asked for before trying that channel again (never sooner); the few
    # calls made on the spot (ephemeral answers, usergroups) are retried by
    # slack_sdk's handler, after Retry-After plus up to a second of jitter.
    by_outbox = int(harness.slipway.metrics.outbox_rate_limited._value.get())
    assert by_outbox >= 4 and by_outbox + len(slack_sdk_waits) == len(limited)
    limited_rows = [i for i in harness.store.outbox.items() if (i.last_error or "").startswith("ratelimited")]
    assert limited_rows and all(i.state == "sent" and i.last_error == "ratelimited (Retry-After 2s)"
                                for i in limited_rows)  # each waited, none dropped
    assert outbox_time.now >= 2.0  # the outbox's clock went through the waits (recorded, not slept)
    assert all(2 <= wait < 3 for wait in slack_sdk_waits), slack_sdk_waits
    assert deploy.permalink is not None  # chat.getPermalink got through too (asked again on a later edit)
    replies = [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
               if c.args.get("thread_ts") == deploy.message_ts]
    assert any("is live on production" in r for r in replies)
    assert any(r.startswith("*Ship report") for r in replies)
    assert "Succeeded" in str(harness.message_of(deploy).blocks)  # the last update was not dropped
