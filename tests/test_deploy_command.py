"""``/deploy`` through the real HTTP endpoint, signed as Slack signs it,
with assertions on what Slack received."""

from __future__ import annotations

import pytest

from tests.conftest import CHANNEL, Harness


def deploy_rows(harness: Harness) -> int:
    return harness.store.db.execute("SELECT count(*) FROM deploys").fetchone()[0]


def channel_posts(harness: Harness) -> int:
    """Top-level posts in the deploy channel (thread replies and direct messages excluded)."""
    return len([c for c in harness.fake.calls_to("chat.postMessage")
                if "thread_ts" not in c.args and c.args.get("channel") == harness.config.channel])


async def test_accepted_request_posts_the_checklist_message(harness: Harness) -> None:
    harness.mark_succeeded("api", "production", "2.6.0")
    harness.mark_succeeded("api", "staging", "2.7.0")

    reply = await harness.command("api v2.7.0 production", user="U0DAVE")

    deploy = harness.latest_deploy()
    assert "is waiting for approval" in reply and f"#{deploy.id}" in reply and f"<#{CHANNEL}>" in reply
    assert (deploy.service, deploy.environment, deploy.version, deploy.status) == (
        "api", "production", "2.7.0", "awaiting_approval")
    assert deploy.display_version == "v2.7.0" and deploy.previous_version == "2.6.0"
    assert deploy.permalink and deploy.permalink.startswith("https://")
    message = harness.message_of(deploy)
    assert message.channel == CHANNEL
    assert message.blocks[0]["type"] == "header"
    assert message.blocks[0]["text"]["text"] == "Deploy api v2.7.0 to production"
    fields = " ".join(f["text"] for f in message.blocks[1]["fields"])
    assert "2.6.0 → v2.7.0 (minor)" in fields and "<@U0DAVE>" in fields
    checklist = [b for b in message.blocks if b.get("block_id", "").startswith("checklist:")]
    assert [b["text"]["text"] for b in checklist] == [
        ":white_large_square: Migrations tested on staging", ":white_large_square: Rollback plan documented"]
    buttons = [e["text"]["text"] for b in message.blocks if b["type"] == "actions" for e in b["elements"]]
    assert buttons == ["Approve", "Reject", "Cancel"]
    assert [e.action for e in harness.store.audit.events(deploy.id)] == ["requested"]


async def test_environment_defaults_to_first_rung_and_needs_no_approval_there(harness: Harness) -> None:
    reply = await harness.command("web 1.0.0")
    deploy = harness.latest_deploy()
    assert deploy.environment == "staging" and deploy.approved_at == deploy.requested_at
    assert "needs no approval" in reply
    assert [e.action for e in harness.store.audit.events(deploy.id)][:3] == ["requested", "approved", "deploy_started"]
    message = harness.message_of(deploy)
    assert not [b for b in message.blocks if b["type"] == "actions"]
    assert "Succeeded" in message.blocks[2]["text"]["text"]
    assert deploy.version == "1.0.0" and deploy.display_version == "1.0.0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apix 1.0.0 staging", ["don't know a service called `apix`", "`api`", "`web`"]),
        ("api 1.0.0 prod", ["`prod` is not an environment", "staging → production"]),
        ("api 2.7 production", ["`2.7` is not a semantic version", "MAJOR.MINOR.PATCH"]),
        ("api banana", ["`banana` is not a semantic version"]),
        ("api v2.7.0 production", ["api v2.7.0 has not succeeded on staging", "deploy it there first",
                                    "`/deploy api v2.7.0 staging`"]),
        ("api", ["Usage: `/deploy <service> <version> [environment]`"]),
        ("api 1.0.0 staging extra words", ["Usage:"]),
        ("lock api", ["a lock needs a reason"]),
        ("unlock", ["Usage: `/deploy unlock"]),
    ],
)
async def test_bad_requests_are_refused_with_what_to_do(harness: Harness, text: str, expected: list[str]) -> None:
    reply = await harness.command(text)
    for phrase in expected:
        assert phrase in reply
    assert deploy_rows(harness) == 0 and channel_posts(harness) == 0


