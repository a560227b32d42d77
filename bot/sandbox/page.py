"""The sandbox page's HTTP side: the page itself, the channel as JSON
(long-polled), and the doors through which the person at the page acts;
and what the demo service's config asks of the world: its health endpoint
(``/demo/health/<environment>``) and a Prometheus (``/api/v1/query``).

The page has no authentication, so it is made hard to reach from anywhere
but the browser on this machine: loopback only (checked at start), a
``Host`` that names loopback (against DNS rebinding), JSON bodies only and
no foreign ``Origin`` (a web page elsewhere cannot post here without a
CORS preflight, which is never granted), and a Content-Security-Policy that
runs no script but the page's own file.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.errors import SlipwayError
from bot.sandbox import view
from bot.sandbox.demo_deploy import canary_of, deployed_version

if TYPE_CHECKING:
    from bot.sandbox.server import Sandbox

STATIC = {"sandbox.js": "text/javascript", "sandbox.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def page_app(sandbox: "Sandbox") -> web.Application:
    files = {name: resources.files("bot.sandbox").joinpath("static", name).read_bytes()
             for name in ("index.html", *STATIC)}
    app = web.Application(middlewares=[_guard(sandbox)], client_max_size=MAX_BODY)

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=files["index.html"], content_type="text/html", charset="utf-8")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type=STATIC[name], charset="utf-8")

    async def channel_state(request: web.Request) -> web.Response:
        user = request.query.get("user", "")
        sandbox.person(user)
        try:
            since = int(request.query.get("since", "-1"))
        except ValueError:
            return _problem(400, "since must be a number: the revision the page last saw")
        if since == sandbox.fake.revision:  # nothing new yet: wait for a change instead of being polled again
            try:
                await sandbox.fake.wait_for(lambda fake: fake.revision != since or sandbox.closing,
                                            timeout=sandbox.long_poll)
            except asyncio.TimeoutError:
                pass
        return web.json_response(view.state(sandbox, user))

    async def command(request: web.Request) -> web.Response:
        body = await _json_object(request)
        reply = await sandbox.command(_string(body, "user"), _string(body, "text"))
        return web.json_response({"ok": True, "reply_seq": reply.seq if reply else None})

    async def click(request: web.Request) -> web.Response:
        body = await _json_object(request)
        reply = body.get("reply")
        selected = body.get("selected")
        if reply is not None and not isinstance(reply, int):
            return _problem(400, "reply must be the number of a reply shown to you")
        if selected is not None and not (isinstance(selected, list) and all(isinstance(v, str) for v in selected)):
            return _problem(400, "selected must be the list of ticked option values")
        status = await sandbox.click(_string(body, "user"), _string(body, "action_id"),
                                     body.get("block_id") if isinstance(body.get("block_id"), str) else None,
                                     channel=body.get("channel"), ts=body.get("ts"), reply=reply, selected=selected)
        if status != 200:
            return _problem(502, f"Slipway answered the click with HTTP {status}")
        return web.json_response({"ok": True})

    async def alert(request: web.Request) -> web.Response:
        await _json_object(request)
        return web.json_response(await sandbox.simulate_alert())

    async def fail_canary(request: web.Request) -> web.Response:
        await _json_object(request)
        return web.json_response(await sandbox.fail_canary())

    async def prometheus_query(request: web.Request) -> web.Response:
        """Prometheus' instant query (``GET /api/v1/query?query=…``), in its
        exact JSON shape, for the demo's error-rate check: a one-sample
        vector, or an empty one (no data) for a query about something else."""
        query = request.query.get("query", "")
        if not query.strip():
            return web.json_response({"status": "error", "errorType": "bad_data",
                                      "error": 'invalid parameter "query": query must not be empty'}, status=400)
        value = sandbox.error_rate(query)
        result = [] if value is None else [{"metric": {}, "value": [round(time.time(), 3), repr(float(value))]}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})

    async def healthz(request: web.Request) -> web.Response:
        if not sandbox.ready:
            return web.json_response({"status": "starting"}, status=503)
        healthy, slipway = await sandbox.slipway_health()
        return web.json_response({"status": "ok" if healthy else "unhealthy", "page": "ok", "slipway": slipway},
                                 status=200 if healthy else 503)

    async def demo_health(request: web.Request) -> web.Response:
        """The demo service's health check, reporting what demo_deploy.py last
        deployed: while a canary runs, its instances answer (verification
        checks the new version after a canary's first step)."""
        environment = request.match_info["environment"]
        if environment not in sandbox.config.environment_names:
            return web.json_response({"status": "unknown environment"}, status=404)
        version = deployed_version(sandbox.state_dir, environment)
        canary = canary_of(sandbox.state_dir, environment)
        if version is None and canary is None:
            return web.json_response({"status": "down", "environment": environment}, status=503)
        answer = {"status": "ok", "service": "demo", "environment": environment, "version": version}
        if canary is not None:
            answer.update(version=canary["version"], track="canary", weight=canary["weight"], stable=version)
        return web.json_response(answer)

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/state", channel_state)
    app.router.add_post("/api/command", command)
    app.router.add_post("/api/click", click)
    app.router.add_post("/api/alert", alert)
    app.router.add_post("/api/canary/fail", fail_canary)
    app.router.add_get("/api/v1/query", prometheus_query)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/demo/health/{environment}", demo_health)
    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guard(sandbox: "Sandbox") -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_loopback(request.url.host or ""):
            return _problem(403, f"this sandbox answers only to a loopback host name, not {request.host!r}")
        if request.method == "POST":
            if request.content_type != "application/json":
                return _problem(415, "send JSON (Content-Type: application/json)")
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"http://{request.host}":
                return _problem(403, f"requests from {origin} are not accepted")
        if request.path.startswith("/api/") and not sandbox.ready:
            return _problem(503, "the sandbox is still starting")
        try:
            response = await handler(request)
        except SlipwayError as refusal:
            response = _problem(getattr(refusal, "status", 400), refusal.message)
        response.headers.update(SECURITY_HEADERS)
        return response

    return guard


def _problem(status: int, reason: str) -> web.Response:
    return web.json_response({"ok": False, "error": reason}, status=status)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _BadBody("the body must be a JSON object")
    return body


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise _BadBody(f"{key} must be a string")
    return value


class _BadBody(SlipwayError, ValueError):
    """The page sent a body of the wrong shape."""
