"""Staged rollouts without a metric gate: canary steps and blue-green phases
reach the engine in order, pauses are kept (across a restart, with the time
that was left), and people promote, pause, resume and abort. The metric
gates against a real Prometheus are tests/test_progressive_prometheus.py."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import pytest

from store import DeployStatus
from tests.conftest import Harness, approvals, config_yaml, engine, engine_calls


def canary_config(record: Path, *, pauses: tuple[float, ...] = (0, 0, 0), bake: float | None = None,
                  auto_rollback: bool = False, approvers: tuple[str, ...] = (), green_pause: float = 0,
                  held: bool = False) -> str:
    steps = [{"weight": weight, **({"pause": f"{pause}s"} if pause else {})}
             for weight, pause in zip((5, 25, 50), pauses, strict=True)]
    production: dict = {"requires": "staging", "auto_rollback": auto_rollback}
    if approvers:
        production["approvals"] = approvals(*approvers)
    if bake is not None:
        production["bake"] = {"duration": f"{bake}s"}
    sections = {"alerts": {"channel": "C0ALERTS"}} if auto_rollback else {}
    hold = ("--wait-for", record.parent / "release") if held else ()  # each call waits for the file
    return config_yaml({"api": {"deploy": engine("--record", record, *hold),
                                "strategy": {"production": {"canary": {"steps": [*steps, {"weight": 100}]}},
                                             "staging": {"blue_green": {"pause": f"{green_pause}s"} if green_pause else {}}}}},
                       production=production, **sections)


@pytest.fixture
def environ() -> dict[str, str]:
    return {"SLIPWAY_GENERIC_TOKEN": "generic-token"}


@pytest.fixture
def config_text(record: Path, request: pytest.FixtureRequest) -> str:
    marker = request.node.get_closest_marker("rollout")
    return canary_config(record, **(marker.kwargs if marker else {}))


async def ship_to_production(harness: Harness, version: str = "2.7.0") -> int:
    harness.mark_succeeded("api", "staging", version)
    await harness.slack.command(f"api {version} production", "U0DAVE")
    await asyncio.sleep(0)
    return harness.latest_deploy().id


async def wait_for(predicate, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.02)


def stage_states(harness: Harness, deploy_id: int) -> list[tuple[str, str]]:
    rollout = harness.store.rollouts.get(deploy_id)
    return [(stage.label, stage.state) for stage in rollout.stages] if rollout is not None else []


async def test_a_canary_calls_the_engine_once_per_step_in_order_then_succeeds(harness: Harness, record: Path) -> None:
    deploy_id = await ship_to_production(harness)
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status == DeployStatus.SUCCEEDED, deploy.status_reason
    calls = [call["env"] for call in engine_calls(record)]
    assert [(c["SLIPWAY_STRATEGY"], c["SLIPWAY_STEP"], c["SLIPWAY_STEPS"], c["SLIPWAY_WEIGHT"]) for c in calls] == [
        ("canary", "1", "4", "5"), ("canary", "2", "4", "25"), ("canary", "3", "4", "50"), ("canary", "4", "4", "100")]
    assert {c["SLIPWAY_VERSION"] for c in calls} == {"2.7.0"}
    assert stage_states(harness, deploy_id) == [("5%", "passed"), ("25%", "passed"), ("50%", "passed"),
                                                ("100%", "passed")]
    assert harness.store.rollouts.get(deploy_id).outcome == "passed"


async def test_blue_green_deploys_switches_then_releases(harness: Harness, record: Path) -> None:
    await harness.command("api 2.7.0 staging")
    deploy = harness.latest_deploy()
    assert deploy.status == DeployStatus.SUCCEEDED, deploy.status_reason
    phases = [(c["env"]["SLIPWAY_STRATEGY"], c["env"].get("SLIPWAY_PHASE")) for c in engine_calls(record)]
    assert phases == [("blue_green", "deploy"), ("blue_green", "switch"), ("blue_green", "release")]


@pytest.mark.rollout(pauses=(0, 30, 0))
async def test_promote_skips_a_pause_once(harness: Harness, record: Path) -> None:
    deploy_id = await ship_to_production(harness)
    await wait_for(lambda: ("25%", "watching") in stage_states(harness, deploy_id), what="the 25% pause")
    said = await harness.slipway.steering.promote(deploy_id, "U0DAVE", position=2)
    assert "Promoted" in said
    with pytest.raises(Exception, match="moved on|already promoted"):
        await harness.slipway.steering.promote(deploy_id, "U0DAVE", position=2)  # the same click again
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status == DeployStatus.SUCCEEDED, deploy.status_reason
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "25", "50", "100"]
    stage = harness.store.rollouts.get(deploy_id).stage(2)
    assert stage.promoted_by == "U0DAVE" and "promoted by" in stage.decision


@pytest.mark.rollout(pauses=(0, 30, 0))
async def test_an_abort_before_full_traffic_returns_traffic_and_locks(harness: Harness, record: Path) -> None:
    deploy_id = await ship_to_production(harness)
    await wait_for(lambda: ("25%", "watching") in stage_states(harness, deploy_id), what="the 25% pause")
    await harness.slipway.steering.abort(deploy_id, "U0DAVE")  # the requester may roll back (default roles)
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status == DeployStatus.FAILED
    assert deploy.status_reason.startswith("aborted at 25%")
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "25", "0"]
    assert harness.store.locks.blocked("api", "production", "2.7.0") is not None
    assert any(lock.environment == "production" for lock in harness.store.locks.all("api"))
    assert harness.store.rollouts.get(deploy_id).outcome == "aborted"
    assert harness.slipway.rollbacks.plans.offer(deploy)[0] is None  # nothing was replaced: no Rollback
    # the DORA figures read it as a failed change restored at the abort
    [times] = [t for t in harness.store.reads.finished_since("2000-01-01") if t.id == deploy_id]
    assert times.aborted_from == harness.store.rollouts.get(deploy_id).stage(2).started_at
    assert stage_states(harness, deploy_id)[1] == ("25%", "aborted")
    thread = [c.args.get("text", "") for c in harness.fake.calls_to("chat.postMessage") if c.args.get("thread_ts")]
    last_word = next(text for text in thread if text.startswith(":octagonal_sign: api 2.7.0 aborted at 25%"))
    assert "nothing to roll back" in last_word and "production is locked" in last_word
    assert not any("roll back with the button" in text for text in thread)


@pytest.mark.rollout(pauses=(0, 30, 0))
async def test_pause_keeps_the_remaining_time_and_a_restart_resumes_it(harness: Harness, record: Path) -> None:
    deploy_id = await ship_to_production(harness)
    await wait_for(lambda: ("25%", "watching") in stage_states(harness, deploy_id), what="the 25% pause")
    await harness.slipway.steering.pause(deploy_id, "U0DAVE")
    left = harness.store.rollouts.get(deploy_id).stage(2).remaining
    assert 25 < left <= 30
    await harness.restart()
    await asyncio.sleep(0.3)
    rollout = harness.store.rollouts.get(deploy_id)
    assert rollout.paused and rollout.stage(2).state == "watching"
    assert rollout.stage(2).remaining == left  # nothing promoted while paused, the time left kept
    await harness.slipway.steering.resume(deploy_id, "U0DAVE")
    ends = datetime.fromisoformat(harness.store.rollouts.get(deploy_id).stage(2).ends_at)
    assert abs((ends - datetime.now(ends.tzinfo)).total_seconds() - left) < 3  # the pause left, not a fresh 30 s
    await harness.slipway.steering.promote(deploy_id, "U0DAVE")
    await harness.settle()
    assert harness.deploy(deploy_id).status == DeployStatus.SUCCEEDED
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "25", "50", "100"]


@pytest.mark.rollout(bake=30)
async def test_the_bake_holds_success_and_an_abort_there_is_a_rollback(harness: Harness, record: Path) -> None:
    first = await ship_to_production(harness, "2.6.0")
    await wait_for(lambda: harness.deploy(first).status == DeployStatus.BAKING, what="the bake")
    await harness.slipway.steering.promote(first, "U0DAVE")  # ends the bake now
    await harness.settle()
    assert harness.deploy(first).status == DeployStatus.SUCCEEDED
    second = await ship_to_production(harness, "2.7.0")
    await wait_for(lambda: harness.deploy(second).status == DeployStatus.BAKING, what="the second bake")
    said = await harness.slipway.steering.abort(second, "U0DAVE")
    assert "rolls back" in said
    await harness.settle()
    await wait_for(lambda: harness.latest_deploy().id != second and harness.latest_deploy().status in (
        DeployStatus.SUCCEEDED, DeployStatus.FAILED), what="the rollback")
    await harness.settle()
    rollback = harness.latest_deploy()
    assert rollback.rollback_of == second and rollback.version == "2.6.0"
    assert rollback.status == DeployStatus.SUCCEEDED
    assert harness.deploy(second).status == DeployStatus.FAILED
    assert harness.deploy(second).status_reason.startswith("aborted at the bake")
    # the rollback is direct: one engine call, no strategy steps
    assert engine_calls(record)[-1]["env"]["SLIPWAY_STRATEGY"] == "direct"


@pytest.mark.rollout(pauses=(0, 30, 0), approvers=("U0ALICE",))
async def test_steering_takes_the_approve_role_and_abort_the_rollback_role(harness: Harness) -> None:
    from bot.errors import NotAllowed
    from bot.slack.blocks import ACTION_APPROVE

    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.command("api 2.7.0 production")
    deploy_id = harness.latest_deploy().id
    await harness.slack.click(harness.message_of(deploy_id), "U0ALICE", ACTION_APPROVE)  # no settle: it pauses
    await wait_for(lambda: ("25%", "watching") in stage_states(harness, deploy_id), what="the 25% pause")
    for user in ("U0EVE", "U0DAVE"):  # a stranger, and the requester on a rung with approvals
        with pytest.raises(NotAllowed, match="approve"):
            await harness.slipway.steering.promote(deploy_id, user)
    with pytest.raises(NotAllowed, match="rollback"):
        await harness.slipway.steering.abort(deploy_id, "U0EVE")
    refused = [e for e in harness.store.audit.events(deploy_id) if e.action == "refused"]
    assert [e.detail["attempted"] for e in refused] == ["promote", "promote", "abort"]
    assert harness.store.rollouts.get(deploy_id).stage(2).promoted_by is None
    await harness.slipway.steering.promote(deploy_id, "U0ALICE")
    await harness.settle()
    assert harness.deploy(deploy_id).status == DeployStatus.SUCCEEDED


async def test_a_kill_mid_pause_resumes_the_pause_with_the_time_it_had_left(
        fake_slack, serve, tmp_path: Path, record: Path) -> None:
    from bot.sandbox.fake_slack import SlackSender
    from store import Store
    from tests.conftest import SIGNING_SECRET

    config = tmp_path / "slipway.yml"
    config.write_text(config_yaml({"api": {"deploy": engine("--record", record), "strategy": {"staging": {"canary": {
        "steps": [{"weight": 5}, {"weight": 25, "pause": "5s"}, {"weight": 100}]}}}}}))
    db = tmp_path / "slipway.db"
    slipway = serve(config, db)
    url = await slipway.start()

    def stage_two():
        store = Store.open(db, migrate=False)
        try:
            rollout = store.rollouts.get(1)
            return rollout.stage(2) if rollout is not None else None
        finally:
            store.close()

    async with SlackSender(url, SIGNING_SECRET, fake_slack) as slack:
        assert (await slack.command("api 2.7.0 staging", "U0DAVE"))[0] == 200
    await wait_for(lambda: (stage := stage_two()) is not None and stage.state == "watching", what="the 25% pause")
    before = stage_two()
    await asyncio.sleep(1)
    await slipway.kill()
    await slipway.start()
    await wait_for(lambda: stage_two().state == "passed", timeout=30, what="the 25% stage to pass")
    after = stage_two()
    assert after.ends_at == before.ends_at  # the deadline it had, not a fresh 5 s from the restart
    ended, deadline = datetime.fromisoformat(after.ended_at), datetime.fromisoformat(before.ends_at)
    assert deadline <= ended < deadline + (deadline - datetime.fromisoformat(before.watch_started_at)) * 0.9
    store = Store.open(db, migrate=False)
    await wait_for(lambda: store.deploys.get(1).status == DeployStatus.SUCCEEDED, what="the deploy to succeed")
    store.close()
    # each step applied once: the watched step was not applied again, nor any decision repeated
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "25", "100"]
    await slipway.terminate()


@pytest.mark.rollout(green_pause=30)
async def test_a_blue_green_abort_before_release_switches_back(harness: Harness, record: Path) -> None:
    await harness.slack.command("api 2.7.0 staging", "U0DAVE")
    deploy_id = harness.latest_deploy().id
    await wait_for(lambda: ("switch", "watching") in stage_states(harness, deploy_id), what="the switch's pause")
    await harness.slipway.steering.abort(deploy_id, "U0DAVE")
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status == DeployStatus.FAILED and deploy.status_reason.startswith("aborted at switch")
    assert [c["env"]["SLIPWAY_PHASE"] for c in engine_calls(record)] == ["deploy", "switch", "switch_back"]
    assert stage_states(harness, deploy_id) == [("deploy", "passed"), ("switch", "aborted"), ("release", "pending")]


@pytest.mark.rollout(pauses=(0, 30, 0), auto_rollback=True)
async def test_a_page_tied_to_a_canary_in_progress_aborts_it(harness: Harness, record: Path) -> None:
    import aiohttp

    deploy_id = await ship_to_production(harness)
    await wait_for(lambda: ("25%", "watching") in stage_states(harness, deploy_id), what="the 25% pause")
    alert = {"id": "checkout-errors", "service": "api", "environment": "production", "metric": "error_rate",
             "value": 0.3, "baseline": 0.02, "status": "firing", "summary": "checkout errors"}
    async with aiohttp.ClientSession() as session:
        async with session.post(harness.url + "/webhooks/generic", json=alert,
                                headers={"Authorization": "Bearer generic-token"}) as response:
            assert response.status == 200, await response.text()
    await wait_for(lambda: harness.deploy(deploy_id).status == DeployStatus.FAILED, what="the abort")
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status_reason.startswith("aborted at 25%: a page-level alert"), deploy.status_reason
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "25", "0"]
    assert harness.latest_deploy().id == deploy_id  # no rollback: the stable version kept serving
    assert not harness.store.intents.pending("auto_rollback")


@pytest.mark.rollout(held=True)
async def test_an_abort_during_an_engine_call_waits_for_it_then_aborts(harness: Harness, record: Path) -> None:
    deploy_id = await ship_to_production(harness)
    await wait_for(lambda: ("5%", "applying") in stage_states(harness, deploy_id) and engine_calls(record),
                   what="the 5% engine call")
    await harness.slipway.steering.abort(deploy_id, "U0DAVE")
    await asyncio.sleep(0.3)
    assert harness.deploy(deploy_id).status == DeployStatus.DEPLOYING  # the call under way is not cut short
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5"]
    (record.parent / "release").touch()
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status == DeployStatus.FAILED and deploy.status_reason.startswith("aborted at 5%"), \
        deploy.status_reason
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "0"]


# -- what the review found: decisions that must survive, paths that must end the rollout ---------

SCRIPTED_ENGINE = """
import json, os, sys, time
record, release, fail_at = sys.argv[1], sys.argv[2], sys.argv[3]
weight = os.environ.get("SLIPWAY_WEIGHT", "")
with open(record, "a") as out:
    out.write(json.dumps({"env": {k: v for k, v in os.environ.items() if k.startswith("SLIPWAY_")}}) + "\\n")
