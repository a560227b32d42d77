"""The change set of one deploy, as the sources hand it out and the deploy
record keeps it (``deploys.changes``, JSON)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

FORWARD, BACKWARD, FIRST, SAME = "forward", "backward", "first", "same"
SQUASHED_PULL = re.compile(r"\(#(\d+)\)\s*$")  # "Fix the thing (#123)", GitHub's squash-merge title
MERGED_PULL = re.compile(r"^Merge pull request #(\d+) from (\S+)")  # a merge commit's first line


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
