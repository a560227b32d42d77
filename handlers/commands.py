"""``/deploy``: the one slash command.

It answers Slack in the ack itself (the reply is ephemeral to the person
who typed it); only the channel post for an accepted request happens after
the ack.
"""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.commands import HELP_TEXT, Help, LockCommand, RequestDeploy, UnlockCommand, parse_command
from bot.errors import SlipwayError
from bot.messages import DeployMessages
from bot.render import locks_text, request_accepted_text
from bot.tasks import BackgroundTasks
from bot.workflow import DeployWorkflow
from handlers.errors import after_ack
from store import Deploy

COMMAND = "/deploy"


def register(app: AsyncApp, workflow: DeployWorkflow, messages: DeployMessages, tasks: BackgroundTasks) -> None:
    async def announce(deploy: Deploy, respond: AsyncRespond) -> None:
        try:
            await messages.announce(deploy)
        except SlipwayError as failure:
            await respond(text=failure.message, response_type="ephemeral", replace_original=False)

    @app.command(COMMAND)
    async def deploy_command(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond,
                             client: AsyncWebClient) -> None:
        user = command["user_id"]
        source = f"slack:{COMMAND}:{command.get('trigger_id', '')}"
        try:
            parsed = parse_command(command.get("text", ""))
            if isinstance(parsed, Help):
                await ack(text=HELP_TEXT)
                return
            if isinstance(parsed, LockCommand):
                lock = workflow.lock(user, parsed, source)
                await ack(response_type="in_channel", text=":lock: " + locks_text([lock]))
                return
            if isinstance(parsed, UnlockCommand):
                released = workflow.unlock(user, parsed, source)
                await ack(response_type="in_channel", text=f":unlock: <@{user}> released:\n" + locks_text(released))
                return
            assert isinstance(parsed, RequestDeploy)
            deploy, new = workflow.request(user=user, service=parsed.service, version=parsed.version,
                                           environment=parsed.environment,
                                           trigger_id=command.get("trigger_id"), source=source)
        except SlipwayError as refusal:
            await ack(text=refusal.message)
            return
        await ack(text=request_accepted_text(deploy, workflow.config.channel))
        if new:
            after_ack(tasks, client, announce(deploy, respond), channel=command.get("channel_id"), user=user,
                      name=f"announce-deploy-{deploy.id}")
