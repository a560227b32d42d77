"""Semantic versions as people type them (``v2.7.0`` or ``2.7.0``)."""

from __future__ import annotations

from dataclasses import dataclass

import semver

from bot.errors import InvalidVersion

# Long enough for any real tag (2.7.0-rc.1+build.20261123.abcdef0), short
# enough that a version always fits Block Kit's limits wherever it is shown.
MAX_VERSION_LENGTH = 64


@dataclass(frozen=True)
class Version:
    """A parsed version: ``normalised`` is stored, ``display`` is shown."""

    parsed: semver.Version
    prefixed: bool  # the person typed a leading "v"

    @property
    def normalised(self) -> str:
        return str(self.parsed)

    @property
    def display(self) -> str:
        return ("v" if self.prefixed else "") + self.normalised


def parse_version(text: str) -> Version:
    """Parse ``text`` as a semantic version, with or without a leading ``v``.

    Raises:
        InvalidVersion: the text is not MAJOR.MINOR.PATCH[-pre][+build].
    """
    if len(text) > MAX_VERSION_LENGTH:
        raise InvalidVersion(f"That version is {len(text)} characters long; Slipway takes at most "
                             f"{MAX_VERSION_LENGTH}.")
    prefixed = text[:1] in ("v", "V")
    bare = text[1:] if prefixed else text
    try:
        return Version(semver.Version.parse(bare), prefixed)
    except (ValueError, TypeError):
        from bot.slack.mrkdwn import escape  # not at the top: mrkdwn needs bump_kind from here

        raise InvalidVersion(
            f"`{escape(text)}` is not a semantic version — use MAJOR.MINOR.PATCH, e.g. `v2.7.0` or `2.7.0-rc.1`."
        ) from None


def bump_kind(live: str | None, new: str) -> str:
    """How ``new`` moves from ``live``: major, minor, patch, prerelease,
    build, initial (nothing live) or downgrade/same."""
    if live is None:
        return "initial"
    old_v, new_v = semver.Version.parse(live), semver.Version.parse(new)
    comparison = new_v.compare(old_v)
    if comparison < 0:
        return "downgrade"
    if comparison == 0:
        return "same" if new_v.build == old_v.build else "build"
    if new_v.major != old_v.major:
        return "major"
    if new_v.minor != old_v.minor:
        return "minor"
    if new_v.patch != old_v.patch:
        return "patch"
    return "prerelease"
