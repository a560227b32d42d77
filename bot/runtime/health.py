"""``GET /healthz``: can Slipway read its database and reach Slack?

The database is asked a real question (the schema version) through the
store's own connection, waiting at most a moment if it is locked. Slack is
asked ``auth.test`` through the app's client (token, URL, session), with a
short timeout and no retries, and the answer is kept for ``ttl`` seconds:
a load balancer probing every second must not spend Slack's rate limit.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.durations import format_duration
from bot.runtime.metrics import impatient
from store import Store

OK = "ok"


@dataclass(frozen=True)
class SlackCheck:
    status: str  # "ok" or "error: …"
    checked_at: float  # monotonic seconds


class Health:
    def __init__(self, store: Store, client: AsyncWebClient, *, ttl: float = 30.0, timeout: float = 3.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.client = copy.copy(client)  # same token, URL and session; its own retry policy and timeout
        self.client.retry_handlers = []  # a probe reports a 429, it does not sleep through Retry-After
        self.client.timeout = int(max(1, timeout))
        self.ttl = ttl
        self.timeout = timeout
        self.monotonic = monotonic
        self._slack: SlackCheck | None = None
        self._checking: asyncio.Future[SlackCheck] | None = None

    def database(self) -> str:
        """``ok``, or ``error: …`` saying why the database cannot be read."""
        try:
            with impatient(self.store):
                version = self.store.database.schema_version()
        except Exception as exc:  # noqa: BLE001 — reported, not raised: this endpoint says what is wrong
            return f"error: {type(exc).__name__}: {exc}"
        return OK if version is not None else "error: the database has no schema"

    async def slack(self) -> str:
        """``ok``, or ``error: …`` with what Slack (or the network) said;
        from the cache when the last answer is younger than ``ttl``."""
        cached = self._slack
        if cached is not None and self.monotonic() - cached.checked_at < self.ttl:
            return cached.status
        if self._checking is None:  # probes arriving together share one call to Slack
            self._checking = asyncio.ensure_future(self._ask_slack())
            self._checking.add_done_callback(self._checked)
        return (await asyncio.shield(self._checking)).status

    def _checked(self, done: asyncio.Future[SlackCheck]) -> None:
        self._checking = None
        if not done.cancelled() and done.exception() is None:
            self._slack = done.result()

    async def _ask_slack(self) -> SlackCheck:
        try:
            await asyncio.wait_for(self.client.auth_test(), self.timeout)
            status = OK
        except SlackApiError as exc:
            status = f"error: {_slack_error(exc.response)}"
        except TimeoutError:
            status = f"error: no answer from Slack within {format_duration(self.timeout)}"
        except Exception as exc:  # noqa: BLE001 — unreachable, refused, TLS …: all are "Slack is not reachable"
            status = f"error: {type(exc).__name__}: {exc}".rstrip(": ")
        return SlackCheck(status, self.monotonic())

    async def report(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status (200 when every part is ok, else 503) and the body."""
        parts = {"database": self.database(), "slack": await self.slack()}
        healthy = all(part == OK for part in parts.values())
        return (200 if healthy else 503), {"status": "ok" if healthy else "unhealthy", **parts}


def _slack_error(response: Any) -> str:
    status = getattr(response, "status_code", None)
    data = getattr(response, "data", None)
    code = data.get("error") if isinstance(data, dict) else None
    if status == 429:
        return f"rate limited by Slack ({code or 'HTTP 429'})"
    return code or f"HTTP {status}"
