"""A local stand-in for the part of GitHub's REST API that Slipway's GitHub
Actions executor uses.

``FakeGitHub`` is a real aiohttp web application on loopback (port 0 unless
told otherwise). It serves:

* ``POST /repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches``
  — 204, or 200 with ``workflow_run_id``/``run_url``/``html_url`` when asked
  with ``return_run_details`` (see ``run_details``);
* ``GET /repos/{owner}/{repo}/actions/workflows/{workflow_id}/runs`` — with
  the ``event``, ``branch`` and ``created=>=…`` filters;
* ``GET /repos/{owner}/{repo}/actions/runs/{run_id}``.

and, for the repositories' contents (see :class:`Repository`: commits,
tags and pull requests, built by the test):

* ``GET /repos/{owner}/{repo}`` (route ``repo``);
* ``GET /repos/{owner}/{repo}/compare/{base}...{head}`` (``compare``) —
  paged as GitHub does: with ``per_page`` or ``page``, pages of ``per_page``
  (default 30, at most ``compare_max_per_page``) commits oldest first, a
  ``Link`` header (``/repositories/{id}/…`` URLs, served too) and the files
  (at most 300) on page 1 only; without either, the newest 250 commits;
* ``GET /repos/{owner}/{repo}/commits/{sha}/pulls`` (``commit_pulls``);
* ``GET /repos/{owner}/{repo}/pulls/{number}`` (``pull``);
* ``GET /repos/{owner}/{repo}/git/ref/{ref}`` (``ref``), e.g. ``tags/v1.0.0``.

and what Slipway writes there (see :class:`Deployment`, :class:`Release`):

* ``POST /repos/{owner}/{repo}/deployments`` (``create_deployment``) — 201;
  422 for a ``ref`` GitHub cannot resolve ("No ref found for: X"); 409 when
  ``auto_merge`` (true unless sent false) would have to merge the default
  branch into a ref behind it (a tag or sha cannot take a merge);
* ``GET /repos/{owner}/{repo}/deployments`` (``deployments``) — newest
  first, with the ``sha``, ``ref``, ``task`` and ``environment`` filters;
* ``POST /repos/{owner}/{repo}/deployments/{id}/statuses``
  (``create_deployment_status``) — 201; 422 for a ``state`` not in GitHub's
  list; a ``success`` makes earlier non-transient, non-production
  deployments of the environment ``inactive`` (``auto_inactive``);
* ``GET /repos/{owner}/{repo}/deployments/{id}/statuses``
  (``deployment_statuses``) — newest first;
* ``GET /repos/{owner}/{repo}/releases/tags/{tag}`` (``release_by_tag``) —
  404 when there is none;
* ``POST /repos/{owner}/{repo}/releases`` (``create_release``) — 201; 422
  ``already_exists`` when the tag has a release (a missing tag is made at
  ``target_commitish``, the default branch by default).

A repository made ``writable=False`` answers every write 403, as GitHub
answers a token without the permission.

It checks the bearer token, knows which workflows exist and which inputs
each accepts, titles runs from a ``run-name`` template, plays each run
through a scripted list of statuses (one per poll), records every call, and
can answer with injected failures (5xx, rate limits) and slow answers, per
route (``fail``, ``slow``). Tests and the local sandbox both use it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web
from yarl import URL

from bot.sandbox.fake_server import FakeServer

DOCS = "https://docs.github.com/rest/actions"
COMPARE_DOCS = "https://docs.github.com/rest/commits/commits#compare-two-commits"
COMMIT_PULLS_DOCS = "https://docs.github.com/rest/commits/commits#list-pull-requests-associated-with-a-commit"
PULL_DOCS = "https://docs.github.com/rest/pulls/pulls#get-a-pull-request"
REF_DOCS = "https://docs.github.com/rest/git/refs#get-a-reference"
REPO_DOCS = "https://docs.github.com/rest/repos/repos#get-a-repository"
DEPLOYMENT_DOCS = "https://docs.github.com/rest/deployments/deployments#create-a-deployment"
LIST_DEPLOYMENTS_DOCS = "https://docs.github.com/rest/deployments/deployments#list-deployments"
STATUS_DOCS = "https://docs.github.com/rest/deployments/statuses#create-a-deployment-status"
LIST_STATUSES_DOCS = "https://docs.github.com/rest/deployments/statuses#list-deployment-statuses"
RELEASE_BY_TAG_DOCS = "https://docs.github.com/rest/releases/releases#get-a-release-by-tag-name"
RELEASE_DOCS = "https://docs.github.com/rest/releases/releases#create-a-release"
DEPLOYMENT_STATES = ("error", "failure", "inactive", "in_progress", "queued", "pending", "success")
WEB = "https://github.com"
COMPARE_UNPAGED = 250  # commits a compare lists without per_page/page: the newest ones
COMPARE_FILES = 300  # files a compare lists at most
DEFAULT_STATUSES = ("queued", "in_progress", "completed")
RUN_NAME_INPUT = re.compile(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}")


@dataclass
class Workflow:
    """A workflow file that can be dispatched."""

    repository: str  # "owner/name"
    path: str  # the file name, e.g. "deploy.yml"
    id: int
    name: str = "Deploy"
    inputs: set[str] | None = None  # the inputs it declares; None: accept any
    required: set[str] = field(default_factory=set)
    run_name: str | None = None  # e.g. "Deploy ${{ inputs.version }} (slipway #${{ inputs.deploy_id }})"
    statuses: tuple[str, ...] = DEFAULT_STATUSES  # what its runs report, one per poll; the last repeats
    conclusion: str = "success"  # what its runs conclude once "completed"

    def title(self, inputs: dict[str, str]) -> str:
        """The run's display title, as GitHub renders ``run-name`` (the workflow name without one)."""
        if self.run_name is None:
            return self.name
        return RUN_NAME_INPUT.sub(lambda match: str(inputs.get(match.group(1), "")), self.run_name)


