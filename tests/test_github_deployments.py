"""GitHub Deployments and the Release (``changes.github.deployments`` /
``release``), end to end: Slipway between the fake Slack and the fake GitHub
(tests/fake_github.py, on port 0), deploys approved in Slack, the durable
writes sent by the worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from fake_github import Deployment, FakeGitHub, Release, Repository

from bot.slack.blocks import ACTION_APPROVE, ACTION_REJECT
from store import Deploy, DeployStatus
from tests.conftest import Clock, Harness, approvals, config_yaml, engine

TOKEN = "ghp_test"
REFUSED = ":warning: GitHub refused"


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub(token=TOKEN).start()
    yield fake
    await fake.stop()


@pytest.fixture
def repository(github: FakeGitHub) -> Repository:
    """acme/api: v1.0.0, then two squash-merged pull requests, v1.1.0."""
    repository = github.add_repository("acme/api")
    repository.commit("Initial commit", files=["README.md"])
    repository.tag("v1.0.0")
    repository.squash_pull(12, "Add search", files=["app/search.py"])
    repository.squash_pull(13, "Faster checkout", author="Dan Diaz", login="dan", files=["app/checkout.py"])
    repository.tag("v1.1.0")
    return repository


@pytest.fixture
def repository_name() -> str:
    """The repository the service's config names."""
    return "acme/api"


@pytest.fixture
def engine_exit() -> int:
    return 0


@pytest.fixture
def environ() -> dict[str, str]:
    return {"GITHUB_TOKEN": TOKEN}


@pytest.fixture
def config_text(github: FakeGitHub, repository: Repository, repository_name: str, record: Path,
                engine_exit: int) -> str:
    return config_yaml({"api": {
        "deploy": engine("--record", record, "--exit", engine_exit),
        "changes": {"github": {"repository": repository_name, "api_url": github.url,
                               "deployments": True, "release": True}}}},
        production={"requires": "staging", "approvals": approvals("U0ALICE")})


@pytest.fixture
async def slipway(harness: Harness) -> Harness:
    """The harness, its GitHub worker retrying and timing out quickly."""
    quicken(harness)
    return harness


def quicken(harness: Harness) -> None:
    worker = harness.slipway.github_deployments
    worker.backoff, worker.timeout = 0.05, 0.5


# -- helpers ---------------------------------------------------------------------------------