async def test_same_version_already_live_is_refused(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0", user="U0ERIN")
    reply = await harness.command("api 2.7.0 staging")
    assert "api 2.7.0 is already live on staging" in reply and "<@U0ERIN>" in reply
    assert channel_posts(harness) == 0


async def test_lower_version_than_live_points_to_rollback(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    reply = await harness.command("api v2.6.3 staging")
    assert "older than 2.7.0" in reply and "rollback" in reply.lower()
    assert channel_posts(harness) == 0


async def test_locked_service_is_refused_saying_who_why_and_how_to_unlock(harness: Harness) -> None:
    reply = await harness.command('lock api production "database maintenance"', user="U0ERIN")
    assert "locked by <@U0ERIN>" in reply and "database maintenance" in reply
    harness.mark_succeeded("api", "staging", "2.7.0")

    refused = await harness.command("api 2.7.0 production")
    assert "api is locked on production by <@U0ERIN>" in refused
    assert "“database maintenance”" in refused and "`/deploy unlock api production`" in refused
    # staging is not locked by a production lock
    assert "needs no approval" in await harness.command("api 2.8.0 staging")

    released = await harness.command("unlock api production", user="U0ERIN")
    assert "released" in released and "database maintenance" in released
    assert "waiting for approval" in await harness.command("api 2.7.0 production")
    actions = [e.action for e in harness.store.audit.events() if e.deploy_id is None]
    assert actions == ["locked", "unlocked"]


async def test_lock_without_environment_locks_every_environment(harness: Harness) -> None:
    await harness.command("lock web release train is paused")
    reply = await harness.command("web 1.0.0 staging")
    assert "web is locked on every environment" in reply and "release train is paused" in reply
    assert "no lock on production" in await harness.command("unlock web production")
    await harness.command("unlock web")
    assert "needs no approval" in await harness.command("web 1.0.0 staging")


async def test_freeze_window_refuses_with_reason_and_end(harness: Harness, clock) -> None:
    from datetime import datetime, timezone

    harness.mark_succeeded("api", "staging", "2.7.0")
    clock.now = datetime(2026, 12, 25, 9, 30, tzinfo=timezone.utc)
    reply = await harness.command("api 2.7.0 production")
    assert "production is frozen until" in reply and "2026-12-27 00:00 UTC" in reply and "Holiday freeze" in reply
    # the freeze names production only
    assert "needs no approval" in await harness.command("api 2.8.0 staging")
    clock.now = datetime(2026, 12, 27, 0, 0, tzinfo=timezone.utc)  # `until` is exclusive
    assert "waiting for approval" in await harness.command("api 2.7.0 production")


async def test_deploy_in_flight_is_refused_with_a_link(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    harness.mark_succeeded("api", "staging", "2.7.1")
    await harness.command("api 2.7.0 production", user="U0DAVE")
    first = harness.latest_deploy()
    reply = await harness.command("api 2.7.1 production", user="U0ERIN")
    assert f"in flight: #{first.id} 2.7.0, awaiting approval, requested by <@U0DAVE>" in reply
    assert f"<{first.permalink}|see the request>" in reply
    assert deploy_rows(harness) == 3


async def test_same_slack_request_delivered_twice_is_recorded_once(harness: Harness) -> None:
    await harness.command("web 1.0.0", trigger_id="trigger.same")
    reply = await harness.command("web 1.0.0", trigger_id="trigger.same")
    assert "#1" in reply
    assert deploy_rows(harness) == 1 and channel_posts(harness) == 1


async def test_help_lists_every_subcommand(harness: Harness) -> None:
    reply = await harness.command("help")
    for usage in ("/deploy <service> <version> [environment]", "/deploy lock", "/deploy unlock", "/deploy help"):
        assert usage in reply
    assert await harness.command("") == reply


async def test_unpostable_channel_cancels_the_request_and_says_so(harness: Harness) -> None:
    harness.fake.missing_channels.add(CHANNEL)
    await harness.command("web 1.0.0")
    deploy = harness.latest_deploy()
    assert deploy.status == "cancelled" and "channel_not_found" in deploy.status_reason
    told = harness.fake.responses[-1]
    assert told["response_type"] == "ephemeral" and "could not post deploy #1" in told["text"]
    assert "/invite" in told["text"]
    harness.fake.missing_channels.clear()
    assert "needs no approval" in await harness.command("web 1.0.0")  # nothing left blocking
