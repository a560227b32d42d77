"""Staged rollouts gated by a real Prometheus (Debian's ``prometheus``,
scraping every second an app whose error rates the tests set, see
tests/prometheus.py), end to end through Slipway: the canary that passes,
the canary that fails at its second stage, the Prometheus that goes away.

The queries are the README's, with a 5 s rate window instead of 1 m so a
change of error rate shows within a few scrapes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bot.slack.blocks import ACTION_RESUME
from store import DeployStatus
from tests.conftest import Harness, config_yaml, engine, engine_calls
from tests.prometheus import (  # noqa: F401 (fixtures)
    MetricsApp,
    RealPrometheus,
    metrics_app,
    prometheus_server,
    real_prometheus,
    unique_service,
)

CANARY = ('sum(rate(http_requests_total{service="{service}",track="canary",code=~"5.."}[5s]))'
          ' / sum(rate(http_requests_total{service="{service}",track="canary"}[5s]))')
STABLE = ('sum(rate(http_requests_total{service="{service}",track="stable",code=~"5.."}[5s]))'
          ' / sum(rate(http_requests_total{service="{service}",track="stable"}[5s]))')


@pytest.fixture
def service(metrics_app: MetricsApp) -> str:
    """A service of this test's own, its stable and canary tracks at 1% errors."""
    name = unique_service("api")
    for track in ("stable", "canary"):
        metrics_app.set(service=name, track=track, rps=200, error_rate=0.01)
    return name


@pytest.fixture
def pauses() -> tuple[str, str, str]:
    return ("2s", "20s", "2s")


@pytest.fixture
def bake() -> str:
    return "2s"


@pytest.fixture
def auto_rollback() -> bool:
    return False


@pytest.fixture
def config_text(real_prometheus: RealPrometheus, service: str, record: Path, pauses: tuple[str, str, str],
                bake: str, auto_rollback: bool) -> str:
    return config_yaml(
        {service: {"deploy": engine("--record", record), "strategy": {"production": {"canary": {
            "steps": [{"weight": 5, "pause": pauses[0]}, {"weight": 25, "pause": pauses[1]},
                      {"weight": 50, "pause": pauses[2]}, {"weight": 100}],
            "analysis": ["error_rate"]}}}}},
        production={"requires": "staging", "auto_rollback": auto_rollback,
                    "bake": {"duration": bake, "analysis": ["error_rate"]}},
        analysis={"prometheus_url": real_prometheus.url, "query_timeout": "2s", "checks": {"error_rate": {
            "query": CANARY, "baseline_query": STABLE, "max": 0.2, "max_ratio": 3, "min_baseline": 0.001,
            "interval": "1s", "failure_limit": 1, "inconclusive": "pause"}}})


async def wait_for(predicate, timeout: float = 40.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def start_canary(harness: Harness, prometheus: RealPrometheus, service: str) -> int:
    # both tracks have data before the deploy starts, as a live service would
    await prometheus.wait_for(CANARY.replace("{service}", service), timeout=60)
    await prometheus.wait_for(STABLE.replace("{service}", service), timeout=60)
    harness.mark_succeeded(service, "staging", "2.7.0")
    status, _ = await harness.slack.command(f"{service} 2.7.0 production", "U0DAVE")
    assert status == 200
    await wait_for(lambda: harness.store.rollouts.get(harness.latest_deploy().id) is not None, what="the rollout")
    return harness.latest_deploy().id


def stage(harness: Harness, deploy_id: int, position: int):
    return harness.store.rollouts.get(deploy_id).stage(position)


@pytest.mark.parametrize("pauses", [("2s", "2s", "2s")])
async def test_a_healthy_canary_passes_every_stage_then_the_bake(
        harness: Harness, real_prometheus: RealPrometheus, service: str, record: Path) -> None:
    deploy_id = await start_canary(harness, real_prometheus, service)
    await wait_for(lambda: harness.deploy(deploy_id).status == DeployStatus.BAKING, what="the bake")
    await wait_for(lambda: harness.deploy(deploy_id).status == DeployStatus.SUCCEEDED, what="success")
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "25", "50", "100"]
    rollout = harness.store.rollouts.get(deploy_id)
    assert [s.state for s in rollout.stages] == ["passed"] * 5
    measured = harness.store.rollouts.measurements(deploy_id)
    # every watched stage (5%, 25%, 50% and the bake) was measured, and every measurement passed
    assert {m.position for m in measured} == {1, 2, 3, 5}
    assert {m.verdict for m in measured} == {"pass"}, [m.detail for m in measured if m.verdict != "pass"]
    assert all(m.value is not None and 0.0 < m.value < 0.05 for m in measured)
    # the bake compared with the stable baseline kept from before full traffic
    assert "error_rate" in rollout.baselines
    assert {m.baseline for m in measured if m.position == 5} == {rollout.baselines["error_rate"]}
    thread = [c.args.get("text", "") for c in harness.fake.calls_to("chat.postMessage") if c.args.get("thread_ts")]
    assert any("5%: passed (error_rate" in text for text in thread)


