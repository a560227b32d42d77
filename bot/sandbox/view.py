"""What one person at the sandbox page sees, as JSON for the page to render:
the channel's messages with their threads, and the replies shown to that
person alone. Everything comes from what the fake Slack recorded; the
blocks are passed on exactly as Slipway sent them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.sandbox import demo
from bot.sandbox.demo_deploy import canary_of, deployed_version
from bot.sandbox.fake_slack import Message, dm_channel

if TYPE_CHECKING:
    from bot.sandbox.server import Sandbox


def state(sandbox: "Sandbox", user: str) -> dict[str, Any]:
    """The page's whole state for ``user``."""
    config = sandbox.config
    messages = sandbox.fake.channel_messages(config.channel)
    threads: dict[str, list[Message]] = {}
    for message in messages:
        if _is_reply(message):
            threads.setdefault(message.thread_ts, []).append(message)
    return {
        "revision": sandbox.fake.revision,
        "me": user,
        "channel": {"id": config.channel, "name": demo.CHANNEL_NAME},
        "directory": demo.directory(config),
        "messages": [_message(m, threads.get(m.ts, [])) for m in messages if not _is_reply(m)],
        "replies": replies_for(sandbox, user),
        # Slipway's direct messages to this person (conversations.open, then chat.postMessage to a D… channel):
        # Slack shows them in their own conversation; the page, which plays one channel, shows them inline
        "direct_channel": dm_channel(user),
        "direct": [_message(m, []) for m in sandbox.fake.channel_messages(dm_channel(user))],
        "service": {"name": demo.SERVICE, "running": [
            {"environment": name, "version": deployed_version(sandbox.state_dir, name),
             "canary": _canary(sandbox, name)}
            for name in config.environments_of(demo.SERVICE)]},
    }


def replies_for(sandbox: "Sandbox", user: str) -> list[dict[str, Any]]:
    """What Slack showed ``user`` outside the channel's history, oldest
    first: slash-command acks, ``chat.postEphemeral``, posts to a response
    URL (and, to everyone, what was answered ``in_channel``)."""
    shown: list[dict[str, Any]] = []
    for reply in sandbox.replies:
        if reply.user == user or reply.public:
            shown.append(_reply(reply.seq, reply.posted_at, reply.text, reply.blocks, public=reply.public,
                                command=reply.command, by=reply.user))
    for ephemeral in sandbox.fake.ephemerals:
        if ephemeral.user == user:
            shown.append(_reply(ephemeral.seq, ephemeral.posted_at, ephemeral.text, ephemeral.blocks))
    for response in sandbox.fake.response_posts:
        public = response.payload.get("response_type") == "in_channel"
        if response.user == user or public:
            shown.append(_reply(response.seq, response.posted_at, str(response.payload.get("text") or ""),
                                list(response.payload.get("blocks") or []), public=public))
    return sorted(shown, key=lambda item: item["seq"])


def _canary(sandbox: "Sandbox", environment: str) -> dict[str, Any] | None:
    """The canary beside the stable version on ``environment``: its version and share of traffic."""
    canary = canary_of(sandbox.state_dir, environment)
    return None if canary is None else {"version": canary.get("version"), "weight": canary.get("weight")}


def _is_reply(message: Message) -> bool:
    return bool(message.thread_ts) and message.thread_ts != message.ts


def _message(message: Message, replies: list[Message]) -> dict[str, Any]:
    return {
        "ts": message.ts, "seq": message.seq, "posted_at": message.posted_at, "text": message.text,
        "blocks": message.blocks, "edited": message.updates > 0,
        "replies": [_message(reply, []) for reply in replies],
    }


def _reply(seq: int, posted_at: float, text: str, blocks: list[dict[str, Any]], *, public: bool = False,
           command: str | None = None, by: str | None = None) -> dict[str, Any]:
    return {"seq": seq, "ts": f"{int(posted_at)}.{seq:06d}", "posted_at": posted_at, "text": text, "blocks": blocks,
            "public": public, "command": command, "by": by}
