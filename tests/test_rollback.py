"""One-click rollback: the target, who may, double clicks, and the record."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bot.sandbox.fake_slack import Message
from bot.slack.blocks import ACTION_APPROVE, ACTION_ROLLBACK
from tests.conftest import CHANNEL, HOLIDAY_FREEZE, Harness, approvals, config_yaml, engine, engine_calls


@pytest.fixture
def config_text(record: Path) -> str:
    return config_yaml(
        production={"requires": "staging", "approvals": approvals("U0ALICE", "U0BOB")},
        freeze=[HOLIDAY_FREEZE],
        services={"api": {"deploy": engine("--record", record)},
                  "web": {"deploy": engine("--record", record),
                          "rollback": engine("--record", record, "rollout", "undo")}})


async def ship(harness: Harness, service: str, version: str, requester: str = "U0DAVE"):
    """Deploy through staging to production, approved by Alice."""
    await harness.command(f"{service} {version} staging", user=requester)
    await harness.command(f"{service} {version} production", user=requester)
    deploy = harness.latest_deploy()
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    return harness.deploy(deploy.id)


def rollback_button(message: Message) -> dict | None:
    for block in message.blocks:
        for element in block.get("elements", []):
            if element.get("action_id") == ACTION_ROLLBACK:
                return element
    return None


def footer(message: Message) -> str:
    return message.blocks[-1]["elements"][0]["text"]


async def test_the_message_offers_the_last_good_version_with_a_confirmation(harness: Harness) -> None:
    first = await ship(harness, "api", "2.6.3")
    assert rollback_button(harness.message_of(first)) is None
    assert "no rollback: no earlier version of api succeeded on production" in footer(harness.message_of(first))

    current = await ship(harness, "api", "2.7.0")
    button = rollback_button(harness.message_of(current))
    assert button["text"]["text"] == "Roll back to 2.6.3"
    assert button["value"] == f"{current.id}:2.6.3"
    assert button["confirm"]["text"]["text"].startswith("api production: 2.7.0 → 2.6.3")
    # the older message no longer offers a rollback: it is not what runs
    assert f"superseded by #{current.id}" in footer(harness.message_of(first))


async def test_an_approver_rolls_back_and_it_is_recorded_verified_and_announced(harness: Harness,
                                                                                record: Path) -> None:
    first = await ship(harness, "api", "2.6.3")
    current = await ship(harness, "api", "2.7.0")
    await harness.click(harness.message_of(current), "U0BOB", ACTION_ROLLBACK)

    rollback = harness.latest_deploy()
    assert (rollback.rollback_of, rollback.version, rollback.previous_version, rollback.requested_by) == (
        current.id, "2.6.3", "2.7.0", "U0BOB")
    assert rollback.status == "succeeded" and rollback.approvals == ()
    assert harness.deploy(current.id).status == "rolled_back"
    assert harness.deploy(current.id).status_reason == f"rolled back to 2.6.3 by #{rollback.id}"
    assert harness.store.deploys.latest_successful("api", "production").id == rollback.id
    assert engine_calls(record)[-1]["env"]["SLIPWAY_ROLLBACK_OF"] == str(current.id)
    assert engine_calls(record)[-1]["env"]["SLIPWAY_VERSION"] == "2.6.3"
    # announced in the channel (its own message) and in the undone deploy's thread
    assert harness.message_of(rollback).blocks[0]["text"]["text"] == "Deploy api 2.6.3 to production"
    notes = [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
             if c.args.get("thread_ts") == current.message_ts]
    assert any(f"<@U0BOB> started rollback #{rollback.id}: api production: 2.7.0 → 2.6.3" in n for n in notes)
    assert "Rolled back" in json.dumps(harness.message_of(current).blocks)
    assert [e.action for e in harness.store.audit.events(current.id)][-1] == "rolled_back"
    assert first.id < current.id < rollback.id
    # the rollback's own message never offers to go back to the version it left
    assert "deploy_rollback" not in json.dumps(harness.message_of(rollback).blocks)


async def test_the_person_who_deployed_may_roll_back_but_others_may_not(harness: Harness) -> None:
    await ship(harness, "api", "2.6.3")
    current = await ship(harness, "api", "2.7.0", requester="U0DAVE")
    await harness.click(harness.message_of(current), "U0MALLORY", ACTION_ROLLBACK)
    told = harness.fake.ephemerals_for("U0MALLORY")[-1].text
    assert "You may not roll back api on production" in told and "<@U0DAVE> (who deployed it)" in told
    assert harness.latest_deploy().id == current.id
    assert harness.store.audit.events(current.id)[-1].detail == {"attempted": "rollback"}

    await harness.click(harness.message_of(current), "U0DAVE", ACTION_ROLLBACK)
    assert harness.latest_deploy().rollback_of == current.id


async def test_a_double_click_starts_one_rollback(harness: Harness, record: Path) -> None:
    await ship(harness, "api", "2.6.3")
    current = await ship(harness, "api", "2.7.0")
    message = harness.message_of(current)
    calls_before = len(engine_calls(record))
    await asyncio.gather(*(harness.slack.click(message, user, ACTION_ROLLBACK) for user in ("U0ALICE", "U0BOB")))
    await harness.settle()
    rollbacks = [d for d in harness.store.deploys.history("api", "production") if d.rollback_of == current.id]
    assert len(rollbacks) == 1
    assert len(engine_calls(record)) == calls_before + 1
    loser = "U0BOB" if rollbacks[0].requested_by == "U0ALICE" else "U0ALICE"
    assert "already" in harness.fake.ephemerals_for(loser)[-1].text


async def test_a_failed_deploy_rolls_back_to_what_was_live(harness: Harness, record: Path) -> None:
    live = await ship(harness, "api", "2.6.3")
    await harness.command("api 2.7.0 staging")
    await harness.command("api 2.7.0 production")
    failing = harness.latest_deploy()
    # make this one deploy fail: the engine exits 1 for it
    harness.slipway.config.services["api"].deploy.command.extend(["--exit", "1"])
    await harness.click(harness.message_of(failing), "U0ALICE", ACTION_APPROVE)
    failing = harness.deploy(failing.id)
    assert failing.status == "failed"
    button = rollback_button(harness.message_of(failing))
    assert button["value"] == f"{failing.id}:2.6.3"
    del harness.slipway.config.services["api"].deploy.command[-2:]
    await harness.click(harness.message_of(failing), "U0ALICE", ACTION_ROLLBACK)
    rollback = harness.latest_deploy()
    assert rollback.status == "succeeded" and rollback.version == "2.6.3" and rollback.previous_version == "2.7.0"
    assert harness.deploy(failing.id).status == "failed"  # it stays what it was; the rollback points at it
    assert harness.deploy(live.id).status == "succeeded"


async def test_slash_rollback_asks_for_confirmation_then_runs(harness: Harness) -> None:
    await ship(harness, "api", "2.6.3")
    current = await ship(harness, "api", "2.7.0")
    assert "Which environment?" in await harness.command("rollback api")
    status, body = await harness.slack.command("rollback api production", "U0ALICE")
    offer = json.loads(body)
    assert offer["text"] == "Confirm: api production: 2.7.0 → 2.6.3"
    assert harness.latest_deploy().id == current.id  # nothing runs before the confirmation
    message = Message(CHANNEL, "9.9", offer["text"], offer["blocks"])
    await harness.click(message, "U0ALICE", ACTION_ROLLBACK)
    assert harness.latest_deploy().rollback_of == current.id
    assert "web has no finished deploy on production to roll back" in await harness.command(
        "rollback web production")


async def test_a_stale_confirmation_is_refused_when_the_target_changed(harness: Harness) -> None:
    await ship(harness, "api", "2.6.3")
    current = await ship(harness, "api", "2.7.0")
    message = harness.message_of(current)
    stale = json.loads(json.dumps(message.blocks).replace(f"{current.id}:2.6.3", f"{current.id}:2.5.0"))
    await harness.click(Message(CHANNEL, message.ts, "", stale), "U0ALICE", ACTION_ROLLBACK)
    assert "target changed" in harness.fake.ephemerals_for("U0ALICE")[-1].text
    assert harness.latest_deploy().id == current.id


async def test_a_separate_rollback_engine_is_used_when_configured(harness: Harness, record: Path) -> None:
    await ship(harness, "web", "1.0.0")
    current = await ship(harness, "web", "1.1.0")
    await harness.click(harness.message_of(current), "U0ALICE", ACTION_ROLLBACK)
    assert engine_calls(record)[-1]["argv"][-2:] == ["rollout", "undo"]
    assert engine_calls(record)[-2]["argv"][-2:] != ["rollout", "undo"]


async def test_rollback_is_not_blocked_by_freeze_or_lock_and_supersedes_a_waiting_request(harness: Harness,
                                                                                        clock) -> None:
    await ship(harness, "api", "2.6.3")
    current = await ship(harness, "api", "2.7.0")
    await harness.command("api 2.7.1 staging")
    await harness.command("api 2.7.1 production", user="U0ERIN")
    waiting = harness.latest_deploy()
    await harness.command("lock api production investigating errors")
    clock.now = datetime(2026, 12, 25, 10, 0, tzinfo=timezone.utc)
    await harness.click(harness.message_of(current), "U0ALICE", ACTION_ROLLBACK)
    assert harness.latest_deploy().rollback_of == current.id
    superseded = harness.deploy(waiting.id)
    assert superseded.status == "cancelled" and "superseded by a rollback by <@U0ALICE>" in superseded.status_reason


async def test_a_failed_rollback_is_retried_from_the_deploy_it_tried_to_undo(harness: Harness) -> None:
    await ship(harness, "api", "2.6.3")
    current = await ship(harness, "api", "2.7.0")
    harness.slipway.config.services["api"].deploy.command.extend(["--exit", "1"])
    await harness.click(harness.message_of(current), "U0ALICE", ACTION_ROLLBACK)
    failed = harness.latest_deploy()
    assert failed.rollback_of == current.id and failed.status == "failed"
    # the failed rollback offers no "rollback" of its own (that would redeploy 2.7.0) ...
    assert rollback_button(harness.message_of(failed)) is None
    assert f"use the button on #{current.id}" in footer(harness.message_of(failed))
    # ... while the deploy it tried to undo still offers the same rollback
    assert harness.deploy(current.id).status == "succeeded"
    assert rollback_button(harness.message_of(current))["value"] == f"{current.id}:2.6.3"
    del harness.slipway.config.services["api"].deploy.command[-2:]
    offer = json.loads(await harness.command("rollback api production"))
    assert offer["text"] == "Confirm: api production: 2.7.0 → 2.6.3"
    await harness.click(harness.message_of(current), "U0ALICE", ACTION_ROLLBACK)
    assert harness.latest_deploy().status == "succeeded"
    assert harness.deploy(current.id).status == "rolled_back"


async def test_on_an_environment_without_approvers_only_the_deployer_rolls_back(harness: Harness) -> None:
    await harness.command("api 1.0.0 staging", user="U0DAVE")
    await harness.command("api 1.1.0 staging", user="U0DAVE")
    current = harness.latest_deploy()
    await harness.click(harness.message_of(current), "U0MALLORY", ACTION_ROLLBACK)
    assert "You may not roll back api on staging" in harness.fake.ephemerals_for("U0MALLORY")[-1].text
    await harness.click(harness.message_of(current), "U0DAVE", ACTION_ROLLBACK)
    assert harness.latest_deploy().rollback_of == current.id
