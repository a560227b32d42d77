"""The deploy queue in a real ``slipway serve``: killed (SIGKILL) with three
requests waiting in line, restarted, the line is as it was and goes on."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from bot.sandbox.fake_slack import FakeSlack, SlackSender
from bot.slack.blocks import ACTION_APPROVE
from store import DeployStatus, Store
from tests.conftest import SIGNING_SECRET, approvals, config_yaml, engine_calls
from tests.test_queue import HELD_ENGINE


async def wait_for(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def statuses(db: Path) -> dict[str, str]:
    store = Store.open(db, migrate=False)
    try:
        return {d.version: d.status for d in store.deploys.history("api", "production", limit=20)}
    finally:
        store.close()


async def test_a_killed_slipway_keeps_its_queue_and_runs_it_after_the_restart(
        fake_slack: FakeSlack, serve, tmp_path: Path, record: Path) -> None:
    holds = tmp_path / "holds"
    holds.mkdir()
    script = tmp_path / "held_engine.py"
    script.write_text(HELD_ENGINE)
    config = tmp_path / "slipway.yml"
    config.write_text(config_yaml(
        {"api": {"deploy": {"command": [sys.executable, str(script), str(record), str(holds)]}}},
        production={"requires": "staging", "queue": True, "approvals": approvals("U0ALICE")}))
    db = tmp_path / "slipway.db"
    slipway = serve(config, db)
    url = await slipway.start()
    store = Store.open(db, migrate=False)
    for version in ("2.7.0", "2.7.1", "2.7.2", "2.7.3"):  # each has succeeded on staging
        deploy = store.deploys.create(service="api", environment="staging", version=version, version_prefixed=False,
                                      requested_by="U0DAVE", previous_version=None, checklist=[],
                                      needs_approval=False)
        for state in ("deploying", "verifying", "succeeded"):
            deploy = store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to=state, actor=None,
                                              action=state)
    store.close()
    (holds / "hold-2.7.0").touch()
    async with SlackSender(url, SIGNING_SECRET, fake_slack) as slack:
        for version in ("2.7.0", "2.7.1", "2.7.2", "2.7.3"):
            assert (await slack.command(f"api {version} production", "U0DAVE"))[0] == 200
        await wait_for(lambda: list(statuses(db).values()).count("queued") == 3, what="three in line")
        await fake_slack.wait_for(lambda f: len([c for c in f.calls_to("chat.postMessage")
                                                 if "thread_ts" not in c.args]) >= 4)
        messages = {m.text.split(":")[0]: m for m in fake_slack.channel_messages("C0DEPLOYS")}
        for version in ("2.7.3", "2.7.1"):  # approved out of order while they wait
            message = next(m for key, m in messages.items() if f"api {version} " in key)
            assert (await slack.click(message, "U0ALICE", ACTION_APPROVE))[0] == 200
        first = next(m for key, m in messages.items() if "api 2.7.0 " in key)
        assert (await slack.click(first, "U0ALICE", ACTION_APPROVE))[0] == 200
    await wait_for(lambda: [c["env"]["SLIPWAY_VERSION"] for c in engine_calls(record)] == ["2.7.0"],
                   what="2.7.0 to start")
    await slipway.kill()
    assert {v: s for v, s in statuses(db).items() if v != "2.7.0"} == {
        "2.7.1": DeployStatus.QUEUED, "2.7.2": DeployStatus.QUEUED, "2.7.3": DeployStatus.QUEUED}
    (holds / "hold-2.7.0").unlink()
    await slipway.start()
    # the killed deploy is settled; the line goes on with the approved ones, in order; 2.7.2 still waits
    await wait_for(lambda: statuses(db)["2.7.3"] == DeployStatus.SUCCEEDED, what="the line to go on")
    assert statuses(db)["2.7.2"] == DeployStatus.QUEUED
    started = [c["env"]["SLIPWAY_VERSION"] for c in engine_calls(record)]
    assert started[0] == "2.7.0" and started[-2:] == ["2.7.1", "2.7.3"], started
    await slipway.terminate()
