"""GitHub Deployments mirroring Slipway's deploys, and the GitHub Release of
what reached the last rung (``changes.github.deployments`` / ``release``).

Each Slipway deploy that is approved gets a GitHub deployment for its tag
(environment = Slipway's environment name, ``auto_merge: false``,
``required_contexts: []``) with status ``queued``; its statuses then follow
the deploy: started → ``in_progress`` (stages and bake included), succeeded
→ ``success``, failed or aborted → ``failure``, Slipway's own failure →
``error``, rolled back → ``inactive`` (the rollback has a deployment of its
own), cancelled (or rejected, or expired, once its approvals went stale)
after approval → ``inactive``. Requests rejected, cancelled or expired
before approval create none, and neither does a deploy first seen already
finished (an earlier deploy redrawn, one from before ``deployments`` was
turned on), unless it failed before its engine started. ``environment_url``
and ``log_url`` point at the deploy's Slack message.

Every write is a durable row (``store.github``) queued in the transaction of
the change that calls for it, and sent in order, per deploy, by one worker:
retried with backoff on 5xx and timeouts; a 403 or 404 is given up and
reported once in the deploy's thread (a deploy whose deployment was refused
sends none of its statuses, silently). None of it ever fails a deploy.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp

from bot.changes.model import ChangeSet
from bot.config import Config, GitHubChanges
from bot.deploys.ports import DeployViews
from bot.events import DeployChanged
from bot.slack.mrkdwn import escape
from store import Deploy, DeployStatus, Store

log = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
REQUEST_TIMEOUT = 10.0
BACKOFF = 1.0  # seconds before the first retry; doubled at each
MAX_BACKOFF = 300.0
SLIPWAY_FAILED = "Slipway failed while running it"  # the start of the runner's own failure reason

# a deploy's state → the GitHub deployment status it shows
STATUS_OF = {
    DeployStatus.APPROVED: "queued",
    DeployStatus.DEPLOYING: "in_progress",
    DeployStatus.VERIFYING: "in_progress",
    DeployStatus.BAKING: "in_progress",
    DeployStatus.SUCCEEDED: "success",
    DeployStatus.FAILED: "failure",
    DeployStatus.ROLLED_BACK: "inactive",
    DeployStatus.CANCELLED: "inactive",
    DeployStatus.REJECTED: "inactive",  # after approval: its approvals went stale, then it was rejected
    DeployStatus.EXPIRED: "inactive",  # ...or nobody approved it again in time
}
# states in which a deploy is seen for the first time and still gets its deployment
LIVE = (DeployStatus.APPROVED, DeployStatus.DEPLOYING, DeployStatus.VERIFYING, DeployStatus.BAKING)


class GitHubRefused(Exception):
    """GitHub answered 4xx: giving up (the message says what it said)."""


class GitHubTrouble(Exception):
    """5xx, a timeout, a lost connection, a rate limit: try again later."""


def wall_clock() -> datetime:
    return datetime.now(timezone.utc)


class GitHubDeployments:
    """Queues the GitHub writes a deploy's changes call for, and sends them."""

    def __init__(self, config: Config, store: Store, views: DeployViews, environ: Mapping[str, str], *,
                 now: Callable[[], datetime] = wall_clock, backoff: float = BACKOFF,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        self.config = config
        self.store = store
        self.views = views
        self.environ = environ
        self.now = now
        self.backoff = backoff  # the first retry's delay; then doubled, up to MAX_BACKOFF
        self.timeout = timeout  # seconds each request to GitHub may take
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.idle = asyncio.Event()  # set while nothing is due (tests wait on it)

    def _spec(self, deploy: Deploy) -> GitHubChanges | None:
        changes = self.config.services[deploy.service].changes if deploy.service in self.config.services else None
        github = changes.github if changes is not None else None
        return github if github is not None and (github.deployments or github.release) else None

    # -- queueing (in the transaction of the change) ----------------------------------------

    def deploy_changed(self, event: DeployChanged) -> None:
        """Queue what the deploy's new state calls for (each once)."""
        deploy = self.store.deploys.get(event.deploy_id)
        spec = self._spec(deploy)
        if spec is None:
            return
        queued = False
        state = STATUS_OF.get(deploy.status)
        if spec.deployments and state is not None and deploy.approved_at is not None \
                and (self._queued(deploy.id) or self._first_seen_gets_one(deploy)):
            if self.store.github.enqueue(deploy.id, "deployment", {}, once_key="deployment"):
                self.store.github.enqueue(deploy.id, "status", {"state": "queued"}, once_key="status:queued")
                queued = True
            if deploy.status == DeployStatus.FAILED and (deploy.status_reason or "").startswith(SLIPWAY_FAILED):
                state = "error"
            queued |= self.store.github.enqueue(deploy.id, "status", {"state": state}, once_key=f"status:{state}")
        if spec.release and deploy.status == DeployStatus.SUCCEEDED and deploy.rollback_of is None \
                and deploy.environment == self.config.environment_names[-1] and self._newest(deploy):
            queued |= self.store.github.enqueue(deploy.id, "release", {}, once_key="release")
        if queued:
            self.idle.clear()  # what waits for the worker waits for these too
            self._wake.set()

    def _queued(self, deploy_id: int) -> bool:
        return any(write["kind"] == "deployment" for write in self.store.github.writes(deploy_id))

    def _first_seen_gets_one(self, deploy: Deploy) -> bool:
        """Whether a deploy without a deployment yet gets one now: while it is
        live; once finished, only one that failed before its engine started
        (the newest of its service and environment). An earlier deploy redrawn,
        or one from before ``deployments`` was turned on, never does; nor does
        one cancelled, rejected or expired before its deployment was made."""
        if deploy.status in LIVE:
            return True
        return deploy.status == DeployStatus.FAILED and deploy.started_at is None and self._newest(deploy)

    def _newest(self, deploy: Deploy) -> bool:
        """Whether ``deploy`` is the newest of its service on its environment (the one that just changed,
        not an earlier one redrawn)."""
        newest = self.store.deploys.history(deploy.service, deploy.environment, limit=1)
        return bool(newest) and newest[0].id == deploy.id

    # -- sending ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._wake.set()  # whatever a previous Slipway left queued
            self._task = asyncio.get_running_loop().create_task(self._work(), name="github-deployments")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _work(self) -> None:
        while True:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker never dies: what is pending stays pending
                log.exception("the GitHub writes worker failed; trying again shortly")
                await asyncio.sleep(1.0)

    async def _round(self) -> None:
        """Send what is due, or wait until something is (or is queued)."""
        due = self.store.github.due(self.now())
        if not due:
            self.idle.set()
            wait = self._until_next()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass
            return
        self.idle.clear()
        await asyncio.gather(*(self._send(write) for write in due))

    def _until_next(self) -> float | None:
        next_at = self.store.github.next_attempt()
        if not next_at:
            return None
        return max(0.05, (datetime.fromisoformat(next_at) - self.now()).total_seconds())

    async def _send(self, write: Any) -> None:
        deploy = self.store.deploys.get(write.deploy_id)
        spec = self._spec(deploy)
        if spec is None:
            self.store.github.mark_failed(write.id, "no longer configured")
            return
        if write.kind == "status" and self.store.github.deployment_of(deploy.id) is None:
            # its deployment was refused (and said so): nothing to give a status to
            self.store.github.mark_failed(write.id, "its deployment was never made")
            return
        try:
            result = await self._call(spec, deploy, write)
        except GitHubTrouble as trouble:
            delay = min(MAX_BACKOFF, self.backoff * 2.0 ** write.attempts)
            log.warning("deploy %s: GitHub %s write will be retried in %.1f s: %s", deploy.id, write.kind, delay,
                        trouble)
            self.store.github.mark_retry(write.id, str(trouble), self.now() + timedelta(seconds=delay))
            return
        except GitHubRefused as refusal:
            with self.store.transaction():
                told = self.store.github.refused(deploy.id)  # a refusal is told once per deploy
                self.store.github.mark_failed(write.id, str(refusal))
                if write.kind == "deployment":  # no deployment: its statuses cannot be sent
                    self.store.github.fail_pending(deploy.id, "the deployment was refused")
                if not told:
                    self.views.thread(deploy, f":warning: GitHub refused the {write.kind} of this deploy "
                                              f"({escape(str(refusal))}); the deploy goes on without it.")
            return
        except Exception as exc:  # an answer Slipway cannot read: given up, never retried forever
            log.exception("deploy %s: GitHub %s write failed", deploy.id, write.kind)
            self.store.github.mark_failed(write.id, f"{type(exc).__name__}: {exc}"[:500])
            return
        self.store.github.mark_sent(write.id, result)

    # -- GitHub's REST API ------------------------------------------------------------------

    async def _call(self, spec: GitHubChanges, deploy: Deploy, write: Any) -> dict[str, Any]:
        base = f"{spec.api_url.rstrip('/')}/repos/{spec.repository}"
        tag = spec.tag.replace("{version}", deploy.version)
        if write.kind == "deployment":
            known = self.store.github.deployment_of(deploy.id)
            if known is not None:  # made, and recorded, before a restart kept it from being marked sent
                return {"id": known}
            if write.attempts:  # an earlier attempt may have made it and lost GitHub's answer
                made = await self._made_before(spec, deploy, base, tag)
                if made is not None:
                    self.store.github.remember_deployment(deploy.id, spec.repository, made)
                    return {"id": made, "found": True}
            body = {"ref": tag, "environment": deploy.environment, "auto_merge": False, "required_contexts": [],
                    "description": f"Slipway deploy #{deploy.id} of {deploy.service} {deploy.display_version}",
                    "payload": {"slipway_deploy_id": deploy.id}, "production_environment":
                        deploy.environment == self.config.environment_names[-1]}
            answer = await self._request(spec, "POST", f"{base}/deployments", body)
            self.store.github.remember_deployment(deploy.id, spec.repository, int(answer["id"]))
            return {"id": answer["id"]}
        if write.kind == "status":
            deployment = self.store.github.deployment_of(deploy.id)
            if deployment is None:
                raise GitHubRefused("its deployment was never made")
            body = {"state": write.payload["state"], "description": self._describe(deploy)[:140],
                    "environment": deploy.environment}
            if deploy.permalink:
                body["environment_url"] = body["log_url"] = deploy.permalink
            answer = await self._request(spec, "POST", f"{base}/deployments/{deployment}/statuses", body)
            return {"id": answer.get("id")}
        if write.kind == "release":
            try:
                found = await self._request(spec, "GET", f"{base}/releases/tags/{tag}")
                return {"id": found.get("id"), "existed": True}
            except GitHubRefused as refusal:
                if "404" not in str(refusal):
                    raise
            body = {"tag_name": tag, "name": f"{deploy.service} {deploy.display_version}",
                    "body": release_notes(deploy)}
            answer = await self._request(spec, "POST", f"{base}/releases", body)
            return {"id": answer.get("id")}
        raise GitHubRefused(f"unknown write {write.kind}")

    async def _made_before(self, spec: GitHubChanges, deploy: Deploy, base: str, tag: str) -> int | None:
        """The deployment an earlier attempt made for ``deploy`` (GitHub's answer lost), if any."""
        listed = await self._request(spec, "GET", f"{base}/deployments",
                                     query={"ref": tag, "environment": deploy.environment, "per_page": "100"})
        for deployment in listed if isinstance(listed, list) else []:
            payload = deployment.get("payload")
            if isinstance(payload, dict) and payload.get("slipway_deploy_id") == deploy.id:
                return int(deployment["id"])
        return None

    @staticmethod
    def _describe(deploy: Deploy) -> str:
        status = deploy.status.replace("_", " ")
        return f"Slipway #{deploy.id}: {status}" + (f" ({deploy.status_reason})" if deploy.status_reason else "")

    async def _request(self, spec: GitHubChanges, method: str, url: str, body: dict[str, Any] | None = None,
                       query: dict[str, str] | None = None) -> Any:
        token = self.environ.get(spec.token_env)
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.request(method, url, json=body, params=query, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                text = await response.text()
                if response.status >= 500 or response.status == 429 or (
                        response.status == 403 and response.headers.get("x-ratelimit-remaining") == "0"):
                    raise GitHubTrouble(f"GitHub answered {response.status}")
                if response.status >= 400:
                    raise GitHubRefused(f"GitHub answered {response.status}: {_message(text)}")
                return json.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GitHubTrouble(f"GitHub unreachable: {exc or type(exc).__name__}") from None


def _message(text: str) -> str:
    try:
        return str(json.loads(text).get("message", ""))[:200]
    except (ValueError, AttributeError):
        return text[:200]


def release_notes(deploy: Deploy) -> str:
    """The change list, as the Release's Markdown notes."""
    record = deploy.change_set
    if not record or "direction" not in record:
        return f"Deployed by Slipway (#{deploy.id}); the change list was unavailable."
    changes = ChangeSet.from_record(record)
    lines = [f"{changes.commit_count} commit(s), {len(changes.pulls)} pull request(s) since {changes.base or 'the start'}."]
    if changes.pulls:
        lines += ["", "## Pull requests", *[f"- #{p.number} {p.title}" + (f" (@{p.author})" if p.author else "")
                                            for p in changes.pulls]]
    lines += ["", "## Commits", *[f"- {c.short} {c.title} ({c.author})" for c in changes.commits[:250]]]
    if changes.compare_url:
        lines += ["", f"Full diff: {changes.compare_url}"]
    return "\n".join(lines)
