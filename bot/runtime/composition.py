"""Building Slipway: one factory wires config, store, Slack client, bolt
app and the aiohttp web application together. No globals: everything a
listener needs is passed in here."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

import handlers
import handlers.alerts
import handlers.api
import handlers.http
import handlers.webhooks
from bot.alerts.relay import AlertRelay
from bot.config import Config
from bot.deploys.nudges import Nudges
from bot.deploys.rollbacks import RollbackPlans, Rollbacks
from bot.changes.deployments import GitHubDeployments
from bot.changes.lookup import ChangeLookups
from bot.deploys.analysis import Prometheus
from bot.deploys.progressive import StageWatch
from bot.deploys.runner import DeployRunner, wall_clock
from bot.deploys.steering import RolloutSteering
from bot.deploys.workflow import DeployWorkflow
from bot.events import (
    AlertsRelayed,
    RollbackIntended,
    ChecklistBlocked,
    DeployChanged,
    DeployPosted,
    EventBus,
    LocksChanged,
    LocksExpired,
    MessagePosted,
    MessageRefused,
    RequestExpired,
    SlackWorkQueued,
)
from bot.executors import EngineReports
from bot.runtime.health import Health
from bot.runtime.identity import BotIdentity
from bot.runtime.lease import LeaseKeeper, owner_only
from bot.runtime.logs import deploy_context
from bot.runtime.metrics import Metrics, surface_of
from bot.runtime.settings import Settings
from bot.runtime.tasks import BackgroundTasks
from bot.slack.deploy_messages import DeployMessages, DeployMessageView
from bot.slack.directory import Directory
from bot.slack.home import HomeTabs
from bot.slack.outbox import Outbox
from bot.slack.status_replies import StatusReplies
from handlers.errors import deploy_of_click
from store import Store, utc_now
from store.writer import StoreWriter

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
    signing_secret: str = ""  # what signs Slack's requests (settings.signing_secret); bolt was built with the same
    steering: RolloutSteering | None = None  # Promote, Pause, Resume, Abort of staged rollouts
    analysis: AnalysisClient | None = None  # the Prometheus the rollouts' metric gates ask
    lookups: ChangeLookups | None = None  # what a request ships and whether its artifacts exist
    github_deployments: GitHubDeployments | None = None  # GitHub Deployments and Releases mirroring deploys

    def start_workers(self) -> None:
        """Start the work that needs no request: only in the process that
        owns the database (``bot/runtime/lease.py``; a standby runs none)."""
        self.outbox.start()  # resumes whatever a previous Slipway left queued
        self.runner.recover()
        self.workflow.queue_changed()  # lines a previous Slipway left waiting with nothing in flight
        if self.lookups is not None:
            self.lookups.recover()  # requests a previous Slipway was still looking up
        if self.github_deployments is not None:
            self.github_deployments.start()  # sends what a previous Slipway left queued too
        self.nudges.start()  # expiry and reminders
        self.rollbacks.auto_rollback_pages()  # automatic rollbacks a previous Slipway decided on and did not start

    async def stop_workers(self) -> None:
        """Stop the workers and every deploy's task now, without draining:
        the lease was lost, another process owns the deploys. (Each part may
        be closed again by :meth:`close`.)"""
        await self.nudges.close()
        await self.tasks.close()
        await self.outbox.close()
        if self.github_deployments is not None:
            await self.github_deployments.close()

    async def close(self) -> None:
        await self.metrics.loop_monitor.close()
        await self.nudges.close()
        await self.tasks.close()
        if self.alert_relay is not None:
            await self.alert_relay.close()  # its writer thread finishes what it was given
        await self.outbox.close()  # before the session it shares is closed
        if self.client.session is not None:
            await self.client.session.close()
        if self.github_deployments is not None:
            await self.github_deployments.close()
        if self.lookups is not None:
            await self.lookups.close()
        if self.analysis is not None:
            await self.analysis.close()


def subscribe(slipway: Slipway) -> None:
    """Who listens to what: every subscriber of every event, in one list.

    Subscribers of one event are told in this order (see ``bot.events``).
    """
    bus, relay = slipway.events, slipway.alert_relay
    # a deploy's message is in the channel
    bus.subscribe(DeployPosted, slipway.runner.start_if_approved)  # a request that needs no approval starts now
    bus.subscribe(DeployPosted, slipway.home_tabs.changed)
    if slipway.lookups is not None:
        bus.subscribe(DeployPosted, slipway.lookups.posted)  # a rollback's changes, a request's not yet started
    # a deploy's record changed (state, ticks, approvals)
    bus.subscribe(DeployChanged, slipway.messages.deploy_changed)  # its message is redrawn
    bus.subscribe(DeployChanged, slipway.nudges.deploy_changed)  # its requester is told of news by DM
    bus.subscribe(DeployChanged, slipway.home_tabs.changed)
    bus.subscribe(DeployChanged, slipway.runner.start_if_approved)  # the final approval starts it
    bus.subscribe(DeployChanged, slipway.workflow.queue_changed)  # a line freed, or a queued request ready
    if slipway.github_deployments is not None:
        bus.subscribe(DeployChanged, slipway.github_deployments.deploy_changed)  # its GitHub deployment follows
    if relay is not None:
        bus.subscribe(DeployChanged, relay.deploy_changed)  # rolled back: its alerts stop offering a rollback
    # requests that wait
    bus.subscribe(RequestExpired, slipway.nudges.request_expired)  # its thread says so
    bus.subscribe(ChecklistBlocked, slipway.nudges.checklist_blocked)  # the requester is asked to tick
    # locks and blocked versions
    bus.subscribe(LocksExpired, slipway.nudges.locks_expired)  # the channel is told
    bus.subscribe(LocksChanged, slipway.home_tabs.changed)
    bus.subscribe(LocksChanged, slipway.workflow.queue_changed)  # a lifted lock lets a line go on
    # monitors' alerts
    bus.subscribe(AlertsRelayed, slipway.metrics.count_alerts)
    bus.subscribe(AlertsRelayed, slipway.rollbacks.auto_rollback_pages)  # where auto_rollback is on
    bus.subscribe(RollbackIntended, slipway.rollbacks.auto_rollback_pages)  # a failed bake, an abort at full traffic
    bus.subscribe(SlackWorkQueued, lambda event: slipway.outbox.notify())
    # the outbox's deliveries
    bus.subscribe(MessagePosted, slipway.messages.posted)  # a deploy's message: the deploy knows where it is
    bus.subscribe(MessageRefused, slipway.messages.refused)  # a channel that refuses it cancels the request


@contextlib.contextmanager
def _client_carries_the_token() -> Iterator[None]:
    """Around building the bolt app: drop bolt's "As you gave `client` as
    well, `token` will be unused." and nothing else.

    bolt reads ``SLACK_BOT_TOKEN`` from the environment even when it is
    given a client, and warns that this token is unused; the client it is
    given carries that very token (``Settings`` read it from there), and
    bolt uses the client's. The warning, logged at every start, said
    nothing true of Slipway."""
    bolt_log = logging.getLogger("slack_bolt.AsyncApp")
    needless = warning_client_prioritized_and_token_skipped()

    def filter_needless(record: logging.LogRecord) -> bool:
        return record.getMessage() != needless

    bolt_log.addFilter(filter_needless)
    try:
        yield
    finally:
        bolt_log.removeFilter(filter_needless)


def token_less(client: AsyncWebClient) -> AsyncWebClient:
    """``client`` without its token (same URL, session and retry handlers), for bolt to copy per request."""
    bare = copy.copy(client)
    bare.token = None
    return bare


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


class AnalysisClient:
    """The one Prometheus client of the rollouts' metric gates, opened when
    first asked (None when the config names no Prometheus)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._client: Prometheus | None = None

    def client(self) -> Prometheus | None:
        url = self.config.prometheus_url
        if url is None:
            return None
        if self._client is None:
            timeout = self.config.analysis.query_timeout if self.config.analysis is not None else 10.0
            self._client = Prometheus(url, timeout)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def create_slipway(config: Config, store: Store, settings: Settings,
                   clock: Callable[[], datetime] = utc_now, environ: Mapping[str, str] | None = None,
                   outbox_interval: float = 1.0, verify_time: WaitingClock | None = None,
                   outbox_time: WaitingClock | None = None) -> Slipway:
    """Wire a Slipway from its parts (the store is owned by the caller).
    ``outbox_interval``: seconds between two outbox posts to one channel
    (Slack allows about one a second). ``verify_time``: how verification
    waits between health-check attempts and tells its deadline (default:
    real time; tests pass a clock that moves instantly). ``outbox_time``: the
    same for the outbox's pacing and retries."""
    metrics = Metrics()
    client = create_slack_client(settings, metrics)
    tasks = BackgroundTasks()
    identity = BotIdentity(client, tasks)
    with _client_carries_the_token():
        bolt = AsyncApp(
            # bolt's own client carries no token: each request's is given by authorize, which
            # never waits on Slack (bolt would call auth.test on the request's path until it answered)
            client=token_less(client),
            authorize=identity.bolt_authorize(),
            signing_secret=settings.signing_secret,
            # Socket Mode requests are not signed; HTTP ones always are.
            request_verification_enabled=not settings.socket_mode,
            process_before_response=False,
        )
    events = EventBus()
    directory = Directory(client)
    environ = os.environ if environ is None else environ
    workflow = DeployWorkflow(config, store, directory, events, clock)
    plans = RollbackPlans(config, store)
    status_replies = StatusReplies(config, store, clock)
    # every Slack write but an ack goes through the outbox; views are drawn from the store when sent
    outbox = Outbox(store, client, interval=outbox_interval, metrics=metrics, events=events,
                    **({"sleep": outbox_time.sleep, "monotonic": outbox_time.monotonic} if outbox_time else {}),
                    ack_first=tasks.ack_first, drawers={
                        "deploy": DeployMessageView(workflow, plans.offer).draw,
                        "home": lambda user: {"view": status_replies.home(user or None)}})
    messages = DeployMessages(config, store, workflow, outbox, client, events)
    analysis = AnalysisClient(config)
    watch = StageWatch(config, store, messages, events, directory, now=wall_clock, prometheus=analysis.client)
    steering = RolloutSteering(config, store, directory, messages, events, watch, now=wall_clock)
    rollbacks = Rollbacks(plans, directory, messages, events, tasks, abort_rollout=steering.abort_for_alert)
    nudges = Nudges(config, store, workflow, messages, directory, events, tasks, clock)
    reports = EngineReports(store)
    lookups = ChangeLookups(config, store, events, tasks, environ, messages)
    github_deployments = GitHubDeployments(config, store, messages, environ)
    runner = DeployRunner(config, store, messages, events, tasks, reports, blocked_reason=workflow.blocked_reason,
                          reopen_if_stale=nudges.reopen_if_stale, observe_executor=metrics.observe_executor,
                          environ=environ, watch=watch, **({"verify_sleep": verify_time.sleep,
                                               "verify_clock": verify_time.monotonic} if verify_time else {}))
    metrics.watch_store(store, config.environment_names)
    relay = AlertRelay(config, store, lambda on, deploy: RollbackPlans(config, on).offer(deploy), clock,
                       directory=directory, events=events, tasks=tasks,
                       # a storm's deliveries run off the event loop, on a connection of their own
                       writer=StoreWriter(store) if store.path else None,
                       ) if config.alerts is not None else None
    home_tabs = HomeTabs(store, outbox)
    slipway = Slipway(config, store, client, bolt, events, workflow, messages, tasks, reports, rollbacks, runner,
                      outbox, relay, nudges, home_tabs, status_replies, metrics, Health(store, client), settings.socket_mode,
                      environ, signing_secret=settings.signing_secret or "", steering=steering,
                      analysis=analysis, lookups=lookups, github_deployments=github_deployments)
    subscribe(slipway)
    handlers.register(bolt, slipway)
    return slipway


