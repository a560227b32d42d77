"""The change sources: GitHub's REST API (against the fake GitHub served on
port 0) and a local git repository (a real one, built with the ``git``
program in tmp_path), and the migration globs."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_github import FakeGitHub, Repository

import bot.changes.git as git_module
import bot.changes.github as github_module
from bot.changes.git import GitSource
from bot.changes.github import GitHubSource
from bot.changes.model import (
    FORWARD,
    ChangeSet,
    Commit,
    PullRequest,
    SourceUnavailable,
    TagMissing,
    migration_files,
    pull_title,
    through_merges,
    valid_tag,
)
from bot.config import GitChanges, GitHubChanges

TOKEN = "ghp_test"


# -- GitHub ---------------------------------------------------------------------------


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub(token=TOKEN).start()
    yield fake
    await fake.stop()


def source(github: FakeGitHub, *, token: str | None = TOKEN, timeout: float = 5.0, **spec: Any) -> GitHubSource:
    settings = {"repository": "acme/api", "api_url": github.url, **spec}
    return GitHubSource(GitHubChanges.model_validate(settings), token, timeout=timeout)


def shipped_history(repository: Repository) -> dict[str, str]:
    """v1.0.0, then a pull request merged with a merge commit (two branch
    commits), one squash-merged, one rebase-merged (a plain commit only the
    commit→pulls API knows), and a push without any, by someone GitHub does
    not know; v1.1.0."""
    shas = {"initial": repository.commit("Initial commit", files=["README.md"])}
    repository.tag("v1.0.0")
    shas["start"] = repository.commit("Start the widget", author="Carol Chen", login="carol",
                                      files=["app/widget.py"], parents=[repository.head])
    shas["table"] = repository.commit("Add the widgets table", author="Carol Chen", login="carol",
                                      files=["db/migrate/002_widgets.sql"], parents=[shas["start"]])
    shas["merge"] = repository.merge_pull(12, shas["table"], "Add the widget", login="carol")
    shas["squash"] = repository.squash_pull(13, "Add x", author="Dan Diaz", login="dan", files=["app/x.py"])
    shas["rebased"] = repository.commit("Fix a typo in the docs", author="Erin Eze", login="erin",
                                        files=["docs/guide.md"])
    repository.add_pull(14, "Docs: typo", [shas["rebased"]], login="erin", merge_commit_sha=shas["rebased"])
    shas["pushed"] = repository.commit("Bump the version", author="Frank Fix", login=None, files=["VERSION"])
    repository.tag("v1.1.0")
    return shas


async def test_github_reads_commits_pull_requests_and_files(github: FakeGitHub) -> None:
    shas = shipped_history(github.add_repository("acme/api"))

    changes = await source(github).compare("v1.0.0", "v1.1.0")

    assert (changes.base, changes.head, changes.direction) == ("v1.0.0", "v1.1.0", FORWARD)
    assert [(c.sha, c.author, c.pull) for c in changes.commits] == [
        (shas["pushed"], "Frank Fix", None),  # no GitHub user: the git author's name
        (shas["rebased"], "erin", 14),  # from the commit→pulls API
        (shas["squash"], "dan", 13),  # "Add x (#13)"
        (shas["merge"], "mona", 12),  # "Merge pull request #12 from acme/feature"
        (shas["table"], "carol", 12),  # brought in by the merge commit
        (shas["start"], "carol", 12),
    ]
    assert changes.commits[2].title == "Add x (#13)"
    assert changes.pulls == (
        PullRequest(14, "Docs: typo", "erin", "https://github.com/acme/api/pull/14"),
        PullRequest(13, "Add x", "dan", "https://github.com/acme/api/pull/13"),
        PullRequest(12, "Add the widget", "carol", "https://github.com/acme/api/pull/12"),
    )
    assert set(changes.files) == {"app/widget.py", "db/migrate/002_widgets.sql", "app/x.py", "docs/guide.md",
                                  "VERSION"}
    assert changes.compare_url == "https://github.com/acme/api/compare/v1.0.0...v1.1.0"
    assert changes.total_commits == 6
    assert changes.people == ["erin", "dan", "carol", "Frank Fix", "mona"]
    # only the commits that name no pull request and no merge brought in were asked about
    assert sorted(call.path.split("/")[-2] for call in github.calls_to("commit_pulls")) == sorted(
        [shas["pushed"], shas["rebased"]])
    assert sorted(call.path for call in github.calls_to("pull")) == ["/repos/acme/api/pulls/12",
                                                                     "/repos/acme/api/pulls/13"]
    assert all(call.headers["Authorization"] == f"Bearer {TOKEN}" for call in github.calls)
    assert ChangeSet.from_record(changes.as_record()) == changes


async def test_github_pull_requests_read_from_their_commits_when_github_will_not_say(github: FakeGitHub) -> None:
    shas = shipped_history(github.add_repository("acme/api"))
    github.fail("pull", 500, times=2)
    github.fail("commit_pulls", 502, times=2)

    changes = await source(github).compare("v1.0.0", "v1.1.0")

    assert changes.pulls == (
        PullRequest(13, "Add x", "dan", "https://github.com/acme/api/pull/13"),  # the squash commit's author
        # the merge commit's second paragraph; the branch's author, not the merger
        PullRequest(12, "Add the widget", "carol", "https://github.com/acme/api/pull/12"),
    )
    assert {commit.sha: commit.pull for commit in changes.commits}[shas["rebased"]] is None
    assert [call.status for call in github.calls_to("pull")] == [500, 500]


async def test_github_follows_the_compare_pages(github: FakeGitHub) -> None:
    repository = github.add_repository("acme/api")
    repository.commit("Initial commit")
    repository.tag("v1.0.0")
    shas = [repository.commit(f"Change {n}", files=[f"src/{n}.py"]) for n in range(1, 301)]
    repository.tag("v1.1.0")

    changes = await source(github).compare("v1.0.0", "v1.1.0")

    assert [commit.sha for commit in changes.commits] == shas[::-1]
    assert changes.total_commits == 300
    pages = github.calls_to("compare")
    assert [call.query.get("page") for call in pages[:1]] + sorted(call.query["page"] for call in pages[1:]) == [
        None, "2", "3"]
    assert pages[0].path == "/repos/acme/api/compare/v1.0.0...v1.1.0" and pages[0].query["per_page"] == "100"
    assert pages[1].path == f"/repositories/{repository.id}/compare/v1.0.0...v1.1.0"  # the Link, as given
    assert len(changes.files) == 300  # GitHub lists at most 300, on the first page
    assert len(github.calls_to("commit_pulls")) == github_module.MAX_LOOKUPS


async def test_github_keeps_at_most_max_commits_but_counts_them_all(github: FakeGitHub,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(github_module, "MAX_COMMITS", 150)
    repository = github.add_repository("acme/api")
    repository.commit("Initial commit")
    repository.tag("v1.0.0")
    for n in range(1, 301):
        repository.commit(f"Change {n}")
    repository.tag("v1.1.0")

    changes = await source(github).compare("v1.0.0", "v1.1.0")

    assert (len(changes.commits), changes.total_commits, changes.commit_count) == (150, 300, 300)
    # the newest 150, newest first (as the git source keeps them): page 1, then pages 2 and 3
    assert [commit.title for commit in changes.commits[::149]] == ["Change 300", "Change 151"]
    assert len(github.calls_to("compare")) == 3


async def test_github_reads_only_the_pages_with_the_newest_commits(github: FakeGitHub,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(github_module, "MAX_COMMITS", 150)
    repository = github.add_repository("acme/api")
    repository.commit("Initial commit")
    repository.tag("v1.0.0")
    for n in range(1, 1001):
        repository.commit(f"Change {n}")
    repository.tag("v1.1.0")

    changes = await source(github).compare("v1.0.0", "v1.1.0")

    assert [commit.title for commit in changes.commits[::149]] == ["Change 1000", "Change 851"]
    assert sorted(int(call.query.get("page", 1)) for call in github.calls_to("compare")) == [1, 9, 10]


async def test_the_fake_pages_the_compare_as_github_does(github: FakeGitHub) -> None:
    repository = github.add_repository("acme/api")
    base = repository.commit("Initial commit")
    for n in range(1, 261):
        repository.commit(f"Change {n}", files=[f"src/{n}.py"])
    repository.tag("v2")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{github.url}/repos/acme/api/compare/{base[:7]}...v2") as response:
            unpaged = await response.json()
            assert "Link" not in response.headers
        url = f"{github.url}/repos/acme/api/compare/{base}...v2?per_page=100&page=2"
        async with session.get(url) as response:
            middle, links = await response.json(), response.links
    assert (unpaged["status"], unpaged["ahead_by"], unpaged["total_commits"]) == ("ahead", 260, 260)
    assert len(unpaged["commits"]) == 250 and unpaged["commits"][-1]["commit"]["message"] == "Change 260"
    assert [c["commit"]["message"] for c in middle["commits"]][::99] == ["Change 101", "Change 200"]
    assert "files" not in middle
    assert {rel: link["url"].query["page"] for rel, link in links.items()} == {
        "prev": "1", "next": "3", "last": "3", "first": "1"}


async def test_github_unknown_tags_are_tag_missing(github: FakeGitHub) -> None:
    shipped_history(github.add_repository("acme/api"))
    github_changes = source(github)

    with pytest.raises(TagMissing) as newer_missing:
        await github_changes.compare("v1.0.0", "v9.9.9")
    with pytest.raises(TagMissing) as older_missing:
        await github_changes.compare("v0.0.1", "v1.1.0")
    with pytest.raises(TagMissing):
        await github_changes.compare("v1.0.0", "v1.1.0 --output=x")  # never a ref GitHub is asked about

    assert (newer_missing.value.tag, older_missing.value.tag) == ("v9.9.9", "v0.0.1")
    assert str(newer_missing.value) == "tag v9.9.9 does not exist"
    assert await github_changes.tag_exists("v1.1.0") is True
    assert await github_changes.tag_exists("v9.9.9") is False
    unknown = [call for call in github.calls_to("ref") if call.status == 404]
    assert unknown and all(call.path.startswith("/repos/acme/api/git/ref/tags/") for call in unknown)


async def test_github_unknown_repository_is_unavailable_not_a_missing_tag(github: FakeGitHub) -> None:
    shipped_history(github.add_repository("acme/api"))

    with pytest.raises(SourceUnavailable, match="GitHub shows no repository acme/web to this token"):
        await source(github, repository="acme/web").compare("v1.0.0", "v1.1.0")
    with pytest.raises(SourceUnavailable, match="no repository acme/web"):
        await source(github, repository="acme/web").tag_exists("v1.0.0")


@pytest.mark.parametrize("route", ["compare", "ref"])
async def test_github_server_errors_are_unavailable(github: FakeGitHub, route: str) -> None:
    shipped_history(github.add_repository("acme/api"))
    github.fail(route, 503)

    with pytest.raises(SourceUnavailable, match="^GitHub answered 503$"):
        if route == "compare":
            await source(github).compare("v1.0.0", "v1.1.0")
        else:
            await source(github).tag_exists("v1.0.0")


async def test_github_500_on_compare_is_unavailable(github: FakeGitHub) -> None:
    shipped_history(github.add_repository("acme/api"))
    github.fail("compare", 500)

    with pytest.raises(SourceUnavailable) as unavailable:
        await source(github).compare("v1.0.0", "v1.1.0")

    assert str(unavailable.value) == "GitHub answered 500"


@pytest.mark.parametrize(("status", "headers", "says"), [
    (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 600)},
     r"^GitHub rate limit reached \(resets in (9m \d+s|10m)\)$"),
    (429, {"retry-after": "30"}, r"^GitHub rate limit reached \(resets in 30s\)$"),
    (403, {}, r"^GitHub answered 403: Resource not accessible by integration$"),
])
async def test_github_refusals_are_unavailable(github: FakeGitHub, status: int, headers: dict[str, str],
                                               says: str) -> None:
    shipped_history(github.add_repository("acme/api"))
    message = "API rate limit exceeded" if headers else "Resource not accessible by integration"
    github.fail("compare", status, headers=headers, message=message)

    with pytest.raises(SourceUnavailable, match=says):
        await source(github).compare("v1.0.0", "v1.1.0")


async def test_github_refuses_the_token(github: FakeGitHub) -> None:
    shipped_history(github.add_repository("acme/api"))

    with pytest.raises(SourceUnavailable, match=r"^GitHub refused the token in GH_READ \(Bad credentials\)$"):
        await source(github, token="ghp_wrong", token_env="GH_READ").compare("v1.0.0", "v1.1.0")
    with pytest.raises(SourceUnavailable, match="refused the token"):
        await source(github, token=None).compare("v1.0.0", "v1.1.0")
    assert "Authorization" not in github.calls[-1].headers


async def test_github_slow_answers_time_out_within_the_timeout(github: FakeGitHub) -> None:
    shipped_history(github.add_repository("acme/api"))
    github.slow("compare", 30)

    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match=r"^GitHub timed out after 0\.5s$"):
        await source(github, timeout=0.5).compare("v1.0.0", "v1.1.0")

    assert time.monotonic() - started < 2.0


async def test_github_slow_lookups_count_against_the_same_timeout(github: FakeGitHub) -> None:
    shipped_history(github.add_repository("acme/api"))
    github.slow("pull", 30)

    with pytest.raises(SourceUnavailable, match="timed out after 0.5s"):
        await source(github, timeout=0.5).compare("v1.0.0", "v1.1.0")


async def test_github_unreachable_is_unavailable() -> None:
    spec = GitHubChanges.model_validate({"repository": "acme/api", "api_url": f"http://127.0.0.1:{_closed_port()}"})

    with pytest.raises(SourceUnavailable, match="^cannot reach GitHub"):
        await GitHubSource(spec, TOKEN, timeout=5).compare("v1.0.0", "v1.1.0")


async def test_github_uses_the_callers_session_and_leaves_it_open(github: FakeGitHub) -> None:
    shipped_history(github.add_repository("acme/api"))
    spec = GitHubChanges.model_validate({"repository": "acme/api", "api_url": github.url})
    async with aiohttp.ClientSession() as session:
        github_changes = GitHubSource(spec, TOKEN, session=session)
        assert await github_changes.tag_exists("v1.0.0")
        assert not await github_changes.tag_exists("v1.0.0+build.7")
        github.repositories["acme/api"].tag("v1.0.0+build.7")
        assert await github_changes.tag_exists("v1.0.0+build.7")
        assert (await github_changes.compare("v1.0.0", "v1.1.0")).total_commits == 6
        assert not session.closed


async def test_github_enterprise_prefix() -> None:
    enterprise = await FakeGitHub(token=TOKEN, prefix="/api/v3").start()
    try:
        repository = enterprise.add_repository("acme/api")
        repository.commit("Initial commit")
        repository.tag("release/1.0")
        for n in range(150):
            repository.commit(f"Change {n} (#{n + 1})")
        repository.tag("release/1.1")

        changes = await source(enterprise).compare("release/1.0", "release/1.1")
    finally:
        await enterprise.stop()

    assert changes.total_commits == len(changes.commits) == 150
    assert [call.path for call in enterprise.calls_to("compare")] == [
        "/api/v3/repos/acme/api/compare/release/1.0...release/1.1",
        f"/api/v3/repositories/{repository.id}/compare/release/1.0...release/1.1"]
    assert len(enterprise.calls_to("pull")) == github_module.MAX_LOOKUPS
    assert len(changes.pulls) == 150 and changes.pulls[0] == PullRequest(
        150, "Change 149", "alice", "https://github.com/acme/api/pull/150")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- git ------------------------------------------------------------------------------


class Git:
    """Runs the real ``git`` in a directory, with a fixed identity and clock."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.clock = 1_767_225_600  # 2026-01-01
        self.env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_AUTHOR_EMAIL": "dev@example.com", "GIT_COMMITTER_EMAIL": "dev@example.com"}

    def __call__(self, *args: str, author: str = "Alice Adams") -> str:
        self.clock += 60
        when = f"{self.clock} +0000"
        env = {**self.env, "GIT_AUTHOR_NAME": author, "GIT_COMMITTER_NAME": author,
               "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
        done = subprocess.run(["git", *args], cwd=self.where, env=env, check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def commit(self, message: str, files: dict[str, str], *, author: str = "Alice Adams") -> str:
        for path, text in files.items():
            (self.where / path).parent.mkdir(parents=True, exist_ok=True)
            (self.where / path).write_text(text)
            self("add", path)
        self("commit", "-q", "-m", message, author=author)
        return self("rev-parse", "HEAD")


@pytest.fixture(scope="session")
def git_program() -> str:
    found = shutil.which("git")
    assert found is not None, "the git source tests need the git program"
    return found


@pytest.fixture
def origin(tmp_path: Path, git_program: str) -> Git:
    """A work tree: v1.0.0 (annotated), the merge of pull request #12 (two
    commits by Carol, one a migration), "Add x (#13)" by Dan, a plain commit
    by Erin; v1.1.0."""
    git = Git(tmp_path / "origin")
    git.where.mkdir()
    git("init", "-q", "-b", "main")
    git.commit("Initial commit", {"README.md": "api\n"})
    git("tag", "-a", "v1.0.0", "-m", "1.0.0")
    shipped_after_v1(git)
    return git


def shipped_after_v1(git: Git) -> None:
    git("checkout", "-q", "-b", "feature")
    git.commit("Start the widget", {"app/widget.py": "widget = 1\n"}, author="Carol Chen")
    git.commit("Add the widgets table", {"db/migrate/002_widgets.sql": "create table widgets (id int);\n"},
               author="Carol Chen")
    git("checkout", "-q", "main")
    git("merge", "-q", "--no-ff", "feature", "-m", "Merge pull request #12 from acme/feature",
        "-m", "Add the widget", author="Mona Merger")
    git.commit("Add x (#13)", {"app/x.py": "x = 1\n"}, author="Dan Diaz")
    git.commit("Fix a typo in the docs", {"docs/guide.md": "Guide\n"}, author="Erin Eze")
    git("tag", "v1.1.0")


def git_source(path: Path, *, timeout: float = 10.0, **spec: Any) -> GitSource:
    return GitSource(GitChanges.model_validate({"path": str(path), **spec}), timeout=timeout)


async def test_git_reads_commits_pull_requests_and_files(origin: Git) -> None:
    changes = await git_source(origin.where, web_url="https://git.example.com/acme/api/").compare("v1.0.0", "v1.1.0")

    assert (changes.base, changes.head, changes.direction, changes.total_commits) == ("v1.0.0", "v1.1.0", FORWARD, 5)
    assert [(c.title, c.author, c.pull) for c in changes.commits] == [
        ("Fix a typo in the docs", "Erin Eze", None),
        ("Add x (#13)", "Dan Diaz", 13),
        ("Merge pull request #12 from acme/feature", "Mona Merger", 12),
        ("Add the widgets table", "Carol Chen", 12),  # brought in by the merge commit
        ("Start the widget", "Carol Chen", 12),
    ]
    assert changes.commits[0].sha == origin("rev-parse", "v1.1.0") and len(changes.commits[0].sha) == 40
    assert changes.pulls == (
        PullRequest(13, "Add x", "Dan Diaz", "https://git.example.com/acme/api/pull/13"),
        PullRequest(12, "Add the widget", "Carol Chen", "https://git.example.com/acme/api/pull/12"),
    )
    assert changes.files == ("app/widget.py", "app/x.py", "db/migrate/002_widgets.sql", "docs/guide.md")
    assert changes.compare_url == "https://git.example.com/acme/api/compare/v1.0.0...v1.1.0"
    assert migration_files(changes.files, ["db/migrate/**", "migrations/**"]) == ("db/migrate/002_widgets.sql",)


async def test_git_files_are_those_changed_since_the_merge_base(origin: Git) -> None:
    # a hotfix tagged off v1.0.0: what v1.1.0 brings over it is measured from where they part
    origin("checkout", "-q", "-b", "hotfix", "v1.0.0")
    origin.commit("Hotfix", {"app/hotfix.py": "fix = 1\n"})
    origin("tag", "v1.0.1")

    changes = await git_source(origin.where).compare("v1.0.1", "v1.1.0")

    assert "app/hotfix.py" not in changes.files
    assert changes.total_commits == 5 and changes.compare_url is None
    assert changes.pulls[1].url is None


async def test_git_tags(origin: Git) -> None:
    git_changes = git_source(origin.where)

    assert await git_changes.tag_exists("v1.0.0") is True  # annotated
    assert await git_changes.tag_exists("v1.1.0") is True  # lightweight
    assert await git_changes.tag_exists("v9.9.9") is False
    assert await git_changes.tag_exists("main") is False  # a branch is no tag
    assert await git_changes.tag_exists("--output=/tmp/x") is False
    with pytest.raises(TagMissing) as missing:
        await git_changes.compare("v1.0.0", "v9.9.9")
    assert missing.value.tag == "v9.9.9"
    with pytest.raises(TagMissing) as missing:
        await git_changes.compare("v0.9.0", "v1.1.0")
    assert missing.value.tag == "v0.9.0"


async def test_git_option_like_tags_never_reach_git(origin: Git, tmp_path: Path) -> None:
    written = tmp_path / "written"
    with pytest.raises(TagMissing):
        await git_source(origin.where).compare("v1.0.0", f"--output={written}")
    assert not written.exists()


async def test_git_keeps_at_most_max_commits_but_counts_them_all(origin: Git,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git_module, "MAX_COMMITS", 3)

    changes = await git_source(origin.where).compare("v1.0.0", "v1.1.0")

    assert (len(changes.commits), changes.total_commits) == (3, 5)
    assert [commit.title for commit in changes.commits] == ["Fix a typo in the docs", "Add x (#13)",
                                                            "Merge pull request #12 from acme/feature"]


async def test_git_a_mirror_sees_new_tags_only_when_it_fetches(tmp_path: Path, git_program: str) -> None:
    origin = Git(tmp_path / "origin")
    origin.where.mkdir()
    origin("init", "-q", "-b", "main")
    origin.commit("Initial commit", {"README.md": "api\n"})
    origin("tag", "v1.0.0")
    origin("tag", "v0.9.9")
    Git(tmp_path)("clone", "-q", "--mirror", str(origin.where), "mirror.git")
    shipped_after_v1(origin)
    origin("tag", "-d", "v0.9.9")
    mirror = tmp_path / "mirror.git"

    with pytest.raises(TagMissing, match="tag v1.1.0 does not exist"):
        await git_source(mirror).compare("v1.0.0", "v1.1.0")
    fetching = git_source(mirror, fetch=True)
    changes = await fetching.compare("v1.0.0", "v1.1.0")

    assert [commit.pull for commit in changes.commits] == [None, 13, 12, 12, 12]
    assert "db/migrate/002_widgets.sql" in changes.files
    assert await fetching.tag_exists("v0.9.9") is False  # pruned


async def test_git_a_failing_fetch_is_unavailable(tmp_path: Path, origin: Git) -> None:
    Git(tmp_path)("clone", "-q", "--mirror", str(origin.where), "mirror.git")
    shutil.rmtree(origin.where)

    with pytest.raises(SourceUnavailable, match=r"^git fetch in .*mirror\.git failed: "):
        await git_source(tmp_path / "mirror.git", fetch=True).compare("v1.0.0", "v1.1.0")
    assert (await git_source(tmp_path / "mirror.git").compare("v1.0.0", "v1.1.0")).total_commits == 5


async def test_git_lookups_share_a_fetch(tmp_path: Path, origin: Git) -> None:
    Git(tmp_path)("clone", "-q", "--mirror", str(origin.where), "mirror.git")
    fetching = git_source(tmp_path / "mirror.git", fetch=True)
    fetches = 0
    run = fetching._run

    async def counting(*args: str) -> tuple[int, bytes, bytes]:
        nonlocal fetches
        fetches += args[0] == "fetch"
        return await run(*args)

    fetching._run = counting  # type: ignore[method-assign]
    results = await asyncio.gather(*(fetching.tag_exists("v1.1.0") for _ in range(4)))

    assert results == [True] * 4
    assert fetches <= 2  # the first, then at most one for all who asked while it ran


async def test_git_a_hanging_fetch_is_killed_at_the_timeout(tmp_path: Path, origin: Git) -> None:
    hung_up = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        hung_up.set()  # git went away: it was killed
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        Git(tmp_path)("clone", "-q", "--mirror", str(origin.where), "mirror.git")
        Git(tmp_path / "mirror.git")("remote", "set-url", "origin", f"git://127.0.0.1:{port}/api.git")
        started = time.monotonic()
        with pytest.raises(SourceUnavailable, match=r"^git timed out after 0\.5s$"):
            # (a git left running would keep the call waiting for it: fail, do not hang)
            await asyncio.wait_for(git_source(tmp_path / "mirror.git", fetch=True, timeout=0.5)
                                   .compare("v1.0.0", "v1.1.0"), 5)
        assert time.monotonic() - started < 2.0
        await asyncio.wait_for(hung_up.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()


async def test_git_not_a_repository_is_unavailable(tmp_path: Path, git_program: str) -> None:
    (tmp_path / "empty").mkdir()

    with pytest.raises(SourceUnavailable, match=r"^git rev-parse in .*empty failed: not a git repository"):
        await git_source(tmp_path / "empty").compare("v1.0.0", "v1.1.0")
    with pytest.raises(SourceUnavailable, match="cannot change to"):
        await git_source(tmp_path / "nowhere").tag_exists("v1.0.0")


async def test_git_missing_program_is_unavailable(origin: Git) -> None:
    spec = GitChanges.model_validate({"path": str(origin.where)})

    with pytest.raises(SourceUnavailable, match=r"^cannot run /nonexistent/git \(No such file or directory\)$"):
        await GitSource(spec, git="/nonexistent/git").compare("v1.0.0", "v1.1.0")


# -- the shared helpers ------------------------------------------------------------------


@pytest.mark.parametrize(("globs", "matched"), [
    (["db/migrate/**"], ("db/migrate/001_init.sql", "db/migrate/2026/002_more.rb")),
    (["migrations/**"], ("migrations/0001_initial.py",)),
    (["**/migrations/*.py"], ("migrations/0001_initial.py", "app/migrations/0002_widgets.py")),
    (["db/migrate/"], ("db/migrate/001_init.sql", "db/migrate/2026/002_more.rb")),
    (["*.sql"], ("db/migrate/001_init.sql", "schema.sql")),
    (["/schema.sql"], ("schema.sql",)),
    (["db/migrate/*"], ("db/migrate/001_init.sql",)),
    (["db/migrate/00[0-9]_*.sql"], ("db/migrate/001_init.sql",)),
    (["db/migrate/**", "migrations/**"], ("db/migrate/001_init.sql", "db/migrate/2026/002_more.rb",
                                          "migrations/0001_initial.py")),
    ([], ()),
])
def test_migration_files(globs: list[str], matched: tuple[str, ...]) -> None:
    files = ["db/migrate/001_init.sql", "db/migrate/2026/002_more.rb", "db/migrated.txt",
             "migrations/0001_initial.py", "app/migrations/0002_widgets.py", "app/db/migrate/x.rb", "schema.sql",
             "README.md"]

    assert migration_files(files, globs) == matched


@pytest.mark.parametrize(("tag", "valid"), [
    ("v1.0.0", True), ("1.2.3-rc.1+build.5", True), ("release/1.0", True),
    ("-x", False), ("--output=x", False), ("a..b", False), ("a b", False), ("v1^{commit}", False),
    ("v1~1", False), ("a:b", False), ("v1.lock", False), ("", False), ("/v1", False), ("v1/", False),
    ("a//b", False), (".hidden", False), ("a/.b", False), ("x@{1}", False), ("@", False), ("a\\b", False),
])
def test_valid_tag(tag: str, valid: bool) -> None:
    assert valid_tag(tag) is valid


@pytest.mark.parametrize(("message", "title"), [
    ("Merge pull request #12 from acme/feature\n\nAdd the widget\n\nLonger text", "Add the widget"),
    ("Merge pull request #12 from acme/feature", "Merge pull request #12 from acme/feature"),
    ("Add x (#13)\n\n* a commit\n* another", "Add x"),
    ("Plain", "Plain"),
])
def test_pull_title(message: str, title: str) -> None:
    assert pull_title(message) == title


def test_through_merges_gives_nested_pulls_their_own_commits() -> None:
    # main: a - M2(#2: b1 - M1(#1: c1) ) ; the branch of #2 merged #1 before it was merged
    commits = [Commit("M2", "Merge pull request #2 from o/two", "m", 2),
               Commit("M1", "Merge pull request #1 from o/one", "m", 1),
               Commit("c1", "c1", "carol"), Commit("b1", "b1", "bob"), Commit("a", "a", "alice")]
    parents = {"M2": ["a", "M1"], "M1": ["b1", "c1"], "c1": ["base"], "b1": ["base"], "a": ["base"]}

    assert [commit.pull for commit in through_merges(commits, parents)] == [2, 1, 1, 2, None]
