"""The sandbox: Slipway, unchanged, between the fake Slack and a page that
plays Slack's client.

Three aiohttp servers in one process, all on loopback:

* :class:`~bot.sandbox.fake_slack.FakeSlack`, the Web API Slipway talks to (the one
  the test-suite uses), on a free port;
* Slipway itself (``create_slipway`` + ``create_web_app``, as ``slipway
  serve`` builds it), on a free port, with a signing secret and an alert
  token made up for this run;
* the page (bot/sandbox/page.py), on the port asked for; it also stands in
  for the demo service's health endpoint and for the Prometheus its canary's
  error-rate check asks (``GET /api/v1/query``).

Whatever the person at the page does reaches Slipway as Slack (or a
monitor) would send it: a slash command or a click signed by
:class:`~bot.sandbox.fake_slack.SlackSender`, an alert as a real webhook with its
bearer token. The browser never holds either secret.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.config import Config
from bot.errors import SlipwayError
from bot.runtime.composition import (
    SLACK_EVENTS_PATH,
    Slipway,
    create_slipway,
    create_web_app,
)
from bot.runtime.settings import Settings
from bot.runtime.tasks import until_stopped
from bot.sandbox import demo, view
from bot.sandbox.fake_slack import FakeSlack, Message, SlackSender
from bot.sandbox.page import is_loopback, page_app
from store import Deploy, Store
from store.status import ACTIVE_STATES

log = logging.getLogger(__name__)

COMMAND = "/deploy"
MAX_COMMAND_TEXT = 4000
DRAIN_SECONDS = 5.0  # on stop, how long a demo deploy in progress may take to finish
ALERT_VALUE, ALERT_BASELINE = 0.12, 0.004  # 30x the baseline: above the 5x that pages
TRACK = re.compile(r'\btrack\s*=\s*"(canary|stable)"')  # which instances a query of the demo config asks about


class PageError(SlipwayError):
    """What the page asked for cannot be done; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Reply:
    """What Slack shows a person that is not a Web API call: the body a
    slash command was acked with (or Slack's own word when there is none)."""

    seq: int
    user: str
    text: str
    blocks: list[dict[str, Any]]
    command: str  # what the person typed
    public: bool = False  # response_type "in_channel": everyone sees it
    posted_at: float = field(default_factory=time.time)


