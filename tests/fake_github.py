"""A local stand-in for the part of GitHub's REST API that Slipway's GitHub
Actions executor uses.

``FakeGitHub`` is a real aiohttp web application on loopback (port 0 unless
told otherwise). It serves:

* ``POST /repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches``
  — 204, or 200 with ``workflow_run_id``/``run_url``/``html_url`` when asked
  with ``return_run_details`` (see ``run_details``);
* ``GET /repos/{owner}/{repo}/actions/workflows/{workflow_id}/runs`` — with
  the ``event``, ``branch`` and ``created=>=…`` filters;
* ``GET /repos/{owner}/{repo}/actions/runs/{run_id}``.

It checks the bearer token, knows which workflows exist and which inputs
each accepts, titles runs from a ``run-name`` template, plays each run
through a scripted list of statuses (one per poll), records every call, and
can answer with injected failures (5xx, rate limits). Tests and the local
sandbox both use it.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from bot.sandbox.fake_server import FakeServer

DOCS = "https://docs.github.com/rest/actions"
DEFAULT_STATUSES = ("queued", "in_progress", "completed")
RUN_NAME_INPUT = re.compile(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}")


@dataclass
class Workflow:
    """A workflow file that can be dispatched."""

    repository: str  # "owner/name"
    path: str  # the file name, e.g. "deploy.yml"
    id: int
    name: str = "Deploy"
    inputs: set[str] | None = None  # the inputs it declares; None: accept any
    required: set[str] = field(default_factory=set)
    run_name: str | None = None  # e.g. "Deploy ${{ inputs.version }} (slipway #${{ inputs.deploy_id }})"
    statuses: tuple[str, ...] = DEFAULT_STATUSES  # what its runs report, one per poll; the last repeats
    conclusion: str = "success"  # what its runs conclude once "completed"

    def title(self, inputs: dict[str, str]) -> str:
        """The run's display title, as GitHub renders ``run-name`` (the workflow name without one)."""
        if self.run_name is None:
            return self.name
        return RUN_NAME_INPUT.sub(lambda match: str(inputs.get(match.group(1), "")), self.run_name)


@dataclass
class Run:
    """One workflow run. Each ``GET`` of the run moves it one step along ``statuses``."""

    id: int
    workflow: Workflow
    ref: str
    inputs: dict[str, str]
    display_title: str
    created_at: datetime
    statuses: list[str]
    conclusion: str
    event: str = "workflow_dispatch"
    polls: int = 0
    hidden_for: int = 0  # listings that do not show it yet (GitHub lists a new run after a moment)

    @property
    def status(self) -> str:
        return self.statuses[min(self.polls, len(self.statuses) - 1)]

    @property
    def head_branch(self) -> str:
        return self.ref.removeprefix("refs/heads/").removeprefix("refs/tags/")

    @property
    def html_url(self) -> str:
        return f"https://github.com/{self.workflow.repository}/actions/runs/{self.id}"

    def as_json(self, api_url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.workflow.name,
            "display_title": self.display_title,
            "event": self.event,
            "head_branch": self.head_branch,
            "status": self.status,
            "conclusion": self.conclusion if self.status == "completed" else None,
            "workflow_id": self.workflow.id,
            "path": f".github/workflows/{self.workflow.path}",
            "created_at": _iso(self.created_at),
            "html_url": self.html_url,
            "url": f"{api_url}/repos/{self.workflow.repository}/actions/runs/{self.id}",
        }


@dataclass
class Failure:
    """An answer to give instead of the real one, to the next call of ``route``."""

    route: str  # "dispatch", "runs" (the listing) or "run"
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "Server Error"
    after_effect: bool = False  # do the work first, then answer with this (a lost reply)


@dataclass
class Call:
    route: str
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    status: int = 0


