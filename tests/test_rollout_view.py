"""A staged rollout as people see and steer it: the deploy message's stage
line, checks and sparklines, its Promote / Pause / Resume / Abort buttons
clicked through the real HTTP door, ``/deploy promote|pause|resume|abort``,
``/deploy show``, the ship report and ``/metrics``.

Rollouts are built through the store's own API on deploys the runner never
picks up, so each test sets exactly the state it draws."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from bot.deploys.analysis import sparkline
from bot.deploys.command_text import SteerCommand, parse_command
from bot.errors import UsageError
from bot.events import DeployChanged
from bot.sandbox.fake_slack import Message, block_kit_problem
from bot.slack.blocks import (
    ACTION_ABORT,
    ACTION_PAUSE,
    ACTION_PROMOTE,
    ACTION_RESUME,
    MAX_BLOCKS,
    MAX_SECTION_TEXT,
    deploy_blocks,
)
from bot.slack.mrkdwn import ANALYSIS_ACTOR, RolloutFacts, record_text
from bot.slack.ship_report import ship_report
from store import Deploy
from tests.conftest import Harness, approvals, config_yaml, engine, said
from tests.test_metrics import scrape, value

STEPS = [{"kind": "step", "weight": 5, "pause_seconds": 60, "analysis": ["error_rate"]},
         {"kind": "step", "weight": 25, "pause_seconds": 600, "analysis": ["error_rate"]},
         {"kind": "step", "weight": 100, "pause_seconds": 0, "analysis": []},
         {"kind": "bake", "pause_seconds": 600, "analysis": ["error_rate"]}]


@pytest.fixture
def config_text() -> str:
    return config_yaml(
        {"api": {"deploy": engine(), "strategy": {"production": {"canary": {
            "steps": [{"weight": 5, "pause": "1m"}, {"weight": 25, "pause": "10m"}, {"weight": 100}],
            "analysis": ["error_rate"]}}}},
         "web": {"deploy": engine()}},
        production={"requires": "staging", "approvals": approvals("U0ALICE"),
                    "bake": {"duration": "10m", "analysis": ["error_rate"]}},
        analysis={"prometheus_url": "http://127.0.0.1:9", "checks": {"error_rate": {
            "query": "errors_ratio", "baseline_query": "errors_ratio_stable", "max_ratio": 2, "max": 0.05}}})


def now() -> datetime:
    return datetime.now(timezone.utc)


def deploying(harness: Harness, service: str = "api") -> Deploy:
    """``service`` 2.7.0 on production (2.6.0 before it), deploying, requested by Dave."""
    store = harness.store
    deploy = store.deploys.create(service=service, environment="production", version="2.7.0",
                                  version_prefixed=False, requested_by="U0DAVE", previous_version="2.6.0",
                                  checklist=[], needs_approval=False)
    return store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to="deploying", actor=None,
                                    action="deploying")


async def canary_at_25(harness: Harness, values: tuple[float, ...] = (0.001, 0.002, 0.001, 0.004)) -> Deploy:
    """A canary whose 5% passed and whose 25% is watched, measured ``values``
    against a stable 0.003; its message posted."""
    deploy = deploying(harness)
    rollouts = harness.store.rollouts
    rollouts.create(deploy.id, "canary", "abort", STEPS)
    start = now()
    rollouts.apply_stage(deploy.id, 1)
    rollouts.watch_stage(deploy.id, 1, start - timedelta(minutes=3))
    rollouts.record_measurement(deploy.id, 1, "error_rate", 0.002, 0.003, "pass", "0.002 ≤ 2× 0.003",
                                at=start - timedelta(minutes=2))
    rollouts.end_stage(deploy.id, 1, "passed", "passed (error_rate 0.002)")
    rollouts.apply_stage(deploy.id, 2)
    rollouts.watch_stage(deploy.id, 2, start - timedelta(minutes=2))
    for index, measured in enumerate(values):
        rollouts.record_measurement(deploy.id, 2, "error_rate", measured, 0.003, "pass", f"{measured} ≤ 2× 0.003",
                                    at=start - timedelta(seconds=90 - 20 * index))
    await post(harness, deploy)
    return harness.deploy(deploy.id)


async def post(harness: Harness, deploy: Deploy) -> None:
    harness.slipway.messages.show(deploy)
    await harness.settle()


async def redraw(harness: Harness, deploy_id: int) -> None:
    harness.slipway.events.publish(DeployChanged(deploy_id))
    await harness.settle()


def texts(message: Message) -> str:
    return "\n".join(block.get("text", {}).get("text", "") for block in message.blocks if block["type"] == "section")


def buttons(message: Message) -> dict[str, dict[str, Any]]:
    return {element["action_id"]: element for block in message.blocks if block["type"] == "actions"
            for element in block["elements"]}


def told(harness: Harness, user: str) -> str:
    return harness.fake.ephemerals_for(user)[-1].text


# -- the message ----------------------------------------------------------------------


async def test_the_message_shows_the_stages_and_each_check_against_its_baseline_and_ceiling(
        harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    shown = texts(harness.message_of(deploy))
    assert "*Rollout* (canary): 5% ✓ → 25% ⏳ (analysing, " in shown
    assert "of 10m) → 100% → bake" in shown
    assert "*25%* checks:" in shown
    spark = sparkline([0.001, 0.002, 0.001, 0.004])
    assert f":white_check_mark: error_rate 0.004 (stable 0.003, ceiling 2× / 0.05) {spark}" in shown
    assert len(spark) == 4


async def test_a_sparkline_shows_at_most_the_last_twenty_measurements(harness: Harness) -> None:
    values = tuple(round(0.001 * (i % 7), 3) for i in range(30))
    deploy = await canary_at_25(harness, values)
    assert f"{sparkline(list(values[-20:]))}" in texts(harness.message_of(deploy))


async def test_a_rollout_in_progress_has_promote_pause_and_abort_with_a_confirmation(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    shown = buttons(harness.message_of(deploy))
    assert set(shown) == {ACTION_PROMOTE, ACTION_PAUSE, ACTION_ABORT}
    assert shown[ACTION_PROMOTE]["value"] == f"{deploy.id}:2"  # the stage it was drawn on
    assert shown[ACTION_PROMOTE]["text"]["text"] == "Promote 25%"
    confirm = shown[ACTION_ABORT]["confirm"]
    assert confirm["text"]["text"] == "api 2.7.0 stops at 25% on production: all traffic returns to 2.6.0."
    assert block_kit_problem(harness.message_of(deploy).blocks) is None


async def test_after_full_traffic_abort_says_it_rolls_back(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    rollouts = harness.store.rollouts
    rollouts.end_stage(deploy.id, 2, "passed", "passed")
    rollouts.apply_stage(deploy.id, 3)
    rollouts.watch_stage(deploy.id, 3, now())
    rollouts.end_stage(deploy.id, 3, "passed", "passed")
    harness.store.deploys.transition(deploy.id, allowed_from=("deploying",), to="baking", actor=None, action="baking")
    rollouts.apply_stage(deploy.id, 4)
    rollouts.watch_stage(deploy.id, 4, now())
    await redraw(harness, deploy.id)
    message = harness.message_of(deploy)
    assert ":bread: Baking" in texts(message)
    assert "100% ✓ → bake ⏳ (analysing, " in texts(message)
    assert "· error_rate: not measured yet (ceiling 2× / 0.05)" in texts(message)
    shown = buttons(message)
    assert shown[ACTION_PROMOTE]["value"] == f"{deploy.id}:4"
    assert "this rolls back to the last good version" in shown[ACTION_ABORT]["confirm"]["text"]["text"]


async def test_a_paused_rollout_says_who_paused_it_and_offers_resume(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    harness.store.rollouts.pause(deploy.id, "U0ALICE", "paused by <@U0ALICE>", now())
    await redraw(harness, deploy.id)
    message = harness.message_of(deploy)
    assert ":double_vertical_bar: *Paused* by <@U0ALICE> <!date^" in texts(message)
    assert "25% ⏸ (paused, " in texts(message)
    assert set(buttons(message)) == {ACTION_PROMOTE, ACTION_RESUME, ACTION_ABORT}


async def test_a_pause_the_analysis_asked_for_says_why(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    harness.store.rollouts.pause(deploy.id, ANALYSIS_ACTOR, "25%: inconclusive, no data for errors_ratio", now())
    await redraw(harness, deploy.id)
    assert "*Paused* by Slipway's analysis" in texts(harness.message_of(deploy))
    assert ": 25%: inconclusive, no data for errors_ratio." in texts(harness.message_of(deploy))


async def test_what_prometheus_said_is_escaped(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    harness.store.rollouts.record_measurement(deploy.id, 2, "error_rate", None, None, "inconclusive",
                                              "<!channel> <https://evil.example|runbook>", at=now())
    await redraw(harness, deploy.id)
    shown = texts(harness.message_of(deploy))
    assert ":grey_question: error_rate no data" in shown
    assert "&lt;!channel&gt; &lt;https://evil.example|runbook&gt;" in shown
    assert "<!channel>" not in shown


async def test_an_ended_rollout_has_no_steering_buttons_and_says_how_it_ended(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    harness.store.rollouts.end_stage(deploy.id, 2, "failed", "error_rate 0.12 &gt; 2× stable 0.003")
    harness.store.rollouts.end(deploy.id, "aborted")
    harness.store.deploys.transition(deploy.id, allowed_from=("deploying",), to="failed", actor=None,
                                     action="failed", reason="aborted at 25%")
    await redraw(harness, deploy.id)
    message = harness.message_of(deploy)
    assert not {ACTION_PROMOTE, ACTION_PAUSE, ACTION_RESUME, ACTION_ABORT} & set(buttons(message))
    assert "*Rollout :black_square_for_stop: aborted*" in texts(message)
    assert "at 25%: error_rate 0.12 &gt; 2× stable 0.003" in texts(message)


def test_the_biggest_rollout_stays_within_block_kits_limits() -> None:
    from store import Rollout, Stage
    from store.rollouts import Measurement
    from tests.test_render import make_deploy

    checks = tuple(f"check_{i}" for i in range(40))
    stages = tuple(Stage(7, i, "step", i, None, 60, checks, "watching" if i == 30 else "passed", decision="d" * 500)
                   for i in range(1, 31))
    rollout = Rollout(7, "canary", "pause", "t", stages, paused_at="2026-11-23T12:00:00+00:00",
                      paused_by="slipway", pause_reason="r" * 3000)
    measured = tuple(Measurement(i, 7, 30, checks[i % 40], "2026-11-23T12:00:00+00:00", 0.1 * i, 0.2, "fail",
                                 "<x>" * 300) for i in range(2000))
    facts = RolloutFacts(rollout, "5% ✓ → " * 200, measured)
    blocks = deploy_blocks(make_deploy(status="deploying"), required_approvals=1, rollout=facts)
    assert len(blocks) <= MAX_BLOCKS
    assert block_kit_problem(blocks) is None
    record = record_text(make_deploy(status="deploying"), facts)
    assert len(record) <= MAX_SECTION_TEXT


# -- clicks ---------------------------------------------------------------------------


async def test_promote_is_the_steerings_and_a_stale_second_click_changes_nothing(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    drawn = copy.deepcopy(harness.message_of(deploy))  # the message as it was when both clicks were made
    assert await harness.click(drawn, "U0ALICE", ACTION_PROMOTE) == 200
    assert harness.store.rollouts.get(deploy.id).stage(2).promoted_by == "U0ALICE"
    assert told(harness, "U0ALICE") == f"Promoted: #{deploy.id} goes on from 25% without waiting."
    assert [e.detail for e in harness.store.audit.events(deploy.id) if e.action == "promoted"] == [{"stage": "25%"}]
    assert ACTION_PROMOTE not in buttons(harness.message_of(deploy))  # promoted once: no second Promote drawn

    # the runner moves on to 100%; the stale click still names 25%
    harness.store.rollouts.end_stage(deploy.id, 2, "passed", "promoted by <@U0ALICE>")
    harness.store.rollouts.apply_stage(deploy.id, 3)
    await harness.click(drawn, "U0ALICE", ACTION_PROMOTE)
    assert "has moved on since that button was drawn: it is now at 100%" in told(harness, "U0ALICE")
    assert harness.store.rollouts.get(deploy.id).stage(3).promoted_by is None
    assert len([e for e in harness.store.audit.events(deploy.id) if e.action == "promoted"]) == 1


async def test_pause_resume_and_abort_clicks_change_the_stored_rollout(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_PAUSE)
    assert harness.store.rollouts.get(deploy.id).paused
    assert told(harness, "U0ALICE") == f"Paused #{deploy.id}."
    assert ACTION_RESUME in buttons(harness.message_of(deploy))

    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_RESUME)
    assert not harness.store.rollouts.get(deploy.id).paused
    assert told(harness, "U0ALICE") == f"Resumed #{deploy.id}."

    await harness.click(harness.message_of(deploy), "U0DAVE", ACTION_ABORT)  # who deployed it may abort
    rollout = harness.store.rollouts.get(deploy.id)
    assert rollout.abort_requested_by == "U0DAVE"
    assert told(harness, "U0DAVE") == f"Aborting #{deploy.id}: all traffic goes back to 2.6.0."
    message = harness.message_of(deploy)
    assert ":black_square_for_stop: *Aborting* — aborted by <@U0DAVE>" in texts(message)
    assert not {ACTION_PROMOTE, ACTION_PAUSE, ACTION_ABORT} & set(buttons(message))
    assert [e.action for e in harness.store.audit.events(deploy.id)
            if e.action in ("paused", "resumed", "abort_requested")] == ["paused", "resumed", "abort_requested"]


@pytest.mark.parametrize(("action_id", "role"), [(ACTION_PROMOTE, "approve"), (ACTION_PAUSE, "approve"),
                                                 (ACTION_ABORT, "rollback")])
async def test_a_click_without_the_role_is_refused_to_the_clicker_and_audited(
        harness: Harness, action_id: str, role: str) -> None:
    deploy = await canary_at_25(harness)
    await harness.click(harness.message_of(deploy), "U0EVE", action_id)
    assert role in told(harness, "U0EVE")
    assert harness.fake.ephemerals_for("U0ALICE") == []
    refused = [e for e in harness.store.audit.events(deploy.id) if e.action == "refused"]
    assert [e.actor for e in refused] == ["U0EVE"]
    rollout = harness.store.rollouts.get(deploy.id)
    assert rollout.stage(2).promoted_by is None and not rollout.paused and rollout.abort_requested_at is None


# -- commands -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("promote api", SteerCommand("promote", "api", None)),
    ("pause API Production", SteerCommand("pause", "api", "production")),
    ("resume api staging", SteerCommand("resume", "api", "staging")),
    ("abort api production", SteerCommand("abort", "api", "production")),
])
def test_steering_commands_parse(text: str, expected: SteerCommand) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize("text", ["promote", "abort api production now"])
def test_steering_commands_show_their_usage(text: str) -> None:
    with pytest.raises(UsageError, match=r"Usage: `/deploy (promote|abort) <service> \[environment\]`"):
        parse_command(text)


async def test_commands_steer_the_rollout_the_service_has_in_progress(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    assert said(await harness.command("pause api production", user="U0ALICE")) == f"Paused #{deploy.id}."
    assert harness.store.rollouts.get(deploy.id).paused
    assert said(await harness.command("resume api", user="U0ALICE")) == f"Resumed #{deploy.id}."
    assert said(await harness.command("promote api", user="U0ALICE")) == \
        f"Promoted: #{deploy.id} goes on from 25% without waiting."
    assert "already promoted" in said(await harness.command("promote api", user="U0ALICE"))
    assert said(await harness.command("abort api production", user="U0ALICE")) == \
        f"Aborting #{deploy.id}: all traffic goes back to 2.6.0."
    assert harness.store.rollouts.get(deploy.id).abort_requested_by == "U0ALICE"


async def test_steering_commands_give_clear_refusals(harness: Harness) -> None:
    await canary_at_25(harness)
    assert said(await harness.command("promote nosuch", user="U0ALICE")) == \
        "I don't know a service called `nosuch`. Known services: `api`, `web`."
    assert said(await harness.command("pause api qa", user="U0ALICE")).startswith("`qa` is not an environment.")
    assert said(await harness.command("pause web", user="U0ALICE")) == "web has no staged rollout in progress."
    assert said(await harness.command("abort api staging", user="U0ALICE")) == \
        "api has no staged rollout in progress on staging."
    assert "rollback" in said(await harness.command("abort api production", user="U0EVE"))


# -- the record -----------------------------------------------------------------------


async def test_show_lists_every_stage_with_its_decision_and_every_measurement(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    shown = said(await harness.command(f"show {deploy.id}"))
    assert "*Rollout* (canary, on failure: abort): 5% ✓ → 25% ⏳" in shown
    assert "• 5%: passed, started <!date^" in shown and "— passed (error_rate 0.002)" in shown
    assert "• 25%: watching, started" in shown
    assert "• 100%: pending" in shown and "• bake: pending" in shown
    assert shown.count("    ◦ ") == 5
    assert "error_rate 0.004, stable 0.003: pass" in shown


async def test_show_keeps_to_a_section_and_says_how_many_it_left_out(harness: Harness) -> None:
    deploy = await canary_at_25(harness, tuple(0.001 * i for i in range(200)))
    shown = said(await harness.command(f"show {deploy.id}"))
    assert len(shown) <= MAX_SECTION_TEXT
    assert "• bake: pending" in shown  # every stage, even when measurements are left out
    listed = shown.count("    ◦ ")
    assert listed < 201
    assert f"… {201 - listed} more measurement(s) not shown" in shown


async def test_the_ship_report_has_the_rollout(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    harness.store.rollouts.record_measurement(deploy.id, 2, "error_rate", 0.2, 0.003, "fail", "0.2 > <b>", at=now())
    report = ship_report(harness.store, harness.config, harness.deploy(deploy.id))
    assert "## Rollout" in report
    assert "- **Strategy:** canary (on failure: abort); outcome: not ended" in report
    assert "- **Stage** 5%: passed, started 2026-" in report
    assert "error_rate 0.2, stable 0.003: fail — 0.2 &gt; &lt;b&gt;" in report


# -- /metrics ---------------------------------------------------------------------------


async def test_metrics_show_each_rollouts_stage_and_the_verdicts(harness: Harness) -> None:
    deploy = await canary_at_25(harness)
    harness.store.rollouts.record_measurement(deploy.id, 2, "error_rate", None, None, "inconclusive", "no data",
                                              at=now())
    samples = await scrape(harness)
    stage = [(labels, number) for name, labels, number in samples if name == "slipway_rollout_stage"]
    assert stage == [({"deploy_id": str(deploy.id), "service": "api", "environment": "production",
                       "strategy": "canary", "stage": "25%", "state": "watching"}, 2.0)]
    assert value(samples, "slipway_analysis_verdicts_total", check="error_rate", verdict="pass") == 5
    assert value(samples, "slipway_analysis_verdicts_total", check="error_rate", verdict="inconclusive") == 1

    harness.store.rollouts.pause(deploy.id, "U0ALICE", "paused by <@U0ALICE>", now())
    samples = await scrape(harness)
    assert value(samples, "slipway_rollout_stage", state="paused") == 2


def test_the_analysis_actor_is_the_domains() -> None:
    from bot.deploys.progressive import ANALYSIS_ACTOR as DOMAINS

    assert ANALYSIS_ACTOR == DOMAINS
