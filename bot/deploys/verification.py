"""Post-deploy verification: is the new version really up?

After the engine reports success, Slipway asks the service itself: HTTP
health checks, retried until they pass or their deadline passes, then an
optional smoke command. The results are plain data, stored with the deploy
and rendered elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bot.config import HealthCheck, SmokeTest, Verification
from bot.durations import format_duration
from bot.executors.base import Job
from bot.executors.process import run_process

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
MAX_SHOWN = 120  # characters of a served value or output line quoted in a detail


@dataclass(frozen=True)
class CheckResult:
    """One check: what it was, whether it passed and what it saw."""

    name: str  # "GET https://api.example.com/health", "smoke: ./smoke.sh --quick"
    passed: bool
    detail: str  # "200, version=2.7.0 after 3 attempts (1.4 s)"
    duration: float  # seconds
    skipped: bool = False  # not run (and so not passed) because an earlier check failed


@dataclass(frozen=True)
class VerificationResult:
    """Every check of one verification, health checks first, in config order."""

    checks: tuple[CheckResult, ...] = ()

    @property
    def passed(self) -> bool:
        """All checks passed; a verification with no checks passes."""
        return all(check.passed for check in self.checks)

    def as_records(self) -> list[dict[str, Any]]:
        """JSON-serialisable records, to store with the deploy."""
        return [{**asdict(check), "duration": round(check.duration, 3)} for check in self.checks]


async def verify(
    verification: Verification | None,
    job: Job,
    *,
    session: aiohttp.ClientSession | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> VerificationResult:
    """Run the health checks, then the smoke test, for the deploy ``job``.

    ``{version}``, ``{service}`` and ``{environment}`` in a health check's
    URL (URL-encoded) and in its ``expect_json`` values are replaced with the
    job's. Decisions an SRE would ask about:

    * Health checks run concurrently, each against its own deadline: they
      are independent looks at the same deploy, and run one after the other
      their deadlines would add up before anyone hears a verdict.
    * The smoke test runs only when every health check passed. Against an
      unhealthy service it would only restate the failure, and its timeout
      (minutes) would delay the verdict and the rollback. It is still
      reported, ``skipped`` and not passed, so the record shows it was
      configured and did not run.
    * A check that cannot even be attempted (connection refused, missing
      smoke program) is a failed check saying why, not an exception.

    ``sleep`` and ``clock`` pace the retries; tests may replace them.

    Raises:
        asyncio.CancelledError: the caller was cancelled; a running smoke
            command's process group is killed first.
    """
    if verification is None:
        return VerificationResult()
    health = await _health_checks(verification.health_checks, job, session, sleep, clock)
    checks = list(health)
    if verification.smoke is not None:
        checks.append(await _smoke(verification.smoke, job, skip=not all(c.passed for c in health)))
    return VerificationResult(tuple(checks))


async def _health_checks(checks: list[HealthCheck], job: Job, session: aiohttp.ClientSession | None,
                         sleep: Sleep, clock: Clock) -> list[CheckResult]:
    if not checks:
        return []
    async with _client(session) as http, asyncio.TaskGroup() as group:
        tasks = [group.create_task(_check_health(check, job, http, sleep, clock)) for check in checks]
    return [task.result() for task in tasks]


@asynccontextmanager
async def _client(session: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    """The caller's session, or one of our own for the duration."""
    if session is not None:
        yield session
        return
    async with aiohttp.ClientSession() as own:
        yield own


