"""``/deploy``: the one slash command.

It answers Slack in the ack itself (the reply is ephemeral to the person
who typed it); only the channel post for an accepted request, and what
follows it, happens after the ack, and so do the stats, which read a long
history and answer through the response URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.deploys.command_text import (
    HELP_TEXT,
    Help,
    HistoryCommand,
    HomeCommand,
    LockCommand,
    LocksCommand,
    QueueCommand,
    RequestDeploy,
    RollbackCommand,
    ShowCommand,
    StatsCommand,
    StatusCommand,
    SteerCommand,
    UnblockCommand,
    UnlockCommand,
    parse_command,
)
from bot.deploys.policy import resolve_service
from bot.errors import SlipwayError
from bot.runtime.logs import deploy_context
from bot.slack.blocks import rollback_offer_blocks
from bot.slack.mrkdwn import (
    history_text,
    lock_list_text,
    locks_text,
    override_unused_text,
    queue_text,
    request_accepted_text,
    unblocked_text,
    unescape,
)
from bot.slack.status import owned_services
from handlers.errors import after_ack
from store import Deploy

if TYPE_CHECKING:
    from bot.runtime.composition import Slipway

COMMAND = "/deploy"


def register(app: AsyncApp, slipway: "Slipway") -> None:
    workflow = slipway.workflow

    async def announce_and_run(deploy: Deploy, respond: AsyncRespond) -> None:
        with deploy_context(deploy.id):  # every log line of the announcement (and the run it starts) names it
            # what it ships and whether its artifacts exist, looked up meanwhile (it waits for them)
            lookup = slipway.lookups.start(deploy.id) if slipway.lookups is not None else None
            try:
                await slipway.runner.announce_and_start(deploy)
            except SlipwayError as failure:
                await respond(text=failure.message, response_type="ephemeral", replace_original=False)
                return
            if lookup is not None and (refusal := await lookup) is not None:
                # the message says so too (the request is cancelled): this is the requester's own answer
                await respond(text=f":no_entry: {refusal}", response_type="ephemeral", replace_original=False)

    async def send_stats(parsed: StatsCommand, respond: AsyncRespond) -> None:
        """The figures read a year of history: computed in a thread, on a
        connection of its own, so acks keep flowing meanwhile; the answer
        goes through the command's response URL."""
        answer = await slipway.status_replies.stats(parsed.service, parsed.days, parsed.owner)
        await respond(**answer, response_type="ephemeral", replace_original=False)

    async def steer(parsed: SteerCommand, user: str, source: str) -> str:
        """Promote, pause, resume or abort the rollout the command names; what
        happened, to tell the person (the message and its thread show it to all)."""
        steering = slipway.steering
        if steering is None:
            raise SlipwayError("Staged rollouts are not set up in this Slipway.")
        deploy_id = steering.find(parsed.service, parsed.environment)
        act = {"promote": steering.promote, "pause": steering.pause, "resume": steering.resume,
               "abort": steering.abort}[parsed.action]
        return await act(deploy_id, user, source=source)  # promote: the stage under way now

    async def reply(parsed: Any, user: str, source: str, command: dict[str, Any]) -> dict[str, Any]:
        """What to ack with, for every subcommand but a deploy request."""
        if isinstance(parsed, Help):
            return {"text": HELP_TEXT}
        if isinstance(parsed, LockCommand):
            lock = await workflow.lock(user, parsed, source)
            return {"response_type": "in_channel", "text": ":lock: " + locks_text([lock])}
        if isinstance(parsed, UnlockCommand):
            released = await workflow.unlock(user, parsed, source)
            return {"response_type": "in_channel", "text": f":unlock: <@{user}> released:\n" + locks_text(released)}
        if isinstance(parsed, LocksCommand):
            return {"text": lock_list_text(*workflow.locks(parsed.service))}
        if isinstance(parsed, QueueCommand):
            if parsed.service is not None:
                resolve_service(slipway.config, parsed.service)  # a typo gets the known services
            return {"text": queue_text(slipway.store.deploys.queued(parsed.service))}
        if isinstance(parsed, UnblockCommand):
            lifted = await workflow.unblock(user, parsed, source)
            return {"response_type": "in_channel", "text": unblocked_text(lifted, user, workflow.locks_holding(lifted))}
        if isinstance(parsed, ShowCommand):
            return slipway.status_replies.show(workflow.get(parsed.deploy_id))
        if isinstance(parsed, SteerCommand):
            return {"text": await steer(parsed, user, source)}
        if isinstance(parsed, HistoryCommand):
            return {"text": history_text(*workflow.history(parsed.service, parsed.environment))}
        if isinstance(parsed, StatusCommand):
            return slipway.status_replies.status(parsed.service, parsed.owner)
        if isinstance(parsed, HomeCommand):
            told = slipway.status_replies.choose_home_owner(user, parsed.owner)
            slipway.home_tabs.chosen(user)
            return {"text": told}
        if isinstance(parsed, RollbackCommand):
            plan = await slipway.rollbacks.offer_for(user, parsed.service, parsed.environment, source)
            return {"text": f"Confirm: {plan.text}", "blocks": rollback_offer_blocks(plan.current, plan.target.version)}
        raise AssertionError(f"unhandled command {parsed!r}")

    @app.command(COMMAND)
    async def deploy_command(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond,
                             client: AsyncWebClient) -> None:
        user = command["user_id"]
        source = f"slack:{COMMAND}:{command.get('trigger_id', '')}"
        try:
            # Slack sends the text with &, < and > escaped; it is escaped again,
            # once, wherever it enters a message (bot.slack.mrkdwn.escape)
            parsed = parse_command(unescape(command.get("text", "")))
            if isinstance(parsed, StatsCommand):
                if parsed.owner is not None:  # a typo is refused in the ack itself
                    owned_services(slipway.config, parsed.owner, parsed.service)
                if parsed.service is not None:
                    resolve_service(slipway.config, parsed.service)
                whose = parsed.service or (f"the services of {parsed.owner}" if parsed.owner else "all services")
                await ack(text=f":hourglass_flowing_sand: Working out the deploy stats for "
                               f"{whose} over the last {parsed.days} day(s)…")
                after_ack(slipway.tasks, client, send_stats(parsed, respond), channel=command.get("channel_id"),
                          user=user, name="stats")
                return
            if not isinstance(parsed, RequestDeploy):
                await ack(**await reply(parsed, user, source, command))
                return
            await workflow.check_may_request(user, parsed.service, parsed.environment, source)
            deploy, new = workflow.request(user=user, service=parsed.service, version=parsed.version,
                                           environment=parsed.environment, override=parsed.override,
                                           migration=parsed.migration,
                                           trigger_id=command.get("trigger_id"), source=source)
        except SlipwayError as refusal:
            await ack(text=refusal.message)
            return
        unused = override_unused_text(deploy) if parsed.override and not deploy.override_reason else ""
        await ack(text=request_accepted_text(deploy, slipway.config.channel_of(deploy.service),
                                             slipway.store.deploys.queue_position(deploy)) + unused)
        if new:
            after_ack(slipway.tasks, client, announce_and_run(deploy, respond), channel=command.get("channel_id"),
                      user=user, name=f"announce-deploy-{deploy.id}")

