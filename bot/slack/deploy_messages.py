"""The deploy's message in the channel: posting it and keeping it current.

Updates are coalesced per deploy: however many clicks land at once, one
task renders the latest stored state and sends ``chat.update``, again only
if something changed meanwhile. So the message never goes back to an older
state because two updates crossed on the wire, and a burst of clicks costs
Slack's rate limit one call, not one per click. 429 answers are retried by
slack_sdk's rate-limit handler, which honours Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.deploys.workflow import DeployWorkflow
from bot.errors import SlipwayError
from bot.events import DeployChanged, DeployPosted, EventBus
from bot.runtime.tasks import BackgroundTasks
from bot.slack.blocks import deploy_blocks
from bot.slack.mrkdwn import deploy_fallback_text
from store import Deploy, DeployStatus

log = logging.getLogger(__name__)


class DeployMessages:
    def __init__(self, client: AsyncWebClient, workflow: DeployWorkflow, tasks: BackgroundTasks, events: EventBus,
                 rollback_offer: Callable[[Deploy], tuple[str | None, str | None]] | None = None) -> None:
        self._client = client
        self._workflow = workflow
        self._tasks = tasks
        self._rollback_offer = rollback_offer or (lambda deploy: (None, None))
        self._dirty: set[int] = set()
        self._updating: set[int] = set()
        self._events = events  # publishes DeployPosted once a deploy's message is in the channel
        self._dm_channels: dict[str, str] = {}  # user -> their direct-message channel with the bot

    def _render(self, deploy: Deploy) -> dict:
        target, note = self._rollback_offer(deploy)
        stale = () if deploy.status != DeployStatus.AWAITING_APPROVAL else tuple(
            a.user_id for a in deploy.approvals if a.user_id not in self._workflow.fresh_approvals(deploy))
        blocks = deploy_blocks(deploy, required_approvals=self._workflow.required_approvals(deploy),
                               rollback_to=target, rollback_note=note, stale_approvals=stale)
        return {"blocks": blocks, "text": deploy_fallback_text(deploy)}

    async def announce(self, deploy: Deploy) -> Deploy:
        """Post the deploy's message in the deploy channel and remember it.

        Raises:
            SlipwayError: Slack refused the post; the request is cancelled so
                it does not block the next one, and the message says why.
        """
        channel = self._workflow.config.channel
        try:
            response = await self._client.chat_postMessage(channel=channel, **self._render(deploy))
        except Exception as exc:  # noqa: BLE001 — any failure must free the environment, not leave it blocked
            error = exc.response.get("error", "unknown_error") if isinstance(exc, SlackApiError) else (
                f"{type(exc).__name__}: {exc}")
            self._workflow.abandon(deploy, f"could not post in {channel}: {error}")
            hint = " Invite the bot to the channel (`/invite @Slipway`)." if error in (
                "not_in_channel", "channel_not_found") else ""
            raise SlipwayError(
                f"I could not post deploy #{deploy.id} in <#{channel}> (Slack said `{error}`), "
                f"so it is cancelled.{hint}"
            ) from None
        ts = response["ts"]
        permalink = None
        try:
            permalink = (await self._client.chat_getPermalink(channel=response["channel"], message_ts=ts))["permalink"]
        except SlackApiError as exc:  # the link is a convenience; the deploy stands without it
            log.warning("no permalink for deploy %s: %s", deploy.id, exc.response.get("error"))
        deploy = self._workflow.store.deploys.attach_message(deploy.id, response["channel"], ts, permalink)
        self._events.publish(DeployPosted(deploy.id))
        return deploy

    def deploy_changed(self, event: DeployChanged) -> None:
        """A deploy changed: its message is redrawn from the store, soon."""
        self.refresh(event.deploy_id)

    def refresh(self, deploy_id: int) -> None:
        """Bring the deploy's message up to date with the store, soon."""
        self._dirty.add(deploy_id)
        if deploy_id not in self._updating:
            self._updating.add(deploy_id)
            self._tasks.spawn(self._update_until_clean(deploy_id), name=f"refresh-deploy-{deploy_id}")

    async def _update_until_clean(self, deploy_id: int) -> None:
        try:
            while deploy_id in self._dirty:
                await self._tasks.ack_first.wait_turn()
                self._dirty.discard(deploy_id)
                deploy = self._workflow.store.deploys.get(deploy_id)
                if deploy.channel is None or deploy.message_ts is None:
                    return
                try:
                    await self._client.chat_update(channel=deploy.channel, ts=deploy.message_ts, **self._render(deploy))
                except SlackApiError as exc:
                    log.error("chat.update of deploy %s failed: %s", deploy_id, exc.response.get("error"))
        finally:
            self._updating.discard(deploy_id)

    async def thread(self, deploy: Deploy, text: str) -> None:
        """A reply in the deploy's thread (dropped with a log line if the
        deploy has no message: there is no thread to reply in)."""
        if deploy.channel is None or deploy.message_ts is None:
            log.warning("deploy %s has no message; not posted: %s", deploy.id, text[:200])
            return
        await self._tasks.ack_first.wait_turn()
        try:
            await self._client.chat_postMessage(channel=deploy.channel, thread_ts=deploy.message_ts, text=text,
                                                unfurl_links=False)
        except SlackApiError as exc:
            log.error("thread reply on deploy %s failed: %s", deploy.id, exc.response.get("error"))

    async def direct(self, user: str, text: str) -> None:
        """A direct message to ``user`` from the bot (logged, never raised,
        when Slack refuses: a DM is a courtesy, the channel has the record)."""
        await self._tasks.ack_first.wait_turn()
        try:
            if user not in self._dm_channels:  # a person's DM channel never changes: one conversations.open each
                opened = await self._client.conversations_open(users=user)
                self._dm_channels[user] = opened["channel"]["id"]
            await self._client.chat_postMessage(channel=self._dm_channels[user], text=text, unfurl_links=False)
        except SlackApiError as exc:
            log.error("direct message to %s failed: %s", user, exc.response.get("error"))

    async def post(self, text: str) -> None:
        """A message in the deploy channel, outside any thread."""
        await self._tasks.ack_first.wait_turn()
        try:
            await self._client.chat_postMessage(channel=self._workflow.config.channel, text=text, unfurl_links=False)
        except SlackApiError as exc:
            log.error("channel post failed: %s", exc.response.get("error"))

    async def tell(self, channel: str, user: str, text: str,
                   respond: Callable[..., Awaitable[object]] | None = None) -> None:
        """An ephemeral message only ``user`` sees in ``channel``; through the
        interaction's response URL (``respond``) when Slack refuses that, e.g.
        a click in a conversation the bot is not a member of."""
        try:
            await self._client.chat_postEphemeral(channel=channel, user=user, text=text)
        except SlackApiError as exc:
            if respond is None:
                raise
            log.info("ephemeral to %s refused (%s); answering through the response URL", user,
                     exc.response.get("error"))
            await respond(text=text, response_type="ephemeral", replace_original=False)
