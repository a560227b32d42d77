"""Rollbacks that stay rolled back: the environment is locked and the undone
version blocked there until someone with the `lock` role lifts them; and a
rollback is never stopped by a freeze or the ladder."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from bot.sandbox.fake_slack import Message
from bot.slack.blocks import ACTION_ROLLBACK
from tests.conftest import WEEKEND_FREEZE, Harness, approvals, config_yaml, engine, said


@pytest.fixture
def config_text() -> str:
    return config_yaml(
        production={"requires": "staging", "approvals": approvals("U0ALICE", "U0BOB"),
                    "roles": {"lock": ["U0ERIN", "@sre"]}},
        freeze=[WEEKEND_FREEZE],
        services={"api": {"deploy": engine()}})


async def test_a_rolled_back_version_stays_off_until_unblocked_and_unlocked(harness: Harness) -> None:
    await harness.ship("api", "2.6.3", "U0ALICE")
    current = (await harness.ship("api", "2.7.0", "U0ALICE")).id
    await harness.click(harness.message_of(current), "U0BOB", ACTION_ROLLBACK)
    rollback = harness.latest_deploy()
    assert rollback.rollback_of == current and rollback.status == "succeeded"

    [lock] = harness.store.locks.all()
    assert (lock.environment, lock.locked_by, lock.reason) == (
        "production", "U0BOB", "rolled back from 2.7.0 by <@U0BOB>")
    [block] = harness.store.locks.all_blocks()
    assert (block.version, block.environment, block.rollback_id) == ("2.7.0", "production", rollback.id)
    assert {e.action for e in harness.store.audit.events(rollback.id)} >= {"locked", "version_blocked"}
    footer = harness.message_of(rollback).blocks[-1]["elements"][0]["text"]
    assert "production locked and 2.7.0 blocked there" in footer

    refused = said(await harness.command("api 2.7.0 production", user="U0DAVE"))
    assert refused.startswith("api 2.7.0 is blocked on production: rolled back from 2.7.0 by <@U0BOB> <!date^")
    assert f"(rollback #{rollback.id})" in refused and "`/deploy unblock api 2.7.0 production`" in refused
    assert "Also: api is locked on production by <@U0BOB>" in refused
    listing = said(await harness.command("locks api"))
    assert "“rolled back from 2.7.0 by <@U0BOB>”" in listing and "*Blocked versions*" in listing
    assert "• api 2.7.0 on production: rolled back from 2.7.0 by <@U0BOB>" in listing

    # unblocking needs the lock role
    denied = said(await harness.command("unblock api 2.7.0 production", user="U0MALLORY"))
    assert denied == ("You may not unblock versions of api on production: that takes the `lock` role on production, "
                      "held by <@U0ERIN>, <!subteam^SSRE|@sre>.")
    assert harness.store.locks.all_blocks() != []
    assert "api 2.6.0 is not blocked" in said(await harness.command("unblock api 2.6.0", user="U0ERIN"))
    lifted = said(await harness.command("unblock api v2.7.0 production", user="U0SRE1"))
    assert lifted.startswith(":white_check_mark: <@U0SRE1> unblocked api 2.7.0 on production: it may be deployed "
                             "there again.\nDeploys there still wait on a lock (`/deploy unlock` once it is safe):\n"
                             "• api on production: locked by <@U0BOB>")
    assert harness.store.locks.all_blocks() == []
    assert [e.actor for e in harness.store.audit.events() if e.action == "version_unblocked"] == ["U0SRE1"]

    # the environment is still locked: neither 2.7.0 nor a fix goes until someone unlocks it
    assert said(await harness.command("api 2.7.0 production")).startswith("api is locked on production by <@U0BOB>")
    harness.mark_succeeded("api", "staging", "2.7.1")
    assert "api is locked on production" in said(await harness.command("api 2.7.1 production"))
    assert "You may not unlock api on production" in said(await harness.command("unlock api production",
                                                                                user="U0DAVE"))
    assert "released" in said(await harness.command("unlock api production", user="U0ERIN"))
    assert "waiting for approval" in said(await harness.command("api 2.7.1 production"))


async def test_a_lock_already_in_place_is_kept_and_the_version_still_blocked(harness: Harness) -> None:
    await harness.ship("api", "2.6.3", "U0ALICE")
    current = (await harness.ship("api", "2.7.0", "U0ALICE")).id
    await harness.command('lock api production "incident INC-9"', user="U0ERIN")
    await harness.click(harness.message_of(current), "U0ALICE", ACTION_ROLLBACK)
    assert [(lock.locked_by, lock.reason) for lock in harness.store.locks.all()] == [("U0ERIN", "incident INC-9")]
    assert [b.version for b in harness.store.locks.all_blocks()] == ["2.7.0"]


async def test_a_failed_rollback_keeps_the_lock_and_says_so(harness: Harness) -> None:
    await harness.ship("api", "2.6.3", "U0ALICE")
    current = (await harness.ship("api", "2.7.0", "U0ALICE")).id
    harness.slipway.config.services["api"].deploy.command.extend(["--exit", "1"])
    await harness.click(harness.message_of(current), "U0ALICE", ACTION_ROLLBACK)
    failed = harness.latest_deploy()
    assert failed.status == "failed"
    assert [lock.environment for lock in harness.store.locks.all()] == ["production"]
    notes = [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
             if c.args.get("thread_ts") == failed.message_ts]
    assert any(n.startswith(":red_circle: The rollback of api on production to 2.6.3 failed") and
               "production stays locked and 2.7.0 blocked there" in n for n in notes)


async def test_a_rollback_is_not_stopped_by_a_freeze_or_the_ladder(harness: Harness, clock) -> None:
    # neither version ever ran on staging: the ladder would refuse both as requests
    previous = harness.mark_succeeded("api", "production", "2.6.3")
    current = harness.mark_succeeded("api", "production", "2.7.0")
    assert not harness.store.deploys.has_succeeded("api", "staging", "2.6.3")
    clock.now = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)  # Saturday: production is frozen
    harness.mark_succeeded("api", "staging", "2.7.1")
    assert "production is frozen" in said(await harness.command("api 2.7.1 production"))
    offer = json.loads(await harness.command("rollback api production", user="U0DAVE"))
    assert offer["text"] == "Confirm: api production: 2.7.0 → 2.6.3"
    await harness.click(Message("C0DEPLOYS", "9.9", offer["text"], offer["blocks"]), "U0DAVE", ACTION_ROLLBACK)
    rollback = harness.latest_deploy()
    assert (rollback.rollback_of, rollback.version, rollback.status) == (current.id, "2.6.3", "succeeded")
    assert "cancelled" not in [e.action for e in harness.store.audit.events(rollback.id)]
    assert previous.id < current.id < rollback.id
