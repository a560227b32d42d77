"""The one place unexpected failures go: logged with a traceback and an id,
and the person is told something went wrong, with that id to quote.

Two doors lead here: bolt's error handler (a failure before the ack) and
:func:`after_ack` (a failure in the work a listener does once Slack has
its answer). Only a request Slack vouched for (signed, or over the Socket
Mode connection) is answered in Slack: the ``user_id`` and ``channel_id`` in
any other body are an attacker's to choose. The HTTP door dispatches a click on a deploy's message inside
that deploy's log context (:func:`deploy_of_click`), so every line it leads
to, a failure's included, names the deploy, in the background work too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.runtime.tasks import BackgroundTasks

log = logging.getLogger("slipway.errors")


AUTHENTICATED = "slipway_authenticated"  # set in a request's context once bolt's own middleware let it through


def register(app: AsyncApp) -> None:
    @app.middleware
    async def authenticated(context: AsyncBoltContext, next: Callable[[], Awaitable[None]]) -> None:
        """Runs after bolt's built-in middleware (request verification
        first): a request that gets here was signed by Slack, or came over
        the Socket Mode connection."""
        context[AUTHENTICATED] = True
        await next()

    @app.error
    async def on_error(error: Exception, body: Any, client: AsyncWebClient, context: AsyncBoltContext) -> None:
        # The body names a user and a channel; only a request Slack vouched for
        # may make Slipway write to them (the HTTP door refuses unsigned ones
        # before bolt sees them; this holds whatever the door).
        if not context.get(AUTHENTICATED) or not isinstance(body, dict):
            await report(error, client, None, None)
            return
        user = _id_of(body.get("user")) or body.get("user_id")
        channel = _id_of(body.get("channel")) or body.get("channel_id")
        await report(error, client, channel if isinstance(channel, str) else None,
                     user if isinstance(user, str) else None)


def _id_of(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else None


def deploy_of_click(body: dict[str, Any]) -> int | None:
    """The deploy a click on one of Slipway's messages is about: every
    deploy element's value starts with the deploy's id (``12``, ``12:2.6.3``)
    and its block id carries it second (``checklist:12:0``)."""
    for action in (body.get("actions") or ())[:1]:
        head = str(action.get("value") or "").partition(":")[0]
        if head.isdigit():
            return int(head)
        parts = str(action.get("block_id") or "").split(":")
        if len(parts) > 1 and parts[1].isdigit():
            return int(parts[1])
    return None


def after_ack(tasks: BackgroundTasks, client: AsyncWebClient, work: Coroutine[Any, Any, None], *,
              channel: str | None, user: str | None, name: str) -> None:
    """Run ``work`` in the background, reporting any unexpected failure."""

    async def guarded() -> None:
        try:
            await work
        except Exception as error:  # noqa: BLE001 — every failure is logged and told, none vanishes
            await report(error, client, channel, user)

    tasks.spawn(guarded(), name=name)


async def report(error: BaseException, client: AsyncWebClient, channel: str | None, user: str | None) -> None:
    error_id = uuid.uuid4().hex[:8]
    log.error("unhandled error %s", error_id, exc_info=error)
    if not (user and channel):
        return
    try:
        await client.chat_postEphemeral(
            channel=channel, user=user,
            text=f"Something went wrong on Slipway's side (error id `{error_id}`). Please try again; "
                 "if it keeps happening, quote that id to whoever runs Slipway.",
        )
    except Exception:  # noqa: BLE001 — the log already holds the original error
        log.exception("could not tell %s about error %s", user, error_id)
