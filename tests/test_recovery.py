"""Kill Slipway (SIGKILL, a real process) in the middle of a deploy and
start it again on the same database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.executors.command import process_start
from bot.sandbox.fake_slack import FakeSlack, SlackSender
from bot.slack.blocks import ACTION_APPROVE
from store import Store
from tests.conftest import SIGNING_SECRET, approvals, config_yaml, engine
from tests.processes import SlipwayProcess


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {name: tmp_path / name for name in ("slipway.yml", "slipway.db", "started", "release", "record")}


@pytest.fixture
def config(files: dict[str, Path]) -> Path:
    files["slipway.yml"].write_text(config_yaml(
        production={"approvals": approvals("U0ALICE")},
        services={"api": {"deploy": engine("--started", files["started"], "--wait-for", files["release"],
                                           "--record", files["record"])},
                  "web": {"deploy": engine()}}))
    return files["slipway.yml"]


async def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)  # polling a file another process writes; there is no event to wait on


async def test_a_killed_slipway_marks_an_interrupted_command_deploy_failed_and_keeps_the_rest(
        fake_slack: FakeSlack, config: Path, files: dict[str, Path]) -> None:
    slipway = SlipwayProcess(config, files["slipway.db"], fake_slack)
    url = await slipway.start()
    try:
        async with SlackSender(url, SIGNING_SECRET, fake_slack) as slack:
            assert (await slack.command("web 1.0.0 production", "U0DAVE"))[0] == 200  # awaits approval
            assert (await slack.command("api 2.7.0 staging", "U0DAVE"))[0] == 200  # runs, and hangs
            await wait_until(lambda: files["started"].exists())
            await fake_slack.wait_for(lambda f: len([c for c in f.calls_to("chat.postMessage")
                                                     if "thread_ts" not in c.args]) == 2)
        await slipway.kill()

        store = Store.open(files["slipway.db"])
        states = {d.service: d.status for d in store.deploys.in_states(("awaiting_approval", "deploying"))}
        store.close()
        assert states == {"web": "awaiting_approval", "api": "deploying"}  # nothing recorded was lost

        url = await slipway.start()
        api_message = next(m for m in fake_slack.channel_messages("C0DEPLOYS") if "Deploy api 2.7.0" in m.text)
        # the message is updated in place once the deploy is recorded as failed
        await fake_slack.wait_for(lambda f: f.messages[(api_message.channel, api_message.ts)].text.endswith("failed"))
        assert "Failed" in str(fake_slack.messages[(api_message.channel, api_message.ts)].blocks)
        store = Store.open(files["slipway.db"])
        api = store.deploys.history("api")[0]
        assert api.status == "failed" and api.status_reason.startswith("deploy engine: interrupted by restart")
        store.close()
        # the thread says why, queued after the edit (so it may arrive a moment later)
        await fake_slack.wait_for(lambda f: any(
            "interrupted by restart" in c.args.get("text", "") and c.args.get("thread_ts") == api_message.ts
            for c in f.calls_to("chat.postMessage")))
        # the engine outlived the killed Slipway (its own session); it was stopped before the
        # environment was freed, so nothing runs alongside the next deploy
        orphan = int(files["started"].read_text().split()[0])
        assert process_start(orphan) is None
        assert "(pid " in api.status_reason and "was stopped" in api.status_reason

        async with SlackSender(url, SIGNING_SECRET, fake_slack) as slack:
            # the lock is released: a new deploy of api to staging is accepted
            status, reply = await slack.command("api 2.7.1 staging", "U0DAVE")
            assert "needs no approval" in reply
            # and the request that waited across the crash can still be approved
            web = next(m for m in fake_slack.channel_messages("C0DEPLOYS") if "Deploy web 1.0.0" in m.text)
            assert (await slack.click(web, "U0ALICE", ACTION_APPROVE))[0] == 200
            files["release"].touch()
            await fake_slack.wait_for(lambda f: "succeeded" in f.messages[(web.channel, web.ts)].text)
    finally:
        files["release"].touch()  # in case the test failed before the orphan was stopped
        if slipway.process and slipway.process.returncode is None:
            await slipway.terminate()


async def test_sigterm_lets_a_command_deploy_in_progress_finish(fake_slack: FakeSlack, config: Path,
                                                                 files: dict[str, Path]) -> None:
    slipway = SlipwayProcess(config, files["slipway.db"], fake_slack)
    url = await slipway.start()
    try:
        async with SlackSender(url, SIGNING_SECRET, fake_slack) as slack:
            assert (await slack.command("api 2.7.0 staging", "U0DAVE"))[0] == 200
            await wait_until(lambda: files["started"].exists())
        terminated = asyncio.ensure_future(slipway.terminate())
        await slipway.wait_for_log("waiting up to 60 s for 1 command deploy(s) to finish")
        assert slipway.process.returncode is None
        files["release"].touch()
        assert await terminated == 0
        store = Store.open(files["slipway.db"])
        assert store.deploys.history("api")[0].status == "succeeded"
        store.close()
    finally:
        files["release"].touch()
        await slipway.close()
