"""Who the bot is, for bolt's authorization, without asking Slack on the
request's path.

Given a token, bolt calls ``auth.test`` before every request until one call
succeeds; with Slack unreachable that makes even ``/deploy help`` wait and
answer 500. Slipway is one bot in one workspace and holds its token: this
answers bolt at once with that token, and learns the bot's ids from one
``auth.test`` in the background (again after a failure, on the next request).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from slack_bolt.authorization import AuthorizeResult
from slack_sdk.web.async_client import AsyncWebClient

from bot.runtime.tasks import BackgroundTasks
from bot.slack.failures import failure_of

log = logging.getLogger(__name__)


class BotIdentity:
    def __init__(self, client: AsyncWebClient, tasks: BackgroundTasks) -> None:
        self._client = client
        self._tasks = tasks
        self._known: dict[str, str | None] | None = None  # auth.test's bot_id, user_id, team_id
        self._asking = False

    def bolt_authorize(self) -> Callable[..., Awaitable[AuthorizeResult]]:
        """bolt's ``authorize`` (a plain function: bolt passes arguments by their names)."""
        async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            return self.authorize(enterprise_id, team_id)
        return authorize

    def authorize(self, enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        """The bot's token, and its ids once known."""
        if self._known is None and not self._asking:
            self._asking = True
            self._tasks.spawn(self._learn(), name="auth-test")
        known = self._known or {}
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id or known.get("team_id"),
                               bot_token=self._client.token, bot_id=known.get("bot_id"),
                               bot_user_id=known.get("user_id"))

    async def _learn(self) -> None:
        try:
            answer = await self._client.auth_test()
            self._known = {"bot_id": answer.get("bot_id"), "user_id": answer.get("user_id"),
                           "team_id": answer.get("team_id")}
        except Exception as error:  # noqa: BLE001 — asked again on a later request
            if failure_of(error) is None:
                raise
            log.warning("auth.test failed (%s); Slipway answers on its token and asks again later",
                        failure_of(error))
        finally:
            self._asking = False