if weight == "0" or fail_at == "hold":  # an abort's call (or every call) waits until the test lets it go
    while not os.path.exists(release):
        time.sleep(0.02)
sys.exit(1 if weight == fail_at else 0)
"""


def scripted(tmp_path: Path, record: Path, fail_at: str) -> dict:
    script = tmp_path / "engine.py"
    script.write_text(SCRIPTED_ENGINE)
    import sys

    return {"command": [sys.executable, str(script), str(record), str(tmp_path / "release"), fail_at]}


async def test_an_abort_the_runner_decided_survives_a_restart_and_no_later_step_runs(
        fake_slack, tmp_path: Path, record: Path, clock) -> None:
    config = config_yaml({"api": {"deploy": scripted(tmp_path, record, "25"), "strategy": {"production": {
        "canary": {"steps": [{"weight": 5}, {"weight": 25}, {"weight": 50}, {"weight": 100}]}}}}},
        production={"requires": "staging"})
    harness = await Harness(fake_slack, tmp_path / "slipway.db", config, clock).start()
    try:
        deploy_id = await ship_to_production(harness)
        # the 25% call failed: the abort is decided and stored; its weight-0 call is held
        await wait_for(lambda: [c["env"].get("SLIPWAY_WEIGHT") for c in engine_calls(record)] == ["5", "25", "0"],
                       what="the abort's engine call")
        assert harness.store.rollouts.get(deploy_id).abort_requested_by == "slipway"
        await harness.restart()  # Slipway stops during the abort's engine call
        (tmp_path / "release").touch()
        await wait_for(lambda: harness.deploy(deploy_id).status == DeployStatus.FAILED, what="the abort")
        await harness.settle()
        weights = [c["env"].get("SLIPWAY_WEIGHT") for c in engine_calls(record)]
        assert "50" not in weights and "100" not in weights and weights[-1] == "0", weights
        assert harness.deploy(deploy_id).status_reason.startswith("aborted at 25%: the engine failed at 25%")
    finally:
        (tmp_path / "release").touch()
        await harness.stop()


async def test_a_direct_deploy_with_a_bake_aborted_before_its_bake_is_rolled_back(
        fake_slack, tmp_path: Path, record: Path, clock) -> None:
    config = config_yaml({"api": {"deploy": scripted(tmp_path, record, "hold")}},
                         production={"requires": "staging", "bake": {"duration": "30s"}})
    harness = await Harness(fake_slack, tmp_path / "slipway.db", config, clock).start()
    try:
        harness.mark_succeeded("api", "production", "2.6.0")
        deploy_id = await ship_to_production(harness)
        await wait_for(lambda: len(engine_calls(record)) == 1, what="the engine call")
        said = await harness.slipway.steering.abort(deploy_id, "U0DAVE")
        assert "rolls back" in said  # the direct engine replaced the old version: nothing to switch back to
        (tmp_path / "release").touch()
        await wait_for(lambda: harness.latest_deploy().rollback_of == deploy_id, what="the rollback")
        rollback = harness.latest_deploy()
        await wait_for(lambda: harness.deploy(rollback.id).status == DeployStatus.SUCCEEDED, what="its success")
        assert rollback.version == "2.6.0" and harness.deploy(deploy_id).status == DeployStatus.FAILED
        assert [c["env"]["SLIPWAY_VERSION"] for c in engine_calls(record)] == ["2.7.0", "2.6.0"]  # never 2.7.0 again
    finally:
        (tmp_path / "release").touch()
        await harness.stop()


@pytest.mark.rollout(bake=30)
async def test_a_failed_engine_ends_the_rollout_with_the_deploy(harness: Harness, record: Path, tmp_path: Path) -> None:
    await harness.stop()
    harness.config_source = config_yaml({"api": {"deploy": engine("--exit", 1)}},
                                        production={"requires": "staging", "bake": {"duration": "30s"}})
    from bot.config import parse_config

    harness.config = parse_config(harness.config_source)
    await harness.start()
    deploy_id = await ship_to_production(harness)
    await harness.settle()
    assert harness.deploy(deploy_id).status == DeployStatus.FAILED
    rollout = harness.store.rollouts.get(deploy_id)
    assert rollout.ended_at is not None and rollout.outcome == "failed"
    assert harness.store.rollouts.in_progress() == []


@pytest.mark.rollout(pauses=(0, 30, 0))
async def test_two_promotes_at_once_promote_once_and_a_paused_rollout_is_not_promoted(
        harness: Harness, record: Path) -> None:
    from bot.errors import PolicyViolation

    deploy_id = await ship_to_production(harness)
    await wait_for(lambda: ("25%", "watching") in stage_states(harness, deploy_id), what="the 25% pause")
    await harness.slipway.steering.pause(deploy_id, "U0DAVE")
    with pytest.raises(PolicyViolation, match="resume it first"):
        await harness.slipway.steering.promote(deploy_id, "U0DAVE", position=2)
    await harness.slipway.steering.resume(deploy_id, "U0DAVE")
    outcomes = await asyncio.gather(*(harness.slipway.steering.promote(deploy_id, user, position=2)
                                      for user in ("U0DAVE", "U0DAVE")), return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["PolicyViolation", "str"]
    await harness.settle()
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "25", "50", "100"]
    refused = [e for e in harness.store.audit.events(deploy_id) if e.action == "refused"]
    assert [e.detail["attempted"] for e in refused] == ["promote", "promote"]  # every refused click is audited
