"""``GET /healthz``: does this process own the database, can it read it,
and can it reach Slack?

The database is asked a real question (the schema version) through the
store's own connection, waiting at most a moment if it is locked. Slack is
asked ``auth.test`` through the app's client (token, URL, session), with a
short timeout and no retries, and the answer is kept for ``ttl`` seconds:
a load balancer probing every second must not spend Slack's rate limit
(a failure is kept ``failure_ttl`` seconds only, so the answer turns healthy
soon after Slack is back). A standby (``bot/runtime/lease.py``) is never
healthy: it serves nothing until it owns the database.

:func:`slack_at_start` is the same question asked once as ``slipway serve``
starts, where a refused token stops it.
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

# auth.test's answers that mean the token itself is no good (not a passing failure)
REFUSED_TOKEN = frozenset({"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive"})


@dataclass(frozen=True)
class SlackCheck:
    status: str  # "ok" or "error: …"
    checked_at: float  # monotonic seconds
    refused_token: str | None = None  # Slack's error when it refused the token itself (REFUSED_TOKEN)
    identity: str | None = None  # who the token is, when Slack said: "slipway in Slipway Test"


async def ask_slack(client: AsyncWebClient, timeout: float,
                    monotonic: Callable[[], float] = time.monotonic) -> SlackCheck:
    """Call ``auth.test`` once, within ``timeout`` seconds; what it came to
    (never raises: unreachable, refused and rate limited are all answers)."""
    refused = identity = None
    try:
        answer = await asyncio.wait_for(client.auth_test(), timeout)
        status = OK
        identity = f"{answer.get('user')} in {answer.get('team')}"
    except SlackApiError as exc:
        status = f"error: {_slack_error(exc.response)}"
        data = getattr(exc.response, "data", None)
        code = data.get("error") if isinstance(data, dict) else None
        refused = code if code in REFUSED_TOKEN else None
    except TimeoutError:
        status = f"error: no answer from Slack within {format_duration(timeout)}"
    except Exception as exc:  # noqa: BLE001 — unreachable, refused, TLS …: all are "Slack is not reachable"
        status = f"error: {type(exc).__name__}: {exc}".rstrip(": ")
    return SlackCheck(status, monotonic(), refused, identity)


async def slack_at_start(token: str, api_url: str | None, timeout: float = 5.0) -> SlackCheck:
    """``slipway serve``'s first question to Slack: is the bot token good?
    Asked by a client of its own, without retries (a start-up waits for no
    Retry-After), before anything touches the database."""
    client = AsyncWebClient(token=token, timeout=int(max(1, timeout)), retry_handlers=[],
                            **({"base_url": api_url} if api_url else {}))
    return await ask_slack(client, timeout)


class Health:
    def __init__(self, store: Store, client: AsyncWebClient, *, ttl: float = 30.0, timeout: float = 3.0,
                 failure_ttl: float = 5.0, monotonic: Callable[[], float] = time.monotonic,
                 standing: Callable[[], dict[str, Any]] = lambda: {"role": "owner"}) -> None:
        self.store = store
        self.client = copy.copy(client)  # same token, URL and session; its own retry policy and timeout
        self.client.retry_handlers = []  # a probe reports a 429, it does not sleep through Retry-After
        self.client.timeout = int(max(1, timeout))
        self.ttl = ttl
        self.failure_ttl = min(ttl, failure_ttl)
        self.timeout = timeout
        # this process's role and what goes with it ({"role": "owner"} unless a lease says otherwise)
        self.standing = standing
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
        from the cache when the last answer is younger than ``ttl`` (than
        ``failure_ttl`` when it was an error)."""
        cached = self._slack
        if cached is not None:
            fresh_for = self.ttl if cached.status == OK else self.failure_ttl
            if self.monotonic() - cached.checked_at < fresh_for:
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
        return await ask_slack(self.client, self.timeout, self.monotonic)

    async def report(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status (200 when this process owns the database and
        every part is ok, else 503) and the body: ``status`` (``ok``,
        ``unhealthy``, or ``standby`` for a process waiting to own the
        database), ``role``, then each part."""
        standing = self.standing()
        parts = {"database": self.database(), "slack": await self.slack()}
        healthy = standing["role"] == "owner" and all(part == OK for part in parts.values())
        status = "ok" if healthy else standing["role"] if standing["role"] == "standby" else "unhealthy"
        return (200 if healthy else 503), {"status": status, **standing, **parts}


def _slack_error(response: Any) -> str:
    status = getattr(response, "status_code", None)
    data = getattr(response, "data", None)
    code = data.get("error") if isinstance(data, dict) else None
    if status == 429:
        return f"rate limited by Slack ({code or 'HTTP 429'})"
    return code or f"HTTP {status}"