class FakeGitHub(FakeServer):
    """GitHub's Actions API, as far as Slipway uses it."""

    def __init__(self, token: str = "ghp_test", *, prefix: str = "", run_details: str = "supported") -> None:
        super().__init__()
        self.token = token
        self.prefix = prefix.rstrip("/")  # e.g. "/api/v3", as GitHub Enterprise Server serves it
        self.url_suffix = self.prefix
        self.run_details = run_details  # "supported", "ignored" (always 204) or "rejected" (422)
        self.new_runs_hidden_for = 0  # listings that miss a freshly dispatched run
        self.workflows: dict[tuple[str, str], Workflow] = {}
        self.runs: dict[int, Run] = {}
        self.failures: list[Failure] = []
        self.calls: list[Call] = []
        self._ids = itertools.count(9001)

    # -- set-up -------------------------------------------------------------------

    def add_workflow(self, repository: str, path: str, **settings: Any) -> Workflow:
        workflow = Workflow(repository, path, next(self._ids), **settings)
        self.workflows[(repository, path)] = workflow
        return workflow

    def add_run(self, workflow: Workflow, inputs: dict[str, str] | None = None, *, ref: str = "main",
                event: str = "workflow_dispatch", hidden_for: int = 0) -> Run:
        """A run of ``workflow``, created now: one dispatched here, or someone else's."""
        inputs = dict(inputs or {})
        run = Run(next(self._ids), workflow, ref, inputs, workflow.title(inputs), datetime.now(timezone.utc),
                  list(workflow.statuses), workflow.conclusion, event, hidden_for=hidden_for)
        self.runs[run.id] = run
        return run

    def fail(self, route: str, status: int, *, times: int = 1, **details: Any) -> None:
        """Answer the next ``times`` calls of ``route`` with ``status``."""
        self.failures.extend(Failure(route, status, **details) for _ in range(times))

    # -- serving ------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application()
        repo = self.prefix + "/repos/{owner}/{repo}/actions"
        app.router.add_post(repo + "/workflows/{workflow_id}/dispatches", self._dispatch)
        app.router.add_get(repo + "/workflows/{workflow_id}/runs", self._list_runs)
        app.router.add_get(repo + "/runs/{run_id}", self._get_run)
        app.router.add_post(repo + "/runs/{run_id}/cancel", self._cancel_run)
        return app

    # -- what happened --------------------------------------------------------------

    def calls_to(self, route: str) -> list[Call]:
        return [call for call in self.calls if call.route == route]

    @property
    def dispatches(self) -> list[Call]:
        """The dispatches GitHub accepted."""
        return [call for call in self.calls_to("dispatch") if call.status in (200, 204)]

    # -- the API --------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        call, refused = await self._admit(request, "dispatch", body)
        if refused is not None:
            return await self._answer(call, refused)
        workflow = self._workflow(request)
        if workflow is None:
            return await self._answer(call, _error(404, "Not Found"))
        problem = _dispatch_problem(workflow, body, self.run_details)
        if problem is not None:
            return await self._answer(call, _error(422, problem))
        run = self.add_run(workflow, dict(body.get("inputs") or {}), ref=body["ref"],
                           hidden_for=self.new_runs_hidden_for)
        if self.run_details == "supported" and body.get("return_run_details") is True:
            answer = web.json_response({"workflow_run_id": run.id, "html_url": run.html_url,
                                        "run_url": f"{self.url}/repos/{workflow.repository}/actions/runs/{run.id}"})
        else:
            answer = web.Response(status=204)
        return await self._answer(call, self._after_effect(call) or answer)

    async def _list_runs(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "runs")
        if refused is not None:
            return await self._answer(call, refused)
        workflow = self._workflow(request)
        if workflow is None:
            return await self._answer(call, _error(404, "Not Found"))
        listed = [run for run in self.runs.values() if run.workflow is workflow and _matches(run, request.query)]
        for run in listed:
            run.hidden_for -= 1
        shown = sorted((run for run in listed if run.hidden_for < 0), key=lambda run: run.id, reverse=True)
        body = {"total_count": len(shown), "workflow_runs": [run.as_json(self.url) for run in shown]}
        return await self._answer(call, self._after_effect(call) or web.json_response(body))

    async def _cancel_run(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "cancel")
        if refused is not None:
            return await self._answer(call, refused)
        run = self.runs.get(int(request.match_info["run_id"])) if request.match_info["run_id"].isdigit() else None
        if run is None or run.workflow.repository != _repository(request):
            return await self._answer(call, _error(404, "Not Found"))
        if run.status == "completed":
            return await self._answer(call, _error(409, "Cannot cancel a workflow run that is completed."))
        run.statuses, run.polls, run.conclusion = ["completed"], 0, "cancelled"
        return await self._answer(call, web.json_response({}, status=202))

    async def _get_run(self, request: web.Request) -> web.Response:
        call, refused = await self._admit(request, "run")
        if refused is not None:
            return await self._answer(call, refused)
        run = self.runs.get(int(request.match_info["run_id"])) if request.match_info["run_id"].isdigit() else None
        if run is None or run.workflow.repository != _repository(request):
            return await self._answer(call, _error(404, "Not Found"))
        body = run.as_json(self.url)
        run.polls += 1
        return await self._answer(call, self._after_effect(call) or web.json_response(body))

    # -- plumbing -------------------------------------------------------------------

    async def _admit(self, request: web.Request, route: str, body: Any = None) -> tuple[Call, web.Response | None]:
        """Record the call; the answer to give at once when the token is wrong
        or a failure is due (one that does not wait for the work)."""
        call = Call(route, request.method, request.path, dict(request.query), body, dict(request.headers))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return call, _error(401, "Bad credentials")
        failure = self._due_failure(route)
        if failure is not None and not failure.after_effect:
            self.failures.remove(failure)
            return call, _error(failure.status, failure.message, failure.headers)
        return call, None

    def _after_effect(self, call: Call) -> web.Response | None:
        """The failure to answer with once the work is done (a reply lost on the way back)."""
        failure = self._due_failure(call.route)
        if failure is None:
            return None
        self.failures.remove(failure)
        return _error(failure.status, failure.message, failure.headers)

    def _due_failure(self, route: str) -> Failure | None:
        return next((failure for failure in self.failures if failure.route == route), None)

    def _workflow(self, request: web.Request) -> Workflow | None:
        wanted = request.match_info["workflow_id"]
        for (repository, path), workflow in self.workflows.items():
            if repository == _repository(request) and wanted in (path, str(workflow.id)):
                return workflow
        return None

    async def _answer(self, call: Call, response: web.Response) -> web.Response:
        call.status = response.status
        await self.changed(lambda: self.calls.append(call))
        return response