async def test_errors_at_the_second_stage_abort_the_canary(
        harness: Harness, real_prometheus: RealPrometheus, metrics_app: MetricsApp, service: str,
        record: Path) -> None:
    deploy_id = await start_canary(harness, real_prometheus, service)
    await wait_for(lambda: stage(harness, deploy_id, 2).state == "watching", what="the 25% stage")
    metrics_app.set(service=service, track="canary", rps=200, error_rate=0.4)
    await wait_for(lambda: harness.deploy(deploy_id).status == DeployStatus.FAILED, what="the abort")
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status_reason.startswith("aborted at 25%: error_rate "), deploy.status_reason
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "25", "0"]
    assert engine_calls(record)[-1]["env"]["SLIPWAY_STEP"] == "0"
    assert harness.store.locks.blocked(service, "production", "2.7.0") is not None
    assert [lock.environment for lock in harness.store.locks.all(service)] == ["production"]
    failed = [m for m in harness.store.rollouts.measurements(deploy_id) if m.verdict == "fail"]
    assert failed and failed[0].position == 2 and failed[0].value > 3 * failed[0].baseline
    thread = [c.args.get("text", "") for c in harness.fake.calls_to("chat.postMessage") if c.args.get("thread_ts")]
    assert any(":x: 25%: error_rate" in text for text in thread)  # the evidence
    message = harness.message_of(deploy_id)
    assert "rollout_abort" not in str(message.blocks) and "deploy_rollback" not in str(message.blocks)


async def test_prometheus_gone_pauses_the_canary_and_a_click_resumes_it(
        harness: Harness, real_prometheus: RealPrometheus, service: str, record: Path) -> None:
    deploy_id = await start_canary(harness, real_prometheus, service)
    await wait_for(lambda: stage(harness, deploy_id, 2).state == "watching", what="the 25% stage")
    real_prometheus.stop()
    try:
        await wait_for(lambda: harness.store.rollouts.get(deploy_id).paused, what="the pause")
        rollout = harness.store.rollouts.get(deploy_id)
        assert rollout.paused_by == "slipway" and "inconclusive" in rollout.pause_reason
        inconclusive = [m for m in harness.store.rollouts.measurements(deploy_id) if m.verdict == "inconclusive"]
        assert inconclusive and "Prometheus unreachable" in inconclusive[-1].detail
        # whoever may resume it is told, in the thread (delivered by the outbox a moment after the pause)
        await wait_for(lambda: any("Paused" in c.args.get("text", "") and "<@U0DAVE>" in c.args.get("text", "")
                                   for c in harness.fake.calls_to("chat.postMessage") if c.args.get("thread_ts")),
                       what="the pause's thread line")
    finally:
        real_prometheus.start()
    # Prometheus answers again (someone looked), and its 5 s rate window has left the gap of
    # its outage behind (until then "no data" would pause the rollout again, rightly);
    # still nothing was promoted while paused
    await real_prometheus.wait_for(CANARY.replace("{service}", service), timeout=60)
    await asyncio.sleep(6)
    await real_prometheus.wait_for(CANARY.replace("{service}", service), timeout=60)
    assert stage(harness, deploy_id, 2).state == "watching"
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "25"]
    await wait_for(lambda: ACTION_RESUME in str(harness.message_of(deploy_id).blocks), what="the Resume button")
    status, _ = await harness.slack.click(harness.message_of(deploy_id), "U0DAVE", ACTION_RESUME)
    assert status == 200
    await wait_for(lambda: not harness.store.rollouts.get(deploy_id).paused, what="the resume")
    # the rest of the 25% pause, then the 50% step: promote it to keep the test short
    await harness.slipway.steering.promote(deploy_id, "U0DAVE")
    await wait_for(lambda: harness.deploy(deploy_id).status == DeployStatus.SUCCEEDED, what="success")
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)] == ["5", "25", "50", "100"]


@pytest.mark.parametrize(("pauses", "bake", "auto_rollback"), [(("2s", "2s", "2s"), "60s", True)])
async def test_a_failed_bake_rolls_back_where_auto_rollback_is_on(
        harness: Harness, real_prometheus: RealPrometheus, metrics_app: MetricsApp, service: str,
        record: Path) -> None:
    harness.mark_succeeded(service, "production", "2.6.0")  # what ran before
    deploy_id = await start_canary(harness, real_prometheus, service)
    await wait_for(lambda: harness.deploy(deploy_id).status == DeployStatus.BAKING, what="the bake")
    # at full traffic there is no stable track left: the new version's errors rise
    metrics_app.set(service=service, track="canary", rps=200, error_rate=0.5)
    await wait_for(lambda: harness.deploy(deploy_id).status == DeployStatus.FAILED, what="the failed bake")
    deploy = harness.deploy(deploy_id)
    assert deploy.status_reason.startswith("failed at the bake: error_rate "), deploy.status_reason
    await wait_for(lambda: harness.latest_deploy().rollback_of == deploy_id, what="the automatic rollback")
    rollback = harness.latest_deploy()
    await wait_for(lambda: harness.deploy(rollback.id).status == DeployStatus.SUCCEEDED, what="the rollback")
    assert rollback.version == "2.6.0" and rollback.requested_by == "slipway"
    # the bake judged against the stable baseline kept from before full traffic
    failed = [m for m in harness.store.rollouts.measurements(deploy_id) if m.verdict == "fail"]
    assert failed[0].position == 5 and failed[0].baseline == harness.store.rollouts.get(deploy_id).baselines[
        "error_rate"]
    await harness.settle()
    thread = [c.args.get("text", "") for c in harness.fake.calls_to("chat.postMessage") if c.args.get("thread_ts")]
    assert any("Automatic rollback" in text and "failed at the bake" in text for text in thread)
    assert [c["env"]["SLIPWAY_WEIGHT"] for c in engine_calls(record)[:4]] == ["5", "25", "50", "100"]
    assert engine_calls(record)[4]["env"]["SLIPWAY_ROLLBACK_OF"] == str(deploy_id)
