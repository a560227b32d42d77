"""What a deploy ships, looked up after the ack: end to end through Slipway,
with a real git repository (built here with ``git``) as the changes source
and a real OCI registry (Debian's ``docker-registry``) for the image check."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from bot.events import DeployChanged, DeployPosted
from bot.errors import PolicyViolation
from store import DeployStatus
from tests.conftest import Harness, approvals, config_yaml, engine, engine_calls
from tests.registry import RealRegistry, real_registry, registry_server, unique_repository  # noqa: F401 (fixtures)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "Dana", "GIT_AUTHOR_EMAIL": "dana@example.com",
                               "GIT_COMMITTER_NAME": "Dana", "GIT_COMMITTER_EMAIL": "dana@example.com",
                               "HOME": str(repo.parent), "PATH": "/usr/bin:/bin"}).stdout


def commit(repo: Path, path: str, message: str) -> None:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(f"{message}\n")
    git(repo, "add", path)
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """v2.6.0, then a squash-merged pull request, a merge commit, a plain
    commit and a migration, tagged v2.7.0; then v2.7.1 touching no migration."""
    repo = tmp_path / "api"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "app.py", "Initial import")
    git(repo, "tag", "v2.6.0")
    commit(repo, "checkout.py", "Faster checkout (#13)")
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, "search.py", "Search by email")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "feature", "-m", "Merge pull request #12 from dana/search\n\nSearch by email")
    commit(repo, "db/migrate/0042_add_email_index.sql", "Index users by email")
    git(repo, "tag", "v2.7.0")
    commit(repo, "README.md", "Docs")
    git(repo, "tag", "v2.7.1")
    return repo


@pytest.fixture
def image() -> str | None:
    return None


@pytest.fixture
def tag_must_exist() -> bool:
    return False


@pytest.fixture
def config_text(repo: Path, record: Path, image: str | None, tag_must_exist: bool) -> str:
    artifacts = {"tag_must_exist": tag_must_exist, **({"image": image} if image else {})}
    return config_yaml({"api": {
        "deploy": engine("--record", record),
        "changes": {"git": {"path": str(repo), "web_url": "https://git.example.com/acme/api"},
                    "migration_paths": ["db/migrate/**"]},
        "artifacts": artifacts}}, production={"requires": "staging", "approvals": approvals("U0ALICE")})


async def wait_for(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def thread_texts(harness: Harness) -> list[str]:
    return [c.args.get("text", "") for c in harness.fake.calls_to("chat.postMessage") if c.args.get("thread_ts")]


async def test_a_request_shows_what_it_ships_and_a_migration_makes_it_one(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    harness.mark_succeeded("api", "production", "2.6.0")
    await harness.command("api 2.7.0 production")
    deploy = harness.latest_deploy()
    assert deploy.lookup_state == "done" and deploy.status == DeployStatus.AWAITING_APPROVAL
    changes = deploy.change_set
    assert changes["direction"] == "forward" and (changes["base"], changes["head"]) == ("v2.6.0", "v2.7.0")
    titles = [c["title"] for c in changes["commits"]]
    assert set(titles) == {"Faster checkout (#13)", "Search by email", "Merge pull request #12 from dana/search",
                           "Index users by email"}
    assert sorted(p["number"] for p in changes["pulls"]) == [12, 13]
    assert changes["compare_url"] == "https://git.example.com/acme/api/compare/v2.6.0...v2.7.0"
    # the range touched db/migrate/: it carries a migration without --migration, and the checklist says so
    assert changes["migration_files"] == ["db/migrate/0042_add_email_index.sql"]
    assert deploy.migration
    assert len(deploy.checklist) == len(harness.config.environment("production").migration_checklist)


async def test_a_downgrade_shows_what_it_takes_out_and_a_first_deploy_says_so(harness: Harness) -> None:
    await harness.command("api 2.7.0 staging")
    first = harness.latest_deploy()
    assert first.change_set["direction"] == "first" and first.status == DeployStatus.SUCCEEDED
    await harness.command("api 2.7.1 staging")
    assert harness.latest_deploy().status == DeployStatus.SUCCEEDED
    await harness.command("rollback api staging", "U0DAVE")
    # the rollback is offered to confirm; confirm it as the button would
    plan = await harness.slipway.rollbacks.offer_for("U0DAVE", "api", "staging")
    rollback = await harness.slipway.rollbacks.start(plan.current.id, plan.target.version, "U0DAVE")
    await harness.settle()
    rollback = harness.deploy(rollback.id)
    assert rollback.status == DeployStatus.SUCCEEDED
    taken_out = rollback.change_set
    assert taken_out["direction"] == "backward" and [c["title"] for c in taken_out["commits"]] == ["Docs"]


@pytest.mark.parametrize("tag_must_exist", [True])
async def test_a_version_without_its_tag_is_cancelled_and_never_runs(harness: Harness, record: Path) -> None:
    status, body = await harness.slack.command("api 2.8.0 staging", "U0DAVE")
    assert status == 200
    await harness.settle()
    deploy = harness.latest_deploy()
    assert deploy.status == DeployStatus.CANCELLED
    assert deploy.status_reason == "its tag v2.8.0 does not exist: tag and push it first"
    assert engine_calls(record) == []
    # the requester is told through the command's response URL, and the thread says why
    assert any("v2.8.0 does not exist" in r.get("text", "") and r.get("response_type") == "ephemeral"
               for r in harness.fake.responses)
    assert any(text.startswith(":no_entry: Cancelled before anything ran") for text in thread_texts(harness))


async def test_a_held_request_can_be_neither_approved_nor_started(harness: Harness, record: Path) -> None:
    store, slipway = harness.store, harness.slipway
    waiting = store.deploys.create(service="api", environment="production", version="2.7.0", version_prefixed=False,
                                   requested_by="U0DAVE", previous_version="2.6.0", checklist=[],
                                   needs_approval=True, checking=True)
    with pytest.raises(PolicyViolation, match="still being checked"):
        await slipway.workflow.approve(waiting.id, "U0ALICE")
    staged = store.deploys.create(service="api", environment="staging", version="2.7.0", version_prefixed=False,
                                  requested_by="U0DAVE", previous_version=None, checklist=[], needs_approval=False,
                                  checking=True)
    slipway.runner.start_if_approved(DeployPosted(staged.id))
    await asyncio.sleep(0.2)
    assert harness.deploy(staged.id).status == DeployStatus.APPROVED and engine_calls(record) == []
    with store.transaction():
        store.deploys.record_lookup(staged.id, None)
        slipway.events.publish(DeployChanged(staged.id))
    await harness.settle()
    assert harness.deploy(staged.id).status == DeployStatus.SUCCEEDED  # the lookups done, it starts


async def test_an_unreadable_source_never_blocks_a_deploy(harness: Harness, repo: Path) -> None:
    import shutil

    shutil.rmtree(repo)
    harness.mark_succeeded("api", "staging", "2.6.0")  # something to compare with
    await harness.command("api 2.7.0 staging")
    deploy = harness.latest_deploy()
    assert deploy.status == DeployStatus.SUCCEEDED
    assert "unavailable" in deploy.change_set and deploy.change_set["unavailable"], deploy.change_set


async def test_lookups_left_unfinished_by_a_restart_are_finished_after_it(harness: Harness) -> None:
    deploy = harness.store.deploys.create(service="api", environment="staging", version="2.7.0",
                                          version_prefixed=False, requested_by="U0DAVE", previous_version=None,
                                          checklist=[], needs_approval=False, checking=True)
    await harness.restart()
    await wait_for(lambda: harness.deploy(deploy.id).lookup_state == "done", what="the lookup")
    await harness.settle()
    assert harness.deploy(deploy.id).change_set["direction"] == "first"


# -- the image, in a real registry ---------------------------------------------------------

class TestTheImage:
    """``artifacts.image`` against a real registry (one per module, started by the fixture)."""

    @pytest.fixture
    def image(self, real_registry: RealRegistry) -> str:
        return real_registry.image(unique_repository("acme/api"), "{version}")

    async def test_the_image_must_be_in_the_registry(self, harness: Harness, real_registry: RealRegistry, image: str,
                                                     record: Path) -> None:
        name = image.split("/", 1)[1].rsplit(":", 1)[0]
        real_registry.push(name, "2.7.0")
        await harness.command("api 2.7.0 staging")
        assert harness.latest_deploy().status == DeployStatus.SUCCEEDED
        await harness.command("api 2.7.1 staging")
        missing = harness.latest_deploy()
        assert missing.status == DeployStatus.CANCELLED
        assert missing.status_reason == f"its image {image.replace('{version}', '2.7.1')} is not in the registry: " \
                                        "build and push it first"
        assert len(engine_calls(record)) == 1

    async def test_a_registry_down_refuses_a_request_but_not_a_rollback(
            self, harness: Harness, real_registry: RealRegistry, image: str, record: Path) -> None:
        name = image.split("/", 1)[1].rsplit(":", 1)[0]
        for version in ("2.7.0", "2.7.1"):
            real_registry.push(name, version)
            await harness.command(f"api {version} staging")
            assert harness.latest_deploy().status == DeployStatus.SUCCEEDED
        real_registry.stop()
        try:
            await harness.command("api 2.7.2 staging")  # fail closed: the image cannot be checked
            refused = harness.latest_deploy()
            assert refused.status == DeployStatus.CANCELLED
            assert "could not check that its image" in refused.status_reason
            assert "unreachable" in refused.status_reason
            plan = await harness.slipway.rollbacks.offer_for("U0DAVE", "api", "staging")
            rollback = await harness.slipway.rollbacks.start(plan.current.id, plan.target.version, "U0DAVE")
            await harness.settle()
            assert harness.deploy(rollback.id).status == DeployStatus.SUCCEEDED  # never blocked, only warned
            assert any(text.startswith(":warning: Rolling back anyway") for text in thread_texts(harness))
        finally:
            real_registry.start()


@pytest.mark.parametrize("tag_must_exist", [True])
async def test_a_request_still_being_checked_at_a_restart_is_not_started_by_the_recovery(
        harness: Harness, record: Path) -> None:
    deploy = harness.store.deploys.create(service="api", environment="staging", version="9.9.9",
                                          version_prefixed=False, requested_by="U0DAVE", previous_version=None,
                                          checklist=[], needs_approval=False, checking=True)
    await harness.restart()
    await wait_for(lambda: harness.deploy(deploy.id).status == DeployStatus.CANCELLED, what="the tag check")
    await harness.settle()
    assert engine_calls(record) == []  # the missing tag stopped it; the recovery never ran it
