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
from bot.slack.status import home_view, stats_reply, status_reply
from store import Deploy, Store


class StatusReplies:
    def __init__(self, config: Config, store: Store, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.store = store
        self.clock = clock

    def status(self, service: str | None) -> dict[str, Any]:
        """The status matrix, for all services or one.

        Raises:
            UnknownService: ``service`` is not in the config.
        """
        return status_reply(self.config, self.store, self.clock(), service)

    def show(self, deploy: Deploy) -> dict[str, Any]:
        """``/deploy show``: the deploy's record, with its rollout's stages and
        measurements, and what it ships (every pull request and commit, as
        far as a reply holds)."""
        return {"text": record_text(deploy, read_rollout(self.store, self.config, deploy.id))}

    def home(self) -> dict[str, Any]:
        """The App Home view (the same for everyone)."""
        return home_view(self.config, self.store, self.clock())

    async def stats(self, service: str | None, days: int) -> dict[str, Any]:
        """The DORA figures over ``days``, computed off the event loop.

        Raises:
            UnknownService: ``service`` is not in the config.
        """
        now, path = self.clock(), self.store.path
        if path is None:  # an in-memory store has no second connection to offer
            return stats_reply(self.config, self.store, now, service, days)
        return await asyncio.to_thread(_stats_in_own_connection, path, self.config, now, service, days)


def _stats_in_own_connection(path: str, config: Config, now: datetime, service: str | None,
                             days: int) -> dict[str, Any]:
    reader = Store.open(path)
    try:
        return stats_reply(config, reader, now, service, days)
    finally:
        reader.close()
