"""The App Home tab: what runs where and the last deploys, published for
each person who opens it and republished when a deploy changes state.

Slack sends ``app_home_opened`` every time someone opens the tab, so the set
of people to keep current lives in memory: after a restart it refills as
people come back. Republishing is coalesced: however many deploy changes
land at once, each person's tab is published once per burst, after the
acks in progress, and a failed publish is logged, never raised into the
deploy that caused it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.events import DeployChanged, DeployPosted, LocksChanged
from bot.runtime.tasks import BackgroundTasks

log = logging.getLogger(__name__)


class HomeTabs:
    """Keeps the Home tab of everyone who opened it since start current."""

    def __init__(self, client: AsyncWebClient, build: Callable[[], dict[str, Any]], tasks: BackgroundTasks) -> None:
        self._client = client
        self._build = build  # the view is the same for everyone: built once per burst
        self._tasks = tasks
        self._viewers: set[str] = set()
        self._dirty: set[str] = set()
        self._publishing = False

    def opened(self, user: str) -> None:
        self._viewers.add(user)
        self._mark({user})

    def changed(self, event: DeployPosted | DeployChanged | LocksChanged) -> None:
        """Something the tab shows changed (a deploy, a lock, a block): cheap,
        never raises, publishes later."""
        self._mark(self._viewers)

    def _mark(self, users: set[str]) -> None:
        if not users:
            return
        self._dirty |= users
        if not self._publishing:
            self._publishing = True
            self._tasks.spawn(self._publish_until_clean(), name="publish-home-tabs")

    async def _publish_until_clean(self) -> None:
        try:
            while self._dirty:
                await self._tasks.ack_first.wait_turn()
                users, self._dirty = sorted(self._dirty), set()
                try:
                    view = self._build()
                except Exception:  # noqa: BLE001 — a view that cannot be built must not stop the next try
                    log.exception("could not build the App Home view for %d person(s)", len(users))
                    return
                for user in users:
                    await self._publish(user, view)
        finally:
            self._publishing = False

    async def _publish(self, user: str, view: dict[str, Any]) -> None:
        try:
            await self._client.views_publish(user_id=user, view=view)
        except SlackApiError as exc:
            log.error("views.publish for %s failed: %s", user, exc.response.get("error"))
        except Exception:  # noqa: BLE001 — e.g. Slack unreachable: the next change tries again
            log.exception("views.publish for %s failed", user)