@dataclass
class Run:
    """One workflow run. Each ``GET`` of the run moves it one step along ``statuses``."""

    id: int
    workflow: Workflow
    ref: str
    inputs: dict[str, str]
    display_title: str
    created_at: datetime
    statuses: list[str]
    conclusion: str
    event: str = "workflow_dispatch"
    polls: int = 0
    hidden_for: int = 0  # listings that do not show it yet (GitHub lists a new run after a moment)

    @property
    def status(self) -> str:
        return self.statuses[min(self.polls, len(self.statuses) - 1)]

    @property
    def head_branch(self) -> str:
        return self.ref.removeprefix("refs/heads/").removeprefix("refs/tags/")

    @property
    def html_url(self) -> str:
        return f"https://github.com/{self.workflow.repository}/actions/runs/{self.id}"

    def as_json(self, api_url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.workflow.name,
            "display_title": self.display_title,
            "event": self.event,
            "head_branch": self.head_branch,
            "status": self.status,
            "conclusion": self.conclusion if self.status == "completed" else None,
            "workflow_id": self.workflow.id,
            "path": f".github/workflows/{self.workflow.path}",
            "created_at": _iso(self.created_at),
            "html_url": self.html_url,
            "url": f"{api_url}/repos/{self.workflow.repository}/actions/runs/{self.id}",
        }


# -- repository contents: commits, tags, pull requests ----------------------------------


@dataclass
class GitCommit:
    """A commit of a :class:`Repository`."""

    sha: str
    message: str
    author: str  # the git author's name
    login: str | None  # the GitHub user it maps to; None: a name GitHub does not know
    parents: tuple[str, ...]
    files: tuple[str, ...]
    date: datetime
    order: int  # when it was made, among the repository's commits

    @property
    def title(self) -> str:
        return self.message.split("\n", 1)[0]

    def as_json(self, api_url: str, repository: str) -> dict[str, Any]:
        person = {"name": self.author, "email": f"{(self.login or 'someone')}@example.com", "date": _iso(self.date)}
        return {
            "sha": self.sha,
            "node_id": f"C_{self.sha[:20]}",
            "commit": {"author": person, "committer": person, "message": self.message,
                       "tree": {"sha": _sha("tree", self.sha)}, "comment_count": 0,
                       "url": f"{api_url}/repos/{repository}/git/commits/{self.sha}"},
            "url": f"{api_url}/repos/{repository}/commits/{self.sha}",
            "html_url": f"{WEB}/{repository}/commit/{self.sha}",
            "author": _user(self.login),
            "committer": _user(self.login),
            "parents": [{"sha": parent, "url": f"{api_url}/repos/{repository}/commits/{parent}",
                         "html_url": f"{WEB}/{repository}/commit/{parent}"} for parent in self.parents],
        }


@dataclass
class Pull:
    """A pull request of a :class:`Repository`."""

    number: int
    title: str
    login: str  # who opened it
    commits: tuple[str, ...]  # its branch's commits
    merge_commit_sha: str | None  # the merge or squash commit on the default branch; None while open
    body: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def merged(self) -> bool:
        return self.merge_commit_sha is not None

    def as_json(self, api_url: str, repository: str) -> dict[str, Any]:
        return {
            "url": f"{api_url}/repos/{repository}/pulls/{self.number}",
            "id": 100000 + self.number,
            "number": self.number,
            "state": "closed" if self.merged else "open",
            "title": self.title,
            "user": _user(self.login),
            "body": self.body,
            "created_at": _iso(self.created_at),
            "merged_at": _iso(self.created_at + timedelta(hours=1)) if self.merged else None,
            "merge_commit_sha": self.merge_commit_sha,
            "html_url": f"{WEB}/{repository}/pull/{self.number}",
            "base": {"ref": "main"},
        }


