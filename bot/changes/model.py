"""The change set of one deploy, as the sources hand it out and the deploy
record keeps it (``deploys.changes``, JSON)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

FORWARD, BACKWARD, FIRST, SAME = "forward", "backward", "first", "same"
SQUASHED_PULL = re.compile(r"\(#(\d+)\)\s*$")  # "Fix the thing (#123)", GitHub's squash-merge title
MERGED_PULL = re.compile(r"^Merge pull request #(\d+) from (\S+)")  # a merge commit's first line
# what `git check-ref-format` refuses in a ref name (besides the checks in valid_tag)
BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(?:/|$)")


class SourceUnavailable(Exception):
    """The source could not be asked (unreachable, refused, timed out); the
    message says why, in a few words."""


class TagMissing(Exception):
    """A tag the comparison needs does not exist in the source."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"tag {tag} does not exist")
        self.tag = tag


@dataclass(frozen=True)
class Commit:
    sha: str  # full
    title: str  # the first line of its message
    author: str  # login where the source knows one, else the author's name
    pull: int | None = None  # the pull request it came from, where known

    @property
    def short(self) -> str:
        return self.sha[:7]


@dataclass(frozen=True)
class PullRequest:
    number: int
    title: str
    author: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class ChangeSet:
    """What going from ``base`` (live) to ``head`` (requested) changes.

    ``direction``: ``forward`` (the commits come in), ``backward`` (a
    downgrade or rollback: the commits are taken out), ``first`` (nothing
    live: no comparison), ``same``."""

    base: str | None  # the live version's tag
    head: str  # the requested version's tag
    direction: str
    commits: tuple[Commit, ...] = ()
    pulls: tuple[PullRequest, ...] = ()
    files: tuple[str, ...] = ()  # paths the range touches
    compare_url: str | None = None
    total_commits: int | None = None  # as the source counted them (may exceed len(commits))
    migration_files: tuple[str, ...] = field(default=())  # files matching the service's migration_paths

    @property
    def commit_count(self) -> int:
        return self.total_commits if self.total_commits is not None else len(self.commits)

    @property
    def people(self) -> list[str]:
        """Everyone whose commits or pull requests are in the range, first seen first."""
        seen = dict.fromkeys([*(p.author for p in self.pulls if p.author), *(c.author for c in self.commits)])
        return [person for person in seen if person]

    def as_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ChangeSet:
        values = dict(record)
        values["commits"] = tuple(Commit(**c) for c in values.get("commits", ()))
        values["pulls"] = tuple(PullRequest(**p) for p in values.get("pulls", ()))
        values["files"] = tuple(values.get("files", ()))
        values["migration_files"] = tuple(values.get("migration_files", ()))
        return cls(**values)


def pull_of(title: str) -> int | None:
    """The pull request a commit's first line names: a squash merge's
    ``(#123)`` suffix or a merge commit's ``Merge pull request #123``."""
    if match := MERGED_PULL.match(title):
        return int(match.group(1))
    if match := SQUASHED_PULL.search(title):
        return int(match.group(1))
    return None


def pull_title(message: str) -> str:
    """A pull request's title as the commit that merged it tells it: a merge
    commit's second paragraph (GitHub puts the title there), a squash
    commit's first line without its ``(#123)``."""
    title, _, rest = message.strip().partition("\n")
    if MERGED_PULL.match(title):
        body = rest.strip()
        return body.splitlines()[0].strip() if body else title
    return SQUASHED_PULL.sub("", title).rstrip()


def told_pull(number: int, commits: Sequence[Commit], messages: Mapping[str, str],
              repository_url: str | None) -> PullRequest:
    """Pull request ``number`` as the commits of the range tell it (``number``
    must be some commit's ``pull``): the title from the commit that names it
    (``messages`` holds full commit messages by sha; see :func:`pull_title`);
    the author of a squash commit, or of a merged branch's first commit (a
    merge commit's author merged it, and may not have written it); the URL
    under ``repository_url`` (GitHub's ``…/pull/123``) when there is one.
    ``commits`` come newest first."""
    mine = [commit for commit in commits if commit.pull == number]
    naming = next((commit for commit in mine if pull_of(commit.title) == number), mine[0])
    if MERGED_PULL.match(naming.title):
        branch = [commit for commit in mine if commit is not naming]
        author = branch[-1].author if branch else None
    else:
        author = naming.author
    return PullRequest(number=number, title=pull_title(messages.get(naming.sha) or naming.title), author=author,
                       url=f"{repository_url.rstrip('/')}/pull/{number}" if repository_url else None)


