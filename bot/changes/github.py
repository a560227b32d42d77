"""Changes read from GitHub's REST API (a ``changes.github`` spec).

What is asked, each call under one overall ``timeout``
    ``GET /repos/{owner}/{repo}/compare/{older}...{newer}`` in pages of
    100 commits (GitHub pages them oldest first): page 1, then the pages
    that hold the newest ``MAX_COMMITS`` commits, ``CONCURRENCY`` at a time,
    at the URLs the ``Link`` header's ``last`` gives (on the API's own host
    only: the token goes nowhere else); ``total_commits`` says how many
    there are in all, and ``files`` come from page 1 (GitHub lists at most
    300 files). Then, for the pull requests, at most ``MAX_LOOKUPS`` of each
    of these, ``CONCURRENCY`` at a time:

    * ``GET /repos/{owner}/{repo}/pulls/{number}`` for pull requests a
      commit names (a squash merge's ``(#123)``, a merge commit's ``Merge
      pull request #123``); without an answer, the title is read from the
      commit instead (see :func:`~bot.changes.model.pull_title`);
    * ``GET /repos/{owner}/{repo}/commits/{sha}/pulls`` for commits that
      name none and that no merge commit of a known pull request brought in
      (rebase merges, pushes to the branch), newest first.

    ``GET /repos/{owner}/{repo}/git/ref/tags/{tag}`` answers
    :meth:`GitHubSource.tag_exists`, and tells which tag a compare's 404
    was about.

Errors
    A tag that does not exist raises :class:`TagMissing`. Everything that
    keeps GitHub from answering raises :class:`SourceUnavailable` with a few
    words: ``GitHub answered 503``, ``GitHub timed out after 10s``, ``GitHub
    rate limit reached (resets in 12m)``, ``cannot reach GitHub (…)``,
    ``GitHub refused the token in GITHUB_TOKEN (Bad credentials)``, ``GitHub
    shows no repository acme/api to this token``. The pull request lookups
    are extras: one that fails leaves that pull request as the commits tell
    it, and the change set is still returned.

Commits come newest first, like ``git log``; pull requests in the order
their newest commit comes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from bot.changes.model import (
    FORWARD,
    ChangeSet,
    Commit,
    PullRequest,
    SourceUnavailable,
    TagMissing,
    pull_of,
    through_merges,
    told_pull,
    valid_tag,
)
from bot.config import GitHubChanges
from bot.durations import format_duration

log = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
USER_AGENT = "Slipway-deploy-bot"
PAGE_SIZE = 100  # the compare API's documented per_page maximum
MAX_COMMITS = 1000  # a change set keeps at most this many commits; total_commits still counts them all
MAX_LOOKUPS = 30  # pull request lookups of each kind per compare
CONCURRENCY = 6  # lookups in flight at once


class GitHubSource:
    """A :class:`~bot.changes.model.ChangeSource` on one GitHub repository."""

    def __init__(self, spec: GitHubChanges, token: str | None, *, timeout: float = 10.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        """``token`` may be None for a public repository; without ``session``
        each call opens its own. ``timeout`` bounds each call as a whole."""
        self.spec = spec
        self.timeout = timeout
        self._token = token
        self._session = session
        self._repo = "/repos/" + spec.repository

    async def tag_exists(self, tag: str) -> bool:
        """Whether the repository has tag ``tag``.

        Raises:
            SourceUnavailable: GitHub did not answer, or shows no such repository.
        """
        if not valid_tag(tag):
            return False
        async with self._api() as api:
            if await self._has_tag(api, tag):
                return True
            await self._check_repository(api)
            return False

    async def compare(self, older: str, newer: str) -> ChangeSet:
        """The commits in tag ``newer`` that tag ``older`` lacks, their pull
        requests and the files they touch, as a ``forward`` change set.

        Raises:
            TagMissing: ``older`` or ``newer`` is not a tag of the repository.
            SourceUnavailable: GitHub did not answer (in time).
        """
        for tag in (older, newer):
            if not valid_tag(tag):
                raise TagMissing(tag)
        async with self._api() as api:
            comparison, listed = await self._comparison(api, older, newer)
            parents = {item["sha"]: [parent["sha"] for parent in item.get("parents") or ()] for item in listed}
            commits = through_merges([_commit(item) for item in reversed(listed)], parents)
            named = list(dict.fromkeys(commit.pull for commit in commits if commit.pull is not None))
            (commits, learnt), described = await asyncio.gather(self._ask_commits(api, commits),
                                                                self._describe(api, named[:MAX_LOOKUPS]))
        messages = {item["sha"]: _message(item) for item in listed}
        known, web_url = {**learnt, **described}, _web_url(comparison)
        numbers = dict.fromkeys(commit.pull for commit in commits if commit.pull is not None)
        pulls = tuple(known.get(number) or told_pull(number, commits, messages, web_url) for number in numbers)
        total = comparison.get("total_commits")
        return ChangeSet(base=older, head=newer, direction=FORWARD, commits=commits, pulls=pulls,
                         files=tuple(entry["filename"] for entry in comparison.get("files") or ()
                                     if entry.get("filename")),
                         compare_url=comparison.get("html_url"),
                         total_commits=total if isinstance(total, int) else len(commits))

    # -- the comparison -------------------------------------------------------------

    async def _comparison(self, api: _Api, older: str, newer: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The compare's first page, and the newest MAX_COMMITS commits of the
        comparison, oldest first (GitHub's order): page 1, then the pages the
        ``Link`` header's ``last`` says the newest are on."""
        reply = await api.get(f"{self._repo}/compare/{_quoted(older)}...{_quoted(newer)}",
                              params={"per_page": str(PAGE_SIZE)})
        if reply.status == 404:
            raise await self._missing(api, older, newer, reply)
        first = api.expect(reply, f"GitHub would not compare {older} with {newer}")
        listed = list(first.get("commits") or [])
        pages = _newest_pages(reply.last_url, len(listed), first.get("total_commits"))
        if pages and not api.serves(pages[0]):
            log.warning("GitHub's pages of %s...%s are on another host (%s); keeping the first",
                        older, newer, pages[0])
            pages = []
        if pages and _page_of(pages[0]) > 2:
            listed = []  # page 1 only held older commits than those kept
        limit = asyncio.Semaphore(CONCURRENCY)

        async def page(url: str) -> list[dict[str, Any]]:
            async with limit:
                body = api.expect(await api.get(url), f"GitHub would not compare {older} with {newer}")
                return list(body.get("commits") or [])

        for commits in await asyncio.gather(*(page(url) for url in pages)):
            listed.extend(commits)
        return first, listed[-MAX_COMMITS:]

    async def _missing(self, api: _Api, older: str, newer: str, reply: _Reply) -> Exception:
        """Why the compare was a 404: which tag is missing (or the repository)."""
        has_older, has_newer = await asyncio.gather(self._has_tag(api, older), self._has_tag(api, newer))
        if not has_older and not has_newer:
            await self._check_repository(api)
        if not has_older:
            return TagMissing(older)
        if not has_newer:
            return TagMissing(newer)
        return SourceUnavailable(f"GitHub would not compare {older} with {newer}: {reply.message}")

    async def _has_tag(self, api: _Api, tag: str) -> bool:
        reply = await api.get(f"{self._repo}/git/ref/tags/{_quoted(tag)}")
        if reply.status == 404:
            return False
        api.expect(reply, f"GitHub would not show tag {tag}")
        return True

    async def _check_repository(self, api: _Api) -> None:
        """Raises SourceUnavailable when the repository is not there for this token."""
        reply = await api.get(self._repo)
        if reply.status == 404:
            raise SourceUnavailable(f"GitHub shows no repository {self.spec.repository} to this token")
        api.expect(reply, f"GitHub would not show {self.spec.repository}")

    # -- pull requests ----------------------------------------------------------------

    async def _ask_commits(self, api: _Api, commits: Sequence[Commit]
                           ) -> tuple[tuple[Commit, ...], dict[int, PullRequest]]:
        """Ask GitHub for the pull request of (at most MAX_LOOKUPS, newest first)
        commits that name none; the commits with what was learnt, and the
        pull requests found."""
        unnamed = [commit for commit in commits if commit.pull is None][:MAX_LOOKUPS]
        replies = await _each(api, [f"{self._repo}/commits/{commit.sha}/pulls" for commit in unnamed])
        found: dict[str, PullRequest] = {}
        for commit, reply in zip(unnamed, replies):
            listed = reply.body if reply is not None and reply.ok and isinstance(reply.body, list) else []
            merged = [pull for pull in listed if isinstance(pull, dict) and pull.get("merged_at")]
            chosen = next(iter(merged or [pull for pull in listed if isinstance(pull, dict)]), None)
            if chosen is not None and isinstance(chosen.get("number"), int):
                found[commit.sha] = _pull(chosen)
        learnt = tuple(replace(commit, pull=found[commit.sha].number) if commit.sha in found else commit
                       for commit in commits)
        return learnt, {pull.number: pull for pull in found.values()}

    async def _describe(self, api: _Api, numbers: Sequence[int]) -> dict[int, PullRequest]:
        """Pull requests ``numbers`` as GitHub describes them (those it answers for)."""
        replies = await _each(api, [f"{self._repo}/pulls/{number}" for number in numbers])
        return {number: _pull(reply.body) for number, reply in zip(numbers, replies)
                if reply is not None and reply.ok and isinstance(reply.body, dict)
                and reply.body.get("number") == number}

    # -- plumbing ---------------------------------------------------------------------

    @asynccontextmanager
    async def _api(self) -> AsyncIterator[_Api]:
        """The API for one call, under the overall timeout."""
        try:
            async with self._session_in_use() as session, asyncio.timeout(self.timeout):
                yield _Api(session, self.spec, self._token)
        except TimeoutError:
            raise SourceUnavailable(f"GitHub timed out after {format_duration(self.timeout)}") from None

    @asynccontextmanager
    async def _session_in_use(self) -> AsyncIterator[aiohttp.ClientSession]:
        if self._session is not None:
            yield self._session
        else:
            async with aiohttp.ClientSession() as session:
                yield session


