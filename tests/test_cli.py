"""The ``slipway`` command as a person runs it: a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from bot.sandbox.fake_slack import FakeSlack, SlackSender
from tests.conftest import SIGNING_SECRET
from tests.processes import SlipwayProcess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "slipway.example.yml"


def slipway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    return subprocess.run([sys.executable, "-m", "bot.runtime.cli", *args], capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=60, cwd=ROOT)


def test_check_config_accepts_the_example() -> None:
    result = slipway("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "OK — 2 service(s), ladder staging → production" in result.stdout


def test_check_config_prints_every_problem_with_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(EXAMPLE.read_text().replace("required: 2", "required: 0").replace("requires: staging", "requires: qa"))
    result = slipway("check-config", str(bad))
    assert result.returncode == 1
    assert "environments[1].approvals.required (line 12)" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_secrets_says_which_in_one_line(tmp_path: Path) -> None:
    result = slipway("serve", "--config", str(EXAMPLE), "--db", str(tmp_path / "s.db"),
                     env={"SLACK_BOT_TOKEN": "xoxb-1"})
    assert result.returncode == 2
    assert result.stderr.strip() == "slipway: missing environment variable(s) for HTTP mode: SLACK_SIGNING_SECRET"
    socket = slipway("serve", "--socket-mode", "--config", str(EXAMPLE), "--db", str(tmp_path / "s.db"))
    assert socket.returncode == 2
    assert socket.stderr.strip() == (
        "slipway: missing environment variable(s) for Socket Mode: SLACK_BOT_TOKEN, SLACK_APP_TOKEN")


def test_serve_refuses_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("channel: C1\n")
    result = slipway("serve", "--config", str(bad), "--db", str(tmp_path / "s.db"),
                     env={"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s"})
    assert result.returncode == 2
    assert "environments (line 1): required key is missing" in result.stderr
    assert "Traceback" not in result.stderr


async def test_serve_answers_signed_slack_requests_end_to_end(tmp_path: Path, fake_slack: FakeSlack,
                                                             serve: Callable[..., SlipwayProcess]) -> None:
    slipway = serve(EXAMPLE, tmp_path / "slipway.db")
    events_url = await slipway.start()
    async with aiohttp.ClientSession() as session:
        async with session.get(slipway.base_url + "/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok", "database": "ok", "slack": "ok"}
    async with SlackSender(events_url, SIGNING_SECRET, fake_slack) as slack:
        status, reply = await slack.command("web 1.0.0", "U0DAVE")
        assert status == 200 and "needs no approval" in reply
        await fake_slack.wait_for(lambda f: f.calls_to("chat.postMessage"))
        posted = fake_slack.calls_to("chat.postMessage")[0].args
        assert posted["channel"] == "C0DEPLOYS" and "Deploy web 1.0.0 to staging" in posted["text"]
    assert await slipway.terminate() == 0


async def test_socket_mode_serves_commands_over_the_socket_and_has_no_unsigned_http_door(
        tmp_path: Path, fake_slack: FakeSlack, serve: Callable[..., SlipwayProcess]) -> None:
    slipway = serve(EXAMPLE, tmp_path / "slipway.db", socket_mode=True)
    await slipway.start()
    await fake_slack.wait_for(lambda f: f.socket_connected, timeout=30)
    fields = SlackSender("unused", "unused", fake_slack).command_fields("web 1.0.0", "U0DAVE")
    ack = await fake_slack.socket_command(fields)
    assert "needs no approval" in ack["payload"]["text"]
    await fake_slack.wait_for(lambda f: f.calls_to("chat.postMessage"))
    async with aiohttp.ClientSession() as session:
        async with session.post(slipway.base_url + "/slack/events", data=b"command=%2Fdeploy") as response:
            assert response.status == 404  # no unsigned HTTP door in Socket Mode
        async with session.get(slipway.base_url + "/healthz") as response:
            assert response.status == 200
    assert await slipway.terminate() == 0