@dataclass
class Repository:
    """A repository's history, as a test builds it: commits on ``main``
    (``commit``, ``squash_pull``, ``merge_pull``) or on a side branch
    (``commit(..., parents=[...])``), tags and pull requests."""

    full_name: str  # "owner/name"
    id: int
    default_branch: str = "main"
    commits: dict[str, GitCommit] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # name -> sha
    pulls: dict[int, Pull] = field(default_factory=dict)
    head: str | None = None  # the default branch's tip
    writable: bool = True  # False: writes are refused 403, as for a token without the permission
    deployments: dict[int, Deployment] = field(default_factory=dict)
    releases: dict[str, Release] = field(default_factory=dict)  # tag name -> its release
    _made: itertools.count = field(default_factory=itertools.count, repr=False)

    # -- building it ----------------------------------------------------------------

    def commit(self, message: str, *, author: str = "Alice Adams", login: str | None = "alice",
               files: Iterable[str] = (), parents: Sequence[str] | None = None) -> str:
        """A new commit; its sha. Without ``parents`` it goes on the default
        branch (after its tip); with them, it is a side branch's, and the
        default branch does not move."""
        order = next(self._made)
        on_main = parents is None
        parents = tuple(parents if parents is not None else ([self.head] if self.head else []))
        sha = _sha(self.full_name, str(order), message)
        self.commits[sha] = GitCommit(sha, message, author, login, parents, tuple(files),
                                      datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=order), order)
        if on_main:
            self.head = sha
        return sha

    def tag(self, name: str, sha: str | None = None) -> str:
        """Tag ``sha`` (the default branch's tip without one) as ``name``; the sha."""
        target = sha or self.head
        assert target is not None, "nothing to tag yet"
        self.tags[name] = target
        return target

    def squash_pull(self, number: int, title: str, *, author: str = "Alice Adams", login: str = "alice",
                    files: Iterable[str] = ()) -> str:
        """Pull request ``number`` squash-merged: one commit ``title (#number)`` on the default branch."""
        sha = self.commit(f"{title} (#{number})", author=author, login=login, files=files)
        self.pulls[number] = Pull(number, title, login, (sha,), sha)
        return sha

    def merge_pull(self, number: int, tip: str, title: str, *, login: str = "alice",
                   source: str = "acme/feature", merged_by: tuple[str, str] = ("Mona Merger", "mona")) -> str:
        """Pull request ``number`` (opened by ``login``, its branch ending at
        ``tip``) merged with a merge commit, as GitHub writes it."""
        base = self.head
        assert base is not None, "nothing to merge into yet"
        branch = tuple(sorted(self.ancestors(tip) - self.ancestors(base), key=lambda sha: self.commits[sha].order))
        sha = self.commit(f"Merge pull request #{number} from {source}\n\n{title}", author=merged_by[0],
                          login=merged_by[1], parents=[base, tip])
        self.head = sha
        self.pulls[number] = Pull(number, title, login, branch, sha)
        return sha

    def add_pull(self, number: int, title: str, commits: Sequence[str], *, login: str = "alice",
                 merge_commit_sha: str | None = None) -> Pull:
        """A pull request over existing commits (rebase-merged, or open when
        ``merge_commit_sha`` is None and its commits are not on the default branch)."""
        pull = Pull(number, title, login, tuple(commits), merge_commit_sha)
        self.pulls[number] = pull
        return pull

    # -- reading it -------------------------------------------------------------------

    def resolve(self, ref: str) -> str | None:
        """The sha a tag, the default branch or a (7+ character) sha names."""
        if ref in self.tags:
            return self.tags[ref]
        if ref == self.default_branch:
            return self.head
        if len(ref) >= 7:
            found = [sha for sha in self.commits if sha.startswith(ref.lower())]
            if len(found) == 1:
                return found[0]
        return None

    def ancestors(self, sha: str) -> set[str]:
        """``sha`` and every commit it reaches."""
        seen: set[str] = set()
        todo = [sha]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.commits[current].parents)
        return seen

    def in_order(self, shas: Iterable[str]) -> list[GitCommit]:
        """The commits, oldest first."""
        return sorted((self.commits[sha] for sha in shas), key=lambda commit: commit.order)

    def pulls_of(self, sha: str) -> list[Pull]:
        """What ``GET /commits/{sha}/pulls`` lists: the merged pull request
        that brought a default-branch commit in; for any other commit, merged
        and open pull requests with it."""
        on_main = self.head is not None and sha in self.ancestors(self.head)
        having = [pull for pull in self.pulls.values() if sha in pull.commits or sha == pull.merge_commit_sha]
        return sorted((pull for pull in having if pull.merged or not on_main), key=lambda pull: -pull.number)


# -- what is written there: deployments, their statuses, releases ----------------------


@dataclass
class DeploymentStatus:
    """One status of a :class:`Deployment`."""

    id: int
    state: str
    description: str
    environment: str
    environment_url: str
    log_url: str
    created_at: datetime
    automatic: bool = False  # made by GitHub itself (auto_inactive), not asked for

    def as_json(self, api_url: str, repository: str, deployment: Deployment, login: str) -> dict[str, Any]:
        return {
            "url": f"{api_url}/repos/{repository}/deployments/{deployment.id}/statuses/{self.id}",
            "id": self.id,
            "node_id": f"DES_{_sha('status', str(self.id))[:16]}",
            "state": self.state,
            "creator": _user(login),
            "description": self.description,
            "environment": self.environment,
            "target_url": self.log_url,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.created_at),
            "deployment_url": f"{api_url}/repos/{repository}/deployments/{deployment.id}",
            "repository_url": f"{api_url}/repos/{repository}",
            "environment_url": self.environment_url,
            "log_url": self.log_url,
            "performed_via_github_app": None,
        }


@dataclass
class Deployment:
    """A deployment of a :class:`Repository`, as created through the API."""

    id: int
    sha: str
    ref: str
    task: str
    payload: Any
    environment: str
    description: str | None
    transient_environment: bool
    production_environment: bool
    auto_merge: bool  # as asked (a deployment is only made when no merge was needed)
    required_contexts: list[str] | None  # as asked (None: not sent, every context)
    created_at: datetime
    login: str = "slipway-bot"  # whose token made it
    statuses: list[DeploymentStatus] = field(default_factory=list)  # oldest first

    @property
    def states(self) -> list[str]:
        """The states it was given, oldest first (GitHub's own inactive ones included)."""
        return [status.state for status in self.statuses]

    @property
    def state(self) -> str | None:
        return self.statuses[-1].state if self.statuses else None

    def as_json(self, api_url: str, repository: str) -> dict[str, Any]:
        updated = self.statuses[-1].created_at if self.statuses else self.created_at
        return {
            "url": f"{api_url}/repos/{repository}/deployments/{self.id}",
            "id": self.id,
            "node_id": f"DE_{_sha('deployment', str(self.id))[:16]}",
            "sha": self.sha,
            "ref": self.ref,
            "task": self.task,
            "payload": self.payload,
            "original_environment": self.environment,
            "environment": self.environment,
            "description": self.description,
            "creator": _user(self.login),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(updated),
            "statuses_url": f"{api_url}/repos/{repository}/deployments/{self.id}/statuses",
            "repository_url": f"{api_url}/repos/{repository}",
            "transient_environment": self.transient_environment,
            "production_environment": self.production_environment,
            "performed_via_github_app": None,
        }