@dataclass
class _Reply:
    status: int
    body: Any
    headers: Mapping[str, str]
    last_url: str | None = None  # the Link header's rel="last"

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """GitHub's ``message``, on one line."""
        text = self.body.get("message") if isinstance(self.body, dict) else None
        return " ".join(str(text or "").split())[:200] or f"HTTP {self.status}"

    def rate_limited(self) -> bool:
        if self.status == 429:
            return True
        return self.status == 403 and (self.headers.get("x-ratelimit-remaining") == "0"
                                       or "retry-after" in self.headers or "rate limit" in self.message.lower())

    def rate_limit_reset(self) -> float | None:
        """Seconds until GitHub takes requests again, where it says."""
        retry_after, reset = _number(self.headers.get("retry-after")), _number(self.headers.get("x-ratelimit-reset"))
        if retry_after is not None:
            return retry_after
        return max(0.0, reset - time.time()) if reset is not None else None


class _Api:
    """GET with GitHub's headers; answers that say GitHub cannot be asked now
    become SourceUnavailable, the rest are the caller's to read."""

    def __init__(self, session: aiohttp.ClientSession, spec: GitHubChanges, token: str | None) -> None:
        self._session = session
        self._spec = spec
        self._base = URL(spec.api_url.rstrip("/"))
        self._headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION,
                         "User-Agent": USER_AGENT}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def serves(self, url: str) -> bool:
        """Whether ``url`` is on the API's own origin (where the token may go)."""
        there = URL(url)
        return (there.scheme, there.host, there.port) == (self._base.scheme, self._base.host, self._base.port)

    async def get(self, path_or_url: str, params: dict[str, str] | None = None) -> _Reply:
        """GET a path under the API's URL (or a full URL from a Link header).

        Raises:
            SourceUnavailable: no answer, a 5xx, a rate limit, a refused token.
        """
        absolute = path_or_url.startswith(("http://", "https://"))
        url = URL(path_or_url, encoded=True) if absolute else URL(str(self._base) + path_or_url, encoded=True)
        try:
            async with self._session.get(url, params=params, headers=self._headers) as response:
                last_link = response.links.get("last")
                reply = _Reply(response.status, _json(await response.read()), response.headers,
                               str(last_link["url"]) if last_link is not None else None)
        except aiohttp.ClientError as error:
            raise SourceUnavailable(f"cannot reach GitHub ({error or type(error).__name__})") from None
        self._refuse_unavailable(reply)
        return reply

    def expect(self, reply: _Reply, what: str) -> dict[str, Any]:
        """The body of a 2xx answer that should be an object.

        Raises:
            SourceUnavailable: any other answer (``what``, then GitHub's message).
        """
        if not reply.ok or not isinstance(reply.body, dict):
            raise SourceUnavailable(f"{what}: {reply.message} (HTTP {reply.status})")
        return reply.body

    def _refuse_unavailable(self, reply: _Reply) -> None:
        if reply.rate_limited():
            reset = reply.rate_limit_reset()
            raise SourceUnavailable("GitHub rate limit reached" +
                                    (f" (resets in {format_duration(reset)})" if reset is not None else ""))
        if reply.status >= 500:
            raise SourceUnavailable(f"GitHub answered {reply.status}")
        if reply.status == 401:
            raise SourceUnavailable(f"GitHub refused the token in {self._spec.token_env} ({reply.message})")
        if reply.status == 403:
            raise SourceUnavailable(f"GitHub answered 403: {reply.message}")


