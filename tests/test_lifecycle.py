"""An approved deploy through the real engine (a subprocess), verification
against a real local HTTP service, and the record it leaves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from bot.sandbox.fake_server import FakeServer
from bot.slack.blocks import ACTION_APPROVE
from bot.slack.ship_report import as_slack_mrkdwn
from tests.conftest import PYTHON, Harness, approvals, config_yaml, engine, engine_calls

ROOT = Path(__file__).resolve().parent.parent


class HealthService(FakeServer):
    """A local service whose health endpoint a test controls."""

    url_suffix = "/healthz"

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.version = "2.7.0"
        self.hits = 0

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"status": "ok", "version": self.version}, status=self.status)


@pytest.fixture
async def health() -> HealthService:
    service = await HealthService().start()
    yield service
    await service.stop()


@pytest.fixture
def config_text(record: Path, health: HealthService, tmp_path: Path) -> str:
    verify_production = {
        "health_checks": [{"url": health.url, "expect_json": {"version": "{version}"}, "deadline": "2s",
                           "interval": "0.05s"}],
        "smoke": {"command": [PYTHON, "-c", "print('smoke ok')"]},
    }
    return config_yaml(
        production={"requires": "staging", "approvals": approvals("U0ALICE"),
                    "checklist": ["Rollback plan documented"]},
        services={"api": {"deploy": engine("--record", record, "--lines", 5),
                          "verify": {"production": verify_production}},
                  "broken": {"deploy": engine("--exit", 3, "--lines", 200)},
                  "orphan": {}})


def thread(harness: Harness, deploy) -> list[str]:
    return [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
            if c.args.get("thread_ts") == deploy.message_ts]


async def deploy_to_production(harness: Harness, version: str = "2.7.0"):
    await harness.command(f"api {version} staging")
    await harness.command(f"api {version} production", user="U0DAVE")
    deploy = harness.latest_deploy()
    await harness.tick(deploy, "U0ALICE", 0)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    return harness.deploy(deploy.id)


async def test_a_staging_deploy_runs_the_engine_with_the_deploy_in_its_environment(harness: Harness, record: Path) -> None:
    await harness.command("api v2.7.0 staging", user="U0DAVE")
    deploy = harness.latest_deploy()
    assert deploy.status == "succeeded" and deploy.exit_code == 0
    [call] = engine_calls(record)
    assert call["env"] == {"SLIPWAY_DEPLOY_ID": str(deploy.id), "SLIPWAY_SERVICE": "api",
                           "SLIPWAY_ENVIRONMENT": "staging", "SLIPWAY_VERSION": "2.7.0",
                           "SLIPWAY_PREVIOUS_VERSION": "", "SLIPWAY_STRATEGY": "direct",
                           "SLIPWAY_LAUNCH_ID": deploy.reference["launch"]}  # the mark recorded before it started
    replies = thread(harness, deploy)
    assert "Handing api v2.7.0 to the command engine" in replies[0]
    assert "Deploy engine (command): exit 0" in replies[1] and "engine line 5: deploying api 2.7.0" in replies[1]
    assert "api v2.7.0 is live on staging" in replies[-1]
    steps = harness.message_of(deploy).blocks
    text = json.dumps(steps)
    assert "Succeeded" in text and "*Deploy* (command): exit 0" in text and "took" in text
    assert deploy.started_at and deploy.finished_at and deploy.duration_seconds is not None
    actions = [e.action for e in harness.store.audit.events(deploy.id)]
    assert actions == ["requested", "approved", "deploy_started", "engine_result", "verifying", "verified", "succeeded"]


async def test_a_failing_engine_fails_the_deploy_and_frees_the_environment(harness: Harness) -> None:
    await harness.command("broken 1.0.0 staging")
    deploy = harness.latest_deploy()
    assert deploy.status == "failed" and deploy.exit_code == 3
    assert deploy.status_reason.startswith("deploy engine: exit 3")
    replies = thread(harness, deploy)
    log_reply = next(r for r in replies if "Deploy engine (command)" in r)
    assert "engine line 200" in log_reply and "engine line 1:" not in log_reply  # only the tail
    assert "broken is unlocked on staging" in replies[-1]
    assert "Failed" in json.dumps(harness.message_of(deploy).blocks)
    # the environment is free for a fix
    await harness.command("broken 1.0.1 staging")
    assert harness.latest_deploy().id == deploy.id + 1


async def test_a_service_without_an_engine_fails_saying_what_to_configure(harness: Harness) -> None:
    await harness.command("orphan 1.0.0 staging")
    deploy = harness.latest_deploy()
    assert deploy.status == "failed"
    assert deploy.status_reason == "no deploy engine is configured: add services.orphan.deploy"


async def test_production_is_verified_and_gets_a_ship_report(harness: Harness, health: HealthService,
                                                             record: Path, tmp_path: Path) -> None:
    await harness.command("api 2.6.3 staging")
    await harness.command("api 2.6.3 production")
    first = harness.latest_deploy()
    await harness.tick(first, "U0ALICE", 0)
    health.version = "2.6.3"
    await harness.click(harness.message_of(first), "U0ALICE", ACTION_APPROVE)
    health.version = "2.7.0"
    deploy = await deploy_to_production(harness, "2.7.0")
    assert deploy.status == "succeeded", deploy.status_reason
    assert [c["name"] for c in deploy.checks][0] == f"GET {health.url}"
    assert deploy.checks[1]["name"].startswith("smoke: ")
    assert all(c["passed"] for c in deploy.checks)
    assert engine_calls(record)[-1]["env"]["SLIPWAY_PREVIOUS_VERSION"] == "2.6.3"
    replies = thread(harness, deploy)
    assert any(r.startswith("*Verification*") and "smoke ok" in r for r in replies)
    report = replies[-1]
    assert report.startswith("*Ship report: api 2.7.0 → production*")  # Slack's mrkdwn, not raw Markdown
    assert "**" not in report and "\n#" not in report
    assert "U0ALICE at" in report and "2.6.3 → 2.7.0" in report
    assert f"Target: 2.6.3 (deploy #{first.id}" in report and "/deploy rollback api production" in report

    (tmp_path / "slipway.yml").write_text(harness.config_source)
    printed = subprocess.run(
        [sys.executable, "-m", "bot.runtime.cli", "report", str(deploy.id), "--db", str(harness.db_path),
         "--config", str(tmp_path / "slipway.yml")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("# Ship report: api 2.7.0 → production")
    assert as_slack_mrkdwn(printed.stdout).strip() == report.strip()


async def test_a_health_check_that_never_passes_fails_the_deploy(harness: Harness, health: HealthService) -> None:
    health.status = 503
    deploy = await deploy_to_production(harness)
    assert deploy.status == "failed"
    assert deploy.status_reason.startswith(f"verification: GET {health.url} — ")
    assert "503" in deploy.status_reason and health.hits >= 2
    assert [c["passed"] for c in deploy.checks][0] is False
    # a failed production deploy gets its report too (what failed, and how to roll back)
    report = thread(harness, deploy)[-1]
    assert report.startswith("*Ship report: api 2.7.0 → production*") and "*Status:* failed" in report


async def test_a_wrong_version_behind_a_healthy_endpoint_fails_verification(harness: Harness,
                                                                           health: HealthService) -> None:
    health.version = "2.6.3"  # the engine said yes, but the old version still answers
    deploy = await deploy_to_production(harness)
    assert deploy.status == "failed" and "2.6.3" in deploy.status_reason


async def test_show_and_history_print_the_record(harness: Harness) -> None:
    deploy = await deploy_to_production(harness)
    shown = await harness.command(f"show {deploy.id}")
    assert f"*Deploy #{deploy.id}* — api 2.7.0 to production: succeeded" in shown
    assert "Approved by <@U0ALICE>" in shown and "Engine (command): exit 0" in shown and "exit code 0" in shown
    assert "GET http://127.0.0.1" in shown and "smoke: " in shown
    history = await harness.command("history api")
    assert history.index(f"#{deploy.id} 2.7.0 → production") < history.index(f"#{deploy.id - 1} 2.7.0 → staging")
    assert "No deploys of api on staging" not in await harness.command("history api staging")
    assert "There is no deploy #999" in await harness.command("show 999")
    assert "Usage: `/deploy show <id>`" in await harness.command("show twelve")
