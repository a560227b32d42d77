"""What ``/deploy status``, ``/deploy stats``, ``/deploy show`` and the App
Home show, read from the store and drawn by ``bot.slack.status`` (and
``bot.slack.mrkdwn``).

The stats read up to a year of history: they are worked out in a thread,
on a SQLite connection of their own, so the event loop keeps acking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bot.config import Config
from bot.slack.mrkdwn import record_text
from bot.slack.ship_report import read_rollout
from bot.slack.status import home_view, owned_services, owners_text, stats_reply, status_reply
from store import Deploy, Store


class StatusReplies:
    def __init__(self, config: Config, store: Store, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        # person -> the owner whose services their App Home tab shows (``/deploy home --owner``);
        # kept in memory, as the tab's viewers are (bot.slack.home.HomeTabs): a restart shows everything again
        self._home_owners: dict[str, str] = {}

    def status(self, service: str | None, owner: str | None = None) -> dict[str, Any]:
        """The status matrix, for all services, one, or an owner's.

        Raises:
            UnknownService: ``service`` is not in the config.
            SlipwayError: ``owner`` owns no service (or not ``service``).
        """
        return status_reply(self.config, self.store, self.clock(), service, owner)

    def show(self, deploy: Deploy) -> dict[str, Any]:
        """``/deploy show``: the deploy's record, with its rollout's stages and
        measurements, and what it ships (every pull request and commit, as
        far as a reply holds)."""
        return {"text": record_text(deploy, read_rollout(self.store, self.config, deploy.id))}

    def home(self, user: str | None = None) -> dict[str, Any]:
        """The App Home view of ``user``: every service, or those of the owner they chose."""
        owner = self._home_owners.get(user) if user else None
        return home_view(self.config, self.store, self.clock(), owner)

    def choose_home_owner(self, user: str, owner: str | None) -> str:
        """``/deploy home [--owner @team]``: which services ``user``'s App Home
        shows from now on (None: every service); what to tell them.

        Raises:
            SlipwayError: ``owner`` owns no service.
        """
        if owner is None:
            self._home_owners.pop(user, None)
            return "Your App Home tab shows every service again."
        owned = owned_services(self.config, owner)
        self._home_owners[user] = owner
        return (f"Your App Home tab now shows only the services of {owners_text([owner])}: {', '.join(owned)}. "
                "`/deploy home` shows every service again.")

    async def stats(self, service: str | None, days: int, owner: str | None = None) -> dict[str, Any]:
        """The DORA figures over ``days``, computed off the event loop.

        Raises:
            UnknownService: ``service`` is not in the config.
            SlipwayError: ``owner`` owns no service (or not ``service``).
        """
        now, path = self.clock(), self.store.path
        if path is None:  # an in-memory store has no second connection to offer
            return stats_reply(self.config, self.store, now, service, days, owner)
        return await asyncio.to_thread(_stats_in_own_connection, path, self.config, now, service, days, owner)


def _stats_in_own_connection(path: str, config: Config, now: datetime, service: str | None,
                             days: int, owner: str | None) -> dict[str, Any]:
    reader = Store.open(path)
    try:
        return stats_reply(config, reader, now, service, days, owner)
    finally:
        reader.close()
