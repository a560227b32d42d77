"""Slipway's logs: one JSON object per line, the deploy's id on every line
logged by that deploy's work, a traceback inside its line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from bot.runtime.logs import (
    ContextFilter,
    JsonFormatter,
    configure_logging,
    deploy_context,
    log_context,
)
from bot.sandbox.fake_slack import FakeSlack, SlackSender
from bot.slack.blocks import ACTION_APPROVE, ACTION_CHECKLIST
from tests.conftest import SIGNING_SECRET, Harness, config_yaml, engine
from tests.processes import SlipwayProcess


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every record logged anywhere during the test, through Slipway's JSON
    formatter, as ``slipway serve`` writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines_of(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- the formatter ------------------------------------------------------------------------


async def test_concurrent_deploys_each_log_their_own_id(captured: io.StringIO) -> None:
    log = logging.getLogger("slipway.test")

    async def work(deploy_id: int, started: asyncio.Event, other: asyncio.Event) -> None:
        with deploy_context(deploy_id):
            log.info("starting")
            started.set()
            await other.wait()  # both are in flight at once, interleaved on one loop
            await asyncio.create_task(asyncio.sleep(0, result=log.info("from a task it started")))
            log.info("done", extra={"engine": "command"})

    first, second = asyncio.Event(), asyncio.Event()
    await asyncio.gather(work(1, first, second), work(2, second, first))
    log.info("outside any deploy")

    lines = [line for line in lines_of(captured) if line["logger"] == "slipway.test"]
    assert sorted((line["deploy_id"], line["message"]) for line in lines if "deploy_id" in line) == [
        (1, "done"), (1, "from a task it started"), (1, "starting"),
        (2, "done"), (2, "from a task it started"), (2, "starting")]
    assert [line["message"] for line in lines if "deploy_id" not in line] == ["outside any deploy"]
    done = next(line for line in lines if line["message"] == "done")
    assert done["engine"] == "command" and done["logger"] == "slipway.test" and done["level"] == "INFO"
    assert done["ts"].endswith("+00:00")


def test_an_exception_is_one_line_with_its_traceback(captured: io.StringIO) -> None:
    log = logging.getLogger("slipway.test")
    try:
        raise ValueError("boom\non two lines")
    except ValueError:
        with log_context(deploy_id=7, trigger="click"):
            log.exception("engine crashed → giving up")
    [line] = captured.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "engine crashed → giving up"  # not escaped to \u2192
    assert entry["level"] == "ERROR" and entry["deploy_id"] == 7 and entry["trigger"] == "click"
    assert entry["exception"].startswith("Traceback") and "ValueError: boom\non two lines" in entry["exception"]


def test_configure_logging_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml': use one of json, text"):
        configure_logging("INFO", "xml", stream=io.StringIO())


# -- a real Slipway ---------------------------------------------------------------------


async def test_a_clicks_background_work_and_the_deploy_run_carry_the_deploy_id(
        harness: Harness, captured: io.StringIO) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.command("api v2.7.0 production", user="U0DAVE")
    deploy = harness.latest_deploy()
    captured.truncate(0)
    captured.seek(0)
    await harness.click(harness.message_of(deploy), "U0DAVE", ACTION_APPROVE)  # refused: their own deploy
    for position in (0, 1):
        await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_CHECKLIST,
                            block_id=f"checklist:{deploy.id}:{position}", selected=True)
    for approver in ("U0ALICE", "U0BOB"):
        await harness.click(harness.message_of(deploy), approver, ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "succeeded"

    lines = lines_of(captured)
    slack_calls = [line for line in lines if line["message"].startswith("Sending a request")]
    # the refusal (ephemeral), the message updates, the thread replies: all this deploy's work
    assert any("chat.postEphemeral" in line["message"] for line in slack_calls)
    assert any("chat.update" in line["message"] for line in slack_calls)
    assert any("chat.postMessage" in line["message"] for line in slack_calls)
    assert [line for line in slack_calls if line.get("deploy_id") != deploy.id] == []
    [engine] = [line for line in lines if line["logger"] == "bot.deploys.runner" and "engine" in line]
    assert engine["deploy_id"] == deploy.id and engine["outcome"] == "succeeded"
    assert engine["message"].startswith(f"deploy {deploy.id}: command engine succeeded after ")


CONFIG = config_yaml(environments=[{"name": "staging"}], services={"api": {"deploy": engine()}})


async def test_slipway_serve_writes_json_lines_naming_the_deploy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_slack: FakeSlack,
        serve: Callable[..., SlipwayProcess]) -> None:
    monkeypatch.setenv("SLIPWAY_LOG_LEVEL", "DEBUG")  # slack_sdk logs each call at DEBUG: lines in the deploy's work
    monkeypatch.delenv("SLIPWAY_LOG_FORMAT", raising=False)  # JSON is the default
    config = tmp_path / "slipway.yml"
    config.write_text(CONFIG)
    slipway = serve(config, tmp_path / "slipway.db")
    events_url = await slipway.start()
    async with SlackSender(events_url, SIGNING_SECRET, fake_slack) as slack:
        status, _ = await slack.command("api 1.0.0", "U0DAVE")
        assert status == 200
    await fake_slack.wait_for(lambda f: any("is live on staging" in c.args.get("text", "")
                                            for c in f.calls_to("chat.postMessage")), timeout=30)
    await slipway.wait_for_log("command engine succeeded")
    assert await slipway.terminate() == 0

    lines = [json.loads(line) for line in slipway.log]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line["message"] == "shutting down" for line in lines)
    ours = [line for line in lines if line.get("deploy_id") == 1]
    assert any(line["logger"] == "bot.deploys.runner" and line["outcome"] == "succeeded" for line in ours)
    thread_posts = [line for line in lines if line["message"].startswith("Sending a request")
                    and "chat.postMessage" in line["message"] and "thread_ts" in line["message"]]
    assert thread_posts and all(line.get("deploy_id") == 1 for line in thread_posts)


async def test_slipway_serve_writes_text_for_a_person_when_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Callable[..., SlipwayProcess]) -> None:
    monkeypatch.setenv("SLIPWAY_LOG_FORMAT", "text")
    config = tmp_path / "slipway.yml"
    config.write_text(CONFIG)
    slipway = serve(config, tmp_path / "slipway.db")
    await slipway.start()
    async with aiohttp.ClientSession() as session:  # serving: its SIGTERM handler is in place
        async with session.get(slipway.base_url + "/healthz") as response:
            assert response.status == 200
    assert await slipway.terminate() == 0
    assert any(" INFO slipway: shutting down" in line for line in slipway.log)
    with pytest.raises(json.JSONDecodeError):
        json.loads(slipway.log[0])
