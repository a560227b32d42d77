"""Deploy by dispatching a GitHub Actions workflow and following its run.

What is sent
    ``POST {api_url}/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches``
    with the spec's ``ref`` and, always, three string inputs: ``version``,
    ``environment`` and ``deploy_id``. The workflow must declare them under
    ``on.workflow_dispatch.inputs``: GitHub refuses an undeclared input (422
    "Unexpected inputs provided"). The spec's own ``inputs`` are added (and
    win over those three); their values may use the placeholders
    ``{version}``, ``{environment}``, ``{service}``, ``{deploy_id}``,
    ``{previous_version}`` and ``{rollback_of}`` (the last two are empty
    when there is none), and ``{strategy}``, ``{step}``, ``{steps}``,
    ``{weight}``, ``{phase}`` and ``{stage}`` (empty when not set).

Staged deploys
    A canary or blue-green deploy dispatches the workflow once per step, and
    those dispatches carry, besides the three inputs, ``strategy`` and
    whichever of ``step``, ``steps``, ``weight`` and ``phase`` the step sets
    (``weight`` "0" or ``phase`` "switch_back": the abort). A workflow that
    runs staged deploys must declare all five (GitHub refuses undeclared
    inputs); a direct deploy never sends them, so a workflow that only ever
    deploys directly needs nothing new.

Finding the run
    The dispatch asks GitHub for the run's id (``return_run_details``).
    Where GitHub answers without it (204, as older GitHub Enterprise Server
    does), Slipway lists the workflow's ``workflow_dispatch`` runs on the ref
    created since the dispatch and takes the one whose title says
    ``slipway #<deploy id>``. Give the workflow this run name so that it can::

        run-name: "Deploy ${{ inputs.version }} to ${{ inputs.environment }} (slipway #${{ inputs.deploy_id }})"

    A staged deploy's runs should also name their step after the marker
    (``slipway #12 step-2``, ``… phase-switch``, ``… abort``): declare a
    ``stage`` input, have the spec send it (``inputs: {stage: "{stage}"}``)
    and end the run name with ``(slipway #${{ inputs.deploy_id }} ${{ inputs.stage }})``.
    A run whose title names another step is never taken, nor is a run some
    job (an earlier step included) already follows.

    A workflow without it gets the oldest such run that no other deploy has
    claimed: right unless someone dispatches the same workflow by hand at
    the same moment.

Following it
    The run id is handed to ``remember`` as soon as it is known, so that a
    restarted Slipway can :meth:`~GitHubActionsExecutor.resume` the job. The
    run is polled every ``poll_interval`` until it completes or until
    ``job.started_at + timeout``; it succeeded if and only if its conclusion
    is ``success``. GitHub's refusals (bad token, unknown workflow,
    unexpected input…) become a failed :class:`Outcome` carrying GitHub's
    message; 5xx answers and lost connections while waiting are retried;
    rate limits are waited out as GitHub asks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from bot.config import DeployExecutor
from bot.durations import format_duration
from bot.executors.base import Job, Outcome, RememberReference

log = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
USER_AGENT = "Slipway-deploy-bot"
CLOCK_SKEW = timedelta(seconds=30)  # our clock ahead of GitHub's, when listing runs "created since"
REQUEST_TIMEOUT = 30.0
CONFIRM_WINDOW = 60.0  # how long to look for the run of a dispatch whose reply was lost
UNSPECIFIED_RATE_LIMIT_WAIT = 60.0  # GitHub: "wait for at least one minute" when no header says how long
MARKER_TEXT = "slipway #"  # followed by the deploy id, in the run's title
# the deploy id, then (a staged deploy's run) which engine call: "step-2", "phase-switch", "abort"
MARKER = re.compile(re.escape(MARKER_TEXT) + r"(\d+)(?:[ :/-]+(step-\d+|phase-[a-z_]+|abort)\b)?", re.IGNORECASE)
PLACEHOLDER = re.compile(r"\{(\w+)\}")

Sleep = Callable[[float], Awaitable[None]]


def workflow_inputs(job: Job, extra: Mapping[str, str]) -> dict[str, str]:
    """The ``inputs`` of the dispatch: version, environment and deploy_id,
    a staged deploy's strategy, step, steps, weight and phase (those set;
    none for a direct deploy), then ``extra`` (the spec's inputs) with its
    placeholders filled in."""
    stage = job.stage_fields
    values = {
        "version": job.version,
        "environment": job.environment,
        "service": job.service,
        "deploy_id": str(job.deploy_id),
        "previous_version": job.previous_version or "",
        "rollback_of": "" if job.rollback_of is None else str(job.rollback_of),
        "step": "", "steps": "", "weight": "", "phase": "",
        **stage,
        "strategy": job.strategy,
        "stage": job.stage_key or "",
    }
    inputs = {name: values[name] for name in ("version", "environment", "deploy_id")}
    inputs.update(stage)
    for name, template in extra.items():
        inputs[name] = PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)
    return inputs


class GitHubActionsExecutor:
    """Runs a deploy as a GitHub Actions ``workflow_dispatch`` and follows its run."""

    kind = "github_actions"

    def __init__(self, executor: DeployExecutor, environ: Mapping[str, str] = os.environ,
                 session: aiohttp.ClientSession | None = None, *, sleep: Sleep = asyncio.sleep,
                 claimed_runs: set[int] | None = None) -> None:
        """``environ`` holds the token (under the spec's ``token_env``); without
        ``session`` each job opens its own. ``claimed_runs`` are run ids already
        followed by some deploy: share one set between the executors of a
        workflow so that two deploys never follow the same run. ``sleep`` is
        replaceable so that tests can see how long GitHub asked to wait."""
        if executor.github_actions is None:
            raise ValueError("GitHubActionsExecutor needs an executor with github_actions set")
        self.spec = executor.github_actions
        self.timeout = executor.timeout
        self.claimed_runs = claimed_runs if claimed_runs is not None else set()
        self._environ = environ
        self._session = session
        self._sleep = sleep

    async def run(self, job: Job, remember: RememberReference) -> Outcome:
        """Dispatch the workflow for ``job`` and follow its run to the conclusion
        or the timeout. GitHub's refusals come back as a failed Outcome."""
        return await self._track(job, lambda tracker: tracker.dispatch_and_follow(remember))

    async def resume(self, job: Job, reference: dict[str, Any], remember: RememberReference) -> Outcome:
        """Follow up a job a previous Slipway dispatched: the remembered run, or,
        if it stopped before the run was known, the run found again. Never
        dispatches a second time (a staged deploy's step that the previous
        Slipway had not begun to dispatch is dispatched, once)."""
        return await self._track(job, lambda tracker: tracker.follow_up(reference, remember))

    async def _track(self, job: Job, work: Callable[[_JobTracker], Awaitable[Outcome]]) -> Outcome:
        token = self._environ.get(self.spec.token_env)
        if not token:
            return Outcome(False, f"{self.spec.token_env} is not set: Slipway needs a GitHub token that may run "
                                  f"workflows on {self.spec.repository} (actions: write)")
        async with self._session_in_use() as session:
            tracker = _JobTracker(self, job, _Api(session, self.spec.api_url, token))
            try:
                return await work(tracker)
            except _Refused as refused:
                return tracker.refused(refused)
            except _DeadlinePassed:
                return await tracker.timed_out_and_cancelled()

    @asynccontextmanager
    async def _session_in_use(self) -> AsyncIterator[aiohttp.ClientSession]:
        if self._session is not None:
            yield self._session
        else:
            async with aiohttp.ClientSession() as session:
                yield session


class _Refused(Exception):
    """GitHub answered, and the answer is final (401, 403, 404, 422…)."""

    def __init__(self, what: str, reply: _Reply) -> None:
        super().__init__(what)
        self.what = what
        self.reply = reply


class _Unconfirmed(Exception):
    """The dispatch may or may not have reached GitHub (5xx, lost connection)."""


class _DeadlinePassed(Exception):
    """job.started_at + timeout has passed."""


@dataclass
class _Reply:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """GitHub's ``message``, on one line (the summary is one line)."""
        text = self.body.get("message") if isinstance(self.body, dict) else self.body
        return " ".join(str(text or "").split())[:300] or f"HTTP {self.status}"

    def rate_limit_wait(self) -> float | None:
        """Seconds GitHub asks us to wait before the next request; None if this is no rate limit."""
        if self.status not in (403, 429):
            return None
        retry_after = _number(self.headers.get("retry-after"))
        reset = _number(self.headers.get("x-ratelimit-reset"))
        if retry_after is not None:
            return retry_after
        if self.headers.get("x-ratelimit-remaining") == "0" and reset is not None:
            return max(0.0, reset - time.time())
        if self.status == 429 or "rate limit" in self.message.lower():
            return UNSPECIFIED_RATE_LIMIT_WAIT
        return None


class _Api:
    """The REST calls, with GitHub's headers; transport errors are the caller's."""

    def __init__(self, session: aiohttp.ClientSession, api_url: str, token: str) -> None:
        self._session = session
        self._base = api_url.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
        }

    async def call(self, method: str, path: str, *, timeout: float, payload: Any = None,
                   params: dict[str, str] | None = None) -> _Reply:
        async with self._session.request(method, self._base + path, json=payload, params=params,
                                         headers=self._headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            text = await response.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:  # GitHub's 5xx pages are not always JSON
                body = text
            return _Reply(response.status, body, response.headers)


class _JobTracker:
    """One job's conversation with GitHub: dispatch, find the run, poll it."""

    def __init__(self, executor: GitHubActionsExecutor, job: Job, api: _Api) -> None:
        self.spec = executor.spec
        self.job = job
        self.api = api
        self.timeout = executor.timeout
        self.deadline = _aware(job.started_at) + timedelta(seconds=executor.timeout)
        self._sleep = executor._sleep
        self._claimed = executor.claimed_runs
        owner, name = self.spec.repository.split("/")
        self._repo_path = f"/repos/{quote(owner)}/{quote(name)}"
        self._workflow_path = f"{self._repo_path}/actions/workflows/{quote(self.spec.workflow, safe='')}"
        self.run_id: int | None = None
        self.run_url: str | None = None
        self.status = "unknown"
        self.waiting_for = "GitHub did not accept the dispatch"

    # -- the two ways in ------------------------------------------------------------

    async def dispatch_and_follow(self, remember: RememberReference) -> Outcome:
        dispatched_at = _now()
        if self.job.stage_key is not None:
            # a staged deploy's later step starts where an earlier one's reference ends: say
            # which step is being dispatched, so that a restart knows whether this one was
            await remember({"dispatching": self.job.stage_key})
        try:
            run = await self._dispatch()
        except _Unconfirmed as unconfirmed:
            run = await self._find_unconfirmed_run(since=dispatched_at)
            if run is None:
                return Outcome(False, f"GitHub did not confirm the dispatch ({unconfirmed}) and no run marked "
                                      f"'{self._marker()}' appeared; check {self._actions_url()} "
                                      "before deploying again", run_url=self._actions_url())
        if run is None:
            run = await self._discover(since=dispatched_at)
        return await self._follow(run, remember)

    async def follow_up(self, reference: dict[str, Any], remember: RememberReference) -> Outcome:
        # a staged deploy's reference may still hold an earlier step's run: only this step's counts
        if reference.get("run_id") is not None and reference.get("run_stage") == self.job.stage_key:
            self.run_id, self.run_url = int(reference["run_id"]), reference.get("run_url")
            self._claimed.add(self.run_id)
            return await self._poll()
        if self.job.stage_key is not None and reference.get("dispatching") != self.job.stage_key:
            # The previous Slipway stopped before it dispatched this step (what it
            # remembered is an earlier step's): nothing ran for it, so dispatch it.
            return await self.dispatch_and_follow(remember)
        # The previous Slipway stopped between the dispatch and finding the run:
        # dispatching again would deploy twice, so look for the run instead.
        return await self._follow(await self._discover(since=_aware(self.job.started_at)), remember)

    # -- dispatching ----------------------------------------------------------------

    async def _dispatch(self) -> dict[str, Any] | None:
        """Dispatch the workflow; the run (id, html_url) when GitHub tells it.

        Raises:
            _Refused: GitHub refused the dispatch.
            _Unconfirmed: GitHub may or may not have dispatched it.
        """
        body: dict[str, Any] = {"ref": self.spec.ref, "inputs": workflow_inputs(self.job, self.spec.inputs),
                                "return_run_details": True}
        failures = 0
        while True:
            try:
                reply = await self.api.call("POST", f"{self._workflow_path}/dispatches", payload=body,
                                            timeout=self._request_timeout())
            except aiohttp.ClientConnectorError as error:  # never reached GitHub: safe to try again
                log.warning("cannot reach GitHub to dispatch deploy #%s: %s", self.job.deploy_id, error)
                await self._pause(self._backoff(failures))
                failures += 1
                continue
            except (aiohttp.ClientError, TimeoutError) as error:
                raise _Unconfirmed(str(error) or type(error).__name__) from error
            wait = reply.rate_limit_wait()
            if wait is not None:
                log.warning("GitHub rate limit on dispatch; waiting %.0f s", wait)
                await self._pause(wait)
            elif reply.status == 422 and "return_run_details" in reply.message and "return_run_details" in body:
                del body["return_run_details"]  # a GitHub that predates it; find the run by listing
            elif reply.status >= 500:
                raise _Unconfirmed(f"HTTP {reply.status}")
            elif not reply.ok:
                raise _Refused(f"GitHub refused to dispatch {self.spec.workflow} on "
                               f"{self.spec.repository}@{self.spec.ref}", reply)
            else:
                log.info("dispatched %s on %s for deploy #%s", self.spec.workflow, self.spec.repository,
                         self.job.deploy_id)
                return _run_details(reply.body)

    async def _find_unconfirmed_run(self, since: datetime) -> dict[str, Any] | None:
        """The run of a dispatch whose reply was lost, if one carrying this
        deploy's marker appears soon; None otherwise (do not guess)."""
        until = min(self.deadline, _now() + timedelta(seconds=CONFIRM_WINDOW))
        try:
            return await self._discover(since, marker_only=True, until=until)
        except _DeadlinePassed:
            return None

    # -- finding the run ------------------------------------------------------------

    async def _discover(self, since: datetime, *, marker_only: bool = False,
                        until: datetime | None = None) -> dict[str, Any] | None:
        """List the workflow's runs since ``since`` every poll_interval until
        this deploy's run shows up (None once ``until`` has passed).

        Raises:
            _DeadlinePassed: the job timed out first.
        """
        self.waiting_for = f"no run of {self.spec.workflow} for {self._marker()} appeared"
        params = {"event": "workflow_dispatch", "created": f">={_iso(since - CLOCK_SKEW)}", "per_page": "100"}
        branch = self.spec.ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
        if branch:
            params["branch"] = branch
        while True:
            reply = await self._get(f"{self._workflow_path}/runs", params)
            if not reply.ok:
                raise _Refused(f"GitHub would not list the runs of {self.spec.workflow}", reply)
            runs = reply.body.get("workflow_runs") if isinstance(reply.body, dict) else None
            run = self._pick(runs or [], marker_only)
            if run is not None:
                return run
            if until is not None and _now() >= until:
                return None
            await self._pause(self.spec.poll_interval)

    def _marker(self) -> str:
        """What this job's run title says: ``slipway #12`` (``slipway #12 step-2``)."""
        return f"{MARKER_TEXT}{self.job.deploy_id}" + (f" {self.job.stage_key}" if self.job.stage_key else "")

    def _pick(self, runs: list[dict[str, Any]], marker_only: bool) -> dict[str, Any] | None:
        # never a run already followed (a staged deploy's earlier step is marked with its deploy too)
        marked = [run for run in runs if _marked(run)[0] == self.job.deploy_id and run.get("id") not in self._claimed]
        mine = [run for run in marked if _marked(run)[1] == self.job.stage_key]
        if not mine and self.job.stage_key is not None:
            # a run name without the step: the oldest run of this deploy nobody follows
            mine = [run for run in marked if _marked(run)[1] is None]
        if mine:
            return _oldest(mine)
        # Once any run carries the marker, the workflow has the run-name:
        # an unmarked run is not ours, however alone it is.
        if marker_only or any(MARKER_TEXT in _title(run).lower() for run in runs):
            return None
        free = [run for run in runs if run.get("id") not in self._claimed]
        return _oldest(free) if free else None

    # -- following the run ----------------------------------------------------------

    async def _follow(self, run: dict[str, Any], remember: RememberReference) -> Outcome:
        self.run_id, self.run_url = int(run["id"]), run.get("html_url")
        self._claimed.add(self.run_id)
        log.info("deploy #%s is run %s (%s)", self.job.deploy_id, self.run_id, self.run_url)
        # a staged deploy's run is remembered with its step (see follow_up); a direct one's as it always was
        stage = {} if self.job.stage_key is None else {"run_stage": self.job.stage_key}
        await remember({"run_id": self.run_id, "run_url": self.run_url, **stage})
        return await self._poll()

    async def _poll(self) -> Outcome:
        while True:
            reply = await self._get(f"{self._repo_path}/actions/runs/{self.run_id}")
            if not reply.ok:
                raise _Refused(f"GitHub would not show run {self.run_id}", reply)
            run = reply.body if isinstance(reply.body, dict) else {}
            self.status = run.get("status") or "unknown"
            self.run_url = run.get("html_url") or self.run_url
            if self.status == "completed":
                return self._concluded(run.get("conclusion"))
            await self._pause(self.spec.poll_interval)

    async def _get(self, path: str, params: dict[str, str] | None = None) -> _Reply:
        """GET until GitHub gives an answer that is not a 5xx or a rate limit.

        Raises:
            _DeadlinePassed: the job timed out first.
        """
        failures = 0
        while True:
            try:
                reply = await self.api.call("GET", path, params=params, timeout=self._request_timeout())
            except (aiohttp.ClientError, TimeoutError) as error:
                log.warning("GitHub unreachable for deploy #%s (%s); retrying", self.job.deploy_id,
                            str(error) or type(error).__name__)
                wait = self._backoff(failures)
                failures += 1
            else:
                wait = reply.rate_limit_wait()
                if wait is None and reply.status < 500:
                    return reply
                if wait is None:
                    log.warning("GitHub answered %s for deploy #%s; retrying", reply.status, self.job.deploy_id)
                    wait = self._backoff(failures)
                    failures += 1
                else:
                    log.warning("GitHub rate limit for deploy #%s; waiting %.0f s", self.job.deploy_id, wait)
            await self._pause(wait)

    # -- time -----------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or until the deadline if that comes first.

        Raises:
            _DeadlinePassed: the deadline had already passed.
        """
        remaining = (self.deadline - _now()).total_seconds()
        if remaining <= 0:
            raise _DeadlinePassed()
        await self._sleep(min(seconds, remaining))

    def _backoff(self, failures: int) -> float:
        return min(self.spec.poll_interval, 0.5 * 2 ** failures)

    def _request_timeout(self) -> float:
        return max(1.0, min(REQUEST_TIMEOUT, (self.deadline - _now()).total_seconds()))

    # -- outcomes -------------------------------------------------------------------

    def _concluded(self, conclusion: str | None) -> Outcome:
        elapsed = (_now() - _aware(self.job.started_at)).total_seconds()
        return Outcome(conclusion == "success", f"run {self.run_id} {conclusion or 'completed'} after "
                                                f"{format_duration(elapsed)}",
                       run_url=self.run_url, reference={"run_id": self.run_id, "conclusion": conclusion})

    def refused(self, refused: _Refused) -> Outcome:
        hint = {401: f"; check the token in {self.spec.token_env}",
                404: "; check the repository and workflow names, and that the token can see them"}
        summary = f"{refused.what}: {refused.reply.message} (HTTP {refused.reply.status})"
        return Outcome(False, summary + hint.get(refused.reply.status, ""), run_url=self.run_url,
                       reference=self._reference())

    async def timed_out_and_cancelled(self) -> Outcome:
        """The timeout's outcome, after asking GitHub to cancel the run: a run
        left going could finish after a fix or rollback and undo it."""
        outcome = self.timed_out()
        if self.run_id is None:
            return outcome
        try:
            reply = await self.api.call("POST", f"{self._repo_path}/actions/runs/{self.run_id}/cancel",
                                        timeout=10.0)
            note = "the run was cancelled" if reply.status in (202, 204) else (
                f"cancelling the run failed: {reply.message} (HTTP {reply.status}); cancel it by hand")
        except (aiohttp.ClientError, TimeoutError) as exc:
            note = f"cancelling the run failed ({exc or type(exc).__name__}); cancel it by hand"
        return Outcome(False, f"{outcome.summary}; {note}", run_url=outcome.run_url, reference=outcome.reference)

    def timed_out(self) -> Outcome:
        where = f"run {self.run_id} still {self.status}" if self.run_id is not None else self.waiting_for
        return Outcome(False, f"timed out after {format_duration(self.timeout)}; {where}",
                       run_url=self.run_url, reference=self._reference())

    def _reference(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id is not None else {}

    def _actions_url(self) -> str:
        """The workflow's page on GitHub's web site (the API host minus its api part)."""
        api = urlsplit(self.spec.api_url)
        if api.netloc == "api.github.com":
            web = "https://github.com"
        else:
            web = f"{api.scheme}://{api.netloc}{api.path.rstrip('/').removesuffix('/api/v3')}"
        return f"{web}/{self.spec.repository}/actions/workflows/{self.spec.workflow}"


def _run_details(body: Any) -> dict[str, Any] | None:
    """The run from a dispatch's 200 reply (``return_run_details``); None from a 204."""
    if isinstance(body, dict) and body.get("workflow_run_id") is not None:
        return {"id": body["workflow_run_id"], "html_url": body.get("html_url")}
    return None


def _title(run: dict[str, Any]) -> str:
    return f"{run.get('display_title') or ''} {run.get('name') or ''}"


def _marked(run: dict[str, Any]) -> tuple[int | None, str | None]:
    """The deploy id and the engine call (``step-2``…, None when not named) the run's title names."""
    match = MARKER.search(_title(run))
    if match is None:
        return None, None
    return int(match.group(1)), match.group(2).lower() if match.group(2) else None


def _oldest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda run: (run.get("created_at") or "", run.get("id") or 0))


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
