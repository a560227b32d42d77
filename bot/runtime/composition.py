"""Building Slipway: one factory wires config, store, Slack client, bolt
app and the aiohttp web application together. No globals: everything a
listener needs is passed in here."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from datetime import datetime

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

import handlers
import handlers.alerts
import handlers.webhooks
from bot.alerts.relay import AlertRelay
from bot.config import Config
from bot.deploys.nudges import Nudges
from bot.deploys.rollbacks import RollbackPlans, Rollbacks
from bot.deploys.runner import DeployRunner
from bot.deploys.workflow import DeployWorkflow
from bot.events import (
    AlertsRelayed,
    ChecklistBlocked,
    DeployChanged,
    DeployPosted,
    EventBus,
    LocksChanged,
    LocksExpired,
    RequestExpired,
    SlackWorkQueued,
)
from bot.executors import EngineReports
from bot.runtime.health import Health
from bot.runtime.logs import deploy_context
from bot.runtime.metrics import Metrics, surface_of
from bot.runtime.settings import Settings
from bot.runtime.tasks import BackgroundTasks
from bot.slack.deploy_messages import DeployMessages
from bot.slack.directory import Directory
from bot.slack.home import HomeTabs
from bot.slack.outbox import Outbox
from bot.slack.status_replies import StatusReplies
from handlers.errors import deploy_of_click
from store import Store, utc_now

log = logging.getLogger(__name__)

SLACK_EVENTS_PATH = "/slack/events"


class WaitingClock(Protocol):
    """A sleep and a monotonic clock that agree with each other."""

    async def sleep(self, seconds: float) -> None: ...

    def monotonic(self) -> float: ...


@dataclass
class Slipway:
    """Everything one running Slipway is made of."""

    config: Config
    store: Store
    client: AsyncWebClient
    bolt: AsyncApp
    events: EventBus
    workflow: DeployWorkflow
    messages: DeployMessages
    tasks: BackgroundTasks
    reports: EngineReports
    rollbacks: Rollbacks
    runner: DeployRunner
    outbox: Outbox
    alert_relay: AlertRelay | None
    nudges: Nudges
    home_tabs: HomeTabs
    status_replies: StatusReplies  # /deploy status and stats, the App Home
    metrics: Metrics  # GET /metrics
    health: Health  # GET /healthz
    socket_mode: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)  # where engine and monitor secrets are read

    async def close(self) -> None:
        await self.nudges.close()
        await self.tasks.close()
        await self.outbox.close()  # before the session it shares is closed
        if self.client.session is not None:
            await self.client.session.close()


def subscribe(slipway: Slipway) -> None:
    """Who listens to what: every subscriber of every event, in one list.

    Subscribers of one event are told in this order (see ``bot.events``).
    """
    bus, relay = slipway.events, slipway.alert_relay
    # a deploy's message is in the channel
    bus.subscribe(DeployPosted, slipway.runner.start_if_approved)  # a request that needs no approval starts now
    bus.subscribe(DeployPosted, slipway.home_tabs.changed)
    # a deploy's record changed (state, ticks, approvals)
    bus.subscribe(DeployChanged, slipway.messages.deploy_changed)  # its message is redrawn
    bus.subscribe(DeployChanged, slipway.nudges.deploy_changed)  # its requester is told of news by DM
    bus.subscribe(DeployChanged, slipway.home_tabs.changed)
    bus.subscribe(DeployChanged, slipway.runner.start_if_approved)  # the final approval starts it
    if relay is not None:
        bus.subscribe(DeployChanged, relay.deploy_changed)  # rolled back: its alerts stop offering a rollback
    # requests that wait
    bus.subscribe(RequestExpired, slipway.nudges.request_expired)  # its thread says so
    bus.subscribe(ChecklistBlocked, slipway.nudges.checklist_blocked)  # the requester is asked to tick
    # locks and blocked versions
    bus.subscribe(LocksExpired, slipway.nudges.locks_expired)  # the channel is told
    bus.subscribe(LocksChanged, slipway.home_tabs.changed)
    # monitors' alerts
    bus.subscribe(AlertsRelayed, slipway.metrics.count_alerts)
    bus.subscribe(AlertsRelayed, slipway.rollbacks.auto_rollback_pages)  # where auto_rollback is on
    bus.subscribe(SlackWorkQueued, lambda event: slipway.outbox.notify())


def create_slack_client(settings: Settings, metrics: Metrics | None = None) -> AsyncWebClient:
    """The real slack_sdk client, pointed at ``SLACK_API_URL`` when set.

    A 429 is answered by waiting Retry-After and trying again (slack_sdk's
    handler), so a rate-limited message is delayed, never dropped (and
    counted in ``metrics`` first). One
    aiohttp session is kept for every call: without it slack_sdk opens a new
    connection (and TLS handshake) per call, which measurably slowed acks
    under load (bench/ack_latency.py).
    """
    kwargs = {"base_url": settings.api_url} if settings.api_url else {}
    client = AsyncWebClient(token=settings.bot_token, session=aiohttp.ClientSession(), **kwargs)
    if metrics is not None:
        client.retry_handlers.insert(0, metrics.rate_limit_counter())
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=10))
    return client


def create_slipway(config: Config, store: Store, settings: Settings,
                   clock: Callable[[], datetime] = utc_now, environ: Mapping[str, str] | None = None,
                   outbox_interval: float = 1.0, verify_time: WaitingClock | None = None) -> Slipway:
    """Wire a Slipway from its parts (the store is owned by the caller).
    ``outbox_interval``: seconds between two outbox posts to one channel
    (Slack allows about one a second). ``verify_time``: how verification
    waits between health-check attempts and tells its deadline (default:
    real time; tests pass a clock that moves instantly)."""
    metrics = Metrics()
    client = create_slack_client(settings, metrics)
    bolt = AsyncApp(
        client=client,
        signing_secret=settings.signing_secret,
        # Socket Mode requests are not signed; HTTP ones always are.
        request_verification_enabled=not settings.socket_mode,
        process_before_response=False,
    )
    tasks = BackgroundTasks()
    events = EventBus()
    directory = Directory(client)
    environ = os.environ if environ is None else environ
    workflow = DeployWorkflow(config, store, directory, events, clock)
    plans = RollbackPlans(config, store)
    messages = DeployMessages(client, workflow, tasks, events, rollback_offer=plans.offer)
    rollbacks = Rollbacks(plans, directory, messages, events, tasks)
    nudges = Nudges(config, store, workflow, messages, directory, events, tasks, clock)
    reports = EngineReports(store)
    runner = DeployRunner(config, store, messages, events, tasks, reports, blocked_reason=workflow.blocked_reason,
                          reopen_if_stale=nudges.reopen_if_stale, observe_executor=metrics.observe_executor,
                          environ=environ, **({"verify_sleep": verify_time.sleep,
                                               "verify_clock": verify_time.monotonic} if verify_time else {}))
    metrics.watch_store(store, config.environment_names)
    outbox = Outbox(store, client, interval=outbox_interval, metrics=metrics)
    relay = AlertRelay(config, store, plans.offer, clock, directory=directory, events=events,
                       tasks=tasks) if config.alerts is not None else None
    status_replies = StatusReplies(config, store, clock)
    home_tabs = HomeTabs(client, status_replies.home, tasks)
    slipway = Slipway(config, store, client, bolt, events, workflow, messages, tasks, reports, rollbacks, runner,
                      outbox, relay, nudges, home_tabs, status_replies, metrics, Health(store, client), settings.socket_mode,
                      environ)
    subscribe(slipway)
    handlers.register(bolt, slipway)
    return slipway


def create_web_app(slipway: Slipway) -> web.Application:
    """The one aiohttp server: Slack's events endpoint, webhooks, the health
    check and the metrics."""
    app = web.Application(client_max_size=1024 * 1024)
    metrics = slipway.metrics

    async def slack_events(request: web.Request) -> web.Response:
        """Answer Slack, and measure it: from arrival to the response being
        ready, refusals included (what Slack sees as our ack latency)."""
        started = time.monotonic()
        surface, status = "other", 500  # what an exception escaping from here amounts to
        try:
            surface, response = await answer_slack(request)
            status = response.status
            return response
        finally:
            metrics.observe_slack_request(surface, status, time.monotonic() - started)

    async def answer_slack(request: web.Request) -> tuple[str, web.Response]:
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "0")
        if not timestamp.isdigit():
            # slack_sdk's verifier raises on a non-numeric timestamp (a 500);
            # an unverifiable request is an unauthorised one.
            return "other", web.json_response({"error": "invalid request timestamp"}, status=401)
        try:
            bolt_request = await to_bolt_request(request)
        except ValueError as exc:  # e.g. a `payload=` that is not JSON; bolt parses it eagerly
            return "other", web.json_response({"error": f"malformed request body: {exc}"}, status=400)
        surface = surface_of(bolt_request.body)  # bolt's parse, not a second one
        # the listener's task, and the work it starts, inherit the click's deploy as log context
        with slipway.tasks.ack_first.answering(), deploy_context(deploy_of_click(bolt_request.body)):
            bolt_response = await slipway.bolt.async_dispatch(bolt_request)
        return surface, await to_aiohttp_response(bolt_response)

    health = slipway.health

    async def healthz(request: web.Request) -> web.Response:
        status, body = await health.report()
        return web.json_response(body, status=status, dumps=json.dumps)

    async def metrics_page(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def recover(app: web.Application) -> None:
        slipway.outbox.start()  # resumes whatever a previous Slipway left queued
        slipway.runner.recover()
        slipway.nudges.start()  # expiry and reminders

    async def shutdown(app: web.Application) -> None:
        await slipway.close()

    if not slipway.socket_mode:
        # In Socket Mode requests arrive over the socket unsigned; an HTTP door
        # that skipped verification would let anyone in, so there is none.
        app.router.add_post(SLACK_EVENTS_PATH, slack_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    handlers.webhooks.register(app, slipway)
    handlers.alerts.register(app, slipway)
    app.on_startup.append(recover)
    app.on_cleanup.append(shutdown)
    return app