def through_merges(commits: Sequence[Commit], parents: Mapping[str, Sequence[str]]) -> tuple[Commit, ...]:
    """``commits`` with ``pull`` filled in for those a merge commit of a
    known pull request brought in: the commits on its second parent's side
    that its first parent does not have. ``parents`` holds each commit of
    the range (and only those) with its parents' shas. A commit that
    already names its pull keeps it.

    Merges are taken oldest first, so that a pull merged into another
    pull's branch keeps its own commits."""
    pulls = {commit.sha: commit.pull for commit in commits}
    merges = [commit for commit in commits
              if commit.pull is not None and MERGED_PULL.match(commit.title) and len(parents.get(commit.sha, ())) > 1]
    # a merge's ancestors come before it: fewer ancestors, older
    for merge in sorted(merges, key=lambda commit: len(_ancestors([commit.sha], parents))):
        mainline = _ancestors(parents[merge.sha][:1], parents)
        for sha in _ancestors(parents[merge.sha][1:], parents, stop=mainline):
            if sha in pulls and pulls[sha] is None:
                pulls[sha] = merge.pull
    return tuple(commit if pulls[commit.sha] == commit.pull else replace(commit, pull=pulls[commit.sha])
                 for commit in commits)


def _ancestors(starts: Iterable[str], parents: Mapping[str, Sequence[str]],
               stop: AbstractSet[str] = frozenset()) -> set[str]:
    """The commits of the range reachable from ``starts`` (themselves
    included), not walking into ``stop``."""
    seen: set[str] = set()
    todo = [sha for sha in starts if sha in parents and sha not in stop]
    while todo:
        sha = todo.pop()
        if sha not in seen:
            seen.add(sha)
            todo.extend(parent for parent in parents[sha] if parent in parents and parent not in stop)
    return seen


def valid_tag(tag: str) -> bool:
    """Whether ``tag`` can be a git tag's name (``git check-ref-format``'s
    rules, roughly): sources treat any other name as a missing tag rather
    than put it in a command line or a URL."""
    return (bool(tag) and len(tag) <= 250 and not tag.startswith(("-", "/", ".")) and not tag.endswith(("/", "."))
            and tag != "@" and BAD_REF.search(tag) is None)


def migration_files(files: Iterable[str], globs: Iterable[str]) -> tuple[str, ...]:
    """The ``files`` (repository paths) that match one of ``globs``, in order.

    The globs read as in ``.gitignore``: ``*`` and ``?`` stay within one
    path segment, ``**`` spans any number of them (``db/migrate/**`` is
    everything under db/migrate, ``**/migrations/*.py`` is any migrations
    folder's Python files), a trailing ``/`` means everything under that
    folder, and a glob without a ``/`` matches a file's name at any depth
    (``*.sql``)."""
    patterns = [_glob_pattern(glob) for glob in globs if glob.strip("/")]
    return tuple(path for path in files if any(pattern.fullmatch(path) for pattern in patterns))


def _glob_pattern(glob: str) -> re.Pattern[str]:
    glob = glob.strip()
    if glob.endswith("/"):
        glob += "**"
    if "/" not in glob:
        glob = "**/" + glob
    parts = re.split(r"(\*\*/|/\*\*$|\*\*|\*|\?|\[[^\]/]+\])", glob.lstrip("/"))
    translated = {"**/": "(?:.*/)?", "/**": "/.*", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    regex = "".join(translated.get(part) or (_char_class(part) if part.startswith("[") else re.escape(part))
                    for part in parts)
    return re.compile(regex)


def _char_class(part: str) -> str:
    inner = part[1:-1]
    if inner.startswith("!"):
        inner = "^" + inner[1:]
    return "[" + inner.replace("\\", "\\\\") + "]"


class ChangeSource(Protocol):
    """Where changes are read: GitHub (``bot.changes.github``) or a git mirror (``bot.changes.git``)."""

    async def tag_exists(self, tag: str) -> bool:
        """Whether ``tag`` exists. Raises SourceUnavailable."""
        ...

    async def compare(self, older: str, newer: str) -> ChangeSet:
        """The commits in tag ``newer`` that are not in tag ``older`` (as a
        ``forward`` change set from ``older`` to ``newer``), their pull
        requests and files. Raises TagMissing, SourceUnavailable."""
        ...
