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
from bot.deploys.rollbacks import Rollbacks
from bot.deploys.runner import DeployRunner
from bot.deploys.workflow import DeployWorkflow
from bot.errors import SlipwayError
from bot.executors import EngineReports
from bot.runtime.health import Health
from bot.runtime.logs import deploy_context
from bot.runtime.metrics import Metrics, surface_of
from bot.runtime.settings import Settings
from bot.runtime.tasks import BackgroundTasks
from bot.slack.blocks import mention, rollback_plan_text
from bot.slack.deploy_messages import DeployMessages
from bot.slack.directory import Directory
from bot.slack.outbox import Outbox
from handlers.errors import deploy_of_click
from store import Deploy, Store, utc_now

log = logging.getLogger(__name__)

SLACK_EVENTS_PATH = "/slack/events"
AUTO_ROLLBACK_ACTOR = "slipway"  # who the audit log says started an automatic rollback


@dataclass
class Slipway:
    """Everything one running Slipway is made of."""

    config: Config
    store: Store
    client: AsyncWebClient
    bolt: AsyncApp
    workflow: DeployWorkflow
    messages: DeployMessages
    tasks: BackgroundTasks
    reports: EngineReports
    rollbacks: Rollbacks
    runner: DeployRunner
    outbox: Outbox
    alert_relay: AlertRelay | None
    nudges: Nudges
    socket_mode: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)  # where engine and monitor secrets are read
    metrics: Metrics = field(default_factory=Metrics)  # GET /metrics
    health: Health | None = None  # GET /healthz

    async def start_rollback(self, deploy_id: int, target: str, user: str, source: str | None = None) -> Deploy:
        """Record, announce and run a rollback the person confirmed.

        Raises:
            SlipwayError: refused (who, what, or a deploy in the way).
        """
        rollback, undone, superseded = await self.rollbacks.start(deploy_id, target, user, source)
        await self._superseded(superseded)
        rollback = await self.messages.announce(rollback)
        self.runner.start(rollback.id)  # before the thread note: speed matters more than the note
        plan = rollback_plan_text(undone, rollback.version)
        await self.messages.thread(undone, f":rewind: {mention(user)} started rollback #{rollback.id}: {plan}. "
                                           f"<{rollback.permalink or ''}|Follow it here>.")
        self.messages.refresh(undone.id)
        return rollback

    def alerts_follow(self, deploy_id: int) -> None:
        """Once a deploy is rolled back, the alert messages tied to it stop
        offering to roll it back (a deploy-change listener)."""
        if self.alert_relay is not None and self.store.status_of(deploy_id) == "rolled_back":
            self.tasks.spawn(self._redraw_alerts(deploy_id), name=f"redraw-alerts-{deploy_id}")

    async def oncall_mention(self) -> str | None:
        """How a page notifies the on-call (``alerts.oncall``), e.g. ``<!subteam^S0ONCALL>``."""
        oncall = self.config.alerts.oncall if self.config.alerts is not None else None
        return await self.workflow.directory.mention(oncall) if oncall else None

    async def _redraw_alerts(self, deploy_id: int) -> None:
        assert self.alert_relay is not None
        if self.alert_relay.redraw_for_deploy(deploy_id, oncall=await self.oncall_mention()):
            self.outbox.notify()

    async def _superseded(self, request: Deploy | None) -> None:
        """A request waiting on the environment a rollback took: its message and thread say it was cancelled."""
        if request is not None:
            self.messages.refresh(request.id)
            await self.messages.thread(request, f":heavy_multiplication_x: Cancelled: {request.status_reason}.")

    async def auto_rollback(self, deploy_id: int) -> None:
        """Roll back a deploy a page-level alert was tied to, where the
        environment asks for it (``auto_rollback: true``), and say so."""
        with deploy_context(deploy_id):
            await self._auto_rollback(deploy_id)

    async def _auto_rollback(self, deploy_id: int) -> None:
        deploy = self.store.get_deploy(deploy_id)
        try:
            plan = self.rollbacks.plan(deploy_id)
            rollback, undone, superseded = await self.rollbacks.start(
                deploy_id, plan.target.version, AUTO_ROLLBACK_ACTOR, source="alert:auto_rollback", automatic=True)
        except SlipwayError as refusal:
            await self.messages.thread(deploy, f":warning: A page-level alert asked for an automatic rollback of "
                                               f"#{deploy_id}, but it cannot run: {refusal.message}")
            return
        # as for a clicked rollback: the request it supersedes says so, announce, start the engine, tell the thread
        await self._superseded(superseded)
        rollback = await self.messages.announce(rollback)
        self.runner.start(rollback.id)
        await self.messages.thread(undone, f":rewind: Automatic rollback #{rollback.id} (auto_rollback on "
                                           f"{undone.environment}, page-level alert): {plan.text}.")

    async def close(self) -> None:
        await self.nudges.close()
        await self.tasks.close()
        await self.outbox.close()  # before the session it shares is closed
        if self.client.session is not None:
            await self.client.session.close()


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
                   outbox_interval: float = 1.0) -> Slipway:
    """Wire a Slipway from its parts (the store is owned by the caller).
    ``outbox_interval``: seconds between two outbox posts to one channel
    (Slack allows about one a second)."""
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
    directory = Directory(client)
    workflow = DeployWorkflow(config, store, directory, clock)
    rollbacks = Rollbacks(config, store, directory)
    messages = DeployMessages(client, workflow, tasks, rollback_offer=rollbacks.offer)
    reports = EngineReports(store)
    environ = os.environ if environ is None else environ
    runner = DeployRunner(config, store, messages, tasks, reports, environ=environ)
    runner.blocked_reason = workflow.blocked_reason
    runner.observe_executor = metrics.observe_executor
    metrics.watch_store(store, config.environment_names)
    outbox = Outbox(store, client, interval=outbox_interval, metrics=metrics)
    relay = AlertRelay(config, store, rollbacks.offer, clock) if config.alerts is not None else None
    nudges = Nudges(config, store, workflow, messages, directory, tasks, clock)
    runner.reopen_if_stale = nudges.reopen_if_stale
    slipway = Slipway(config, store, client, bolt, workflow, messages, tasks, reports, rollbacks, runner,
                      outbox, relay, nudges, settings.socket_mode, environ, metrics=metrics,
                      health=Health(store, client))
    if relay is not None:
        messages.listeners.append(slipway.alerts_follow)
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

    health = slipway.health or Health(slipway.store, slipway.client)

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
