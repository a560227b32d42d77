"""``/api/v1``: Slipway's HTTP API for CI, and its break-glass door.

Every route but the description (``GET /api/v1/openapi.json``) takes a
bearer token (``slipway token create``) and checks it before anything reads
the body; a token does what its scopes say:

==========================  ===================================================
``read``                    ``GET /api/v1/deploys``, ``GET /api/v1/deploys/{id}``
``request:<env>``, ``*``    ``POST /api/v1/deploys`` to that environment
``control:<env>``           ``POST /api/v1/deploys/{id}/rollback|abort|pause|
                            resume|promote`` on that environment's deploys
==========================  ===================================================

A request runs the policy ``/deploy`` runs (the refusal text is the same)
and its approvals still happen in Slack. Its requester is ``requested_by``,
a Slack user who must hold the ``request`` role (and so cannot approve it),
or else the token, ``api:NAME``. A control acts as the token: its
``control:<env>`` scope is the role the button would ask for; every other
rule of the button holds. Every refusal is a 4xx with a JSON body naming the
problem; nothing is stored before the request is known to be well-formed,
and every change is audited with the token's name (``source: api:NAME``).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.config import USER_ID
from bot.deploys.ports import People
from bot.deploys.versions import parse_version
from bot.errors import (
    InvalidVersion,
    NotAllowed,
    PolicyViolation,
    SlipwayError,
    UnknownEnvironment,
    UnknownService,
    UsageError,
)
from bot.events import DeployPosted
from bot.runtime.logs import deploy_context
from handlers.http import read_bounded
from handlers.openapi import CONTROLS, document
from store import Deploy, DeployNotFound, DeployStatus
from store.tokens import ApiToken, TokenRefused

if TYPE_CHECKING:
    from bot.runtime.composition import Slipway

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
MAX_BODY_BYTES = 1024 * 1024
MAX_TOKEN_CHARS = 200  # a token is 47; anything far longer is not one
MAX_ID_DIGITS = 18  # below 2**63, SQLite's largest integer
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")

Text = Annotated[str, Field(min_length=1, max_length=100)]


class _Body(BaseModel):
    # unknown fields and wrong types are refused, not coerced ("1" is no number, 1 no string)
    model_config = ConfigDict(extra="forbid", strict=True)


class DeployRequest(_Body):
    """``POST /api/v1/deploys``: what ``/deploy service version environment`` says."""

    service: Text
    version: Text
    environment: Text
    requested_by: Annotated[str, Field(pattern=USER_ID.pattern, max_length=32)] | None = Field(
        default=None, description="the Slack user id (U…) the request is made for; they must hold the `request` "
                                  "role, and count as its requester (they cannot approve it)")


class RollbackRequest(_Body):
    """``POST /api/v1/deploys/{id}/rollback``."""

    to: Text | None = Field(default=None, description="the version the caller expects to go back to; refused "
                                                       "(409) when the rollback would go elsewhere")
    reason: Annotated[str, Field(max_length=500)] | None = Field(default=None, description="kept in the audit log")


class ControlRequest(_Body):
    """``POST /api/v1/deploys/{id}/abort|pause|resume|promote``."""

    reason: Annotated[str, Field(max_length=500)] | None = Field(default=None, description="kept in the audit log")


class ApiProblem(Exception):
    """A refusal: its status and what to say."""

    def __init__(self, status: int, error: str, problems: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.problems, self.headers = status, error, problems, headers


def refusal(status: int, error: str, problems: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error": error}
    if problems:
        body["problems"] = problems
    return web.json_response(body, status=status, headers=headers)


def status_of(error: SlipwayError) -> int:
    """The HTTP status that says what kind of refusal a domain error is."""
    if isinstance(error, NotAllowed):
        return 403
    if isinstance(error, (UsageError, InvalidVersion, UnknownService, UnknownEnvironment)):
        return 422
    return 409  # PolicyViolation, InvalidTransition, and the rest: the state of things refuses it


def deploy_json(deploy: Deploy) -> dict[str, Any]:
    """A deploy as the API shows it. ``status_reason`` is the text Slack shows (mrkdwn)."""
    return {
        "id": deploy.id,
        "service": deploy.service,
        "environment": deploy.environment,
        "version": deploy.version,
        "status": str(deploy.status),
        "status_reason": deploy.status_reason,
        "requested_by": deploy.requested_by,
        "requested_at": deploy.requested_at,
        "previous_version": deploy.previous_version,
        "approvals": [{"user": a.user_id, "approved_at": a.approved_at, "counts_as": a.counts_as}
                      for a in deploy.approvals],
        "approved_at": deploy.approved_at,
        "started_at": deploy.started_at,
        "finished_at": deploy.finished_at,
        "message_permalink": deploy.permalink,
        "rollback_of": deploy.rollback_of,
        "url": f"{PREFIX}/deploys/{deploy.id}",
    }


def validation_problems(error: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors, one per field, in words: ``{"field": "service", "problem": "…"}``."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in item["loc"]) or "(body)"
        problem = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append({"field": field, "problem": problem})
    return problems


def parse_body(raw: bytes, model: type[_Body]) -> Any:
    """The body as ``model``; an empty body is ``{}``.

    Raises:
        ApiProblem: 400 (not a JSON object) or 422 (fields), naming each problem.
    """
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):
        raise ApiProblem(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiProblem(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as invalid:
        problems = validation_problems(invalid)
        raise ApiProblem(422, "invalid request: " + "; ".join(f"{p['field']}: {p['problem']}" for p in problems),
                         problems) from None


class TokenAuthority:
    """The directory as the domain asks it, with one more holder of every
    role it is asked about: the token acting, whose ``control:<env>`` scope
    (checked before the domain is called) stands for the role a button asks
    for. Slack's usergroups may be unreachable when the API is used as the
    break-glass door: the token does not need them."""

    def __init__(self, people: People, actor: str) -> None:
        self.people = people
        self.actor = actor

    async def is_member(self, user_id: str, entries: list[str]) -> bool:
        return user_id == self.actor or await self.people.is_member(user_id, entries)

    async def mention(self, entry: str) -> str:
        return await self.people.mention(entry)

    async def mentions(self, entries: list[str] | tuple[str, ...]) -> str:
        return await self.people.mentions(entries)


Handler = Callable[[web.Request, ApiToken], Awaitable[web.Response]]


def register(app: web.Application, slipway: "Slipway") -> None:
    """Attach ``/api/v1`` to the web application."""
    store = slipway.store

    def authenticate(request: web.Request) -> ApiToken:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiProblem(401, "missing bearer token: send `Authorization: Bearer slp_…` "
                                  "(make one with `slipway token create`)", headers={"WWW-Authenticate": "Bearer"})
        token = token.strip()
        try:
            if len(token) > MAX_TOKEN_CHARS:
                raise TokenRefused("unknown", "unknown API token")
            return store.tokens.verify(token)
        except TokenRefused as refused:
            # logged, not audited: an unauthenticated caller must not grow the audit log
            log.warning("refused an API request from %s: %s", request.remote, refused)
            raise ApiProblem(401, str(refused), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None

    def refuse_scope(token: ApiToken, scope: str, deploy_id: int | None = None) -> ApiProblem:
        store.audit.record(deploy_id, token.actor, "refused", {"attempted": "api", "scope": scope}, token.actor)
        return ApiProblem(403, f"token {token.name!r} lacks the scope {scope!r} (it has: {', '.join(token.scopes)})")

    def door(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        """Authenticate, then answer; every refusal as JSON, every surprise a logged 500 with an id."""
        async def answer(request: web.Request) -> web.Response:
            # background work (earlier requests' posts and runs) waits while an answer is being made,
            # as it does for Slack's acks (bot.runtime.tasks.AckFirst)
            with slipway.tasks.ack_first.answering():
                return await guarded(request)

        async def guarded(request: web.Request) -> web.Response:
            try:
                return await handler(request, authenticate(request))
            except ApiProblem as problem:
                return refusal(problem.status, problem.error, problem.problems, problem.headers)
            except SlipwayError as refused:
                return refusal(status_of(refused), refused.message)
            except Exception:  # noqa: BLE001 — a bug: logged with its traceback and an id to grep for
                error_id = uuid.uuid4().hex[:12]
                log.exception("API request %s %s failed (error id %s)", request.method, request.path, error_id)
                return refusal(500, f"something went wrong on Slipway's side (error id {error_id})")
        return answer

    async def body_of(request: web.Request, model: type[_Body]) -> Any:
        raw = await read_bounded(request, MAX_BODY_BYTES)
        if raw is None:
            raise ApiProblem(413, f"body larger than {MAX_BODY_BYTES} bytes")
        return parse_body(raw, model)

    def deploy_of(request: web.Request) -> Deploy:
        raw_id = request.match_info["deploy_id"]
        if not (raw_id.isascii() and raw_id.isdigit()) or len(raw_id) > MAX_ID_DIGITS:
            raise ApiProblem(404, f"no deploy {raw_id!r}: a deploy id is a number")
        try:
            return store.deploys.get(int(raw_id))
        except DeployNotFound:
            raise ApiProblem(404, f"there is no deploy #{int(raw_id)}") from None

    # -- requests -----------------------------------------------------------------------

    async def request_deploy(request: web.Request, token: ApiToken) -> web.Response:
        body: DeployRequest = await body_of(request, DeployRequest)
        if not token.may_request(body.environment):
            raise refuse_scope(token, f"request:{body.environment}")
        trigger = request.headers.get("Idempotency-Key")
        if trigger is not None and not IDEMPOTENCY_KEY.match(trigger):
            raise ApiProblem(422, "Idempotency-Key must be 1 to 100 of A-Z, a-z, 0-9, '.', '_', ':' and '-'")
        source = token.actor
        requester = body.requested_by or token.actor
        if body.requested_by is not None:  # the person must be allowed to ask for it themselves
            await slipway.workflow.check_may_request(body.requested_by, body.service, body.environment, source)
        deploy, new = slipway.workflow.request(
            user=requester, service=body.service, version=body.version, environment=body.environment,
            trigger_id=f"{token.actor}:{trigger}" if trigger else None, source=source)
        if new:
            slipway.tasks.spawn(announce(deploy), name=f"announce-deploy-{deploy.id}")
        return web.json_response(deploy_json(deploy), status=201 if new else 200,
                                 headers={"Location": f"{PREFIX}/deploys/{deploy.id}"})

    async def announce(deploy: Deploy) -> None:
        """What ``/deploy`` does after its ack: post the request, look up what
        it ships, start it if it needs no approval."""
        with deploy_context(deploy.id):
            lookup = slipway.lookups.start(deploy.id) if slipway.lookups is not None else None
            try:
                await slipway.runner.announce_and_start(deploy)
            except SlipwayError as failure:  # the request is cancelled and says why; the caller reads it back
                log.warning("deploy %s requested over the API was not announced: %s", deploy.id, failure.message)
                return
            if lookup is not None:
                await lookup

    # -- reads --------------------------------------------------------------------------

    async def read_deploy(request: web.Request, token: ApiToken) -> web.Response:
        if not token.may_read():
            raise refuse_scope(token, "read")
        return web.json_response(deploy_json(deploy_of(request)))

    async def list_deploys(request: web.Request, token: ApiToken) -> web.Response:
        if not token.may_read():
            raise refuse_scope(token, "read")
        query = request.query
        unknown = sorted(set(query) - {"service", "environment", "status", "limit", "before"})
        problems = [{"field": name, "problem": "unknown query parameter"} for name in unknown]
        problems += [{"field": name, "problem": "given more than once"} for name in sorted(set(query))
                     if len(query.getall(name)) > 1]
        status = query.get("status")
        if status is not None and status not in {s.value for s in DeployStatus}:
            problems.append({"field": "status", "problem": "one of " + ", ".join(s.value for s in DeployStatus)})
        limit = _number(query.get("limit", "20"), 1, 100, "limit", problems)
        before = _number(query["before"], 1, 10 ** MAX_ID_DIGITS - 1, "before", problems) if "before" in query else None
        if problems:
            raise ApiProblem(422, "invalid query: " + "; ".join(f"{p['field']}: {p['problem']}" for p in problems),
                             problems)
        ids = store.reads.matching(service=query.get("service"), environment=query.get("environment"),
                                   status=status, before=before, limit=limit)
        deploys = [deploy_json(store.deploys.get(deploy_id)) for deploy_id in ids]
        return web.json_response({"deploys": deploys, "next_before": ids[-1] if len(ids) == limit else None})

    # -- break-glass ---------------------------------------------------------------------

    def control(action: str) -> Handler:
        async def act(request: web.Request, token: ApiToken) -> web.Response:
            deploy = deploy_of(request)
            if not token.may_control(deploy.environment):
                raise refuse_scope(token, f"control:{deploy.environment}", deploy.id)
            body = await body_of(request, RollbackRequest if action == "rollback" else ControlRequest)
            with deploy_context(deploy.id):
                store.audit.record(deploy.id, token.actor, "api_control", {"action": action, "reason": body.reason},
                                   token.actor)
                if action == "rollback":
                    return await roll_back(deploy, body, token)
                return await steer(deploy, action, token)
        return act

    async def roll_back(deploy: Deploy, body: RollbackRequest, token: ApiToken) -> web.Response:
        rollbacks = copy.copy(slipway.rollbacks)  # the same rollbacks, but the token holds the role
        rollbacks.directory = TokenAuthority(slipway.rollbacks.directory, token.actor)
        target = parse_version(body.to).normalised if body.to else rollbacks.plans.plan(deploy.id).target.version
        rollback = await rollbacks.record(deploy.id, target, token.actor, source=token.actor)
        slipway.tasks.spawn(announce_rollback(rollback), name=f"announce-rollback-{rollback.id}")
        return web.json_response(deploy_json(rollback), status=201,
                                 headers={"Location": f"{PREFIX}/deploys/{rollback.id}"})

    async def announce_rollback(rollback: Deploy) -> None:
        """Its message, and its start whether or not Slack takes it (it may well be down)."""
        with deploy_context(rollback.id):
            try:
                await slipway.messages.announce(rollback)
            except SlipwayError as failure:  # the channel refused it: cancelled, and the record says why
                log.warning("rollback %s made over the API was not announced: %s", rollback.id, failure.message)
                return
            slipway.events.publish(DeployPosted(rollback.id))

    async def steer(deploy: Deploy, action: str, token: ApiToken) -> web.Response:
        if slipway.steering is None:
            raise PolicyViolation("Staged rollouts are not set up in this Slipway.")
        steering = copy.copy(slipway.steering)  # the same steering, but the token holds the role
        steering.people = TokenAuthority(slipway.steering.people, token.actor)
        act = {"promote": steering.promote, "pause": steering.pause, "resume": steering.resume,
               "abort": steering.abort}[action]
        said = await act(deploy.id, token.actor, source=token.actor)
        return web.json_response({"ok": True, "message": said, "deploy": deploy_json(store.deploys.get(deploy.id))})

    # -- the description, and every other path -------------------------------------------

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document())

    routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.Response]]]] = [
        ("GET", f"{PREFIX}/openapi.json", openapi),
        ("POST", f"{PREFIX}/deploys", door(request_deploy)),
        ("GET", f"{PREFIX}/deploys", door(list_deploys)),
        ("GET", f"{PREFIX}/deploys/{{deploy_id}}", door(read_deploy)),
        *(("POST", f"{PREFIX}/deploys/{{deploy_id}}/{action}", door(control(action))) for action in CONTROLS),
    ]
    patterns = [(re.compile("^" + re.sub(r"\{[a-z_]+\}", "[^/]+", path) + "$"), method)
                for method, path, _ in routes]

    async def elsewhere(request: web.Request) -> web.Response:
        """Any other method or path under /api/v1: a JSON 405 or 404, never aiohttp's text page."""
        allowed = sorted({method for pattern, method in patterns if pattern.match(request.path)})
        if allowed:
            return refusal(405, f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}",
                           headers={"Allow": ", ".join(allowed)})
        return refusal(404, f"no such API route: {request.path} (see {PREFIX}/openapi.json)")

    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    app.router.add_route("*", PREFIX + "{tail:(/.*)?}", elsewhere)


def _number(text: str, low: int, high: int, name: str, problems: list[dict[str, str]]) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_ID_DIGITS or not low <= int(text) <= high:
        problems.append({"field": name, "problem": f"a whole number from {low} to {high}"})
        return low
    return int(text)
