"""Changes read from a local git repository (a ``changes.git`` spec): a bare
mirror or a work tree on Slipway's disk, of any git host.

Slipway runs the ``git`` program, never a shell, with the tags as
arguments of their own (``refs/tags/<tag>`` after ``--end-of-options``,
and only names ``git check-ref-format`` would accept):

* ``git fetch --tags --prune`` first, when the spec says ``fetch: true``
  (two lookups at once share one fetch);
* ``git rev-parse -q --verify refs/tags/<tag>^{commit}``: whether a tag
  exists;
* ``git log older..newer``: the commits (at most ``MAX_COMMITS``, newest
  first; ``git rev-list --count`` counts them when there are more), each
  with its author's name and first line; the pull request a commit's first
  line names (``Merge pull request #12 from …``, ``Add x (#13)``), and the
  commits a merge commit of a pull request brought in;
* ``git diff --name-only older...newer``: the files changed since the merge
  base.

A pull request's title is the merge commit's second paragraph, or the
squash commit's first line without ``(#13)``. ``web_url`` makes the
compare link (``{web_url}/compare/v1.0.0...v1.1.0``) and the pull requests'
links (``{web_url}/pull/12``).

Each call is bounded by ``timeout`` as a whole: a git still running then
is killed (its process group: a fetch's helpers too) and the call raises
:class:`SourceUnavailable` (``git timed out after 10s``), as it does when
git cannot run or fails (``git fetch in /srv/mirrors/api.git failed: …``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import quote

from bot.changes.model import (
    FORWARD,
    ChangeSet,
    Commit,
    SourceUnavailable,
    TagMissing,
    pull_of,
    through_merges,
    told_pull,
    valid_tag,
)
from bot.config import GitChanges
from bot.durations import format_duration

MAX_COMMITS = 1000  # a change set keeps at most this many commits; total_commits still counts them all
FIELD = "\x1f"
LOG_FORMAT = "--format=%H%x1f%P%x1f%an%x1f%B"  # with -z: one NUL-ended record per commit
# where git would look for another repository than the one named
LOCATING = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
            "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES")


class GitSource:
    """A :class:`~bot.changes.model.ChangeSource` on a local git repository."""

    def __init__(self, spec: GitChanges, *, timeout: float = 10.0, git: str = "git") -> None:
        """``timeout`` bounds each call as a whole (the fetch included); ``git``
        is the program to run."""
        self.spec = spec
        self.timeout = timeout
        self._git = git
        self._env = {name: value for name, value in os.environ.items() if name not in LOCATING}
        self._env |= {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}  # never wait on a password; messages in English
        self._fetching = asyncio.Lock()
        self._fetched_at: float | None = None  # when the last successful fetch started (monotonic)

    async def tag_exists(self, tag: str) -> bool:
        """Whether the repository has tag ``tag`` (after a fetch, if the spec asks).

        Raises:
            SourceUnavailable: git could not run, failed, or took too long.
        """
        if not valid_tag(tag):
            return False
        async with self._deadline():
            await self._fetch_if_asked()
            return await self._has_tag(tag)

    async def compare(self, older: str, newer: str) -> ChangeSet:
        """The commits in tag ``newer`` that tag ``older`` lacks, their pull
        requests and the files changed since the merge base, as a ``forward``
        change set.

        Raises:
            TagMissing: ``older`` or ``newer`` is not a tag of the repository.
            SourceUnavailable: git could not run, failed, or took too long.
        """
        for tag in (older, newer):
            if not valid_tag(tag):
                raise TagMissing(tag)
        async with self._deadline():
            await self._fetch_if_asked()
            for tag, present in zip((older, newer), await asyncio.gather(self._has_tag(older), self._has_tag(newer))):
                if not present:
                    raise TagMissing(tag)
            span = f"refs/tags/{older}..refs/tags/{newer}"
            logged, changed = await asyncio.gather(
                self._output("log", "-z", LOG_FORMAT, "--encoding=UTF-8", "--no-show-signature",
                             f"--max-count={MAX_COMMITS}", "--end-of-options", span),
                self._output("diff", "--name-only", "-z", "--no-ext-diff", "--no-relative", "--end-of-options",
                             f"refs/tags/{older}...refs/tags/{newer}"))
            records = _records(logged)
            total = len(records)
            if total >= MAX_COMMITS:
                total = int(await self._output("rev-list", "--count", "--end-of-options", span))
        parents = {sha: parent_shas for sha, parent_shas, _, _ in records}
        messages = {sha: message for sha, _, _, message in records}
        commits = through_merges([_commit(sha, author, message) for sha, _, author, message in records], parents)
        numbers = dict.fromkeys(commit.pull for commit in commits if commit.pull is not None)
        web_url = self.spec.web_url.rstrip("/") if self.spec.web_url else None
        return ChangeSet(base=older, head=newer, direction=FORWARD, commits=commits,
                         pulls=tuple(told_pull(number, commits, messages, web_url) for number in numbers),
                         files=tuple(path for path in changed.split("\0") if path),
                         compare_url=f"{web_url}/compare/{quote(older)}...{quote(newer)}" if web_url else None,
                         total_commits=total)

    # -- git --------------------------------------------------------------------------

    async def _has_tag(self, tag: str) -> bool:
        status, _, error = await self._run("rev-parse", "-q", "--verify", "--end-of-options",
                                           f"refs/tags/{tag}^{{commit}}")
        if status not in (0, 1):
            raise self._failed("rev-parse", error)
        return status == 0

    async def _fetch_if_asked(self) -> None:
        """``git fetch --tags --prune`` when the spec asks; a fetch that began
        after this call did is as good as this call's own."""
        if not self.spec.fetch:
            return
        asked_at = time.monotonic()
        async with self._fetching:
            if self._fetched_at is not None and self._fetched_at >= asked_at:
                return
            started_at = time.monotonic()
            await self._output("fetch", "--quiet", "--tags", "--prune", "--recurse-submodules=no")
            self._fetched_at = started_at

    async def _output(self, *args: str) -> str:
        """What ``git args`` writes, when it succeeds.

        Raises:
            SourceUnavailable: git could not run or failed.
        """
        status, output, error = await self._run(*args)
        if status != 0:
            raise self._failed(args[0], error)
        return output.decode("utf-8", errors="replace")

    async def _run(self, *args: str) -> tuple[int, bytes, bytes]:
        """Run ``git -C path args``: its exit status, output and error output.
        Killed (with its process group) if the call is cancelled or times out."""
        try:
            process = await asyncio.create_subprocess_exec(
                self._git, "-C", self.spec.path, *args, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self._env,
                start_new_session=True)  # its own group (killed whole), and no terminal to prompt on
        except OSError as error:
            raise SourceUnavailable(f"cannot run {self._git} ({error.strerror or error})") from None
        try:
            output, error_output = await process.communicate()
        except BaseException:
            _kill(process)
            await process.wait()
            raise
        assert process.returncode is not None
        return process.returncode, output, error_output

    def _failed(self, command: str, error_output: bytes) -> SourceUnavailable:
        lines = error_output.decode("utf-8", errors="replace").strip().splitlines()
        # git's own verdict (a "fatal:" line) rather than the hints it may add after it
        said = next((line for line in lines if line.startswith(("fatal: ", "error: "))), lines[-1] if lines else "")
        why = said.removeprefix("fatal: ").removeprefix("error: ") or "no reason given"
        return SourceUnavailable(f"git {command} in {self.spec.path} failed: {why[:200]}")

    @asynccontextmanager
    async def _deadline(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except TimeoutError:
            raise SourceUnavailable(f"git timed out after {format_duration(self.timeout)}") from None


def _records(logged: str) -> list[tuple[str, list[str], str, str]]:
    """``git log -z`` records: sha, parents, author name, message."""
    records = []
    for record in logged.split("\0"):
        fields = record.strip("\n").split(FIELD, 3)
        if len(fields) == 4:
            sha, parents, author, message = fields
            records.append((sha, parents.split(), author, message.strip()))
    return records


def _commit(sha: str, author: str, message: str) -> Commit:
    title = message.split("\n", 1)[0].strip()
    return Commit(sha=sha, title=title, author=author or "unknown", pull=pull_of(title))


def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the process's group (it leads its own session)."""
    if process.returncode is not None:
        return
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with suppress(ProcessLookupError):
        process.kill()
