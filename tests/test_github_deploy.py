"""A deploy whose engine is a GitHub Actions workflow, end to end through
Slipway against the fake GitHub API."""

from __future__ import annotations


import pytest
from fake_github import FakeGitHub

from tests.conftest import Harness, config_yaml

TOKEN = "ghp_test"


@pytest.fixture
async def github() -> FakeGitHub:
    fake = await FakeGitHub(token=TOKEN).start()
    yield fake
    await fake.stop()


@pytest.fixture
def environ() -> dict[str, str]:
    return {"DEPLOY_GITHUB_TOKEN": TOKEN}


@pytest.fixture
def config_text(github: FakeGitHub) -> str:
    github.add_workflow("acme/api", "deploy.yml")
    return config_yaml(environments=[{"name": "staging"}], services={"api": {"deploy": {
        "github_actions": {"repository": "acme/api", "workflow": "deploy.yml", "token_env": "DEPLOY_GITHUB_TOKEN",
                           "api_url": github.url, "poll_interval": "0.05s"},
        "timeout": "30s"}}})


async def test_a_deploy_dispatches_the_workflow_and_follows_the_run(harness: Harness, github: FakeGitHub) -> None:
    await harness.command("api v2.7.0")
    deploy = harness.latest_deploy()
    assert deploy.status == "succeeded", deploy.status_reason
    [dispatch] = github.dispatches
    assert dispatch.body["inputs"] == {"version": "2.7.0", "environment": "staging", "deploy_id": str(deploy.id)}
    [run] = github.runs.values()
    assert deploy.reference["run_id"] == run.id and deploy.run_url == run.as_json(github.url)["html_url"]
    assert "run log" in str(harness.message_of(deploy).blocks)