@dataclass
class Release:
    """A release of a :class:`Repository`."""

    id: int
    tag_name: str
    target_commitish: str
    name: str | None
    body: str | None
    draft: bool
    prerelease: bool
    created_at: datetime
    login: str = "slipway-bot"

    def as_json(self, api_url: str, repository: str) -> dict[str, Any]:
        return {
            "url": f"{api_url}/repos/{repository}/releases/{self.id}",
            "html_url": f"{WEB}/{repository}/releases/tag/{self.tag_name}",
            "assets_url": f"{api_url}/repos/{repository}/releases/{self.id}/assets",
            "upload_url": f"https://uploads.github.com/repos/{repository}/releases/{self.id}/assets{{?name,label}}",
            "tarball_url": f"{api_url}/repos/{repository}/tarball/{self.tag_name}",
            "zipball_url": f"{api_url}/repos/{repository}/zipball/{self.tag_name}",
            "id": self.id,
            "node_id": f"RE_{_sha('release', str(self.id))[:16]}",
            "tag_name": self.tag_name,
            "target_commitish": self.target_commitish,
            "name": self.name,
            "body": self.body,
            "draft": self.draft,
            "prerelease": self.prerelease,
            "created_at": _iso(self.created_at),
            "published_at": None if self.draft else _iso(self.created_at),
            "author": _user(self.login),
            "assets": [],
        }


# -- the server ------------------------------------------------------------------------


@dataclass
class Failure:
    """An answer to give instead of the real one, to the next call of ``route``."""

    # "dispatch", "runs" (the listing), "run", "cancel"; "repo", "compare", "commit_pulls", "pull", "ref";
    # "create_deployment", "deployments", "create_deployment_status", "deployment_statuses", "release_by_tag",
    # "create_release"
    route: str
    status: int  # 0: the real answer (after ``delay``)
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "Server Error"
    after_effect: bool = False  # do the work first, then answer with this (a lost reply)
    delay: float = 0.0  # seconds to wait before answering (a slow GitHub)


@dataclass
class Call:
    route: str
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    status: int = 0


