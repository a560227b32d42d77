"""Shared fixtures: a fake Slack Web API on port 0, a real SQLite file, and
Slipway served over real HTTP, driven by signed requests."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from aiohttp import web
from slack_sdk.http_retry import builtin_async_handlers

from bot.config import parse_config
from bot.errors import ConfigError
from bot.runtime.composition import (
    SLACK_EVENTS_PATH,
    Slipway,
    create_slipway,
    create_web_app,
)
from bot.runtime.settings import Settings
from bot.sandbox import Sandbox, demo
from bot.sandbox.fake_slack import FakeSlack, Message, SlackSender
from bot.slack.blocks import ACTION_APPROVE, ACTION_CHECKLIST
from store import Deploy, Store

if TYPE_CHECKING:
    from tests.processes import SlipwayProcess

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


HOLIDAY_FREEZE = {"environments": ["production"], "from": "2026-12-24T00:00:00Z", "until": "2026-12-27T00:00:00Z",
                  "reason": "Holiday freeze"}
WEEKEND_FREEZE = {"environments": ["production"], "weekly": {"from": "Fri 15:00", "until": "Mon 09:00"},
                  "timezone": "Europe/Berlin", "reason": "No production deploys over the weekend"}


def engine(*args: object) -> dict[str, list[str]]:
    """A deploy (or rollback) engine: the stand-in tests/engines/engine.py, run with ``args``."""
    return {"command": [PYTHON, ENGINE, *map(str, args)]}


def approvals(*approvers: str, required: int = 1) -> dict[str, Any]:
    """An environment's approvals block: ``required`` approvals from ``approvers``."""
    return {"required": required, "approvers": list(approvers)}


def config_yaml(services: dict[str, Any], *, production: dict[str, Any] | None = None,
                environments: list[dict[str, Any]] | None = None, **sections: Any) -> str:
    """A test's config, as the YAML Slipway reads: the deploy channel
    (C0DEPLOYS); the ladder of most tests, staging then production with
    ``production``'s settings (or else ``environments``); any other top-level
    ``sections`` (freeze, alerts, public_url…); and ``services``."""
    if environments is None:
        environments = [{"name": "staging"}, {"name": "production", **(production or {})}]
    document = {"channel": CHANNEL, "environments": environments, **sections, "services": services}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


class Clock:
    """A clock tests move by hand (no sleeping)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class FakeTime:
    """A monotonic clock that moves only when slept on, for the code that
    takes ``sleep`` and ``monotonic`` (the outbox, verification): pacing,
    retries and deadlines pass at once, and the waits asked for are kept in
    ``sleeps`` to be asserted exactly."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self.held = False  # sleeps block (until cancelled) instead of passing
        self.slept = asyncio.Event()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.slept.set()
        if self.held:
            await asyncio.Future()
        self.now += seconds
        await asyncio.sleep(0)  # the others' turn, as a real sleep would give


# the sandbox's canary on production, through its stages in about a second
QUICK_ROLLOUT = demo.Rollout(pause=0.3, bake=0.3, interval=0.15)


def quick_sandbox(db_path: Path, state_dir: Path, rollout: demo.Rollout = QUICK_ROLLOUT) -> Sandbox:
    """A sandbox not paced for a person watching: its outbox posts at once,
    the demo deploy's steps take no time and its canary's stages ``rollout``'s."""
    return Sandbox(db_path, state_dir, outbox_interval=0.01, deploy_pace=0, rollout=rollout)