async def _check_health(check: HealthCheck, job: Job, session: aiohttp.ClientSession,
                        sleep: Sleep, clock: Clock) -> CheckResult:
    """GET the URL every ``interval`` until it passes or ``deadline`` has passed.

    The last attempt starts at the deadline at the latest, so a check takes
    at most ``deadline`` plus one ``request_timeout``.
    """
    url = _fill(check.url, job, encode=True)
    expected = {key: _fill(value, job) for key, value in check.expect_json.items()}
    started = clock()
    attempts = 0
    while True:
        attempt_started = clock()
        attempts += 1
        passed, seen = await _attempt(session, url, check, expected)
        elapsed = clock() - started
        if passed:
            return CheckResult(f"GET {url}", True, f"{seen} after {_count(attempts)} ({format_duration(elapsed)})", elapsed)
        remaining = check.deadline - elapsed
        if remaining <= 0:
            detail = f"{seen} — gave up after {format_duration(check.deadline)}, {_count(attempts)}"
            return CheckResult(f"GET {url}", False, detail, elapsed)
        await sleep(min(max(attempt_started + check.interval - clock(), 0.0), remaining))


def _fill(template: str, job: Job, *, encode: bool = False) -> str:
    # str.replace, not str.format: a URL may hold other braces, and a
    # format spec in config must not reach into the job's attributes.
    values = {"version": job.version, "service": job.service, "environment": job.environment}
    for key, value in values.items():
        template = template.replace("{" + key + "}", quote(value, safe="") if encode else value)
    return template


async def _attempt(session: aiohttp.ClientSession, url: str, check: HealthCheck,
                   expected: dict[str, str]) -> tuple[bool, str]:
    """One GET: whether it passed, and what it saw in a few words."""
    try:
        # raise_for_status=False: a 503 is an answer to judge, whatever the caller's session says
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=check.request_timeout),
                               raise_for_status=False) as response:
            body = await response.read()
    except TimeoutError:  # aiohttp's own timeouts derive from it too
        return False, f"timed out after {format_duration(check.request_timeout)}"
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            return False, "connection refused"
        return False, f"cannot connect: {exc}"
    except aiohttp.ClientError as exc:
        return False, f"request failed: {exc or type(exc).__name__}"
    return _judge(response.status, response.reason, body, check.expect_status, expected)


def _judge(status: int, reason: str | None, body: bytes, expect_status: int,
           expected: dict[str, str]) -> tuple[bool, str]:
    if status != expect_status:
        return False, f"{status} {reason or ''}".rstrip() + f" (expected {expect_status})"
    if not expected:
        return True, str(status)
    try:
        document = json.loads(body)
    except ValueError:  # not UTF-8, or not JSON
        return False, f"{status} but the body is not JSON"
    if not isinstance(document, dict):
        return False, f"{status} but the body is not a JSON object"
    wrong = [problem for key, value in expected.items() if (problem := _mismatch(document, key, value))]
    if wrong:
        return False, "; ".join(wrong)
    return True, f"{status}, " + ", ".join(f"{key}={value}" for key, value in expected.items())


def _mismatch(document: dict[str, Any], key: str, expected: str) -> str | None:
    """What is wrong with one expected field, or None when it is right."""
    if key not in document:
        return f"no {key} in the body (expected {expected})"
    value = document[key]
    # JSON scalars compare in their JSON spelling: `true` is "true", `3` is "3".
    actual = value if isinstance(value, str) else json.dumps(value)
    if actual != expected:
        return f"{key} is {_shorten(actual)}, expected {expected}"
    return None


async def _smoke(smoke: SmokeTest, job: Job, *, skip: bool) -> CheckResult:
    """Run the smoke command with the job's environment; exit 0 passes."""
    name = f"smoke: {shlex.join(smoke.command)}"
    if skip:
        return CheckResult(name, False, "skipped: health checks failed", 0.0, skipped=True)
    result = await run_process(smoke.command, env=job.environ, timeout=smoke.timeout, cwd=smoke.working_dir,
                               withhold=job.withhold)
    detail = result.summary + (f" — {_shorten(result.last_line)}" if result.last_line else "")
    return CheckResult(name, result.succeeded, detail, result.duration)


def _count(attempts: int) -> str:
    return f"{attempts} attempt" + ("" if attempts == 1 else "s")


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 1] + "…"
