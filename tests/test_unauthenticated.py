"""Requests nobody vouched for, through Slipway's real HTTP server: each gets
a 4xx that says why, and none causes a Slack call, a 500 or a traceback.

In particular an unsigned body that names a ``user_id`` and ``channel_id``
must never make Slipway write to them (it once answered each such request
with an ephemeral "something went wrong": 100 requests, 100 messages)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp
import pytest

from bot.executors import signing
from tests.conftest import SIGNING_SECRET, Harness, config_yaml, engine
from tests.test_executor_webhook import SECRET, CiEngine

AM_TOKEN, GENERIC_TOKEN, GRAFANA_SECRET = "am-token", "generic-token", "grafana-secret"
GRAFANA_TIMESTAMP = "X-Grafana-Alerting-Timestamp"
TWO_MIB = b"x" * (2 * 1024 * 1024)
DEEP_JSON = b"[" * 30_000 + b"]" * 30_000  # valid JSON, nested beyond what the parser follows
SUPERSCRIPT_TWO = "²"  # str.isdigit() says yes; int() says no


@pytest.fixture
async def ci() -> CiEngine:
    running = await CiEngine().start()
    yield running
    await running.stop()


@pytest.fixture
def environ() -> dict[str, str]:
    return {"DEPLOY_HOOK_SECRET": SECRET, "SLIPWAY_ALERTMANAGER_TOKEN": AM_TOKEN,
            "SLIPWAY_GENERIC_TOKEN": GENERIC_TOKEN, "SLIPWAY_GRAFANA_SECRET": GRAFANA_SECRET}


@pytest.fixture
def config_text(ci: CiEngine, slipway_url: str) -> str:
    return config_yaml(
        environments=[{"name": "staging"}], public_url=slipway_url,
        alerts={"channel": "C0ALERTS", "grafana_timestamp_header": GRAFANA_TIMESTAMP},
        services={"web": {"deploy": engine()},
                  "hook": {"deploy": {"webhook": {"url": ci.url, "secret_env": "DEPLOY_HOOK_SECRET"},
                                      "timeout": "20s"}}})


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


def slack_signed(body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers as Slack signs ``body`` (any bytes, so a body that is not UTF-8 can be signed too)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(SIGNING_SECRET.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": f"v0={digest}"}


def command(harness: Harness) -> bytes:
    """A slash command that names a user and a channel, as an attacker would copy one."""
    return harness.slack.command_body("help", "U0DAVE", channel="C0CHAT").encode()


def click_payload(value: object) -> bytes:
    return urlencode({"payload": json.dumps(value)}).encode()


# Each case builds its request from the running Slipway (and the CI engine, for a deploy waiting on it).
Build = Callable[[Harness, CiEngine], Awaitable[Request]]


def unsigned_slack(body: Callable[[Harness], bytes], **headers: str) -> Build:
    async def build(harness: Harness, ci: CiEngine) -> Request:
        return Request("/slack/events", {"Content-Type": "application/x-www-form-urlencoded", **headers},
                       body(harness))
    return build


def signed_slack(body: Callable[[Harness], bytes], timestamp_offset: int = 0) -> Build:
    async def build(harness: Harness, ci: CiEngine) -> Request:
        content = body(harness)
        return Request("/slack/events", slack_signed(content, int(time.time()) + timestamp_offset), content)
    return build


async def hook_deploy(harness: Harness, ci: CiEngine) -> int:
    """A webhook deploy waiting for its engine's report (so its door is open)."""
    status, _ = await harness.slack.command("hook 1.0.0", "U0DAVE")
    assert status == 200
    await asyncio.wait_for(ci.arrived.wait(), 10)
    deploy_id = ci.requests[-1]["deploy_id"]

    def shown(fake) -> bool:  # Slack has everything the deploy calls for until its engine reports
        deploy = harness.deploy(deploy_id)
        message = fake.messages.get((deploy.channel, deploy.message_ts))
        return (deploy.permalink is not None and message is not None and "Deploying" in json.dumps(message.blocks)
                and any("Handing" in m.text for m in fake.messages.values() if m.thread_ts == deploy.message_ts))

    await harness.fake.wait_for(shown)
    return deploy_id