def _dispatch_problem(workflow: Workflow, body: Any, run_details: str) -> str | None:
    """Why GitHub would refuse this dispatch with 422, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("ref"), str):
        return 'Invalid request.\n\n"ref" wasn\'t supplied.'
    if run_details == "rejected" and "return_run_details" in body:
        return 'Invalid request.\n\n"return_run_details" is not a permitted key.'
    inputs = body.get("inputs") or {}
    unexpected = sorted(set(inputs) - workflow.inputs) if workflow.inputs is not None else []
    if unexpected:
        return f"Unexpected inputs provided: {json.dumps(unexpected)}"
    missing = sorted(workflow.required - set(inputs))
    if missing:
        return f"Required input '{missing[0]}' not provided"
    return None


def _matches(run: Run, query: Any) -> bool:
    if "event" in query and run.event != query["event"]:
        return False
    if "branch" in query and run.head_branch != query["branch"]:
        return False
    created = query.get("created", "")
    if created.startswith(">="):
        since = datetime.fromisoformat(created[2:].replace("Z", "+00:00"))
        return run.created_at.replace(microsecond=0) >= since
    return True


def _repository(request: web.Request) -> str:
    return f"{request.match_info['owner']}/{request.match_info['repo']}"


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json() if request.can_read_body else None
    except ValueError:
        return None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message, "documentation_url": DOCS, "status": str(status)},
                             status=status, headers=headers)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
