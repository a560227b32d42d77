"""The GitHub Actions executor against a fake GitHub served on port 0."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest
from fake_github import FakeGitHub, Workflow

from bot.config import DeployExecutor
from bot.executors.base import Job
from bot.executors.github_actions import (
    GitHubActionsExecutor,
    workflow_inputs,
)

TOKEN = "ghp_test"
RUN_NAME = "Deploy ${{ inputs.version }} to ${{ inputs.environment }} (slipway #${{ inputs.deploy_id }})"
ALWAYS_SENT = {"version", "environment", "deploy_id"}
IN_PROGRESS_FOREVER = ("queued", "in_progress")


class Remembered(list):
    """A RememberReference that keeps what it is given."""

    async def __call__(self, reference: dict[str, Any]) -> None:
        self.append(dict(reference))


async def serve(**options: Any) -> FakeGitHub:
    fake = await FakeGitHub(token=TOKEN, **options).start()
    fake.add_workflow("acme/api", "deploy.yml", inputs=set(ALWAYS_SENT), run_name=RUN_NAME)
    return fake


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake = await serve()
    yield fake
    await fake.stop()


@pytest.fixture
def workflow(github: FakeGitHub) -> Workflow:
    return github.workflows[("acme/api", "deploy.yml")]


@pytest.fixture
def remembered() -> Remembered:
    return Remembered()


def executor(api_url: str, *, timeout: float | str = 5.0, environ: dict[str, str] | None = None,
             sleep=asyncio.sleep, claimed_runs: set[int] | None = None, **spec: Any) -> GitHubActionsExecutor:
    settings = {"repository": "acme/api", "workflow": "deploy.yml", "api_url": api_url, "poll_interval": 0.05,
                **spec}
    config = DeployExecutor.model_validate({"github_actions": settings, "timeout": timeout})
    return GitHubActionsExecutor(config, environ={"GITHUB_TOKEN": TOKEN} if environ is None else environ,
                                 sleep=sleep, claimed_runs=claimed_runs)


def job(deploy_id: int = 42, **changes: Any) -> Job:
    values = {"deploy_id": deploy_id, "service": "api", "environment": "staging", "version": "2.7.0",
              "previous_version": "2.6.1", "rollback_of": None, "started_at": datetime.now(timezone.utc)}
    return Job(**{**values, **changes})


def run_of(github: FakeGitHub, deploy_id: int):
    (run,) = [run for run in github.runs.values() if run.inputs.get("deploy_id") == str(deploy_id)]
    return run


# -- dispatching ----------------------------------------------------------------------


async def test_dispatches_the_workflow_with_its_inputs_and_follows_the_run_to_success(
        github: FakeGitHub, workflow: Workflow, remembered: Remembered) -> None:
    workflow.inputs |= {"region", "image"}
    extra = {"region": "eu-{environment}", "image": "ghcr.io/acme/{service}:{version}"}

    outcome = await executor(github.url, inputs=extra, ref="release").run(job(42), remembered)

    (dispatch,) = github.calls_to("dispatch")
    assert dispatch.path == "/repos/acme/api/actions/workflows/deploy.yml/dispatches"
    assert dispatch.body == {
        "ref": "release",
        "inputs": {"version": "2.7.0", "environment": "staging", "deploy_id": "42",
                   "region": "eu-staging", "image": "ghcr.io/acme/api:2.7.0"},
        "return_run_details": True,
    }
    assert dispatch.headers["Authorization"] == f"Bearer {TOKEN}"
    assert dispatch.headers["Accept"] == "application/vnd.github+json"
    assert dispatch.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert dispatch.headers["User-Agent"]
    run = run_of(github, 42)
    assert github.calls_to("runs") == []  # GitHub named the run: nothing to look for
    assert remembered == [{"run_id": run.id, "run_url": run.html_url}]
    assert outcome.succeeded
    assert outcome.summary.startswith(f"run {run.id} success after ")
    assert outcome.run_url == run.html_url
    assert outcome.reference == {"run_id": run.id, "conclusion": "success"}
    assert run.polls == 3  # queued, in_progress, completed


async def test_a_failed_run_is_a_failed_deploy(github: FakeGitHub, workflow: Workflow,
                                               remembered: Remembered) -> None:
    workflow.conclusion = "failure"

    outcome = await executor(github.url).run(job(), remembered)

    run = run_of(github, 42)
    assert not outcome.succeeded
    assert outcome.summary.startswith(f"run {run.id} failure after ")
    assert outcome.reference == {"run_id": run.id, "conclusion": "failure"}
    assert outcome.run_url == run.html_url


async def test_speaks_to_github_enterprise_under_its_api_path(remembered: Remembered) -> None:
    enterprise = await serve(prefix="/api/v3")
    try:
        outcome = await executor(enterprise.url + "/").run(job(), remembered)
    finally:
        await enterprise.stop()

    assert outcome.succeeded
    assert enterprise.calls[0].path == "/api/v3/repos/acme/api/actions/workflows/deploy.yml/dispatches"


def test_inputs_fill_placeholders_and_leave_unknown_ones_alone() -> None:
    rollback = job(7, previous_version=None, rollback_of=5, version="2.6.1")
    extra = {"note": "{service} back to {version} (undoes #{rollback_of}, was '{previous_version}') {unknown}"}

    assert workflow_inputs(rollback, extra) == {
        "version": "2.6.1", "environment": "staging", "deploy_id": "7",
        "note": "api back to 2.6.1 (undoes #5, was '') {unknown}",
    }


# -- finding the run when GitHub does not name it --------------------------------------


async def test_finds_its_run_by_title_and_not_another_one_created_at_the_same_time(
        github: FakeGitHub, workflow: Workflow, remembered: Remembered) -> None:
    github.run_details = "ignored"  # 204, as older GitHub Enterprise Server answers
    github.new_runs_hidden_for = 2  # GitHub lists a new run only after a moment
    other = github.add_run(workflow, {"version": "9.9.9", "environment": "staging", "deploy_id": "41"})

    outcome = await executor(github.url).run(job(42), remembered)

    ours = run_of(github, 42)
    assert ours.display_title == "Deploy 2.7.0 to staging (slipway #42)"
    assert outcome.succeeded and outcome.reference["run_id"] == ours.id
    assert remembered == [{"run_id": ours.id, "run_url": ours.html_url}]
    assert other.polls == 0
    listings = github.calls_to("runs")
    assert len(listings) == 3  # twice it saw only the other run, and waited
    assert listings[0].query["event"] == "workflow_dispatch" and listings[0].query["branch"] == "main"
    assert listings[0].query["created"].startswith(">=")


async def test_without_a_run_name_takes_the_oldest_run_no_other_deploy_claimed(
        github: FakeGitHub, workflow: Workflow, remembered: Remembered) -> None:
    github.run_details = "ignored"
    workflow.run_name = None
    claimed_elsewhere = github.add_run(workflow, {"version": "2.6.9", "environment": "staging", "deploy_id": "41"})
    github.add_run(workflow, {}, event="push")  # not a dispatch at all
    claimed = {claimed_elsewhere.id}

    outcome = await executor(github.url, claimed_runs=claimed).run(job(42), remembered)

    ours = run_of(github, 42)
    assert outcome.succeeded and outcome.reference["run_id"] == ours.id
    assert claimed == {claimed_elsewhere.id, ours.id}
    assert claimed_elsewhere.polls == 0


async def test_a_github_that_rejects_return_run_details_is_asked_again_without_it(
        github: FakeGitHub, remembered: Remembered) -> None:
    github.run_details = "rejected"

    outcome = await executor(github.url).run(job(), remembered)

    assert outcome.succeeded
    first, second = github.calls_to("dispatch")
    assert (first.status, second.status) == (422, 204)
    assert "return_run_details" not in second.body
    assert len(github.runs) == 1 and outcome.reference["run_id"] == run_of(github, 42).id


# -- refusals and missing configuration ----------------------------------------------


async def test_a_missing_token_is_a_failed_outcome_naming_the_variable(github: FakeGitHub,
                                                                     remembered: Remembered) -> None:
    outcome = await executor(github.url, environ={}, token_env="DEPLOY_GH_TOKEN").run(job(), remembered)

    assert not outcome.succeeded
    assert "DEPLOY_GH_TOKEN is not set" in outcome.summary
    assert github.calls == [] and remembered == []


@pytest.mark.parametrize(("setup", "status", "message"), [
    (dict(environ={"GITHUB_TOKEN": "ghp_wrong"}), 401, "Bad credentials"),
    (dict(workflow="nope.yml"), 404, "Not Found"),
    (dict(inputs={"region": "eu"}), 422, 'Unexpected inputs provided: ["region"]'),
    (dict(fail=403), 403, "Resource not accessible by personal access token"),
], ids=["bad-token", "unknown-workflow", "unexpected-input", "forbidden"])
async def test_a_refused_dispatch_is_a_failed_outcome_with_githubs_message(
        github: FakeGitHub, remembered: Remembered, setup: dict[str, Any], status: int, message: str) -> None:
    if setup.pop("fail", None):
        github.fail("dispatch", status, message=message)

    outcome = await executor(github.url, **setup).run(job(), remembered)

    assert not outcome.succeeded
    assert message in outcome.summary and f"HTTP {status}" in outcome.summary
    assert [call.status for call in github.calls] == [status]  # refused once, not retried
    assert github.runs == {} and remembered == []


# -- a GitHub that misbehaves ---------------------------------------------------------


async def test_a_transient_500_while_polling_is_retried(github: FakeGitHub, remembered: Remembered) -> None:
    github.fail("run", 500, times=2)

    outcome = await executor(github.url).run(job(), remembered)

    assert outcome.succeeded
    assert [call.status for call in github.calls_to("run")] == [500, 500, 200, 200, 200]


async def test_rate_limits_are_waited_out_as_github_asks(github: FakeGitHub, remembered: Remembered) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    reset = int(time.time()) + 45
    github.fail("dispatch", 403, message="API rate limit exceeded for user ID 1.",
                headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)})
    github.fail("run", 429, message="You have exceeded a secondary rate limit.", headers={"retry-after": "30"})

    outcome = await executor(github.url, timeout="10m", sleep=sleep).run(job(), remembered)

    assert outcome.succeeded
    assert 40 < slept[0] <= 45  # until x-ratelimit-reset
    assert slept[1] == 30  # retry-after
    assert [call.status for call in github.calls_to("dispatch")] == [403, 200]
    assert len(github.dispatches) == 1


async def test_a_dispatch_whose_reply_is_lost_is_followed_not_repeated(github: FakeGitHub,
                                                                      remembered: Remembered) -> None:
    github.fail("dispatch", 502, after_effect=True)  # GitHub dispatched, then the reply was lost

    outcome = await executor(github.url).run(job(42), remembered)

    assert outcome.succeeded and outcome.reference["run_id"] == run_of(github, 42).id
    assert len(github.calls_to("dispatch")) == 1


async def test_an_unconfirmed_dispatch_without_a_run_fails_without_dispatching_again(
        github: FakeGitHub, remembered: Remembered) -> None:
    github.fail("dispatch", 502)

    outcome = await executor(github.url, timeout=0.3).run(job(), remembered)

    assert not outcome.succeeded
    assert "did not confirm the dispatch (HTTP 502)" in outcome.summary
    assert len(github.calls_to("dispatch")) == 1 and github.runs == {}


async def test_times_out_while_the_run_is_still_in_progress(github: FakeGitHub, workflow: Workflow,
                                                            remembered: Remembered) -> None:
    workflow.statuses = IN_PROGRESS_FOREVER

    outcome = await executor(github.url, timeout=0.3).run(job(), remembered)

    run = run_of(github, 42)
    assert not outcome.succeeded
    assert outcome.summary == f"timed out after 0.3s; run {run.id} still in_progress; the run was cancelled"
    assert outcome.run_url == run.html_url and outcome.reference == {"run_id": run.id}
    # a run left going could finish after a fix or a rollback and undo it
    assert [c.status for c in github.calls_to("cancel")] == [202]
    assert run.conclusion == "cancelled"


async def test_an_unreachable_github_times_out_instead_of_crashing(remembered: Remembered) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"

    outcome = await executor(dead, timeout=0.3).resume(job(), {"run_id": 7, "run_url": "u"}, remembered)

    assert not outcome.succeeded and outcome.summary.startswith("timed out after 0.3s; run 7 still")
    assert outcome.summary.endswith("cancel it by hand")


# -- resuming after a restart ---------------------------------------------------------


async def test_resume_with_a_run_id_follows_that_run_without_dispatching_again(
        github: FakeGitHub, workflow: Workflow, remembered: Remembered) -> None:
    workflow.statuses = IN_PROGRESS_FOREVER
    deploy = job(42)
    first = asyncio.create_task(executor(github.url).run(deploy, remembered))
    await github.wait_for(lambda fake: fake.calls_to("run"))
    first.cancel()  # Slipway stops while the run is going on
    with pytest.raises(asyncio.CancelledError):
        await first
    run = run_of(github, 42)
    run.statuses.append("completed")  # it finishes while Slipway is down

    outcome = await executor(github.url).resume(deploy, remembered[0], Remembered())

    assert outcome.succeeded and outcome.reference == {"run_id": run.id, "conclusion": "success"}
    assert len(github.calls_to("dispatch")) == 1


async def test_resume_without_a_run_id_finds_the_run_again_without_dispatching(
        github: FakeGitHub, remembered: Remembered) -> None:
    github.run_details = "ignored"
    github.new_runs_hidden_for = 1000
    deploy = job(42)
    first = asyncio.create_task(executor(github.url).run(deploy, remembered))
    await github.wait_for(lambda fake: fake.calls_to("runs"))
    first.cancel()  # Slipway stops after the dispatch, before it found the run
    with pytest.raises(asyncio.CancelledError):
        await first
    assert remembered == []
    run = run_of(github, 42)
    run.hidden_for = 0  # GitHub lists it now

    after_restart = Remembered()
    outcome = await executor(github.url).resume(deploy, {}, after_restart)

    assert outcome.succeeded and outcome.reference["run_id"] == run.id
    assert after_restart == [{"run_id": run.id, "run_url": run.html_url}]
    assert len(github.calls_to("dispatch")) == 1