def report(body: bytes | None = None, *, path_id: str | None = None,
           headers: Callable[[bytes], dict[str, str]] | None = None) -> Build:
    async def build(harness: Harness, ci: CiEngine) -> Request:
        deploy_id = await hook_deploy(harness, ci)
        content = body if body is not None else json.dumps({"deploy_id": deploy_id, "status": "succeeded"}).encode()
        sent = headers(content) if headers else signing.signed_headers(SECRET, content)
        return Request(f"/webhooks/deploys/{path_id or deploy_id}",
                       {"Content-Type": "application/json", **sent}, content)
    return build


def alerts(door: str, body: bytes, **headers: str) -> Build:
    async def build(harness: Harness, ci: CiEngine) -> Request:
        return Request(f"/webhooks/{door}", {"Content-Type": "application/json", **headers}, body)
    return build


ZEROS = "v0=" + "0" * 64
CASES = [
    # (what, request, status Slipway answers)
    ("slack: timestamp ²", unsigned_slack(command, **{"X-Slack-Request-Timestamp": SUPERSCRIPT_TWO,
                                                      "X-Slack-Signature": ZEROS}), 401),
    ("slack: timestamp of 5000 digits", unsigned_slack(command, **{"X-Slack-Request-Timestamp": "9" * 5000,
                                                                   "X-Slack-Signature": ZEROS}), 401),
    ("slack: signature v0=é", unsigned_slack(command, **{"X-Slack-Request-Timestamp": str(int(time.time())),
                                                         "X-Slack-Signature": "v0=é"}), 401),
    ("slack: no signature", unsigned_slack(command), 401),
    ("slack: wrong signature", unsigned_slack(command, **{"X-Slack-Request-Timestamp": str(int(time.time())),
                                                          "X-Slack-Signature": ZEROS}), 401),
    ("slack: signed six minutes ago", signed_slack(command, timestamp_offset=-6 * 60), 401),
    ("slack: payload=[1,2,3], unsigned", unsigned_slack(lambda h: click_payload([1, 2, 3])), 401),
    ('slack: payload="x", unsigned', unsigned_slack(lambda h: click_payload("x")), 401),
    ("slack: a click naming a user and a channel, unsigned", unsigned_slack(lambda h: click_payload(
        {"type": "block_actions", "user": {"id": "U0DAVE"}, "channel": {"id": "C0CHAT"}, "actions": []})), 401),
    ("slack: a body that is not UTF-8, unsigned", unsigned_slack(lambda h: b"text=\xff\xfe&user_id=U0DAVE"), 401),
    ("slack: payload=[1,2,3], signed", signed_slack(lambda h: click_payload([1, 2, 3])), 400),
    ('slack: payload="x", signed', signed_slack(lambda h: click_payload("x")), 400),
    ("slack: a body that is not UTF-8, signed", signed_slack(lambda h: b"text=\xff\xfe&user_id=U0DAVE"), 400),
    ("slack: larger than 1 MiB, unsigned", unsigned_slack(lambda h: TWO_MIB), 413),
    ("report: timestamp ²", report(headers=lambda body: {
        signing.TIMESTAMP_HEADER: SUPERSCRIPT_TWO, signing.SIGNATURE_HEADER: "v1=" + "0" * 64}), 401),
    ("report: timestamp of 5000 digits", report(headers=lambda body: {
        signing.TIMESTAMP_HEADER: "9" * 5000, signing.SIGNATURE_HEADER: "v1=" + "0" * 64}), 401),
    ("report: signature v1=é", report(headers=lambda body: {
        signing.TIMESTAMP_HEADER: str(int(time.time())), signing.SIGNATURE_HEADER: "v1=é"}), 401),
    ("report: deploy id ²", report(path_id="%C2%B2"), 404),
    ("report: a 30-digit deploy id", report(path_id="1" * 30), 404),
    ("report: signed JSON nested 30,000 deep", report(DEEP_JSON), 400),
    ("report: signed JSON that is not an object", report(b'"x"'), 400),
    ("alertmanager: wrong token, 2 MiB body (refused before it is read)",
     alerts("alertmanager", TWO_MIB, Authorization="Bearer wrong"), 401),
    ("generic: no token, 2 MiB body (refused before it is read)", alerts("generic", TWO_MIB), 401),
    ("grafana: timestamp ²", alerts("grafana", b"{}", **{GRAFANA_TIMESTAMP: SUPERSCRIPT_TWO,
                                                          "X-Grafana-Alerting-Signature": "0" * 64}), 401),
    ("grafana: signature é", alerts("grafana", b"{}", **{GRAFANA_TIMESTAMP: str(int(time.time())),
                                                          "X-Grafana-Alerting-Signature": "é"}), 401),
    ("grafana: 2 MiB body (its signature needs the body: read up to the cap)",
     alerts("grafana", TWO_MIB, **{"X-Grafana-Alerting-Signature": "0" * 64}), 400),
]