async def _each(api: _Api, paths: Sequence[str]) -> list[_Reply | None]:
    """GET each of ``paths``, CONCURRENCY at a time; None where GitHub did not answer."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(path: str) -> _Reply | None:
        async with limit:
            try:
                return await api.get(path)
            except SourceUnavailable as error:
                log.warning("GitHub lookup %s failed: %s", path, error)
                return None

    return list(await asyncio.gather(*(one(path) for path in paths)))


def _commit(item: Mapping[str, Any]) -> Commit:
    title = _message(item).split("\n", 1)[0].strip()
    login = (item.get("author") or {}).get("login")
    name = ((item.get("commit") or {}).get("author") or {}).get("name")
    return Commit(sha=item["sha"], title=title, author=login or name or "unknown", pull=pull_of(title))


def _message(item: Mapping[str, Any]) -> str:
    return str((item.get("commit") or {}).get("message") or "")


def _pull(body: Mapping[str, Any]) -> PullRequest:
    return PullRequest(number=body["number"], title=str(body.get("title") or ""),
                       author=(body.get("user") or {}).get("login"), url=body.get("html_url"))


def _newest_pages(last_url: str | None, page_size: int, total: Any) -> list[str]:
    """The URLs of pages 2 to last that hold the newest MAX_COMMITS commits
    (GitHub pages a comparison oldest first, ``page_size`` a page), made from
    the ``last`` page's URL as GitHub gave it."""
    if last_url is None or page_size <= 0:
        return []
    last = URL(last_url)
    last_page = _page_of(last_url)
    if not isinstance(total, int):
        total = last_page * page_size
    first_needed = max(2, (total - MAX_COMMITS) // page_size + 1)
    return [str(last.update_query(page=str(number))) for number in range(first_needed, last_page + 1)]


def _page_of(url: str) -> int:
    try:
        return int(URL(url).query.get("page", "1"))
    except ValueError:
        return 1


def _web_url(comparison: Mapping[str, Any]) -> str | None:
    """The repository's page, from the compare's ``html_url``."""
    html_url = comparison.get("html_url")
    if isinstance(html_url, str) and "/compare/" in html_url:
        return html_url.split("/compare/", 1)[0]
    return None


def _quoted(ref: str) -> str:
    return quote(ref, safe="/")


def _json(raw: bytes) -> Any:
    """The body as JSON; None when it is not (a proxy's HTML error page)."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
