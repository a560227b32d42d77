"""Small pieces the HTTP (non-Slack) doors share."""

from __future__ import annotations

from aiohttp import web


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
