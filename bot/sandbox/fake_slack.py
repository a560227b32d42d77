"""A local stand-in for the Slack side of a conversation with Slipway.

``FakeSlack`` is a real aiohttp web application that speaks the part of the
Slack Web API Slipway uses, keeps the messages it is sent, records every
call, and can answer 429 with Retry-After. ``SlackSender`` plays Slack's
other role: it posts slash commands and button clicks to the bot, signed
exactly as Slack signs them (v0 HMAC-SHA256 over ``v0:{timestamp}:{body}``).

The test-suite uses both, and so does the sandbox (``slipway sandbox``,
bot/sandbox), so the two cannot drift apart. It binds to loopback only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from bot.sandbox.fake_server import FakeServer

BOT_USER_ID = "USLIPWAY"
TEAM_ID = "T0SLIPWAY"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    status: int = 200


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    updates: int = 0
    seq: int = 0  # place in the order of everything shown (messages, ephemerals, responses)
    posted_at: float = field(default_factory=time.time)


@dataclass
class Ephemeral:
    channel: str
    user: str
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    posted_at: float = field(default_factory=time.time)


@dataclass
class Response:
    """A post to an interaction's ``response_url``; ``key`` says whose it was
    (see :meth:`SlackSender.command_fields`: ``cmd-<user>`` or ``click-<user>``)."""

    key: str
    payload: dict[str, Any]
    seq: int = 0
    posted_at: float = field(default_factory=time.time)

    @property
    def user(self) -> str:
        return self.key.partition("-")[2]


class FakeSlack(FakeServer):
    """The Slack Web API, as far as Slipway uses it."""

    def __init__(self, token: str = "xoxb-test-token", usergroups: dict[str, list[str]] | None = None,
                 missing_channels: set[str] | None = None, ts_start_us: int | None = None) -> None:
        """``ts_start_us``: message timestamps count up from this moment (in
        microseconds since the epoch), as Slack's do, so that they never
        repeat those of an earlier run kept in the same database; without
        it they are small fixed numbers (1700000001.000100, …)."""
        super().__init__()
        self.token = token
        self.ts_start_us = ts_start_us
        self.usergroups = dict(usergroups or {})
        self.missing_channels = set(missing_channels or ())
        # private channels the bot was not invited to: posting there answers not_in_channel
        # (a public one takes the bot's posts without an invitation, with chat:write.public)
        self.private_channels: set[str] = set()
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.ephemerals: list[Ephemeral] = []
        self.responses: list[dict[str, Any]] = []  # what was posted to response_url
        self.response_posts: list[Response] = []  # the same, with whose response_url it was
        self.home_views: dict[str, dict[str, Any]] = {}  # user -> their App Home view
        self.socket_acks: dict[str, dict[str, Any]] = {}  # envelope id -> what the app answered
        self._sockets: list[web.WebSocketResponse] = []
        self._envelopes = itertools.count(1)
        self.rate_limit_every = 0  # answer every n-th call with 429 (0: never)
        self.rate_limit_methods: set[str] | None = None  # only these methods are rate-limited (None: all)
        # Faults, by Web API method ("*": every method): "text503" answers a
        # text/plain 503 (a proxy's page), "disconnect" drops the connection
        # without an answer (as a refused or reset one), "slow:SECONDS" answers
        # that late, "invalid_auth" refuses the token. Nothing is recorded as done.
        self.faults: dict[str, str] = {}
        self.retry_after = 1
        self._counter = itertools.count(1)
        self._ts = itertools.count(1)
        self._seq = itertools.count(1)
        self.revision = 0  # bumped by every recorded change, so a reader can wait for "anything new"

    # -- serving ------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/response/{key}", self._response_url)
        app.router.add_get("/socket", self._socket)
        return app

    @property
    def api_url(self) -> str:
        """The base URL for ``AsyncWebClient(base_url=...)`` / ``SLACK_API_URL``."""
        return f"{self.url}/api/"

    def response_url(self, key: str = "r") -> str:
        return f"{self.url}/response/{key}"

    # -- what happened --------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.status == 200]

    def channel_messages(self, channel: str) -> list[Message]:
        return [m for (ch, _), m in sorted(self.messages.items(), key=lambda kv: float(kv[0][1])) if ch == channel]

    def ephemerals_for(self, user: str) -> list[Ephemeral]:
        return [e for e in self.ephemerals if e.user == user]

    def next_seq(self) -> int:
        """The next place in the order of what is shown, for a reply Slack shows
        that is not a Web API call (a slash command's ack body)."""
        return next(self._seq)

    async def changed(self, change: Callable[[], Any] = lambda: None) -> None:
        def counted() -> None:
            change()
            self.revision += 1

        await super().changed(counted)

    # -- the Web API ----------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _arguments(request)
        fault = self.faults.get(method) or self.faults.get("*")
        if fault is not None and not fault.startswith("slow:"):
            return await self._fault(request, method, args, fault)
        if fault is not None:
            await asyncio.sleep(float(fault.partition(":")[2]))
        limited = self.rate_limit_methods is None or method in self.rate_limit_methods
        number = next(self._counter) if limited else 0  # with rate_limit_methods, only theirs are counted
        if limited and self.rate_limit_every and number % self.rate_limit_every == 0:
            await self._record(Call(method, args, 429))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": str(self.retry_after)})
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or args.get("token")
        if method == "apps.connections.open" and token.startswith("xapp-"):
            await self._record(Call(method, args, 200))
            return web.json_response({"ok": True, "url": self.url.replace("http", "ws", 1) + "/socket"})
        if token != self.token:
            await self._record(Call(method, args, 401))
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        body = handler(args) if handler else {"ok": False, "error": "unknown_method"}
        await self._record(Call(method, args, 200 if body.get("ok") else 400))
        return web.json_response(body)

    async def _fault(self, request: web.Request, method: str, args: dict[str, Any], fault: str) -> web.StreamResponse:
        if fault == "text503":
            await self._record(Call(method, args, 503))
            return web.Response(status=503, text="upstream connect error or disconnect/reset before headers",
                                content_type="text/plain")
        if fault == "invalid_auth":
            await self._record(Call(method, args, 401))
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if fault == "disconnect":
            await self._record(Call(method, args, 0))
            if request.transport is not None:
                request.transport.close()  # the client sees the connection dropped, no answer
            raise web.HTTPServiceUnavailable()
        raise ValueError(f"unknown fault {fault!r}")

    def _next_ts(self) -> str:
        number = next(self._ts)
        if self.ts_start_us is None:
            return f"{1700000000 + number}.000100"
        moment = self.ts_start_us + number
        return f"{moment // 1_000_000}.{moment % 1_000_000:06d}"

    async def _record(self, call: Call) -> None:
        await self.changed(lambda: self.calls.append(call))

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://slipway-test.slack.com/", "team": "Slipway Test", "user": "slipway",
                "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": "B0SLIPWAY"}

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel", "")
        if not channel or channel in self.missing_channels:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.private_channels:
            return {"ok": False, "error": "not_in_channel"}
        if problem := block_kit_problem(_blocks(args)):
            return {"ok": False, "error": "invalid_blocks", "errors": [problem]}
        ts = self._next_ts()
        message = Message(channel, ts, args.get("text", ""), _blocks(args), args.get("thread_ts"), seq=self.next_seq())
        self.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts,
                "message": {"type": "message", "text": message.text, "blocks": message.blocks, "ts": ts}}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        key = (args.get("channel", ""), args.get("ts", ""))
        if key not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        if problem := block_kit_problem(_blocks(args)):
            return {"ok": False, "error": "invalid_blocks", "errors": [problem]}
        message = self.messages[key]
        message.text = args.get("text", message.text)
        message.blocks = _blocks(args) or message.blocks
        message.updates += 1
        return {"ok": True, "channel": key[0], "ts": key[1], "text": message.text}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("channel") in self.missing_channels:
            return {"ok": False, "error": "channel_not_found"}
        if problem := block_kit_problem(_blocks(args)):
            return {"ok": False, "error": "invalid_blocks", "errors": [problem]}
        self.ephemerals.append(Ephemeral(args.get("channel", ""), args.get("user", ""), args.get("text", ""),
                                         _blocks(args), seq=self.next_seq()))
        return {"ok": True, "message_ts": f"{time.time():.6f}"}

    def _chat_getPermalink(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel", ""), args.get("message_ts", "")
        if (channel, ts) not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": channel,
                "permalink": f"https://slipway-test.slack.com/archives/{channel}/p{ts.replace('.', '')}"}

    def _usergroups_list(self, args: dict[str, Any]) -> dict[str, Any]:
        groups = [{"id": usergroup_id(handle), "handle": handle, "name": handle} for handle in self.usergroups]
        return {"ok": True, "usergroups": groups}

    def _usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        for handle, members in self.usergroups.items():
            if usergroup_id(handle) == args.get("usergroup"):
                return {"ok": True, "users": list(members)}
        return {"ok": False, "error": "no_such_subteam"}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = args.get("user", "")
        return {"ok": True, "user": {"id": user, "name": user.lower(), "real_name": user, "tz": "UTC"}}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "view": {"id": f"V{next(self._ts)}", **(_json_arg(args.get("view")) or {})}}

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        """A user's App Home tab; the newest view published for them is kept."""
        view = _json_arg(args.get("view")) or {}
        user = args.get("user_id", "")
        if not user or view.get("type") != "home":
            return {"ok": False, "error": "invalid_arguments"}
        if problem := block_kit_problem(view.get("blocks", []), max_blocks=100):  # a view holds 100, a message 50
            return {"ok": False, "error": "invalid_blocks", "errors": [problem]}
        self.home_views[user] = view
        return {"ok": True, "view": {"id": f"V{next(self._ts)}", **view}}

    def _conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        """The direct-message channel with a person (``users``: one id)."""
        users = str(args.get("users", ""))
        if not users or "," in users:
            return {"ok": False, "error": "users_list_not_supplied" if not users else "not_supported"}
        return {"ok": True, "channel": {"id": dm_channel(users), "is_im": True, "user": users}}

    # -- Socket Mode ----------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_json({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0SLIPWAY"}})
        await self.changed(lambda: self._sockets.append(socket))
        async for message in socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                answer = json.loads(message.data)
                if "envelope_id" in answer:
                    await self.changed(lambda ack=answer: self.socket_acks.__setitem__(ack["envelope_id"], ack))
        await self.changed(lambda: self._sockets.remove(socket))
        return socket

    @property
    def socket_connected(self) -> bool:
        return bool(self._sockets)

    async def socket_command(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Deliver a slash command over Socket Mode; return the app's ack."""
        envelope_id = f"envelope-{next(self._envelopes)}"
        await self._sockets[-1].send_json({"envelope_id": envelope_id, "type": "slash_commands",
                                           "payload": fields, "accepts_response_payload": True})
        return await self.wait_for(lambda fake: fake.socket_acks.get(envelope_id))

    async def _response_url(self, request: web.Request) -> web.Response:
        payload = await request.json()
        response = Response(request.match_info["key"], payload, seq=self.next_seq())

        def record() -> None:
            self.responses.append(payload)
            self.response_posts.append(response)

        await self.changed(record)
        return web.Response(text="ok")


async def _arguments(request: web.Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            args.update(await request.json())
        else:
            args.update(dict(await request.post()))
    return args


def _json_arg(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _blocks(args: dict[str, Any]) -> list[dict[str, Any]]:
    return _json_arg(args.get("blocks")) or []


# Block Kit's documented limits, as Slack enforces them (invalid_blocks).
LIMITS = {"blocks": 50, "header": 150, "section": 3000, "field": 2000, "fields": 10, "block_id": 255,
          "action_id": 255, "button_text": 75, "value": 2000, "elements": 25, "context": 10, "options": 10,
          "option_value": 150, "confirm_text": 300}


def block_kit_problem(blocks: list[dict[str, Any]], max_blocks: int = LIMITS["blocks"]) -> str | None:
    """The first Block Kit limit ``blocks`` break, or None."""
    if len(blocks) > max_blocks:
        return f"{len(blocks)} blocks (at most {max_blocks})"
    for index, block in enumerate(blocks):
        if problem := _block_problem(block):
            return f"block {index}: {problem}"
    return None


def _block_problem(block: dict[str, Any]) -> str | None:
    checks = [(len(block.get("block_id", "")), "block_id")]
    kind = block.get("type")
    if kind == "header":
        checks.append((len(block["text"]["text"]), "header"))
    if kind == "section":
        checks.append((len(block.get("text", {}).get("text", "")), "section"))
        checks.append((len(block.get("fields", [])), "fields"))
        checks += [(len(f["text"]), "field") for f in block.get("fields", [])]
    if kind == "context":
        checks.append((len(block.get("elements", [])), "context"))
    if kind == "actions":
        checks.append((len(block.get("elements", [])), "elements"))
    for element in [block.get("accessory")] + list(block.get("elements", []) if kind == "actions" else []):
        if element:
            checks += _element_checks(element)
    return next((f"{name} is {size} (at most {LIMITS[name]})" for size, name in checks if size > LIMITS[name]), None)


def _element_checks(element: dict[str, Any]) -> list[tuple[int, str]]:
    checks = [(len(element.get("action_id", "")), "action_id"), (len(element.get("value", "")), "value")]
    if element.get("type") == "button":
        checks.append((len(element["text"]["text"]), "button_text"))
    if "confirm" in element:
        checks.append((len(element["confirm"]["text"]["text"]), "confirm_text"))
    options = element.get("options", [])
    checks.append((len(options), "options"))
    checks += [(len(option["value"]), "option_value") for option in options]
    return checks


def dm_channel(user: str) -> str:
    """The id of the direct-message channel between the bot and ``user``."""
    return "D" + user.removeprefix("U")


def usergroup_id(handle: str) -> str:
    """The id the fake workspace gives the usergroup ``@handle``."""
    return "S" + handle.upper().replace("-", "").replace(".", "").replace("_", "")


class SlackSender:
    """Posts requests to the bot as Slack does: signed, form-encoded."""

    def __init__(self, bot_url: str, signing_secret: str, fake: FakeSlack,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.bot_url = bot_url
        self.verifier = SignatureVerifier(signing_secret)
        self.fake = fake
        self._session = session
        self._triggers = itertools.count(1)

    async def __aenter__(self) -> "SlackSender":
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def signed_headers(self, body: str, timestamp: int | None = None) -> dict[str, str]:
        timestamp = int(time.time()) if timestamp is None else timestamp
        return {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": self.verifier.generate_signature(timestamp=str(timestamp), body=body),
        }

    async def post(self, body: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """POST ``body`` signed (unless ``headers`` are given) to the events URL."""
        assert self._session is not None, "use `async with SlackSender(...)`"
        async with self._session.post(self.bot_url, data=body.encode(),
                                      headers=headers or self.signed_headers(body)) as response:
            return response.status, await response.text()

    def command_body(self, text: str, user: str, channel: str = "C0CHAT", trigger_id: str | None = None) -> str:
        return urlencode(self.command_fields(text, user, channel, trigger_id))

    def command_fields(self, text: str, user: str, channel: str = "C0CHAT",
                       trigger_id: str | None = None) -> dict[str, str]:
        """A slash command's fields, as Slack sends them (form body or Socket Mode payload)."""
        return {
            "token": "legacy-unused", "team_id": TEAM_ID, "team_domain": "slipway-test",
            "channel_id": channel, "channel_name": "chat", "user_id": user, "user_name": user.lower(),
            "command": "/deploy", "text": text, "api_app_id": "A0SLIPWAY", "is_enterprise_install": "false",
            "response_url": self.fake.response_url(f"cmd-{user}"),
            "trigger_id": trigger_id or f"trigger.{next(self._triggers)}.{time.time_ns()}",
        }

    async def command(self, text: str, user: str, **kwargs: Any) -> tuple[int, str]:
        """Type ``/deploy {text}`` as ``user``; returns the HTTP status and the
        ack body (the ephemeral reply Slack would show)."""
        return await self.post(self.command_body(text, user, **kwargs))

    def click_body(self, message: Message, user: str, action_id: str, *, block_id: str | None = None,
                   selected: bool | list[str] | None = None, ephemeral: bool = False) -> str:
        """A ``block_actions`` payload for clicking ``action_id`` on ``message``.

        ``selected``: for checkboxes, what is ticked after the click (Slack
        sends every option then ticked): every option (True), none (False or
        None), or the options with these values. ``ephemeral``: the message was
        only shown to ``user``; Slack then sends no copy of it. A reply in a
        thread carries its ``thread_ts``, as in Slack.
        """
        block, element = _find_element(message.blocks, action_id, block_id)
        action: dict[str, Any] = {"type": element["type"], "action_id": action_id, "block_id": block["block_id"],
                                  "action_ts": f"{time.time():.6f}"}
        if element["type"] == "button":
            action.update(value=element.get("value", ""), text=element["text"])
        elif element["type"] == "checkboxes":
            if isinstance(selected, list):
                chosen = set(selected)
            else:
                chosen = {option["value"] for option in element["options"]} if selected else set()
            action["selected_options"] = [option for option in element["options"] if option["value"] in chosen]
        container: dict[str, Any] = {"type": "message", "message_ts": message.ts, "channel_id": message.channel,
                                     "is_ephemeral": ephemeral}
        copy: dict[str, Any] = {"type": "message", "ts": message.ts, "text": message.text, "blocks": message.blocks}
        if message.thread_ts:
            container["thread_ts"] = copy["thread_ts"] = message.thread_ts
        payload = {
            "type": "block_actions",
            "team": {"id": TEAM_ID, "domain": "slipway-test"},
            "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
            "api_app_id": "A0SLIPWAY",
            "token": "legacy-unused",
            "container": container,
            "trigger_id": f"trigger.{next(self._triggers)}.{time.time_ns()}",
            "channel": {"id": message.channel, "name": "deployments"},
            "response_url": self.fake.response_url(f"click-{user}"),
            "actions": [action],
        }
        if not ephemeral:
            payload["message"] = copy
        return urlencode({"payload": json.dumps(payload)})

    async def click(self, message: Message, user: str, action_id: str, **kwargs: Any) -> tuple[int, str]:
        return await self.post(self.click_body(message, user, action_id, **kwargs))

    def event_body(self, event: dict[str, Any]) -> str:
        """An Events API ``event_callback`` envelope around ``event`` (JSON, as Slack sends it)."""
        return json.dumps({
            "token": "legacy-unused", "team_id": TEAM_ID, "api_app_id": "A0SLIPWAY", "type": "event_callback",
            "event": {"event_ts": f"{time.time():.6f}", **event},
            "event_id": f"Ev{next(self._triggers):08d}", "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
        })

    async def event(self, event: dict[str, Any]) -> tuple[int, str]:
        """Deliver an Events API event (e.g. ``{"type": "app_home_opened", "user": ..., "tab": "home"}``)."""
        body = self.event_body(event)
        return await self.post(body, {**self.signed_headers(body), "Content-Type": "application/json"})


def _find_element(blocks: list[dict[str, Any]], action_id: str, block_id: str | None):
    for block in blocks:
        if block_id is not None and block.get("block_id") != block_id:
            continue
        for element in [block.get("accessory")] + list(block.get("elements", [])):
            if element and element.get("action_id") == action_id:
                return block, element
    raise LookupError(f"no element {action_id!r} (block {block_id!r}) in the message — is it still open?")
