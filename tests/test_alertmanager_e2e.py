"""End to end with the real Prometheus Alertmanager: alerts pushed to its
API reach Slipway through its webhook receiver and appear in the deploy's
thread, then resolve there."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.slack.blocks import ACTION_APPROVE, ACTION_ROLLBACK
from tests.alertmanager import RealAlertmanager, ensure_installed
from tests.conftest import Harness, approvals, config_yaml, engine

TOKEN = "alertmanager-e2e-token"


@pytest.fixture
def environ() -> dict[str, str]:
    return {"SLIPWAY_ALERTMANAGER_TOKEN": TOKEN}


@pytest.fixture
def clock(clock):
    clock.now = datetime.now(UTC).replace(microsecond=0)  # Alertmanager stamps alerts with real time
    return clock


@pytest.fixture
def config_text(record: Path) -> str:
    return config_yaml(production={"approvals": approvals("U0ALICE")},
                       services={"api": {"deploy": engine("--record", record)}}, alerts={"channel": "C0ALERTS"})


async def ship(harness: Harness, version: str):
    await harness.command(f"api {version} production")
    deploy = harness.latest_deploy()
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    return harness.deploy(deploy.id)


def thread(harness: Harness, deploy) -> list[dict]:
    return [c.args for c in harness.fake.calls_to("chat.postMessage") if c.args.get("thread_ts") == deploy.message_ts]


async def test_alertmanager_alerts_land_in_the_deploys_thread_and_resolve(harness: Harness, clock) -> None:
    ensure_installed()
    await ship(harness, "2.6.3")
    deploy = await ship(harness, "2.7.0")
    annotations = {"metric": "error_rate", "value": "0.09", "baseline": "0.01", "summary": "5xx on /checkout"}
    async with RealAlertmanager(harness.url + "/webhooks/alertmanager", TOKEN) as alertmanager:
        fired = await alertmanager.fire("HighErrorRate", service="api", env="production", annotations=annotations)
        breach = await harness.fake.wait_for(lambda fake: next(
            (post for post in thread(harness, deploy) if "HighErrorRate" in post.get("text", "")), None), timeout=20)
        shown = str(breach["blocks"])
        assert "error_rate 0.09 is 9.0× its baseline 0.01" in shown and "PAGE" in shown
        assert f"after api 2.7.0 reached production (deploy #{deploy.id})" in shown
        assert ACTION_ROLLBACK in shown

        await alertmanager.resolve(fired["labels"])
        update = await harness.fake.wait_for(lambda fake: next(
            (c.args for c in fake.calls_to("chat.update") if "Resolved" in str(c.args.get("blocks"))), None),
            timeout=20)
        assert update["channel"] == "C0DEPLOYS"
    stored = harness.store.db.execute("SELECT status, deploy_id, source FROM alerts").fetchall()
    assert stored == [("resolved", deploy.id, "alertmanager")]
