"""``/api/v1``: a deploy requested by CI with a token made by ``slipway
token create``, approved in Slack and read back; the break-glass controls;
every refusal a JSON 4xx that names the problem and stores nothing; and the
OpenAPI description against the real routes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.slack.blocks import ACTION_APPROVE
from handlers.api import MAX_BODY_BYTES
from handlers.openapi import document
from store import DeployStatus
from store.tokens import hash_token
from tests.conftest import Harness, approvals, config_yaml, engine, said
from tests.test_cli import slipway
from tests.test_progressive import canary_config, stage_states, wait_for

PRODUCTION = {"requires": "staging", "approvals": {**approvals("U0ALICE", "U0BOB", "U0DAVE", required=2),
                                                   "allow_self_approval": False},
              "checklist": ["Rollback plan documented"], "roles": {"request": ["U0DAVE", "U0ALICE"]}}
SERVICES = {"api": {"deploy": engine()}, "web": {"deploy": engine()}}


@pytest.fixture
def config_text(request: pytest.FixtureRequest, record: Path) -> str:
    if getattr(request, "param", None) == "canary":  # a canary on production, waiting 30 s at 25%
        return canary_config(record, pauses=(0, 30, 0))
    return config_yaml(SERVICES, production=PRODUCTION)


class Api:
    """A CI job's HTTP client for the harness's Slipway."""

    def __init__(self, harness: Harness, token: str | None) -> None:
        self.harness, self.token = harness, token
        self.settles = True  # wait for the work a call started (False: a rollout's pauses are not waited out)

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        sent = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.harness.url + path, data=data,
                                       headers={**sent, **(headers or {}), "Content-Type": "application/json"}) as r:
                answer = await r.json(content_type=None)
                assert r.content_type == "application/json", (r.status, answer)
        if self.settles:
            await self.harness.settle()
        return r.status, answer


def token(harness: Harness, *scopes: str, name: str = "ci", expires_at: str | None = None) -> Api:
    _, secret = harness.store.tokens.create(name, list(scopes), expires_at)
    return Api(harness, secret)


def deploy_count(harness: Harness) -> int:
    return harness.store.db.execute("SELECT count(*) FROM deploys").fetchone()[0]


def request_body(**overrides: Any) -> dict[str, Any]:
    return {"service": "api", "version": "2.7.0", "environment": "production", "requested_by": "U0DAVE", **overrides}


# -- the flow ------------------------------------------------------------------------------


async def test_ci_requests_with_a_cli_token_slack_approves_and_ci_reads_it_back(harness: Harness,
                                                                                 tmp_path: Path) -> None:
    config = tmp_path / "slipway.yml"
    config.write_text(harness.config_source)
    made = slipway("token", "create", "ci", "--scope", "request:production", "--scope", "read", "--expires", "90d",
                   env={"SLIPWAY_DB": str(harness.db_path), "SLIPWAY_CONFIG": str(config)})
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("slp_") and len(secret) == 47 and "shown this once" in made.stderr
    stored = harness.store.db.execute("SELECT token_hash FROM api_tokens WHERE name = 'ci'").fetchone()[0]
    assert stored == hash_token(secret) and secret not in harness.db_path.read_bytes().decode("latin-1")
    ci = Api(harness, secret)
    harness.mark_succeeded("api", "staging", "2.7.0")

    status, deploy = await ci.call("POST", "/api/v1/deploys", request_body(version="v2.7.0"))
    assert status == 201, deploy
    assert (deploy["status"], deploy["requested_by"], deploy["version"]) == ("awaiting_approval", "U0DAVE", "2.7.0")
    message = harness.message_of(deploy["id"])  # announced in the channel, approvals happen there
    assert "<@U0DAVE>" in json.dumps(message.blocks)
    # Dave counts as the requester: he is an approver, yet cannot approve his own request
    await harness.click(message, "U0DAVE", ACTION_APPROVE)
    assert "cannot approve it" in harness.fake.ephemerals_for("U0DAVE")[-1].text
    await harness.tick(harness.deploy(deploy["id"]), "U0ALICE", 0)
    for approver in ("U0ALICE", "U0BOB"):
        await harness.click(harness.message_of(deploy["id"]), approver, ACTION_APPROVE)

    status, read = await ci.call("GET", f"/api/v1/deploys/{deploy['id']}")
    assert status == 200 and read["status"] == "succeeded", read
    assert [a["user"] for a in read["approvals"]] == ["U0ALICE", "U0BOB"]
    assert read["message_permalink"] and read["started_at"] and read["finished_at"] and read["rollback_of"] is None
    status, listed = await ci.call("GET", "/api/v1/deploys?service=api&environment=production&status=succeeded")
    assert status == 200 and [d["id"] for d in listed["deploys"]] == [deploy["id"]]
    audit = harness.store.audit.events(deploy["id"])
    assert audit[0].actor == "U0DAVE" and audit[0].source == "api:ci"
    assert harness.store.tokens.get("ci").last_used_at is not None


async def test_without_requested_by_the_token_is_the_requester(harness: Harness) -> None:
    ci = token(harness, "request:*", "read")
    status, deploy = await ci.call("POST", "/api/v1/deploys", {"service": "web", "version": "1.0.0",
                                                               "environment": "staging"})
    assert status == 201 and deploy["requested_by"] == "api:ci"
    read = harness.deploy(deploy["id"])
    assert read.status == DeployStatus.SUCCEEDED, read.status_reason  # staging needs no approval
    shown = json.dumps(harness.message_of(read).blocks)
    assert "*Requested by*\\napi:ci" in shown and "<@api:ci>" not in shown
    assert not harness.fake.calls_to("conversations.open")  # no DM to a token
    # anyone may approve a production request made by the token (it is nobody in Slack)
    harness.mark_succeeded("web", "staging", "1.1.0")
    status, deploy = await ci.call("POST", "/api/v1/deploys", {"service": "web", "version": "1.1.0",
                                                               "environment": "production"})
    assert status == 201
    await harness.tick(harness.deploy(deploy["id"]), "U0DAVE", 0)
    for approver in ("U0DAVE", "U0BOB"):
        await harness.click(harness.message_of(deploy["id"]), approver, ACTION_APPROVE)
    assert harness.deploy(deploy["id"]).status == DeployStatus.SUCCEEDED


async def test_an_idempotency_key_answers_a_retry_with_the_same_deploy(harness: Harness) -> None:
    ci = token(harness, "request:staging")
    key = {"Idempotency-Key": "build-4711"}
    first = await ci.call("POST", "/api/v1/deploys", {"service": "web", "version": "1.0.0", "environment": "staging"},
                          headers=key)
    again = await ci.call("POST", "/api/v1/deploys", {"service": "web", "version": "1.0.0", "environment": "staging"},
                          headers=key)
    assert first[0] == 201 and again[0] == 200 and first[1]["id"] == again[1]["id"]
    assert deploy_count(harness) == 1


# -- refusals ------------------------------------------------------------------------------

REFUSED_BODIES = [
    (request_body(force=True), 422, "force: unknown field"),
    (request_body(version=270), 422, "version: Input should be a valid string"),
    ({"service": "api", "version": "2.7.0"}, 422, "environment: Field required"),
    (request_body(requested_by="dave"), 422, "requested_by: String should match pattern"),
    (request_body(requested_by=["U0DAVE"]), 422, "requested_by"),
    (request_body(service=""), 422, "service: String should have at least 1 character"),
    (request_body(service="nope"), 422, "I don't know a service called `nope`"),
    (request_body(environment="qa"), 403, "lacks the scope 'request:qa'"),
    (request_body(version="latest"), 422, "latest"),
    (request_body(requested_by="U0ERIN"), 403, "You may not request deploys of api to production"),
    ([1, 2], 400, "the body must be a JSON object"),
    ("just text", 400, "the body must be a JSON object"),
]


@pytest.mark.parametrize(("body", "status", "error"), REFUSED_BODIES)
async def test_a_bad_request_is_refused_naming_the_problem_and_nothing_is_stored(
        harness: Harness, body: Any, status: int, error: str) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    before = deploy_count(harness)
    answer = await token(harness, "request:production").call("POST", "/api/v1/deploys", body)
    assert answer[0] == status and answer[1]["ok"] is False and error in answer[1]["error"], answer
    assert deploy_count(harness) == before


async def test_the_policy_refuses_with_the_same_text_as_slash_deploy(harness: Harness) -> None:
    ci = token(harness, "request:production")
    status, answer = await ci.call("POST", "/api/v1/deploys", request_body())  # not on staging yet
    typed = said(await harness.command("api 2.7.0 production", user="U0DAVE"))
    assert status == 409 and answer["error"] == typed and "staging" in typed
    assert deploy_count(harness) == 0


async def test_a_refused_person_is_audited_with_the_token(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    await token(harness, "request:production").call("POST", "/api/v1/deploys", request_body(requested_by="U0ERIN"))
    refused = [e for e in harness.store.audit.events() if e.action == "refused"]
    assert [(e.actor, e.source) for e in refused] == [("U0ERIN", "api:ci")]


@pytest.mark.parametrize("header", [None, "Bearer slp_nope", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 5000])
async def test_no_token_or_an_unknown_one_is_401(harness: Harness, header: str | None) -> None:
    api = Api(harness, None)
    status, answer = await api.call("POST", "/api/v1/deploys", request_body(),
                                    headers={"Authorization": header} if header else None)
    assert status == 401 and ("missing bearer token" in answer["error"] or "unknown API token" in answer["error"])
    assert harness.store.audit.events() == []  # unauthenticated callers do not grow the audit log


async def test_a_revoked_or_expired_token_is_refused_by_name(harness: Harness) -> None:
    revoked = token(harness, "read", name="old")
    harness.store.tokens.revoke("old")
    expired = token(harness, "read", name="temp", expires_at="2026-11-23T11:59:59.000+00:00")  # the clock: 12:00
    assert (await revoked.call("GET", "/api/v1/deploys"))[1]["error"].startswith("API token 'old' was revoked")
    status, answer = await expired.call("GET", "/api/v1/deploys")
    assert status == 401 and answer["error"].startswith("API token 'temp' expired")


async def test_a_body_over_one_mebibyte_is_413_and_is_read_only_after_the_token(harness: Harness) -> None:
    big = json.dumps({**request_body(), "pad": "x" * MAX_BODY_BYTES}).encode()
    assert (await token(harness, "request:production").call("POST", "/api/v1/deploys", raw=big))[0] == 413
    assert (await Api(harness, None).call("POST", "/api/v1/deploys", raw=big))[0] == 401
    assert (await token(harness, "read", name="r").call("POST", "/api/v1/deploys", raw=b"{"))[0] == 400
    assert deploy_count(harness) == 0


async def test_reads_need_the_read_scope_and_name_bad_queries(harness: Harness) -> None:
    requester = token(harness, "request:staging")
    reader = token(harness, "read", name="reader")
    status, answer = await requester.call("GET", "/api/v1/deploys")
    assert status == 403 and "lacks the scope 'read'" in answer["error"]
    assert (await reader.call("GET", "/api/v1/deploys/999"))[0] == 404
    assert (await reader.call("GET", "/api/v1/deploys/²"))[0] == 404
    assert (await reader.call("GET", "/api/v1/deploys/" + "9" * 40))[0] == 404
    status, answer = await reader.call("GET", "/api/v1/deploys?status=done&limit=0&sort=id")
    assert status == 422
    assert {p["field"] for p in answer["problems"]} == {"status", "limit", "sort"}
    for n in range(3):
        harness.mark_succeeded("web", "staging", f"1.0.{n}")
    status, page = await reader.call("GET", "/api/v1/deploys?limit=2")
    assert [d["version"] for d in page["deploys"]] == ["1.0.2", "1.0.1"] and page["next_before"]
    status, rest = await reader.call("GET", f"/api/v1/deploys?limit=2&before={page['next_before']}")
    assert [d["version"] for d in rest["deploys"]] == ["1.0.0"] and rest["next_before"] is None


async def test_unknown_routes_and_methods_answer_json(harness: Harness) -> None:
    reader = token(harness, "read")
    status, answer = await reader.call("GET", "/api/v1/nope")
    assert status == 404 and "no such API route" in answer["error"]
    status, answer = await reader.call("DELETE", "/api/v1/deploys/1")
    assert status == 405 and "use GET" in answer["error"]


# -- break-glass -----------------------------------------------------------------------------


async def test_a_control_token_rolls_back_as_the_button_would_and_is_audited(harness: Harness) -> None:
    good = harness.mark_succeeded("web", "staging", "1.0.0")
    bad = harness.mark_succeeded("web", "staging", "1.1.0")
    reader = token(harness, "read", "control:production", name="reader")
    status, answer = await reader.call("POST", f"/api/v1/deploys/{bad.id}/rollback", {})
    assert status == 403 and "control:staging" in answer["error"]
    ops = token(harness, "control:staging", name="ops")
    status, answer = await ops.call("POST", f"/api/v1/deploys/{bad.id}/rollback", {"to": "1.0.1"})
    assert status == 409 and "The rollback target changed" in answer["error"]
    status, answer = await ops.call("POST", f"/api/v1/deploys/{bad.id}/rollback", {"to": "1.0.0", "reason": "5xx"})
    assert status == 201, answer
    assert (answer["rollback_of"], answer["version"], answer["requested_by"]) == (bad.id, good.version, "api:ops")
    assert harness.deploy(answer["id"]).status == DeployStatus.SUCCEEDED
    assert harness.store.locks.blocked("web", "staging", "1.1.0") is not None
    assert ("api:ops", "api_control", {"action": "rollback", "reason": "5xx"}) in [
        (e.actor, e.action, e.detail) for e in harness.store.audit.events(bad.id)]
    status, answer = await ops.call("POST", f"/api/v1/deploys/{bad.id}/rollback", {})
    assert status == 409 and "only a succeeded or failed deploy can be rolled back" in answer["error"]
    status, answer = await ops.call("POST", f"/api/v1/deploys/{bad.id}/pause", {"why": "x"})
    assert status == 422 and answer["problems"] == [{"field": "why", "problem": "unknown field"}]
    status, answer = await ops.call("POST", f"/api/v1/deploys/{good.id}/pause")
    assert status == 409 and "is not a staged rollout" in answer["error"]


@pytest.mark.parametrize("config_text", [pytest.param("canary", id="canary")], indirect=True)
async def test_a_control_token_pauses_resumes_promotes_and_aborts_a_rollout(harness: Harness) -> None:
    ci = token(harness, "request:production", "control:production")
    ci.settles = False
    harness.mark_succeeded("api", "staging", "2.7.0")
    status, deploy = await ci.call("POST", "/api/v1/deploys", {"service": "api", "version": "2.7.0",
                                                               "environment": "production"})
    assert status == 201
    deploy_id = deploy["id"]
    steer = f"/api/v1/deploys/{deploy_id}"
    await wait_for(lambda: ("25%", "watching") in stage_states(harness, deploy_id), what="the 25% pause")
    assert (await ci.call("POST", steer + "/pause"))[1]["message"] == f"Paused #{deploy_id}."
    status, answer = await ci.call("POST", steer + "/promote")
    assert status == 409 and "is paused" in answer["error"]
    assert (await ci.call("POST", steer + "/resume"))[0] == 200
    status, answer = await ci.call("POST", steer + "/abort", {"reason": "error budget"})
    assert status == 200 and answer["message"].startswith(f"Aborting #{deploy_id}")
    await wait_for(lambda: harness.deploy(deploy_id).status == DeployStatus.FAILED, what="the abort")
    actions = [e.action for e in harness.store.audit.events(deploy_id) if e.source == "api:ci"]
    assert {"paused", "resumed", "abort_requested"} <= set(actions) and actions.count("api_control") == 4


# -- the description ---------------------------------------------------------------------------


async def test_the_openapi_description_matches_the_routes(harness: Harness) -> None:
    status, served = await Api(harness, None).call("GET", "/api/v1/openapi.json")
    assert status == 200 and served == json.loads(json.dumps(document())) and served["openapi"] == "3.1.0"
    app = harness._runner.app
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/v1") and r.method != "*"
              and "{tail" not in r.resource.canonical}
    routes = {(method, path) for method, path in routes if method != "HEAD"}
    described = {(method.upper(), path) for path, item in served["paths"].items() for method in item}
    assert described == routes
    body = served["components"]["schemas"]["DeployRequest"]
    assert body["additionalProperties"] is False and set(body["required"]) == {"service", "version", "environment"}
    for item in served["paths"].values():
        for operation in item.values():
            for answer in operation["responses"].values():
                schema = answer["content"]["application/json"]["schema"]
                if "$ref" in schema:
                    assert schema["$ref"].removeprefix("#/components/schemas/") in served["components"]["schemas"]


# -- the command line -----------------------------------------------------------------------------


def test_token_commands_take_the_database_and_config_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "slipway.yml"
    config.write_text(config_yaml(SERVICES, production=PRODUCTION))
    env = {"SLIPWAY_DB": str(tmp_path / "slipway.db"), "SLIPWAY_CONFIG": str(config)}
    assert slipway("token", "list", env=env).stderr.startswith("slipway: no database at")
    made = slipway("token", "create", "deployer", "--scope", "read", "--scope", "control:production", env=env)
    assert made.returncode == 0 and made.stdout.startswith("slp_")
    listed = slipway("token", "list", env=env)
    assert listed.returncode == 0 and made.stdout.strip() not in listed.stdout
    assert "deployer  control:production read" in listed.stdout and "active" in listed.stdout
    for args, problem in [(("--scope", "request:qa"), "'request:qa' names no environment"),
                          (("--scope", "write"), "'write' is not a scope"),
                          (("--scope", "read", "--expires", "soon"), "--expires: 'soon' is not a duration")]:
        refused = slipway("token", "create", "other", *args, env=env)
        assert refused.returncode in (1, 2) and problem in refused.stderr, refused.stderr
    assert "exists already" in slipway("token", "create", "deployer", "--scope", "read", env=env).stderr
    assert "revoked at" in slipway("token", "revoke", "deployer", env=env).stdout
    assert "revoked" in slipway("token", "list", env=env).stdout
    assert slipway("token", "revoke", "nobody", env=env).stderr.strip() == "slipway: there is no token named 'nobody'"
    assert slipway("token", "create", "Bad Name", "--scope", "read", env=env).returncode == 1
