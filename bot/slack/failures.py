"""What went wrong with a Slack call, whatever shape it took.

A Slack Web API call fails in more shapes than ``SlackApiError`` with a JSON
body: a proxy's 502 page or a text/plain 503 (slack_sdk still raises
``SlackApiError``, but its ``response.data`` is a string, or the response is
aiohttp's own), a connection refused or reset (``aiohttp.ClientError``), a
timeout. Every caller that talks to Slack asks :func:`failure_of` instead of
reaching into ``exc.response`` itself, so no shape can surprise one of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError

@dataclass(frozen=True)
class SlackFailure:
    """One failed call: Slack's error code (None when the answer was not
    Slack's JSON), the HTTP status, how long Slack asked us to wait, and
    whether trying again may help."""

    code: str | None
    status: int | None
    retry_after: float | None
    transient: bool
    detail: str

    @property
    def rate_limited(self) -> bool:
        return self.status == 429 or self.code == "ratelimited"

    def __str__(self) -> str:
        return self.detail


def failure_of(error: BaseException) -> SlackFailure | None:
    """How ``error`` failed a Slack call; None when it is not a failure of
    the call at all (a bug of ours, which callers should let surface)."""
    if isinstance(error, SlackApiError):
        return _refusal(error)
    if isinstance(error, (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, ConnectionError)):
        detail = f"{type(error).__name__}: {error}".rstrip(": ")
        return SlackFailure(None, None, None, True, detail)
    if isinstance(error, SlackClientError):  # e.g. slack_sdk could not read the answer
        return SlackFailure(None, None, None, True, f"{type(error).__name__}: {error}".rstrip(": "))
    return None


def _refusal(error: SlackApiError) -> SlackFailure:
    response = error.response
    status = getattr(response, "status_code", None) or getattr(response, "status", None)
    data = getattr(response, "data", None)
    code = data.get("error") if isinstance(data, dict) else None
    retry_after = None
    for name, value in (getattr(response, "headers", None) or {}).items():
        if name.lower() == "retry-after":
            value = value[0] if isinstance(value, list) else value
            try:
                retry_after = max(0.0, float(value))
            except (TypeError, ValueError):
                pass
    transient = code is None or code == "ratelimited" or status == 429 or (status or 0) >= 500 or code in (
        "internal_error", "fatal_error", "service_unavailable", "request_timeout")
    detail = code or (f"HTTP {status}" + (f": {str(data)[:120]}" if data else "") if status else str(error)[:200])
    return SlackFailure(code, status, retry_after, transient, detail)
