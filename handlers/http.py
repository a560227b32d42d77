"""Small pieces the HTTP doors share, and the Slack door's own check: a
request Slack did not sign is refused before anything reads its body."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping

from aiohttp import web
from slack_bolt.request.async_request import AsyncBoltRequest

log = logging.getLogger(__name__)

MAX_SLACK_BYTES = 1024 * 1024  # the server's own cap; Slack's requests are far smaller
SLACK_TIMESTAMP = "X-Slack-Request-Timestamp"
SLACK_SIGNATURE = "X-Slack-Signature"
SLACK_TOLERANCE_SECONDS = 5 * 60
MAX_TIMESTAMP_DIGITS = 12  # unix seconds until the year 33658; a longer "timestamp" is junk


def problem(status: int, reason: str) -> web.Response:
    """A refusal that says why, as JSON."""
    return web.json_response({"ok": False, "error": reason}, status=status)


async def read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None when it is larger than ``limit`` (read to the
    end: ``content.read(n)`` would return only what has arrived so far)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def unix_timestamp(text: str) -> int | None:
    """``text`` as unix seconds, or None unless it is 1 to 12 ASCII digits:
    ``str.isdigit`` also accepts ``²`` (which ``int`` refuses), and ``int``
    refuses 5,000 digits; both must be an unauthenticated request, not a 500."""
    if not text or len(text) > MAX_TIMESTAMP_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def slack_signature_problem(secret: str, headers: Mapping[str, str], body: bytes,
                            now: float | None = None) -> str | None:
    """None when Slack signed ``body`` with ``secret`` within five minutes of
    ``now``; else why not (for the 401 and the log). Slack's scheme
    (``v0=`` HMAC-SHA256 of ``v0:{timestamp}:{body}``), checked on the raw
    bytes, so a body that is not UTF-8 or a header that is not ASCII is a
    refusal, never an exception."""
    timestamp, given = headers.get(SLACK_TIMESTAMP, ""), headers.get(SLACK_SIGNATURE, "")
    if not timestamp or not given:
        return f"missing {SLACK_TIMESTAMP} or {SLACK_SIGNATURE}"
    moment = unix_timestamp(timestamp)
    if moment is None:
        return f"{SLACK_TIMESTAMP} is not a unix timestamp"
    if abs((time.time() if now is None else now) - moment) > SLACK_TOLERANCE_SECONDS:
        return "timestamp too far from now (replayed or clock skew)"
    digest = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    if not given.isascii() or not hmac.compare_digest(f"v0={digest}".encode(), given.encode()):
        return "signature does not match"
    return None


async def signed_slack_request(request: web.Request, signing_secret: str) -> AsyncBoltRequest | web.Response:
    """The request as bolt takes it, once its signature is checked; else the
    401 (or 400, 413) to answer with. Nothing reads an unsigned body: bolt
    would parse it first (``payload=[1,2,3]`` is a 500 there) and hand it to
    the error handler, which would answer the ``user_id`` it names."""
    body = await read_bounded(request, MAX_SLACK_BYTES)
    if body is None:
        return problem(413, f"request larger than {MAX_SLACK_BYTES} bytes")
    # the secret bolt was built with (settings.signing_secret); bolt checks the signature again, harmlessly
    refused = slack_signature_problem(signing_secret, request.headers, body)
    if refused:
        log.warning("refused a Slack request from %s: %s", request.remote, refused)
        return problem(401, refused)
    try:
        return AsyncBoltRequest(body=body.decode("utf-8"), query=request.query_string,
                                headers=request.headers)  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as malformed:
        # signed, yet bolt cannot read it: a `payload=` that is not JSON, or
        # JSON that is not an object (bolt parses it as it builds the request)
        return problem(400, f"malformed request body ({type(malformed).__name__})")
