"""The webhook engine: a local CI stand-in receives the signed deploy
request; reports come back on Slipway's real callback endpoint."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time

import aiohttp
import pytest
from aiohttp import web

from bot.executors import signing
from bot.sandbox.fake_server import FakeServer
from tests.conftest import Harness

SECRET = "hook-secret"


class CiEngine(FakeServer):
    """A CI system that accepts deploy requests (and checks their signature)."""

    url_suffix = "/deploy"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.refused = 0
        self.answer_status = 202
        self.arrived = asyncio.Event()
        self.on_arrival = lambda request_body: None  # a test's look at Slipway when a request lands
        self.held: asyncio.Event | None = None  # set: requests wait for it before they are answered

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/deploy", self._deploy)
        return app

    async def _deploy(self, request: web.Request) -> web.Response:
        body = await request.read()
        if signing.verify(SECRET, request.headers, body) is not None:
            self.refused += 1
            return web.json_response({"error": "bad signature"}, status=401)
        self.requests.append(json.loads(body))
        self.headers.append(dict(request.headers))
        self.on_arrival(self.requests[-1])
        await self.changed(self.arrived.set)
        if self.held is not None:
            await self.held.wait()
        return web.json_response({"accepted": True}, status=self.answer_status)


@pytest.fixture
async def engine() -> CiEngine:
    running = await CiEngine().start()
    yield running
    await running.stop()


@pytest.fixture
def environ() -> dict[str, str]:
    return {"DEPLOY_HOOK_SECRET": SECRET}


@pytest.fixture
def config_text(engine: CiEngine, slipway_url: str) -> str:
    return textwrap.dedent(f"""\
        channel: C0DEPLOYS
        public_url: {slipway_url}
        environments:
          - name: staging
        services:
          api:
            deploy:
              webhook: {{url: "{engine.url}", secret_env: DEPLOY_HOOK_SECRET}}
              timeout: 20s
          quick:
            deploy:
              webhook: {{url: "{engine.url}", secret_env: DEPLOY_HOOK_SECRET}}
              timeout: 0.3s
          nosecret:
            deploy:
              webhook: {{url: "{engine.url}", secret_env: UNSET_SECRET}}
        """)


async def report(url: str, payload: dict, secret: str = SECRET, headers: dict | None = None) -> tuple[int, dict]:
    """POST a report as the engine would: naming its deploy and its stage, if
    any (taken from the callback URL unless the payload names them) and signed."""
    path, _, query = url.partition("?stage=")
    last = path.rsplit("/", 1)[-1]
    payload = {"deploy_id": int(last) if last.isdigit() else None, **({"stage": query} if query else {}), **payload}
    body = json.dumps(payload).encode()
    sent = headers if headers is not None else {"Content-Type": "application/json",
                                                 **signing.signed_headers(secret, body)}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=sent) as response:
            return response.status, await response.json()


async def request_deploy(harness: Harness, engine: CiEngine, service: str = "api") -> tuple[int, str]:
    status, _ = await harness.slack.command(f"{service} 2.7.0", "U0DAVE")
    assert status == 200
    await asyncio.wait_for(engine.arrived.wait(), 10)
    deploy_request = engine.requests[-1]
    return deploy_request["deploy_id"], deploy_request["callback_url"]


async def test_the_signed_request_reaches_the_engine_and_its_report_finishes_the_deploy(
        harness: Harness, engine: CiEngine, slipway_url: str) -> None:
    deploy_id, callback = await request_deploy(harness, engine)
    assert engine.requests[-1] == {"deploy_id": deploy_id, "service": "api", "environment": "staging",
                                   "version": "2.7.0", "previous_version": None, "rollback_of": None,
                                   "callback_url": f"{slipway_url}/webhooks/deploys/{deploy_id}",
                                   "idempotency_key": f"slipway-deploy-{deploy_id}", "strategy": "direct"}
    assert engine.headers[-1]["Idempotency-Key"] == f"slipway-deploy-{deploy_id}"
    assert engine.refused == 0
    assert harness.deploy(deploy_id).status == "deploying"
    assert await report(callback, {"status": "running", "log_url": "https://ci.example/run/7"}) == (200, {"ok": True})
    assert harness.deploy(deploy_id).status == "deploying"
    assert await report(callback, {"status": "succeeded", "message": "rolled out 3/3 pods"}) == (200, {"ok": True})
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status == "succeeded"
    assert deploy.engine_summary == "engine reported succeeded: rolled out 3/3 pods"
    assert deploy.run_url == "https://ci.example/run/7"
    assert [r.status for r in harness.store.deploys.engine_reports(deploy_id)] == ["running", "succeeded"]


async def test_a_failed_report_fails_the_deploy(harness: Harness, engine: CiEngine) -> None:
    deploy_id, callback = await request_deploy(harness, engine)
    await report(callback, {"status": "failed", "message": "image pull backoff"})
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status == "failed" and deploy.status_reason == "deploy engine: engine reported failed: image pull backoff"


@pytest.mark.parametrize(("tamper", "status", "reason"), [
    (lambda body: {**signing.signed_headers("wrong-secret", body)}, 401, "signature does not match"),
    (lambda body: {}, 401, "missing X-Slipway-Timestamp or X-Slipway-Signature"),
    (lambda body: signing.signed_headers(SECRET, body, now=time.time() - 3600), 401, "timestamp too far from now"),
])
async def test_reports_with_bad_auth_are_refused_and_change_nothing(harness: Harness, engine: CiEngine,
                                                                    tamper, status: int, reason: str) -> None:
    deploy_id, callback = await request_deploy(harness, engine)
    body = json.dumps({"deploy_id": deploy_id, "status": "succeeded"}).encode()
    audit_before = len(harness.store.audit.events())
    answer = await report(callback, {"status": "succeeded"}, headers={"Content-Type": "application/json", **tamper(body)})
    assert answer[0] == status and reason in answer[1]["error"]
    assert harness.store.deploys.engine_reports(deploy_id) == []
    assert harness.deploy(deploy_id).status == "deploying"
    # logged, not audited: strangers cannot grow the append-only log
    assert len(harness.store.audit.events()) == audit_before
    await report(callback, {"status": "succeeded"})  # the real engine still gets through
    await harness.settle()
    assert harness.deploy(deploy_id).status == "succeeded"


@pytest.mark.parametrize(("payload", "reason"), [
    ({"status": "done"}, "status must be one of running, succeeded, failed"),
    ({"log_url": "x"}, "missing field status"),
    ({"status": "failed", "message": {"nested": True}}, "log_url and message must be strings"),
])
async def test_malformed_reports_get_400_with_the_reason(harness: Harness, engine: CiEngine, payload, reason) -> None:
    deploy_id, callback = await request_deploy(harness, engine)
    status, answer = await report(callback, payload)
    assert status == 400 and reason in answer["error"]
    assert harness.store.deploys.engine_reports(deploy_id) == []


async def test_reports_for_unknown_deploys_and_oversized_bodies(harness: Harness, engine: CiEngine,
                                                                slipway_url: str) -> None:
    deploy_id, callback = await request_deploy(harness, engine)
    assert (await report(f"{slipway_url}/webhooks/deploys/999", {"status": "succeeded"}))[0] == 404
    assert (await report(f"{slipway_url}/webhooks/deploys/abc", {"status": "succeeded"}))[0] == 404
    status, answer = await report(callback, {"status": "running", "message": "x" * 70_000})
    assert status == 413
    await report(callback, {"status": "succeeded"})
    await harness.settle()
    assert harness.deploy(deploy_id).status == "succeeded"


async def test_no_report_by_the_timeout_fails_the_deploy(harness: Harness, engine: CiEngine) -> None:
    deploy_id, _ = await request_deploy(harness, engine, service="quick")
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status == "failed" and "no report from the engine within" in deploy.status_reason


async def test_an_engine_that_refuses_the_request_fails_the_deploy(harness: Harness, engine: CiEngine) -> None:
    engine.answer_status = 503
    deploy_id, _ = await request_deploy(harness, engine)
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status == "failed" and "the engine refused the request: HTTP 503" in deploy.status_reason


async def test_a_missing_secret_fails_without_sending_anything(harness: Harness, engine: CiEngine) -> None:
    await harness.command("nosecret 1.0.0")
    deploy = harness.latest_deploy()
    assert deploy.status == "failed" and "UNSET_SECRET is not set" in deploy.status_reason
    assert engine.requests == []


async def test_a_deploy_waiting_on_its_engine_is_followed_up_after_a_restart(harness: Harness,
                                                                             engine: CiEngine) -> None:
    deploy_id, callback = await request_deploy(harness, engine)
    await harness.restart()  # the new Slipway resumes waiting for the engine
    await report(callback, {"status": "succeeded"})
    await harness.settle()
    assert harness.deploy(deploy_id).status == "succeeded"
    assert len(engine.requests) == 1  # followed up, not requested again


async def test_a_report_stored_just_before_a_crash_is_acted_on_after_the_restart(harness: Harness,
                                                                                engine: CiEngine) -> None:
    deploy_id, callback = await request_deploy(harness, engine)
    await harness.stop()
    # the callback was stored and answered 200, then Slipway died before acting on it
    from store import Store
    store = Store.open(harness.db_path)
    store.deploys.record_engine_report(deploy_id, "failed", None, "helm timed out")
    store.close()
    await harness.start()
    await harness.settle()
    deploy = harness.deploy(deploy_id)
    assert deploy.status == "failed" and "helm timed out" in deploy.status_reason
    assert len(engine.requests) == 1


async def test_a_signed_report_cannot_be_replayed_against_another_deploy(harness: Harness, engine: CiEngine,
                                                                        slipway_url: str) -> None:
    first_id, first_callback = await request_deploy(harness, engine)
    engine.arrived.clear()
    status, _ = await harness.slack.command("quick 1.0.0", "U0DAVE")
    await asyncio.wait_for(engine.arrived.wait(), 10)
    second_id = engine.requests[-1]["deploy_id"]
    # the body names deploy 1 (as captured), the URL names deploy 2
    status, answer = await report(f"{slipway_url}/webhooks/deploys/{second_id}",
                                  {"deploy_id": first_id, "status": "succeeded"})
    assert status == 400 and f"deploy_id must be {second_id}" in answer["error"]
    assert harness.store.deploys.engine_reports(second_id) == []


async def test_a_report_for_a_deploy_not_waiting_on_its_engine_is_refused(harness: Harness, engine: CiEngine) -> None:
    deploy_id, callback = await request_deploy(harness, engine)
    await report(callback, {"status": "succeeded"})
    await harness.settle()
    status, answer = await report(callback, {"status": "failed"})
    assert status == 409 and "is succeeded, not waiting for its engine" in answer["error"]
    assert [r.status for r in harness.store.deploys.engine_reports(deploy_id)] == ["succeeded"]


async def test_a_report_arriving_in_several_pieces_is_read_whole(harness: Harness, engine: CiEngine) -> None:
    deploy_id, callback = await request_deploy(harness, engine)
    body = json.dumps({"deploy_id": deploy_id, "status": "succeeded", "message": "m" * 1900}).encode()

    async def pieces():
        for start in range(0, len(body), 500):
            yield body[start:start + 500]
            await asyncio.sleep(0)  # let each piece go out on its own

    async with aiohttp.ClientSession() as session:
        async with session.post(callback, data=pieces(), headers={"Content-Type": "application/json",
                                                                  **signing.signed_headers(SECRET, body)}) as answer:
            assert answer.status == 200, await answer.text()
    await harness.settle()
    assert harness.deploy(deploy_id).status == "succeeded"


# -- the dispatch is an intent recorded before the POST (at least once, one key) ------


async def test_the_dispatch_is_recorded_before_the_request_leaves(harness: Harness, engine: CiEngine) -> None:
    seen_by_engine: list[dict] = []
    engine.on_arrival = lambda body: seen_by_engine.append(harness.deploy(body["deploy_id"]).reference)
    deploy_id, callback = await request_deploy(harness, engine)
    # when the request reached the engine, Slipway had already written down that it was sending it
    [seen] = seen_by_engine
    assert seen["dispatched"] == f"slipway-deploy-{deploy_id}" and "requested" not in seen
    await report(callback, {"status": "succeeded"})
    await harness.settle()
    # and that the engine took the request sent under that key
    assert harness.deploy(deploy_id).reference["requested"] == f"slipway-deploy-{deploy_id}"


async def test_a_restart_before_the_engine_answered_sends_the_request_again_under_the_same_key(
        harness: Harness, engine: CiEngine) -> None:
    engine.held = asyncio.Event()  # the engine takes the request but has not answered when Slipway stops
    deploy_id, callback = await request_deploy(harness, engine)
    assert "requested" not in harness.deploy(deploy_id).reference
    engine.arrived.clear()
    await harness.restart()
    await asyncio.wait_for(engine.wait_for(lambda e: len(e.requests) == 2), 10)
    engine.held.set()
    assert engine.requests[0] == engine.requests[1]  # the same request, the same idempotency key
    assert [h["Idempotency-Key"] for h in engine.headers] == [f"slipway-deploy-{deploy_id}"] * 2
    await report(callback, {"status": "succeeded"})
    await harness.settle()
    assert harness.deploy(deploy_id).status == "succeeded"
    assert len(engine.requests) == 2


async def test_a_restart_after_the_engine_reported_does_not_send_the_request_again(
        harness: Harness, engine: CiEngine) -> None:
    engine.held = asyncio.Event()
    deploy_id, callback = await request_deploy(harness, engine)
    # the engine has the request, as its report shows, though its answer to the POST never came back
    assert await report(callback, {"status": "running"}) == (200, {"ok": True})
    await harness.restart()
    engine.held.set()
    await report(callback, {"status": "succeeded"})
    await harness.settle()
    assert harness.deploy(deploy_id).status == "succeeded"
    assert len(engine.requests) == 1
