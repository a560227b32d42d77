"""Shared fixtures: a fake Slack Web API on port 0, a real SQLite file, and
Slipway served over real HTTP, driven by signed requests."""

from __future__ import annotations

import json
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web

from bot.config import parse_config
from bot.runtime.composition import (
    SLACK_EVENTS_PATH,
    Slipway,
    create_slipway,
    create_web_app,
)
from bot.runtime.settings import Settings
from bot.sandbox.fake_slack import FakeSlack, Message, SlackSender
from bot.slack.blocks import ACTION_APPROVE
from store import Deploy, Store

SIGNING_SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test-token"
CHANNEL = "C0DEPLOYS"

ENGINE = str(Path(__file__).resolve().parent / "engines" / "engine.py")
PYTHON = sys.executable

CONFIG = textwrap.dedent(f"""\
    channel: C0DEPLOYS
    environments:
      - name: staging
      - name: production
        requires: staging
        approvals:
          required: 2
          approvers: [U0ALICE, U0BOB, U0CAROL, "@sre"]
          allow_self_approval: false
        checklist:
          - Migrations tested on staging
          - Rollback plan documented
    freeze:
      - environments: [production]
        from: "2026-12-24T00:00:00Z"
        until: "2026-12-27T00:00:00Z"
        reason: Holiday freeze
    services:
      api:
        deploy:
          command: ["{PYTHON}", "{ENGINE}"]
      web:
        deploy:
          command: ["{PYTHON}", "{ENGINE}"]
    """)


class Clock:
    """A clock tests move by hand (no sleeping)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class Harness:
    """Slipway running for real, between a fake Slack and a SQLite file."""

    def __init__(self, fake: FakeSlack, db_path: Path, config_text: str, clock: Clock,
                 sock: socket.socket | None = None, environ: dict[str, str] | None = None) -> None:
        self._sock = sock
        self.port = sock.getsockname()[1] if sock is not None else 0
        self.environ = environ
        self.fake = fake
        self.db_path = db_path
        self.config_source = config_text
        self.config = parse_config(config_text)
        self.clock = clock
        self.settings = Settings(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=fake.api_url)
        self.store: Store | None = None
        self.slipway: Slipway | None = None
        self._runner: web.AppRunner | None = None
        self.slack: SlackSender | None = None

    async def start(self) -> "Harness":
        self.store = Store.open(self.db_path, clock=self.clock)
        # the outbox's pacing is tested on its own (tests/test_outbox.py) with a clock it is given;
        # here it only needs to stay out of the way
        self.slipway = create_slipway(self.config, self.store, self.settings, clock=self.clock, environ=self.environ,
                                      outbox_interval=0.01)
        self._runner = web.AppRunner(create_web_app(self.slipway))
        await self._runner.setup()
        if self._sock is not None:  # the first start listens where the config says Slipway is
            site: web.BaseSite = web.SockSite(self._runner, self._sock)
            self._sock = None
        else:  # a restart comes back on the same port
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.slack = await SlackSender(self.url + SLACK_EVENTS_PATH, SIGNING_SECRET, self.fake).__aenter__()
        return self

    async def stop(self) -> None:
        if self.slack is not None:
            await self.slack.__aexit__()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.store is not None:
            self.store.close()

    async def restart(self) -> None:
        """Stop Slipway and start a new one on the same database file."""
        await self.stop()
        await self.start()

    async def settle(self) -> None:
        """Wait for the background work the last request started."""
        assert self.slipway is not None
        await self.slipway.tasks.wait_idle()

    # -- conveniences that read like what a person does ---------------------------

    async def command(self, text: str, user: str = "U0DAVE", **kwargs) -> str:
        assert self.slack is not None
        status, body = await self.slack.command(text, user, **kwargs)
        assert status == 200, (status, body)
        await self.settle()
        return body

    async def click(self, message: Message, user: str, action_id: str, **kwargs) -> int:
        assert self.slack is not None
        status, _ = await self.slack.click(message, user, action_id, **kwargs)
        await self.settle()
        return status

    def message_of(self, deploy: Deploy | int) -> Message:
        deploy = self.deploy(deploy if isinstance(deploy, int) else deploy.id)
        assert deploy.channel and deploy.message_ts, f"deploy #{deploy.id} has no message"
        return self.fake.messages[(deploy.channel, deploy.message_ts)]

    def deploy(self, deploy_id: int) -> Deploy:
        assert self.store is not None
        return self.store.get_deploy(deploy_id)

    def latest_deploy(self) -> Deploy:
        assert self.store is not None
        row = self.store.db.execute("SELECT max(id) FROM deploys").fetchone()
        return self.store.get_deploy(row[0])

    async def ship(self, service: str, version: str, approver: str, requester: str = "U0DAVE") -> Deploy:
        """A version recorded as succeeded on staging, then requested on
        production by ``requester`` and approved by ``approver`` for real
        (the production rung of these tests has no checklist); it must succeed."""
        self.mark_succeeded(service, "staging", version)
        await self.command(f"{service} {version} production", user=requester)
        deploy = self.latest_deploy()
        await self.click(self.message_of(deploy), approver, ACTION_APPROVE)
        deploy = self.deploy(deploy.id)
        assert deploy.status == "succeeded", (deploy.status, deploy.status_reason)
        return deploy

    def mark_succeeded(self, service: str, environment: str, version: str, user: str = "U0DAVE") -> Deploy:
        """Record a deploy that went all the way through the store's own
        transitions (the engine that gets it there is the execution issue's)."""
        assert self.store is not None
        deploy = self.store.create_deploy(
            service=service, environment=environment, version=version, version_prefixed=False,
            requested_by=user, previous_version=None, checklist=[], needs_approval=False)
        for state in ("deploying", "verifying", "succeeded"):
            deploy = self.store.transition(deploy.id, allowed_from=(deploy.status,), to=state,
                                           actor=None, action=state)
        return deploy


@pytest.fixture
def record(tmp_path: Path) -> Path:
    """Where tests/engines/engine.py, given ``--record``, writes what it was run with."""
    return tmp_path / "engine.jsonl"


def engine_calls(record: Path) -> list[dict]:
    """Every run of the stand-in engine: its argv and SLIPWAY_* variables."""
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc))


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(token=BOT_TOKEN, usergroups={"sre": ["U0SRE1", "U0SRE2"], "oncall": ["U0PAGER"]}).start()
    yield fake
    await fake.stop()


@pytest.fixture
def config_text() -> str:
    return CONFIG


@pytest.fixture
def slipway_socket() -> socket.socket:
    """Slipway's listening socket, bound before the config is written, so a
    config can name Slipway's own URL (``public_url``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def slipway_url(slipway_socket: socket.socket) -> str:
    return f"http://127.0.0.1:{slipway_socket.getsockname()[1]}"


@pytest.fixture
def environ() -> dict[str, str] | None:
    """Where engine secrets are read (None: the process environment)."""
    return None


@pytest.fixture
async def harness(fake_slack: FakeSlack, tmp_path: Path, config_text: str, clock: Clock,
                  slipway_socket: socket.socket, environ: dict[str, str] | None) -> AsyncIterator[Harness]:
    running = await Harness(fake_slack, tmp_path / "slipway.db", config_text, clock, slipway_socket, environ).start()
    yield running
    await running.stop()