def create_web_app(slipway: Slipway, lease: LeaseKeeper | None = None) -> web.Application:
    """The one aiohttp server: Slack's events endpoint, webhooks, the health
    check and the metrics. With a ``lease`` (``slipway serve``), the workers
    are started by whoever takes the lease (``Slipway.start_workers``), not
    here, and until then every request but ``/healthz`` and ``/metrics`` is
    answered 503."""
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
        # the signature is checked on the raw body before bolt parses it: an
        # unsigned request gets its 401 (or 400) and reaches nothing else
        bolt_request = await handlers.http.signed_slack_request(request, slipway.signing_secret)
        if isinstance(bolt_request, web.Response):
            return "other", bolt_request
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
        slipway.start_workers()

    async def watch_the_loop(app: web.Application) -> None:
        slipway.metrics.loop_monitor.start()  # the event loop's stalls, for /metrics (owner or standby)

    async def shutdown(app: web.Application) -> None:
        await slipway.close()

    if not slipway.socket_mode:
        # In Socket Mode requests arrive over the socket unsigned; an HTTP door
        # that skipped verification would let anyone in, so there is none.
        app.router.add_post(SLACK_EVENTS_PATH, slack_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    handlers.webhooks.register(app, slipway)
    handlers.api.register(app, slipway)
    handlers.alerts.register(app, slipway)
    if lease is None:  # the only Slipway on its database (tests, the sandbox): it works from the start
        app.on_startup.append(recover)
    else:  # `slipway serve`: it works once it owns the database, and answers 503 until then
        health.standing = lease.standing
        app.middlewares.append(owner_only(lease))
    app.on_startup.append(watch_the_loop)
    app.on_cleanup.append(shutdown)
    return app
