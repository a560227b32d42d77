"""The deploy's message in the channel, its thread, and direct messages:
all of them rows in the durable outbox, never calls made on the spot.

State first, Slack after: a deploy's message is queued as a *view*
(``deploy:12``) that the outbox draws from the stored deploy when it sends
it, so an edit queued during a burst of clicks, or left behind by a crash,
shows the state as it is when Slack receives it, and edits coalesce. Thread
notes and direct messages are queued with their text. A Slack failure of
any shape therefore delays what people see; it never changes, stalls or
loses a deploy. The one call still made on the spot is the ephemeral reply
to a click (:meth:`DeployMessages.tell`), which is the click's answer.

A deploy's message goes to its service's channel (``services.<name>.channel``,
else ``channel``); its thread follows the message wherever it was posted
(the deploy records the channel), and with ``mirror_to_main_channel`` the
main channel gets one line linking to it, once the link is known.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Config
from bot.deploys.workflow import DeployWorkflow
from bot.errors import SlipwayError
from bot.events import DeployChanged, DeployPosted, EventBus, MessagePosted, MessageRefused
from bot.runtime.logs import current_deploy
from bot.slack.blocks import deploy_blocks
from bot.slack.failures import failure_of
from bot.slack.mrkdwn import MAX_SPARKLINE, deploy_fallback_text, mention
from bot.slack.outbox import Outbox
from bot.slack.ship_report import read_rollout
from store import Deploy, DeployNotFound, DeployStatus, Store, deploy_message_key
from store.outbox import FAILED, POST

log = logging.getLogger(__name__)

ANNOUNCE_WAIT = 10.0  # seconds a request's reply waits for its message before the deploy goes on without it
# Refusals of a deploy's own post that mean the channel is unusable until a person acts.
UNPOSTABLE = frozenset({"not_in_channel", "channel_not_found", "is_archived"})
NOT_STARTED = (DeployStatus.AWAITING_APPROVAL, DeployStatus.QUEUED, DeployStatus.APPROVED)


def deploy_view(deploy_id: int) -> str:
    """The outbox's view of a deploy's message."""
    return f"deploy:{deploy_id}"


class DeployMessageView:
    """Draws a deploy's message from the stored deploy and its rollout (the outbox's ``deploy`` drawer)."""

    def __init__(self, workflow: DeployWorkflow,
                 rollback_offer: Callable[[Deploy], tuple[str | None, str | None]]) -> None:
        self._workflow = workflow
        self._rollback_offer = rollback_offer

    def draw(self, argument: str) -> dict[str, Any] | None:
        try:
            deploy = self._workflow.store.deploys.get(int(argument))
        except DeployNotFound:
            return None
        return self.render(deploy)

    def render(self, deploy: Deploy) -> dict[str, Any]:
        target, note = self._rollback_offer(deploy)
        stale = () if deploy.status != DeployStatus.AWAITING_APPROVAL else tuple(
            a.user_id for a in deploy.approvals if a.user_id not in self._workflow.fresh_approvals(deploy))
        # the last value and a sparkline of at most MAX_SPARKLINE per check: only those are read
        rollout = read_rollout(self._workflow.store, self._workflow.config, deploy.id, recent=MAX_SPARKLINE)
        blocks = deploy_blocks(deploy, required_approvals=self._workflow.required_approvals(deploy),
                               rollback_to=target, rollback_note=note, stale_approvals=stale, rollout=rollout,
                               queue_position=self._workflow.store.deploys.queue_position(deploy))
        return {"blocks": blocks, "text": deploy_fallback_text(deploy)}


class DeployMessages:
    """Where people see deploys (the domain's ``DeployViews``), through the outbox."""

    def __init__(self, config: Config, store: Store, workflow: DeployWorkflow, outbox: Outbox, client: AsyncWebClient,
                 events: EventBus, announce_wait: float = ANNOUNCE_WAIT) -> None:
        self._config = config
        self._store = store
        self._workflow = workflow
        self._outbox = outbox
        self._client = client  # only for the ephemeral answer to a click
        self._events = events  # publishes DeployPosted once a deploy's message is in the channel
        self._announce_wait = announce_wait

    # -- the deploy's message -----------------------------------------------------

    async def announce(self, deploy: Deploy) -> Deploy:
        """Queue the deploy's message (once, however often asked) and wait a
        little for Slack to take it, so the requester hears at once when the
        channel cannot be posted in. With Slack slow or down, the message
        stays queued and the deploy goes on without it.

        Raises:
            SlipwayError: the channel refused the message; the request was
                cancelled so it does not block the next one, and this says why.
        """
        key = deploy_message_key(deploy.id)
        self.show(deploy)
        state = await self._outbox.wait_settled(key, self._announce_wait,
                                                until=lambda: self._settled(deploy.id))
        deploy = self._store.deploys.get(deploy.id)
        if state == FAILED and deploy.status == DeployStatus.CANCELLED:
            posts = [item for item in self._store.outbox.items(key) if item.op == POST]
            error = (posts[-1].last_error if posts else None) or "unknown_error"
            channel = self._config.channel_of(deploy.service)
            hint = f" {channel_hint(channel, error)[0].upper()}{channel_hint(channel, error)[1:]}." \
                if error in UNPOSTABLE else ""
            raise SlipwayError(f"I could not post deploy #{deploy.id} in <#{channel}> "
                               f"(Slack said `{error}`), so it is cancelled.{hint}")
        return deploy

    def show(self, deploy: Deploy) -> None:
        """Queue the deploy's message in its service's channel, drawn when
        sent (once per deploy, however often asked)."""
        self._store.outbox.enqueue_post(deploy_message_key(deploy.id), self._config.channel_of(deploy.service),
                                        deploy_fallback_text(deploy), view=deploy_view(deploy.id))
        self._outbox.notify()

    def _settled(self, deploy_id: int) -> bool:
        """The deploy knows where its message is, or the message is not coming."""
        deploy = self._store.deploys.get(deploy_id)
        return deploy.message_ts is not None or deploy.status not in NOT_STARTED

    def posted(self, event: MessagePosted) -> None:
        """A deploy's message is in the channel: the deploy remembers where."""
        deploy_id = _deploy_of(event.key, event.view)
        if deploy_id is None:
            return
        known = self._store.deploys.get(deploy_id)
        permalink = event.permalink or known.permalink  # the permalink is asked for after the post
        self._store.deploys.attach_message(deploy_id, event.channel, event.ts, permalink)
        if event.permalink:
            self._mirror(known, event.channel, event.permalink)
        self._events.publish(DeployPosted(deploy_id))  # posted, or now with its permalink

    def _mirror(self, deploy: Deploy, channel: str, permalink: str) -> None:
        """With ``mirror_to_main_channel``, one line in the main channel
        linking to the deploy's message in its service's own (queued once
        per deploy, when the link is known: the key names the deploy)."""
        service = self._config.services.get(deploy.service)
        if service is None or not service.mirror_to_main_channel or channel == self._config.channel \
                or self._config.channel_of(deploy.service) == self._config.channel:
            return
        self._store.outbox.enqueue_post(f"{deploy_message_key(deploy.id)}-mirror", self._config.channel,
                                        mirror_text(deploy, channel, permalink))
        self._outbox.notify()

    def refused(self, event: MessageRefused) -> None:
        """A deploy's own message cannot be posted in the channel: a request
        that has not started is cancelled rather than left blocking its
        environment, and the post is given up."""
        deploy_id = _deploy_of(event.key, event.view)
        if deploy_id is None or event.code not in UNPOSTABLE:
            return
        deploy = self._store.deploys.get(deploy_id)
        if deploy.status in NOT_STARTED and deploy.started_at is None:
            channel = self._config.channel_of(deploy.service)
            with self._store.transaction():
                self._store.outbox.fail_post(event.key, event.code)
                self._workflow.abandon(deploy, f"could not post in <#{channel}> (Slack said `{event.code}`): "
                                               f"{channel_hint(channel, event.code)}")
            self._events.publish(DeployChanged(deploy_id))

    def deploy_changed(self, event: DeployChanged) -> None:
        """A deploy changed: an edit of its message is queued, drawn when sent."""
        key = deploy_message_key(event.deploy_id)
        if self._store.outbox.has_message(key):  # not yet queued: the post itself will show the latest
            self._store.outbox.enqueue_update(key, "", view=deploy_view(event.deploy_id))
            self._outbox.notify()

    # -- notes, direct messages, channel posts ------------------------------------

    def thread(self, deploy: Deploy, text: str) -> None:
        """A reply in the deploy's thread (in its channel if its message never
        made it), queued: it goes out after the message itself."""
        key = deploy_message_key(deploy.id)
        self._queue_post(f"{key}-note-{self._store.outbox.fresh_number()}", text, thread_key=key,
                         channel=self._channel_of(deploy))

    def _channel_of(self, deploy: Deploy) -> str:
        """Where the deploy's message is (as recorded when it was posted:
        a thread follows its message even if the config moved the service
        since), else where it is going: its service's channel."""
        channel = deploy.channel
        if channel is None:  # ``deploy`` may be a copy read before the message was posted
            with contextlib.suppress(DeployNotFound):
                channel = self._store.deploys.get(deploy.id).channel
        return channel or self._config.channel_of(deploy.service)

    def direct(self, user: str, text: str) -> None:
        """A direct message to ``user`` from the bot, queued (its key names the
        deploy it is about, when there is one, so its delivery is logged as that deploy's work)."""
        about = current_deploy()
        prefix = f"{deploy_message_key(about)}-dm" if about is not None else "dm"
        self._store.outbox.enqueue_dm(f"{prefix}-{user}-{self._store.outbox.fresh_number()}", user, text)
        self._outbox.notify()

    def post(self, text: str) -> None:
        """A message in the deploy channel, outside any thread, queued."""
        self._queue_post(f"channel-{self._store.outbox.fresh_number()}", text)

    def _queue_post(self, key: str, text: str, thread_key: str | None = None, channel: str | None = None) -> None:
        self._store.outbox.enqueue_post(key, channel or self._config.channel, text, thread_key=thread_key)
        self._outbox.notify()

    async def tell(self, channel: str, user: str, text: str,
                   respond: Callable[..., Awaitable[object]] | None = None) -> None:
        """An ephemeral message only ``user`` sees in ``channel`` (the answer
        to their click); through the interaction's response URL (``respond``)
        when Slack refuses that, e.g. a click in a conversation the bot is not
        a member of. Logged, never raised, when neither gets through."""
        try:
            await self._client.chat_postEphemeral(channel=channel, user=user, text=text)
            return
        except Exception as error:  # noqa: BLE001 — every shape a Slack call fails in
            failure = failure_of(error)
            if failure is None:
                raise
            log.info("ephemeral to %s refused (%s); answering through the response URL", user, failure)
        if respond is None:
            return
        try:
            await respond(text=text, response_type="ephemeral", replace_original=False)
        except Exception as error:  # noqa: BLE001 — the response URL is Slack too
            if failure_of(error) is None:
                raise
            log.warning("could not tell %s: %s", user, failure_of(error))


def channel_hint(channel: str, code: str | None) -> str:
    """What to do when Slack will not let the bot post in ``channel``: most
    often a private channel it was not invited to (a public one needs no
    invitation, through ``chat:write.public``)."""
    if code == "is_archived":
        return f"<#{channel}> is archived: unarchive it, or give the service another `channel`, and ask again"
    return f"invite the bot to <#{channel}> (`/invite @Slipway` there) and ask again"


def mirror_text(deploy: Deploy, channel: str, permalink: str) -> str:
    """The main channel's line for a deploy whose message is in ``channel``."""
    kind = "Rollback" if deploy.rollback_of is not None else "Deploy"
    return (f":arrow_right: <{permalink}|{kind} #{deploy.id}>: {deploy.service} `{deploy.display_version}` "
            f"to {deploy.environment}, requested by {mention(deploy.requested_by)}, in <#{channel}>")


def _deploy_of(key: str, view: str | None) -> int | None:
    """The deploy whose own message ``key`` is, if it is one."""
    if view is None or not view.startswith("deploy:"):
        return None
    deploy_id = int(view.partition(":")[2])
    return deploy_id if key == deploy_message_key(deploy_id) else None
