"""Who is who: resolving usergroup handles (``@sre``) to their members.

Membership comes from the Slack Web API (``usergroups.list`` and
``usergroups.users.list``, scope ``usergroups:read``) and is cached for a
few minutes, so a burst of clicks costs one lookup, not one per click.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)


class Directory:
    """Resolves approver lists (user ids and ``@handles``) against Slack."""

    def __init__(self, client: AsyncWebClient, ttl_seconds: float = 300.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._groups: dict[str, str] = {}  # handle -> usergroup id
        self._groups_at = float("-inf")
        self._members: dict[str, tuple[float, frozenset[str]]] = {}
        self._listing = asyncio.Lock()  # concurrent misses share one usergroups.list

    async def is_member(self, user_id: str, entries: list[str]) -> bool:
        """Whether ``user_id`` is listed in ``entries`` directly or through a
        usergroup handle. An unknown handle counts as an empty group (and is
        logged), so a typo never grants anybody anything."""
        if user_id in entries:
            return True
        for entry in entries:
            if entry.startswith("@") and user_id in await self.members(entry[1:]):
                return True
        return False

    async def members(self, handle: str) -> frozenset[str]:
        """User ids in the usergroup with ``handle`` (without the ``@``)."""
        group_id = await self._group_id(handle)
        if group_id is None:
            return frozenset()
        cached = self._members.get(group_id)
        if cached and self._monotonic() - cached[0] < self._ttl:
            return cached[1]
        try:
            response = await self._client.usergroups_users_list(usergroup=group_id)
        except SlackApiError as exc:
            log.warning("cannot list members of @%s (%s); it grants nobody anything this time",
                        handle, exc.response.get("error"))
            return frozenset()
        members = frozenset(response.get("users", []))
        self._members[group_id] = (self._monotonic(), members)
        return members

    async def _group_id(self, handle: str) -> str | None:
        async with self._listing:
            return await self._group_id_locked(handle)

    async def _group_id_locked(self, handle: str) -> str | None:
        if self._monotonic() - self._groups_at >= self._ttl:
            try:
                response = await self._client.usergroups_list()
            except SlackApiError as exc:
                log.warning("cannot list usergroups (%s); @%s resolves to nobody", exc.response.get("error"), handle)
                return None
            self._groups = {g["handle"]: g["id"] for g in response.get("usergroups", [])}
            self._groups_at = self._monotonic()
        if handle not in self._groups:
            log.warning("usergroup @%s does not exist in this workspace; it resolves to nobody", handle)
        return self._groups.get(handle)

    async def mention(self, entry: str) -> str:
        """How Slack notifies ``entry``: ``<@U…>`` for a user, ``<!subteam^S…>``
        for a usergroup handle (plain ``@handle`` text notifies nobody)."""
        if not entry.startswith("@"):
            return f"<@{entry}>"
        group_id = await self._group_id(entry[1:])
        return f"<!subteam^{group_id}>" if group_id else entry

    async def mentions(self, entries: list[str] | tuple[str, ...]) -> str:
        """People and groups as Slack links: ``<@U0ALICE>, <!subteam^S0SRE|@sre>``
        (the ``|@sre`` label is what a client shows when it cannot resolve the
        group; an unknown handle stays plain text)."""
        shown = []
        for entry in entries:
            linked = await self.mention(entry)
            shown.append(f"{linked[:-1]}|{entry}>" if linked.startswith("<!subteam^") else linked)
        return ", ".join(shown)
