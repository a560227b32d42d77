"""Post-deploy verification against a real HTTP service on 127.0.0.1 and
real smoke programs (tests/scripts/)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.config import HealthCheck, SmokeTest, Verification
from bot.deploys.verification import CheckResult, VerificationResult, verify
from bot.executors.base import Job
from tests.conftest import FakeTime

RECORD = str(Path(__file__).parent / "scripts" / "record.py")
FAST = dict(interval=0.05, deadline=0.3, request_timeout=1)  # retries on fake time (verify_at_once)


def job(version: str = "2.7.0") -> Job:
    return Job(deploy_id=42, service="api", environment="production", version=version,
               previous_version="2.6.3", rollback_of=None,
               started_at=datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc))


class FakeService:
    """The deployed service, as its health endpoint answers: scripted by each test."""

    def __init__(self) -> None:
        self.statuses: list[int] = []  # served one per request, before `status`
        self.status = 200
        self.body: Any = {"version": "2.7.0", "status": "ok"}
        self.raw_body: bytes | None = None
        self.slow = False  # hold every answer until the test ends
        self.wait_for: dict[str, str] = {}  # path → another path that must be requested first
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.probes: list[str | None] = []  # each request's X-Probe header
        self.arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.query)))
        self.probes.append(request.headers.get("X-Probe"))
        self.arrived[request.path].set()
        if request.path in self.wait_for:
            await self.arrived[self.wait_for[request.path]].wait()
        if self.slow:
            await self.release.wait()
        status = self.statuses.pop(0) if self.statuses else self.status
        if self.raw_body is not None:
            return web.Response(body=self.raw_body, status=status)
        return web.json_response(self.body, status=status)


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    fake = FakeService()
    app = web.Application()
    app.router.add_get("/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    fake.release.set()  # let held answers go, so the server can stop at once
    await runner.cleanup()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(url: str, **settings: Any) -> Verification:
    return Verification(health_checks=[HealthCheck(url=url, **{**FAST, **settings})])


async def verify_at_once(verification: Verification, deploy: Job, **kwargs: Any) -> VerificationResult:
    """``verify`` with its retries and deadlines on fake time: a check that
    never passes gives up at once (each attempt is still a real request)."""
    time = FakeTime()
    return await verify(verification, deploy, sleep=time.sleep, clock=time.monotonic, **kwargs)


async def only_check(verification: Verification, version: str = "2.7.0") -> CheckResult:
    result = await verify_at_once(verification, job(version))
    assert len(result.checks) == 1
    return result.checks[0]


async def test_a_healthy_service_with_the_new_version_passes(service: FakeService) -> None:
    check = await only_check(health(service.url + "/health", expect_json={"version": "{version}"}))

    assert check.passed and check.name == f"GET {service.url}/health"
    assert check.detail.startswith("200, version=2.7.0 after 1 attempt (")


async def test_a_service_that_becomes_healthy_passes_after_retries(service: FakeService) -> None:
    service.statuses = [503, 503]

    check = await only_check(health(service.url + "/health", deadline=5))

    assert check.passed and check.detail.startswith("200 after 3 attempts (")
    assert len(service.requests) == 3


async def test_an_unhealthy_service_fails_once_the_deadline_passes(service: FakeService) -> None:
    service.status = 503

    check = await only_check(health(service.url + "/health"))

    assert not check.passed
    assert check.detail.startswith("503 Service Unavailable (expected 200) — gave up after 0.3s, ")
    assert check.detail.endswith(f", {len(service.requests)} attempts") and len(service.requests) > 1


async def test_retries_come_every_interval_until_the_deadline(service: FakeService) -> None:
    service.status = 503
    fake = FakeTime()

    result = await verify(health(service.url + "/health", interval="2s", deadline="1m"), job(),
                          sleep=fake.sleep, clock=fake.monotonic)

    assert result.checks[0].detail == "503 Service Unavailable (expected 200) — gave up after 1m, 31 attempts"
    assert fake.sleeps == [2.0] * 30 and len(service.requests) == 31


async def test_the_old_version_still_answering_fails(service: FakeService) -> None:
    service.body = {"version": "2.6.3"}

    check = await only_check(health(service.url + "/health", expect_json={"version": "{version}"}))

    assert not check.passed and check.detail.startswith("version is 2.6.3, expected 2.7.0 — gave up after")


@pytest.mark.parametrize(("body", "expect_json", "problem"), [
    ({"build": 42, "ready": True}, {"build": "42", "ready": "true"}, None),
    ({"ready": True}, {"ready": "True"}, "ready is true, expected True"),
    ({"version": "2.7.0"}, {"commit": "abc123"}, "no commit in the body (expected abc123)"),
    (["2.7.0"], {"version": "2.7.0"}, "200 but the body is not a JSON object"),
    (b"OK", {"version": "2.7.0"}, "200 but the body is not JSON"),
])
async def test_expected_fields_compare_in_their_json_spelling(
        service: FakeService, body: Any, expect_json: dict[str, str], problem: str | None) -> None:
    if isinstance(body, bytes):
        service.raw_body = body
    else:
        service.body = body

    check = await only_check(health(service.url + "/health", expect_json=expect_json, deadline=0.1))

    assert check.passed is (problem is None)
    if problem is not None:
        assert check.detail.startswith(problem + " — gave up")


async def test_the_job_fills_the_url_and_the_expected_values(service: FakeService) -> None:
    service.body = {"version": "2.7.0+build.5", "env": "production"}
    url = service.url + "/{service}/{environment}/health?v={version}"

    check = await only_check(health(url, expect_json={"version": "{version}", "env": "{environment}"}),
                             version="2.7.0+build.5")

    assert check.passed, check.detail
    assert check.name == f"GET {service.url}/api/production/health?v=2.7.0%2Bbuild.5"
    assert service.requests[0] == ("/api/production/health", {"v": "2.7.0+build.5"})


async def test_a_slow_service_times_out_each_attempt(service: FakeService) -> None:
    service.slow = True

    # on real time: the request timeout is aiohttp's, and it outlasts the deadline
    result = await verify(health(service.url + "/health", request_timeout=0.2, deadline=0.1), job())

    check = result.checks[0]
    assert not check.passed and check.detail == "timed out after 0.2s — gave up after 0.1s, 1 attempt"


async def test_nothing_listening_is_connection_refused(closed_port: int) -> None:
    check = await only_check(health(f"http://127.0.0.1:{closed_port}/health", deadline=0.1))

    assert not check.passed and check.detail.startswith("connection refused — gave up after 0.1s")


async def test_health_checks_run_at_the_same_time_and_report_in_order(service: FakeService) -> None:
    # /a answers only once /b has been asked: one after the other, /a would time out.
    service.wait_for = {"/a": "/b"}
    checks = [HealthCheck(url=service.url + path, request_timeout=2, deadline=0.1) for path in ("/a", "/b")]

    result = await verify(Verification(health_checks=checks), job())

    assert result.passed, result.as_records()
    assert [c.name for c in result.checks] == [f"GET {service.url}/a", f"GET {service.url}/b"]


async def test_a_smoke_test_runs_with_the_deploy_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"

    result = await verify(Verification(smoke=SmokeTest(command=[RECORD, str(out), "0"])), job())

    (smoke,) = result.checks
    assert result.passed and smoke.name == f"smoke: {RECORD} {out} 0"
    assert re.fullmatch(r"exit 0 after \d+(\.\d)?s — done with exit 0", smoke.detail)
    assert json.loads(out.read_text())["env"]["SLIPWAY_VERSION"] == "2.7.0"


async def test_a_failing_smoke_test_fails_verification_and_shows_its_last_line(
        service: FakeService, tmp_path: Path) -> None:
    verification = Verification(health_checks=[HealthCheck(url=service.url + "/health", **FAST)],
                                smoke=SmokeTest(command=[RECORD, str(tmp_path / "smoke.json"), "3"]))

    result = await verify_at_once(verification, job())

    health_check, smoke = result.checks
    assert health_check.passed and not smoke.passed and not result.passed
    assert smoke.detail.startswith("exit 3 after ") and smoke.detail.endswith(" — done with exit 3")


async def test_a_smoke_test_that_cannot_start_fails() -> None:
    result = await verify(Verification(smoke=SmokeTest(command=["./no-such-smoke.sh"])), job())

    assert not result.passed
    assert result.checks[0].detail == "cannot run ./no-such-smoke.sh: No such file or directory"


async def test_the_smoke_test_is_skipped_when_a_health_check_failed(service: FakeService, tmp_path: Path) -> None:
    service.status = 503
    out = tmp_path / "smoke.json"
    verification = Verification(health_checks=[HealthCheck(url=service.url + "/health", **FAST)],
                                smoke=SmokeTest(command=[RECORD, str(out), "0"]))

    result = await verify_at_once(verification, job())

    smoke = result.checks[1]
    assert not result.passed and not smoke.passed and smoke.skipped
    assert smoke.detail == "skipped: health checks failed"
    assert not out.exists()


@pytest.mark.parametrize("verification", [None, Verification()])
async def test_nothing_to_verify_passes(verification: Verification | None) -> None:
    result = await verify(verification, job())

    assert result.passed and result.checks == () and result.as_records() == []


async def test_a_given_session_is_used_and_left_open(service: FakeService) -> None:
    service.status = 503
    async with aiohttp.ClientSession(headers={"X-Probe": "slipway"}, raise_for_status=True) as session:
        result = await verify_at_once(health(service.url + "/health", deadline=0.1), job(), session=session)
        assert not session.closed
    # the session's own raise_for_status does not turn the answer into an error
    assert result.checks[0].detail.startswith("503 Service Unavailable (expected 200)")
    assert service.probes and set(service.probes) == {"slipway"}


async def test_results_are_stored_as_json_records(service: FakeService) -> None:
    service.status = 500

    result = await verify_at_once(health(service.url + "/health", deadline=0.1), job())

    (record,) = json.loads(json.dumps(result.as_records()))
    assert set(record) == {"name", "passed", "detail", "duration", "skipped"}
    assert record["name"] == f"GET {service.url}/health" and record["passed"] is False
    assert record["detail"].startswith("500 Internal Server Error (expected 200)")


def test_a_verification_passes_only_when_every_check_passed() -> None:
    ok, bad = CheckResult("a", True, "fine", 0.1), CheckResult("b", False, "broken", 0.1)

    assert VerificationResult((ok, ok)).passed
    assert not VerificationResult((ok, bad)).passed