class Harness:
    """Slipway running for real, between a fake Slack and a SQLite file.
    Verification's retries and deadlines run on ``verify_time``, a
    :class:`FakeTime`: a health check that never passes fails at once."""

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
        self.verify_time = FakeTime()
        self.outbox_time: FakeTime | None = None  # None: the outbox paces and retries in real time

    async def start(self) -> "Harness":
        self.store = Store.open(self.db_path, clock=self.clock)
        # the outbox's pacing is tested on its own (tests/test_outbox.py) with a clock it is given;
        # here it only needs to stay out of the way
        self.slipway = create_slipway(self.config, self.store, self.settings, clock=self.clock, environ=self.environ,
                                      outbox_interval=0.01, verify_time=self.verify_time,
                                      outbox_time=self.outbox_time)
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
        """Wait for the background work the last request started, and for
        the outbox to send what it can send now (each may give the other work)."""
        assert self.slipway is not None
        while True:
            await self.slipway.tasks.wait_idle()
            await self.slipway.outbox.wait_quiet()
            if self.slipway.tasks.pending == 0:
                return

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
        return self.store.deploys.get(deploy_id)

    def latest_deploy(self) -> Deploy:
        assert self.store is not None
        row = self.store.db.execute("SELECT max(id) FROM deploys").fetchone()
        return self.store.deploys.get(row[0])

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

    async def tick(self, deploy: Deploy, user: str, *positions: int) -> None:
        """Tick the checklist items at ``positions`` on ``deploy``'s message, as ``user``."""
        for position in positions:
            await self.click(self.message_of(deploy), user, ACTION_CHECKLIST,
                             block_id=f"checklist:{deploy.id}:{position}", selected=True)

    async def request_and_approve(self, service: str, version: str) -> Deploy:
        """Through the door, on the production rung of :data:`CONFIG` (two
        checklist items, two approvals): ``version`` recorded as succeeded on
        staging, requested on production by U0DAVE, both items ticked and
        approved by Alice and Bob; the engine then runs it. The deploy as it
        stands after."""
        self.mark_succeeded(service, "staging", version)
        await self.command(f"{service} v{version} production", user="U0DAVE")
        deploy = self.latest_deploy()
        await self.tick(deploy, "U0ALICE", 0, 1)
        for approver in ("U0ALICE", "U0BOB"):
            await self.click(self.message_of(deploy), approver, ACTION_APPROVE)
        return self.deploy(deploy.id)

    def mark_succeeded(self, service: str, environment: str, version: str, user: str = "U0DAVE") -> Deploy:
        """Record a deploy that went all the way through the store's own
        transitions (the engine that gets it there is the execution issue's)."""
        assert self.store is not None
        deploy = self.store.deploys.create(
            service=service, environment=environment, version=version, version_prefixed=False,
            requested_by=user, previous_version=None, checklist=[], needs_approval=False)
        for state in ("deploying", "verifying", "succeeded"):
            deploy = self.store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to=state,
                                                   actor=None, action=state)
        return deploy


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser tests first: they are the longest group and run on one
    worker (pytest-xdist's loadgroup), so the others must not wait for them
    at the end."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is None)


@pytest.fixture
def record(tmp_path: Path) -> Path:
    """Where tests/engines/engine.py, given ``--record``, writes what it was run with."""
    return tmp_path / "engine.jsonl"


def config_problems(text: str) -> list[str]:
    """What Slipway's config check finds wrong with ``text`` (it must find something)."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


def said(body: str) -> str:
    """The text of an ack (bolt sends a bare text as it is, anything more as JSON)."""
    try:
        return json.loads(body)["text"]
    except ValueError:
        return body


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
async def serve(fake_slack: FakeSlack) -> AsyncIterator[Callable[..., "SlipwayProcess"]]:
    """Makes ``slipway serve`` processes (not started) against the fake Slack:
    ``serve(config, db, socket_mode=False)``. Any still running when the
    test ends is killed."""
    from tests.processes import SlipwayProcess  # it imports this module's constants

    made: list[SlipwayProcess] = []

    def make(config: Path, db: Path, **kwargs: Any) -> SlipwayProcess:
        made.append(SlipwayProcess(config, db, fake_slack, **kwargs))
        return made[-1]

    yield make
    for process in made:
        await process.close()


@pytest.fixture
def outbox_time() -> FakeTime | None:
    """The outbox's clock: real time (None), unless a test module overrides
    this fixture with a FakeTime to see every wait the outbox asks for."""
    return None


@pytest.fixture
def slack_sdk_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait slack_sdk's rate-limit handler (the app client's, as
    Slipway attaches it) asks for after a 429: Retry-After plus up to a
    second of jitter. They are recorded, not slept: the handler and its
    retries are the real ones, only its ``asyncio.sleep`` passes at once."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(builtin_async_handlers, "asyncio", SimpleNamespace(sleep=sleep))
    return waits


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
                  slipway_socket: socket.socket, environ: dict[str, str] | None,
                  outbox_time: FakeTime | None) -> AsyncIterator[Harness]:
    harness = Harness(fake_slack, tmp_path / "slipway.db", config_text, clock, slipway_socket, environ)
    harness.outbox_time = outbox_time
    running = await harness.start()
    yield running
    await running.stop()
