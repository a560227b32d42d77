"""The ``slipway`` command as a person runs it: a real process."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

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
            assert await response.json() == {"status": "ok", "role": "owner", "database": "ok", "slack": "ok"}
    async with SlackSender(events_url, SIGNING_SECRET, fake_slack) as slack:
        status, reply = await slack.command("web 1.0.0", "U0DAVE")
        assert status == 200 and "needs no approval" in reply
        await fake_slack.wait_for(lambda f: f.calls_to("chat.postMessage"))
        posted = fake_slack.calls_to("chat.postMessage")[0].args
        assert posted["channel"] == "C0DEPLOYS" and "Deploy web 1.0.0 to staging" in posted["text"]
    # the database holds command output and the audit log: its files are the owner's alone
    db = tmp_path / "slipway.db"
    for path in (db, db.with_name("slipway.db-wal"), db.with_name("slipway.db-shm")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert await slipway.terminate() == 0
    # bolt's "As you gave `client` as well, `token` will be unused." is no longer logged at each start
    assert slipway.log and not any("will be unused" in line for line in slipway.log)
    assert not [line for line in map(json.loads, slipway.log) if line["logger"].startswith("slack_bolt")
                and line["level"] != "DEBUG"]


async def run_serve(tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    """``slipway serve`` expected to stop by itself: its exit status and stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.runtime.cli", "serve", "--config", str(EXAMPLE), "--db", str(tmp_path / "s.db"),
        "--port", "0", cwd=ROOT, stderr=asyncio.subprocess.PIPE,
        env={**clean, "SLACK_SIGNING_SECRET": SIGNING_SECRET, **env})
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, stderr.decode()


async def slack_answering(error: str) -> web.AppRunner:
    """A Web API that answers every method ``{"ok": false, "error": error}``."""
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error": error})

    app = web.Application()
    app.router.add_route("*", "/api/{method}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def test_serve_with_a_token_slack_refuses_says_so_in_one_line_and_exits_2(
        tmp_path: Path, fake_slack: FakeSlack) -> None:
    status, stderr = await run_serve(tmp_path, {"SLACK_BOT_TOKEN": "xoxb-wrong", "SLACK_API_URL": fake_slack.api_url})
    assert status == 2
    assert stderr.strip() == ("slipway: Slack refused SLACK_BOT_TOKEN (invalid_auth): the token is wrong, revoked or "
                              "its workspace inactive; reinstall the app and export its Bot User OAuth Token")
    assert not (tmp_path / "s.db").exists()  # refused before anything touched the database
    for error in ("token_revoked", "account_inactive"):
        runner = await slack_answering(error)
        try:
            api_url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/"
            status, stderr = await run_serve(tmp_path, {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_API_URL": api_url})
        finally:
            await runner.cleanup()
        assert status == 2 and stderr.strip().startswith(f"slipway: Slack refused SLACK_BOT_TOKEN ({error}): ")
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


async def test_serve_starts_while_slack_is_unreachable_and_is_unhealthy_until_it_answers(
        tmp_path: Path, fake_slack: FakeSlack, serve: Callable[..., SlipwayProcess]) -> None:
    port = int(fake_slack.url.rsplit(":", 1)[1])
    await fake_slack.stop()  # connection refused
    slipway = serve(EXAMPLE, tmp_path / "slipway.db")
    await slipway.start()
    assert any("Slack is not reachable" in line and "serving anyway" in line for line in slipway.log)
    status, body = await slipway.healthz()
    assert status == 503 and body["role"] == "owner" and body["database"] == "ok"
    assert body["slack"].startswith("error: ClientConnectorError")
    await fake_slack.start(port=port)  # Slack is back
    deadline = asyncio.get_running_loop().time() + 30
    while (await slipway.healthz())[0] != 200:  # a failed check is kept 5 s, a good one 30 s
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)  # polling another process's answer
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
