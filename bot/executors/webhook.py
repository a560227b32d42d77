"""The ``webhook`` engine: a CI system that takes a signed JSON deploy
request and reports back on ``POST /webhooks/deploys/{id}``.

Reports are stored before anyone waiting is woken (see
:class:`EngineReports`), so a report that arrives while Slipway restarts is
found by the resumed deploy instead of being lost.

The request is sent at least once, never silently zero times: the dispatch
is recorded (``dispatched``, the idempotency key) before the POST, and the
engine's acceptance (``requested``) after it. A Slipway restarted in between
cannot know whether the engine got it, so it sends it again under the same
key, ``slipway-deploy-<id>`` (the ``Idempotency-Key`` header and the body's
``idempotency_key``), unless the engine has reported on the deploy since,
which shows it did. An engine must treat a second request with a key it
has seen as the first one (answer 2xx, deploy once).

A staged deploy (canary, blue-green) calls the engine once per step. Each
call is a request of its own: the body says what to do (``strategy``, and
``step``/``steps``/``weight`` or ``phase``), and it has its own key
(``slipway-deploy-<id>-step-2``, ``…-phase-switch``, ``…-abort``) and its
own callback (``…/webhooks/deploys/<id>?stage=step-2``), whose reports must
name that ``stage`` too. A call waits only for reports of its own stage, so
step 2 never takes step 1's "succeeded" for its own. A direct deploy's
request, key and callback are as they always were (its body says
``"strategy": "direct"``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import aiohttp

from bot.config import DeployExecutor
from bot.durations import format_duration
from bot.executors.base import Job, Outcome, RememberReference
from bot.executors.signing import signed_headers
from store import EngineReport, Store

REPORT_STATUSES = ("running", "succeeded", "failed")
IDEMPOTENCY_HEADER = "Idempotency-Key"

log = logging.getLogger(__name__)


def idempotency_key(deploy_id: int, stage: str | None = None) -> str:
    """The one key every request for deploy ``deploy_id`` (for its engine
    call ``stage``, of a staged deploy) is sent under."""
    return f"slipway-deploy-{deploy_id}" + (f"-{stage}" if stage else "")


def callback_url(public_url: str, deploy_id: int, stage: str | None = None) -> str:
    """Where the engine reports on deploy ``deploy_id`` (on its call ``stage``)."""
    return f"{public_url.rstrip('/')}/webhooks/deploys/{deploy_id}" + (f"?stage={stage}" if stage else "")


class EngineReports:
    """Reports from engines about deploys: kept in the store, waited on in memory."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._events: dict[int, asyncio.Event] = {}

    def record(self, deploy_id: int, status: str, log_url: str | None, message: str | None,
               source: str | None = None, stage: str | None = None) -> EngineReport:
        """Store a report (on the engine call ``stage``; None: a direct
        deploy's one call), then wake whoever waits for it.

        Raises:
            ValueError: ``status`` is not running, succeeded or failed.
            DeployNotFound: no deploy has that id.
        """
        if status not in REPORT_STATUSES:
            raise ValueError(f"status must be one of {', '.join(REPORT_STATUSES)}")
        report = self._store.deploys.record_engine_report(deploy_id, status, log_url, message, source, stage=stage)
        if event := self._events.get((deploy_id, stage)):
            event.set()
        return report

    def _reports(self, deploy_id: int, stage: str | None) -> list[EngineReport]:
        return [r for r in self._store.deploys.engine_reports(deploy_id) if r.stage == stage]

    async def wait_terminal(self, deploy_id: int, timeout: float, stage: str | None = None) -> EngineReport | None:
        """The first succeeded/failed report on the engine call ``stage`` (None:
        a direct deploy's), or ``None`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = self._events.setdefault((deploy_id, stage), asyncio.Event())
        try:
            while True:
                event.clear()
                final = next((r for r in self._reports(deploy_id, stage) if r.terminal), None)
                if final is not None:
                    return final
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    continue
        finally:
            self._events.pop((deploy_id, stage), None)

    def heard_from(self, deploy_id: int, stage: str | None = None) -> bool:
        """Whether the engine has reported on ``deploy_id``'s call ``stage`` at
        all (so it has that request)."""
        return bool(self._reports(deploy_id, stage))

    def latest_log_url(self, deploy_id: int, stage: str | None = None) -> str | None:
        urls = [r.log_url for r in self._reports(deploy_id, stage) if r.log_url]
        return urls[-1] if urls else None


class WebhookExecutor:
    kind = "webhook"

    def __init__(self, spec: DeployExecutor, reports: EngineReports, public_url: str,
                 environ: Mapping[str, str] | None = None) -> None:
        assert spec.webhook is not None
        self._spec = spec
        self._reports = reports
        self._public_url = public_url.rstrip("/")
        self._environ = os.environ if environ is None else environ

    def _secret(self) -> str | None:
        return self._environ.get(self._spec.webhook.secret_env) or None

    def request_body(self, job: Job) -> bytes:
        """The request: the deploy, what this call does (``strategy``, and for
        a staged deploy ``stage`` and whichever of ``step``, ``steps``,
        ``weight`` (JSON numbers) and ``phase`` are set), where to report."""
        stage = job.stage_key
        body: dict[str, Any] = {
            "deploy_id": job.deploy_id, "service": job.service, "environment": job.environment,
            "version": job.version, "previous_version": job.previous_version, "rollback_of": job.rollback_of,
            "callback_url": callback_url(self._public_url, job.deploy_id, stage),
            "idempotency_key": idempotency_key(job.deploy_id, stage),
            "strategy": job.strategy,
        }
        if stage is not None:
            body["stage"] = stage
            body.update({name: getattr(job, name) for name in ("step", "steps", "weight", "phase")
                         if getattr(job, name) is not None})
        return json.dumps(body, sort_keys=True).encode()

    async def run(self, job: Job, remember: RememberReference) -> Outcome:
        """Send the deploy request (recorded first, see the module's
        docstring) and wait for the engine's final report."""
        return await self._dispatch(job, remember)

    async def _dispatch(self, job: Job, remember: RememberReference) -> Outcome:
        secret = self._secret()
        if secret is None:
            return Outcome(False, f"environment variable {self._spec.webhook.secret_env} is not set; "
                                  "the request was not sent")
        key = idempotency_key(job.deploy_id, job.stage_key)
        await remember({"dispatched": key})  # before the POST: a restart knows it may have gone out
        body = self.request_body(job)
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key, **signed_headers(secret, body)}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                async with session.post(self._spec.webhook.url, data=body, headers=headers) as response:
                    text = (await response.text())[:300]
                    if response.status >= 300:
                        return Outcome(False, f"the engine refused the request: HTTP {response.status} {text}".strip())
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome(False, f"could not reach the engine at {self._spec.webhook.url}: {exc or type(exc).__name__}")
        await remember({"requested": key})
        return await self._await_report(job)

    async def resume(self, job: Job, reference: dict[str, Any], remember: RememberReference) -> Outcome:
        """Wait for the report of a request the engine has; send one it may
        not have (again, under the same key, if it may already have gone out)."""
        key = idempotency_key(job.deploy_id, job.stage_key)
        if _requested(reference, key) or self._reports.heard_from(job.deploy_id, job.stage_key):
            return await self._await_report(job)
        if reference.get("dispatched") == key:
            log.info("deploy %s: Slipway stopped before the engine answered its request; sending it again "
                     "under the same idempotency key %s", job.deploy_id, key)
        return await self._dispatch(job, remember)

    async def _await_report(self, job: Job) -> Outcome:
        elapsed = (datetime.now(timezone.utc) - job.started_at).total_seconds()
        report = await self._reports.wait_terminal(job.deploy_id, max(0.0, self._spec.timeout - elapsed),
                                                   stage=job.stage_key)
        log_url = self._reports.latest_log_url(job.deploy_id, job.stage_key)
        if report is None:
            return Outcome(False, f"no report from the engine within {format_duration(self._spec.timeout)}; it may still be "
                                  "running: check it before a fix or a rollback", run_url=log_url)
        summary = f"engine reported {report.status}" + (f": {report.message}" if report.message else "")
        return Outcome(report.status == "succeeded", summary, run_url=report.log_url or log_url,
                       log_tail=report.message or "")


def _requested(reference: dict[str, Any], key: str) -> bool:
    """Whether the engine took (2xx) the request sent under ``key``. A staged
    deploy's reference may still hold an earlier call's answer: only this
    call's key counts (``True`` is how a direct deploy's was written before
    the keys were remembered)."""
    requested = reference.get("requested")
    return requested == key or (requested is True and reference.get("dispatched") == key)
