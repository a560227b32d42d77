"""A deploy queue (``environments[].queue``): requests made while the
environment is busy wait in line instead of being refused; approvals are
given while they wait; the first ready one starts when the line frees; a
rollback goes first and its lock holds the line."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from bot.slack.blocks import ACTION_APPROVE, ACTION_CANCEL
from store import DeployStatus
from tests.conftest import Harness, approvals, config_yaml, engine_calls

# each call waits while a file named after its version exists, so a test holds the deploys it wants running
HELD_ENGINE = """
import json, os, sys, time
record, holds = sys.argv[1], sys.argv[2]
version = os.environ["SLIPWAY_VERSION"]
with open(record, "a") as out:
    out.write(json.dumps({"env": {k: v for k, v in os.environ.items() if k.startswith("SLIPWAY_")}}) + "\\n")
while os.path.exists(os.path.join(holds, "hold-" + version)):
    time.sleep(0.02)
"""


@pytest.fixture
def holds(tmp_path: Path) -> Path:
    folder = tmp_path / "holds"
    folder.mkdir()
    return folder


@pytest.fixture
def config_text(tmp_path: Path, record: Path, holds: Path) -> str:
    script = tmp_path / "held_engine.py"
    script.write_text(HELD_ENGINE)
    return config_yaml({"api": {"deploy": {"command": [sys.executable, str(script), str(record), str(holds)]}}},
                       production={"requires": "staging", "queue": True, "approvals": approvals("U0ALICE")})


async def wait_for(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def request(harness: Harness, version: str) -> tuple[int, str]:
    harness.mark_succeeded("api", "staging", version)
    reply = await harness.command(f"api {version} production")
    return harness.latest_deploy().id, reply


def started(record: Path) -> list[str]:
    return [call["env"]["SLIPWAY_VERSION"] for call in engine_calls(record)]


async def test_requests_queue_are_approved_out_of_order_and_start_in_order(
        harness: Harness, record: Path, holds: Path) -> None:
    (holds / "hold-2.7.0").touch()
    first, _ = await request(harness, "2.7.0")
    queued = [await request(harness, version) for version in ("2.7.1", "2.7.2", "2.7.3", "2.7.4")]
    ids = [deploy_id for deploy_id, _ in queued]
    assert [harness.deploy(i).status for i in ids] == [DeployStatus.QUEUED] * 4
    assert [harness.store.deploys.queue_position(harness.deploy(i)) for i in ids] == [1, 2, 3, 4]
    assert "#3 in line" in str(harness.message_of(ids[2]).blocks)
    # the same version again is the same request
    reply = await harness.command("api 2.7.2 production")
    assert f"Deploy #{ids[1]} " in reply and "#2 in line" in reply
    assert len(harness.store.deploys.queued("api", "production")) == 4
    # approved out of order while they wait (2.7.4, 2.7.3, then 2.7.2; 2.7.1 never), then the first one
    for deploy_id in (ids[3], ids[2], ids[1]):
        await harness.click(harness.message_of(deploy_id), "U0ALICE", ACTION_APPROVE)
        assert harness.deploy(deploy_id).status == DeployStatus.QUEUED and harness.deploy(deploy_id).approved_at
    await harness.slack.click(harness.message_of(first), "U0ALICE", ACTION_APPROVE)
    await wait_for(lambda: started(record) == ["2.7.0"], what="the first deploy")
    (holds / "hold-2.7.0").unlink()
    # the line frees: 2.7.1 still awaits approval, so 2.7.2 goes, then 2.7.3 and 2.7.4, in line order
    await wait_for(lambda: harness.deploy(ids[3]).status == DeployStatus.SUCCEEDED, what="the queue to run")
    await harness.settle()
    assert started(record) == ["2.7.0", "2.7.2", "2.7.3", "2.7.4"]
    assert harness.deploy(ids[0]).status == DeployStatus.QUEUED  # waiting for its approval still
    await harness.click(harness.message_of(ids[0]), "U0DAVE", ACTION_CANCEL)  # withdrawn: it leaves the line
    assert harness.deploy(ids[0]).status == DeployStatus.CANCELLED
    assert harness.store.deploys.queued("api", "production") == []


async def test_a_rollback_goes_first_and_its_lock_holds_the_line(harness: Harness, record: Path, holds: Path) -> None:
    harness.mark_succeeded("api", "production", "2.6.0")
    live, _ = await request(harness, "2.7.0")
    await harness.click(harness.message_of(live), "U0ALICE", ACTION_APPROVE)
    assert harness.deploy(live).status == DeployStatus.SUCCEEDED
    waiting, _ = await request(harness, "2.7.1")  # in flight, awaiting approval
    queued, reply = await request(harness, "2.7.2")
    assert harness.deploy(queued).status == DeployStatus.QUEUED and "queue" in reply.lower()
    await harness.click(harness.message_of(queued), "U0ALICE", ACTION_APPROVE)  # ready, behind 2.7.1
    plan = await harness.slipway.rollbacks.offer_for("U0ALICE", "api", "production")
    rollback = await harness.slipway.rollbacks.start(plan.current.id, plan.target.version, "U0ALICE")
    await harness.settle()
    assert harness.deploy(rollback.id).status == DeployStatus.SUCCEEDED
    assert harness.deploy(waiting).status == DeployStatus.CANCELLED  # superseded by the rollback
    assert harness.deploy(queued).status == DeployStatus.QUEUED  # the rollback's lock holds the line
    assert started(record) == ["2.7.0", "2.6.0"]
    await harness.command("unlock api production", "U0ALICE")
    await wait_for(lambda: harness.deploy(queued).status == DeployStatus.SUCCEEDED, what="the line to go on")
    assert started(record) == ["2.7.0", "2.6.0", "2.7.2"]


async def test_the_queue_survives_a_restart(harness: Harness, record: Path, holds: Path) -> None:
    (holds / "hold-2.7.0").touch()
    first, _ = await request(harness, "2.7.0")
    queued = [(await request(harness, version))[0] for version in ("2.7.1", "2.7.2", "2.7.3")]
    for deploy_id in queued:
        await harness.click(harness.message_of(deploy_id), "U0ALICE", ACTION_APPROVE)
    await harness.restart()
    assert [harness.deploy(i).status for i in queued] == [DeployStatus.QUEUED] * 3
    await harness.slack.click(harness.message_of(first), "U0ALICE", ACTION_APPROVE)
    (holds / "hold-2.7.0").unlink()
    await wait_for(lambda: harness.deploy(queued[-1]).status == DeployStatus.SUCCEEDED, what="the queue to run")
    assert started(record) == ["2.7.0", "2.7.1", "2.7.2", "2.7.3"]


async def test_metrics_show_each_queue_depth(harness: Harness, holds: Path) -> None:
    (holds / "hold-2.7.0").touch()
    await request(harness, "2.7.0")
    for version in ("2.7.1", "2.7.2"):
        await request(harness, version)
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(harness.url + "/metrics") as response:
            page = await response.text()
    assert 'slipway_queue_depth{environment="production",service="api"} 2.0' in page
    assert 'slipway_deploys{environment="production",state="queued"} 2.0' in page
    (holds / "hold-2.7.0").unlink()


async def test_deploy_queue_lists_each_line_in_order(harness: Harness, holds: Path) -> None:
    (holds / "hold-2.7.0").touch()
    await request(harness, "2.7.0")
    second, _ = await request(harness, "2.7.1")
    third, _ = await request(harness, "2.7.2")
    await harness.click(harness.message_of(third), "U0ALICE", ACTION_APPROVE)
    listing = await harness.command("queue api")
    assert "*api on production*" in listing
    assert listing.index(f"1. #{second} 2.7.1") < listing.index(f"2. #{third} 2.7.2")
    assert "awaiting approval" in listing and "approved, ready for its turn" in listing
    assert "I don't know a service called `nope`" in await harness.command("queue nope")
    (holds / "hold-2.7.0").unlink()


async def test_a_newcomer_joins_the_end_of_a_waiting_line_and_an_older_version_never_runs(
        harness: Harness, record: Path, holds: Path) -> None:
    (holds / "hold-2.8.0").touch()
    first, _ = await request(harness, "2.8.0")
    older, _ = await request(harness, "2.7.0")  # queued behind 2.8.0
    await harness.click(harness.message_of(older), "U0ALICE", ACTION_APPROVE)
    await harness.slack.click(harness.message_of(first), "U0ALICE", ACTION_APPROVE)  # no settle: it is held
    await wait_for(lambda: started(record) == ["2.8.0"], what="2.8.0 to start")
    (holds / "hold-2.8.0").unlink()
    await wait_for(lambda: harness.deploy(older).status == DeployStatus.CANCELLED, what="the older one's turn")
    assert "would not be an upgrade" in harness.deploy(older).status_reason
    assert started(record) == ["2.8.0"]
    # a line with someone still awaiting approval: a new request joins it rather than take the free environment
    waiting, _ = await request(harness, "2.9.0")
    assert harness.deploy(waiting).status == DeployStatus.AWAITING_APPROVAL
    newcomer, _ = await request(harness, "2.9.1")
    assert harness.deploy(newcomer).status == DeployStatus.QUEUED
