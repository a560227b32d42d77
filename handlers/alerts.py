"""``POST /webhooks/alertmanager``, ``/webhooks/grafana``, ``/webhooks/generic``:
monitors' alerts in.

Each door authenticates (a bearer token, checked before the body is read;
for Grafana, an HMAC signature of the body, read up to the 1 MiB cap),
parses, and hands the alerts to the relay (``AlertRelay.ingest``), which
records them with the Slack messages they call for in one
transaction; the door then answers at once: the Slack work is the
outbox's, so a monitor never times out and retries needlessly. A bad request
gets a 4xx that says why, and nothing is half-stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from bot.alerts.auth import bearer_ok, grafana_signature_problem
from bot.alerts.model import MalformedPayload
from bot.alerts.parse import parse_alertmanager, parse_generic, parse_grafana
from handlers.http import problem, read_bounded

if TYPE_CHECKING:
    from bot.runtime.composition import Slipway

log = logging.getLogger(__name__)
MAX_ALERT_BYTES = 1024 * 1024


def register(app: web.Application, slipway: "Slipway") -> None:
    settings = slipway.config.alerts
    if settings is None:
        return
    environ = slipway.environ

    # An authenticator takes the request and its body; a bearer token's needs
    # no body (None), and is checked before a byte of it is read.
    def bearer(variable: str) -> Callable[[web.Request, bytes | None], str | None]:
        def check(request: web.Request, body: bytes | None) -> str | None:
            token = environ.get(variable)
            if not token:
                return f"{variable} is not set on the Slipway server"
            return None if bearer_ok(request.headers, token) else "missing or wrong bearer token"
        return check

    def grafana(request: web.Request, body: bytes | None) -> str | None:
        secret = environ.get(settings.grafana_secret_env)
        if not secret:
            return f"{settings.grafana_secret_env} is not set on the Slipway server"
        return grafana_signature_problem(request.headers, body, secret, header=settings.grafana_signature_header,
                                         timestamp_header=settings.grafana_timestamp_header)

    metrics, relay = slipway.metrics, slipway.alert_relay
    def door(source: str, authenticate, parse, *, signs_body: bool = False) -> Callable[[web.Request], object]:
        """``signs_body``: the credentials are a signature of the body, read
        first (up to the cap); otherwise they are checked before it is read."""

        def refusal(request: web.Request, body: bytes | None) -> web.Response | None:
            try:
                refused = authenticate(request, body)
            except (ValueError, UnicodeError) as odd:  # e.g. a header that is not text: unauthenticated
                refused = f"unreadable credentials ({type(odd).__name__})"
            if not refused:
                return None
            log.warning("refused %s alerts from %s: %s", source, request.remote, refused)
            return problem(401, refused)

        async def receive(request: web.Request) -> web.Response:
            if not signs_body and (refused := refusal(request, None)):
                return refused
            body = await read_bounded(request, MAX_ALERT_BYTES)
            if body is None:
                return problem(400, f"payload larger than {MAX_ALERT_BYTES} bytes")
            if signs_body and (refused := refusal(request, body)):
                return refused
            try:
                group_key, alerts = await relay.parse(parse, body)  # off the event loop: a big body is slow
            except MalformedPayload as malformed:
                return problem(400, f"malformed {source} payload: {malformed}")
            receipt = await relay.ingest(source, group_key, alerts)
            return web.json_response({"ok": True, "received": receipt.received, "duplicates": receipt.duplicates})
        return metrics.count_webhook(source, receive)

    app.router.add_post("/webhooks/alertmanager",
                        door("alertmanager", bearer(settings.alertmanager_token_env), parse_alertmanager))
    app.router.add_post("/webhooks/grafana", door("grafana", grafana, parse_grafana, signs_body=True))
    app.router.add_post("/webhooks/generic", door("generic", bearer(settings.generic_token_env), parse_generic))
