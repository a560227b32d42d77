"""Clicks on the deploy message: checklist ticks, Approve, Reject, Cancel,
Rollback, and a staged rollout's Promote, Pause, Resume and Abort.

Every click is acked first; the decision is the workflow's (or, for
Rollback, the rollbacks'; for a rollout, the steering's); a refusal is told
to the clicker alone, and so is what a steering click did. What a change
sets off (the message redrawn, the deploy started) follows from the events
the decision publishes (``bot.runtime.composition.subscribe``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import SlipwayError
from bot.slack.blocks import (
    ACTION_ABORT,
    ACTION_APPROVE,
    ACTION_CANCEL,
    ACTION_CHECKLIST,
    ACTION_PAUSE,
    ACTION_PROMOTE,
    ACTION_REJECT,
    ACTION_RESUME,
    ACTION_ROLLBACK,
)
from handlers.errors import after_ack
from store import Deploy

if TYPE_CHECKING:
    from bot.deploys.steering import RolloutSteering
    from bot.runtime.composition import Slipway

Decide = Callable[[int, str, str], Awaitable[Deploy]]
Steer = Callable[[int, str, str, str], Awaitable[str]]  # deploy id, user, source, the rest of the button's value


def register(app: AsyncApp, slipway: "Slipway") -> None:
    workflow, messages = slipway.workflow, slipway.messages

    async def handle(body: dict[str, Any], action: dict[str, Any], deploy_id: int, decide: Decide,
                     respond: AsyncRespond) -> None:
        user = body["user"]["id"]
        source = f"slack:{action['action_id']}:{action.get('action_ts', '')}"
        try:
            await decide(deploy_id, user, source)  # the message is redrawn, and a final approval starts the deploy
        except SlipwayError as refusal:
            await messages.tell(body["channel"]["id"], user, refusal.message, respond)

    def later(client: AsyncWebClient, body: dict[str, Any], work: Awaitable[None]) -> None:
        after_ack(slipway.tasks, client, work, channel=body["channel"]["id"], user=body["user"]["id"],
                  name=f"click-{body['actions'][0]['action_id']}")

    def button(action_id: str, decide: Decide) -> None:
        @app.action(action_id)
        async def on_click(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any],
                           client: AsyncWebClient, respond: AsyncRespond) -> None:
            await ack()
            later(client, body, handle(body, action, int(action["value"]), decide, respond))

    button(ACTION_APPROVE, workflow.approve)
    button(ACTION_REJECT, workflow.reject)
    button(ACTION_CANCEL, workflow.cancel)

    @app.action(ACTION_CHECKLIST)
    async def on_tick(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient,
                      respond: AsyncRespond) -> None:
        await ack()
        _, deploy_id, position = action["block_id"].split(":")
        ticked = bool(action.get("selected_options"))

        async def decide(deploy_id: int, user: str, source: str) -> Deploy:
            return await workflow.tick(deploy_id, int(position), ticked, user, source)

        later(client, body, handle(body, action, int(deploy_id), decide, respond))

    @app.action(ACTION_ROLLBACK)
    async def on_rollback(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient,
                          respond: AsyncRespond) -> None:
        await ack()
        deploy_id, _, target = action["value"].partition(":")

        async def roll_back() -> None:
            user, channel = body["user"]["id"], body["channel"]["id"]
            source = f"slack:{ACTION_ROLLBACK}:{action.get('action_ts', '')}"
            try:
                await slipway.rollbacks.start(int(deploy_id), target, user, source)
            except SlipwayError as refusal:
                await messages.tell(channel, user, refusal.message, respond)

        later(client, body, roll_back())

    def steering_button(action_id: str, steer: Steer) -> None:
        """A rollout's button: its value is ``<deploy id>[:<stage>]``; what
        the steering did, or why it refused, is told to the clicker alone."""
        @app.action(action_id)
        async def on_steer(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient,
                           respond: AsyncRespond) -> None:
            await ack()
            deploy_id, _, rest = action["value"].partition(":")

            async def run() -> None:
                user, channel = body["user"]["id"], body["channel"]["id"]
                source = f"slack:{action_id}:{action.get('action_ts', '')}"
                try:
                    said = await steer(int(deploy_id), user, source, rest)
                except SlipwayError as refusal:
                    said = refusal.message
                await messages.tell(channel, user, said, respond)

            later(client, body, run())

    def steering() -> "RolloutSteering":
        if slipway.steering is None:
            raise SlipwayError("Staged rollouts are not set up in this Slipway.")
        return slipway.steering

    async def promote(deploy_id: int, user: str, source: str, stage: str) -> str:
        # the stage the button was drawn on: a stale click cannot promote the next one
        return await steering().promote(deploy_id, user, position=int(stage) if stage.isdigit() else None,
                                        source=source)

    async def pause(deploy_id: int, user: str, source: str, _: str) -> str:
        return await steering().pause(deploy_id, user, source=source)

    async def resume(deploy_id: int, user: str, source: str, _: str) -> str:
        return await steering().resume(deploy_id, user, source=source)

    async def abort(deploy_id: int, user: str, source: str, _: str) -> str:
        return await steering().abort(deploy_id, user, source=source)

    steering_button(ACTION_PROMOTE, promote)
    steering_button(ACTION_PAUSE, pause)
    steering_button(ACTION_RESUME, resume)
    steering_button(ACTION_ABORT, abort)
