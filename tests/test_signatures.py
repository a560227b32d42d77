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
