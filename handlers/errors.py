"""The one place unexpected failures go: logged with a traceback and an id,
and the person is told something went wrong, with that id to quote.

Two doors lead here: bolt's error handler (a failure before the ack) and
:func:`after_ack` (a failure in the work a listener does once Slack has
its answer). The HTTP door dispatches a click on a deploy's message inside
that deploy's log context (:func:`deploy_of_click`), so every line it leads
to, a failure's included, names the deploy, in the background work too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.runtime.tasks import BackgroundTasks

log = logging.getLogger("slipway.errors")


def register(app: AsyncApp) -> None:
    @app.error
    async def on_error(error: Exception, body: dict[str, Any], client: AsyncWebClient) -> None:
        user = (body.get("user") or {}).get("id") or body.get("user_id")
        channel = (body.get("channel") or {}).get("id") or body.get("channel_id")
        await report(error, client, channel, user)


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