async def wait_for(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def delivered(harness: Harness, *deploys: Deploy) -> None:
    """Wait until no GitHub write of ``deploys`` is pending (each sent or given up)."""
    def settled() -> bool:
        return all(write["state"] != "pending" for deploy in deploys
                   for write in harness.store.github.writes(deploy.id))
    await wait_for(settled, what="the GitHub writes")
    await harness.slipway.github_deployments.idle.wait()
    await harness.settle()  # a refusal's note in the thread


def writes(harness: Harness, deploy: Deploy) -> list[tuple[str, str | None, str]]:
    """(kind, state asked for, how it stands) of each write of ``deploy``, in order."""
    return [(write["kind"], json.loads(write["payload"]).get("state"), write["state"])
            for write in harness.store.github.writes(deploy.id)]


def thread_texts(harness: Harness, deploy: Deploy) -> list[str]:
    deploy = harness.deploy(deploy.id)
    return [call.args.get("text", "") for call in harness.fake.calls_to("chat.postMessage")
            if call.args.get("thread_ts") == deploy.message_ts]


def deployment_for(github: FakeGitHub, deploy: Deploy, repository: str = "acme/api") -> Deployment:
    (deployment,) = [d for d in github.deployments_of(repository) if d.payload.get("slipway_deploy_id") == deploy.id]
    return deployment


async def request_production(harness: Harness, version: str = "1.1.0") -> Deploy:
    harness.mark_succeeded("api", "production", "1.0.0")
    harness.mark_succeeded("api", "staging", version)
    await harness.command(f"api {version} production")
    deploy = harness.latest_deploy()
    assert deploy.status == DeployStatus.AWAITING_APPROVAL and deploy.lookup_state == "done"
    return deploy


async def ship(harness: Harness) -> Deploy:
    """v1.1.0 requested on production (where v1.0.0 runs) and approved: it must succeed."""
    harness.mark_succeeded("api", "production", "1.0.0")
    return await harness.ship("api", "1.1.0", "U0ALICE")


# -- the happy path --------------------------------------------------------------------------


async def test_an_approved_deploy_is_mirrored_and_its_release_made_on_the_last_rung(
        slipway: Harness, github: FakeGitHub, repository: Repository) -> None:
    harness = slipway
    deploy = await ship(harness)
    await delivered(harness, deploy)
    deploy = harness.deploy(deploy.id)

    # one deployment: this deploy's (neither the earlier deploys it redrew nor staging's get one)
    (deployment,) = github.deployments_of("acme/api")
    (created,) = github.calls_to("create_deployment")
    assert created.status == 201 and created.headers["Authorization"] == f"Bearer {TOKEN}"
    assert created.body["ref"] == "v1.1.0" and created.body["environment"] == "production"
    assert created.body["auto_merge"] is False and created.body["required_contexts"] == []
    assert deployment.sha == repository.tags["v1.1.0"] and deployment.production_environment
    assert deployment.payload == {"slipway_deploy_id": deploy.id}
    assert deployment.states == ["queued", "in_progress", "success"]
    assert deploy.permalink
    assert {(status.environment_url, status.log_url) for status in deployment.statuses} == {
        (deploy.permalink, deploy.permalink)}
    assert all(status.environment == "production" for status in deployment.statuses)
    assert writes(harness, deploy) == [("deployment", None, "sent"), ("status", "queued", "sent"),
                                       ("status", "in_progress", "sent"), ("status", "success", "sent"),
                                       ("release", None, "sent")]

    # the Release of the tag, its notes the change list
    release = repository.releases["v1.1.0"]
    assert release.name == "api 1.1.0" and not release.draft
    assert "- #13 Faster checkout (@dan)" in release.body and "- #12 Add search (@alice)" in release.body
    assert [call.path for call in github.calls_to("release_by_tag")] == ["/repos/acme/api/releases/tags/v1.1.0"]
    assert [call.status for call in github.calls_to("create_release")] == [201]
    assert not any(REFUSED in text for text in thread_texts(harness, deploy))

    # GitHub lists it as the REST API does: the deployment, its statuses newest first
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{github.url}/repos/acme/api/deployments", params={"environment": "production"},
                               headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
            assert [listed["id"] for listed in await response.json()] == [deployment.id]
        async with session.get(f"{github.url}/repos/acme/api/deployments/{deployment.id}/statuses",
                               headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert [listed["state"] for listed in await response.json()] == ["success", "in_progress", "queued"]


async def test_a_staging_deploy_gets_a_deployment_but_no_release(slipway: Harness, github: FakeGitHub,
                                                                 repository: Repository) -> None:
    harness = slipway
    await harness.command("api 1.1.0 staging")
    deploy = harness.latest_deploy()
    assert deploy.status == DeployStatus.SUCCEEDED
    await delivered(harness, deploy)
    deployment = deployment_for(github, deploy)
    assert (deployment.ref, deployment.environment, deployment.production_environment) == (
        "v1.1.0", "staging", False)
    assert deployment.states == ["queued", "in_progress", "success"]
    assert repository.releases == {} and github.calls_to("create_release") == []


async def test_a_release_that_exists_is_left_as_it_is(slipway: Harness, github: FakeGitHub,
                                                      repository: Repository) -> None:
    harness = slipway
    repository.releases["v1.1.0"] = Release(1, "v1.1.0", "main", "Hand-written", "Our notes", False, False,
                                            repository.commits[repository.head].date)
    deploy = await ship(harness)
    await delivered(harness, deploy)
    assert repository.releases["v1.1.0"].body == "Our notes"
    assert github.calls_to("create_release") == []
    assert writes(harness, deploy)[-1] == ("release", None, "sent")


# -- how a deploy ends -----------------------------------------------------------------------


@pytest.mark.parametrize("engine_exit", [1])
async def test_a_failed_deploy_is_a_failure_and_gets_no_release(slipway: Harness, github: FakeGitHub,
                                                                repository: Repository) -> None:
    harness = slipway
    deploy = await request_production(harness)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    deploy = harness.deploy(deploy.id)
    assert deploy.status == DeployStatus.FAILED
    await delivered(harness, deploy)
    assert deployment_for(github, deploy).states == ["queued", "in_progress", "failure"]
    assert repository.releases == {} and github.calls_to("release_by_tag") == []


async def test_slipway_failing_while_running_it_is_an_error(slipway: Harness, github: FakeGitHub,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    harness = slipway

    async def broken(deploy_id: int, resume: bool) -> None:
        raise RuntimeError("a bug in Slipway")

    monkeypatch.setattr(harness.slipway.runner, "_run", broken)
    deploy = await request_production(harness)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    deploy = harness.deploy(deploy.id)
    assert deploy.status == DeployStatus.FAILED and deploy.status_reason.startswith("Slipway failed")
    await delivered(harness, deploy)
    assert deployment_for(github, deploy).states == ["queued", "error"]


async def test_a_rollback_makes_the_undone_deployment_inactive_and_has_its_own(
        slipway: Harness, github: FakeGitHub, repository: Repository) -> None:
    harness = slipway
    undone = await ship(harness)
    plan = await harness.slipway.rollbacks.offer_for("U0DAVE", "api", "production")
    assert plan.current.id == undone.id and plan.target.version == "1.0.0"
    rollback = await harness.slipway.rollbacks.start(plan.current.id, plan.target.version, "U0DAVE")
    await harness.settle()
    rollback = harness.deploy(rollback.id)
    assert rollback.status == DeployStatus.SUCCEEDED and harness.deploy(undone.id).status == DeployStatus.ROLLED_BACK
    await delivered(harness, undone, rollback)

    assert deployment_for(github, undone).states == ["queued", "in_progress", "success", "inactive"]
    back = deployment_for(github, rollback)
    assert (back.ref, back.sha, back.environment) == ("v1.0.0", repository.tags["v1.0.0"], "production")
    assert back.states == ["queued", "in_progress", "success"]
    assert len(github.deployments_of("acme/api")) == 2
    assert list(repository.releases) == ["v1.1.0"]  # a rollback makes none
    assert [kind for kind, _, _ in writes(harness, rollback)].count("release") == 0


# -- requests that never ran -----------------------------------------------------------------


async def test_a_rejected_request_creates_no_deployment(slipway: Harness, github: FakeGitHub) -> None:
    harness = slipway
    deploy = await request_production(harness)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_REJECT)
    assert harness.deploy(deploy.id).status == DeployStatus.REJECTED
    await harness.slipway.github_deployments.idle.wait()
    assert harness.store.github.writes(deploy.id) == []
    assert github.calls_to("create_deployment") == [] and github.deployments_of("acme/api") == []


async def test_an_expired_request_creates_no_deployment(slipway: Harness, github: FakeGitHub,
                                                        clock: Clock) -> None:
    harness = slipway
    deploy = await request_production(harness)
    clock.advance(hours=24, minutes=1)
    await harness.slipway.nudges.sweep()
    await harness.settle()
    assert harness.deploy(deploy.id).status == DeployStatus.EXPIRED
    await harness.slipway.github_deployments.idle.wait()
    assert harness.store.github.writes(deploy.id) == []
    assert github.calls_to("create_deployment") == []


# -- GitHub in trouble -----------------------------------------------------------------------


async def test_github_answering_5xx_is_retried_and_everything_arrives_in_order(
        slipway: Harness, github: FakeGitHub, repository: Repository) -> None:
    harness = slipway
    github.fail("create_deployment", 500, times=2)
    github.fail("create_deployment_status", 502)
    github.fail("create_deployment_status", 403, headers={"x-ratelimit-remaining": "0"},
                message="API rate limit exceeded")
    github.fail("release_by_tag", 503)
    deploy = await ship(harness)
    await delivered(harness, deploy)

    deployment = deployment_for(github, deploy)
    assert deployment.states == ["queued", "in_progress", "success"]
    assert [call.status for call in github.calls_to("create_deployment")] == [500, 500, 201]
    assert [call.status for call in github.calls_to("create_deployment_status")] == [502, 403, 201, 201, 201]
    assert [call.body["state"] for call in github.calls_to("create_deployment_status")] == [
        "queued", "queued", "queued", "in_progress", "success"]
    assert "v1.1.0" in repository.releases
    rows = harness.store.github.writes(deploy.id)
    assert [row["attempts"] for row in rows] == [3, 3, 1, 1, 2]
    assert all(row["state"] == "sent" for row in rows)
    assert not any(REFUSED in text for text in thread_texts(harness, deploy))


async def test_github_timing_out_is_retried(slipway: Harness, github: FakeGitHub) -> None:
    harness = slipway
    github.fail("create_deployment", 504, delay=30)  # longer than the worker waits (0.5 s here)
    github.fail("create_deployment_status", 504, delay=30)
    deploy = await ship(harness)
    await delivered(harness, deploy)
    assert deployment_for(github, deploy).states == ["queued", "in_progress", "success"]
    first = harness.store.github.writes(deploy.id)[0]
    assert first["attempts"] == 2 and "unreachable" in first["last_error"]


async def test_a_lost_answer_does_not_make_a_second_deployment(slipway: Harness, github: FakeGitHub) -> None:
    harness = slipway
    github.fail("create_deployment", 502, after_effect=True)  # made, but the answer is lost on the way back
    deploy = await ship(harness)
    await delivered(harness, deploy)
    assert [call.status for call in github.calls_to("create_deployment")] == [502]
    assert github.calls_to("deployments")  # the retry looked for it first
    assert len(github.deployments_of("acme/api")) == 1
    assert deployment_for(github, deploy).states == ["queued", "in_progress", "success"]


@pytest.mark.parametrize("repository_name", ["acme/gone"])
async def test_an_unknown_repository_is_told_once_and_the_deploy_goes_on(
        slipway: Harness, github: FakeGitHub) -> None:
    harness = slipway
    deploy = await ship(harness)  # it must succeed all the same
    await delivered(harness, deploy)
    [told] = [text for text in thread_texts(harness, deploy) if text.startswith(REFUSED)]
    assert "deployment" in told and "404" in told
    assert [call.status for call in github.calls_to("create_deployment")] == [404]  # not retried
    assert github.calls_to("create_deployment_status") == []
    assert all(state == "failed" for _, _, state in writes(harness, deploy))
    assert harness.deploy(deploy.id).status == DeployStatus.SUCCEEDED


async def test_a_token_without_the_permission_is_told_once(slipway: Harness, github: FakeGitHub,
                                                           repository: Repository) -> None:
    harness = slipway
    repository.writable = False
    deploy = await ship(harness)
    await delivered(harness, deploy)
    [told] = [text for text in thread_texts(harness, deploy) if text.startswith(REFUSED)]
    assert "403" in told
    assert [call.status for call in github.calls_to("create_deployment")] == [403]
    assert [call.status for call in github.calls_to("create_release")] == [403]  # tried, not told again
    assert harness.deploy(deploy.id).status == DeployStatus.SUCCEEDED


# -- a restart --------------------------------------------------------------------------------


async def test_writes_left_pending_by_a_restart_are_sent_after_it(slipway: Harness, github: FakeGitHub,
                                                                  repository: Repository) -> None:
    harness = slipway
    await harness.slipway.github_deployments.close()  # Slipway goes down before it sends any
    deploy = await ship(harness)
    assert [state for _, _, state in writes(harness, deploy)] == ["pending"] * 5
    assert github.calls_to("create_deployment") == []

    await harness.restart()
    quicken(harness)
    await delivered(harness, deploy)
    assert deployment_for(github, deploy).states == ["queued", "in_progress", "success"]
    assert "v1.1.0" in repository.releases


async def test_a_retry_due_after_a_restart_is_made_after_it(slipway: Harness, github: FakeGitHub) -> None:
    harness = slipway
    github.fail("create_deployment", 500)
    harness.slipway.github_deployments.backoff = 0.5
    deploy = await ship(harness)
    await wait_for(lambda: harness.store.github.writes(deploy.id)[0]["attempts"] == 1, what="the first attempt")
    await harness.restart()  # the retry is remembered with its time, not lost
    await delivered(harness, deploy)
    assert [call.status for call in github.calls_to("create_deployment")] == [500, 201]
    assert deployment_for(github, deploy).states == ["queued", "in_progress", "success"]


# -- the fake itself, as GitHub's REST docs describe it ---------------------------------------


async def test_the_fake_answers_deployments_and_releases_as_github_does(github: FakeGitHub,
                                                                        repository: Repository) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    base = f"{github.url}/repos/acme/api"
    async with aiohttp.ClientSession(headers=headers) as session:
        async def post(path: str, body: dict) -> tuple[int, dict]:
            async with session.post(base + path, json=body) as response:
                return response.status, await response.json()

        status, body = await post("/deployments", {"ref": "v9.9.9"})
        assert (status, body["message"]) == (422, "No ref found for: v9.9.9")
        status, body = await post("/deployments", {"ref": "v1.0.0", "required_contexts": []})
        assert (status, body["message"]) == (409, "Conflict merging main into v1.0.0.")  # auto_merge by default
        status, old = await post("/deployments", {"ref": "v1.0.0", "auto_merge": False, "environment": "qa"})
        assert status == 201 and old["environment"] == "qa" and old["production_environment"] is False
        assert old["sha"] == repository.tags["v1.0.0"] and old["task"] == "deploy" and old["payload"] == {}
        status, new = await post("/deployments", {"ref": "v1.1.0", "environment": "qa", "payload": {"a": 1}})
        assert status == 201 and new["payload"] == {"a": 1}

        status, body = await post(f"/deployments/{old['id']}/statuses", {"state": "done"})
        assert status == 422 and body["errors"] == [{"resource": "DeploymentStatus", "code": "invalid",
                                                     "field": "state"}]
        status, body = await post(f"/deployments/{old['id']}/statuses",
                                  {"state": "success", "log_url": "https://logs.example.com/1"})
        assert status == 201 and body["state"] == "success" and body["log_url"] == "https://logs.example.com/1"
        assert (await post("/deployments/999999/statuses", {"state": "success"}))[0] == 404
        assert (await post(f"/deployments/{new['id']}/statuses", {"state": "success"}))[0] == 201
        # a success makes the environment's earlier non-production deployments inactive (auto_inactive)
        async with session.get(f"{base}/deployments/{old['id']}/statuses") as response:
            assert [listed["state"] for listed in await response.json()] == ["inactive", "success"]
        async with session.get(f"{base}/deployments", params={"ref": "v1.1.0"}) as response:
            assert [listed["id"] for listed in await response.json()] == [new["id"]]

        async with session.get(f"{base}/releases/tags/v1.1.0") as response:
            assert response.status == 404
        status, release = await post("/releases", {"tag_name": "v1.1.0", "name": "1.1.0", "body": "notes"})
        assert status == 201 and release["tag_name"] == "v1.1.0" and release["body"] == "notes"
        async with session.get(f"{base}/releases/tags/v1.1.0") as response:
            assert response.status == 200 and (await response.json())["id"] == release["id"]
        status, body = await post("/releases", {"tag_name": "v1.1.0"})
        assert status == 422 and body["errors"][0]["code"] == "already_exists"

    async with aiohttp.ClientSession(headers={"Authorization": "Bearer wrong"}) as session:
        async with session.post(f"{base}/deployments", json={"ref": "v1.1.0"}) as response:
            assert response.status == 401
    github.fail("create_release", 500)
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{base}/releases", json={"tag_name": "v2.0.0"}) as response:
            assert response.status == 500 and "v2.0.0" not in repository.releases
