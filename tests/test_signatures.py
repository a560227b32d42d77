"""Requests Slack did not sign (or signed too long ago) are refused with
401 and change nothing."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Harness


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, body: {**h.slack.signed_headers(body), "X-Slack-Signature": "v0=" + "0" * 64},
                     id="wrong-signature"),
        pytest.param(lambda h, body: {"Content-Type": "application/x-www-form-urlencoded"}, id="missing-headers"),
        pytest.param(lambda h, body: h.slack.signed_headers(body, timestamp=int(time.time()) - 6 * 60),
                     id="stale-timestamp"),
        pytest.param(lambda h, body: h.slack.signed_headers(body + "&text=web+9.9.9"), id="body-changed"),
        pytest.param(lambda h, body: {**h.slack.signed_headers(body), "X-Slack-Request-Timestamp": "not-a-number"},
                     id="garbage-timestamp"),
    ],
)
async def test_unsigned_requests_get_401_and_record_nothing(harness: Harness, tamper) -> None:
    body = harness.slack.command_body("web 1.0.0", "U0DAVE")
    status, _ = await harness.slack.post(body, tamper(harness, body))
    await harness.settle()
    assert status == 401
    assert harness.store.db.execute("SELECT count(*) FROM deploys").fetchone()[0] == 0
    assert harness.fake.calls_to("chat.postMessage") == []


async def test_a_correctly_signed_request_passes(harness: Harness) -> None:
    body = harness.slack.command_body("web 1.0.0", "U0DAVE")
    status, text = await harness.slack.post(body)
    assert status == 200 and "needs no approval" in text


@pytest.mark.parametrize(("body", "status"), [
    ("", 404),  # signed, but nothing any listener handles
    ("payload=%7Bnot-json", 400),  # signed, but the payload is not JSON
    ("payload=" + "x" * 10_000, 400),
])
async def test_the_bot_keeps_serving_after_garbage(harness: Harness, body: str, status: int) -> None:
    assert (await harness.slack.post(body))[0] == status
    assert "needs no approval" in await harness.command("web 1.0.0")


# -- the verifiers on their own: Slack's (checked before bolt reads a body) and the engines' ---------


def test_slipways_slack_verifier_agrees_with_slack_sdks_signatures() -> None:
    from slack_sdk.signature import SignatureVerifier

    from handlers.http import slack_signature_problem

    now = 1_800_000_000
    for body in (b"", b"token=x&text=web+1.0.0", "payload={\"a\": \"é\"}".encode()):
        headers = {"X-Slack-Request-Timestamp": str(now),
                   "X-Slack-Signature": SignatureVerifier("s3cret").generate_signature(timestamp=str(now), body=body)}
        assert slack_signature_problem("s3cret", headers, body, now=now + 299) is None
        assert slack_signature_problem("other", headers, body, now=now) == "signature does not match"
        assert slack_signature_problem("s3cret", headers, body + b"&x=1", now=now) == "signature does not match"
        assert slack_signature_problem("s3cret", headers, body, now=now + 301).startswith("timestamp too far")


@pytest.mark.parametrize(("timestamp", "signature"), [
    ("²", "v0=" + "0" * 64), ("9" * 5000, "v0=" + "0" * 64), ("-1", "v0=0"), ("1e9", "v0=0"), (" 1", "v0=0"),
    ("1800000000", "v0=é"), ("1800000000", "v0=\udcff"), ("", "v0=0"), ("1800000000", ""),
])
def test_odd_slack_headers_are_refusals_not_exceptions(timestamp: str, signature: str) -> None:
    from handlers.http import slack_signature_problem

    headers = {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature}
    assert slack_signature_problem("s3cret", headers, b"\xff\xfe", now=1_800_000_000)


@pytest.mark.parametrize(("timestamp", "signature"), [
    ("²", "v1=" + "0" * 64), ("9" * 5000, "v1=" + "0" * 64), ("1800000000", "v1=é"), ("1800000000", "v1=\udcff"),
])
def test_odd_engine_signature_headers_are_refusals_not_exceptions(timestamp: str, signature: str) -> None:
    from bot.executors import signing

    headers = {signing.TIMESTAMP_HEADER: timestamp, signing.SIGNATURE_HEADER: signature}
    assert signing.verify("s3cret", headers, b"{}", now=1_800_000_000)
    good = signing.signed_headers("s3cret", b"{}", now=1_800_000_000)
    assert signing.verify("s3cret", good, b"{}", now=1_800_000_000) is None