@pytest.mark.parametrize(("what", "build", "expected"), CASES, ids=[case[0] for case in CASES])
async def test_requests_nobody_vouched_for_get_a_4xx_and_reach_nothing(
        harness: Harness, ci: CiEngine, caplog: pytest.LogCaptureFixture, what: str, build, expected: int) -> None:
    request = await build(harness, ci)  # a report's deploy waits on its engine: there is nothing to settle
    calls_before = len(harness.fake.calls)
    caplog.clear()
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as session:
        async with session.post(harness.url + request.path, data=request.body, headers=request.headers) as answer:
            status, text = answer.status, await answer.text()
    if not request.path.startswith("/webhooks/deploys/"):
        await harness.settle()
    assert status == expected, (what, status, text)
    assert json.loads(text)["ok"] is False and json.loads(text)["error"]  # a reason, as JSON
    assert harness.fake.calls[calls_before:] == [] and harness.fake.ephemerals == []
    loud = [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]
    assert loud == [], [record.getMessage() for record in loud]


async def test_a_hundred_unsigned_commands_post_nothing(harness: Harness) -> None:
    body = command(harness)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": SUPERSCRIPT_TWO,
               "X-Slack-Signature": ZEROS}
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.post(harness.url + "/slack/events", data=body, headers=headers) as answer:
                assert answer.status == 401
    await harness.settle()
    assert harness.fake.calls == [] and harness.fake.ephemerals == []
    assert "needs no approval" in await harness.command("web 1.0.0")  # Slack's own requests still get through


async def test_the_bearer_token_is_checked_before_the_body_is_read(harness: Harness) -> None:
    """The door answers 401 without waiting for a body that never comes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", harness.port)
    try:
        writer.write(b"POST /webhooks/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer wrong\r\nContent-Length: 1000000\r\n\r\n{")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert status_line.split()[1] == b"401"


async def test_a_request_slack_signed_still_hears_of_an_unexpected_failure(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The other side of the rule: the person whose signed command failed is
    told, with an id to quote, and the failure is logged with its traceback."""
    async def broken(*args, **kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(harness.slipway.workflow, "lock", broken)
    status, _ = await harness.slack.command('lock web staging "maintenance"', "U0DAVE")
    await harness.settle()
    assert status == 500  # the listener failed before its ack: bolt says so to Slack, and the person is told
    [told] = await harness.fake.wait_for(lambda fake: fake.calls_to("chat.postEphemeral"))
    assert told.args["user"] == "U0DAVE" and told.args["channel"] == "C0CHAT"
    assert "Something went wrong on Slipway's side (error id" in told.args["text"]
    assert any(record.exc_info and "the disk is full" in str(record.exc_info[1]) for record in caplog.records)