class Sandbox:
    """Slipway with a fake Slack and the page that shows it."""

    def __init__(self, db_path: Path, state_dir: Path, *, outbox_interval: float = 0.25,
                 long_poll: float = 25.0, deploy_pace: float = demo.PACE,
                 rollout: demo.Rollout = demo.ROLLOUT) -> None:
        self.db_path = db_path
        self.state_dir = state_dir
        self.outbox_interval = outbox_interval
        self.deploy_pace = deploy_pace  # seconds per step of the demo deploy, slow enough to watch
        self.rollout = rollout  # the pace of the canary on production (read at start)
        self.failing_canary: int | None = None  # the deploy whose canary "Make the canary fail" broke
        self.long_poll = long_poll  # how long a state request waits for something new
        self.url = ""
        self.slipway_url = ""
        self.ready = False
        self.closing = False
        self.replies: list[Reply] = []
        # timestamps from now: a kept database names messages of earlier runs, which must not be taken for new ones
        self.fake = FakeSlack(token="xoxb-sandbox-" + secrets.token_hex(8), usergroups=demo.USERGROUPS,
                              ts_start_us=time.time_ns() // 1000)
        self._signing_secret = secrets.token_hex(16)
        self._alert_token = secrets.token_hex(16)
        self._alerts_sent = 0
        self.config: Config | None = None
        self.store: Store | None = None
        self.slipway: Slipway | None = None
        self.sender: SlackSender | None = None
        self._page: web.AppRunner | None = None
        self._bot: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "Sandbox":
        """Start everything; the page listens on ``host:port`` (0: a free port).

        Raises:
            PageError: ``host`` is not a loopback address.
            OSError: the port cannot be bound (e.g. in use).
        """
        if not is_loopback(host):
            raise PageError(f"the sandbox listens on loopback only (127.0.0.1, ::1 or localhost), not {host!r}: "
                            "it has no authentication and speaks for made-up people")
        # The page first: the demo config names its health endpoint.
        self._page = web.AppRunner(page_app(self), shutdown_timeout=2.0)
        await self._page.setup()
        await web.TCPSite(self._page, host, port).start()
        bound = self._page.addresses[0]
        self.url = f"http://{'[' + bound[0] + ']' if ':' in bound[0] else bound[0]}:{bound[1]}"
        await self.fake.start()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config = demo.load(self.url, self.state_dir, self.deploy_pace, self.rollout)
        self.store = Store.open(self.db_path)
        demo.seed_history(self.store, self.config, self.state_dir)
        settings = Settings(bot_token=self.fake.token, signing_secret=self._signing_secret, api_url=self.fake.api_url)
        environ = {**os.environ, self.config.alerts.generic_token_env: self._alert_token}
        self.slipway = create_slipway(self.config, self.store, settings, environ=environ,
                                      outbox_interval=self.outbox_interval)
        self._bot = web.AppRunner(create_web_app(self.slipway))
        await self._bot.setup()
        await web.TCPSite(self._bot, "127.0.0.1", 0).start()
        self.slipway_url = f"http://127.0.0.1:{self._bot.addresses[0][1]}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.sender = SlackSender(self.slipway_url + SLACK_EVENTS_PATH, self._signing_secret, self.fake, self._session)
        self.ready = True
        return self

    async def stop(self) -> None:
        """Stop everything; a demo deploy in progress gets a few seconds to end."""
        self.closing = True
        await self.fake.changed()  # lets waiting state requests answer at once
        if self.slipway is not None:
            left = await self.slipway.runner.drain(DRAIN_SECONDS)
            if left:
                log.warning("stopping with deploys %s unfinished; they are marked failed at the next start", left)
        for runner in (self._bot, self._page):
            if runner is not None:
                await runner.cleanup()
        if self._session is not None:
            await self._session.close()
        await self.fake.stop()
        if self.store is not None:
            self.store.close()

    # -- what the person at the page does --------------------------------------------

    async def command(self, user: str, typed: str) -> Reply | None:
        """Type ``/deploy …`` (or just what follows it) as ``user``.

        Returns the reply shown to the person (None when Slipway acked with
        nothing to show).

        Raises:
            PageError: unknown person, or not a ``/deploy`` command.
        """
        person = self.person(user)
        typed = typed.strip()
        if len(typed) > MAX_COMMAND_TEXT:
            raise PageError(f"that command is {len(typed)} characters long; Slack takes at most {MAX_COMMAND_TEXT}")
        name, _, rest = typed.partition(" ") if typed.startswith("/") else (COMMAND, "", typed)
        if name != COMMAND:
            return await self._reply(person.id, f"{name} {rest}".strip(),
                                     {"text": f"`{name}` is not a valid command. In this sandbox the one command "
                                              f"installed is `{COMMAND}`; try `{COMMAND} help`."})
        text = rest.strip()
        status, body = await self.sender.command(text, person.id, channel=self.config.channel)
        shown = f"{COMMAND} {text}".strip()
        if status != 200:
            return await self._reply(person.id, shown, {"text": f"`{COMMAND}` failed: Slipway answered HTTP {status}."})
        return await self._reply(person.id, shown, _ack_body(body)) if body.strip() else None

    async def click(self, user: str, action_id: str, block_id: str | None, *, channel: str | None = None,
                    ts: str | None = None, reply: int | None = None, selected: bool | None = None) -> int:
        """Click ``action_id`` (tick it, for a checkbox: ``selected``) on a
        message in the channel (``channel`` and ``ts``) or on a reply shown
        only to ``user`` (``reply``: its ``seq``). Returns Slipway's HTTP status.

        Raises:
            PageError: unknown person, message or element.
        """
        person = self.person(user)
        message, ephemeral = self._clickable(person.id, channel, ts, reply)
        try:
            body = self.sender.click_body(message, person.id, action_id, block_id=block_id, selected=selected,
                                          ephemeral=ephemeral)
        except LookupError:
            raise PageError("that button is no longer on the message: it changed meanwhile", 409) from None
        status, _ = await self.sender.post(body)
        return status

    async def simulate_alert(self) -> dict[str, Any]:
        """Post a page-level error-rate alert for the demo service, as a monitor
        would, on the environment of the latest deploy; Slipway's answer."""
        latest = self.store.deploys.history(demo.SERVICE, limit=1)
        environment = latest[0].environment if latest else self.config.environment_names[-1]
        self._alerts_sent += 1
        alert = {
            "id": f"sandbox-{demo.SERVICE}-{environment}-{self._alerts_sent}", "service": demo.SERVICE,
            "environment": environment, "metric": "error_rate", "value": ALERT_VALUE, "baseline": ALERT_BASELINE,
            "traffic": 1800, "status": "firing", "severity": "critical", "name": "DemoErrorRate",
            "summary": "5xx on /checkout (simulated from the sandbox page)",
        }
        return await self.post_alert(alert)

    async def fail_canary(self) -> dict[str, Any]:
        """Make the canary of the deploy under way on production answer
        :data:`~bot.sandbox.demo.FAILING_CANARY_ERROR_RATE` errors, so that
        its next measurement fails the analysis (failure_limit 1) and Slipway
        aborts it (in the bake: fails it and offers its rollback). Only that
        deploy's canary: the next deploy starts healthy again.

        Raises:
            PageError: no deploy of the demo is under way on production.
        """
        deploy = self._canary_deploy()
        if deploy is None:
            raise PageError(f"No canary to fail: no deploy of {demo.SERVICE} is under way on "
                            f"{demo.CANARY_ENVIRONMENT}. Deploy one (`/deploy {demo.SERVICE} 1.0.0 "
                            f"{demo.CANARY_ENVIRONMENT}`, after staging) and press this while its stages run.", 409)
        self.failing_canary = deploy.id
        return {"ok": True, "deploy": deploy.id, "version": deploy.display_version,
                "environment": deploy.environment, "error_rate": demo.FAILING_CANARY_ERROR_RATE}

    def error_rate(self, query: str) -> float | None:
        """What the sandbox's stand-in for Prometheus answers to ``query``:
        the error rate of the stable or the canary instances of the demo
        (told apart by the query's ``track`` label), or None (no data) for a
        query about neither."""
        track = TRACK.search(query)
        if track is None:
            return None
        if track.group(1) == "stable":
            return demo.STABLE_ERROR_RATE
        latest = self.store.deploys.history(demo.SERVICE, demo.CANARY_ENVIRONMENT, limit=1)
        if self.failing_canary is not None and latest and latest[0].id == self.failing_canary:
            return demo.FAILING_CANARY_ERROR_RATE
        return demo.CANARY_ERROR_RATE

    def _canary_deploy(self) -> Deploy | None:
        """The deploy of the demo under way (or waiting) on production, if any."""
        latest = self.store.deploys.history(demo.SERVICE, demo.CANARY_ENVIRONMENT, limit=1)
        if latest and latest[0].status in ACTIVE_STATES and latest[0].rollback_of is None:
            return latest[0]
        return None

    async def post_alert(self, alert: dict[str, Any]) -> dict[str, Any]:
        """POST ``alert`` (Slipway's generic format) to Slipway's alert webhook."""
        headers = {"Authorization": f"Bearer {self._alert_token}"}
        async with self._session.post(f"{self.slipway_url}/webhooks/generic", json=alert, headers=headers) as answer:
            body = await answer.json(content_type=None)
            if answer.status != 200:
                raise PageError(f"Slipway refused the alert (HTTP {answer.status}): {body.get('error')}", 502)
            return body

    async def slipway_health(self) -> tuple[bool, dict[str, Any]]:
        """Slipway's own ``/healthz``: whether it is healthy, and what it said."""
        async with self._session.get(f"{self.slipway_url}/healthz") as answer:
            return answer.status == 200, await answer.json(content_type=None)

    # -- helpers ------------------------------------------------------------------------

    def person(self, user: str) -> demo.Person:
        """The demo person with id ``user``.

        Raises:
            PageError: there is none.
        """
        person = demo.PEOPLE_BY_ID.get(user)
        if person is None:
            known = ", ".join(f"{p.id} ({p.name})" for p in demo.PEOPLE)
            raise PageError(f"unknown person {user!r}; the sandbox's people are {known}")
        return person

    def _clickable(self, user: str, channel: str | None, ts: str | None, reply: int | None) -> tuple[Message, bool]:
        if reply is not None:
            for shown in view.replies_for(self, user):
                if shown["seq"] == reply:
                    return Message(self.config.channel, shown["ts"], shown["text"], shown["blocks"]), True
            raise PageError(f"no reply {reply} was shown to {user}")
        message = self.fake.messages.get((channel or "", ts or ""))
        if message is None:
            raise PageError(f"no message {ts!r} in channel {channel!r}", 404)
        return message, False

    async def _reply(self, user: str, command: str, body: dict[str, Any]) -> Reply:
        reply = Reply(self.fake.next_seq(), user, str(body.get("text") or ""), list(body.get("blocks") or []),
                      command, public=body.get("response_type") == "in_channel")
        await self.fake.changed(lambda: self.replies.append(reply))
        return reply


def _ack_body(body: str) -> dict[str, Any]:
    """A slash command's ack as Slack reads it: JSON (text, blocks,
    response_type) or, failing that, plain text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return {"text": body}
    return parsed if isinstance(parsed, dict) else {"text": body}


async def serve(host: str, port: int, db_path: Path, state_dir: Path) -> int:
    """``slipway sandbox``: run until Ctrl-C or SIGTERM."""
    sandbox = Sandbox(db_path, state_dir)
    try:
        await sandbox.start(host, port)
    except OSError as exc:
        await sandbox.stop()
        hint = " (try --port 0 for a free one)" if port else ""
        print(f"slipway: cannot listen on {host}:{port}: {exc.strerror or exc}{hint}", file=sys.stderr)
        return 2
    print(f"Slipway sandbox: {sandbox.url}/", flush=True)
    print(f"  database {db_path}; Slipway itself on {sandbox.slipway_url}, fake Slack on {sandbox.fake.url}. "
          "Ctrl-C stops it.", flush=True)
    try:
        await until_stopped()
    finally:
        await sandbox.stop()
    return 0
