"""What the deploy domain needs from the outside, said as protocols.

The domain never imports Slack: it is handed objects that do these things
(in Slipway, ``bot.slack.deploy_messages.DeployMessages`` and
``bot.slack.directory.Directory``, wired in ``bot.runtime.composition``).
"""

from __future__ import annotations

from typing import Protocol

from store import Deploy


class DeployViews(Protocol):
    """Where people see deploys: the deploy's message, its thread, direct messages."""

    async def announce(self, deploy: Deploy) -> Deploy:
        """Show a new deploy (its message), returning it with where it was posted.

        Raises:
            SlipwayError: it could not be shown; the request was cancelled and the message says why.
        """

    def show(self, deploy: Deploy) -> None:
        """Queue the deploy's message (once, however often asked), without waiting for it."""

    # The three below queue what they are given (durably, in the caller's
    # transaction when one is open) and return at once: the domain never
    # waits on, nor fails because of, the place people look.

    def thread(self, deploy: Deploy, text: str) -> None:
        """A note under the deploy's message."""

    def direct(self, user: str, text: str) -> None:
        """A direct message to a person."""

    def post(self, text: str) -> None:
        """A message in the deploy channel, outside any thread."""


class People(Protocol):
    """Who is who: user ids and usergroup handles (``@sre``)."""

    async def is_member(self, user_id: str, entries: list[str]) -> bool:
        """Whether ``user_id`` is one of ``entries`` (ids, or members of the handles)."""

    async def mention(self, entry: str) -> str:
        """How to mention an id or a handle in a message."""

    async def mentions(self, entries: list[str] | tuple[str, ...]) -> str:
        """Several entries, mentioned and joined for a sentence."""
