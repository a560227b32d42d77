"""Building Slipway: one factory wires config, store, Slack client, bolt
app and the aiohttp web application together. No globals: everything a
listener needs is passed in here."""

from __future__ import annotations

import json
import os
import logging
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
from bot.config import Config
from bot.alerts.relay import AlertRelay
from bot.directory import Directory
from bot.errors import SlipwayError
from bot.executors import EngineReports
from bot.lifecycle import DeployRunner
from bot.render import mention, rollback_plan_text
from bot.rollback import Rollbacks
from bot.messages import DeployMessages
from bot.outbox import Outbox
from bot.settings import Settings
from bot.tasks import BackgroundTasks
from bot.workflow import DeployWorkflow
from store import Deploy, Store, utc_now

log = logging.getLogger(__name__)

SLACK_EVENTS_PATH = "/slack/events"
AUTO_ROLLBACK_ACTOR = "slipway"  # who the audit log says started an automatic rollback
SLIPWAY_KEY = web.AppKey("slipway", "Slipway")


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
    socket_mode: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)  # where engine and monitor secrets are read

    async def start_rollback(self, deploy_id: int, target: str, user: str, source: str | None = None) -> Deploy:
        """Record, announce and run a rollback the person confirmed.

        Raises:
            SlipwayError: refused (who, what, or a deploy in the way).
        """
        rollback, undone, superseded = await self.rollbacks.start(deploy_id, target, user, source)
        if superseded is not None:
            self.messages.refresh(superseded.id)
            await self.messages.thread(superseded, f":heavy_multiplication_x: Cancelled: {superseded.status_reason}.")
        rollback = await self.messages.announce(rollback)
        self.runner.start(rollback.id)  # before the thread note: speed matters more than the note
        plan = rollback_plan_text(undone, rollback.version)
        await self.messages.thread(undone, f":rewind: {mention(user)} started rollback #{rollback.id}: {plan}. "
                                           f"<{rollback.permalink or ''}|Follow it here>.")
        self.messages.refresh(undone.id)
        return rollback

    async def auto_rollback(self, deploy_id: int) -> None:
        """Roll back a deploy a page-level alert was tied to, where the
        environment asks for it (``auto_rollback: true``), and say so."""
        deploy = self.store.get_deploy(deploy_id)
        try:
            plan = self.rollbacks.plan(deploy_id)
            rollback, undone, _ = await self.rollbacks.start(
                deploy_id, plan.target.version, AUTO_ROLLBACK_ACTOR, source="alert:auto_rollback", automatic=True)
        except SlipwayError as refusal:
            await self.messages.thread(deploy, f":warning: A page-level alert asked for an automatic rollback of "
                                               f"#{deploy_id}, but it cannot run: {refusal.message}")
            return
        # as for a clicked rollback: announce, start the engine, then tell the thread
        rollback = await self.messages.announce(rollback)
        self.runner.start(rollback.id)
        await self.messages.thread(undone, f":rewind: Automatic rollback #{rollback.id} (auto_rollback on "
                                           f"{undone.environment}, page-level alert): {plan.text}.")

    async def close(self) -> None:
        await self.tasks.close()
        await self.outbox.close()  # before the session it shares is closed
        if self.client.session is not None:
            await self.client.session.close()


def create_slack_client(settings: Settings) -> AsyncWebClient:
    """The real slack_sdk client, pointed at ``SLACK_API_URL`` when set.

    A 429 is answered by waiting Retry-After and trying again (slack_sdk's
    handler), so a rate-limited message is delayed, never dropped. One
    aiohttp session is kept for every call: without it slack_sdk opens a new
    connection (and TLS handshake) per call, which measurably slowed acks
    under load (bench/ack_latency.py).
    """
    kwargs = {"base_url": settings.api_url} if settings.api_url else {}
    client = AsyncWebClient(token=settings.bot_token, session=aiohttp.ClientSession(), **kwargs)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=10))
    return client


def create_slipway(config: Config, store: Store, settings: Settings,
                   clock: Callable[[], datetime] = utc_now, environ: Mapping[str, str] | None = None,
                   outbox_interval: float = 1.0) -> Slipway:
    """Wire a Slipway from its parts (the store is owned by the caller).
    ``outbox_interval``: seconds between two outbox posts to one channel
    (Slack allows about one a second)."""
    client = create_slack_client(settings)
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
    outbox = Outbox(store, client, interval=outbox_interval)
    relay = AlertRelay(config, store, rollbacks.offer, clock) if config.alerts is not None else None
    slipway = Slipway(config, store, client, bolt, workflow, messages, tasks, reports, rollbacks, runner,
                      outbox, relay, settings.socket_mode, environ)
    handlers.register(bolt, slipway)
    return slipway


def create_web_app(slipway: Slipway) -> web.Application:
    """The one aiohttp server: Slack's events endpoint and the health check."""
    app = web.Application(client_max_size=1024 * 1024)
    app[SLIPWAY_KEY] = slipway

    async def slack_events(request: web.Request) -> web.Response:
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "0")
        if not timestamp.isdigit():
            # slack_sdk's verifier raises on a non-numeric timestamp (a 500);
            # an unverifiable request is an unauthorised one.
            return web.json_response({"error": "invalid request timestamp"}, status=401)
        try:
            bolt_request = await to_bolt_request(request)
        except ValueError as exc:  # e.g. a `payload=` that is not JSON; bolt parses it eagerly
            return web.json_response({"error": f"malformed request body: {exc}"}, status=400)
        with slipway.tasks.ack_first.answering():
            bolt_response = await slipway.bolt.async_dispatch(bolt_request)
        return await to_aiohttp_response(bolt_response)

    async def healthz(request: web.Request) -> web.Response:
        try:
            slipway.store.db.execute("SELECT 1").fetchone()
            database = "ok"
        except Exception as exc:  # reported, not raised: this endpoint says what is wrong
            database = f"error: {exc}"
        healthy = database == "ok"
        return web.json_response({"status": "ok" if healthy else "unhealthy", "database": database},
                                 status=200 if healthy else 503, dumps=json.dumps)

    async def recover(app: web.Application) -> None:
        slipway.outbox.start()  # resumes whatever a previous Slipway left queued
        slipway.runner.recover()

    async def shutdown(app: web.Application) -> None:
        await slipway.close()

    if not slipway.socket_mode:
        # In Socket Mode requests arrive over the socket unsigned; an HTTP door
        # that skipped verification would let anyone in, so there is none.
        app.router.add_post(SLACK_EVENTS_PATH, slack_events)
    app.router.add_get("/healthz", healthz)
    handlers.webhooks.register(app, slipway)
    handlers.alerts.register(app, slipway)
    app.on_startup.append(recover)
    app.on_cleanup.append(shutdown)
    return app