class FakeGitHub(FakeServer):
    """GitHub's REST API, as far as Slipway uses it: Actions, and reading a
    repository's commits, tags and pull requests."""

    def __init__(self, token: str = "ghp_test", *, prefix: str = "", run_details: str = "supported") -> None:
        super().__init__()
        self.token = token
        self.prefix = prefix.rstrip("/")  # e.g. "/api/v3", as GitHub Enterprise Server serves it
        self.url_suffix = self.prefix
        self.run_details = run_details  # "supported", "ignored" (always 204) or "rejected" (422)
        self.new_runs_hidden_for = 0  # listings that miss a freshly dispatched run
        self.workflows: dict[tuple[str, str], Workflow] = {}
        self.runs: dict[int, Run] = {}
        self.repositories: dict[str, Repository] = {}
        self.compare_max_per_page = 100  # the REST docs' maximum per_page
        self.failures: list[Failure] = []
        self.calls: list[Call] = []
        self._ids = itertools.count(9001)
        self._stopping = asyncio.Event()  # ends slow answers, so that stop() never waits on them

    # -- set-up -------------------------------------------------------------------

    def add_workflow(self, repository: str, path: str, **settings: Any) -> Workflow:
        workflow = Workflow(repository, path, next(self._ids), **settings)
        self.workflows[(repository, path)] = workflow
        return workflow

    def add_run(self, workflow: Workflow, inputs: dict[str, str] | None = None, *, ref: str = "main",
                event: str = "workflow_dispatch", hidden_for: int = 0) -> Run:
        """A run of ``workflow``, created now: one dispatched here, or someone else's."""
        inputs = dict(inputs or {})
        run = Run(next(self._ids), workflow, ref, inputs, workflow.title(inputs), datetime.now(timezone.utc),
                  list(workflow.statuses), workflow.conclusion, event, hidden_for=hidden_for)
        self.runs[run.id] = run
        return run

    def add_repository(self, full_name: str, **settings: Any) -> Repository:
        """An empty repository ``owner/name`` to build history in."""
        repository = Repository(full_name, next(self._ids), **settings)
        self.repositories[full_name] = repository
        return repository

    def fail(self, route: str, status: int, *, times: int = 1, **details: Any) -> None:
        """Answer the next ``times`` calls of ``route`` with ``status``."""
        self.failures.extend(Failure(route, status, **details) for _ in range(times))

    def slow(self, route: str, seconds: float, *, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``route`` truly, but ``seconds`` late."""
        self.failures.extend(Failure(route, 0, delay=seconds) for _ in range(times))

    # -- serving ------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application()
        self._add_actions_routes(app)
        self._add_contents_routes(app)
        self._add_deployments_routes(app)
        return app

    def _add_actions_routes(self, app: web.Application) -> None:
        actions = self.prefix + "/repos/{owner}/{repo}/actions"
        app.router.add_post(actions + "/workflows/{workflow_id}/dispatches", self._dispatch)
        app.router.add_get(actions + "/workflows/{workflow_id}/runs", self._list_runs)
        app.router.add_get(actions + "/runs/{run_id}", self._get_run)
        app.router.add_post(actions + "/runs/{run_id}/cancel", self._cancel_run)

    def _add_contents_routes(self, app: web.Application) -> None:
        repo = self.prefix + "/repos/{owner}/{repo}"
        app.router.add_get(repo, self._get_repository)
        app.router.add_get(repo + "/compare/{basehead:.+}", self._compare)
        app.router.add_get(self.prefix + "/repositories/{repository_id:\\d+}/compare/{basehead:.+}", self._compare)
        app.router.add_get(repo + "/commits/{sha}/pulls", self._commit_pulls)
        app.router.add_get(repo + "/pulls/{number:\\d+}", self._get_pull)
        app.router.add_get(repo + "/git/ref/{ref:.+}", self._get_ref)

    def _add_deployments_routes(self, app: web.Application) -> None:
        repo = self.prefix + "/repos/{owner}/{repo}"
        app.router.add_post(repo + "/deployments", self._create_deployment)
        app.router.add_get(repo + "/deployments", self._list_deployments)
        app.router.add_post(repo + "/deployments/{deployment_id}/statuses", self._create_deployment_status)
        app.router.add_get(repo + "/deployments/{deployment_id}/statuses", self._list_deployment_statuses)
        app.router.add_get(repo + "/releases/tags/{tag:.+}", self._release_by_tag)
        app.router.add_post(repo + "/releases", self._create_release)

    async def stop(self) -> None:
        self._stopping.set()
        await super().stop()

    # -- what happened --------------------------------------------------------------

    def calls_to(self, route: str) -> list[Call]:
        return [call for call in self.calls if call.route == route]

    @property
    def dispatches(self) -> list[Call]:
        """The dispatches GitHub accepted."""
        return [call for call in self.calls_to("dispatch") if call.status in (200, 204)]

    def deployments_of(self, full_name: str) -> list[Deployment]:
        """The deployments made in ``full_name``, oldest first."""
        return sorted(self.repositories[full_name].deployments.values(), key=lambda deployment: deployment.id)

    # -- the API --------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        call, refused = await self._admit(request, "dispatch", body)
        if refused is not None:
            return await self._answer(call, refused)
        workflow = self._workflow(request)
        if workflow is None:
            return await self._answer(call, _error(404, "Not Found"))
        problem = _dispatch_problem(workflow, body, self.run_details)
        if problem is not None:
            return await self._answer(call, _error(422, problem))
        run = self.add_run(workflow, dict(body.get("inputs") or {}), ref=body["ref"],
                           hidden_for=self.new_runs_hidden_for)
        if self.run_details == "supported" and body.get("return_run_details") is True:
            answer = web.json_response({"workflow_run_id": run.id, "html_url": run.html_url,
                                        "run_url": f"{self.url}/repos/{workflow.repository}/actions/runs/{run.id}"})
        else:
            answer = web.Response(status=204)
        return await self._answer(call, self._after_effect(call) or answer)

    async def _list_runs(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "runs")
        if refused is not None:
            return await self._answer(call, refused)
        workflow = self._workflow(request)
        if workflow is None:
            return await self._answer(call, _error(404, "Not Found"))
        listed = [run for run in self.runs.values() if run.workflow is workflow and _matches(run, request.query)]
        for run in listed:
            run.hidden_for -= 1
        shown = sorted((run for run in listed if run.hidden_for < 0), key=lambda run: run.id, reverse=True)
        body = {"total_count": len(shown), "workflow_runs": [run.as_json(self.url) for run in shown]}
        return await self._answer(call, self._after_effect(call) or web.json_response(body))

    async def _cancel_run(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "cancel")
        if refused is not None:
            return await self._answer(call, refused)
        run = self.runs.get(int(request.match_info["run_id"])) if request.match_info["run_id"].isdigit() else None
        if run is None or run.workflow.repository != _repository(request):
            return await self._answer(call, _error(404, "Not Found"))
        if run.status == "completed":
            return await self._answer(call, _error(409, "Cannot cancel a workflow run that is completed."))
        run.statuses, run.polls, run.conclusion = ["completed"], 0, "cancelled"
        return await self._answer(call, web.json_response({}, status=202))

    async def _get_run(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "run")
        if refused is not None:
            return await self._answer(call, refused)
        run = self.runs.get(int(request.match_info["run_id"])) if request.match_info["run_id"].isdigit() else None
        if run is None or run.workflow.repository != _repository(request):
            return await self._answer(call, _error(404, "Not Found"))
        body = run.as_json(self.url)
        run.polls += 1
        return await self._answer(call, self._after_effect(call) or web.json_response(body))

    # -- the contents API: repositories, compare, pull requests, refs -------------------

    async def _get_repository(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "repo")
        if refused is not None:
            return await self._answer(call, refused)
        repository = self._repository_of(request)
        if repository is None:
            return await self._answer(call, _error(404, "Not Found", docs=REPO_DOCS))
        owner, name = repository.full_name.split("/")
        body = {"id": repository.id, "name": name, "full_name": repository.full_name, "owner": _user(owner),
                "private": False, "html_url": f"{WEB}/{repository.full_name}",
                "url": f"{self.url}/repos/{repository.full_name}", "default_branch": repository.default_branch}
        return await self._answer(call, web.json_response(body))

    async def _compare(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "compare")
        if refused is not None:
            return await self._answer(call, refused)
        repository = self._repository_of(request)
        base_ref, three_dots, head_ref = request.match_info["basehead"].partition("...")
        base = repository.resolve(base_ref) if repository is not None and three_dots else None
        head = repository.resolve(head_ref) if repository is not None and three_dots else None
        if repository is None or base is None or head is None:
            return await self._answer(call, _error(404, "Not Found", docs=COMPARE_DOCS))
        if not repository.ancestors(base) & repository.ancestors(head):
            return await self._answer(call, _error(404, f"No common ancestor between {base_ref} and {head_ref}.",
                                                   docs=COMPARE_DOCS))
        return await self._answer(call, self._comparison(request, repository, base, head))

    def _comparison(self, request: web.Request, repository: Repository, base: str, head: str) -> web.Response:
        """The compare's answer, paged as GitHub pages it."""
        basehead = request.match_info["basehead"]
        base_side, head_side = repository.ancestors(base), repository.ancestors(head)
        ahead, behind = repository.in_order(head_side - base_side), base_side - head_side
        merge_base = repository.in_order(base_side & head_side)[-1]
        status = "identical" if base == head else "ahead" if not behind else "behind" if not ahead else "diverged"
        files = list(dict.fromkeys(path for commit in ahead for path in commit.files))[:COMPARE_FILES]
        body: dict[str, Any] = {
            "url": f"{self.url}/repos/{repository.full_name}/compare/{basehead}",
            "html_url": f"{WEB}/{repository.full_name}/compare/{basehead}",
            "permalink_url": f"{WEB}/{repository.full_name}/compare/{base}...{head}",
            "diff_url": f"{WEB}/{repository.full_name}/compare/{basehead}.diff",
            "patch_url": f"{WEB}/{repository.full_name}/compare/{basehead}.patch",
            "base_commit": repository.commits[base].as_json(self.url, repository.full_name),
            "merge_base_commit": repository.commits[merge_base.sha].as_json(self.url, repository.full_name),
            "status": status, "ahead_by": len(ahead), "behind_by": len(behind), "total_commits": len(ahead),
        }
        query, headers = request.query, {}
        if "per_page" not in query and "page" not in query:
            listed = ahead[-COMPARE_UNPAGED:]
        else:
            per_page = min(max(_page_number(query.get("per_page"), 30), 1), self.compare_max_per_page)
            page = max(_page_number(query.get("page"), 1), 1)
            last = max(1, -(-len(ahead) // per_page))
            listed = ahead[(page - 1) * per_page:page * per_page]
            files = files if page == 1 else []
            pages = {"prev": page - 1} if page > 1 else {}
            pages |= {"next": page + 1, "last": last} if page < last else {}
            pages |= {"first": 1} if page > 1 else {}
            if pages:
                at = request.url.origin().with_path(f"{self.prefix}/repositories/{repository.id}/compare/{basehead}")
                headers["Link"] = _link(at.with_query(per_page=str(per_page)), pages)
        body["commits"] = [commit.as_json(self.url, repository.full_name) for commit in listed]
        if files:
            body["files"] = [{"sha": _sha("blob", path, head), "filename": path, "status": "modified",
                              "additions": 1, "deletions": 0, "changes": 1,
                              "blob_url": f"{WEB}/{repository.full_name}/blob/{head}/{path}"} for path in files]
        return web.json_response(body, headers=headers)

    async def _commit_pulls(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "commit_pulls")
        if refused is not None:
            return await self._answer(call, refused)
        repository = self._repository_of(request)
        if repository is None:
            return await self._answer(call, _error(404, "Not Found", docs=COMMIT_PULLS_DOCS))
        sha = repository.resolve(request.match_info["sha"])
        if sha is None:
            return await self._answer(call, _error(422, f"No commit found for SHA: {request.match_info['sha']}",
                                                   docs=COMMIT_PULLS_DOCS))
        listed = [pull.as_json(self.url, repository.full_name) for pull in repository.pulls_of(sha)]
        return await self._answer(call, web.json_response(listed))

    async def _get_pull(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "pull")
        if refused is not None:
            return await self._answer(call, refused)
        repository = self._repository_of(request)
        pull = repository.pulls.get(int(request.match_info["number"])) if repository is not None else None
        if repository is None or pull is None:
            return await self._answer(call, _error(404, "Not Found", docs=PULL_DOCS))
        return await self._answer(call, web.json_response(pull.as_json(self.url, repository.full_name)))

    async def _get_ref(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "ref")
        if refused is not None:
            return await self._answer(call, refused)
        repository = self._repository_of(request)
        kind, _, name = request.match_info["ref"].partition("/")
        sha = None
        if repository is not None and kind == "tags":
            sha = repository.tags.get(name)
        elif repository is not None and kind == "heads" and name == repository.default_branch:
            sha = repository.head
        if repository is None or sha is None:
            return await self._answer(call, _error(404, "Not Found", docs=REF_DOCS))
        ref = f"refs/{kind}/{name}"
        body = {"ref": ref, "node_id": f"REF_{_sha(ref)[:16]}",
                "url": f"{self.url}/repos/{repository.full_name}/git/{ref}",
                "object": {"sha": sha, "type": "commit",
                           "url": f"{self.url}/repos/{repository.full_name}/git/commits/{sha}"}}
        return await self._answer(call, web.json_response(body))

    # -- deployments, their statuses, releases -----------------------------------------

    async def _create_deployment(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        call, refused = await self._admit(request, "create_deployment", body)
        if refused is not None:
            return await self._answer(call, refused)
        repository = self._repository_of(request)
        if repository is None:
            return await self._answer(call, _error(404, "Not Found", docs=DEPLOYMENT_DOCS))
        if not repository.writable:
            return await self._answer(call, _error(403, "Resource not accessible by personal access token",
                                                   docs=DEPLOYMENT_DOCS))
        if not isinstance(body, dict) or not isinstance(body.get("ref"), str):
            return await self._answer(call, _error(422, 'Invalid request.\n\n"ref" wasn\'t supplied.',
                                                   docs=DEPLOYMENT_DOCS))
        ref = body["ref"]
        sha = repository.resolve(ref.removeprefix("refs/tags/").removeprefix("refs/heads/"))
        if sha is None:
            return await self._answer(call, _error(422, f"No ref found for: {ref}", docs=DEPLOYMENT_DOCS))
        problem = _deployment_problem(body)
        if problem is not None:
            return await self._answer(call, _validation_failed("Deployment", problem, DEPLOYMENT_DOCS))
        auto_merge = body.get("auto_merge", True)
        if auto_merge and repository.head is not None and repository.head not in repository.ancestors(sha):
            # behind the default branch: GitHub would merge it into the ref, which a tag or a sha cannot take
            return await self._answer(call, _error(
                409, f"Conflict merging {repository.default_branch} into {ref}.", docs=DEPLOYMENT_DOCS))
        environment = body.get("environment", "production")
        payload = body.get("payload", {})
        if isinstance(payload, str):
            try:
                payload = json.loads(payload) if payload else {}
            except ValueError:
                pass
        deployment = Deployment(
            next(self._ids), sha, ref, body.get("task", "deploy"), payload, environment, body.get("description"),
            bool(body.get("transient_environment", False)),
            bool(body.get("production_environment", environment == "production")), bool(auto_merge),
            body.get("required_contexts"), datetime.now(timezone.utc))
        repository.deployments[deployment.id] = deployment
        answer = web.json_response(deployment.as_json(self.url, repository.full_name), status=201)
        return await self._answer(call, self._after_effect(call) or answer)

    async def _list_deployments(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "deployments")
        if refused is not None:
            return await self._answer(call, refused)
        repository = self._repository_of(request)
        if repository is None:
            return await self._answer(call, _error(404, "Not Found", docs=LIST_DEPLOYMENTS_DOCS))
        query = request.query
        listed = [deployment for deployment in sorted(repository.deployments.values(), key=lambda d: -d.id)
                  if all(query[name] == str(getattr(deployment, name))
                         for name in ("sha", "ref", "task", "environment") if name in query)]
        per_page = min(max(_page_number(query.get("per_page"), 30), 1), 100)
        page = max(_page_number(query.get("page"), 1), 1)
        shown = listed[(page - 1) * per_page:page * per_page]
        return await self._answer(call, web.json_response(
            [deployment.as_json(self.url, repository.full_name) for deployment in shown]))

    async def _create_deployment_status(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        call, refused = await self._admit(request, "create_deployment_status", body)
        if refused is not None:
            return await self._answer(call, refused)
        repository, deployment = self._deployment_of(request)
        if repository is None or deployment is None:
            return await self._answer(call, _error(404, "Not Found", docs=STATUS_DOCS))
        if not repository.writable:
            return await self._answer(call, _error(403, "Resource not accessible by personal access token",
                                                   docs=STATUS_DOCS))
        if not isinstance(body, dict) or "state" not in body:
            return await self._answer(call, _error(422, 'Invalid request.\n\n"state" wasn\'t supplied.',
                                                   docs=STATUS_DOCS))
        if body["state"] not in DEPLOYMENT_STATES:
            return await self._answer(call, _validation_failed("DeploymentStatus", "state", STATUS_DOCS))
        if len(str(body.get("description") or "")) > 140:
            return await self._answer(call, _validation_failed("DeploymentStatus", "description", STATUS_DOCS))
        if "environment" in body:
            deployment.environment = str(body["environment"])
        now = datetime.now(timezone.utc)
        status = DeploymentStatus(next(self._ids), body["state"], str(body.get("description") or ""),
                                  deployment.environment, str(body.get("environment_url") or ""),
                                  str(body.get("log_url") or body.get("target_url") or ""), now)
        deployment.statuses.append(status)
        if status.state == "success" and body.get("auto_inactive", True):
            for earlier in repository.deployments.values():
                if earlier.id < deployment.id and earlier.environment == deployment.environment \
                        and not earlier.transient_environment and not earlier.production_environment \
                        and earlier.state == "success":
                    earlier.statuses.append(DeploymentStatus(next(self._ids), "inactive", "", earlier.environment,
                                                             "", "", now, automatic=True))
        answer = web.json_response(status.as_json(self.url, repository.full_name, deployment, deployment.login),
                                   status=201)
        return await self._answer(call, self._after_effect(call) or answer)

    async def _list_deployment_statuses(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "deployment_statuses")
        if refused is not None:
            return await self._answer(call, refused)
        repository, deployment = self._deployment_of(request)
        if repository is None or deployment is None:
            return await self._answer(call, _error(404, "Not Found", docs=LIST_STATUSES_DOCS))
        listed = [status.as_json(self.url, repository.full_name, deployment, deployment.login)
                  for status in reversed(deployment.statuses)]
        return await self._answer(call, web.json_response(listed))

    async def _release_by_tag(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "release_by_tag")
        if refused is not None:
            return await self._answer(call, refused)
        repository = self._repository_of(request)
        release = repository.releases.get(request.match_info["tag"]) if repository is not None else None
        if repository is None or release is None:
            return await self._answer(call, _error(404, "Not Found", docs=RELEASE_BY_TAG_DOCS))
        return await self._answer(call, web.json_response(release.as_json(self.url, repository.full_name)))

    async def _create_release(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        call, refused = await self._admit(request, "create_release", body)
        if refused is not None:
            return await self._answer(call, refused)
        repository = self._repository_of(request)
        if repository is None:
            return await self._answer(call, _error(404, "Not Found", docs=RELEASE_DOCS))
        if not repository.writable:
            return await self._answer(call, _error(403, "Resource not accessible by personal access token",
                                                   docs=RELEASE_DOCS))
        if not isinstance(body, dict) or not isinstance(body.get("tag_name"), str) or not body["tag_name"]:
            return await self._answer(call, _validation_failed("Release", "tag_name", RELEASE_DOCS, "missing_field"))
        tag = body["tag_name"]
        if tag in repository.releases:
            return await self._answer(call, _validation_failed("Release", "tag_name", RELEASE_DOCS, "already_exists"))
        target = str(body.get("target_commitish") or repository.default_branch)
        if tag not in repository.tags:  # GitHub tags target_commitish for it
            sha = repository.resolve(target)
            if sha is None:
                return await self._answer(call, _validation_failed("Release", "target_commitish", RELEASE_DOCS))
            repository.tags[tag] = sha
        release = Release(next(self._ids), tag, target, body.get("name"), body.get("body"),
                          bool(body.get("draft", False)), bool(body.get("prerelease", False)),
                          datetime.now(timezone.utc))
        repository.releases[tag] = release
        answer = web.json_response(release.as_json(self.url, repository.full_name), status=201)
        return await self._answer(call, self._after_effect(call) or answer)

    def _deployment_of(self, request: web.Request) -> tuple[Repository | None, Deployment | None]:
        repository = self._repository_of(request)
        wanted = request.match_info["deployment_id"]
        if repository is None or not wanted.isdigit():
            return repository, None
        return repository, repository.deployments.get(int(wanted))

    def _repository_of(self, request: web.Request) -> Repository | None:
        """The repository a request names, as ``owner/repo`` or as ``repositories/{id}``."""
        if "repository_id" in request.match_info:
            wanted = int(request.match_info["repository_id"])
            return next((repository for repository in self.repositories.values() if repository.id == wanted), None)
        return self.repositories.get(_repository(request))

    # -- plumbing -------------------------------------------------------------------

    async def _admit(self, request: web.Request, route: str, body: Any = None) -> tuple[Call, web.Response | None]:
        """Record the call; the answer to give at once when the token is wrong
        or a failure is due (one that does not wait for the work)."""
        call = Call(route, request.method, request.path, dict(request.query), body, dict(request.headers))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return call, _error(401, "Bad credentials")
        failure = self._due_failure(route)
        if failure is not None and not failure.after_effect:
            self.failures.remove(failure)
            if failure.delay:
                await self._pause(failure.delay)
            if failure.status:
                return call, _error(failure.status, failure.message, failure.headers)
        return call, None

    async def _pause(self, seconds: float) -> None:
        """A slow answer's wait, cut short when the server stops."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    def _after_effect(self, call: Call) -> web.Response | None:
        """The failure to answer with once the work is done (a reply lost on the way back)."""
        failure = self._due_failure(call.route)
        if failure is None:
            return None
        self.failures.remove(failure)
        return _error(failure.status, failure.message, failure.headers)

    def _due_failure(self, route: str) -> Failure | None:
        return next((failure for failure in self.failures if failure.route == route), None)

    def _workflow(self, request: web.Request) -> Workflow | None:
        wanted = request.match_info["workflow_id"]
        for (repository, path), workflow in self.workflows.items():
            if repository == _repository(request) and wanted in (path, str(workflow.id)):
                return workflow
        return None

    async def _answer(self, call: Call, response: web.Response) -> web.Response:
        call.status = response.status
        await self.changed(lambda: self.calls.append(call))
        return response


def _dispatch_problem(workflow: Workflow, body: Any, run_details: str) -> str | None:
    """Why GitHub would refuse this dispatch with 422, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("ref"), str):
        return 'Invalid request.\n\n"ref" wasn\'t supplied.'
    if run_details == "rejected" and "return_run_details" in body:
        return 'Invalid request.\n\n"return_run_details" is not a permitted key.'
    inputs = body.get("inputs") or {}
    unexpected = sorted(set(inputs) - workflow.inputs) if workflow.inputs is not None else []
    if unexpected:
        return f"Unexpected inputs provided: {json.dumps(unexpected)}"
    missing = sorted(workflow.required - set(inputs))
    if missing:
        return f"Required input '{missing[0]}' not provided"
    return None


def _deployment_problem(body: dict[str, Any]) -> str | None:
    """The field GitHub's validation of a new deployment would name, or None."""
    if "required_contexts" in body and not (isinstance(body["required_contexts"], list) and all(
            isinstance(context, str) for context in body["required_contexts"])):
        return "required_contexts"
    if "payload" in body and not isinstance(body["payload"], (dict, str)):
        return "payload"
    for flag in ("auto_merge", "transient_environment", "production_environment"):
        if flag in body and not isinstance(body[flag], bool):
            return flag
    if "environment" in body and not (isinstance(body["environment"], str) and body["environment"]):
        return "environment"
    return None


def _validation_failed(resource: str, field_name: str, docs: str, code: str = "invalid") -> web.Response:
    """GitHub's 422 for a field it refused."""
    return web.json_response({"message": "Validation Failed",
                              "errors": [{"resource": resource, "code": code, "field": field_name}],
                              "documentation_url": docs, "status": "422"}, status=422)


def _matches(run: Run, query: Any) -> bool:
    if "event" in query and run.event != query["event"]:
        return False
    if "branch" in query and run.head_branch != query["branch"]:
        return False
    created = query.get("created", "")
    if created.startswith(">="):
        since = datetime.fromisoformat(created[2:].replace("Z", "+00:00"))
        return run.created_at.replace(microsecond=0) >= since
    return True


def _repository(request: web.Request) -> str:
    return f"{request.match_info['owner']}/{request.match_info['repo']}"


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json() if request.can_read_body else None
    except ValueError:
        return None


def _error(status: int, message: str, headers: dict[str, str] | None = None, docs: str = DOCS) -> web.Response:
    return web.json_response({"message": message, "documentation_url": docs, "status": str(status)},
                             status=status, headers=headers)


def _user(login: str | None) -> dict[str, Any] | None:
    if login is None:
        return None
    return {"login": login, "id": int(_sha("user", login)[:6], 16), "type": "User",
            "html_url": f"{WEB}/{login}"}


def _sha(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()


def _page_number(text: str | None, default: int) -> int:
    """A ``page``/``per_page`` value as GitHub reads it: not a number is the default."""
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _link(url: URL, pages: dict[str, int]) -> str:
    """A ``Link`` header as GitHub writes it: ``<…&page=2>; rel="next", <…>; rel="last"``."""
    return ", ".join(f'<{url.update_query(page=str(page))}>; rel="{rel}"' for rel, page in pages.items())


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
